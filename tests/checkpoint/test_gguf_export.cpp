// moe export gguf: the metadata llama.cpp's deepseek2 loader reads (with its exact types), the
// tensor set (no MTP layer), the kv_b_proj split into attn_k_b (transposed per head) / attn_v_b,
// stacked experts, the tensor types of --type f16 / q8_0, and refusals of what llama.cpp cannot
// express. (A real llama.cpp runs the files in tests/interop/test_llama_cpp.cpp.)
#include <cstring>
#include <string>

#include <catch2/catch.hpp>

#include "../support/checks.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "core/gguf.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf_export.hpp"
#include "train/train_config.hpp"

namespace {

moe::ModelConfig tiny_v3() { return moe::load_config_file("tiny-v3").model; }

float value_at(const std::string& bytes, const moe::GgufFile& g, const std::string& name, uint64_t index) {
  for (const auto& t : g.tensors)
    if (t.name == name) {
      float v;
      std::memcpy(&v, bytes.data() + g.data_start + t.offset + index * 4, 4);
      return v;
    }
  FAIL("no tensor " << name);
  return 0;
}

}  // namespace

TEST_CASE("export gguf: deepseek2 metadata, tensors and the kv_b split", "[gguf]") {
  moe_test::TempDir tmp("gguf_export");
  const moe::ModelConfig c = tiny_v3();  // MLA, 3 layers (1 dense), 8 experts top-2 in 2 groups keep 1, MTP
  moe::Model model(c);
  model.init(3);
  const std::string bytes = moe::export_gguf(model);
  const std::string path = tmp / "m.gguf";
  moe_test::write_bytes(path, bytes);
  const moe::GgufFile g = moe::read_gguf(path);
  auto kv = [&](const std::string& key, moe::GgufType type) {
    const moe::GgufKv* k = g.find(key);
    INFO(key);
    REQUIRE(k != nullptr);
    CHECK(k->type == type);
    return k->text;
  };
  using T = moe::GgufType;
  CHECK(kv("general.architecture", T::string) == "deepseek2");
  CHECK(kv("deepseek2.block_count", T::u32) == "3");  // the MTP layer is not exported
  CHECK(kv("deepseek2.attention.head_count_kv", T::u32) == "1");
  CHECK(kv("deepseek2.attention.key_length", T::u32) == std::to_string(*c.kv_lora_rank + c.qk_rope_head_dim));
  CHECK(kv("deepseek2.attention.value_length", T::u32) == std::to_string(*c.kv_lora_rank));
  CHECK(kv("deepseek2.attention.key_length_mla", T::u32) == std::to_string(c.qk_nope_head_dim + c.qk_rope_head_dim));
  CHECK(kv("deepseek2.attention.value_length_mla", T::u32) == std::to_string(c.v_head_dim));
  CHECK(kv("deepseek2.rope.dimension_count", T::u32) == std::to_string(c.qk_rope_head_dim));
  CHECK(kv("deepseek2.expert_gating_func", T::u32) == "2");  // sigmoid
  CHECK(kv("deepseek2.expert_group_count", T::u32) == "2");
  CHECK(kv("deepseek2.expert_group_used_count", T::u32) == "1");
  CHECK(kv("deepseek2.expert_weights_norm", T::boolean) == "true");
  CHECK(kv("deepseek2.expert_weights_scale", T::f32) == "1");
  CHECK(kv("deepseek2.leading_dense_block_count", T::u32) == "1");
  CHECK(kv("deepseek2.attention.layer_norm_rms_epsilon", T::f32) == "1e-06");
  CHECK(kv("tokenizer.ggml.model", T::string) == "rwkv");
  CHECK(g.find("tokenizer.ggml.tokens")->count == 256);
  CHECK(g.find("tokenizer.ggml.tokens")->text.rfind("[\"\\x00\", \"\\x01\"", 0) == 0);
  // 3 global + 10 per layer (2 norms around attention, 8 attention) + 3 dense FFN + 2 x (router, bias,
  // 3 stacked, 3 shared).
  CHECK(g.tensors.size() == 3 + 3 * 10 + 3 + 2 * 8);
  for (const auto& t : g.tensors) CHECK(t.name.find("blk.3.") != 0);
  // attn_k_b[h][j][i] = kv_b[h·(n+v) + i][j]; attn_v_b[h][i][j] = kv_b[h·(n+v) + n + i][j].
  const int64_t n = c.qk_nope_head_dim, v = c.v_head_dim, Lkv = *c.kv_lora_rank;
  const moe::TensorSpec* kvb = model.find("model.layers.1.self_attn.kv_b_proj.weight");
  const float* w = model.params.data() + kvb->offset;
  for (int64_t h : {int64_t(0), c.num_attention_heads - 1})
    for (int64_t i : {int64_t(0), n - 1})
      for (int64_t j : {int64_t(0), Lkv - 1}) {
        CHECK(value_at(bytes, g, "blk.1.attn_k_b.weight", uint64_t((h * Lkv + j) * n + i)) ==
              w[(h * (n + v) + i) * Lkv + j]);
        CHECK(value_at(bytes, g, "blk.1.attn_v_b.weight", uint64_t((h * v + (i % v)) * Lkv + j)) ==
              w[(h * (n + v) + n + (i % v)) * Lkv + j]);
      }
  // Experts stacked in index order: expert 5's first down_proj value.
  const moe::TensorSpec* down5 = model.find("model.layers.2.mlp.experts.5.down_proj.weight");
  CHECK(value_at(bytes, g, "blk.2.ffn_down_exps.weight", uint64_t(5 * down5->numel)) ==
        model.params.data()[down5->offset]);
}

