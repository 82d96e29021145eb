// Config parsing with one-line errors that name the file and field.
#include "model/config.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

using nlohmann::json;

const char* to_string(ScoringFunc f) { return f == ScoringFunc::sigmoid ? "sigmoid" : "softmax"; }

const char* to_string(Balance b) {
  switch (b) {
    case Balance::none: return "none";
    case Balance::aux: return "aux";
    case Balance::loss_free: return "loss-free";
    case Balance::loss_free_seq: return "loss-free+seq";
  }
  return "?";
}

Balance parse_balance(const std::string& text, const std::string& where) {
  if (text == "none") return Balance::none;
  if (text == "aux") return Balance::aux;
  if (text == "loss-free") return Balance::loss_free;
  if (text == "loss-free+seq") return Balance::loss_free_seq;
  fail(where + ": expected one of none, aux, loss-free, loss-free+seq, got \"" + text + "\"");
}

std::string nearest_name(const std::string& word, const std::initializer_list<const char*>& names) {
  std::string best;
  size_t best_distance = SIZE_MAX;
  for (const char* candidate : names) {
    const std::string c = candidate;
    std::vector<size_t> row(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= c.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (word[i - 1] != c[j - 1])});
        diagonal = up;
      }
    }
    if (row[c.size()] < best_distance) best_distance = row[c.size()], best = c;
  }
  return best;
}

