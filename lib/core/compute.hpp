// The compute context: the oneDNN engine and stream plus a cache of matmul primitives keyed by
// shape, passed explicitly to every op that multiplies matrices (no globals). Plain 2-D products
// run through oneDNN's sgemm (no per-shape state, so expert GEMMs whose row counts change every
// step cost no memory); batched products (attention over heads) use matmul primitives, created
// once per shape because creation costs far more than a small GEMM.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <unordered_map>

#include <oneapi/dnnl/dnnl.hpp>

namespace moe {

// C (M×N) = A (M×K) · B (K×N) [+ C], all row-major with explicit strides, optionally batched over
// two leading dimensions. Strides are in elements: {batch0, batch1, row, col}.
struct GemmSpec {
  int64_t batch0 = 1, batch1 = 1;
  int64_t M = 0, N = 0, K = 0;
  std::array<int64_t, 4> a_strides{}, b_strides{}, c_strides{};
  bool accumulate = false;  // C += A·B instead of C = A·B

  bool operator==(const GemmSpec&) const = default;
};

struct GemmSpecHash {
  size_t operator()(const GemmSpec& s) const;
};

// Where a training step spends its time, for `moe bench`. Timing is off unless enabled.
enum class Phase { attention, router, routed_experts, dense_ffn, head_loss, optimizer, balancing, other, count };
const char* to_string(Phase phase);

struct PhaseTimes {
  bool enabled = false;
  double seconds[int(Phase::count)] = {};
  void reset() {
    for (double& s : seconds) s = 0.0;
  }
};

// natural: the router's choice. balanced: round robin, token i takes experts (i·K + k) mod E, so
// every expert gets N·K/E rows. skewed: every token's top-K includes expert 0 (the worst load top-K
// allows: expert 0 gets all N rows), the other K-1 round robin over experts 1..E-1.
enum class ForcedRouting { natural, balanced, skewed };

class ComputeContext {
 public:
  ComputeContext();
  ComputeContext(const ComputeContext&) = delete;
  ComputeContext& operator=(const ComputeContext&) = delete;

  void gemm(const GemmSpec& spec, const float* A, const float* B, float* C);
  size_t cached_primitives() const { return cache_.size(); }

  PhaseTimes phases;

  // Fault injection for tests: the n-th 2-D product from now (0: the next one) fails as a oneDNN
  // error would, on whichever thread runs it; -1: never. Lets a test reach the error paths of the
  // parallel expert loops, which a real oneDNN failure cannot be provoked into.
  std::atomic<int64_t> fail_gemm_after{-1};

  // `moe bench --routing`: routing forced to a fixed pattern (the router still runs and its scores
  // set the gate weights), to time the expert dispatch under balanced and worst-case loads.
  ForcedRouting forced_routing = ForcedRouting::natural;

 private:
  struct Entry;
  Entry& lookup(const GemmSpec& spec);
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::unordered_map<GemmSpec, std::shared_ptr<Entry>, GemmSpecHash> cache_;
};

// Adds the time until it goes out of scope to ctx.phases[phase] (when timing is enabled).
class PhaseScope {
 public:
  PhaseScope(ComputeContext& ctx, Phase phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  PhaseTimes* times_;
  Phase phase_;
  int64_t start_ns_;
};

// Row-major GEMM in BLAS terms: C (M×N) [+]= op(A) · op(B), where op(A) is M×K (stored K×M with
// row stride lda when trans_a), op(B) is K×N (stored N×K when trans_b).
void gemm(ComputeContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
          const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Row-major C (M×N) [+]= A (M×K) · op(B) through oneDNN's BLAS-style dnnl_sgemm: op(B) is B
// (K×N, row stride ldb) or, when trans_b, Bᵀ with B stored N×K. For the many tiny products of
// decoding: a primitive execution has a fixed cost of ~2 µs (memory objects, argument map, stream
// wait) that exceeds the product itself, dnnl_sgemm ~0.5 µs. Inside an OpenMP parallel region it
// runs on the calling thread, so each thread of one region can multiply its own slice. Returns
// false on a oneDNN error (callers inside a parallel region cannot throw).
bool sgemm_rowmajor(bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float* C, int64_t ldc, bool accumulate);

// Rows per dnnl_sgemm call with which a row's result does not depend on the other rows of a
// product, and which is fastest for one or two rows: oneDNN sums a one-row product in its
// matrix-vector kernel, in another order than its kernels for several rows, and which of those it
// takes depends on the row count (with AVX2 a third row changes the order again). Calls of exactly
// one row, or exactly two, give every row the same bits wherever it is; with AVX-512 two-row calls
// also beat one-row calls, with AVX2 a two-row call costs about two one-row calls (or more), so
// one. A caller that needs a row's bits independent of its batch (speculative decoding verifies
// rows a plain step computes alone) multiplies in groups of exactly this many rows.
int64_t sgemm_exact_rows();

// Linear layer y = x Wᵀ with W stored [out, in] (Hugging Face layout).
// x (rows, in), W (out, in), y (rows, out).
inline void linear_forward(ComputeContext& ctx, const float* x, const float* W, float* y, int64_t rows, int64_t in,
                           int64_t out) {
  gemm(ctx, false, true, rows, out, in, x, in, W, in, y, out, false);
}

// Backward of y = x Wᵀ: dx (=, or += when accumulate_dx) dy W; dW += dyᵀ x.
// Pass dx == nullptr to skip the input gradient.
void linear_backward(ComputeContext& ctx, const float* x, const float* W, const float* dy, float* dx, float* dW,
                     int64_t rows, int64_t in, int64_t out, bool accumulate_dx);

}  // namespace moe
