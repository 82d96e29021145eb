// KV-cached decoding against the full training forward: same logits, same greedy text.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <omp.h>

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

// One decode step of every sequence (rows in reverse slot order, token 'A' + (b + 5 step) % 26),
// each row's logits compared with a full forward over that sequence's tokens.
struct StepCheck {
  double max_diff = 0, max_logit = 0;
};
StepCheck batched_step_against_full(ComputeContext& ctx, const Model& model, Decoder& decoder,
                                    std::vector<std::vector<int32_t>>& seqs, int step) {
  const int64_t B = int64_t(seqs.size()), V = model.config.vocab_size;
  std::vector<int32_t> seq_ids, next;
  for (int64_t b = B - 1; b >= 0; --b) {  // rows in a different order than the cache slots
    seq_ids.push_back(int32_t(b));
    next.push_back(int32_t('A' + (b + step * 5) % 26));
  }
  const float* logits = decoder.step(ctx, seq_ids.data(), next.data(), B, nullptr);
  StepCheck check;
  for (int64_t i = 0; i < B; ++i) {
    auto& tokens = seqs[size_t(seq_ids[size_t(i)])];
    tokens.push_back(next[size_t(i)]);
    const std::vector<float> reference = full_forward_last(ctx, model, tokens);
    for (int64_t v = 0; v < V; ++v) {
      check.max_diff = std::max(check.max_diff, double(std::fabs(logits[i * V + v] - reference[size_t(v)])));
      check.max_logit = std::max(check.max_logit, double(std::fabs(reference[size_t(v)])));
    }
  }
  return check;
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

TEST_CASE("batched decode steps equal the full forward for any thread count", "[infer]") {
  // Six sequences of different lengths step together, so tokens share experts (8 experts, 2 per
  // token) and the per-expert grouping is exercised; 3 threads leave one without attention heads
  // (2 KV heads), 1 thread runs every slice alone.
  Model model(decode_config());
  model.init(23);
  ComputeContext ctx;
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    const int64_t B = 6;
    Decoder decoder(model, B, model.config.max_position_embeddings);
    std::vector<std::vector<int32_t>> seqs;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int32_t> prompt;
      for (int64_t i = 0; i <= b; ++i) prompt.push_back(int32_t('a' + (b * 7 + i * 3) % 26));
      decoder.prefill(ctx, b, prompt, nullptr);
      seqs.push_back(prompt);
    }
    for (int step = 0; step < 3; ++step) {
      INFO("threads " << threads << ", step " << step);
      CHECK(batched_step_against_full(ctx, model, decoder, seqs, step).max_diff < 1e-4);
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("a decode step reports the distinct routed experts it read, from the same choices as its load", "[infer]") {
  // Six rows of 8 experts, 2 each: some share experts, so the union is below 12 per layer; one row
  // reads exactly K per layer.
  Model model(decode_config());
  model.init(29);
  const ModelConfig& c = model.config;
  ComputeContext ctx;
  const int64_t B = 6;
  Decoder decoder(model, B, c.max_position_embeddings);
  for (int64_t b = 0; b < B; ++b) decoder.prefill(ctx, b, {int32_t('a' + b), int32_t('k' + b)}, nullptr);
  for (int64_t rows : {int64_t(1), B}) {
    std::vector<int32_t> seq, next;
    for (int64_t b = 0; b < rows; ++b) seq.push_back(int32_t(b)), next.push_back(int32_t('q' + 2 * b));
    ExpertTally tally(c);
    decoder.step(ctx, seq.data(), next.data(), rows, &tally);
    int64_t distinct = 0;
    for (const auto& layer : tally.counts)
      for (int64_t n : layer) distinct += n > 0;
    INFO(rows << " rows");
    CHECK(decoder.experts_read() == distinct);
    if (rows == 1) CHECK(distinct == c.num_experts_per_tok * c.num_moe_layers());
    if (rows == B) CHECK(distinct > c.num_experts_per_tok * c.num_moe_layers());
  }
}

TEST_CASE("decoding routes with the model's device-limited routing, as the full forward does", "[infer]") {
  // 4 blocks of 2 experts, one block per token (what a checkpoint of `--expert-parallel
  // --max-ranks-per-token 1` on 4 ranks says).
  ModelConfig c = decode_config();
  c.n_group = 1, c.topk_group = 1, c.expert_ranks = 4, c.max_ranks_per_token = 1;
  Model model(c);
  model.init(31);
  ComputeContext ctx;
  const int64_t B = 3;
  Decoder decoder(model, B, c.max_position_embeddings);
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i <= 2 * b + 1; ++i) prompt.push_back(int32_t('a' + (b * 5 + i * 7) % 26));
    decoder.prefill(ctx, b, prompt, nullptr);
    seqs.push_back(prompt);
  }
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    const StepCheck check = batched_step_against_full(ctx, model, decoder, seqs, step);
    CHECK(check.max_logit > 0.1);
    CHECK(check.max_diff < 1e-4);
  }
  // The limit changes the logits: the same weights routed without it give others.
  ModelConfig free = c;
  free.max_ranks_per_token = 0, free.expert_ranks = 0;
  Model unlimited(free);
  std::copy_n(model.params.data(), model.layout.total, unlimited.params.data());
  const std::vector<float> a = full_forward_last(ctx, model, seqs[2]), b = full_forward_last(ctx, unlimited, seqs[2]);
  double diff = 0;
  for (size_t v = 0; v < a.size(); ++v) diff = std::max(diff, double(std::fabs(a[v] - b[v])));
  CHECK(diff > 1e-3);
}

