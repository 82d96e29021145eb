// The model field table and the rules between fields, with one-line errors naming the field.
#include "config/model_config.hpp"

#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

using nlohmann::json;

const char* to_string(ScoringFunc f) { return f == ScoringFunc::sigmoid ? "sigmoid" : "softmax"; }

namespace {

// Every size is bounded before any product of sizes is formed, so no check below can overflow.
constexpr int64_t kMaxSize = int64_t(1) << 24;

bool is_mla(const ModelConfig& m) { return m.mla(); }
// Written only when set: a config.json without them is the same model (and other readers, such as
// Hugging Face's DeepseekV3Config, need not know them).
bool has_rank_limit(const ModelConfig& m) { return m.max_ranks_per_token > 0 || m.expert_ranks > 0; }

// Keys of a Hugging Face config.json that do not change the model's math: accepted and ignored.
const char* const kIgnoredCheckpointKeys[] = {
    "architectures",     "torch_dtype",    "dtype",        "transformers_version", "_name_or_path",        "auto_map",
    "use_cache",         "bos_token_id",   "eos_token_id", "pad_token_id",         "pretraining_tp",       "ep_size",
    "attention_dropout", "aux_loss_alpha", "seq_aux",      "output_router_logits", "router_aux_loss_coef",
    kTrainSeqKey,  // moe's record of the training window (load_checkpoint_train_seq checks it)
};

// A deepseek_v3 config.json must give these: where moe's defaults differ from Hugging Face's, a
// missing key would silently build another model.
const char* const kRequiredDeepseekKeys[] = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "moe_intermediate_size",
    "first_k_dense_replace",
    "n_shared_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "routed_scaling_factor",
    "max_position_embeddings",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
};

}  // namespace

const std::vector<Field<ModelConfig>>& model_fields() {
  using M = ModelConfig;
  static const std::vector<Field<M>> fields = {
      {"vocab_size", &M::vocab_size, Check::positive, kMaxSize, "Tokens in the vocabulary (bytes: 256)"},
      {"hidden_size", &M::hidden_size, Check::positive, kMaxSize, "Width D of the residual stream"},
      {"num_hidden_layers", &M::num_hidden_layers, Check::positive, kMaxSize, "Decoder layers"},
      {"num_attention_heads", &M::num_attention_heads, Check::positive, kMaxSize, "Query heads H"},
      {"num_key_value_heads", &M::num_key_value_heads, Check::positive, kMaxSize, "Key/value heads (GQA)"},
      {"head_dim", &M::head_dim, Check::positive, kMaxSize, "Width of a head (null: hidden_size / heads)"},
      {"intermediate_size", &M::intermediate_size, Check::non_negative, kMaxSize, "Dense FFN width"},
      {"moe_intermediate_size", &M::moe_intermediate_size, Check::positive, kMaxSize, "Width of one expert"},
      {"first_k_dense_replace", &M::first_k_dense_replace, Check::non_negative, kMaxSize, "Leading dense layers"},
      {"n_shared_experts", &M::n_shared_experts, Check::non_negative, kMaxSize, "Shared experts per MoE layer"},
      {"n_routed_experts", &M::n_routed_experts, Check::positive, kMaxSize, "Routed experts E per MoE layer"},
      {"num_experts_per_tok", &M::num_experts_per_tok, Check::positive, kMaxSize, "Routed experts K per token"},
      {"n_group", &M::n_group, Check::positive, kMaxSize, "Expert groups for group-limited routing"},
      {"topk_group", &M::topk_group, Check::positive, kMaxSize, "Groups a token may use"},
      {"routed_scaling_factor", &M::routed_scaling_factor, Check::positive_finite, 0, "Scale of the gate weights"},
      {"norm_topk_prob", &M::norm_topk_prob, Check::any, 0, "Normalise the K gate weights to sum 1"},
      {"scoring_func",
       Choice<M>{{"sigmoid", "softmax"},
                 [](const M& m) { return std::string(to_string(m.scoring_func)); },
                 [](M& m, const std::string& s) {
                   m.scoring_func = s == "sigmoid" ? ScoringFunc::sigmoid : ScoringFunc::softmax;
                 }},
       Check::any, 0, "Router affinity: sigmoid (DeepSeek-V3) or softmax"},
      {"rms_norm_eps", &M::rms_norm_eps, Check::positive_finite, 0, "RMSNorm epsilon"},
      {"rope_theta", &M::rope_theta, Check::positive_finite, 0, "RoPE base"},
      {"max_position_embeddings", &M::max_position_embeddings, Check::positive, kMaxSize, "Longest context"},
      {"initializer_range", &M::initializer_range, Check::positive_finite, 0, "Std of the initial weights"},
      {"q_lora_rank", &M::q_lora_rank, Check::positive, kMaxSize, "MLA query latent width (null: q_proj)", nullptr,
       is_mla},
      {"kv_lora_rank", &M::kv_lora_rank, Check::positive, kMaxSize, "MLA key/value latent width (null: GQA)", nullptr,
       is_mla},
      {"qk_nope_head_dim", &M::qk_nope_head_dim, Check::non_negative, kMaxSize, "MLA query/key width without RoPE",
       nullptr, is_mla},
      {"qk_rope_head_dim", &M::qk_rope_head_dim, Check::non_negative, kMaxSize, "MLA rotated query/key width", nullptr,
       is_mla},
      {"v_head_dim", &M::v_head_dim, Check::non_negative, kMaxSize, "MLA value width per head", nullptr, is_mla},
      {"rope_interleave", &M::rope_interleave, Check::any, 0, "RoPE on adjacent pairs (true) or halves", nullptr,
       is_mla},
      {"num_nextn_predict_layers", &M::num_nextn_predict_layers, Check::non_negative, kMaxSize,
       "Multi-token-prediction modules", nullptr, is_mla},
      {"max_ranks_per_token", &M::max_ranks_per_token, Check::non_negative, kMaxSize,
       "Device-limited routing: a token's experts come from at most this many of the expert_ranks blocks (0: off)",
       nullptr, has_rank_limit},
      {"expert_ranks", &M::expert_ranks, Check::non_negative, kMaxSize,
       "Device-limited routing: contiguous expert blocks, one per rank of expert parallelism", nullptr, has_rank_limit},
      // Hugging Face DeepseekV3Config fields that moe implements in one way only.
      {"hidden_act", Fixed{"silu"}, Check::any, 0, "FFN activation", nullptr, is_mla},
      {"topk_method", Fixed{"noaux_tc"}, Check::any, 0, "Expert selection (bias-corrected, group-limited)", nullptr,
       is_mla},
      {"moe_layer_freq", Fixed{1}, Check::any, 0, "Every layer past first_k_dense_replace is MoE", nullptr, is_mla},
      {"rope_scaling", Fixed{nullptr}, Check::any, 0, "No RoPE scaling", nullptr, is_mla},
      {"attention_bias", Fixed{false}, Check::any, 0, "Projections without bias", nullptr, is_mla},
      {"tie_word_embeddings", Fixed{false}, Check::any, 0, "lm_head separate from the embedding", nullptr, is_mla},
  };
  return fields;
}

