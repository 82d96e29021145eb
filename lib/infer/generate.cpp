#include "infer/generate.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <omp.h>

#include "core/error.hpp"
#include "ops/embedding.hpp"

namespace moe {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A main-model step (plain or verification), its time and its expert reads into `timings`.
const float* timed_step(ComputeContext& ctx, Decoder& decoder, const std::vector<int32_t>& seq,
                        const std::vector<int32_t>& tokens, GenerateTimings& timings, ExpertTally* tally) {
  const auto t0 = std::chrono::steady_clock::now();
  const float* logits = decoder.step(ctx, seq.data(), tokens.data(), int64_t(seq.size()), tally);
  timings.step_seconds += seconds_since(t0);
  timings.experts_read += decoder.experts_read();
  ++timings.main_steps;
  return logits;
}

// One sequence of self-speculative decoding. `pending` holds the MTP module's inputs not yet in its
// cache: (the main model's hidden state h_p, the token t_{p+1}) for consecutive positions p.
struct SpecSequence {
  std::vector<float> pending_hidden;   // (rows, D)
  std::vector<int32_t> pending_next;   // (rows)
  std::vector<int32_t> drafts;         // this round's drafted tokens
  std::vector<std::vector<double>> q;  // their draft distributions (stochastic sampling)
  int64_t row = 0;                     // first row of the sequence in this round's step
};

// The verification half of a round: every sequence's last token and drafts in one step of the
// main model, then each keeps the accepted prefix and one token of the main model, and the caches
// drop the rest (the MTP cache back to mtp_kept).
void verify_drafts(ComputeContext& ctx, const Model& model, Decoder& decoder, std::vector<SpecSequence>& spec,
                   std::vector<Sampler>& samplers, std::vector<std::vector<int32_t>>& history,
                   const std::vector<int32_t>& active_ids, const std::vector<int64_t>& mtp_kept,
                   std::vector<int32_t>& last, const std::function<void(int64_t, int32_t)>& accept,
                   GenerateTimings& timings, ExpertTally* tally) {
  const int64_t D = model.config.hidden_size, V = model.config.vocab_size;
  std::vector<int32_t> seq, tokens;
  std::vector<double> p, residual;
  for (size_t a = 0; a < active_ids.size(); ++a) {
    const int64_t i = active_ids[a];
    SpecSequence& s = spec[size_t(i)];
    s.row = int64_t(seq.size());
    seq.push_back(int32_t(i)), tokens.push_back(last[size_t(i)]);
    for (int32_t d : s.drafts) seq.push_back(int32_t(i)), tokens.push_back(d);
  }
  std::vector<int64_t> length_before(active_ids.size());
  for (size_t a = 0; a < active_ids.size(); ++a) length_before[a] = decoder.cache().length[size_t(active_ids[a])];
  const float* logits = timed_step(ctx, decoder, seq, tokens, timings, tally);
  for (size_t a = 0; a < active_ids.size(); ++a) {
    const int64_t i = active_ids[a];
    SpecSequence& s = spec[size_t(i)];
    Sampler& sampler = samplers[size_t(i)];
    int64_t k = 0;
    int32_t next = -1;
    for (; k <= int64_t(s.drafts.size()); ++k) {
      sampler.distribution(logits + (s.row + k) * V, history[size_t(i)], p);
      if (k == int64_t(s.drafts.size())) {  // every draft accepted: one more token from the main model
        next = sampler.greedy() ? int32_t(std::max_element(p.begin(), p.end()) - p.begin()) : sampler.draw(p);
        break;
      }
      const int32_t d = s.drafts[size_t(k)];
      const double q = s.q[size_t(k)][size_t(d)];
      if (sampler.greedy() ? p[size_t(d)] == 1.0 : sampler.uniform() * q < p[size_t(d)]) {
        accept(i, d);  // also extends history[i]
        continue;
      }
      if (sampler.greedy()) {
        next = int32_t(std::max_element(p.begin(), p.end()) - p.begin());
      } else {
        residual.resize(p.size());
        for (size_t v = 0; v < p.size(); ++v) residual[v] = std::max(0.0, p[v] - s.q[size_t(k)][v]);
        next = sampler.draw(residual);
      }
      break;
    }
    timings.drafted += int64_t(s.drafts.size());
    timings.accepted += k;
    ++timings.sequence_steps, timings.step_tokens += k + 1;
    // The pending MTP rows: (h_p, t_{p+1}) for the verified positions p, up to the new token.
    s.pending_hidden.assign(decoder.hidden() + s.row * D, decoder.hidden() + (s.row + k + 1) * D);
    s.pending_next.assign(s.drafts.begin(), s.drafts.begin() + k);
    s.pending_next.push_back(next);
    decoder.truncate(i, length_before[a] + 1 + k, mtp_kept[a]);
    accept(i, next);
  }
}

// One round for every active sequence: the MTP module drafts up to N tokens each (the catch-up
// rows first, then its own output fed back, as vLLM does), the main model verifies all of them in
// one step, each sequence keeps the accepted prefix plus one token of the main model (greedy:
// argmax; else the speculative sampling rule: accept d with probability min(1, p(d)/q(d)), resample
// a rejection from max(0, p - q)), and the caches forget the rejected positions.
void speculative_round(ComputeContext& ctx, const Model& model, Decoder& decoder, int64_t N,
                       std::vector<SpecSequence>& spec, std::vector<Sampler>& samplers,
                       std::vector<std::vector<int32_t>>& history, const std::vector<int32_t>& active_ids,
                       const std::vector<int64_t>& room, std::vector<int32_t>& last,
                       const std::function<void(int64_t, int32_t)>& accept, GenerateTimings& timings,
                       ExpertTally* tally) {
  const ModelConfig& c = model.config;
  const int64_t D = c.hidden_size, V = c.vocab_size;
  std::vector<int32_t> seq, tokens;
  std::vector<float> hidden;
  std::vector<int64_t> mtp_kept(active_ids.size()), n_draft(active_ids.size());
  std::vector<int64_t> chain_row(active_ids.size());  // the row whose MTP output feeds the next draft
  for (size_t a = 0; a < active_ids.size(); ++a) {
    const int64_t i = active_ids[a];
    n_draft[a] = std::min<int64_t>(N, room[a] - 1);
    // The catch-up rows enter the MTP cache for good (they read the main model's states); the
    // chain of drafts after them is dropped after verification. No draft: nothing enters it.
    mtp_kept[a] =
        decoder.cache().mtp_length[size_t(i)] + (n_draft[a] > 0 ? int64_t(spec[size_t(i)].pending_next.size()) : 0);
    spec[size_t(i)].drafts.clear(), spec[size_t(i)].q.clear();
  }
  for (int64_t j = 0; j < N; ++j) {
    seq.clear(), tokens.clear(), hidden.clear();
    std::vector<size_t> owners;
    for (size_t a = 0; a < active_ids.size(); ++a) {
      if (n_draft[a] <= j) continue;
      const int64_t i = active_ids[a];
      SpecSequence& s = spec[size_t(i)];
      if (j == 0) {  // the catch-up rows: positions verified last round, with the main model's states
        for (size_t r = 0; r < s.pending_next.size(); ++r) seq.push_back(int32_t(i)), owners.push_back(a);
        tokens.insert(tokens.end(), s.pending_next.begin(), s.pending_next.end());
        hidden.insert(hidden.end(), s.pending_hidden.begin(), s.pending_hidden.end());
      } else {
        seq.push_back(int32_t(i)), owners.push_back(a);
        tokens.push_back(s.drafts.back());
        const float* h = decoder.mtp_hidden() + chain_row[a] * D;
        hidden.insert(hidden.end(), h, h + D);
      }
    }
    if (seq.empty()) break;
    const auto t_draft = std::chrono::steady_clock::now();
    const float* logits = decoder.mtp_step(seq.data(), hidden.data(), tokens.data(), int64_t(seq.size()), tally);
    timings.draft_seconds += seconds_since(t_draft);
    // Each sequence drafts from its last row, the one output row the step returns for it (rows of
    // a sequence are consecutive: outputs come in sequence order); the MTP module's state moves to
    // that row's output.
    std::vector<int64_t> last_row(active_ids.size(), -1);
    for (size_t r = 0, out = 0; r < owners.size(); ++r)
      if (r + 1 == owners.size() || owners[r + 1] != owners[r]) last_row[owners[r]] = int64_t(out++);
    for (size_t a = 0; a < active_ids.size(); ++a) {
      if (last_row[a] < 0) continue;
      const int64_t i = active_ids[a];
      SpecSequence& s = spec[size_t(i)];
      std::vector<int32_t> seen = history[size_t(i)];
      seen.insert(seen.end(), s.drafts.begin(), s.drafts.end());
      s.q.emplace_back();
      samplers[size_t(i)].distribution(logits + last_row[a] * V, seen, s.q.back());
      s.drafts.push_back(samplers[size_t(i)].greedy()
                             ? int32_t(std::max_element(s.q.back().begin(), s.q.back().end()) - s.q.back().begin())
                             : samplers[size_t(i)].draw(s.q.back()));
      chain_row[a] = last_row[a];
    }
  }
  verify_drafts(ctx, model, decoder, spec, samplers, history, active_ids, mtp_kept, last, accept, timings, tally);
}

}  // namespace

