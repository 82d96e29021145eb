// The one list of tensors. A single walker names every model tensor with its shape and role; it
// drives the arena layout, pointer binding (params and grads share the layout), checkpoint names,
// loading, saving, the parameter summary and the optimizer.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "config/model_config.hpp"
#include "moe/moe_layer.hpp"

namespace moe {

enum class TensorRole {
  embedding,
  attention,
  norm,
  dense_ffn,
  shared_expert,
  routed_expert,
  router,
  router_bias,
  head
};
const char* to_string(TensorRole role);

struct TensorSpec {
  std::string name;            // Hugging Face DeepSeek-V3 checkpoint name
  std::vector<int64_t> shape;  // row-major, [out, in] for matrices
  int64_t offset = 0;          // in floats, within the arena
  int64_t numel = 0;
  TensorRole role = TensorRole::attention;
  int64_t layer = -1;     // -1 for tensors outside the layers
  int64_t expert = -1;    // the routed expert J of a routed-expert tensor, else -1
  bool trainable = true;  // the routing bias is state updated by balancing, not by AdamW
  bool decay = false;     // weight decay applies to matrices only
  bool mtp = false;       // part of the multi-token-prediction module (layer num_hidden_layers)
};

struct LayerWeights {
  float* input_layernorm = nullptr;  // (D)
  // Grouped-query attention; MLA uses q_proj too when q_lora_rank is null, as (H*(dn+dr), D).
  float* q_proj = nullptr;  // (H*hd, D)
  float* k_proj = nullptr;  // (Hkv*hd, D)
  float* v_proj = nullptr;  // (Hkv*hd, D)
  // Multi-head latent attention (dn, dr, dv: qk_nope / qk_rope / v head dims; rq, rkv: latent ranks).
  float* q_a_proj = nullptr;                  // (rq, D)
  float* q_a_layernorm = nullptr;             // (rq)
  float* q_b_proj = nullptr;                  // (H*(dn+dr), rq)
  float* kv_a_proj_with_mqa = nullptr;        // (rkv+dr, D): [c_kv | k_rope]
  float* kv_a_layernorm = nullptr;            // (rkv)
  float* kv_b_proj = nullptr;                 // (H*(dn+dv), rkv): per head [k_nope | v]
  float* o_proj = nullptr;                    // (D, H*hd) or (D, H*dv)
  float* post_attention_layernorm = nullptr;  // (D)
  // Dense FFN (layer < first_k_dense_replace).
  float* gate_proj = nullptr;  // (I, D)
  float* up_proj = nullptr;    // (I, D)
  float* down_proj = nullptr;  // (D, I)
  MoeWeights moe;              // MoE FFN (layer >= first_k_dense_replace)
};

// DeepSeek-V3's multi-token-prediction module (depth 1): h'_i = eh_proj([enorm(embed(t_i+1)) |
// hnorm(h_i)]) through decoder layer L (layers[L]), then the main lm_head over shared_head.norm.
// The embedding and the head are the main model's.
struct MtpWeights {
  float* enorm = nullptr;             // (D)
  float* hnorm = nullptr;             // (D)
  float* eh_proj = nullptr;           // (D, 2D): [embedding half | hidden half]
  float* shared_head_norm = nullptr;  // (D)
};

struct ModelWeights {
  float* embed_tokens = nullptr;     // (V, D)
  std::vector<LayerWeights> layers;  // num_hidden_layers, then the MTP layer when the model has one
  float* norm = nullptr;             // (D)
  float* lm_head = nullptr;          // (V, D)
  MtpWeights mtp;
};

// The routed experts a process holds: all of them, or (expert parallelism) the contiguous block
// [first, first + count) of every MoE layer. Tensor names stay global ("mlp.experts.<first>...").
struct ExpertShard {
  int64_t first = 0;
  int64_t count = -1;  // -1: all experts
  int64_t size(const ModelConfig& c) const { return count < 0 ? c.n_routed_experts : count; }
  bool whole(const ModelConfig& c) const { return first == 0 && size(c) == c.n_routed_experts; }
};

// Calls `visit(spec, field)` for every tensor in arena order. `field` is where the tensor's pointer
// belongs in `weights`; it is null for experts 1..E-1, which follow expert 0 contiguously.
void for_each_tensor(const ModelConfig& config, ModelWeights& weights,
                     const std::function<void(const TensorSpec&, float**)>& visit, ExpertShard shard = {});

struct ParamLayout {
  std::vector<TensorSpec> tensors;
  int64_t total = 0;  // floats
};

ParamLayout make_layout(const ModelConfig& config, ExpertShard shard = {});
ModelWeights bind_weights(const ModelConfig& config, float* base, ExpertShard shard = {});

}  // namespace moe
