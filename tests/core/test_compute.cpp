// The oneDNN GEMM wrapper against naive double loops: all transpositions, odd sizes, padded and
// packed leading dimensions, accumulation, batched strided layouts and K = 0.
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "core/compute.hpp"

namespace {

// C (M×N) [+]= op(A) op(B), row-major with leading dimensions, in double.
void naive_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                const float* B, int64_t ldb, ref::DVec& C, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const double b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      double& c = C[size_t(i * ldc + j)];
      c = accumulate ? c + s : s;
    }
}

// Float GEMM error bound: each of the K products and partial sums rounds at ~6e-8 relative, with
// |a|,|b| ~ N(0,1) the sum's magnitude is <= Σ|a b|; 1e-5 · (1 + Σ|a b|) leaves room for any
// summation order oneDNN picks and is still ~1e5 times smaller than one wrong term.
void expect_gemm_matches(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, bool accumulate,
                         moe::ComputeContext& ctx, uint64_t seed, bool padded = true) {
  CAPTURE(trans_a, trans_b, M, N, K, accumulate, padded);
  // Padded leading dimensions, so a wrapper that assumes packed rows reads the wrong elements; or
  // packed ones, down to 1 for a one-wide matrix (a one-expert router's gradient).
  const int64_t pad = padded ? 1 : 0;
  const int64_t lda = (trans_a ? M : K) + 3 * pad, ldb = (trans_b ? K : N) + 2 * pad, ldc = N + 5 * pad;
  const int64_t a_rows = trans_a ? K : M, b_rows = trans_b ? N : K;
  const ref::Vec A = ref::randn(a_rows * lda, seed), B = ref::randn(b_rows * ldb, seed + 1);
  ref::Vec C = ref::randn(M * ldc, seed + 2);
  ref::DVec want = ref::to_double(C);
  if (!accumulate)  // the output must be overwritten, never read: poison it
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[size_t(i * ldc + j)] = std::numeric_limits<float>::quiet_NaN();
  naive_gemm(trans_a, trans_b, M, N, K, A.data(), lda, B.data(), ldb, want, ldc, accumulate);
  moe::gemm(ctx, trans_a, trans_b, M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc, accumulate);

  double worst = 0.0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double magnitude = 0.0;
      for (int64_t k = 0; k < K; ++k)
        magnitude += std::fabs((trans_a ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)]) *
                               (trans_b ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)]));
      const double err = std::fabs(double(C[size_t(i * ldc + j)]) - want[size_t(i * ldc + j)]) / (1.0 + magnitude);
      worst = std::isnan(err) ? INFINITY : std::max(worst, err);
    }
  CHECK(worst < 1e-5);
  // The padding columns between N and ldc belong to someone else: untouched.
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j) REQUIRE(C[size_t(i * ldc + j)] == float(want[size_t(i * ldc + j)]));
}

}  // namespace

TEST_CASE("gemm matches a naive loop for every transposition, odd sizes and accumulate", "[core]") {
  // Padded leading dimensions, then packed ones: one-wide matrices get leading dimension 1 (a
  // one-expert router's gradient), which sgemm accepts only in the layout matching the shape.
  moe::ComputeContext ctx;
  const std::vector<std::array<int64_t, 3>> padded_shapes = {{7, 13, 5}, {1, 1, 1},    {7, 1, 5},  {1, 13, 5},
                                                             {7, 13, 1}, {33, 17, 65}, {2, 3, 129}},
                                            packed_shapes = {{1, 13, 5}, {7, 1, 5}, {7, 13, 1}, {1, 1, 9},
                                                             {9, 1, 1},  {1, 9, 1}, {6, 4, 3}};
  uint64_t seed = 100;
  for (const bool padded : {true, false})
    for (const auto& shape : padded ? padded_shapes : packed_shapes)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (int acc = 0; acc < 2; ++acc)
            expect_gemm_matches(ta, tb, shape[0], shape[1], shape[2], acc, ctx, seed += 3, padded);
}

