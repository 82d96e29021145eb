// The training field table and the config file format, with one-line errors naming the field.
#include "train/train_config.hpp"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/threads.hpp"
#include "train/builtin_configs.hpp"

namespace moe {

using nlohmann::json;

namespace {

const std::vector<std::string> kBalanceNames = {"none", "aux", "global-aux", "loss-free", "loss-free+seq"};
const std::vector<std::string> kBiasUpdateNames = {"sign", "proportional"};

}  // namespace

const char* to_string(Balance b) {
  switch (b) {
    case Balance::none:
      return "none";
    case Balance::aux:
      return "aux";
    case Balance::global_aux:
      return "global-aux";
    case Balance::loss_free:
      return "loss-free";
    case Balance::loss_free_seq:
      return "loss-free+seq";
  }
  return "?";
}

Balance parse_balance(const std::string& text, const std::string& where) {
  for (Balance b : {Balance::none, Balance::aux, Balance::global_aux, Balance::loss_free, Balance::loss_free_seq})
    if (text == to_string(b)) return b;
  fail(where + ": " + choice_error(kBalanceNames, text));
}

bool uses_bias(Balance b) { return b == Balance::loss_free || b == Balance::loss_free_seq; }

const char* to_string(BiasUpdate u) { return u == BiasUpdate::sign ? "sign" : "proportional"; }

const std::vector<Field<TrainConfig>>& train_fields() {
  using T = TrainConfig;
  static const std::vector<Field<T>> fields = {
      {"steps", &T::steps, Check::positive, 0, "Optimizer steps in total", "--steps"},
      {"batch", &T::batch, Check::positive, 0, "Sequences per micro-batch", "--batch"},
      {"seq", &T::seq, Check::positive, 0, "Tokens per sequence", "--seq"},
      {"accum", &T::accum, Check::positive, 0, "Micro-batches per optimizer step", "--accum"},
      {"lr", &T::lr, Check::positive_finite, 0, "Peak learning rate", "--lr"},
      {"min_lr", &T::min_lr, Check::non_negative_finite, 0, "Learning rate at the end of the cosine decay", "--min-lr"},
      {"warmup", &T::warmup, Check::non_negative, 0, "Linear warm-up steps", "--warmup"},
      {"weight_decay", &T::weight_decay, Check::non_negative_finite, 0, "AdamW weight decay (matrices only)",
       "--weight-decay"},
      {"grad_clip", &T::grad_clip, Check::non_negative_finite, 0, "Global gradient-norm clip (0: off)", "--grad-clip"},
      {"bias_rate", &T::bias_rate, Check::non_negative_finite, 0, "Bias update speed u of loss-free balancing",
       "--bias-rate"},
      {"bias_update",
       Choice<T>{kBiasUpdateNames, [](const T& t) { return std::string(to_string(t.bias_update)); },
                 [](T& t, const std::string& s) {
                   t.bias_update = s == "sign" ? BiasUpdate::sign : BiasUpdate::proportional;
                 }},
       Check::any, 0,
       "Loss-free bias rule: sign (b_i += u*sign(mean(c)-c_i), DeepSeek-V3) | proportional (b_i += "
       "u*(mean(c)-c_i)/mean(c))",
       "--bias-update"},
      {"bias_center", &T::bias_center, Check::any, 0,
       "Subtract the mean bias after each update (selection is unchanged; the values stop drifting)", "--bias-center"},
      {"bias_freeze_at", &T::bias_freeze_at, Check::non_negative_finite, 0,
       "Fraction of the steps from which the bias stops moving (u = 0); 1: never", "--bias-freeze-at"},
      {"aux_alpha", &T::aux_alpha, Check::non_negative_finite, 0,
       "Weight of the auxiliary balance loss (--balance aux, global-aux)", "--aux-alpha"},
      {"z_loss", &T::z_loss, Check::non_negative_finite, 0,
       "Weight of the router z-loss alpha*mean(logsumexp(router logits)^2) (0: off)", "--z-loss"},
      {"seq_aux_alpha", &T::seq_aux_alpha, Check::non_negative_finite, 0,
       "Weight of the sequence-wise loss (loss-free+seq)", "--seq-aux-alpha"},
      {"eval_every", &T::eval_every, Check::non_negative, 0, "Evaluate every N steps (0: only at the end)",
       "--eval-every"},
      {"eval_tokens", &T::eval_tokens, Check::positive, 0, "Validation tokens per evaluation", "--eval-tokens"},
      {"save_every", &T::save_every, Check::non_negative, 0, "Checkpoint every N steps (0: only at the end)",
       "--save-every"},
      {"log_every", &T::log_every, Check::positive, 0, "Plain log line every N steps when not on a TTY", "--log-every"},
      {"threads", &T::threads, Check::non_negative, kMaxThreads, "Threads (0: all cores)", "--threads"},
      {"max_bad_steps", &T::max_bad_steps, Check::positive, 0, "Stop after this many consecutive non-finite steps",
       "--max-bad-steps"},
      {"seed", &T::seed, Check::any, 0, "Seed for initialisation and batch sampling", "--seed"},
      {"mtp_weight", &T::mtp_weight, Check::non_negative_finite, 0,
       "Weight lambda of the multi-token-prediction loss (0: the MTP module is not trained)", "--mtp-weight"},
      {"balance",
       Choice<T>{kBalanceNames, [](const T& t) { return std::string(to_string(t.balance)); },
                 [](T& t, const std::string& s) { t.balance = parse_balance(s, "balance"); }},
       Check::any, 0, "none | aux (per micro-batch) | global-aux (over the whole step) | loss-free | loss-free+seq",
       "--balance"},
  };
  return fields;
}

TrainConfig train_config_from_json(const json& j, const std::string& where) {
  require_object(j, where);
  TrainConfig t;
  for (const auto& [key, v] : j.items()) {
    const Field<TrainConfig>* f = find_field(train_fields(), key);
    if (!f)
      fail(where + ": unknown key \"train." + key + "\" (did you mean \"" +
           nearest_name(key, field_names(train_fields())) + "\"?)");
    read_field(*f, t, v, where + ": train." + key);
  }
  return t;
}

void validate(const TrainConfig& t, const ModelConfig& m, const std::string& where) {
  const std::string at = where + ": train.";
  validate_fields(train_fields(), t, at);
  if (t.seq > m.max_position_embeddings)
    fail(at + "seq (" + std::to_string(t.seq) + ") must be at most max_position_embeddings (" +
         std::to_string(m.max_position_embeddings) + ")");
  if (t.min_lr > t.lr) fail(at + "min_lr must be at most lr");
  if (t.bias_freeze_at > 1.0)
    fail(at + "bias_freeze_at: expected a fraction of the steps in [0, 1], got " + std::to_string(t.bias_freeze_at));
  const double activations = activation_bytes_estimate(m, t.batch, t.seq);
  if (activations > 16.0 * (1ull << 30))
    fail(at + "batch x seq needs about " + whole(activations / (1 << 30)) + " GiB of activations; reduce batch or seq");
}

Config config_from_json(const json& j, const std::string& where, bool check_train) {
  require_object(j, where);
  Config c;
  bool has_model = false;
  if (j.contains("train") && !j["train"].is_object())
    fail(where + ": train: expected a JSON object, got " + show(j["train"]));
  // A pointer, not a copy: copying a json recurses once per nesting level (a train section of
  // 20000 nested brackets overflowed the stack before the type check could refuse it).
  const json* train = nullptr;
  for (const auto& [key, v] : j.items()) {
    if (key == "model")
      has_model = true;
    else if (key == "train")
      train = &v;
    else
      fail(where + ": unknown top-level key \"" + key + "\" (expected \"model\" and \"train\")");
  }
  if (!has_model) fail(where + ": missing the \"model\" section");
  c.model = model_config_from_json(j.at("model"), where + ": model", false);
  c.train = train ? train_config_from_json(*train, where) : train_config_from_json(json::object(), where);
  if (check_train) validate(c.train, c.model, where);
  return c;
}

Config load_config_file(const std::string& path, bool check_train) {
  // A file wins; a bare name that is no file names a shipped config.
  if (!std::filesystem::exists(path) && path.find('/') == std::string::npos) {
    std::string names;
    for (const BuiltinConfig& b : builtin_configs()) {
      if (path == b.name) {
        json j;
        try {
          j = json::parse(b.json);
        } catch (const json::exception&) {
          fail("built-in config " + path + ": not valid JSON (a broken build)");
        }
        return config_from_json(j, "built-in config " + path, check_train);
      }
      names += (names.empty() ? "" : ", ") + std::string(b.name);
    }
    fail(path + ": no such file, and not a built-in config (" + names + ")");
  }
  return config_from_json(read_json_file(path), path, check_train);
}

json to_json(const TrainConfig& t) { return fields_json(train_fields(), t); }

json config_file_json(const Config& c) {
  json model = to_json(c.model);
  for (const char* key : {"model_type", "architectures", "torch_dtype"}) model.erase(key);  // checkpoint keys
  return {{"model", model}, {"train", to_json(c.train)}};
}

}  // namespace moe