ModelConfig model_config_from_json(const json& j, const std::string& where, bool allow_checkpoint_keys) {
  require_object(j, where);
  ModelConfig m;
  bool head_dim_given = false, kv_heads_given = false;
  auto ignored = [](const std::string& key) {
    for (const char* k : kIgnoredCheckpointKeys)
      if (key == k) return true;
    return false;
  };
  for (const auto& [key, v] : j.items()) {
    const std::string at = where + ": " + key;
    if (key == "head_dim" && v.is_null()) continue;  // HF writes null for "derive it"
    if (const Field<ModelConfig>* f = find_field(model_fields(), key)) {
      read_field(*f, m, v, at);
      head_dim_given = head_dim_given || key == "head_dim";
      kv_heads_given = kv_heads_given || key == "num_key_value_heads";
    } else if (allow_checkpoint_keys && key == "model_type") {
      const std::string type = v.is_string() ? v.get<std::string>() : "";
      if (type != "moe" && type != "deepseek_v3") fail(at + ": expected \"deepseek_v3\" or \"moe\", got " + show(v));
      if (type == "deepseek_v3")
        for (const char* required : kRequiredDeepseekKeys)
          if (!j.contains(required))
            fail(where + ": missing \"" + std::string(required) +
                 "\" (a deepseek_v3 config.json gives every size; moe does not assume Hugging Face's defaults)");
    } else if (allow_checkpoint_keys && ignored(key)) {
      // no effect on the model
    } else {
      fail(where + ": unknown key \"" + key + "\" (did you mean \"" + nearest_name(key, field_names(model_fields())) +
           "\"?)");
    }
  }
  if (m.mla()) {
    // Hugging Face sets head_dim to qk_rope_head_dim (the rotary width) and uses one key/value head
    // per query head; a file may repeat those values but not contradict them.
    if (head_dim_given && m.head_dim != m.qk_rope_head_dim)
      fail(where + ": head_dim (" + std::to_string(m.head_dim) + ") must equal qk_rope_head_dim (" +
           std::to_string(m.qk_rope_head_dim) + ") with MLA (kv_lora_rank set)");
    if (kv_heads_given && m.num_key_value_heads != m.num_attention_heads)
      fail(where + ": num_key_value_heads (" + std::to_string(m.num_key_value_heads) +
           ") must equal num_attention_heads (" + std::to_string(m.num_attention_heads) +
           ") with MLA (kv_lora_rank set)");
    m.head_dim = m.qk_rope_head_dim;
    m.num_key_value_heads = m.num_attention_heads;
  } else if (!head_dim_given) {
    check_value(m.num_attention_heads, Check::positive, 0, where + ": num_attention_heads");
    if (m.hidden_size % m.num_attention_heads != 0)
      fail(where + ": num_attention_heads (" + std::to_string(m.num_attention_heads) + ") must divide hidden_size (" +
           std::to_string(m.hidden_size) + ") when head_dim is not given");
    m.head_dim = m.hidden_size / m.num_attention_heads;
  }
  validate(m, where);
  return m;
}