TEST_CASE("2-D gemm needs no primitive and batched gemm reuses one cached primitive per shape", "[core]") {
  // Expert GEMMs change their row count every step: through sgemm they must not grow any cache.
  moe::ComputeContext ctx;
  const ref::Vec A = ref::randn(64 * 64, 1), B = ref::randn(64 * 64, 2);
  ref::Vec C(64 * 64);
  for (int64_t rows = 1; rows <= 9; ++rows)
    moe::gemm(ctx, false, true, rows, 13, 5, A.data(), 5, B.data(), 5, C.data(), 13, false);
  CHECK(ctx.cached_primitives() == 0);
  moe::GemmSpec spec;
  spec.batch0 = 2, spec.batch1 = 3, spec.M = 4, spec.N = 5, spec.K = 6;
  spec.a_strides = {18 * 4, 24, 6, 1}, spec.b_strides = {90, 30, 5, 1}, spec.c_strides = {60, 20, 5, 1};
  ctx.gemm(spec, A.data(), B.data(), C.data());
  CHECK(ctx.cached_primitives() == 1);
  ctx.gemm(spec, A.data(), B.data(), C.data());
  CHECK(ctx.cached_primitives() == 1);
  spec.M = 3;
  ctx.gemm(spec, A.data(), B.data(), C.data());
  CHECK(ctx.cached_primitives() == 2);
}

TEST_CASE("batched GemmSpec with strided layouts matches a naive loop", "[core]") {
  moe::ComputeContext ctx;
  const int64_t b0 = 2, b1 = 3, M = 4, N = 5, K = 6;
  // A stored (b0, M, b1, K) — batch1 interleaved inside the rows, as when heads sit in a token row.
  const std::array<int64_t, 4> as{M * b1 * K, K, b1 * K, 1};
  // B stored transposed per batch: (b1, b0, N, K), read as K×N with strides (1, K).
  const std::array<int64_t, 4> bs{N * K, b0 * N * K, 1, K};
  // C packed per batch with padded rows: (b0, b1, M, N + 2).
  const int64_t ldc = N + 2;
  const std::array<int64_t, 4> cs{b1 * M * ldc, M * ldc, ldc, 1};
  const ref::Vec A = ref::randn(b0 * M * b1 * K, 11), B = ref::randn(b1 * b0 * N * K, 12);

  for (int acc = 0; acc < 2; ++acc) {
    CAPTURE(acc);
    ref::Vec C = ref::randn(b0 * b1 * M * ldc, 13);
    const ref::Vec C0 = C;
    moe::GemmSpec spec;
    spec.batch0 = b0, spec.batch1 = b1, spec.M = M, spec.N = N, spec.K = K;
    spec.a_strides = as, spec.b_strides = bs, spec.c_strides = cs;
    spec.accumulate = acc;
    ctx.gemm(spec, A.data(), B.data(), C.data());
    for (int64_t p = 0; p < b0; ++p)
      for (int64_t q = 0; q < b1; ++q)
        for (int64_t i = 0; i < M; ++i) {
          for (int64_t j = 0; j < N; ++j) {
            double s = 0.0;
            for (int64_t k = 0; k < K; ++k)
              s += double(A[size_t(p * as[0] + q * as[1] + i * as[2] + k * as[3])]) *
                   double(B[size_t(p * bs[0] + q * bs[1] + k * bs[2] + j * bs[3])]);
            const int64_t at = p * cs[0] + q * cs[1] + i * cs[2] + j;
            if (acc) s += double(C0[size_t(at)]);
            REQUIRE(double(C[size_t(at)]) == Approx(s).margin(1e-5));
          }
          for (int64_t j = N; j < ldc; ++j) {
            const int64_t at = p * cs[0] + q * cs[1] + i * cs[2] + j;
            REQUIRE(C[size_t(at)] == C0[size_t(at)]);
          }
        }
  }
}

