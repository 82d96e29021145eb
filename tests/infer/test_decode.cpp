// KV-cached decoding against the full training forward: same logits, same greedy text.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "infer/decode.hpp"
#include "infer/generate.hpp"
#include "model/model.hpp"

using namespace moe;

namespace {

ModelConfig decode_config() {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 48;
  c.moe_intermediate_size = 16;
  c.first_k_dense_replace = 1;
  c.n_shared_experts = 1;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.max_position_embeddings = 40;
  c.initializer_range = 0.3;  // large enough that logits clearly differ between tokens
  return c;
}

// Logits of the last position, from a full forward over the whole sequence.
std::vector<float> full_forward_last(ComputeContext& ctx, const Model& model, const std::vector<int32_t>& tokens) {
  Workspace ws(model.config, 1, int64_t(tokens.size()), false);
  model_forward(ctx, model, ws, tokens.data(), nullptr);
  const int64_t V = model.config.vocab_size;
  return std::vector<float>(ws.logits + (int64_t(tokens.size()) - 1) * V, ws.logits + int64_t(tokens.size()) * V);
}


}  // namespace

TEST_CASE("decode step logits equal the full forward's last-position logits", "[infer]") {
  Model model(decode_config());
  model.init(11);
  // A non-zero routing bias, so selection differs from plain top-k of the scores.
  for (const auto& spec : model.layout.tensors)
    if (spec.role == TensorRole::router_bias)
      for (int64_t i = 0; i < spec.numel; ++i) model.params[spec.offset + i] = 0.05f * float(i % 3);
  ComputeContext ctx;
  const int64_t V = model.config.vocab_size;
  std::vector<int32_t> tokens = {'h', 'e', 'l', 'l', 'o', ' '};
  Decoder decoder(model, 1, model.config.max_position_embeddings);
  const float* logits = decoder.prefill(ctx, 0, tokens, nullptr);
  std::vector<float> reference = full_forward_last(ctx, model, tokens);
  double max_diff = 0;
  for (int64_t i = 0; i < V; ++i) max_diff = std::max(max_diff, double(std::fabs(logits[i] - reference[size_t(i)])));
  CHECK(max_diff < 1e-5);
  for (int step = 0; step < 12; ++step) {
    const int32_t next = int32_t('a' + step);
    const int32_t seq = 0;
    logits = decoder.step(ctx, &seq, &next, 1, nullptr);
    tokens.push_back(next);
    reference = full_forward_last(ctx, model, tokens);
    max_diff = 0;
    for (int64_t i = 0; i < V; ++i) max_diff = std::max(max_diff, double(std::fabs(logits[i] - reference[size_t(i)])));
    INFO("step " << step);
    CHECK(max_diff < 1e-4);
  }
}
