// Self-speculative decoding with the MTP module: greedy output equals plain greedy decoding (any
// draft length, several sequences at once, int8 and f32 drafts), and sampled output has exactly the main model's
// distribution (a chi-square test of the joint distribution of three sampled tokens against the
// probabilities computed from full forwards). Random weights make the drafts often wrong, so both
// the accept and the reject/resample paths run.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "infer/generate.hpp"
#include "infer/sampler.hpp"
#include "model/model.hpp"

using namespace moe;

namespace {

ModelConfig mtp_config() {
  ModelConfig c;
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 4, c.num_key_value_heads = 4;
  c.kv_lora_rank = 12, c.q_lora_rank = 16, c.qk_nope_head_dim = 6, c.qk_rope_head_dim = 4, c.v_head_dim = 8;
  c.head_dim = 4;
  c.intermediate_size = 48, c.moe_intermediate_size = 16, c.first_k_dense_replace = 1, c.n_shared_experts = 1;
  c.n_routed_experts = 8, c.num_experts_per_tok = 2, c.n_group = 2, c.topk_group = 1;
  c.max_position_embeddings = 64, c.initializer_range = 0.3, c.num_nextn_predict_layers = 1;
  validate(c, "test");
  return c;
}

std::vector<GenerateOutput> run(const Model& model, const std::vector<std::string>& prompts, int64_t n, int64_t draft,
                                SamplerConfig sampler, uint64_t seed, GenerateTimings* timings = nullptr,
                                bool int8 = true) {
  ComputeContext ctx;
  GenerateRequest request;
  request.prompts = prompts;
  request.n_predict = n;
  request.sampler = sampler;
  request.seed = seed;
  request.draft_max = draft;
  request.draft_precision = int8 ? DraftPrecision::int8 : DraftPrecision::f32;
  GenerateTimings t;
  auto out = generate(
      ctx, model, request, [](size_t, int32_t) {}, t, nullptr);
  if (timings) *timings = t;
  return out;
}

// Shrinks every lm_head row but those of 'x', 'y', 'z', so that both the main model's and the MTP
// module's distributions (they share the head) put most mass on those three tokens in varying
// proportions: drafts are then sometimes right, sometimes wrong.
void concentrate(Model& model) {
  const TensorSpec* head = model.find("lm_head.weight");
  const int64_t D = model.config.hidden_size;
  for (int64_t v = 0; v < model.config.vocab_size; ++v)
    if (v < 'x' || v > 'z')
      for (int64_t i = 0; i < D; ++i) model.params[head->offset + v * D + i] *= 0.01f;
}

}  // namespace

TEST_CASE("speculative greedy decoding with the MTP module equals plain greedy decoding", "[infer]") {
  Model model(mtp_config(), {}, false);
  model.init(17);
  concentrate(model);
  SamplerConfig greedy;
  greedy.temp = 0;
  const std::vector<std::string> prompts = {"the cat sat", "1+1=", "a"};
  const auto plain = run(model, prompts, 40, 0, greedy, 1);
  for (const bool int8 : {true, false})
    for (int64_t draft : {1, 2, 4}) {
      GenerateTimings t;
      const auto spec = run(model, prompts, 40, draft, greedy, 1, &t, int8);
      CAPTURE(int8, draft, t.drafted, t.accepted);
      for (size_t i = 0; i < prompts.size(); ++i) CHECK(spec[i].text == plain[i].text);
      CHECK(t.accepted > 0);
      CHECK(t.accepted < t.drafted);  // both paths ran
      CHECK(t.generated_tokens == 3 * 40);
      // One sequence: every main-model step yields one token plus the drafts it accepted.
      GenerateTimings one;
      CHECK(run(model, {prompts[0]}, 40, draft, greedy, 1, &one, int8)[0].text == plain[0].text);
      CHECK(one.main_steps == one.generated_tokens - 1 - one.accepted);
    }
  // The context limit is respected as in plain decoding: -n 40 after a 60-byte prompt in a context
  // of 64 keeps the prompt's last 32 bytes (half the context) and stops after 32 new tokens.
  const std::string long_prompt(60, 'x');
  const auto at_limit = run(model, {long_prompt}, 40, 3, greedy, 1);
  CHECK(at_limit[0].prompt_tokens == 32);
  CHECK(at_limit[0].generated == 32);
  CHECK(at_limit[0].hit_context_limit);
  CHECK(at_limit[0].text == run(model, {long_prompt}, 40, 0, greedy, 1)[0].text);
}

