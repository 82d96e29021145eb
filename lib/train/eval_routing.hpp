// The experts each evaluated token chose, kept at every evaluation so that `moe inspect` can show
// how routing settles over training (OLMoE's observation: most top-K choices are fixed early):
//   saturation at eval e = share of tokens whose top-K set at e equals the one at the final eval;
//   churn at eval e      = share of tokens whose top-K set differs from the one at eval e-1.
// The validation windows are the same at every evaluation, so token i is the same text each time.
// File DIR/routing/eval_<step>.bin (little-endian): "MOEROUTE", u32 version 1, u32 layers,
// u32 tokens, u32 K, u32 E, i64 step, then u16 expert ids (layers, tokens, K), each token's K in
// increasing order (a set, not the ranking).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// The first this many evaluated tokens are kept (16,384 tokens x 3 layers x top-4 = 384 KiB a file).
constexpr int64_t kEvalRoutingTokens = 16384;

struct EvalRouting {
  int64_t step = 0, layers = 0, tokens = 0, K = 0, E = 0;
  std::vector<uint16_t> experts;  // (layers, tokens, K), sorted within each token
  const uint16_t* set(int64_t layer, int64_t token) const { return experts.data() + (layer * tokens + token) * K; }
};

std::string eval_routing_path(const std::string& run_dir, int64_t step);
void write_eval_routing(const std::string& path, const EvalRouting& r);  // atomic: all or nothing
// Checks the header and the size; errors name the file.
EvalRouting read_eval_routing(const std::string& path);

// Per layer, the share of tokens whose top-K set is the same in a and b (same shape required).
std::vector<double> same_set_share(const EvalRouting& a, const EvalRouting& b);

}  // namespace moe
