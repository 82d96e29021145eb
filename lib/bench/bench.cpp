#include "bench/bench.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/arena.hpp"
#include "core/memory.hpp"
#include "infer/decode.hpp"
#include "infer/generate.hpp"
#include "model/checkpoint.hpp"
#include "model/model.hpp"
#include "model/summary.hpp"
#include "ops/attention.hpp"
#include "train/data.hpp"
#include "train/optimizer.hpp"
#include "train/run_dir.hpp"
#include "train/step.hpp"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// FLOPs of one training token: every activated matrix parameter costs 6 (2 forward, 4 backward);
// attention scores cost 2·T·(H·query/key head width) and the weighted sum 2·T·(H·value head width)
// forward per layer, times 3 with backward (GQA: both widths head_dim; MLA: d_n + d_r and d_v),
// times the share of the T×T products the causal kernels compute (attention_computed_fraction:
// what runs, not the full square, which overstated MFU by charging masked blocks never computed).
// A trained MTP module (mtp) adds its layer's activated matrices (K of E routed experts), eh_proj, a
// second pass through lm_head and one more layer of attention.
double training_flops_per_token(const ModelConfig& c, int64_t T, bool mtp) {
  const ParamSummary s = summarize_params(c);
  double matmul_params = 0;
  for (const auto& row : s.rows)
    if (row.role != "embedding" && row.role != "norms" && row.role != "MTP module")
      matmul_params += double(row.activated);
  int64_t layers = c.num_hidden_layers;
  if (mtp && c.mtp()) {
    ++layers;
    for (const TensorSpec& spec : make_layout(c).tensors)
      if (spec.mtp && spec.shape.size() >= 2)
        matmul_params += spec.role == TensorRole::routed_expert
                             ? double(spec.numel) * double(c.num_experts_per_tok) / double(c.n_routed_experts)
                             : double(spec.numel);
    matmul_params += double(c.vocab_size) * double(c.hidden_size);  // the shared head, again
  }
  const double widths =
      c.mla() ? double(c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim)) : 2.0 * double(c.q_dim());
  return 6.0 * matmul_params + 6.0 * double(layers) * widths * double(T) * attention_computed_fraction(T);
}

// Greedy batch-1 decoding after a prompt of `prompt_len` bytes of `text`: tokens per second over `n`
// steps, per repetition (after one warm-up).
std::vector<double> decode_rates(ComputeContext& ctx, const Model& model, const std::vector<uint8_t>& text,
                                 int64_t prompt_len, int64_t n, int64_t reps) {
  const ModelConfig& mc = model.config;
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < prompt_len; ++i) prompt.push_back(text[size_t(i) % text.size()]);
  std::vector<double> rates;
  for (int64_t rep = -1; rep < reps; ++rep) {  // rep -1 is the warm-up
    Decoder decoder(model, 1, mc.max_position_embeddings);
    const float* logits = decoder.prefill(ctx, 0, prompt, nullptr);
    const int32_t seq = 0;
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < n; ++i) {
      int32_t next = 0;
      for (int64_t v = 1; v < mc.vocab_size; ++v)
        if (logits[v] > logits[next]) next = int32_t(v);
      logits = decoder.step(ctx, &seq, &next, 1, nullptr);
    }
    if (rep >= 0) rates.push_back(double(n) / seconds_since(t0));
  }
  return rates;
}

}  // namespace

Stat mean_sd(const std::vector<double>& v) {
  Stat s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(s.sd / double(v.size() - 1));
  }
  return s;
}

double measure_gemm_peak(ComputeContext& ctx) {
  constexpr int64_t n = 2048;
  Buffer<float> a(n * n), b(n * n), c(n * n);
  for (int64_t i = 0; i < n * n; ++i) a[i] = float(i % 7) * 0.1f, b[i] = float(i % 5) * 0.1f;
  gemm(ctx, false, false, n, n, n, a.data(), n, b.data(), n, c.data(), n, false);  // warm-up
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    gemm(ctx, false, false, n, n, n, a.data(), n, b.data(), n, c.data(), n, false);
    best = std::max(best, 2.0 * double(n) * n * n / seconds_since(t0) / 1e9);
  }
  return best;
}

