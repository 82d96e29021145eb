// Causal multi-head attention with grouped-query heads, as batched oneDNN GEMMs over
// (batch, kv head): the g = H/Hkv query heads sharing a kv head are stacked into g*T rows, so one
// GEMM covers the whole group and no key/value is copied per query head.
#pragma once
#include <cstdint>

#include "core/compute.hpp"

namespace moe {

// hd: width of query and key heads; hv: width of value (and output) heads, 0 for hd (multi-head
// latent attention has query/key heads of d_n + d_r and value heads of d_v).
struct AttentionShape {
  int64_t B, T, H, Hkv, hd, hv = 0;
  int64_t group() const { return H / Hkv; }
  int64_t value_dim() const { return hv > 0 ? hv : hd; }
};

// The share of the full T×T score and value products the causal kernels compute (query blocks
// multiply only the keys up to their last row): 1 for T < 128, 5/8 at 4 blocks. For FLOP counts.
double attention_computed_fraction(int64_t T);

// q (B, H, T, hd), k (B, Hkv, T, hd), v (B, Hkv, T, hv) -> probs (B, H, T, T) saved for backward,
// out (B, H, T, hv). Scale 1/sqrt(hd); key j is visible to query t when j <= t.
void attention_forward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* probs, float* out);

// d_out (B, H, T, hv) -> dq (B, H, T, hd), dk (B, Hkv, T, hd), dv (B, Hkv, T, hv), all written.
// d_probs (B, H, T, T) is scratch.
void attention_backward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* probs, const float* d_out, float* d_probs, float* dq, float* dk, float* dv);

}  // namespace moe
