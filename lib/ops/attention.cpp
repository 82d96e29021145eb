#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>

namespace moe {

namespace {

// A (B, Hkv)-batched GEMM; strides are {batch, kv head, row, col}.
void batched(ComputeContext& ctx, const AttentionShape& s, int64_t M, int64_t N, int64_t K,
             std::array<int64_t, 4> a, std::array<int64_t, 4> b, std::array<int64_t, 4> c, const float* A,
             const float* Bm, float* C) {
  GemmSpec spec;
  spec.batch0 = s.B, spec.batch1 = s.Hkv;
  spec.M = M, spec.N = N, spec.K = K;
  spec.a_strides = a, spec.b_strides = b, spec.c_strides = c;
  ctx.gemm(spec, A, Bm, C);
}

}  // namespace

void attention_forward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k,
                       const float* v, float* probs, float* out) {
  const int64_t T = s.T, hd = s.hd, g = s.group(), H = s.H, Hkv = s.Hkv;
  const int64_t gT = g * T;
  // scores (g*T, T) = q_group (g*T, hd) · kᵀ (hd, T)
  batched(ctx, s, gT, T, hd, {H * T * hd, gT * hd, hd, 1}, {Hkv * T * hd, T * hd, 1, hd}, {H * T * T, gT * T, T, 1},
          q, k, probs);
  const float scale = 1.0f / std::sqrt(float(hd));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < s.B * H * T; ++row) {
    const int64_t t = row % T;
    float* p = probs + row * T;
    float max = -INFINITY;
    for (int64_t j = 0; j <= t; ++j) max = std::max(max, p[j] * scale);
    float sum = 0.0f;
    for (int64_t j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] * scale - max));
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j <= t; ++j) p[j] *= inv;
    for (int64_t j = t + 1; j < T; ++j) p[j] = 0.0f;
  }
  // out (g*T, hd) = probs (g*T, T) · v (T, hd)
  batched(ctx, s, gT, hd, T, {H * T * T, gT * T, T, 1}, {Hkv * T * hd, T * hd, hd, 1}, {H * T * hd, gT * hd, hd, 1},
          probs, v, out);
}

void attention_backward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k,
                        const float* v, const float* probs, const float* d_out, float* d_probs, float* dq,
                        float* dk, float* dv) {
  const int64_t T = s.T, hd = s.hd, g = s.group(), H = s.H, Hkv = s.Hkv;
  const int64_t gT = g * T;
  // d_probs (g*T, T) = d_out (g*T, hd) · vᵀ (hd, T)
  batched(ctx, s, gT, T, hd, {H * T * hd, gT * hd, hd, 1}, {Hkv * T * hd, T * hd, 1, hd}, {H * T * T, gT * T, T, 1},
          d_out, v, d_probs);
  // dv (T, hd) = probsᵀ (T, g*T) · d_out (g*T, hd): the group's query heads sum into their kv head.
  batched(ctx, s, T, hd, gT, {H * T * T, gT * T, 1, T}, {H * T * hd, gT * hd, hd, 1}, {Hkv * T * hd, T * hd, hd, 1},
          probs, d_out, dv);
  // Softmax backward, with the 1/sqrt(hd) scale folded in: dS = P ⊙ (dP - Σ_j dP_j P_j) · scale.
  const float scale = 1.0f / std::sqrt(float(hd));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < s.B * H * T; ++row) {
    const int64_t t = row % T;
    const float* p = probs + row * T;
    float* dp = d_probs + row * T;
    float dot = 0.0f;
    for (int64_t j = 0; j <= t; ++j) dot += dp[j] * p[j];
    for (int64_t j = 0; j <= t; ++j) dp[j] = p[j] * (dp[j] - dot) * scale;
    for (int64_t j = t + 1; j < T; ++j) dp[j] = 0.0f;
  }
  // dq (g*T, hd) = dS (g*T, T) · k (T, hd)
  batched(ctx, s, gT, hd, T, {H * T * T, gT * T, T, 1}, {Hkv * T * hd, T * hd, hd, 1}, {H * T * hd, gT * hd, hd, 1},
          d_probs, k, dq);
  // dk (T, hd) = dSᵀ (T, g*T) · q (g*T, hd)
  batched(ctx, s, T, hd, gT, {H * T * T, gT * T, 1, T}, {H * T * hd, gT * hd, hd, 1}, {Hkv * T * hd, T * hd, hd, 1},
          d_probs, q, dk);
}

}  // namespace moe
