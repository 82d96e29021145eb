// `moe infer` (generate text from a checkpoint) and `moe eval` (exact perplexity of a file).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/tokenizer.hpp"
#include "infer/generate.hpp"
#include "model/checkpoint.hpp"
#include "moe/balance.hpp"
#include "report/expert_table.hpp"
#include "train/data.hpp"
#include "train/prepare.hpp"
#include "train/token_file.hpp"

namespace moe::app {

namespace {

struct InferFlags {
  std::string model, prompt, prompt_file, prompts_file;
  int64_t n_predict = 256;
  SamplerConfig sampler;
  std::string seed;  // empty: a random seed, printed
  int64_t threads = 0;
  bool expert_stats = false, json = false;
  std::string draft;  // "mtp": self-speculative decoding
  int64_t draft_max = 1;
  std::string draft_precision = "auto";
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open file");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The counted layers: the main model's MoE layers, and the MTP module's layer when it ran.
std::vector<std::vector<int64_t>> counted(const ModelConfig& c, const ExpertTally& tally, bool with_mtp) {
  return {tally.counts.begin(), tally.counts.begin() + (with_mtp ? c.num_routed_layers() : c.num_moe_layers())};
}

nlohmann::json stats_json(const ModelConfig& c, const ExpertTally& tally, bool with_mtp) {
  nlohmann::json layers = nlohmann::json::array();
  const auto rows = counted(c, tally, with_mtp);
  for (size_t m = 0; m < rows.size(); ++m)
    layers.push_back({{"layer", c.first_k_dense_replace + int64_t(m)},
                      {"counts", rows[m]},
                      {"maxvio", max_violation(rows[m].data(), c.n_routed_experts)}});
  return layers;
}

nlohmann::json speculative_json(const ModelConfig& c, const GenerateRequest& request, const GenerateTimings& t) {
  const double moe_steps = double(t.main_steps * c.num_moe_layers());
  return {{"draft", "mtp"},
          {"draft_max", request.draft_max},
          {"draft_precision", t.draft_int8 ? "int8" : "f32"},
          {"draft_precision_chosen", request.draft_precision == DraftPrecision::automatic ? "auto" : "flag"},
          {"drafted", t.drafted},
          {"accepted", t.accepted},
          {"acceptance_rate", t.acceptance()},
          {"main_steps", t.main_steps},
          // Per sequence (at most draft_max + 1): after the first token (sampled from the prompt's
          // logits), every token comes from a step; several prompts share each step.
          {"tokens_per_main_step", t.tokens_per_step()},
          // Where the time went: the main model's verification steps and the module's draft steps
          // (the rest of generate_ms is sampling and bookkeeping), and the routed experts a
          // verification read per MoE layer (the union of its rows' choices; a plain step reads K).
          {"verify_ms", t.step_seconds * 1e3},
          {"draft_ms", t.draft_seconds * 1e3},
          {"experts_per_moe_layer", moe_steps > 0 ? double(t.experts_read) / moe_steps : 0.0}};
}

}  // namespace

// Prints what `moe infer` produced: the text (unless it was streamed), notes on truncation and the
// context limit, speculative-decoding statistics, the expert table and timings, or one JSON document.
void report_generation(const InferFlags* f, const ModelConfig& c, const GenerateRequest& request,
                       const std::vector<GenerateOutput>& outputs, const GenerateTimings& timings,
                       const ExpertTally& tally, double load_seconds, bool stream) {
  if (stream) std::fputc('\n', stdout), std::fflush(stdout);
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].prompt_truncated)
      std::fprintf(stderr,
                   "moe: note: prompt %zu has %lld tokens; its first %lld were cut and its last %lld kept, so that -n "
                   "%lld fits the context of %lld (a prompt keeps at least half of it)\n",
                   i + 1, (long long)(outputs[i].prompt_tokens + outputs[i].prompt_cut),
                   (long long)outputs[i].prompt_cut, (long long)outputs[i].prompt_tokens, (long long)f->n_predict,
                   (long long)c.max_position_embeddings);
    if (outputs[i].hit_context_limit)
      std::fprintf(
          stderr, "moe: note: generation %zu stopped at the context limit of %lld tokens (after %lld of %lld)\n", i + 1,
          (long long)c.max_position_embeddings, (long long)outputs[i].generated, (long long)f->n_predict);
  }
  const double prompt_tps = timings.prompt_seconds > 0 ? double(timings.prompt_tokens) / timings.prompt_seconds : 0;
  const double gen_tps = timings.generate_seconds > 0 ? double(timings.generated_tokens) / timings.generate_seconds : 0;
  if (f->json) {
    nlohmann::json results = nlohmann::json::array();
    for (const auto& o : outputs)
      results.push_back({{"prompt", o.prompt},
                         {"text", o.text},  // invalid UTF-8 shows as U+FFFD; text_bytes is exact
                         {"text_bytes", std::vector<uint8_t>(o.text.begin(), o.text.end())},
                         {"prompt_tokens", o.prompt_tokens},
                         {"prompt_cut", o.prompt_cut},  // bytes dropped from the prompt's start
                         {"generated_tokens", o.generated},
                         {"context_limit", o.hit_context_limit}});
    nlohmann::json doc = {{"model", f->model},
                          // Greedy decoding draws no random numbers: no seed to report.
                          {"seed", request.sampler.temp > 0 ? nlohmann::json(request.seed) : nlohmann::json()},
                          {"timings",
                           {{"load_ms", load_seconds * 1e3},
                            {"setup_ms", timings.setup_seconds * 1e3},
                            {"prompt_ms", timings.prompt_seconds * 1e3},
                            {"prompt_tokens", timings.prompt_tokens},
                            {"prompt_tokens_per_s", prompt_tps},
                            {"generate_ms", timings.generate_seconds * 1e3},
                            {"generated_tokens", timings.generated_tokens},
                            {"generate_tokens_per_s", gen_tps}}},
                          {"expert_stats", stats_json(c, tally, request.draft_max > 0)}};
    if (request.draft_max > 0) doc["speculative"] = speculative_json(c, request, timings);
    if (outputs.size() == 1) {
      for (const auto& [k, v] : results[0].items()) doc[k] = v;
    } else {
      doc["results"] = results;
    }
    std::cout << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return;
  }
  if (!stream) {
    for (size_t i = 0; i < outputs.size(); ++i)
      std::printf("=== %zu ===\n%s%s\n", i + 1, outputs[i].prompt.c_str(), outputs[i].text.c_str());
  }
  std::fflush(stdout);
  if (request.draft_max > 0) {
    const nlohmann::json s = speculative_json(c, request, timings);
    std::fprintf(stderr,
                 "moe: --draft mtp: %lld drafted, %lld accepted (%.1f%%), %.2f tokens per main-model step (%lld "
                 "steps), draft-max %lld, %s draft%s; %.1f ms verifying (%.1f routed experts read per MoE layer), "
                 "%.1f ms drafting\n",
                 (long long)timings.drafted, (long long)timings.accepted, 100 * s["acceptance_rate"].get<double>(),
                 s["tokens_per_main_step"].get<double>(), (long long)timings.main_steps, (long long)request.draft_max,
                 timings.draft_int8 ? "int8" : "f32",
                 request.draft_precision == DraftPrecision::automatic ? " (auto)" : "", s["verify_ms"].get<double>(),
                 s["experts_per_moe_layer"].get<double>(), s["draft_ms"].get<double>());
  }
  if (f->expert_stats)
    std::fputs(format_expert_table(c, counted(c, tally, request.draft_max > 0), "inference expert load").c_str(),
               stderr);
  std::fputc('\n', stderr);
  if (request.sampler.temp > 0) std::fprintf(stderr, "seed %llu\n", (unsigned long long)request.seed);
  std::fprintf(stderr, "load time   = %10.2f ms\n", load_seconds * 1e3);
  std::fprintf(stderr, "set-up      = %10.2f ms (KV cache, buffers, first-use kernel generation)\n",
               timings.setup_seconds * 1e3);
  std::fprintf(stderr, "prompt eval = %10.2f ms / %5lld tokens (%8.1f tokens per second)\n",
               timings.prompt_seconds * 1e3, (long long)timings.prompt_tokens, prompt_tps);
  std::fprintf(stderr, "generation  = %10.2f ms / %5lld tokens (%8.1f tokens per second)\n",
               timings.generate_seconds * 1e3, (long long)timings.generated_tokens, gen_tps);
}

