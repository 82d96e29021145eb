// `moe bench`: llama-bench-style measurements — training, prefill and decode throughput (mean ±
// sd over repetitions after a warm-up), the share of step time per phase, the machine's measured
// f32 GEMM peak and the MFU of training, and the process's memory (peak and growth over steps).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "config/model_config.hpp"
#include "core/compute.hpp"

namespace moe {

struct BenchOptions {
  std::vector<std::string> configs;
  std::vector<int64_t> threads;
  int64_t reps = 5;
  int64_t steps_per_rep = 3;    // training steps timed per repetition
  int64_t decode_tokens = 128;  // decode steps timed per repetition
  // Routing patterns to measure each config under (ForcedRouting: natural, balanced, skewed), and
  // the text trained on ("" = the embedded synthetic corpus); natural routing is the router's
  // choice on it.
  std::vector<ForcedRouting> routings = {ForcedRouting::natural};
  std::string data;
};
const char* to_string(ForcedRouting routing);

struct Stat {
  double mean = 0, sd = 0;
};
Stat mean_sd(const std::vector<double>& values);

// Decoding throughput near a context length, with the KV cache that context holds.
struct DecodePoint {
  int64_t context = 0;
  Stat tokens_per_s;
  double kv_cache_mib = 0;
};

// Greedy generation with --draft mtp (models with the MTP module) against plain greedy generation.
struct SpecDecode {
  Stat tokens_per_s, plain_tokens_per_s;  // the int8 draft and plain greedy decoding
  double acceptance = 0, tokens_per_step = 0;
  Stat f32_tokens_per_s;  // the f32 draft
  double f32_acceptance = 0;
  bool trained = false;  // measured on a checkpoint's weights (else a fresh initialisation)
  // Where a round of the int8-draft run goes, against a plain step (time inside the main model's
  // decode steps): its verification step and its draft steps, each as a multiple of a plain step,
  // and the routed experts a step reads per MoE layer (plain: K; a verification: the union of its
  // rows' choices). tokens_per_step / verify_cost bounds the speed-up of any draft, even a free one.
  double verify_cost = 0, draft_cost = 0;
  double experts_plain = 0, experts_verify = 0;
};

struct BenchResult {
  std::string config;
  ForcedRouting routing = ForcedRouting::natural;
  double train_maxvio = 0;  // MaxVio of the routed rows over the timed steps' MoE layers (worst layer)
  int64_t threads = 0, batch = 0, seq = 0;
  int64_t params = 0, activated = 0;
  Stat train_tokens_per_s, prefill_tokens_per_s, decode_tokens_per_s;
  std::vector<DecodePoint> decode_at;          // at context 256 and at max_position_embeddings
  SpecDecode spec;                             // models with the MTP module
  double phase_share[int(Phase::count)] = {};  // of measured training step time
  double train_flops_per_token = 0;            // 6 * activated matmul params + attention (see bench.cpp)
  double gemm_peak_gflops = 0;
  double mfu = 0;  // achieved training FLOP/s / GEMM peak
  // Decode roofline: batch-1 decoding streams the activated weights once per token, so it can go no
  // faster than the read bandwidth (measured over a buffer the size of all the weights, which
  // decoding re-reads token after token) divided by those bytes.
  double decode_weight_bytes = 0;  // activated weights per token (one embedding row, K of E experts)
  double read_gbs = 0;             // measured read bandwidth, GB/s
  double decode_roofline = 0;      // read_gbs / decode_weight_bytes, tokens/s
  int64_t peak_rss_kib = 0, rss_growth_kib = 0;
};

// Measured large-GEMM f32 throughput (GFLOP/s) with the current thread count.
double measure_gemm_peak(ComputeContext& ctx);
// Best-of-repetitions read bandwidth (GB/s) of the current threads summing a buffer of `bytes`.
double measure_read_bandwidth(int64_t bytes);
// Bytes of weights one batch-1 decode step reads: the activated parameters of the main model (MTP
// module excluded), with one row of the embedding instead of all of it.
double decode_weight_bytes(const ModelConfig& config);
BenchResult bench_config(const std::string& config_path, int64_t threads, ForcedRouting routing,
                         const BenchOptions& options, double gemm_peak_gflops);

std::string machine_description();  // CPU, cores, build, oneDNN version
std::string format_bench_markdown(const std::vector<BenchResult>& results);
nlohmann::json bench_json(const std::vector<BenchResult>& results);

}  // namespace moe