namespace {

// The start of v as JSON, for a message. Not v.dump(): that recurses once per nesting level (a
// config of 20000 nested brackets overflowed the stack) and prints all of a huge value.
void show_into(const json& v, std::string& out, int depth) {
  if (out.size() > 40) return;
  if (v.is_array() || v.is_object()) {
    out += v.is_array() ? '[' : '{';
    if (depth >= 8 && !v.empty()) out += "...";
    bool first = true;
    for (auto it = v.begin(); depth < 8 && it != v.end() && out.size() <= 40; ++it) {
      if (!first) out += ',';
      first = false;
      if (v.is_object()) out += json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace) + ':';
      show_into(*it, out, depth + 1);
    }
    out += v.is_array() ? ']' : '}';
  } else if (v.is_string() && v.get_ref<const std::string&>().size() > 40) {
    out += json(v.get_ref<const std::string&>().substr(0, 40)).dump(-1, ' ', false, json::error_handler_t::replace);
  } else {
    out += v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

std::string show(const json& v) {
  std::string s;
  show_into(v, s, 0);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// Readers that insist on the JSON type; `where` is "file: section.field".
int64_t get_int(const json& v, const std::string& where) {
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    fail(where + ": expected an integer, got " + show(v) + " (too large)");
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  fail(where + ": expected an integer, got " + show(v));
}

double get_number(const json& v, const std::string& where) {
  if (v.is_number()) return v.get<double>();
  fail(where + ": expected a number, got " + show(v));
}

bool get_bool(const json& v, const std::string& where) {
  if (v.is_boolean()) return v.get<bool>();
  fail(where + ": expected true or false, got " + show(v));
}

std::string get_string(const json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  fail(where + ": expected a string, got " + show(v));
}

void require_object(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where + ": expected a JSON object, got " + show(j));
}

#define MOE_MODEL_FIELDS                                                                     \
  "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",                  \
      "num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",      \
      "first_k_dense_replace", "n_shared_experts", "n_routed_experts", "num_experts_per_tok", \
      "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "scoring_func",    \
      "rms_norm_eps", "rope_theta", "max_position_embeddings", "initializer_range"

#define MOE_TRAIN_FIELDS                                                                      \
  "steps", "batch", "seq", "accum", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",   \
      "balance", "bias_rate", "aux_alpha", "seq_aux_alpha", "eval_every", "eval_tokens",     \
      "save_every", "log_every", "threads", "seed", "max_bad_steps"

// A size estimate for a message. Sizes are bounded but their products are not: a double past
// INT64_MAX cast to int64_t is undefined behaviour, so large values are printed as 1.6e+23.
std::string whole(double x) {
  char text[32];
  std::snprintf(text, sizeof text, std::fabs(x) < 1e15 ? "%.0f" : "%.2g", x);
  return text;
}

void positive(int64_t v, const std::string& where) {
  if (v <= 0) fail(where + ": expected a positive integer, got " + std::to_string(v));
}
void non_negative(int64_t v, const std::string& where) {
  if (v < 0) fail(where + ": expected an integer >= 0, got " + std::to_string(v));
}
void positive_finite(double v, const std::string& where) {
  if (!(std::isfinite(v) && v > 0)) {
    std::ostringstream s;
    s << where << ": expected a positive finite number, got " << v;
    fail(s.str());
  }
}
void non_negative_finite(double v, const std::string& where) {
  if (!(std::isfinite(v) && v >= 0)) {
    std::ostringstream s;
    s << where << ": expected a finite number >= 0, got " << v;
    fail(s.str());
  }
}

}  // namespace

ModelConfig model_config_from_json(const json& j, const std::string& where, bool allow_checkpoint_keys) {
  require_object(j, where);
  ModelConfig m;
  bool head_dim_given = false;
  for (const auto& [key, v] : j.items()) {
    const std::string at = where + ": " + key;
    if (key == "vocab_size") m.vocab_size = get_int(v, at);
    else if (key == "hidden_size") m.hidden_size = get_int(v, at);
    else if (key == "num_hidden_layers") m.num_hidden_layers = get_int(v, at);
    else if (key == "num_attention_heads") m.num_attention_heads = get_int(v, at);
    else if (key == "num_key_value_heads") m.num_key_value_heads = get_int(v, at);
    else if (key == "head_dim") {
      if (!v.is_null()) m.head_dim = get_int(v, at), head_dim_given = true;
    } else if (key == "intermediate_size") m.intermediate_size = get_int(v, at);
    else if (key == "moe_intermediate_size") m.moe_intermediate_size = get_int(v, at);
    else if (key == "first_k_dense_replace") m.first_k_dense_replace = get_int(v, at);
    else if (key == "n_shared_experts") m.n_shared_experts = get_int(v, at);
    else if (key == "n_routed_experts") m.n_routed_experts = get_int(v, at);
    else if (key == "num_experts_per_tok") m.num_experts_per_tok = get_int(v, at);
    else if (key == "n_group") m.n_group = get_int(v, at);
    else if (key == "topk_group") m.topk_group = get_int(v, at);
    else if (key == "routed_scaling_factor") m.routed_scaling_factor = get_number(v, at);
    else if (key == "norm_topk_prob") m.norm_topk_prob = get_bool(v, at);
    else if (key == "scoring_func") {
      const std::string s = get_string(v, at);
      if (s == "sigmoid") m.scoring_func = ScoringFunc::sigmoid;
      else if (s == "softmax") m.scoring_func = ScoringFunc::softmax;
      else fail(at + ": expected \"sigmoid\" or \"softmax\", got \"" + s + "\"");
    } else if (key == "rms_norm_eps") m.rms_norm_eps = get_number(v, at);
    else if (key == "rope_theta") m.rope_theta = get_number(v, at);
    else if (key == "max_position_embeddings") m.max_position_embeddings = get_int(v, at);
    else if (key == "initializer_range") m.initializer_range = get_number(v, at);
    else if (allow_checkpoint_keys && (key == "model_type" || key == "architectures" || key == "torch_dtype")) {
      if (key == "model_type" && !(v.is_string() && v.get<std::string>() == "moe"))
        fail(at + ": expected \"moe\", got " + show(v));
    } else {
      fail(where + ": unknown key \"" + key + "\" (did you mean \"" + nearest_name(key, {MOE_MODEL_FIELDS}) + "\"?)");
    }
  }
  if (!head_dim_given) {
    positive(m.num_attention_heads, where + ": num_attention_heads");
    if (m.hidden_size % m.num_attention_heads != 0)
      fail(where + ": num_attention_heads (" + std::to_string(m.num_attention_heads) +
           ") must divide hidden_size (" + std::to_string(m.hidden_size) + ") when head_dim is not given");
    m.head_dim = m.hidden_size / m.num_attention_heads;
  }
  validate(m, where);
  return m;
}

void validate(const ModelConfig& m, const std::string& where) {
  const std::string at = where + ": ";
  // Bound every size before any product of sizes is formed, so nothing below can overflow.
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", m.vocab_size},           {"hidden_size", m.hidden_size},
      {"num_hidden_layers", m.num_hidden_layers}, {"num_attention_heads", m.num_attention_heads},
      {"num_key_value_heads", m.num_key_value_heads}, {"head_dim", m.head_dim},
      {"intermediate_size", m.intermediate_size}, {"moe_intermediate_size", m.moe_intermediate_size},
      {"first_k_dense_replace", m.first_k_dense_replace}, {"n_shared_experts", m.n_shared_experts},
      {"n_routed_experts", m.n_routed_experts}, {"num_experts_per_tok", m.num_experts_per_tok},
      {"n_group", m.n_group},                 {"topk_group", m.topk_group},
      {"max_position_embeddings", m.max_position_embeddings}};
  for (const auto& [name, value] : sizes)
    if (value > (int64_t(1) << 24))
      fail(at + name + ": expected at most 16777216, got " + std::to_string(value));
  positive(m.vocab_size, at + "vocab_size");
  if (m.vocab_size < 256)
    fail(at + "vocab_size: expected at least 256 (tokens are bytes), got " + std::to_string(m.vocab_size));
  positive(m.hidden_size, at + "hidden_size");
  positive(m.num_hidden_layers, at + "num_hidden_layers");
  positive(m.num_attention_heads, at + "num_attention_heads");
  positive(m.num_key_value_heads, at + "num_key_value_heads");
  positive(m.head_dim, at + "head_dim");
  if (m.head_dim % 2 != 0) fail(at + "head_dim: expected an even number (RoPE rotates pairs), got " + std::to_string(m.head_dim));
  if (m.num_attention_heads % m.num_key_value_heads != 0)
    fail(at + "num_key_value_heads (" + std::to_string(m.num_key_value_heads) +
         ") must divide num_attention_heads (" + std::to_string(m.num_attention_heads) + ")");
  positive(m.max_position_embeddings, at + "max_position_embeddings");
  non_negative(m.first_k_dense_replace, at + "first_k_dense_replace");
  if (m.first_k_dense_replace > m.num_hidden_layers)
    fail(at + "first_k_dense_replace (" + std::to_string(m.first_k_dense_replace) +
         ") must be at most num_hidden_layers (" + std::to_string(m.num_hidden_layers) + ")");
  if (m.first_k_dense_replace > 0) positive(m.intermediate_size, at + "intermediate_size");
  else non_negative(m.intermediate_size, at + "intermediate_size");
  positive(m.moe_intermediate_size, at + "moe_intermediate_size");
  non_negative(m.n_shared_experts, at + "n_shared_experts");
  positive(m.n_routed_experts, at + "n_routed_experts");
  positive(m.num_experts_per_tok, at + "num_experts_per_tok");
  positive(m.n_group, at + "n_group");
  positive(m.topk_group, at + "topk_group");
  if (m.num_experts_per_tok > m.n_routed_experts)
    fail(at + "num_experts_per_tok (" + std::to_string(m.num_experts_per_tok) +
         ") must be at most n_routed_experts (" + std::to_string(m.n_routed_experts) + ")");
  if (m.n_routed_experts % m.n_group != 0)
    fail(at + "n_group (" + std::to_string(m.n_group) + ") must divide n_routed_experts (" +
         std::to_string(m.n_routed_experts) + ")");
  if (m.topk_group > m.n_group)
    fail(at + "topk_group (" + std::to_string(m.topk_group) + ") must be at most n_group (" +
         std::to_string(m.n_group) + ")");
  const int64_t kept = m.topk_group * (m.n_routed_experts / m.n_group);
  if (kept < m.num_experts_per_tok)
    fail(at + "topk_group groups keep only " + std::to_string(kept) + " experts, fewer than num_experts_per_tok (" +
         std::to_string(m.num_experts_per_tok) + ")");
  positive_finite(m.routed_scaling_factor, at + "routed_scaling_factor");
  positive_finite(m.rms_norm_eps, at + "rms_norm_eps");
  positive_finite(m.rope_theta, at + "rope_theta");
  positive_finite(m.initializer_range, at + "initializer_range");
  // Refuse absurd sizes before anything is allocated: parameters alone must fit in 4 GiB of f32
  // (the training arenas hold four copies of them), and per-dimension sizes stay sane.
  const double D = double(m.hidden_size), L = double(m.num_hidden_layers);
  const double params = 2 * double(m.vocab_size) * D +
                        L * (D * double(m.q_dim() + 2 * m.kv_dim()) + double(m.q_dim()) * D) +
                        double(m.first_k_dense_replace) * 3 * D * double(m.intermediate_size) +
                        double(m.num_moe_layers()) * 3 * D * double(m.moe_intermediate_size) *
                            double(m.n_routed_experts + m.n_shared_experts);
  if (params > 1.0e9)
    fail(at + "the model would have " + whole(params / 1e6) + "M parameters (" + whole(params * 16 / (1 << 30)) +
         " GiB to train); moe supports at most 1000M on a CPU");
  if (m.max_position_embeddings > 65536)
    fail(at + "max_position_embeddings: expected at most 65536, got " + std::to_string(m.max_position_embeddings));
  if (m.vocab_size > 1 << 20) fail(at + "vocab_size: expected at most 1048576, got " + std::to_string(m.vocab_size));
}

