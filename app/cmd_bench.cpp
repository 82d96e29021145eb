// `moe bench`: throughput, MFU and memory of training, prefill and decode (see lib/bench).
#include <cstdio>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "bench/bench.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "train/data.hpp"
#include "train/run_dir.hpp"
#include "train/train_config.hpp"

namespace moe::app {

namespace {
struct BenchFlags {
  BenchOptions options;
  std::string output = "md";
  std::vector<std::string> routings;
};
}  // namespace

Run add_bench(CLI::App& app) {
  auto f = std::make_shared<BenchFlags>();
  auto* cmd = app.add_subcommand("bench", "Measure training, prefill and decode speed, MFU and memory");
  cmd->add_option("--config", f->options.configs,
                  "Config files or checkpoint/run directories (their weights: decoding of a trained model; "
                  "or names of the shipped configs (tiny, small, ...); repeatable; default small)");
  cmd->add_option("-t,--threads", f->options.threads, "Thread counts (repeatable; default: all cores)")
      ->check(InRange(1, kMaxThreads));
  cmd->add_option("--reps", f->options.reps, "Timed repetitions after the warm-up")
      ->capture_default_str()
      ->check(InRange(1, 1000));
  cmd->add_option("--steps", f->options.steps_per_rep, "Training steps per repetition")
      ->capture_default_str()
      ->check(InRange(1, 1000));
  cmd->add_option("--decode-tokens", f->options.decode_tokens, "Decode steps per repetition")
      ->capture_default_str()
      ->check(InRange(1, 100000));
  cmd->add_option("--routing", f->routings,
                  "Routing to measure under (repeatable; default natural): natural (the router's choice on the "
                  "data), balanced (round robin: every expert gets N*K/E rows), skewed (every token's top-K "
                  "includes expert 0, the worst load top-K allows)")
      ->check(CLI::IsMember({"natural", "balanced", "skewed"}));
  cmd->add_option("--data", f->options.data,
                  "Text file to train on (default: the embedded synthetic corpus); natural routing is the "
                  "router's choice on it");
  cmd->add_option("-o,--output", f->output, "md or json")->capture_default_str()->check(CLI::IsMember({"md", "json"}));
  return [f]() {
    BenchOptions& o = f->options;
    if (o.configs.empty()) o.configs = {"small"};
    if (o.threads.empty()) o.threads = {std::min<int64_t>(hardware_threads(), kMaxThreads)};
    for (int64_t t : o.threads) warn_if_oversubscribed(t);
    for (const auto& c : o.configs)  // fail early on a bad config
      if (!is_directory(c)) load_config_file(c);
    if (!o.data.empty()) load_text_file(o.data);  // and on bad data
    if (!f->routings.empty()) {
      o.routings.clear();
      for (const std::string& r : f->routings)
        o.routings.push_back(r == "balanced" ? ForcedRouting::balanced
                             : r == "skewed" ? ForcedRouting::skewed
                                             : ForcedRouting::natural);
    }
    std::map<int64_t, double> peaks;
    std::vector<BenchResult> results;
    for (int64_t t : o.threads) {
      omp_set_num_threads(int(t));
      ComputeContext ctx;
      peaks[t] = measure_gemm_peak(ctx);
      for (const auto& c : o.configs) {
        for (const ForcedRouting routing : o.routings) {
          std::fprintf(stderr, "bench %s, %lld threads, %s routing ...\n", c.c_str(), (long long)t, to_string(routing));
          results.push_back(bench_config(c, t, routing, o, peaks[t]));
        }
      }
    }
    if (f->output == "json")
      std::cout << bench_json(results).dump(2) << "\n";
    else
      std::cout << format_bench_markdown(results);
    return 0;
  };
}

}  // namespace moe::app