namespace {

// The rules of device-limited routing; `at` ends with ": ".
void validate_rank_limit(const ModelConfig& m, const std::string& at) {
  const std::string limit = std::to_string(m.max_ranks_per_token), ranks = std::to_string(m.expert_ranks);
  if (m.max_ranks_per_token == 0)
    fail(at + "expert_ranks: only used by device-limited routing; set max_ranks_per_token too, or neither");
  if (m.expert_ranks == 0)
    fail(at + "max_ranks_per_token: needs expert_ranks, the number of expert blocks (ranks) it limits");
  if (m.n_routed_experts % m.expert_ranks != 0)
    fail(at + "expert_ranks (" + ranks + ") must divide n_routed_experts (" + std::to_string(m.n_routed_experts) + ")");
  if (m.n_group > 1 && m.topk_group < m.n_group)
    fail(at +
         "max_ranks_per_token: the model already limits routing to topk_group of n_group groups; set n_group "
         "= 1 (rank-limited routing replaces group-limited routing)");
  const int64_t reachable = std::min(m.max_ranks_per_token, m.expert_ranks) * (m.n_routed_experts / m.expert_ranks);
  if (reachable < m.num_experts_per_tok)
    fail(at + "max_ranks_per_token: " + limit + " of " + ranks + " expert blocks hold " + std::to_string(reachable) +
         " experts, fewer than the " + std::to_string(m.num_experts_per_tok) +
         " each token needs (num_experts_per_tok)");
}

}  // namespace

void validate(const ModelConfig& m, const std::string& where) {
  const std::string at = where + ": ";
  validate_fields(model_fields(), m, at);
  if (m.vocab_size < 256)
    fail(at + "vocab_size: expected at least 256 (tokens are bytes), got " + std::to_string(m.vocab_size));
  if (m.mla()) {
    for (const auto& [name, value] : {std::pair<const char*, int64_t>{"qk_nope_head_dim", m.qk_nope_head_dim},
                                      {"qk_rope_head_dim", m.qk_rope_head_dim},
                                      {"v_head_dim", m.v_head_dim}})
      check_value(value, Check::positive, 0, at + name);
    if (m.qk_rope_head_dim % 2 != 0)
      fail(at + "qk_rope_head_dim: expected an even number (RoPE rotates pairs), got " +
           std::to_string(m.qk_rope_head_dim));
    if (m.num_nextn_predict_layers > 1)
      fail(at +
           "num_nextn_predict_layers: moe implements DeepSeek-V3's one multi-token-prediction module; expected "
           "0 or 1, got " +
           std::to_string(m.num_nextn_predict_layers));
  } else {
    if (m.q_lora_rank) fail(at + "q_lora_rank: needs kv_lora_rank (multi-head latent attention); set both or neither");
    if (m.num_nextn_predict_layers > 0)
      fail(at + "num_nextn_predict_layers: multi-token prediction needs an MLA model (kv_lora_rank set)");
  }
  if (m.head_dim % 2 != 0)
    fail(at + "head_dim: expected an even number (RoPE rotates pairs), got " + std::to_string(m.head_dim));
  if (m.num_attention_heads % m.num_key_value_heads != 0)
    fail(at + "num_key_value_heads (" + std::to_string(m.num_key_value_heads) + ") must divide num_attention_heads (" +
         std::to_string(m.num_attention_heads) + ")");
  // As in HF's modeling_deepseek_v3: layer l (the MTP module's layer L included) is MoE when
  // l >= first_k_dense_replace; a larger value leaves every layer dense (HF's default is 3, kept by
  // small configs with fewer layers).
  if (m.first_k_dense_replace > 0) check_value(m.intermediate_size, Check::positive, 0, at + "intermediate_size");
  if (m.num_experts_per_tok > m.n_routed_experts)
    fail(at + "num_experts_per_tok (" + std::to_string(m.num_experts_per_tok) + ") must be at most n_routed_experts (" +
         std::to_string(m.n_routed_experts) + ")");
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
  if (m.max_ranks_per_token > 0 || m.expert_ranks > 0) validate_rank_limit(m, at);
  // Refuse absurd sizes before anything is allocated: parameters alone must fit in 4 GiB of f32
  // (the training arenas hold four copies of them), and per-dimension sizes stay sane.
  const double D = double(m.hidden_size), L = double(m.num_hidden_layers);
  // The MTP module's layer is dense or MoE by the same rule, plus eh_proj (D, 2D).
  const double dense_layers = double(m.decoder_layers() - m.num_routed_layers());
  const double params =
      2 * double(m.vocab_size) * D + (L + double(m.num_nextn_predict_layers)) * double(attention_params(m)) +
      double(m.num_nextn_predict_layers) * 2 * D * D + dense_layers * 3 * D * double(m.intermediate_size) +
      double(m.num_routed_layers()) * 3 * D * double(m.moe_intermediate_size) *
          double(m.n_routed_experts + m.n_shared_experts);
  if (params > 1.0e9)
    fail(at + "the model would have " + whole(params / 1e6) + "M parameters (" + whole(params * 16 / (1 << 30)) +
         " GiB to train); moe supports at most 1000M on a CPU");
  if (m.max_position_embeddings > 65536)
    fail(at + "max_position_embeddings: expected at most 65536, got " + std::to_string(m.max_position_embeddings));
  if (m.vocab_size > 1 << 20) fail(at + "vocab_size: expected at most 1048576, got " + std::to_string(m.vocab_size));
}