Run add_infer(CLI::App& app) {
  auto f = std::make_shared<InferFlags>();
  auto* cmd = app.add_subcommand("infer", "Generate text from a trained checkpoint (KV-cached decoding)");
  cmd->add_option("-m,--model", f->model, "Checkpoint directory (a run directory of `moe train`)")->required();
  auto* p = cmd->add_option("-p,--prompt", f->prompt, "Prompt text");
  auto* pf = cmd->add_option("-f,--file", f->prompt_file, "Read the prompt from a file");
  auto* pp = cmd->add_option("--prompts-file", f->prompts_file, "One prompt per line, generated together as a batch");
  p->excludes(pf)->excludes(pp);
  pf->excludes(pp);
  cmd->add_option("-n,--n-predict", f->n_predict, "Tokens (bytes) to generate")
      ->capture_default_str()
      ->check(NonNegative);
  cmd->add_option("--temp", f->sampler.temp, "Temperature; 0 is greedy")->capture_default_str()->check(NonNegative);
  cmd->add_option("--top-k", f->sampler.top_k, "Keep the k most likely tokens (0: all)")
      ->capture_default_str()
      ->check(NonNegative);
  cmd->add_option("--top-p", f->sampler.top_p, "Nucleus: smallest set with this probability mass, in (0, 1]")
      ->capture_default_str()
      ->check(InRange(0.0, 1.0, true));
  cmd->add_option("--min-p", f->sampler.min_p, "Drop tokens below min-p x the best probability, in [0, 1]")
      ->capture_default_str()
      ->check(InRange(0.0, 1.0));
  cmd->add_option("--repeat-penalty", f->sampler.repeat_penalty,
                  "Penalty for the tokens among the last --repeat-last-n (1: off)")
      ->capture_default_str()
      ->check(Positive);
  cmd->add_option("--repeat-last-n", f->sampler.repeat_last_n, "How many recent tokens the penalty covers")
      ->capture_default_str()
      ->check(NonNegative);
  cmd->add_option("-s,--seed", f->seed, "Sampling seed, 0 to 18446744073709551615 (default: random, printed)")
      ->check(SeedValue());
  cmd->add_option("-t,--threads", f->threads, "Threads (0: all cores)")->check(ThreadCount());
  CLI::Option* draft =
      cmd->add_option("--draft", f->draft,
                      "Self-speculative decoding: mtp drafts tokens with the model's multi-token-prediction module "
                      "and the main model verifies them (same output as without)")
          ->check(CLI::IsMember({"mtp"}));
  cmd->add_option("--draft-max", f->draft_max,
                  "With --draft mtp: tokens drafted per step (the module applied again "
                  "to its own output)")
      ->capture_default_str()
      ->check(InRange(1, 16))
      ->needs(draft);
  cmd->add_option("--draft-precision", f->draft_precision,
                  "With --draft mtp: the module's FFN and eh_proj in int8 (a quarter of the bytes) or f32; "
                  "auto: int8 when those weights outgrow the threads' L2 caches. The main model verifies in "
                  "f32 either way (greedy: the same text)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "int8", "f32"}))
      ->needs(draft);
  cmd->add_flag("--expert-stats", f->expert_stats, "Print tokens per expert and MaxVio per MoE layer");
  cmd->add_flag("--json", f->json, "Print one JSON document instead of streaming text");

  return [f, p, pf, pp]() {
    use_threads(f->threads);
    if (p->count() == 0 && pf->count() == 0 && pp->count() == 0)
      fail("infer: give a prompt with -p TEXT, -f FILE or --prompts-file FILE");
    const auto t_load = std::chrono::steady_clock::now();
    const auto model = load_checkpoint(f->model);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    GenerateRequest request;
    request.tokenizer = checkpoint_tokenizer(f->model, model->config);
    request.n_predict = f->n_predict;
    request.sampler = f->sampler;
    request.draft_max = f->draft.empty() ? 0 : f->draft_max;
    check_draft_supported(model->config, request.draft_max);  // before the prompt is echoed
    request.draft_precision = f->draft_precision == "int8"  ? DraftPrecision::int8
                              : f->draft_precision == "f32" ? DraftPrecision::f32
                                                            : DraftPrecision::automatic;
    request.seed = !f->seed.empty() ? std::stoull(f->seed)  // checked by SeedValue
                                    : uint64_t(std::random_device{}()) ^ (uint64_t(std::random_device{}()) << 32);
    if (pp->count() > 0) {
      std::istringstream lines(read_text(f->prompts_file));
      std::string line;
      int64_t blank = 0;
      while (std::getline(lines, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
          ++blank;  // an empty prompt would start from a newline: surely not what a blank line meant
          continue;
        }
        request.prompts.push_back(line);
      }
      if (request.prompts.empty()) fail(f->prompts_file + ": no prompts (the file is empty or blank)");
      if (blank > 0)
        std::fprintf(stderr, "moe: note: %s: skipped %lld blank line%s\n", f->prompts_file.c_str(), (long long)blank,
                     blank == 1 ? "" : "s");
    } else {
      request.prompts.push_back(pf->count() > 0 ? read_text(f->prompt_file) : f->prompt);
    }
    // Positions past the training window were never trained: say so once, before the text degrades.
    if (const int64_t trained = load_checkpoint_train_seq(f->model); trained > 0) {
      size_t longest = 0;
      for (const std::string& p : request.prompts) longest = std::max(longest, std::max<size_t>(p.size(), 1));
      const int64_t reach =
          std::min<int64_t>(int64_t(longest) + request.n_predict, model->config.max_position_embeddings);
      if (reach > trained)
        std::fprintf(stderr,
                     "moe: warning: generation reaches position %lld, past the %lld positions the model was trained "
                     "on (moe_train_seq); text beyond them may fall apart\n",
                     (long long)reach, (long long)trained);
    }
    const bool stream = !f->json && request.prompts.size() == 1;
    if (stream) std::fwrite(request.prompts[0].data(), 1, request.prompts[0].size(), stdout), std::fflush(stdout);

    ComputeContext ctx;
    ExpertTally tally(model->config);
    GenerateTimings timings;
    const auto outputs = generate(
        ctx, *model, request,
        [&](size_t, int32_t token) {
          if (!stream) return;
          const std::string& text = request.tokenizer.bytes_of(token);
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
        },
        timings, &tally);

    report_generation(f.get(), model->config, request, outputs, timings, tally, load_seconds, stream);
    return 0;
  };
}

namespace {
struct EvalFlags {
  std::string model, data;
  int64_t ctx = 0, threads = 0;
  bool json = false;
};
}  // namespace

Run add_eval(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  auto* cmd = app.add_subcommand("eval", "Exact cross-entropy and perplexity of a checkpoint on a text file");
  cmd->add_option("-m,--model", f->model, "Checkpoint directory")->required();
  cmd->add_option("--data", f->data,
                  "Text file to score (encoded with the model's tokenizer), or a prepared val.bin or directory")
      ->required();
  cmd->add_option("--ctx", f->ctx,
                  "Window length T (default: the window the model was trained on, moe_train_seq in its config.json; "
                  "else max_position_embeddings)")
      ->check(Positive);
  cmd->add_option("-t,--threads", f->threads, "Threads (0: all cores)")->check(ThreadCount());
  cmd->add_flag("--json", f->json, "Print {loss, perplexity, tokens, layers} as JSON");
  return [f]() {
    use_threads(f->threads);
    const auto model = load_checkpoint(f->model);
    const ModelConfig& c = model->config;
    const int64_t trained = load_checkpoint_train_seq(f->model);
    // Positions past the training window were never trained: scoring them by default measured the
    // model on a context it never saw (the demo's val loss 0.43 in training read 1.04 here).
    const int64_t T = f->ctx > 0 ? f->ctx : trained > 0 ? trained : c.max_position_embeddings;
    if (T > c.max_position_embeddings)
      fail("--ctx " + std::to_string(T) + " exceeds the model's max_position_embeddings (" +
           std::to_string(c.max_position_embeddings) + ")");
    // The text in the model's tokens: a raw file encoded with the checkpoint's tokenizer, or a
    // prepared val.bin (or a prepared directory's) written by that same tokenizer.
    const Tokenizer tokenizer = checkpoint_tokenizer(f->model, c);
    std::vector<int32_t> tokens;
    const bool bin = f->data.size() > 4 && f->data.substr(f->data.size() - 4) == ".bin";
    if (bin || is_prepared_dir(f->data)) {
      const auto file = TokenFile::open(bin ? f->data : f->data + "/val.bin");
      if (file->info().tokenizer_hash != tokenizer.hash() || int64_t(file->info().vocab) != tokenizer.vocab_size())
        fail(file->path() + ": written by another tokenizer than " + f->model + "'s (" + tokenizer.describe() + ")");
      tokens.resize(size_t(file->size()));
      file->copy(0, file->size(), tokens.data());
    } else {
      const TextData data = load_text_file(f->data);
      tokens = tokenizer.encode(std::string_view(reinterpret_cast<const char*>(data.bytes.data()), data.bytes.size()));
    }
    if (tokens.size() < 2) fail(f->data + ": needs at least 2 tokens to score one prediction");
    ComputeContext ctx;
    ExpertTally tally(c);
    const auto t0 = std::chrono::steady_clock::now();
    // On a terminal, one progress line redrawn in place (at most 5 times a second), erased at the
    // end; never in a pipe or a file.
    const bool tty = ::isatty(STDERR_FILENO) != 0;
    const auto t_start = std::chrono::steady_clock::now();
    double last_draw = -1;
    auto progress = [&](int64_t scored, int64_t total) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      if (elapsed - last_draw < 0.2 && scored < total) return;
      last_draw = elapsed;
      const double rate = elapsed > 0 ? double(scored) / elapsed : 0;
      std::fprintf(stderr, "\r\033[Keval %lld / %lld tokens (%.0f%%), %.0f tok/s, ETA %.0f s", (long long)scored,
                   (long long)total, 100.0 * double(scored) / double(total), rate,
                   rate > 0 ? double(total - scored) / rate : 0.0);
      std::fflush(stderr);
    };
    const EvalResult r =
        evaluate_tokens(ctx, *model, tokens, T, tokenizer, &tally, {}, tty ? EvalProgress(progress) : nullptr);
    if (tty) std::fputs("\r\033[K", stderr), std::fflush(stderr);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (f->json) {
      nlohmann::json out{{"loss", r.loss},
                         {"perplexity", r.perplexity},
                         {"tokens", r.tokens},
                         {"bits_per_byte", r.bits_per_byte},
                         {"text_bytes", r.text_bytes},
                         {"tokenizer", tokenizer.describe()},
                         {"ctx", T},
                         {"seconds", seconds},
                         {"layers", stats_json(c, tally, c.mtp())}};
      // A model with the MTP module always reports it; no window of 2 or more tokens: 0 and null.
      if (c.mtp())
        out["mtp_tokens"] = r.mtp_tokens, out["mtp_loss"] = r.mtp_tokens > 0 ? nlohmann::json(r.mtp_loss) : nullptr;
      std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    std::printf("%s on %s (ctx %lld)\n", f->model.c_str(), f->data.c_str(), (long long)T);
    if (tokenizer.is_bytes())
      std::printf(
          "  cross-entropy %.4f nats/byte (%.4f bits/byte), perplexity %.3f over %lld predicted bytes, %.1f s\n",
          r.loss, r.bits_per_byte, r.perplexity, (long long)r.tokens, seconds);
    else
      std::printf(
          "  cross-entropy %.4f nats/token, %.4f bits/byte (%.2f bytes/token), perplexity %.3f over %lld "
          "predicted tokens, %.1f s\n",
          r.loss, r.bits_per_byte, r.text_bytes / double(r.tokens), r.perplexity, (long long)r.tokens, seconds);
    if (r.mtp_tokens > 0)
      std::printf("  multi-token prediction (t+2): cross-entropy %.4f nats/%s over %lld positions\n", r.mtp_loss,
                  tokenizer.is_bytes() ? "byte" : "token", (long long)r.mtp_tokens);
    else if (c.mtp())
      std::printf("  multi-token prediction (t+2): no positions (it needs windows of 3 tokens or more)\n");
    std::fputs(format_expert_table(c, counted(c, tally, c.mtp()), "expert load over the file").c_str(), stdout);
    return 0;
  };
}

}  // namespace moe::app
