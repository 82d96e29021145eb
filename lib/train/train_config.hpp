// Training settings (the "train" section of configs/*.json and the `moe train` flags), one row
// each in train_fields(), and the whole config file: {"model": {...}, "train": {...}}.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "config/fields.hpp"
#include "config/model_config.hpp"

namespace moe {

enum class Balance { none, aux, global_aux, loss_free, loss_free_seq };
const char* to_string(Balance b);
Balance parse_balance(const std::string& text, const std::string& where);
bool uses_bias(Balance b);  // loss-free, loss-free+seq

// How loss-free balancing moves the bias (BiasUpdate::sign is DeepSeek-V3's rule).
enum class BiasUpdate { sign, proportional };
const char* to_string(BiasUpdate u);

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
  BiasUpdate bias_update = BiasUpdate::sign;
  bool bias_center = false;     // subtract the mean bias after each update
  double bias_freeze_at = 1.0;  // fraction of the steps from which u = 0 (1: never)
  double z_loss = 0.0;          // α of the router z-loss (0: off)
  double aux_alpha = 0.01;
  double seq_aux_alpha = 1e-4;
  int64_t eval_every = 50;
  int64_t eval_tokens = 16384;
  int64_t save_every = 100;
  int64_t log_every = 10;
  int64_t threads = 0;  // 0: all cores
  uint64_t seed = 1234;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps before training stops
  double mtp_weight = 0.3;     // λ of the multi-token-prediction loss (models with the MTP module)
};

// The table of training fields, in the order of the `moe train --help` flags.
const std::vector<Field<TrainConfig>>& train_fields();

struct Config {
  ModelConfig model;
  TrainConfig train;
};

TrainConfig train_config_from_json(const nlohmann::json& j, const std::string& where);
// check_train: the train section against the model too (off when command-line flags still apply).
Config config_from_json(const nlohmann::json& j, const std::string& where, bool check_train = true);
// A config file, or the name of a shipped config (tiny, tiny-v3, small, small-e64, small-v3) when no
// file of that name exists.
Config load_config_file(const std::string& path, bool check_train = true);

// Checks every field and the rules between them and the model; throws Error naming the field.
void validate(const TrainConfig& t, const ModelConfig& m, const std::string& where);

nlohmann::json to_json(const TrainConfig& t);
// {"model": ..., "train": ...} in the format of configs/*.json (reads back with config_from_json).
nlohmann::json config_file_json(const Config& c);

}  // namespace moe