namespace {

// Greedy generation that recomputes the whole sequence every step (no cache).
std::string greedy_by_recompute(ComputeContext& ctx, const Model& model, const std::string& prompt, int64_t n) {
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  std::string out;
  const int64_t V = model.config.vocab_size;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<float> logits = full_forward_last(ctx, model, tokens);
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (logits[size_t(v)] > logits[size_t(best)]) best = v;
    tokens.push_back(int32_t(best));
    out.push_back(char(best));
  }
  return out;
}

}  // namespace

TEST_CASE("greedy generation with the KV cache equals recomputing the sequence", "[infer]") {
  ModelConfig c = decode_config();
  Model model(c);
  model.init(5);
  ComputeContext ctx;
  GenerateRequest request;
  request.prompts = {"the cat", "1+1="};
  request.n_predict = 20;
  request.sampler.temp = 0;
  GenerateTimings timings;
  ExpertTally tally(c);
  const auto out = generate(
      ctx, model, request, [](size_t, int32_t) {}, timings, &tally);
  REQUIRE(out.size() == 2);
  for (size_t i = 0; i < out.size(); ++i) {
    CHECK(out[i].generated == 20);
    CHECK(out[i].text == greedy_by_recompute(ctx, model, request.prompts[i], 20));
  }
  // Every token (prompt and generated, except the last generated one) was routed at every MoE layer.
  int64_t routed = 0;
  for (int64_t v : tally.counts[0]) routed += v;
  CHECK(routed == (7 + 19 + 4 + 19) * c.num_experts_per_tok);
  CHECK(timings.generated_tokens == 40);
}

TEST_CASE("generation stops at the context limit and truncates long prompts", "[infer]") {
  ModelConfig c = decode_config();  // context 40
  Model model(c);
  model.init(5);
  ComputeContext ctx;
  GenerateRequest request;
  request.prompts = {std::string(30, 'a'), std::string(50, 'b'), ""};
  request.n_predict = 100;
  request.sampler.temp = 0.8;
  request.seed = 3;
  GenerateTimings timings;
  const auto out = generate(
      ctx, model, request, [](size_t, int32_t) {}, timings, nullptr);
  // -n 100 does not fit: prompts keep their last half of the context (20) and generate into the rest.
  CHECK(out[0].prompt_truncated);
  CHECK(out[0].prompt == std::string(20, 'a'));
  CHECK(out[0].prompt_cut == 10);
  CHECK(out[0].generated == 20);
  CHECK(out[0].hit_context_limit);
  CHECK(out[1].prompt_tokens == 20);
  CHECK(out[1].prompt_cut == 30);
  CHECK(out[1].generated == 20);
  CHECK(out[2].prompt == "\n");
  CHECK(out[2].generated == 39);
  // -n 5 fits after 35 prompt tokens: a 30-byte prompt stays whole, a 50-byte one keeps 35.
  GenerateRequest short_request = request;
  short_request.n_predict = 5;
  GenerateTimings short_timings;
  const auto fits = generate(
      ctx, model, short_request, [](size_t, int32_t) {}, short_timings, nullptr);
  CHECK_FALSE(fits[0].prompt_truncated);
  CHECK(fits[0].generated == 5);
  CHECK(fits[1].prompt == std::string(35, 'b'));
  CHECK(fits[1].prompt_cut == 15);
  CHECK(fits[1].generated == 5);
  CHECK_FALSE(fits[1].hit_context_limit);
  // Same seed, same text.
  GenerateTimings again_timings;
  const auto again = generate(
      ctx, model, request, [](size_t, int32_t) {}, again_timings, nullptr);
  for (size_t i = 0; i < out.size(); ++i) CHECK(again[i].text == out[i].text);
}

