#include "moe/router.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.hpp"

namespace moe {

void router_scores_row(const float* z, float* s, int64_t E, ScoringFunc func) {
  if (func == ScoringFunc::sigmoid) {
    for (int64_t i = 0; i < E; ++i) s[i] = 1.0f / (1.0f + std::exp(-z[i]));
  } else {
    float max = z[0];
    for (int64_t i = 1; i < E; ++i) max = std::max(max, z[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < E; ++i) sum += (s[i] = std::exp(z[i] - max));
    for (int64_t i = 0; i < E; ++i) s[i] /= sum;
  }
}

void router_scores_forward(const float* logits, float* scores, int64_t N, int64_t E, ScoringFunc func) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) router_scores_row(logits + t * E, scores + t * E, E, func);
}

void router_scores_backward(const float* scores, const float* d_scores, float* d_logits, int64_t N, int64_t E,
                            ScoringFunc func) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    const float* s = scores + t * E;
    const float* ds = d_scores + t * E;
    float* dz = d_logits + t * E;
    if (func == ScoringFunc::sigmoid) {
      for (int64_t i = 0; i < E; ++i) dz[i] = ds[i] * s[i] * (1.0f - s[i]);
    } else {
      float dot = 0.0f;
      for (int64_t i = 0; i < E; ++i) dot += ds[i] * s[i];
      for (int64_t i = 0; i < E; ++i) dz[i] = s[i] * (ds[i] - dot);
    }
  }
}

namespace {

// Keeps the `keep` blocks (of `size` consecutive keys) with the largest score (ties to the lower
// index) and masks every other block's keys to -inf.
void keep_best_blocks(float* keys, const float* block_score, char* kept, int64_t blocks, int64_t size, int64_t keep) {
  std::fill_n(kept, blocks, 0);
  for (int64_t pick = 0; pick < keep; ++pick) {
    int64_t best = -1;
    for (int64_t b = 0; b < blocks; ++b)
      if (!kept[b] && (best < 0 || block_score[b] > block_score[best])) best = b;
    kept[best] = 1;
  }
  for (int64_t b = 0; b < blocks; ++b)
    if (!kept[b])
      for (int64_t i = b * size; i < (b + 1) * size; ++i) keys[i] = -INFINITY;
}

}  // namespace

void route_token(const ModelConfig& c, const float* s, const float* bias, int32_t* chosen, float* w,
                 RouteScratch& scratch) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, G = c.n_group;
  const int64_t group_size = E / G;
  float* keys = scratch.keys.data();
  float* block_score = scratch.block_score.data();
  char* kept = scratch.kept.data();
  for (int64_t i = 0; i < E; ++i) keys[i] = s[i] + (bias ? bias[i] : 0.0f);
  if (G > 1) {
    for (int64_t g = 0; g < G; ++g) {
      // Sum of the two largest keys of the group (the one key when a group has one expert).
      float best = -INFINITY, second = -INFINITY;
      for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
        const float k = keys[i];
        if (k > best)
          second = best, best = k;
        else if (k > second)
          second = k;
      }
      block_score[g] = group_size >= 2 ? best + second : best;
    }
    // Keep the topk_group best groups (ties to the lower index); mask the rest to -inf.
    keep_best_blocks(keys, block_score, kept, G, group_size, c.topk_group);
  }
  if (c.rank_limited()) {
    // Score each rank's block by the sum of its `per` best keys (insertion into a short sorted list).
    const int64_t ranks = c.expert_ranks, size = E / ranks, max_ranks = c.max_ranks_per_token;
    const int64_t per = (K + max_ranks - 1) / max_ranks;
    float* best = scratch.best.data();
    for (int64_t r = 0; r < ranks; ++r) {
      std::fill_n(best, per, -INFINITY);
      for (int64_t i = r * size; i < (r + 1) * size; ++i) {
        const float k = keys[i];
        for (int64_t p = 0; p < per; ++p)
          if (k > best[p]) {
            for (int64_t q = per - 1; q > p; --q) best[q] = best[q - 1];
            best[p] = k;
            break;
          }
      }
      float sum = 0.0f;
      for (int64_t p = 0; p < per; ++p) sum += best[p];
      block_score[r] = sum;
    }
    keep_best_blocks(keys, block_score, kept, ranks, size, max_ranks);
  }
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    for (int64_t i = 0; i < E; ++i) {
      if (keys[i] == -INFINITY) continue;  // masked group or already chosen
      if (best < 0 || keys[i] > keys[best]) best = i;
    }
    chosen[k] = int32_t(best);
    keys[best] = -INFINITY;
    w[k] = s[best];
    sum += s[best];
  }
  const float scale = float(c.routed_scaling_factor);
  const float norm = c.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (int64_t k = 0; k < K; ++k) w[k] *= norm * scale;
}

void route_tokens(const ModelConfig& c, const float* scores, const float* bias, int32_t* expert, float* weight,
                  int64_t N) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  ParallelErrors errors;
#pragma omp parallel
  {
    // Per-thread buffers that keep their capacity across calls (the first call allocates).
    thread_local RouteScratch scratch;
    errors.run([&] { scratch.resize(c); });
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N; ++t)
      errors.run([&] { route_token(c, scores + t * E, bias, expert + t * K, weight + t * K, scratch); });
  }
  errors.rethrow();
}

void force_route_token(const ModelConfig& c, ForcedRouting mode, int64_t index, const float* s, int32_t* chosen,
                       float* w) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  if (mode == ForcedRouting::natural) return;
  for (int64_t k = 0; k < K; ++k) {
    if (mode == ForcedRouting::balanced)
      chosen[k] = int32_t((index * K + k) % E);
    else
      chosen[k] = k == 0 ? 0 : int32_t(1 + (index * (K - 1) + k - 1) % (E - 1));
  }
  float sum = 0.0f;
  for (int64_t k = 0; k < K; ++k) sum += s[chosen[k]];
  const float norm = c.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
  for (int64_t k = 0; k < K; ++k) w[k] = s[chosen[k]] * norm * float(c.routed_scaling_factor);
}

void force_routes(const ModelConfig& c, ForcedRouting mode, const float* scores, int32_t* expert, float* weight,
                  int64_t N) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  if (mode == ForcedRouting::natural) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) force_route_token(c, mode, t, scores + t * E, expert + t * K, weight + t * K);
}

void route_weights_backward(const ModelConfig& c, const float* scores, const int32_t* expert, const float* d_weight,
                            float* d_scores, int64_t N) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  const float scale = float(c.routed_scaling_factor);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    const float* s = scores + t * E;
    const int32_t* chosen = expert + t * K;
    const float* dw = d_weight + t * K;
    float* ds = d_scores + t * E;
    if (!c.norm_topk_prob) {
      for (int64_t k = 0; k < K; ++k) ds[chosen[k]] += scale * dw[k];
      continue;
    }
    // w_k = scale · s_k / S, S = Σ_j s_j + ε  =>  ds_j = scale (dw_j / S - Σ_k dw_k s_k / S²)
    float sum = 0.0f, dot = 0.0f;
    for (int64_t k = 0; k < K; ++k) sum += s[chosen[k]], dot += dw[k] * s[chosen[k]];
    const float S = sum + 1e-20f;
    for (int64_t k = 0; k < K; ++k) ds[chosen[k]] += scale * (dw[k] / S - dot / (S * S));
  }
}

}  // namespace moe