TrainConfig train_config_from_json(const json& j, const std::string& where) {
  require_object(j, where);
  TrainConfig t;
  for (const auto& [key, v] : j.items()) {
    const std::string at = where + ": train." + key;
    if (key == "steps") t.steps = get_int(v, at);
    else if (key == "batch") t.batch = get_int(v, at);
    else if (key == "seq") t.seq = get_int(v, at);
    else if (key == "accum") t.accum = get_int(v, at);
    else if (key == "lr") t.lr = get_number(v, at);
    else if (key == "min_lr") t.min_lr = get_number(v, at);
    else if (key == "warmup") t.warmup = get_int(v, at);
    else if (key == "weight_decay") t.weight_decay = get_number(v, at);
    else if (key == "grad_clip") t.grad_clip = get_number(v, at);
    else if (key == "balance") t.balance = parse_balance(get_string(v, at), at);
    else if (key == "bias_rate") t.bias_rate = get_number(v, at);
    else if (key == "aux_alpha") t.aux_alpha = get_number(v, at);
    else if (key == "seq_aux_alpha") t.seq_aux_alpha = get_number(v, at);
    else if (key == "eval_every") t.eval_every = get_int(v, at);
    else if (key == "eval_tokens") t.eval_tokens = get_int(v, at);
    else if (key == "save_every") t.save_every = get_int(v, at);
    else if (key == "log_every") t.log_every = get_int(v, at);
    else if (key == "threads") t.threads = get_int(v, at);
    else if (key == "max_bad_steps") t.max_bad_steps = get_int(v, at);
    else if (key == "seed") {
      const int64_t s = get_int(v, at);
      non_negative(s, at);
      t.seed = uint64_t(s);
    } else {
      fail(where + ": unknown key \"train." + key + "\" (did you mean \"" + nearest_name(key, {MOE_TRAIN_FIELDS}) + "\"?)");
    }
  }
  return t;
}

