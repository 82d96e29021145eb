// Model and training configuration: the `{"model": {...}, "train": {...}}` JSON files in configs/
// and the flat `config.json` of a checkpoint. Model field names follow Hugging Face DeepSeek-V3.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace moe {

enum class ScoringFunc { sigmoid, softmax };

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

  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  // Position of MoE layer `layer` among the MoE layers.
  int64_t moe_layer_index(int64_t layer) const { return layer - std::min(first_k_dense_replace, num_hidden_layers); }
  int64_t num_moe_layers() const {
    return num_hidden_layers > first_k_dense_replace ? num_hidden_layers - first_k_dense_replace : 0;
  }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t shared_intermediate() const { return n_shared_experts * moe_intermediate_size; }
};

enum class Balance { none, aux, loss_free, loss_free_seq };

struct TrainConfig {
  int64_t steps = 300;
  int64_t batch = 8;
  int64_t seq = 128;
  int64_t accum = 1;
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup = 30;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  Balance balance = Balance::loss_free;
  double bias_rate = 1e-3;
  double aux_alpha = 0.01;
  double seq_aux_alpha = 1e-4;
  int64_t eval_every = 50;
  int64_t eval_tokens = 16384;
  int64_t save_every = 100;
  int64_t log_every = 10;
  int64_t threads = 0;  // 0: all cores
  uint64_t seed = 1234;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps before training stops
};

struct Config {
  ModelConfig model;
  TrainConfig train;
};

const char* to_string(ScoringFunc f);
const char* to_string(Balance b);
Balance parse_balance(const std::string& text, const std::string& where);

// Parse and validate. `where` names the source (a file path) in error messages.
ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& where,
                                   bool allow_checkpoint_keys);
TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& where);
Config config_from_json(const nlohmann::json& j, const std::string& where);
Config load_config_file(const std::string& path);
nlohmann::json read_json_file(const std::string& path);  // errors name the path

// Checks every rule (sizes, divisibility, routing groups); throws Error naming the field.
void validate(const ModelConfig& m, const std::string& where);
void validate(const TrainConfig& t, const ModelConfig& m, const std::string& where);

nlohmann::json to_json(const ModelConfig& m);  // flat, Hugging Face field names
nlohmann::json to_json(const TrainConfig& t);
// {"model": ..., "train": ...} in the format of configs/*.json (reads back with config_from_json).
nlohmann::json config_file_json(const Config& c);

// Levenshtein-nearest candidate, used for "unknown key ... did you mean ...?".
std::string nearest_name(const std::string& word, const std::initializer_list<const char*>& names);

}  // namespace moe
