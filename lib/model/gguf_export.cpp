#include "model/gguf_export.hpp"

#include <cmath>
#include <cstdio>
#include <vector>

#include "core/error.hpp"
#include "core/gguf.hpp"

namespace moe {

namespace {

// What llama.cpp's deepseek2 cannot express, as one line naming the field.
void check_exportable(const ModelConfig& c) {
  auto refuse = [](const std::string& why) { fail("export gguf: " + why); };
  if (!c.mla())
    refuse("the model uses GQA attention; llama.cpp's deepseek2 needs MLA (set q_lora_rank and kv_lora_rank)");
  if (!c.q_lora_rank)
    refuse("q_lora_rank is null; llama.cpp reads a plain query projection only for its \"lite\" layer counts");
  if (c.num_hidden_layers == 26 || c.num_hidden_layers == 27 || c.num_hidden_layers == 48)
    refuse("num_hidden_layers " + std::to_string(c.num_hidden_layers) +
           " makes llama.cpp treat the model as DeepSeek-V2-Lite (no query LoRA)");
  if (!c.rope_interleave) refuse("rope_interleave false (llama.cpp's deepseek2 rotates adjacent pairs)");
  if (std::abs(c.rms_norm_eps - 1e-6) > 1e-12)
    refuse("rms_norm_eps must be 1e-6: llama.cpp uses it for the latent norms too, where the model uses 1e-6");
  if (c.n_routed_experts > 0 && c.n_shared_experts < 1) refuse("n_shared_experts 0 (llama.cpp always adds one)");
  if (c.n_group > 1 && c.n_routed_experts / c.n_group < 2)
    refuse("n_group " + std::to_string(c.n_group) + " leaves fewer than 2 experts per group");
  if (c.vocab_size != 256)
    refuse("vocab_size " + std::to_string(c.vocab_size) +
           " (the export writes byte-token models, vocabulary 256; a SentencePiece tokenizer is not exported)");
}

}  // namespace

GgmlType gguf_tensor_type(const std::string& name, const std::vector<int64_t>& shape, GgmlType type) {
  const bool keep_f32 = shape.size() < 2 || name.ends_with("_norm.weight") || name.ends_with("ffn_gate_inp.weight") ||
                        !name.ends_with(".weight");
  if (keep_f32) return GgmlType::f32;
  if (type == GgmlType::q8_0 && shape.back() % kQ8Block != 0) return GgmlType::f16;
  return type;
}

std::string export_gguf(const Model& model, GgmlType type) {
  const ModelConfig& c = model.config;
  check_exportable(c);
  const int64_t H = c.num_attention_heads, n = c.qk_nope_head_dim, r = c.qk_rope_head_dim, v = c.v_head_dim;
  const int64_t Lkv = *c.kv_lora_rank;
  GgufWriter w;
  w.add_string("general.architecture", "deepseek2");
  w.add_string("general.name", "moe");
  w.add_u32("deepseek2.block_count", uint32_t(c.num_hidden_layers));  // the MTP layer is not exported
  w.add_u32("deepseek2.context_length", uint32_t(c.max_position_embeddings));
  w.add_u32("deepseek2.embedding_length", uint32_t(c.hidden_size));
  w.add_u32("deepseek2.feed_forward_length", uint32_t(c.intermediate_size));
  w.add_u32("deepseek2.attention.head_count", uint32_t(H));
  w.add_u32("deepseek2.attention.head_count_kv", 1);  // MLA runs as one latent key/value head
  w.add_f32("deepseek2.rope.freq_base", float(c.rope_theta));
  w.add_f32("deepseek2.attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  w.add_u32("deepseek2.expert_used_count", uint32_t(c.num_experts_per_tok));
  // Group-limited routing; llama.cpp asserts topk_group < n_group, and keeping every group is no limit.
  if (c.n_group > 1 && c.topk_group < c.n_group) {
    w.add_u32("deepseek2.expert_group_count", uint32_t(c.n_group));
    w.add_u32("deepseek2.expert_group_used_count", uint32_t(c.topk_group));
  }
  w.add_u32("deepseek2.expert_gating_func", c.scoring_func == ScoringFunc::sigmoid ? 2 : 1);  // absent = softmax
  w.add_u32("deepseek2.leading_dense_block_count", uint32_t(c.first_k_dense_replace));
  w.add_u32("deepseek2.vocab_size", uint32_t(c.vocab_size));
  w.add_u32("deepseek2.attention.q_lora_rank", uint32_t(*c.q_lora_rank));
  w.add_u32("deepseek2.attention.kv_lora_rank", uint32_t(Lkv));
  w.add_u32("deepseek2.attention.key_length", uint32_t(Lkv + r));
  w.add_u32("deepseek2.attention.value_length", uint32_t(Lkv));
  w.add_u32("deepseek2.attention.key_length_mla", uint32_t(n + r));  // with value_length_mla: the MLA path
  w.add_u32("deepseek2.attention.value_length_mla", uint32_t(v));
  w.add_u32("deepseek2.rope.dimension_count", uint32_t(r));
  w.add_u32("deepseek2.expert_feed_forward_length", uint32_t(c.moe_intermediate_size));
  w.add_u32("deepseek2.expert_count", uint32_t(c.n_routed_experts));
  w.add_u32("deepseek2.expert_shared_count", uint32_t(c.n_shared_experts));
  w.add_f32("deepseek2.expert_weights_scale", float(c.routed_scaling_factor));
  w.add_bool("deepseek2.expert_weights_norm", c.norm_topk_prob);
  w.add_f32("deepseek2.rope.scaling.yarn_log_multiplier", 0.0f);  // required by 2025 builds; no YaRN here
  // llama_ftype: 0 all F32, 1 mostly F16, 7 mostly Q8_0 (display only).
  w.add_u32("general.file_type", type == GgmlType::f32 ? 0 : type == GgmlType::f16 ? 1 : 7);
  w.add_u32("general.quantization_version", 2);
  // Bytes as llama.cpp's rwkv tokenizer: token i is "\xHH" (lowercase hex), which it unescapes to
  // the byte i; it matches raw input bytes greedily, so any byte string maps to moe's ids and back.
  std::vector<std::string> tokens;
  char buf[8];
  for (int i = 0; i < 256; ++i) std::snprintf(buf, sizeof buf, "\\x%02x", i), tokens.push_back(buf);
  w.add_string("tokenizer.ggml.model", "rwkv");
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_i32_array("tokenizer.ggml.token_type", std::vector<int32_t>(256, 1));
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_bool("tokenizer.ggml.add_eos_token", false);

  auto values = [&](const std::string& name) -> const TensorSpec& {
    const TensorSpec* spec = model.find(name);
    check(spec != nullptr, "internal: export gguf: no tensor " + name);
    return *spec;
  };
  auto put = [&](const std::string& gguf, const std::vector<int64_t>& shape, const float* data) {
    w.add_tensor(gguf, shape, data, gguf_tensor_type(gguf, shape, type));
  };
  auto add = [&](const std::string& gguf, const std::string& hf) {
    const TensorSpec& s = values(hf);
    put(gguf, s.shape, model.params.data() + s.offset);
  };
  add("token_embd.weight", "model.embed_tokens.weight");
  add("output_norm.weight", "model.norm.weight");
  add("output.weight", "lm_head.weight");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", p + "input_layernorm.weight");
    add(b + "attn_q_a.weight", p + "self_attn.q_a_proj.weight");
    add(b + "attn_q_a_norm.weight", p + "self_attn.q_a_layernorm.weight");
    add(b + "attn_q_b.weight", p + "self_attn.q_b_proj.weight");
    add(b + "attn_kv_a_mqa.weight", p + "self_attn.kv_a_proj_with_mqa.weight");
    add(b + "attn_kv_a_norm.weight", p + "self_attn.kv_a_layernorm.weight");
    {
      // kv_b_proj [H·(n+v), Lkv], per head n key rows then v value rows: attn_k_b = the key rows
      // transposed per head, [H, Lkv, n]; attn_v_b = the value rows, [H, v, Lkv].
      const TensorSpec& s = values(p + "self_attn.kv_b_proj.weight");
      const float* kv = model.params.data() + s.offset;
      std::vector<float> kb(size_t(H * Lkv * n)), vb(size_t(H * v * Lkv));
      for (int64_t h = 0; h < H; ++h) {
        const float* rows = kv + h * (n + v) * Lkv;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < Lkv; ++j) kb[size_t((h * Lkv + j) * n + i)] = rows[i * Lkv + j];
        for (int64_t i = 0; i < v * Lkv; ++i) vb[size_t(h * v * Lkv + i)] = rows[n * Lkv + i];
      }
      put(b + "attn_k_b.weight", {H, Lkv, n}, kb.data());
      put(b + "attn_v_b.weight", {H, v, Lkv}, vb.data());
    }
    add(b + "attn_output.weight", p + "self_attn.o_proj.weight");
    add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight");
    if (!c.is_moe_layer(l)) {
      add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight");
      add(b + "ffn_up.weight", p + "mlp.up_proj.weight");
      add(b + "ffn_down.weight", p + "mlp.down_proj.weight");
      continue;
    }
    add(b + "ffn_gate_inp.weight", p + "mlp.gate.weight");
    add(b + "exp_probs_b.bias", p + "mlp.gate.e_score_correction_bias");
    // Experts stacked in index order along the outermost dimension.
    for (const char* part : {"gate", "up", "down"}) {
      std::vector<float> stacked;
      std::vector<int64_t> shape;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        const TensorSpec& s = values(p + "mlp.experts." + std::to_string(e) + "." + part + "_proj.weight");
        stacked.insert(stacked.end(), model.params.data() + s.offset, model.params.data() + s.offset + s.numel);
        shape = s.shape;
      }
      shape.insert(shape.begin(), c.n_routed_experts);
      put(b + "ffn_" + part + "_exps.weight", shape, stacked.data());
    }
    add(b + "ffn_gate_shexp.weight", p + "mlp.shared_experts.gate_proj.weight");
    add(b + "ffn_up_shexp.weight", p + "mlp.shared_experts.up_proj.weight");
    add(b + "ffn_down_shexp.weight", p + "mlp.shared_experts.down_proj.weight");
  }
  return w.bytes();
}

}  // namespace moe
