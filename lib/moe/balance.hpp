// Load balancing: the auxiliary-loss-free bias update of DeepSeek-V3 and the two balance losses
// (classic batch-wise auxiliary loss, DeepSeek-V3 complementary sequence-wise loss).
#pragma once
#include <cstdint>

#include "config/model_config.hpp"

namespace moe {

// MaxVio = (max_i c_i - mean c) / mean c; 0 when nothing was routed.
double max_violation(const int64_t* counts, int64_t E);

// The load statistics people ask trainers for, from one layer's counts c (E) of a step:
// cv = population std(c) / mean(c); Jain's fairness index (Σc)² / (E·Σc²) (1 = perfectly even,
// 1/E = one expert takes everything); dead = experts that received no token; share_pX = the X-th
// percentile of the per-expert shares c_i/Σc, linear interpolation between the sorted shares at
// rank X/100·(E-1) (numpy's default). With nothing routed: cv 0, jain 1, dead E, shares 0.
struct LoadStats {
  double cv = 0, jain = 1;
  int64_t dead = 0;
  double share_p5 = 0, share_p50 = 0, share_p95 = 0;
};
LoadStats load_stats(const int64_t* counts, int64_t E);

// b_i += rate · sign(mean(c) - c_i): overloaded experts lose selection priority, idle ones gain it.
// proportional (Loss-Free Balancing's Table 3 variant): b_i += rate · (mean(c) - c_i) / mean(c), a
// step that shrinks as the load evens out (nothing moves when nothing was routed). center: then
// subtract the mean bias — selection depends only on differences of the biases, so this changes no
// choice and keeps the values from drifting.
void update_bias(float* bias, const int64_t* counts, int64_t E, float rate, bool proportional = false,
                 bool center = false);

// Router z-loss (ST-MoE; Megatron's --moe-z-loss-coeff): α · mean over N tokens of
// (logsumexp_i z_ti)², z = the router logits (N, E), whatever the scoring function. Returns the
// loss; when d_logits is given, adds scale · dL/dz = scale · α · 2·lse_t/N · softmax(z_t)_i.
double router_z_loss(const float* logits, int64_t N, int64_t E, float alpha, float* d_logits, float scale);

// Classic auxiliary loss α·E·Σ_i f_i P_i over N tokens: f_i = (tokens routed to i)/(N·K), P_i = mean
// over tokens of the scores normalised to sum 1. Returns the loss; when d_scores is given, adds
// scale·dL/ds into it (f_i is a count and carries no gradient).
double aux_loss(const float* scores, const int32_t* expert, int64_t N, int64_t E, int64_t K, float alpha,
                float* d_scores, float scale);

// The same loss over a batch that is formed in parts (the micro-batches of an optimizer step on
// every rank). Σ f_i·P_i is not a sum over the parts, so each part adds its E-sized sums, the loss
// is formed from the totals, and each part's gradient uses the whole batch's f.
// Adds Σ over N tokens of s_t / Σ_j s_tj into prob_sums (E): N_total · P_i once every part added.
void aux_prob_sums(const float* scores, int64_t N, int64_t E, double* prob_sums);
// α·E·Σ_i f_i P_i from the totals: slot counts (E, summing to tokens·K) and prob_sums over `tokens`.
double aux_loss_from_sums(const int64_t* counts, const double* prob_sums, int64_t tokens, int64_t E, int64_t K,
                          float alpha);
// Adds scale·dL/ds for N tokens of the batch, L = α·E·Σ_i f_i·(their mean normalised score); f (E)
// the whole batch's fractions. With scale = N / tokens of the batch this is the part's share of the
// whole loss's gradient (aux_loss passes its own f and scale for a batch of one part).
void aux_loss_backward(const float* scores, const double* f, int64_t N, int64_t E, float alpha, float* d_scores,
                       float scale);

// Sequence-wise loss: per sequence of T tokens, α·Σ_i f_i P_i with f_i = E/(K·T)·(tokens of the
// sequence routed to i) and P_i the sequence's mean normalised score; averaged over the B sequences.
double seq_aux_loss(const float* scores, const int32_t* expert, int64_t B, int64_t T, int64_t E, int64_t K, float alpha,
                    float* d_scores, float scale);

}  // namespace moe