std::string model_difference(const ModelConfig& a, const ModelConfig& b) {
  const json ja = to_json(a), jb = to_json(b);
  const char* const dense = "first_k_dense_replace";
  for (const json* side : {&ja, &jb})
    for (const auto& [key, value] : side->items()) {
      const json x = ja.contains(key) ? ja[key] : json(), y = jb.contains(key) ? jb[key] : json();
      if (key != dense && x != y) return key + ": " + x.dump() + " against " + y.dump();
    }
  // Every other field equal: the same layers; first_k_dense_replace differs only if it makes
  // another layer dense (past the last layer every value means "all dense").
  if (std::min(a.first_k_dense_replace, a.decoder_layers()) != std::min(b.first_k_dense_replace, b.decoder_layers()))
    return std::string(dense) + ": " + ja[dense].dump() + " against " + jb[dense].dump();
  return "";
}

json to_json(const ModelConfig& m) {
  json j = fields_json(model_fields(), m);
  if (!m.mla()) {
    j["model_type"] = "moe";
    return j;
  }
  j["model_type"] = "deepseek_v3";
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["torch_dtype"] = "float32";
  return j;
}

double attention_params(const ModelConfig& m) {
  const double D = double(m.hidden_size), H = double(m.num_attention_heads);
  if (!m.mla()) {
    const double q = H * double(m.head_dim), kv = double(m.num_key_value_heads) * double(m.head_dim);
    return D * (q + 2 * kv) + q * D;
  }
  const double rkv = double(*m.kv_lora_rank), q_out = H * (double(m.qk_nope_head_dim) + double(m.qk_rope_head_dim));
  const double rq = double(m.q_lora_rank.value_or(0));
  const double q = m.q_lora_rank ? rq * D + rq + q_out * rq : q_out * D;
  return q + (rkv + double(m.qk_rope_head_dim)) * D + rkv +
         H * (double(m.qk_nope_head_dim) + double(m.v_head_dim)) * rkv + D * H * double(m.v_head_dim);
}

double kv_cache_bytes_per_token(const ModelConfig& m, bool as_gqa) {
  const double L = double(m.num_hidden_layers);
  if (m.mla() && !as_gqa) return 4.0 * L * double(*m.kv_lora_rank + m.qk_rope_head_dim);
  if (m.mla()) return 4.0 * L * double(m.num_attention_heads) * double(m.qk_head_dim() + m.v_head_dim);
  return 4.0 * L * 2.0 * double(m.kv_dim());
}

double activation_bytes_estimate(const ModelConfig& m, int64_t batch, int64_t seq) {
  // MLA keeps per token and layer the materialised heads (q, k: H·(d_n+d_r); v, kv: H·d_v, H·(d_n+d_v))
  // and their gradients, plus the latents.
  const double mla = m.mla() ? double(batch) * double(seq) * double(m.decoder_layers()) *
                                   (4.0 * double(m.num_attention_heads) * double(m.qk_head_dim() + m.v_head_dim) +
                                    4.0 * double(*m.kv_lora_rank + m.q_lora_rank.value_or(0)))
                             : 0.0;
  const double floats =
      mla + double(batch) * double(seq) *
                (double(m.decoder_layers()) *
                     (16.0 * double(m.hidden_size) + double(m.num_attention_heads) * double(seq) * 2.0 +
                      6.0 * double(m.num_experts_per_tok) * double(m.moe_intermediate_size)) +
                 4.0 * double(m.vocab_size));
  return 4.0 * floats;
}

}  // namespace moe