void check_draft_supported(const ModelConfig& c, int64_t draft_max) {
  if (draft_max > 0 && !c.mtp())
    fail("--draft mtp: the model has no multi-token-prediction module (num_nextn_predict_layers is 0)");
}

bool int8_draft_pays(const ModelConfig& c, int64_t threads) {
  if (!c.mtp()) return false;
  const int64_t D = c.hidden_size, L = c.num_hidden_layers;
  const int64_t ffn = c.is_moe_layer(L) ? (c.n_routed_experts * c.moe_intermediate_size + c.shared_intermediate())
                                        : c.intermediate_size;
  const double module_bytes = double(3 * ffn * D + 2 * D * D) * sizeof(float);
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const double per_thread = l2 > 0 ? double(l2) : double(1 << 20);
  return module_bytes > per_thread * double(std::max<int64_t>(threads, 1));
}

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
    // A prompt that leaves no room for n_predict new tokens keeps its end: the last context - n
    // tokens, but never less than half the context (a prompt needs room too) nor more than
    // context - 1 (one token at least is generated), nor less than 1 (a context of 1 holds the
    // prompt's last token and generates nothing: it stops at the context limit).
    const int64_t keep =
        std::clamp(std::max(max_len - request.n_predict, max_len / 2), int64_t(1), std::max<int64_t>(1, max_len - 1));
    std::vector<int32_t> ids = request.tokenizer.encode(o.prompt);
    if (ids.empty()) ids = request.tokenizer.encode("\n");
    for (int32_t id : ids)
      check(id >= 0 && id < c.vocab_size, "prompt token " + std::to_string(id) + " is outside the model's vocabulary");
    if (int64_t(ids.size()) > keep) {
      o.prompt_cut = int64_t(ids.size()) - keep;
      ids.erase(ids.begin(), ids.begin() + o.prompt_cut);
      o.prompt = request.tokenizer.decode(ids);
      o.prompt_truncated = true;
    }
    history[size_t(i)] = ids;
    o.prompt_tokens = int64_t(ids.size());
    // Each sequence gets its own stream of random numbers, fixed by (seed, index).
    samplers.emplace_back(request.sampler, c.vocab_size, request.seed + 0x9E3779B97F4A7C15ull * uint64_t(i));
  }

  const int64_t N = request.draft_max;
  check_draft_supported(c, N);
  const auto t_setup = std::chrono::steady_clock::now();
  timings.draft_int8 =
      N > 0 && (request.draft_precision == DraftPrecision::automatic ? int8_draft_pays(c, omp_get_max_threads())
                                                                     : request.draft_precision == DraftPrecision::int8);
  Decoder decoder(model, std::max<int64_t>(S, 1), max_len, std::max<int64_t>(S, 1) * (N + 1), timings.draft_int8);
  {
    Workspace warm(c, 1, 1, false);
    const int32_t token = '\n';
    model_forward(ctx, model, warm, &token, nullptr);
    // And the decoder's own products (their shapes differ from the forward's): a two-token prompt,
    // one step and one draft step in slot 0, then forgotten.
    if (max_len >= 3) {
      decoder.prefill(ctx, 0, {token, token}, nullptr);
      const int32_t seq = 0;
      decoder.step(ctx, &seq, &token, 1, nullptr);
      if (N > 0) decoder.mtp_step(&seq, decoder.hidden(), &token, 1, nullptr);
      decoder.truncate(0, 0, 0);
    }
  }
  timings.setup_seconds += seconds_since(t_setup);
  std::vector<SpecSequence> spec(static_cast<size_t>(S));
  std::vector<int32_t> last(static_cast<size_t>(S));
  std::vector<char> active(static_cast<size_t>(S), 0);
  auto accept = [&](int64_t i, int32_t token) {
    GenerateOutput& o = out[size_t(i)];
    history[size_t(i)].push_back(token);
    o.text += request.tokenizer.bytes_of(token);
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
      if (N > 0) {  // the MTP module's first input: the prompt's last state and the new token
        spec[size_t(i)].pending_hidden.assign(decoder.hidden(), decoder.hidden() + c.hidden_size);
        spec[size_t(i)].pending_next = {last[size_t(i)]};
      }
    }
    timings.generate_seconds += seconds_since(t0);
  }

  std::vector<int32_t> seq, tokens;
  seq.reserve(size_t(S)), tokens.reserve(size_t(S));
  const auto t0 = std::chrono::steady_clock::now();
  while (N > 0) {
    std::vector<int32_t> ids;
    std::vector<int64_t> room;
    for (int64_t i = 0; i < S; ++i) {
      if (!active[size_t(i)]) continue;
      const GenerateOutput& o = out[size_t(i)];
      ids.push_back(int32_t(i));
      room.push_back(std::min(request.n_predict - o.generated, max_len - (o.prompt_tokens + o.generated)));
    }
    if (ids.empty()) break;
    speculative_round(
        ctx, model, decoder, N, spec, samplers, history, ids, room, last,
        [&](int64_t i, int32_t token) { accept(i, token); }, timings, tally);
    for (int32_t i : ids) active[size_t(i)] = still_active(i);
  }
  for (; N == 0;) {
    seq.clear(), tokens.clear();
    for (int64_t i = 0; i < S; ++i)
      if (active[size_t(i)]) seq.push_back(int32_t(i)), tokens.push_back(last[size_t(i)]);
    if (seq.empty()) break;
    const float* logits = timed_step(ctx, decoder, seq, tokens, timings, tally);
    for (size_t j = 0; j < seq.size(); ++j) {
      const int64_t i = seq[j];
      accept(i, samplers[size_t(i)].sample(logits + int64_t(j) * c.vocab_size, history[size_t(i)]));
      active[size_t(i)] = still_active(i);
      ++timings.sequence_steps, ++timings.step_tokens;
    }
  }
  timings.generate_seconds += seconds_since(t0);
  for (const auto& o : out) timings.generated_tokens += o.generated;
  return out;
}

