#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/vmath.hpp"

namespace moe {

namespace {

// A (B, Hkv)-batched GEMM; strides are {batch, kv head, row, col}.
void batched(ComputeContext& ctx, const AttentionShape& s, int64_t M, int64_t N, int64_t K, std::array<int64_t, 4> a,
             std::array<int64_t, 4> b, std::array<int64_t, 4> c, const float* A, const float* Bm, float* C,
             bool accumulate = false) {
  GemmSpec spec;
  spec.accumulate = accumulate;
  spec.batch0 = s.B, spec.batch1 = s.Hkv;
  spec.M = M, spec.N = N, spec.K = K;
  spec.a_strides = a, spec.b_strides = b, spec.c_strides = c;
  ctx.gemm(spec, A, Bm, C);
}

}  // namespace

namespace {

// Causal blocking: query rows are cut into blocks, and block [r0, r1) only multiplies keys
// [0, r1) — the rest of its rows is masked anyway. With 4 blocks the score and value GEMMs do
// 62.5% of the full T×T work. Blocks stay at least 64 rows so each GEMM keeps a useful size.
struct QueryBlock {
  int64_t r0, r1;
};
std::vector<QueryBlock> query_blocks(int64_t T) {
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(4, T / 64));
  std::vector<QueryBlock> blocks;
  for (int64_t c = 0; c < n; ++c) blocks.push_back({T * c / n, T * (c + 1) / n});
  return blocks;
}

}  // namespace

double attention_computed_fraction(int64_t T) {
  double computed = 0;
  for (const QueryBlock& b : query_blocks(T)) computed += double(b.r1 - b.r0) * double(b.r1);
  return computed / (double(T) * double(T));
}

void attention_forward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* probs, float* out) {
  const int64_t T = s.T, hd = s.hd, hv = s.value_dim(), g = s.group(), H = s.H, Hkv = s.Hkv;
  const int64_t gT = g * T;
  const std::array<int64_t, 4> q_strides{H * T * hd, gT * hd, hd, 1}, p_strides{H * T * T, gT * T, T, 1};
  const std::array<int64_t, 4> kT_strides{Hkv * T * hd, T * hd, 1, hd}, v_strides{Hkv * T * hv, T * hv, hv, 1};
  const std::array<int64_t, 4> o_strides{H * T * hv, gT * hv, hv, 1};
  const auto blocks = query_blocks(T);
  // scores[rows r0..r1, keys 0..r1) = q (rows, hd) · kᵀ (hd, r1), per query head of the group
  for (int64_t gi = 0; gi < g; ++gi)
    for (const auto& b : blocks)
      batched(ctx, s, b.r1 - b.r0, b.r1, hd, q_strides, kT_strides, p_strides, q + (gi * T + b.r0) * hd, k,
              probs + (gi * T + b.r0) * T);
  const float scale = 1.0f / std::sqrt(float(hd));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < s.B * H * T; ++row) {
    const int64_t t = row % T;
    float* p = probs + row * T;
    // Vector reductions and exp_fast: the softmax over B·H·T²/2 scores is the largest
    // non-GEMM cost of a training step.
    float max = -INFINITY;
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j <= t; ++j) max = std::max(max, p[j] * scale);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j <= t; ++j) sum += (p[j] = exp_fast(p[j] * scale - max));
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j <= t; ++j) p[j] *= inv;
    for (int64_t j = t + 1; j < T; ++j) p[j] = 0.0f;  // also clears what the blocked GEMM skipped
  }
  // out[rows] = probs[rows, 0..r1) · v[0..r1)
  for (int64_t gi = 0; gi < g; ++gi)
    for (const auto& b : blocks)
      batched(ctx, s, b.r1 - b.r0, hv, b.r1, p_strides, v_strides, o_strides, probs + (gi * T + b.r0) * T, v,
              out + (gi * T + b.r0) * hv);
}

void attention_backward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* probs, const float* d_out, float* d_probs, float* dq, float* dk, float* dv) {
  const int64_t T = s.T, hd = s.hd, hv = s.value_dim(), g = s.group(), H = s.H, Hkv = s.Hkv;
  const int64_t gT = g * T;
  const std::array<int64_t, 4> q_strides{H * T * hd, gT * hd, hd, 1}, p_strides{H * T * T, gT * T, T, 1};
  const std::array<int64_t, 4> pT_strides{H * T * T, gT * T, 1, T};
  const std::array<int64_t, 4> k_strides{Hkv * T * hd, T * hd, hd, 1};
  const std::array<int64_t, 4> v_strides{Hkv * T * hv, T * hv, hv, 1}, vT_strides{Hkv * T * hv, T * hv, 1, hv};
  const std::array<int64_t, 4> o_strides{H * T * hv, gT * hv, hv, 1};
  const auto blocks = query_blocks(T);
  // d_probs[rows, 0..r1) = d_out[rows] · vᵀ[:, 0..r1)
  for (int64_t gi = 0; gi < g; ++gi)
    for (const auto& b : blocks)
      batched(ctx, s, b.r1 - b.r0, b.r1, hv, o_strides, vT_strides, p_strides, d_out + (gi * T + b.r0) * hv, v,
              d_probs + (gi * T + b.r0) * T);
  // dv[0..r1) += probs[rows, 0..r1)ᵀ · d_out[rows]: every query head and block adds to its keys.
  std::fill_n(dv, s.B * Hkv * T * hv, 0.0f);
  for (int64_t gi = 0; gi < g; ++gi)
    for (const auto& b : blocks)
      batched(ctx, s, b.r1, hv, b.r1 - b.r0, pT_strides, o_strides, v_strides, probs + (gi * T + b.r0) * T,
              d_out + (gi * T + b.r0) * hv, dv, /*accumulate=*/true);
  // Softmax backward, with the 1/sqrt(hd) scale folded in: dS = P ⊙ (dP - Σ_j dP_j P_j) · scale.
  const float scale = 1.0f / std::sqrt(float(hd));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < s.B * H * T; ++row) {
    const int64_t t = row % T;
    const float* p = probs + row * T;
    float* dp = d_probs + row * T;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j <= t; ++j) dot += dp[j] * p[j];
    for (int64_t j = 0; j <= t; ++j) dp[j] = p[j] * (dp[j] - dot) * scale;
    for (int64_t j = t + 1; j < T; ++j) dp[j] = 0.0f;
  }
  // dq[rows] = dS[rows, 0..r1) · k[0..r1);  dk[0..r1) += dS[rows, 0..r1)ᵀ · q[rows]
  std::fill_n(dk, s.B * Hkv * T * hd, 0.0f);
  for (int64_t gi = 0; gi < g; ++gi)
    for (const auto& b : blocks) {
      batched(ctx, s, b.r1 - b.r0, hd, b.r1, p_strides, k_strides, q_strides, d_probs + (gi * T + b.r0) * T, k,
              dq + (gi * T + b.r0) * hd);
      batched(ctx, s, b.r1, hd, b.r1 - b.r0, pT_strides, q_strides, k_strides, d_probs + (gi * T + b.r0) * T,
              q + (gi * T + b.r0) * hd, dk, /*accumulate=*/true);
    }
}

}  // namespace moe