double measure_read_bandwidth(int64_t bytes) {
  const int64_t n = std::max<int64_t>(1024, bytes / int64_t(sizeof(float)));
  Buffer<float> a(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = 1.0f;  // first touch on the threads that read it
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 12; ++rep) {  // the first passes warm the caches, as decoding does
    const auto t0 = Clock::now();
    float sum = 0;
    // 64 independent partial sums per thread (a plain reduction is bound by the add latency, ~5x
    // below the bandwidth); the compiler keeps them in vector registers.
#pragma omp parallel reduction(+ : sum)
    {
      float part[64] = {};
#pragma omp for schedule(static)
      for (int64_t b = 0; b < n / 64; ++b)
        for (int j = 0; j < 64; ++j) part[j] += a[b * 64 + j];
      for (float p : part) sum += p;
    }
    const double seconds = seconds_since(t0);
    sink = sink + sum;
    if (rep >= 2) best = std::max(best, double(n) * sizeof(float) / seconds / 1e9);
  }
  return best;
}

double decode_weight_bytes(const ModelConfig& c) {
  double params = 0;
  for (const auto& row : summarize_params(c).rows) {
    if (row.role == "MTP module") continue;
    params += row.role == "embedding" ? double(c.hidden_size) : double(row.activated);
  }
  return params * sizeof(float);
}

// A config file, or a checkpoint / run directory: its model with its weights (the train settings of
// a run's train_config.json, else the defaults), so decoding, and speculative decoding above all,
// is measured on a trained model.
Config bench_setup(const std::string& path, bool& from_checkpoint) {
  from_checkpoint = is_directory(path);
  if (!from_checkpoint) return load_config_file(path);
  Config cfg;
  cfg.model = load_checkpoint_config(path);
  if (path_exists(path + "/train_config.json")) cfg.train = load_config_file(path + "/train_config.json").train;
  cfg.train.seq = std::min(cfg.train.seq, cfg.model.max_position_embeddings);
  return cfg;
}

// Greedy generation through generate() (prompt of 16 bytes, n tokens): plain, and with --draft mtp
// on the int8 and on the f32 draft, the three interleaved repetition by repetition so that drift on
// a shared machine touches them alike. Tokens per second of the generation phase, and the drafting
// statistics of the last repetition.
SpecDecode speculative_rates(const Model& model, const std::vector<uint8_t>& text, int64_t n, int64_t reps) {
  ComputeContext ctx;
  GenerateRequest request;
  request.prompts = {std::string(text.begin(), text.begin() + 16)};
  request.n_predict = n;
  request.sampler.temp = 0;
  std::vector<double> rates[3];
  GenerateTimings stats[3];
  double step_seconds[2] = {}, draft_seconds = 0, steps[2] = {}, experts[2] = {};  // plain, int8 draft
  for (int64_t rep = -1; rep < reps; ++rep) {                                      // rep -1 is the warm-up
    for (int mode = 0; mode < 3; ++mode) {
      request.draft_max = mode == 0 ? 0 : 1;
      request.draft_precision = mode == 1 ? DraftPrecision::int8 : DraftPrecision::f32;
      GenerateTimings t;
      generate(
          ctx, model, request, [](size_t, int32_t) {}, t, nullptr);
      if (rep >= 0) rates[mode].push_back(double(t.generated_tokens) / t.generate_seconds);
      stats[mode] = t;
      if (rep >= 0 && mode < 2) {
        step_seconds[mode] += t.step_seconds, steps[mode] += double(t.main_steps);
        experts[mode] += double(t.experts_read);
        if (mode == 1) draft_seconds += t.draft_seconds;
      }
    }
  }
  SpecDecode r;
  r.plain_tokens_per_s = mean_sd(rates[0]);
  r.tokens_per_s = mean_sd(rates[1]);
  r.acceptance = stats[1].acceptance();
  r.tokens_per_step = stats[1].tokens_per_step();
  r.f32_tokens_per_s = mean_sd(rates[2]);
  r.f32_acceptance = stats[2].acceptance();
  const double moe_layers = double(model.config.num_moe_layers());
  if (steps[0] > 0 && steps[1] > 0 && step_seconds[0] > 0) {
    const double plain_step = step_seconds[0] / steps[0];
    r.verify_cost = step_seconds[1] / steps[1] / plain_step;
    r.draft_cost = draft_seconds / steps[1] / plain_step;
    if (moe_layers > 0)
      r.experts_plain = experts[0] / steps[0] / moe_layers, r.experts_verify = experts[1] / steps[1] / moe_layers;
  }
  return r;
}

const char* to_string(ForcedRouting routing) {
  switch (routing) {
    case ForcedRouting::balanced:
      return "balanced";
    case ForcedRouting::skewed:
      return "skewed";
    default:
      return "natural";
  }
}