void validate(const TrainConfig& t, const ModelConfig& m, const std::string& where) {
  const std::string at = where + ": train.";
  positive(t.steps, at + "steps");
  positive(t.batch, at + "batch");
  positive(t.seq, at + "seq");
  if (t.seq > m.max_position_embeddings)
    fail(at + "seq (" + std::to_string(t.seq) + ") must be at most max_position_embeddings (" +
         std::to_string(m.max_position_embeddings) + ")");
  positive(t.accum, at + "accum");
  positive_finite(t.lr, at + "lr");
  non_negative_finite(t.min_lr, at + "min_lr");
  if (t.min_lr > t.lr) fail(at + "min_lr must be at most lr");
  non_negative(t.warmup, at + "warmup");
  non_negative_finite(t.weight_decay, at + "weight_decay");
  non_negative_finite(t.grad_clip, at + "grad_clip");
  non_negative_finite(t.bias_rate, at + "bias_rate");
  non_negative_finite(t.aux_alpha, at + "aux_alpha");
  non_negative_finite(t.seq_aux_alpha, at + "seq_aux_alpha");
  non_negative(t.eval_every, at + "eval_every");
  positive(t.eval_tokens, at + "eval_tokens");
  non_negative(t.save_every, at + "save_every");
  positive(t.log_every, at + "log_every");
  non_negative(t.threads, at + "threads");
  positive(t.max_bad_steps, at + "max_bad_steps");
  if (t.threads > 1024) fail(at + "threads: expected at most 1024, got " + std::to_string(t.threads));
  const double activations = double(t.batch) * double(t.seq) *
                             (double(m.num_hidden_layers) * (16.0 * double(m.hidden_size) +
                              double(m.num_attention_heads) * double(t.seq) * 2.0 +
                              6.0 * double(m.num_experts_per_tok) * double(m.moe_intermediate_size)) +
                              4.0 * double(m.vocab_size));
  if (activations * 4 > 16.0 * (1ull << 30))
    fail(at + "batch x seq needs about " + whole(activations * 4 / (1 << 30)) +
         " GiB of activations; reduce batch or seq");
}

