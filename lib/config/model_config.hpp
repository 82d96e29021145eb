// The model's configuration: Hugging Face DeepSeek-V3 field names, read from the "model" section
// of configs/*.json and from a checkpoint's flat config.json. Each field is one row of
// model_fields(): parsing, validation, writing and printing read that table.
#pragma once
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "config/fields.hpp"

namespace moe {

// config.json key of a checkpoint saved by `moe train`: the window length it was trained on.
inline constexpr const char* kTrainSeqKey = "moe_train_seq";

enum class ScoringFunc { sigmoid, softmax };
const char* to_string(ScoringFunc f);

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 64;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 4;
  int64_t head_dim = 16;  // absent (or null) in a file: hidden_size / num_attention_heads
  int64_t intermediate_size = 192;
  int64_t moe_intermediate_size = 32;
  int64_t first_k_dense_replace = 1;
  int64_t n_shared_experts = 1;
  int64_t n_routed_experts = 8;
  int64_t num_experts_per_tok = 2;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  ScoringFunc scoring_func = ScoringFunc::sigmoid;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 256;
  double initializer_range = 0.02;
  // Multi-head latent attention (DeepSeek-V3), used when kv_lora_rank is set; without it the
  // attention is grouped-query (num_key_value_heads, head_dim above).
  std::optional<int64_t> q_lora_rank;    // r_q: q = q_b_proj(rmsnorm(q_a_proj(x))); null: q = q_proj(x)
  std::optional<int64_t> kv_lora_rank;   // r_kv: the cached latent width
  int64_t qk_nope_head_dim = 0;          // d_n: the part of each query/key head without RoPE
  int64_t qk_rope_head_dim = 0;          // d_r: the rotated part (the key's is shared by all heads)
  int64_t v_head_dim = 0;                // d_v
  bool rope_interleave = true;           // RoPE rotates adjacent pairs (HF's interleave), else halves
  int64_t num_nextn_predict_layers = 0;  // multi-token-prediction modules: 0 or 1 (DeepSeek-V3's depth)
  // Device-limited routing (DeepSeek-V3's node-limited routing, over the ranks of expert
  // parallelism): the experts form `expert_ranks` equal contiguous blocks (rank r's experts in an
  // expert-parallel run on that many ranks) and a token may use experts of at most
  // `max_ranks_per_token` blocks. A property of the model, not of the job: every forward that
  // loads it routes this way, on any number of processes. 0: off (the default, and what a config
  // without the fields means).
  int64_t max_ranks_per_token = 0;
  int64_t expert_ranks = 0;

  bool mla() const { return kv_lora_rank.has_value(); }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Width of the attention output that o_proj reads: H * d_v (MLA) or H * head_dim.
  int64_t attn_dim() const { return num_attention_heads * (mla() ? v_head_dim : head_dim); }
  bool mtp() const { return num_nextn_predict_layers > 0; }
  // Whether device-limited routing restricts any token (a limit of all blocks restricts none).
  bool rank_limited() const { return max_ranks_per_token > 0 && max_ranks_per_token < expert_ranks; }
  // Decoder layers in the tensor list: the main ones, then the MTP module's layer (index L).
  int64_t decoder_layers() const { return num_hidden_layers + num_nextn_predict_layers; }
  // MoE layers among decoder_layers() (num_moe_layers() counts the main model's only).
  int64_t num_routed_layers() const {
    return decoder_layers() > first_k_dense_replace ? decoder_layers() - first_k_dense_replace : 0;
  }
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  // Position of MoE layer `layer` among the MoE layers.
  int64_t moe_layer_index(int64_t layer) const { return layer - num_dense_layers(); }
  int64_t num_moe_layers() const {
    return num_hidden_layers > first_k_dense_replace ? num_hidden_layers - first_k_dense_replace : 0;
  }
  // Dense layers of the main model (first_k_dense_replace may exceed the layer count: all dense).
  int64_t num_dense_layers() const { return num_hidden_layers - num_moe_layers(); }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t shared_intermediate() const { return n_shared_experts * moe_intermediate_size; }
};

// The table of model fields, in the order of configs/*.json.
const std::vector<Field<ModelConfig>>& model_fields();

// Parses and validates. `where` names the source (a file path, "file: model") in error messages.
// allow_checkpoint_keys: also accept the keys a checkpoint's config.json adds (model_type, ...).
ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where, bool allow_checkpoint_keys);

// Checks every rule (sizes, divisibility, routing groups); throws Error naming the field.
void validate(const ModelConfig& m, const std::string& where);

// Flat, Hugging Face field names. An MLA model is a complete HF DeepseekV3Config ("model_type":
// "deepseek_v3"); a GQA model keeps "model_type": "moe".
nlohmann::json to_json(const ModelConfig& m);

// The first field in which two configs build different models, as "name: A against B" (empty when
// they build the same one; first_k_dense_replace past the last layer counts as the same "all dense").
std::string model_difference(const ModelConfig& a, const ModelConfig& b);

// Parameters of one layer's attention block (projections and latent norms), in double: validate()
// forms it before it knows the sizes are sane, so no integer product may overflow.
double attention_params(const ModelConfig& m);
// Bytes of KV cache per token over all layers: MLA caches r_kv + d_r floats per layer; `as_gqa`
// gives what grouped-query attention with the same heads would need, (K + V) x heads x width.
double kv_cache_bytes_per_token(const ModelConfig& m, bool as_gqa = false);

// Bytes of activations one training micro-batch of batch x seq tokens keeps (an estimate, used to
// refuse a run that cannot fit before anything is allocated).
double activation_bytes_estimate(const ModelConfig& m, int64_t batch, int64_t seq);

}  // namespace moe