TEST_CASE("export gguf --type: matrices in F16 / Q8_0, norms, router and bias in F32, Q8_0 falls back to F16",
          "[gguf]") {
  moe_test::TempDir tmp("gguf_types");
  const moe::ModelConfig c = tiny_v3();  // hidden 96 (3 blocks of 32), qk_nope 16 and q_lora 48 (not multiples of 32)
  moe::Model model(c);
  model.init(4);
  for (const moe::GgmlType type : {moe::GgmlType::f16, moe::GgmlType::q8_0}) {
    const std::string path = tmp / "m.gguf";
    moe_test::write_bytes(path, moe::export_gguf(model, type));
    const moe::GgufFile g = moe::read_gguf(path);
    const uint32_t matrix = uint32_t(type);
    CHECK(g.find("general.file_type")->text == (type == moe::GgmlType::f16 ? "1" : "7"));
    auto type_of = [&](const std::string& name) {
      for (const auto& t : g.tensors)
        if (t.name == name) return t.type;
      FAIL("no tensor " << name);
      return 99u;
    };
    CHECK(type_of("token_embd.weight") == matrix);
    CHECK(type_of("output.weight") == matrix);
    CHECK(type_of("output_norm.weight") == 0);
    CHECK(type_of("blk.0.attn_norm.weight") == 0);
    CHECK(type_of("blk.0.attn_q_a_norm.weight") == 0);
    CHECK(type_of("blk.0.attn_kv_a_norm.weight") == 0);
    CHECK(type_of("blk.0.ffn_gate.weight") == matrix);       // dense layer, rows of 96
    CHECK(type_of("blk.1.ffn_gate_inp.weight") == 0);        // the router
    CHECK(type_of("blk.1.exp_probs_b.bias") == 0);           // its bias
    CHECK(type_of("blk.1.ffn_down_exps.weight") == matrix);  // rows of 64
    CHECK(type_of("blk.1.attn_v_b.weight") == matrix);       // rows of kv_lora_rank 32
    CHECK(type_of("blk.1.attn_k_b.weight") == 1);            // rows of qk_nope 16: F16 under Q8_0 too
    CHECK(type_of("blk.1.attn_q_b.weight") == 1);            // rows of q_lora 48: likewise
    CHECK(type_of("blk.2.ffn_gate_shexp.weight") == matrix);
  }
}

TEST_CASE("export gguf refuses what llama.cpp's deepseek2 cannot express, naming the field", "[gguf]") {
  moe::ModelConfig gqa = moe::load_config_file("tiny").model;
  moe::Model a(gqa);
  REQUIRE_MOE_ERROR(moe::export_gguf(a), Catch::Contains("GQA attention"));
  moe::ModelConfig eps = tiny_v3();
  eps.rms_norm_eps = 1e-5;
  moe::Model b(eps);
  REQUIRE_MOE_ERROR(moe::export_gguf(b), Catch::Contains("rms_norm_eps"));
  moe::ModelConfig pairs = tiny_v3();
  pairs.rope_interleave = false;
  moe::Model d(pairs);
  REQUIRE_MOE_ERROR(moe::export_gguf(d), Catch::Contains("rope_interleave"));
}

TEST_CASE("moe export gguf writes the file once, and replaces it only with --force", "[gguf][cli]") {
  moe_test::TempDir tmp("gguf_export_cli");
  moe::Model model(tiny_v3());
  model.init(1);
  moe::save_checkpoint(tmp / "ckpt", model);
  const std::string out = tmp / "m.gguf";
  const auto r = moe_test::run_moe({"export", "gguf", "-m", tmp / "ckpt", "--out", out});
  REQUIRE(r.code == 0);
  CHECK(r.out.find("wrote " + out) != std::string::npos);
  CHECK(r.out.find("the MTP module was left out") != std::string::npos);
  CHECK(moe::read_gguf(out).find("general.architecture")->text == "deepseek2");
  const auto again = moe_test::run_moe({"export", "gguf", "-m", tmp / "ckpt", "--out", out});
  CHECK(again.code == 1);
  CHECK(again.err.find(out + ": exists; add --force") != std::string::npos);
  CHECK(moe_test::run_moe({"export", "gguf", "-m", tmp / "ckpt", "--out", out, "--force"}).out.find("replaced") == 0);
}
