#include "model/summary.hpp"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "model/params.hpp"

namespace moe {

ParamSummary summarize_params(const ModelConfig& c) {
  ParamSummary s;
  const TensorRole order[] = {TensorRole::embedding, TensorRole::attention,     TensorRole::norm,
                              TensorRole::dense_ffn, TensorRole::shared_expert, TensorRole::routed_expert,
                              TensorRole::router,    TensorRole::head};
  for (TensorRole role : order) s.rows.push_back({to_string(role), 0, 0});
  // The multi-token-prediction module is its own part: trained, but not run in plain decoding.
  if (c.mtp()) s.rows.push_back({"MTP module", 0, 0});
  for (const TensorSpec& spec : make_layout(c).tensors) {
    if (spec.role == TensorRole::router_bias) {
      s.state += spec.numel;
      continue;
    }
    if (spec.mtp) {
      s.rows.back().total += spec.numel;
      continue;
    }
    for (size_t i = 0; i < std::size(order); ++i)
      if (order[i] == spec.role) {
        s.rows[i].total += spec.numel;
        // A token runs K of the E routed experts; everything else is used in full.
        s.rows[i].activated += spec.role == TensorRole::routed_expert
                                   ? spec.numel * c.num_experts_per_tok / c.n_routed_experts
                                   : spec.numel;
      }
  }
  for (const auto& r : s.rows) s.total += r.total, s.activated += r.activated;
  return s;
}

namespace {

std::string human(int64_t n) {
  char buf[32];
  if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", double(n) / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1fK", double(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", (long long)n);
  return buf;
}

}  // namespace

std::string format_model_summary(const ModelConfig& c, const std::string& source) {
  const ParamSummary s = summarize_params(c);
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "model %s\n", source.c_str());
  out += line;
  if (c.mla()) {
    std::snprintf(line, sizeof line,
                  "  %lld layers (%lld dense, %lld MoE), hidden %lld, context %lld\n"
                  "  MLA: %lld heads, query/key %lld (d_n) + %lld (d_r, RoPE %s), value %lld; latents: query %s, "
                  "key/value %lld\n",
                  (long long)c.num_hidden_layers, (long long)c.num_dense_layers(), (long long)c.num_moe_layers(),
                  (long long)c.hidden_size, (long long)c.max_position_embeddings, (long long)c.num_attention_heads,
                  (long long)c.qk_nope_head_dim, (long long)c.qk_rope_head_dim,
                  c.rope_interleave ? "adjacent pairs" : "halves", (long long)c.v_head_dim,
                  c.q_lora_rank ? std::to_string(*c.q_lora_rank).c_str() : "none (q_proj)", (long long)*c.kv_lora_rank);
  } else {
    std::snprintf(line, sizeof line,
                  "  %lld layers (%lld dense, %lld MoE), hidden %lld, %lld heads (%lld kv) x %lld, context %lld\n",
                  (long long)c.num_hidden_layers, (long long)c.num_dense_layers(), (long long)c.num_moe_layers(),
                  (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.num_key_value_heads,
                  (long long)c.head_dim, (long long)c.max_position_embeddings);
  }
  out += line;
  if (c.num_routed_layers() > 0) {  // the MTP module's layer may be the only MoE one
    std::snprintf(
        line, sizeof line,
        "  MoE: %lld routed experts of width %lld, top-%lld, %lld shared, %lld groups keep %lld, %s scores%s, "
        "scale %g\n",
        (long long)c.n_routed_experts, (long long)c.moe_intermediate_size, (long long)c.num_experts_per_tok,
        (long long)c.n_shared_experts, (long long)c.n_group, (long long)c.topk_group, to_string(c.scoring_func),
        c.norm_topk_prob ? " (normalised top-k)" : "", c.routed_scaling_factor);
    out += line;
    if (c.max_ranks_per_token > 0) {
      std::snprintf(
          line, sizeof line,
          "  device-limited routing: a token's experts come from at most %lld of %lld blocks of %lld experts\n",
          (long long)c.max_ranks_per_token, (long long)c.expert_ranks,
          (long long)(c.n_routed_experts / c.expert_ranks));
      out += line;
    }
  }
  out += "\n  part                    total   activated/token\n";
  for (const auto& r : s.rows) {
    if (r.total == 0) continue;
    std::snprintf(line, sizeof line, "  %-16s %12s %12s\n", r.role.c_str(), human(r.total).c_str(),
                  human(r.activated).c_str());
    out += line;
  }
  std::snprintf(line, sizeof line, "  %-16s %12s %12s\n", "all", human(s.total).c_str(), human(s.activated).c_str());
  out += line;
  if (c.mtp()) {
    std::snprintf(line, sizeof line,
                  "  (the MTP module: layer %lld, predicts the token after next in training and drafts it for "
                  "--draft mtp; plain decoding does not run it)\n",
                  (long long)c.num_hidden_layers);
    out += line;
  }
  std::snprintf(line, sizeof line,
                "\n  %lld parameters, %lld activated per token: the model activates %.0f %% of its parameters per "
                "token.\n",
                (long long)s.total, (long long)s.activated, 100.0 * double(s.activated) / double(s.total));
  out += line;
  if (s.state > 0) {
    std::snprintf(line, sizeof line, "  plus %lld routing-bias values (balancing state, not trained by gradients)\n",
                  (long long)s.state);
    out += line;
  }
  if (c.mla()) {
    // What decoding caches: MLA keeps the normed latent and the shared rotated key per token and
    // layer; multi-head attention with these heads would keep every head's key and value.
    const double mla = kv_cache_bytes_per_token(c), mha = kv_cache_bytes_per_token(c, /*as_gqa=*/true);
    std::snprintf(line, sizeof line,
                  "  KV cache: %.0f bytes per token (all layers; %lld latent + %lld key floats per layer), %.1f MiB "
                  "at context %lld;\n  multi-head attention with the same heads would need %.0f bytes per token "
                  "(%.1fx more)\n",
                  mla, (long long)*c.kv_lora_rank, (long long)c.qk_rope_head_dim,
                  mla * double(c.max_position_embeddings) / double(1 << 20), (long long)c.max_position_embeddings, mha,
                  mha / mla);
  } else {
    std::snprintf(line, sizeof line,
                  "  KV cache: %.0f bytes per token (all layers; keys and values of %lld kv heads x %lld), %.1f MiB "
                  "at context %lld\n",
                  kv_cache_bytes_per_token(c), (long long)c.num_key_value_heads, (long long)c.head_dim,
                  kv_cache_bytes_per_token(c) * double(c.max_position_embeddings) / double(1 << 20),
                  (long long)c.max_position_embeddings);
  }
  out += line;
  return out;
}

nlohmann::json summary_json(const ModelConfig& c) {
  const ParamSummary s = summarize_params(c);
  nlohmann::json parts = nlohmann::json::array();
  for (const auto& r : s.rows) parts.push_back({{"part", r.role}, {"total", r.total}, {"activated", r.activated}});
  return {{"config", to_json(c)},
          {"parameters", s.total},
          {"activated_per_token", s.activated},
          {"activated_ratio", double(s.activated) / double(s.total)},
          {"routing_bias_state", s.state},
          {"kv_cache_bytes_per_token", kv_cache_bytes_per_token(c)},
          {"kv_cache_bytes_per_token_mha", kv_cache_bytes_per_token(c, /*as_gqa=*/true)},
          {"parts", parts}};
}

}  // namespace moe
