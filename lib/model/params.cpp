// The tensor list of a DeepSeek-V3-style MoE transformer.
#include "model/params.hpp"

namespace moe {

const char* to_string(TensorRole role) {
  switch (role) {
    case TensorRole::embedding:
      return "embedding";
    case TensorRole::attention:
      return "attention";
    case TensorRole::norm:
      return "norms";
    case TensorRole::dense_ffn:
      return "dense FFN";
    case TensorRole::shared_expert:
      return "shared experts";
    case TensorRole::routed_expert:
      return "routed experts";
    case TensorRole::router:
      return "router";
    case TensorRole::router_bias:
      return "router bias";
    case TensorRole::head:
      return "lm head";
  }
  return "?";
}

void for_each_tensor(const ModelConfig& c, ModelWeights& w,
                     const std::function<void(const TensorSpec&, float**)>& visit, ExpertShard shard) {
  int64_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, TensorRole role, int64_t layer, float** field,
                 bool trainable = true, int64_t expert = -1) {
    TensorSpec spec;
    spec.name = std::move(name);
    spec.shape = std::move(shape);
    spec.numel = 1;
    for (int64_t d : spec.shape) spec.numel *= d;
    spec.offset = offset;
    spec.role = role;
    spec.layer = layer;
    spec.trainable = trainable;
    spec.expert = expert;
    spec.decay = trainable && spec.shape.size() >= 2;
    spec.mtp = layer >= c.num_hidden_layers;
    offset += spec.numel;
    visit(spec, field);
  };
  const int64_t D = c.hidden_size, V = c.vocab_size, E = c.n_routed_experts;
  const int64_t Im = c.moe_intermediate_size, Is = c.shared_intermediate();
  add("model.embed_tokens.weight", {V, D}, TensorRole::embedding, -1, &w.embed_tokens);
  w.layers.resize(size_t(c.decoder_layers()));
  const int64_t L = c.num_hidden_layers;
  for (int64_t l = 0; l < c.decoder_layers(); ++l) {
    LayerWeights& lw = w.layers[size_t(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (l == L) {  // the MTP module's own tensors, before its decoder layer's
      add(p + "enorm.weight", {D}, TensorRole::norm, l, &w.mtp.enorm);
      add(p + "hnorm.weight", {D}, TensorRole::norm, l, &w.mtp.hnorm);
      add(p + "eh_proj.weight", {D, 2 * D}, TensorRole::attention, l, &w.mtp.eh_proj);
      add(p + "shared_head.norm.weight", {D}, TensorRole::norm, l, &w.mtp.shared_head_norm);
    }
    add(p + "input_layernorm.weight", {D}, TensorRole::norm, l, &lw.input_layernorm);
    if (c.mla()) {
      const int64_t H = c.num_attention_heads, rkv = *c.kv_lora_rank, q_out = H * c.qk_head_dim();
      if (c.q_lora_rank) {
        const int64_t rq = *c.q_lora_rank;
        add(p + "self_attn.q_a_proj.weight", {rq, D}, TensorRole::attention, l, &lw.q_a_proj);
        add(p + "self_attn.q_a_layernorm.weight", {rq}, TensorRole::norm, l, &lw.q_a_layernorm);
        add(p + "self_attn.q_b_proj.weight", {q_out, rq}, TensorRole::attention, l, &lw.q_b_proj);
      } else {
        add(p + "self_attn.q_proj.weight", {q_out, D}, TensorRole::attention, l, &lw.q_proj);
      }
      add(p + "self_attn.kv_a_proj_with_mqa.weight", {rkv + c.qk_rope_head_dim, D}, TensorRole::attention, l,
          &lw.kv_a_proj_with_mqa);
      add(p + "self_attn.kv_a_layernorm.weight", {rkv}, TensorRole::norm, l, &lw.kv_a_layernorm);
      add(p + "self_attn.kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), rkv}, TensorRole::attention, l,
          &lw.kv_b_proj);
    } else {
      add(p + "self_attn.q_proj.weight", {c.q_dim(), D}, TensorRole::attention, l, &lw.q_proj);
      add(p + "self_attn.k_proj.weight", {c.kv_dim(), D}, TensorRole::attention, l, &lw.k_proj);
      add(p + "self_attn.v_proj.weight", {c.kv_dim(), D}, TensorRole::attention, l, &lw.v_proj);
    }
    add(p + "self_attn.o_proj.weight", {D, c.attn_dim()}, TensorRole::attention, l, &lw.o_proj);
    add(p + "post_attention_layernorm.weight", {D}, TensorRole::norm, l, &lw.post_attention_layernorm);
    if (!c.is_moe_layer(l)) {
      const int64_t I = c.intermediate_size;
      add(p + "mlp.gate_proj.weight", {I, D}, TensorRole::dense_ffn, l, &lw.gate_proj);
      add(p + "mlp.up_proj.weight", {I, D}, TensorRole::dense_ffn, l, &lw.up_proj);
      add(p + "mlp.down_proj.weight", {D, I}, TensorRole::dense_ffn, l, &lw.down_proj);
      continue;
    }
    add(p + "mlp.gate.weight", {E, D}, TensorRole::router, l, &lw.moe.router);
    add(p + "mlp.gate.e_score_correction_bias", {E}, TensorRole::router_bias, l, &lw.moe.router_bias, false);
    const struct {
      const char* name;
      float** field;
      bool down;
    } projections[] = {{"gate_proj", &lw.moe.experts_gate, false},
                       {"up_proj", &lw.moe.experts_up, false},
                       {"down_proj", &lw.moe.experts_down, true}};
    const int64_t first = shard.first, last = shard.first + shard.size(c);
    for (const auto& proj : projections)
      for (int64_t j = first; j < last; ++j)
        add(p + "mlp.experts." + std::to_string(j) + "." + proj.name + ".weight",
            proj.down ? std::vector<int64_t>{D, Im} : std::vector<int64_t>{Im, D}, TensorRole::routed_expert, l,
            j == first ? proj.field : nullptr, true, j);
    if (Is > 0) {
      add(p + "mlp.shared_experts.gate_proj.weight", {Is, D}, TensorRole::shared_expert, l, &lw.moe.shared_gate);
      add(p + "mlp.shared_experts.up_proj.weight", {Is, D}, TensorRole::shared_expert, l, &lw.moe.shared_up);
      add(p + "mlp.shared_experts.down_proj.weight", {D, Is}, TensorRole::shared_expert, l, &lw.moe.shared_down);
    }
  }
  add("model.norm.weight", {D}, TensorRole::norm, -1, &w.norm);
  add("lm_head.weight", {V, D}, TensorRole::head, -1, &w.lm_head);
}

ParamLayout make_layout(const ModelConfig& config, ExpertShard shard) {
  ParamLayout layout;
  ModelWeights unused;
  for_each_tensor(
      config, unused,
      [&](const TensorSpec& spec, float**) {
        layout.tensors.push_back(spec);
        layout.total = spec.offset + spec.numel;
      },
      shard);
  return layout;
}

ModelWeights bind_weights(const ModelConfig& config, float* base, ExpertShard shard) {
  ModelWeights weights;
  for_each_tensor(
      config, weights,
      [&](const TensorSpec& spec, float** field) {
        if (field) *field = base + spec.offset;
      },
      shard);
  return weights;
}

}  // namespace moe