EvalResult evaluate_bytes(ComputeContext& ctx, const Model& model, const std::vector<uint8_t>& bytes, int64_t T,
                          ExpertTally* tally, const RoutingSink& sink, const EvalProgress& progress) {
  return evaluate_tokens(ctx, model, std::vector<int32_t>(bytes.begin(), bytes.end()), T, Tokenizer(), tally, sink,
                         progress);
}

EvalResult evaluate_tokens(ComputeContext& ctx, const Model& model, const std::vector<int32_t>& tokens, int64_t T,
                           const Tokenizer& tokenizer, ExpertTally* tally, const RoutingSink& sink,
                           const EvalProgress& progress) {
  const int64_t n = int64_t(tokens.size()) - 1;  // predicted positions
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
        x[size_t(b * len + t)] = tokens[size_t(s + t)], y[size_t(b * len + t)] = tokens[size_t(s + t + 1)];
    }
    model_forward(ctx, model, ws, x.data(), y.data());  // with targets: the MTP module runs too
    loss_sum += cross_entropy_forward_backward(ws.logits, y.data(), nullptr, rows * len, V, 0.0f);
    if (ws.mtp_ran) {
      mtp_sum += cross_entropy_forward_backward(ws.mtp_logits, ws.mtp_targets, nullptr, rows * len, V, 0.0f);
      mtp_tokens += rows * (len - 1);
    }
    if (tally) tally->add(model.config, ws, rows * len);
    if (sink) sink(ws, first_window * T, rows * len);  // consecutive windows: one contiguous run
    if (progress) progress(std::min(n, (first_window + rows) * T), n);
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
  for (int64_t i = 1; i <= n; ++i) r.text_bytes += double(tokenizer.bytes_of(tokens[size_t(i)]).size());
  r.bits_per_byte = r.text_bytes > 0 ? loss_sum / std::log(2.0) / r.text_bytes : 0.0;
  r.loss = loss_sum / double(n);
  r.perplexity = std::exp(r.loss);
  r.mtp_tokens = mtp_tokens;
  r.mtp_loss = mtp_tokens > 0 ? mtp_sum / double(mtp_tokens) : 0.0;
  return r;
}

}  // namespace moe
