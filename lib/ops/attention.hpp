// Causal multi-head attention with grouped-query heads, as batched oneDNN GEMMs over
// (batch, kv head): the g = H/Hkv query heads sharing a kv head are stacked into g*T rows, so one
// GEMM covers the whole group and no key/value is copied per query head.
#pragma once
#include <cstdint>

#include "core/compute.hpp"

namespace moe {

struct AttentionShape {
  int64_t B, T, H, Hkv, hd;
  int64_t group() const { return H / Hkv; }
};

// q (B, H, T, hd), k, v (B, Hkv, T, hd) -> probs (B, H, T, T) saved for backward,
// out (B, H, T, hd). Scale 1/sqrt(hd); key j is visible to query t when j <= t.
void attention_forward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                       float* probs, float* out);

// d_out (B, H, T, hd) -> dq (B, H, T, hd), dk, dv (B, Hkv, T, hd), all written.
// d_probs (B, H, T, T) is scratch.
void attention_backward(ComputeContext& ctx, const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* probs, const float* d_out, float* d_probs, float* dq, float* dk, float* dv);

}  // namespace moe