TEST_CASE("speculative sampling keeps the main model's distribution (chi-square over three tokens)", "[infer]") {
  Model model(mtp_config(), {}, false);
  model.init(29);
  concentrate(model);
  SamplerConfig sampler;
  sampler.temp = 1.0, sampler.top_k = 3, sampler.top_p = 1.0;
  const std::string prompt = "ab";
  // The exact joint distribution of the first three sampled tokens, from full forwards.
  ComputeContext ctx;
  Sampler dist(sampler, 256, 0);
  auto probs_after = [&](const std::vector<int32_t>& tokens) {
    Workspace ws(model.config, 1, int64_t(tokens.size()), false);
    model_forward(ctx, model, ws, tokens.data(), nullptr);
    std::vector<double> p;
    dist.distribution(ws.logits + (int64_t(tokens.size()) - 1) * 256, tokens, p);
    return p;
  };
  std::map<std::string, double> exact;
  const std::vector<int32_t> base(prompt.begin(), prompt.end());
  const std::vector<double> p1 = probs_after(base);
  for (int32_t a = 0; a < 256; ++a) {
    if (p1[size_t(a)] == 0) continue;
    std::vector<int32_t> s1 = base;
    s1.push_back(a);
    const std::vector<double> p2 = probs_after(s1);
    for (int32_t b = 0; b < 256; ++b) {
      if (p2[size_t(b)] == 0) continue;
      std::vector<int32_t> s2 = s1;
      s2.push_back(b);
      const std::vector<double> p3 = probs_after(s2);
      for (int32_t c = 0; c < 256; ++c)
        if (p3[size_t(c)] > 0)
          exact[std::string{char(a), char(b), char(c)}] = p1[size_t(a)] * p2[size_t(b)] * p3[size_t(c)];
    }
  }
  REQUIRE(exact.size() == 27);
  const int runs = 3000;
  std::map<std::string, int> seen;
  int64_t drafted = 0, accepted = 0;
  for (int r = 0; r < runs; ++r) {
    GenerateTimings t;
    const auto out = run(model, {prompt}, 3, 1, sampler, uint64_t(1000 + r), &t);
    ++seen[out[0].text];
    drafted += t.drafted, accepted += t.accepted;
  }
  double chi2 = 0;
  for (const auto& [text, p] : exact) {
    const double expected = p * runs;
    const double got = seen.count(text) ? seen[text] : 0;
    chi2 += (got - expected) * (got - expected) / expected;
  }
  for (const auto& [text, n] : seen) CHECK(exact.count(text) == 1);  // nothing outside the support
  CAPTURE(chi2, drafted, accepted);
  // 26 degrees of freedom: P(chi2 > 60) < 2e-4 for a correct sampler; a rule that accepted every
  // draft or sampled the residual wrongly is off by hundreds (the drafts of random weights are poor).
  CHECK(chi2 < 60);
  CHECK(accepted > 0);
  CHECK(accepted < drafted);
}

TEST_CASE("the automatic draft precision takes int8 only for a module that outgrows the L2 caches", "[infer]") {
  ModelConfig c = mtp_config();  // a module of a few KiB
  CHECK_FALSE(int8_draft_pays(c, 1));
  // 64 experts of width 1024 at D = 1024: a 800 MB module, beyond any L2.
  c.hidden_size = 1024, c.moe_intermediate_size = 1024, c.n_routed_experts = 64;
  for (int64_t threads : {1, 2, 64}) CHECK(int8_draft_pays(c, threads));
  c.num_nextn_predict_layers = 0;  // no module: nothing to draft
  CHECK_FALSE(int8_draft_pays(c, 1));
}