BenchResult bench_config(const std::string& config_path, int64_t threads, ForcedRouting routing,
                         const BenchOptions& options, double gemm_peak_gflops) {
  omp_set_num_threads(int(threads));
  bool from_checkpoint = false;
  Config cfg = bench_setup(config_path, from_checkpoint);
  cfg.train.accum = 1;
  const ModelConfig& mc = cfg.model;
  BenchResult r;
  r.config = config_path;
  r.routing = routing;
  r.threads = threads;
  r.batch = cfg.train.batch, r.seq = cfg.train.seq;
  const ParamSummary summary = summarize_params(mc);
  r.params = summary.total, r.activated = summary.activated;
  r.gemm_peak_gflops = gemm_peak_gflops;
  r.train_flops_per_token = training_flops_per_token(mc, cfg.train.seq, cfg.train.mtp_weight > 0);

  ComputeContext ctx;
  ctx.forced_routing = routing;
  Model model(mc);
  model.init(cfg.train.seed);
  AdamW adam(model.layout);
  const TextData data = options.data.empty() ? synthetic_text(std::max<int64_t>(200000, 4 * cfg.train.seq), 1)
                                             : load_text_file(options.data);
  check_data_fits(data, cfg.train.seq);
  Rng rng(cfg.train.seed);
  TrainStep step(cfg.train, model);

  // Training: warm-up steps create every primitive, then timed repetitions.
  bool finite = true;
  int64_t s = 0;
  for (int i = 0; i < 5; ++i) step.run(ctx, model, adam, data, rng, s++, finite);
  const int64_t rss_before = resident_kib();
  std::vector<double> train_rates;
  ctx.phases.reset();
  ctx.phases.enabled = true;
  double measured = 0;
  for (int64_t rep = 0; rep < options.reps; ++rep) {
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < options.steps_per_rep; ++i) {
      const StepRecord record = step.run(ctx, model, adam, data, rng, s++, finite);
      for (const LayerLoad& layer : record.layers) r.train_maxvio = std::max(r.train_maxvio, layer.maxvio);
    }
    const double seconds = seconds_since(t0);
    measured += seconds;
    train_rates.push_back(double(step.tokens_per_step() * options.steps_per_rep) / seconds);
  }
  ctx.phases.enabled = false;
  double accounted = 0;
  for (int p = 0; p < int(Phase::count); ++p) {
    r.phase_share[p] = ctx.phases.seconds[p] / measured;
    if (Phase(p) != Phase::other) accounted += r.phase_share[p];
  }
  // Whatever no phase claimed (sampling, the step's own bookkeeping) counts as other.
  r.phase_share[int(Phase::other)] = std::max(0.0, 1.0 - accounted);
  r.train_tokens_per_s = mean_sd(train_rates);
  r.rss_growth_kib = resident_kib() - rss_before;
  r.mfu = r.train_tokens_per_s.mean * r.train_flops_per_token / (gemm_peak_gflops * 1e9);

  // The timed training steps moved the weights: decode a checkpoint with its own.
  if (from_checkpoint) load_tensors_into(CheckpointTensors::open(config_path), model, model.params.data());
  // Prefill: one sequence of seq tokens through the batched forward.
  {
    const int64_t T = cfg.train.seq;
    Workspace ws(mc, 1, T, false);
    std::vector<int32_t> tokens(data.bytes.begin(), data.bytes.begin() + T);
    model_forward(ctx, model, ws, tokens.data(), nullptr);
    std::vector<double> rates;
    for (int64_t rep = 0; rep < options.reps; ++rep) {
      const auto t0 = Clock::now();
      model_forward(ctx, model, ws, tokens.data(), nullptr);
      rates.push_back(double(T) / seconds_since(t0));
    }
    r.prefill_tokens_per_s = mean_sd(rates);
  }
  // Decode: batch 1 with a KV cache after a short prompt, greedy (the PyTorch peer's protocol).
  {
    const int64_t prompt_len = std::min<int64_t>(16, mc.max_position_embeddings / 2);
    const int64_t n = std::min(options.decode_tokens, mc.max_position_embeddings - prompt_len);
    r.decode_tokens_per_s = mean_sd(decode_rates(ctx, model, data.bytes, prompt_len, n, options.reps));
    r.decode_weight_bytes = decode_weight_bytes(mc);
    r.read_gbs = measure_read_bandwidth(int64_t(model.params.size() * sizeof(float)));
    r.decode_roofline = r.read_gbs * 1e9 / r.decode_weight_bytes;
  }
  // Decode at a long context: the timed steps are the last ones before context C (its cache read
  // grows with C; MLA reads r_kv + d_r floats per cached token and layer, GQA 2 x kv heads x head_dim).
  for (int64_t C : {int64_t(256), mc.max_position_embeddings}) {
    if (C > mc.max_position_embeddings || (!r.decode_at.empty() && r.decode_at.back().context == C)) continue;
    const int64_t n = std::min(options.decode_tokens, C / 2);
    DecodePoint point;
    point.context = C;
    point.tokens_per_s = mean_sd(decode_rates(ctx, model, data.bytes, C - n, n, options.reps));
    point.kv_cache_mib = kv_cache_bytes_per_token(mc) * double(C) / double(1 << 20);
    r.decode_at.push_back(point);
  }
  // Self-speculative decoding with the MTP module against plain greedy generation, both through
  // generate() (the same sampling and bookkeeping).
  if (mc.mtp()) {
    const int64_t n = std::min(options.decode_tokens, mc.max_position_embeddings - 16);
    r.spec = speculative_rates(model, data.bytes, n, options.reps);
    r.spec.trained = from_checkpoint;
  }
  r.peak_rss_kib = peak_resident_kib();
  return r;
}

