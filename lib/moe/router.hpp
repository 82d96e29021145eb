// The DeepSeek-V3 gate: affinity scores, bias-corrected group-limited top-K selection, and the
// gate weights (from the *unbiased* scores) that scale each chosen expert's output.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "config/model_config.hpp"
#include "core/compute.hpp"

namespace moe {

// One token's logits z (E) -> scores s (E).
void router_scores_row(const float* z, float* s, int64_t E, ScoringFunc func);
// logits (N, E) -> scores (N, E): sigmoid elementwise, or softmax over experts.
void router_scores_forward(const float* logits, float* scores, int64_t N, int64_t E, ScoringFunc func);
// d_scores (N, E) -> d_logits (N, E) written.
void router_scores_backward(const float* scores, const float* d_scores, float* d_logits, int64_t N, int64_t E,
                            ScoringFunc func);

// Selection for each token: keys = scores + bias; with n_group > 1 only the topk_group groups with
// the largest sum of their two best keys stay eligible; with device-limited routing
// (config.rank_limited(): DeepSeek-V3's node-limited routing, over the expert_ranks contiguous
// blocks of experts) only the max_ranks_per_token blocks with the largest sum of their
// ceil(K / max_ranks_per_token) best keys stay eligible (ties to the lower block); then the K
// largest eligible keys (ties go to the lower index), in descending key order. Every forward
// routes through here — one process, expert parallelism, decoding — so a model routes the same
// way however it is run.
// expert (N, K) and weight (N, K) written: weight = scaling · s_e / (Σ_chosen s + 1e-20) when
// norm_topk_prob, else scaling · s_e. bias may be null (all zero).

// Scratch of one routing thread, sized once per configuration.
struct RouteScratch {
  std::vector<float> keys, block_score, best;
  std::vector<char> kept;
  void resize(const ModelConfig& c) {
    const size_t blocks = size_t(std::max(c.n_group, c.expert_ranks));
    keys.resize(size_t(c.n_routed_experts)), block_score.resize(blocks), kept.resize(blocks);
    best.resize(size_t(c.num_experts_per_tok));
  }
};

// route_tokens for one token's scores s (E): chosen (K) experts and their weights w (K). For
// callers that are already inside a parallel region (decoding), where a nested region costs more
// than routing one token.
void route_token(const ModelConfig& config, const float* s, const float* bias, int32_t* chosen, float* w,
                 RouteScratch& scratch);
void route_tokens(const ModelConfig& config, const float* scores, const float* bias, int32_t* expert, float* weight,
                  int64_t N);

// ForcedRouting (core/compute.hpp) for token `index` with scores s (E): the pattern's K experts, the
// gate weights by the router's formula. natural leaves chosen and w as they are.
void force_route_token(const ModelConfig& config, ForcedRouting mode, int64_t index, const float* s, int32_t* chosen,
                       float* w);
void force_routes(const ModelConfig& config, ForcedRouting mode, const float* scores, int32_t* expert, float* weight,
                  int64_t N);

// Gradient of the weight formula: d_weight (N, K) -> d_scores (N, E) accumulated at the chosen
// experts. The choice itself is not differentiable and the bias receives no gradient.
void route_weights_backward(const ModelConfig& config, const float* scores, const int32_t* expert,
                            const float* d_weight, float* d_scores, int64_t N);

}  // namespace moe