TEST_CASE("eval follows the documented window protocol exactly", "[infer]") {
  ModelConfig c = decode_config();
  Model model(c);
  model.init(9);
  ComputeContext ctx;
  // 23 predictions with T = 8: windows of 8, 8, 7.
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 24; ++i) bytes.push_back(uint8_t("some text, a hand-sized file"[i]));
  const EvalResult r = evaluate_bytes(ctx, model, bytes, 8, nullptr);
  // Direct computation: each window alone through the forward, log-softmax at every position.
  double total = 0;
  for (int64_t s = 0; s < 23; s += 8) {
    const int64_t len = std::min<int64_t>(8, 23 - s);
    std::vector<int32_t> x(bytes.begin() + s, bytes.begin() + s + len);
    Workspace ws(c, 1, len, false);
    model_forward(ctx, model, ws, x.data(), nullptr);
    for (int64_t t = 0; t < len; ++t) {
      const float* z = ws.logits + t * c.vocab_size;
      double max = z[0], sum = 0;
      for (int64_t v = 0; v < c.vocab_size; ++v) max = std::max(max, double(z[v]));
      for (int64_t v = 0; v < c.vocab_size; ++v) sum += std::exp(double(z[v]) - max);
      total += std::log(sum) + max - double(z[bytes[size_t(s + t + 1)]]);
    }
  }
  CHECK(r.tokens == 23);
  CHECK(r.loss == Approx(total / 23).epsilon(1e-6));
  CHECK(r.perplexity == Approx(std::exp(total / 23)).epsilon(1e-6));
}

namespace {

// Multi-head latent attention: the decoder caches only [rmsnorm(c_kv) | rope(k_rope)] per token
// and runs the absorbed form; the full forward runs the materialised form.
ModelConfig mla_decode_config(bool q_latent, bool interleave) {
  ModelConfig c = decode_config();
  c.num_key_value_heads = c.num_attention_heads;  // MLA: one key/value head per query head
  c.kv_lora_rank = 12, c.qk_nope_head_dim = 6, c.qk_rope_head_dim = 4, c.v_head_dim = 10;
  c.head_dim = c.qk_rope_head_dim;
  if (q_latent) c.q_lora_rank = 20;
  c.rope_interleave = interleave;
  validate(c, "test");
  return c;
}

}  // namespace