namespace {
// The config column: the path, and the routing when it is forced.
std::string label(const BenchResult& r) {
  return r.routing == ForcedRouting::natural ? r.config : r.config + " (" + to_string(r.routing) + ")";
}
}  // namespace

std::string machine_description() {
  std::string cpu = "unknown CPU";
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  const dnnl_version_t* v = dnnl_version();
  char buf[512];
  std::snprintf(buf, sizeof buf, "CPU: %s, %u hardware threads; build: moe %s, g++ %d.%d, %s; oneDNN %d.%d.%d (%s)",
                cpu.c_str(), std::thread::hardware_concurrency(), MOE_VERSION, __GNUC__, __GNUC_MINOR__,
#ifdef __AVX512F__
                "native (AVX-512)",
#elif defined(__AVX2__)
                "native (AVX2)",
#else
                "portable",
#endif
                v->major, v->minor, v->patch, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other runtime");
  return buf;
}

std::string format_bench_markdown(const std::vector<BenchResult>& results) {
  std::string out = machine_description() + "\n\n";
  char buf[512];
  out += "| config | params (activated) | threads | test | tok/s |\n|---|---:|---:|---|---:|\n";
  for (const auto& r : results) {
    char params[64];
    std::snprintf(params, sizeof params, "%.2fM (%.2fM)", double(r.params) / 1e6, double(r.activated) / 1e6);
    char maxvio[48];
    std::snprintf(maxvio, sizeof maxvio, " (MaxVio %.2f)", r.train_maxvio);
    const struct {
      std::string test;
      Stat stat;
    } rows[] = {{"train B" + std::to_string(r.batch) + " x T" + std::to_string(r.seq) + maxvio, r.train_tokens_per_s},
                {"prefill T" + std::to_string(r.seq), r.prefill_tokens_per_s},
                {"decode B1", r.decode_tokens_per_s}};
    for (const auto& row : rows) {
      std::snprintf(buf, sizeof buf, "| %s | %s | %lld | %s | %.0f ± %.0f |\n", label(r).c_str(), params,
                    (long long)r.threads, row.test.c_str(), row.stat.mean, row.stat.sd);
      out += buf;
    }
    if (r.spec.tokens_per_s.mean > 0) {
      std::snprintf(
          buf, sizeof buf,
          "| %s | %s | %lld | decode-spec B1, --draft mtp (int8 draft, %s; acceptance %.0f%%, %.2f tokens/step; plain "
          "%.0f tok/s: %.2fx) | %.0f ± %.0f |\n",
          label(r).c_str(), params, (long long)r.threads, r.spec.trained ? "trained" : "untrained weights",
          100 * r.spec.acceptance, r.spec.tokens_per_step, r.spec.plain_tokens_per_s.mean,
          r.spec.tokens_per_s.mean / r.spec.plain_tokens_per_s.mean, r.spec.tokens_per_s.mean, r.spec.tokens_per_s.sd);
      out += buf;
      if (r.spec.verify_cost > 0) {
        std::snprintf(buf, sizeof buf,
                      "| %s | %s | %lld | decode-spec B1 round, int8 draft: verification %.2fx a plain step (%.1f "
                      "routed experts read per MoE layer vs %.1f), drafting %.2fx; ceiling with a free draft: %.2f "
                      "tokens/step / %.2f = %.2fx plain | %.0f |\n",
                      label(r).c_str(), params, (long long)r.threads, r.spec.verify_cost, r.spec.experts_verify,
                      r.spec.experts_plain, r.spec.draft_cost, r.spec.tokens_per_step, r.spec.verify_cost,
                      r.spec.tokens_per_step / r.spec.verify_cost,
                      r.spec.plain_tokens_per_s.mean * r.spec.tokens_per_step / r.spec.verify_cost);
        out += buf;
      }
      std::snprintf(buf, sizeof buf,
                    "| %s | %s | %lld | decode-spec B1, --draft mtp --draft-precision f32 (acceptance %.0f%%; "
                    "%.2fx plain) | %.0f ± %.0f |\n",
                    label(r).c_str(), params, (long long)r.threads, 100 * r.spec.f32_acceptance,
                    r.spec.f32_tokens_per_s.mean / r.spec.plain_tokens_per_s.mean, r.spec.f32_tokens_per_s.mean,
                    r.spec.f32_tokens_per_s.sd);
      out += buf;
    }
    std::snprintf(buf, sizeof buf,
                  "| %s | %s | %lld | decode B1 roofline (%.2f MB of weights per token at %.1f GB/s read; decode "
                  "reaches %.0f%%) | %.0f |\n",
                  label(r).c_str(), params, (long long)r.threads, r.decode_weight_bytes / 1e6, r.read_gbs,
                  100 * r.decode_tokens_per_s.mean / r.decode_roofline, r.decode_roofline);
    out += buf;
    for (const DecodePoint& d : r.decode_at) {
      std::snprintf(buf, sizeof buf,
                    "| %s | %s | %lld | decode B1 at context %lld (KV cache %.2f MiB) | %.0f ± %.0f |\n",
                    label(r).c_str(), params, (long long)r.threads, (long long)d.context, d.kv_cache_mib,
                    d.tokens_per_s.mean, d.tokens_per_s.sd);
      out += buf;
    }
  }
  out +=
      "\n| config | threads | GEMM peak GFLOP/s | train GFLOP/s | MFU | peak RSS MiB | RSS growth KiB |\n"
      "|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : results) {
    std::snprintf(buf, sizeof buf, "| %s | %lld | %.1f | %.1f | %.1f%% | %.1f | %lld |\n", label(r).c_str(),
                  (long long)r.threads, r.gemm_peak_gflops, r.train_tokens_per_s.mean * r.train_flops_per_token / 1e9,
                  100 * r.mfu, double(r.peak_rss_kib) / 1024, (long long)r.rss_growth_kib);
    out += buf;
  }
  out += "\nshare of training step time by phase\n\n| config | threads |";
  for (int p = 0; p < int(Phase::count); ++p) out += std::string(" ") + to_string(Phase(p)) + " |";
  out += "\n|---|---:|";
  for (int p = 0; p < int(Phase::count); ++p) out += "---:|";
  out += "\n";
  for (const auto& r : results) {
    std::snprintf(buf, sizeof buf, "| %s | %lld |", label(r).c_str(), (long long)r.threads);
    out += buf;
    for (int p = 0; p < int(Phase::count); ++p) {
      std::snprintf(buf, sizeof buf, " %.1f%% |", 100 * r.phase_share[p]);
      out += buf;
    }
    out += "\n";
  }
  // Forced routings against balanced, for the same config and threads (ratios within this run).
  std::string ratios;
  for (const auto& r : results) {
    if (r.routing == ForcedRouting::balanced) continue;
    for (const auto& b : results)
      if (b.routing == ForcedRouting::balanced && b.config == r.config && b.threads == r.threads) {
        std::snprintf(buf, sizeof buf, "| %s | %s | %lld | %.2f | %.2fx | %.2fx | %.2fx |\n", r.config.c_str(),
                      to_string(r.routing), (long long)r.threads, r.train_maxvio,
                      r.train_tokens_per_s.mean / b.train_tokens_per_s.mean,
                      r.prefill_tokens_per_s.mean / b.prefill_tokens_per_s.mean,
                      r.decode_tokens_per_s.mean / b.decode_tokens_per_s.mean);
        ratios += buf;
      }
  }
  if (!ratios.empty())
    out +=
        "\nagainst balanced routing (same config and threads, this run)\n\n| config | routing | threads | train MaxVio "
        "| "
        "train | prefill | decode B1 |\n|---|---|---:|---:|---:|---:|---:|\n" +
        ratios;
  out +=
      "\nMFU = train tok/s x FLOPs/token / GEMM peak; FLOPs/token = 6 x activated matrix parameters "
      "(attention, FFNs, K of E routed experts, router, lm head; with a trained MTP module also its layer, eh_proj "
      "and the head again) + 6 x layers x heads x (query/key + value head widths) x seq x c (attention scores and "
      "weighted sum, forward and backward; c = the share of the T x T products the causal kernels compute: query "
      "blocks multiply only keys up to their last row, 5/8 with 4 blocks at T >= 256). GEMM peak: best of 5 oneDNN f32 "
      "2048^3 matmuls. Decode roofline: read bandwidth (best of 10 passes of all threads summing a buffer the size "
      "of the model's weights, which decoding re-reads every token: cache-resident when they fit) / bytes of the "
      "weights one token activates (one embedding row, attention, norms, dense and shared FFNs, K of E experts, "
      "router, lm head). Decode B1: 16-byte prompt, then the timed steps; at context C: the last steps before C.\n";
  return out;
}

