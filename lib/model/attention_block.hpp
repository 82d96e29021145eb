// The attention block of a decoder layer, h = x + o_proj(attention(xn)) with xn = rmsnorm1(x):
// grouped-query attention (Llama-style q/k/v projections) or DeepSeek-V3's multi-head latent
// attention (MLA), behind one forward/backward pair. Training runs MLA in its materialised form
// (every head's key and value built from the latent); decoding uses the absorbed form
// (infer/decode.cpp), whose cache holds only the latent and the shared rotated key.
#pragma once
#include "core/compute.hpp"
#include "model/model.hpp"

namespace moe {

// Hugging Face builds q_a_layernorm and kv_a_layernorm with its default epsilon, whatever
// rms_norm_eps says; released DeepSeek-V3 weights were trained with that.
constexpr float kMlaLatentNormEps = 1e-6f;

// Reads a.xn1 (N, D); saves what backward needs in `a`; adds o_proj's output into a.h, which must
// hold the residual input x.
void attention_block_forward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, LayerActivations& a,
                             Workspace& ws);

// d loss / d h in ws.d_resid -> d loss / d xn1 written to ws.d_norm; weight gradients accumulate
// into lg.
void attention_block_backward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, const LayerWeights& lg,
                              const LayerActivations& a, Workspace& ws);

// The rotated shared key part of MLA for positions pos0 .. pos0+T-1 of B sequences:
// raw (B*T, d_r) -> rotated (B*T, d_r). Decoding uses it to fill the latent cache.
void mla_rotate_key(const RopeTable& rope, const float* raw, float* rotated, int64_t B, int64_t T, int64_t pos0);

}  // namespace moe