TEST_CASE("MLA latent-cache decode equals the full forward for 1-3 threads and several prompt lengths", "[infer]") {
  ComputeContext ctx;
  const int saved_threads = omp_get_max_threads();
  for (const bool q_latent : {true, false}) {
    Model model(mla_decode_config(q_latent, /*interleave=*/q_latent));
    model.init(31);
    for (const auto& spec : model.layout.tensors)
      if (spec.role == TensorRole::router_bias)
        for (int64_t i = 0; i < spec.numel; ++i) model.params[spec.offset + i] = 0.05f * float(i % 3);
    const int64_t V = model.config.vocab_size;
    for (int threads : {1, 2, 3}) {  // 4 heads over 3 threads: one thread has none
      omp_set_num_threads(threads);
      const int64_t B = 4;
      Decoder decoder(model, B, model.config.max_position_embeddings);
      // The cache holds r_kv + d_r floats per token and layer, nothing per head.
      CHECK(decoder.cache().latent.size() == size_t(3 * B * 40 * (12 + 4)));
      CHECK(decoder.cache().k.size() == 0);
      std::vector<std::vector<int32_t>> seqs;
      for (int64_t b = 0; b < B; ++b) {
        std::vector<int32_t> prompt;
        for (int64_t i = 0; i < 1 + 5 * b; ++i) prompt.push_back(int32_t('a' + (b * 7 + i * 3) % 26));  // 1..16
        const float* logits = decoder.prefill(ctx, b, prompt, nullptr);
        const std::vector<float> reference = full_forward_last(ctx, model, prompt);
        double max_diff = 0;
        for (int64_t v = 0; v < V; ++v)
          max_diff = std::max(max_diff, double(std::fabs(logits[v] - reference[size_t(v)])));
        CHECK(max_diff < 1e-5);
        seqs.push_back(prompt);
      }
      double worst = 0, scale = 0;
      for (int step = 0; step < 4; ++step) {
        const StepCheck check = batched_step_against_full(ctx, model, decoder, seqs, step);
        worst = std::max(worst, check.max_diff), scale = std::max(scale, check.max_logit);
      }
      INFO("q latent " << q_latent << ", threads " << threads);
      CHECK(worst < 1e-4);
      CHECK(scale > 0.5);  // logits of a real spread: the comparison is not between zeros
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("MLA decode steps with several rows of one sequence (a verification) equal the full forward", "[infer]") {
  // Rows of one sequence at consecutive positions attend in one product per run; each must see
  // only the positions up to its own. Runs of 3 and 2 rows, and rows of two sequences alternating
  // (runs of one), for 1-3 threads (4 heads over 3 threads: one thread has none).
  ComputeContext ctx;
  Model model(mla_decode_config(true, true));
  model.init(37);
  const int64_t V = model.config.vocab_size;
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    Decoder decoder(model, 2, model.config.max_position_embeddings, 5);
    std::vector<std::vector<int32_t>> seqs = {{'a', 'b', 'c'}, {'x', 'y', 'z', 'w', 'v'}};
    for (int32_t b = 0; b < 2; ++b) decoder.prefill(ctx, b, seqs[size_t(b)], nullptr);
    double worst = 0, largest = 0;
    for (const std::vector<int32_t>& rows :
         {std::vector<int32_t>{0, 0, 0, 1, 1}, std::vector<int32_t>{1, 0, 1, 0}, std::vector<int32_t>{1, 1, 1, 1, 0}}) {
      std::vector<int32_t> tokens;
      std::vector<std::vector<float>> want;
      for (size_t r = 0; r < rows.size(); ++r) {
        auto& s = seqs[size_t(rows[r])];
        s.push_back(int32_t('d' + (r * 5 + s.size()) % 20));
        tokens.push_back(s.back());
        want.push_back(full_forward_last(ctx, model, s));
      }
      const float* logits = decoder.step(ctx, rows.data(), tokens.data(), int64_t(rows.size()), nullptr);
      for (size_t r = 0; r < rows.size(); ++r)
        for (int64_t v = 0; v < V; ++v) {
          worst = std::max(worst, double(std::fabs(logits[int64_t(r) * V + v] - want[r][size_t(v)])));
          largest = std::max(largest, double(std::fabs(want[r][size_t(v)])));
        }
    }
    INFO(threads << " threads");
    CHECK(worst < 1e-4);
    CHECK(largest > 0.5);
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("a row of a decode step gets the same bits with or without other rows (speculative == plain, exactly)",
          "[infer]") {
  // oneDNN's sgemm sums in an order that depends on the rows per call and, on AVX2, on how many
  // terms of weight 0 a sum has: a verification's row would differ in its last bits from the same
  // row decoded alone, and greedy text at a near-tie. Every step layout here (several rows of one
  // sequence, rows of two sequences interleaved, a plain batch) must give each row exactly the
  // logits and hidden state of one-row steps taken in the same order. GQA and MLA (with and without
  // the query latent), 1-3 threads, even and odd heads per thread (a lone row of a two-row call);
  // `ctest` also runs this with oneDNN held to AVX2 kernels.
  ModelConfig gqa = decode_config();
  gqa.hidden_size = 64, gqa.moe_intermediate_size = 40, gqa.intermediate_size = 96;  // sums of 40-96 terms
  validate(gqa, "test");
  ModelConfig gqa3 = gqa, mla3 = mla_decode_config(true, false);
  gqa3.num_attention_heads = 3, gqa3.num_key_value_heads = 1;  // 3 query heads per KV head
  mla3.num_attention_heads = mla3.num_key_value_heads = 3;     // 3, 2 + 1 or 1 + 1 + 1 heads per thread
  validate(gqa3, "test"), validate(mla3, "test");
  ComputeContext ctx;
  const int saved_threads = omp_get_max_threads();
  for (const ModelConfig& c : {gqa, gqa3, mla_decode_config(true, true), mla_decode_config(false, false), mla3}) {
    Model model(c);
    model.init(53);
    const int64_t V = c.vocab_size, D = c.hidden_size;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      Decoder many(model, 2, c.max_position_embeddings, 6), one(model, 2, c.max_position_embeddings, 1);
      const std::vector<std::vector<int32_t>> prompts = {{'a', 'b', 'c', 'd', 'e'}, {'x', 'y'}};
      for (int32_t b = 0; b < 2; ++b) many.prefill(ctx, b, prompts[size_t(b)], nullptr);
      for (int32_t b = 0; b < 2; ++b) one.prefill(ctx, b, prompts[size_t(b)], nullptr);
      int32_t next = 'f';
      for (const std::vector<int32_t>& rows : {std::vector<int32_t>{0, 0, 0}, std::vector<int32_t>{1, 0, 1, 0},
                                               std::vector<int32_t>{0, 1}, std::vector<int32_t>{1, 1, 0, 0, 0, 1}}) {
        std::vector<int32_t> tokens;
        for (size_t r = 0; r < rows.size(); ++r) tokens.push_back(next = int32_t('a' + (next * 7 + 3) % 26));
        const int64_t n = int64_t(rows.size());
        const float* logits = many.step(ctx, rows.data(), tokens.data(), n, nullptr);
        const std::vector<float> batch_logits(logits, logits + n * V),
            batch_hidden(many.hidden(), many.hidden() + n * D);
        int differing = 0;
        for (int64_t r = 0; r < n; ++r) {
          const float* alone = one.step(ctx, &rows[size_t(r)], &tokens[size_t(r)], 1, nullptr);
          differing += !std::equal(alone, alone + V, batch_logits.begin() + r * V);
          differing += !std::equal(one.hidden(), one.hidden() + D, batch_hidden.begin() + r * D);
        }
        INFO((c.mla() ? "MLA" : "GQA") << ", q latent " << c.q_lora_rank.has_value() << ", " << threads << " threads, "
                                       << n << " rows");
        CHECK(differing == 0);
      }
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("an overflowed (non-finite) latent of a later row does not reach the earlier rows of its step", "[infer]") {
  // Token 'z' embeds to +inf, so its latent is NaN. A step of rows [a, z] of one sequence: row a's
  // logits must be the single-row step's (finite). Row a attends over exactly its own positions; a
  // product over the later row's position too, with weight 0, would give NaN where 0 · NaN is NaN.
  ComputeContext ctx;
  Model model(mla_decode_config(true, true));
  model.init(43);
  const TensorSpec* embed = model.find("model.embed_tokens.weight");
  REQUIRE(embed != nullptr);
  const int64_t D = model.config.hidden_size, V = model.config.vocab_size;
  std::fill_n(model.params.data() + embed->offset + int64_t('z') * D, D, INFINITY);
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    Decoder one(model, 1, model.config.max_position_embeddings, 2),
        two(model, 1, model.config.max_position_embeddings, 2);
    const std::vector<int32_t> prompt = {'a', 'b', 'c'};
    one.prefill(ctx, 0, prompt, nullptr), two.prefill(ctx, 0, prompt, nullptr);
    const int32_t seq[2] = {0, 0}, tokens[2] = {'a', 'z'};
    const float* single = one.step(ctx, seq, tokens, 1, nullptr);
    const std::vector<float> reference(single, single + V);
    const float* both = two.step(ctx, seq, tokens, 2, nullptr);
    INFO(threads << " threads");
    double worst = 0;
    for (int64_t v = 0; v < V; ++v) {
      REQUIRE(std::isfinite(reference[size_t(v)]));
      worst = std::max(worst, double(std::fabs(both[v] - reference[size_t(v)])));
    }
    CHECK(worst < 1e-4);
    CHECK(std::isnan(both[V]));  // row z itself is NaN: the test really has a non-finite latent
    const int64_t lat = *model.config.kv_lora_rank + model.config.qk_rope_head_dim;
    CHECK_FALSE(std::isfinite(two.cache().latent_at(0, 0)[4 * lat]));
  }
  omp_set_num_threads(saved_threads);
}

TEST_CASE("a byte model with a vocabulary past 256 generates: the ids past the bytes stand for no text", "[infer]") {
  // vocab_size 320 with byte tokens: zero head rows for the bytes and rows 300 = v, 301 = -v, so
  // every greedy token is 300 or 301 (one logit > 0 = the bytes' logits), for plain and speculative
  // decoding alike.
  ModelConfig c = mla_decode_config(true, true);
  c.vocab_size = 320, c.num_nextn_predict_layers = 1;
  validate(c, "test");
  Model model(c);
  model.init(47);
  const TensorSpec* head = model.find("lm_head.weight");
  REQUIRE(head != nullptr);
  const int64_t D = c.hidden_size;
  float* rows = model.params.data() + head->offset;
  std::fill_n(rows, 300 * D, 0.0f);
  for (int64_t k = 0; k < D; ++k) rows[301 * D + k] = -rows[300 * D + k];
  std::fill_n(rows + 302 * D, 18 * D, 0.0f);
  const Tokenizer bytes;
  CHECK(bytes.bytes_of(300).empty());
  CHECK(bytes.decode({'h', 300, 'i'}) == "hi");
  CHECK(bytes.piece(301) == "<unused 301>");
  ComputeContext ctx;
  for (const int64_t draft : {int64_t(0), int64_t(2)}) {
    GenerateRequest request;
    request.prompts = {"hello"};
    request.n_predict = 12;
    request.sampler.temp = 0;
    request.draft_max = draft;
    GenerateTimings timings;
    const auto out = generate(
        ctx, model, request, [](size_t, int32_t) {}, timings, nullptr);
    INFO("draft " << draft);
    CHECK(out[0].generated == 12);
    CHECK(out[0].text.empty());
  }
}

TEST_CASE("MLA greedy generation with the latent cache equals recomputing the sequence", "[infer]") {
  const ModelConfig c = mla_decode_config(true, true);
  Model model(c);
  model.init(8);
  ComputeContext ctx;
  GenerateRequest request;
  request.prompts = {"the cat", "1+1="};
  request.n_predict = 20;
  request.sampler.temp = 0;
  GenerateTimings timings;
  const auto out = generate(
      ctx, model, request, [](size_t, int32_t) {}, timings, nullptr);
  for (size_t i = 0; i < out.size(); ++i) CHECK(out[i].text == greedy_by_recompute(ctx, model, request.prompts[i], 20));
}

TEST_CASE("the MTP module's decode steps equal its training forward, catch-up rows included", "[infer]") {
  // Two sequences: prefill fills the module's cache up to the prompt's second-to-last position;
  // then main-model steps of two rows each, and MTP steps whose rows before a sequence's last only
  // enter the cache (their output is not returned). Every returned row must equal the training
  // forward's MTP logits at that position (h_i from the main model, t_{i+1} the next token).
  ModelConfig c = decode_config();
  c.num_key_value_heads = 4;
  c.kv_lora_rank = 12, c.q_lora_rank = 16, c.qk_nope_head_dim = 6, c.qk_rope_head_dim = 4, c.v_head_dim = 8;
  c.head_dim = c.qk_rope_head_dim;
  c.num_nextn_predict_layers = 1;
  c.moe_intermediate_size = 40;  // threads' slices of 16-aligned widths end mid-block (the int8 block sums)
  validate(c, "test");
  Model model(c);
  model.init(41);
  ComputeContext ctx;
  const int64_t V = c.vocab_size, D = c.hidden_size;
  const std::vector<std::vector<int32_t>> text = {{'t', 'h', 'e', ' ', 'c', 'a', 't', ' ', 's', 'a', 't'},
                                                  {'1', '+', '1', '=', '2', ',', ' ', '2', '+', '2'}};
  // The reference: the training forward (with targets the module runs) over each whole text.
  std::vector<std::vector<float>> want;
  for (const auto& t : text) {
    const int64_t T = int64_t(t.size()) - 1;
    Workspace ws(c, 1, T, false, /*with_mtp=*/true);
    model_forward(ctx, model, ws, t.data(), t.data() + 1);
    REQUIRE(ws.mtp_ran);
    want.emplace_back(ws.mtp_logits, ws.mtp_logits + T * V);
  }
  // f32: equal to rounding; the int8 draft (core/quant.hpp): close, the same argmax nearly always.
  const int saved_threads = omp_get_max_threads();
  for (const int threads : {1, 2, 3})
    for (const bool int8 : {false, true}) {
      omp_set_num_threads(threads);
      INFO((int8 ? "int8 draft" : "f32") << ", " << threads << " threads");
      Decoder decoder(model, 2, c.max_position_embeddings, 6, int8);
      std::vector<std::vector<float>> hidden(2);  // h_p of the positions not yet in the MTP cache
      std::vector<int64_t> length(2);
      for (int32_t b = 0; b < 2; ++b) {
        const std::vector<int32_t> prompt(text[size_t(b)].begin(), text[size_t(b)].begin() + 3 + b);
        decoder.prefill(ctx, b, prompt, nullptr);
        CHECK(decoder.cache().mtp_length[size_t(b)] == int64_t(prompt.size()) - 1);
        hidden[size_t(b)].assign(decoder.hidden(), decoder.hidden() + D);
        length[size_t(b)] = int64_t(prompt.size());
      }
      double worst = 0, largest = 0;
      int64_t compared = 0, same_argmax = 0;
      for (int round = 0; round < 3; ++round) {
        // The main model takes 2 rows of sequence 0 and 1 row of sequence 1 (interleaved).
        const std::vector<int32_t> seq = {0, 1, 0};
        std::vector<int32_t> tokens;
        for (size_t r = 0, k0 = 0; r < seq.size(); ++r) {
          const int64_t b = seq[r];
          tokens.push_back(text[size_t(b)][size_t(length[size_t(b)] + (b == 0 ? int64_t(k0++) : 0))]);
        }
        decoder.step(ctx, seq.data(), tokens.data(), 3, nullptr);
        for (size_t r = 0; r < seq.size(); ++r)
          hidden[size_t(seq[r])].insert(hidden[size_t(seq[r])].end(), decoder.hidden() + r * D,
                                        decoder.hidden() + (r + 1) * D);
        length[0] += 2, length[1] += 1;
        // The MTP catch-up: every pending position p (h_p, t_{p+1}), sequence 0's rows then 1's.
        std::vector<int32_t> mseq, next;
        std::vector<float> h;
        std::vector<int64_t> last_pos(2);
        for (int32_t b = 0; b < 2; ++b) {
          const int64_t pending = int64_t(hidden[size_t(b)].size()) / D;
          for (int64_t j = 0; j < pending; ++j) {
            const int64_t p = decoder.cache().mtp_length[size_t(b)] + j;
            mseq.push_back(b), next.push_back(text[size_t(b)][size_t(p + 1)]);
            last_pos[size_t(b)] = p;
          }
          h.insert(h.end(), hidden[size_t(b)].begin(), hidden[size_t(b)].end());
          hidden[size_t(b)].clear();
        }
        const float* logits = decoder.mtp_step(mseq.data(), h.data(), next.data(), int64_t(mseq.size()), nullptr);
        for (int32_t b = 0; b < 2; ++b) {  // one output row per sequence, in order
          const float* ref = want[size_t(b)].data() + last_pos[size_t(b)] * V;
          for (int64_t v = 0; v < V; ++v) {
            worst = std::max(worst, double(std::fabs(logits[b * V + v] - ref[v])));
            largest = std::max(largest, double(std::fabs(ref[v])));
          }
          ++compared;
          same_argmax += std::max_element(logits + b * V, logits + (b + 1) * V) - (logits + b * V) ==
                         std::max_element(ref, ref + V) - ref;
        }
      }
      CHECK(compared == 6);
      CHECK(largest > 0.1);
      if (!int8) {
        CHECK(worst < 1e-4 * std::max(1.0, largest));
        CHECK(same_argmax == 6);
      } else {
        CHECK(worst > 1e-4 * largest);  // the int8 path ran
        CHECK(worst < 0.05 * largest);
        CHECK(same_argmax >= 5);
      }
    }
  omp_set_num_threads(saved_threads);
}
