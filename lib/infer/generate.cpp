#include "infer/generate.hpp"

#include <chrono>
#include <cmath>

#include "core/error.hpp"
#include "ops/embedding.hpp"

namespace moe {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::vector<GenerateOutput> generate(ComputeContext& ctx, const Model& model, const GenerateRequest& request,
                                     const std::function<void(size_t, int32_t)>& on_token, GenerateTimings& timings,
                                     ExpertTally* tally) {
  const ModelConfig& c = model.config;
  const int64_t S = int64_t(request.prompts.size()), max_len = c.max_position_embeddings;
  std::vector<GenerateOutput> out(static_cast<size_t>(S));
  std::vector<std::vector<int32_t>> history(static_cast<size_t>(S));
  std::vector<Sampler> samplers;
  samplers.reserve(size_t(S));
  for (int64_t i = 0; i < S; ++i) {
    GenerateOutput& o = out[size_t(i)];
    o.prompt = request.prompts[size_t(i)].empty() ? std::string("\n") : request.prompts[size_t(i)];
    if (int64_t(o.prompt.size()) > max_len - 1) {
      // Keep the end of the prompt, leaving room for at least one new token.
      o.prompt = o.prompt.substr(o.prompt.size() - size_t(max_len - 1));
      o.prompt_truncated = true;
    }
    for (unsigned char ch : o.prompt) history[size_t(i)].push_back(ch);
    o.prompt_tokens = int64_t(o.prompt.size());
    // Each sequence gets its own stream of random numbers, fixed by (seed, index).
    samplers.emplace_back(request.sampler, c.vocab_size, request.seed + 0x9E3779B97F4A7C15ull * uint64_t(i));
  }

  Decoder decoder(model, std::max<int64_t>(S, 1), max_len);
  std::vector<int32_t> last(static_cast<size_t>(S));
  std::vector<char> active(static_cast<size_t>(S), 0);
  auto accept = [&](int64_t i, int32_t token) {
    GenerateOutput& o = out[size_t(i)];
    history[size_t(i)].push_back(token);
    o.text.push_back(char(token));
    ++o.generated;
    last[size_t(i)] = token;
    on_token(size_t(i), token);
  };
  auto still_active = [&](int64_t i) {
    GenerateOutput& o = out[size_t(i)];
    if (o.generated >= request.n_predict) return false;
    if (o.prompt_tokens + o.generated >= max_len) {
      o.hit_context_limit = true;
      return false;
    }
    return true;
  };

  for (int64_t i = 0; i < S; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    const float* logits = decoder.prefill(ctx, i, history[size_t(i)], tally);
    timings.prompt_seconds += seconds_since(t0);
    timings.prompt_tokens += out[size_t(i)].prompt_tokens;
    t0 = std::chrono::steady_clock::now();
    if (still_active(i)) {
      accept(i, samplers[size_t(i)].sample(logits, history[size_t(i)]));
      active[size_t(i)] = still_active(i);
    }
    timings.generate_seconds += seconds_since(t0);
  }

  std::vector<int32_t> seq, tokens;
  seq.reserve(size_t(S)), tokens.reserve(size_t(S));
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    seq.clear(), tokens.clear();
    for (int64_t i = 0; i < S; ++i)
      if (active[size_t(i)]) seq.push_back(int32_t(i)), tokens.push_back(last[size_t(i)]);
    if (seq.empty()) break;
    const float* logits = decoder.step(ctx, seq.data(), tokens.data(), int64_t(seq.size()), tally);
    for (size_t j = 0; j < seq.size(); ++j) {
      const int64_t i = seq[j];
      accept(i, samplers[size_t(i)].sample(logits + int64_t(j) * c.vocab_size, history[size_t(i)]));
      active[size_t(i)] = still_active(i);
    }
  }
  timings.generate_seconds += seconds_since(t0);
  for (const auto& o : out) timings.generated_tokens += o.generated;
  return out;
}

EvalResult evaluate_bytes(ComputeContext& ctx, const Model& model, const std::vector<uint8_t>& bytes, int64_t T,
                          ExpertTally* tally, const RoutingSink& sink) {
  const int64_t n = int64_t(bytes.size()) - 1;  // predicted positions
  check(n >= 1, "needs at least 2 bytes to score one prediction");
  const int64_t V = model.config.vocab_size;
  const int64_t full = n / T, rest = n % T;
  constexpr int64_t kBatch = 8;
  double loss_sum = 0.0, mtp_sum = 0.0;
  int64_t mtp_tokens = 0;
  auto run = [&](Workspace& ws, int64_t first_window, int64_t rows, int64_t len) {
    std::vector<int32_t> x(size_t(ws.B * len)), y(size_t(ws.B * len));
    for (int64_t b = 0; b < ws.B; ++b) {
      const int64_t s = (first_window + std::min(b, rows - 1)) * T;  // unused rows repeat the last window
      for (int64_t t = 0; t < len; ++t)
        x[size_t(b * len + t)] = bytes[size_t(s + t)], y[size_t(b * len + t)] = bytes[size_t(s + t + 1)];
    }
    model_forward(ctx, model, ws, x.data(), y.data());  // with targets: the MTP module runs too
    loss_sum += cross_entropy_forward_backward(ws.logits, y.data(), nullptr, rows * len, V, 0.0f);
    if (ws.mtp_ran) {
      mtp_sum += cross_entropy_forward_backward(ws.mtp_logits, ws.mtp_targets, nullptr, rows * len, V, 0.0f);
      mtp_tokens += rows * (len - 1);
    }
    if (tally) tally->add(model.config, ws, rows * len);
    if (sink) sink(ws, first_window * T, rows * len);  // consecutive windows: one contiguous run
  };
  if (full > 0) {
    Workspace ws(model.config, std::min(kBatch, full), T, false, /*with_mtp=*/true);
    for (int64_t w = 0; w < full; w += ws.B) run(ws, w, std::min(ws.B, full - w), T);
  }
  if (rest > 0) {
    Workspace ws(model.config, 1, rest, false, /*with_mtp=*/true);
    run(ws, full, 1, rest);
  }
  EvalResult r;
  r.tokens = n;
  r.loss = loss_sum / double(n);
  r.perplexity = std::exp(r.loss);
  r.mtp_tokens = mtp_tokens;
  r.mtp_loss = mtp_tokens > 0 ? mtp_sum / double(mtp_tokens) : 0.0;
  return r;
}

}  // namespace moe