Config config_from_json(const json& j, const std::string& where) {
  require_object(j, where);
  Config c;
  bool has_model = false;
  if (j.contains("train") && !j["train"].is_object())
    fail(where + ": train: expected a JSON object, got " + show(j["train"]));
  // A pointer, not a copy: copying a json recurses once per nesting level (a train section of
  // 20000 nested brackets overflowed the stack before the type check could refuse it).
  const json* train = nullptr;
  for (const auto& [key, v] : j.items()) {
    if (key == "model") has_model = true;
    else if (key == "train") train = &v;
    else fail(where + ": unknown top-level key \"" + key + "\" (expected \"model\" and \"train\")");
  }
  if (!has_model) fail(where + ": missing the \"model\" section");
  c.model = model_config_from_json(j.at("model"), where + ": model", false);
  c.train = train ? train_config_from_json(*train, where) : train_config_from_json(json::object(), where);
  validate(c.train, c.model, where);
  return c;
}

json read_json_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail(path + ": is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail(path + ": cannot read file (is it a directory?)");
  try {
    return json::parse(buffer.str());
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e400
    std::string what = e.what();
    const auto colon = what.find("] ");
    fail(path + ": not valid JSON (" + (colon == std::string::npos ? what : what.substr(colon + 2)) + ")");
  }
}

Config load_config_file(const std::string& path) { return config_from_json(read_json_file(path), path); }

json to_json(const ModelConfig& m) {
  return json{{"model_type", "moe"},
              {"vocab_size", m.vocab_size},
              {"hidden_size", m.hidden_size},
              {"num_hidden_layers", m.num_hidden_layers},
              {"num_attention_heads", m.num_attention_heads},
              {"num_key_value_heads", m.num_key_value_heads},
              {"head_dim", m.head_dim},
              {"intermediate_size", m.intermediate_size},
              {"moe_intermediate_size", m.moe_intermediate_size},
              {"first_k_dense_replace", m.first_k_dense_replace},
              {"n_shared_experts", m.n_shared_experts},
              {"n_routed_experts", m.n_routed_experts},
              {"num_experts_per_tok", m.num_experts_per_tok},
              {"n_group", m.n_group},
              {"topk_group", m.topk_group},
              {"routed_scaling_factor", m.routed_scaling_factor},
              {"norm_topk_prob", m.norm_topk_prob},
              {"scoring_func", to_string(m.scoring_func)},
              {"rms_norm_eps", m.rms_norm_eps},
              {"rope_theta", m.rope_theta},
              {"max_position_embeddings", m.max_position_embeddings},
              {"initializer_range", m.initializer_range}};
}

json config_file_json(const Config& c) {
  json model = to_json(c.model);
  model.erase("model_type");  // a checkpoint key, not a config-file key
  return {{"model", model}, {"train", to_json(c.train)}};
}

json to_json(const TrainConfig& t) {
  return json{{"steps", t.steps},         {"batch", t.batch},
              {"seq", t.seq},             {"accum", t.accum},
              {"lr", t.lr},               {"min_lr", t.min_lr},
              {"warmup", t.warmup},       {"weight_decay", t.weight_decay},
              {"grad_clip", t.grad_clip}, {"balance", to_string(t.balance)},
              {"bias_rate", t.bias_rate}, {"aux_alpha", t.aux_alpha},
              {"seq_aux_alpha", t.seq_aux_alpha}, {"eval_every", t.eval_every},
              {"eval_tokens", t.eval_tokens}, {"save_every", t.save_every},
              {"log_every", t.log_every}, {"threads", t.threads},
              {"seed", t.seed},           {"max_bad_steps", t.max_bad_steps}};
}

}  // namespace moe