nlohmann::json bench_json(const std::vector<BenchResult>& results) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json phases = nlohmann::json::object();
    for (int p = 0; p < int(Phase::count); ++p) phases[to_string(Phase(p))] = r.phase_share[p];
    auto stat = [](const Stat& s) { return nlohmann::json{{"mean", s.mean}, {"sd", s.sd}}; };
    out.push_back({{"config", r.config},
                   {"routing", to_string(r.routing)},
                   {"train_maxvio", r.train_maxvio},
                   {"threads", r.threads},
                   {"batch", r.batch},
                   {"seq", r.seq},
                   {"params", r.params},
                   {"activated", r.activated},
                   {"train_tokens_per_s", stat(r.train_tokens_per_s)},
                   {"prefill_tokens_per_s", stat(r.prefill_tokens_per_s)},
                   {"decode_tokens_per_s", stat(r.decode_tokens_per_s)},
                   {"decode_roofline",
                    {{"weight_bytes_per_token", r.decode_weight_bytes},
                     {"read_gb_per_s", r.read_gbs},
                     {"tokens_per_s", r.decode_roofline},
                     {"share", r.decode_tokens_per_s.mean / r.decode_roofline}}},
                   {"decode_spec", r.spec.tokens_per_s.mean > 0
                                       ? nlohmann::json{{"tokens_per_s", stat(r.spec.tokens_per_s)},
                                                        {"plain_tokens_per_s", stat(r.spec.plain_tokens_per_s)},
                                                        {"acceptance", r.spec.acceptance},
                                                        {"tokens_per_main_step", r.spec.tokens_per_step},
                                                        {"trained", r.spec.trained},
                                                        {"draft_precision", "int8"},
                                                        {"round",
                                                         {{"verify_step_vs_plain", r.spec.verify_cost},
                                                          {"draft_vs_plain_step", r.spec.draft_cost},
                                                          {"experts_per_moe_layer_plain", r.spec.experts_plain},
                                                          {"experts_per_moe_layer_verify", r.spec.experts_verify},
                                                          {"free_draft_ceiling",
                                                           r.spec.verify_cost > 0
                                                               ? r.spec.tokens_per_step / r.spec.verify_cost
                                                               : 0.0}}},
                                                        {"f32_draft",
                                                         {{"tokens_per_s", stat(r.spec.f32_tokens_per_s)},
                                                          {"acceptance", r.spec.f32_acceptance}}}}
                                       : nlohmann::json(nullptr)},
                   {"decode_at_context",
                    [&] {
                      nlohmann::json points = nlohmann::json::array();
                      for (const DecodePoint& d : r.decode_at)
                        points.push_back({{"context", d.context},
                                          {"tokens_per_s", stat(d.tokens_per_s)},
                                          {"kv_cache_mib", d.kv_cache_mib}});
                      return points;
                    }()},
                   {"train_flops_per_token", r.train_flops_per_token},
                   {"gemm_peak_gflops", r.gemm_peak_gflops},
                   {"mfu", r.mfu},
                   {"phase_share", phases},
                   {"peak_rss_kib", r.peak_rss_kib},
                   {"rss_growth_kib", r.rss_growth_kib}});
  }
  return {{"machine", machine_description()}, {"results", out}};
}

}  // namespace moe