TEST_CASE("gemm with K = 0 writes zeros, or leaves C alone when accumulating and M = 0 touches nothing", "[core]") {
  moe::ComputeContext ctx;
  const ref::Vec A = ref::randn(16, 1), B = ref::randn(16, 2);
  {
    ref::Vec C = ref::randn(3 * 4, 3);
    const ref::Vec C0 = C;
    moe::gemm(ctx, false, false, 3, 4, 0, A.data(), 1, B.data(), 4, C.data(), 4, true);
    CHECK(C == C0);
    moe::gemm(ctx, false, false, 3, 4, 0, A.data(), 1, B.data(), 4, C.data(), 4, false);
    for (float c : C) CHECK(c == 0.0f);
    ref::Vec D = C0;
    moe::gemm(ctx, false, false, 0, 4, 2, A.data(), 2, B.data(), 4, D.data(), 4, false);
    CHECK(D == C0);
  }
  // Batched K = 0 respects the strides.
  moe::GemmSpec spec;
  spec.batch0 = 2, spec.batch1 = 1, spec.M = 2, spec.N = 2, spec.K = 0;
  spec.a_strides = {2, 2, 1, 1}, spec.b_strides = {2, 2, 2, 1}, spec.c_strides = {6, 6, 3, 1};
  ref::Vec C(12, 7.0f);
  ctx.gemm(spec, A.data(), B.data(), C.data());
  for (int64_t p = 0; p < 2; ++p)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 3; ++j) CHECK(C[size_t(p * 6 + i * 3 + j)] == (j < 2 ? 0.0f : 7.0f));
}

TEST_CASE("linear_forward and linear_backward match y = x Wᵀ, dx = dy W, dW += dyᵀ x", "[core]") {
  moe::ComputeContext ctx;
  const int64_t rows = 7, in = 13, out = 5;
  const ref::Vec x = ref::randn(rows * in, 21), W = ref::randn(out * in, 22), dy = ref::randn(rows * out, 23);
  {
    ref::Vec y(size_t(rows * out));
    moe::linear_forward(ctx, x.data(), W.data(), y.data(), rows, in, out);
    const ref::DVec want_y = ref::linear(x.data(), W.data(), rows, in, out);
    CHECK(ref::max_abs_diff(ref::to_double(y), want_y) < 1e-5);

    // dx = dy W (rows, in); dW = dyᵀ x (out, in), both in double.
    ref::DVec want_dx(size_t(rows * in), 0.0), want_dW(size_t(out * in), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          want_dx[size_t(r * in + i)] += double(dy[size_t(r * out + o)]) * W[size_t(o * in + i)];
          want_dW[size_t(o * in + i)] += double(dy[size_t(r * out + o)]) * x[size_t(r * in + i)];
        }
    const ref::Vec dx0 = ref::randn(rows * in, 24), dW0 = ref::randn(out * in, 25);
    for (int acc = 0; acc < 2; ++acc) {
      CAPTURE(acc);
      ref::Vec dx = dx0, dW = dW0;
      moe::linear_backward(ctx, x.data(), W.data(), dy.data(), dx.data(), dW.data(), rows, in, out, acc);
      for (size_t i = 0; i < dx.size(); ++i)
        REQUIRE(double(dx[i]) == Approx(want_dx[i] + (acc ? dx0[i] : 0.0)).margin(1e-5));
      for (size_t i = 0; i < dW.size(); ++i) REQUIRE(double(dW[i]) == Approx(want_dW[i] + dW0[i]).margin(1e-5));
    }
    // dx == nullptr skips the input gradient but still accumulates dW.
    ref::Vec dW = dW0;
    moe::linear_backward(ctx, x.data(), W.data(), dy.data(), nullptr, dW.data(), rows, in, out, false);
    for (size_t i = 0; i < dW.size(); ++i) REQUIRE(double(dW[i]) == Approx(want_dW[i] + dW0[i]).margin(1e-5));
  }
}
