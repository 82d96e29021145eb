#include "moe/moe_layer.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "core/error.hpp"
#include "core/threads.hpp"
#include "moe/balance.hpp"
#include "moe/dispatch.hpp"
#include "moe/router.hpp"
#include "ops/swiglu.hpp"

namespace moe {

int64_t expert_row_align(const ModelConfig& c, int64_t N) {
  const int64_t target = N * c.num_experts_per_tok / c.n_routed_experts / 16;
  int64_t align = kExpertRowAlign;
  while (align * 2 <= target && align < 256) align *= 2;
  return align;
}

int64_t moe_row_capacity(const ModelConfig& c, int64_t N) {
  return N * c.num_experts_per_tok + c.n_routed_experts * (expert_row_align(c, N) - 1);
}

int64_t moe_saved_floats(const ModelConfig& c, int64_t N) {
  const int64_t K = c.num_experts_per_tok, D = c.hidden_size, Im = c.moe_intermediate_size;
  const int64_t R = moe_row_capacity(c, N);
  // scores and logits (N, E) each, weights, gathered rows and their FFN activations, the shared experts.
  return 2 * N * c.n_routed_experts + N * K + 2 * R * D + 3 * R * Im + 3 * N * c.shared_intermediate();
}

int64_t moe_saved_ints(const ModelConfig& c, int64_t N) {
  return 2 * N * c.num_experts_per_tok + moe_row_capacity(c, N) + 3 * c.n_routed_experts + 1;
}

int64_t moe_scratch_floats(const ModelConfig& c, int64_t N) {
  const int64_t K = c.num_experts_per_tok, D = c.hidden_size, R = moe_row_capacity(c, N);
  return 2 * R * D + 2 * std::max(R * c.moe_intermediate_size, N * c.shared_intermediate()) + N * K +
         2 * N * c.n_routed_experts;
}

namespace {

ExpertStack expert_stack(const MoeWeights& w, const ModelConfig& c) {
  return {w.experts_gate, w.experts_up, w.experts_down, c.hidden_size, c.moe_intermediate_size};
}

// Routed experts held here: rows laid out per expert (sort_by_expert, padded), gathered, then the
// shared dispatch's per-expert SwiGLU (moe/dispatch.hpp).
void local_experts_forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, MoeSaved& s,
                           int64_t N) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size;
  sort_by_expert(s.expert, N * K, E, s.row_align, s.counts, s.offsets, s.cursor, s.slot_row, s.row_slot);
  const int64_t R = s.offsets[E];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    if (s.row_slot[r] >= 0)
      std::memcpy(s.x_rows + r * D, x + int64_t(s.row_slot[r] / K) * D, sizeof(float) * D);
    else
      std::memset(s.x_rows + r * D, 0, sizeof(float) * D);  // padding rows compute zeros
  }
  experts_forward(ctx, expert_stack(w, c), s.offsets, E, s.x_rows, s.y_rows, s.g, s.u, s.a);
}

void local_experts_backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw,
                            const MoeSaved& s, const MoeScratch& scratch) {
  const int64_t E = c.n_routed_experts, D = c.hidden_size;
  // Padding rows carry no gradient, so they add nothing to the expert weight gradients.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < s.offsets[E]; ++r)
    if (s.row_slot[r] < 0) std::memset(scratch.d_rows + r * D, 0, sizeof(float) * D);
  experts_backward(ctx, expert_stack(w, c), expert_stack(gw, c), s.offsets, E, s.x_rows, scratch.d_rows,
                   scratch.dx_rows, s.g, s.u, s.a, scratch.ffn);
}

}  // namespace

void moe_forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, float* out,
                 MoeSaved& s, int64_t B, int64_t T, const BalanceLossConfig& balance, RemoteExperts* remote,
                 int64_t moe_layer) {
  const int64_t N = B * T, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t D = c.hidden_size, Is = c.shared_intermediate();

  // Router: scores in fp32, then bias-corrected selection.
  std::optional<PhaseScope> phase;
  phase.emplace(ctx, Phase::router);
  check(balance.z_alpha == 0.0f || s.logits, "internal: the router z-loss needs the saved logits");
  float* logits = s.logits ? s.logits : s.scores;  // scores overwrite the logits when they are not kept
  linear_forward(ctx, x, w.router, logits, N, D, E);
  router_scores_forward(logits, s.scores, N, E, c.scoring_func);
  route_tokens(c, s.scores, w.router_bias, s.expert, s.weight, N);
  force_routes(c, ctx.forced_routing, s.scores, s.expert, s.weight, N);

  // (Until this was set for both branches, the local experts' forward was charged to the router:
  // `moe bench` showed the router at 11 % of a step where it takes 0.5 %.)
  phase.emplace(ctx, Phase::routed_experts);
  if (remote)
    remote->forward(ctx, c, w, moe_layer, x, s, N);
  else
    local_experts_forward(ctx, c, w, x, s, N);

  phase.emplace(ctx, Phase::dense_ffn);
  if (Is > 0)
    ffn_forward(ctx, {w.shared_gate, w.shared_up, w.shared_down}, x, out, {s.shared_g, s.shared_u, s.shared_a}, N, D,
                Is);
  else
    std::fill_n(out, N * D, 0.0f);

  phase.emplace(ctx, Phase::routed_experts);
  // Scatter back: out[t] += Σ_k w_tk · y[row(t, k)].
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    float* o = out + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const float wk = s.weight[t * K + k];
      const float* y = s.y_rows + int64_t(s.slot_row[t * K + k]) * D;
      for (int64_t i = 0; i < D; ++i) o[i] += wk * y[i];
    }
  }

  phase.emplace(ctx, Phase::balancing);
  s.balance_loss = 0.0;
  if (balance.aux_alpha > 0) s.balance_loss += aux_loss(s.scores, s.expert, N, E, K, balance.aux_alpha, nullptr, 0);
  if (balance.seq_aux_alpha > 0)
    s.balance_loss += seq_aux_loss(s.scores, s.expert, B, T, E, K, balance.seq_aux_alpha, nullptr, 0);
  s.z_loss = balance.z_alpha > 0 ? router_z_loss(s.logits, N, E, balance.z_alpha, nullptr, 0) : 0.0;
}

void moe_backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw, const float* x,
                  const float* d_out, float* dx, const MoeSaved& s, const MoeScratch& scratch, int64_t B, int64_t T,
                  const BalanceLossConfig& balance, float loss_scale, RemoteExperts* remote, int64_t moe_layer) {
  const int64_t N = B * T, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t D = c.hidden_size, Is = c.shared_intermediate();

  // Through the weighted sum: d_rows = w · d_out[token], d_weight = <d_out[token], y_row>.
  std::optional<PhaseScope> phase;
  phase.emplace(ctx, Phase::routed_experts);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    const float* g = d_out + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = s.slot_row[t * K + k];
      const float wk = s.weight[t * K + k];
      const float* y = s.y_rows + row * D;
      float* d = scratch.d_rows + row * D;
      float dot = 0.0f;
      for (int64_t i = 0; i < D; ++i) dot += g[i] * y[i], d[i] = wk * g[i];
      scratch.d_weight[t * K + k] = dot;
    }
  }
  if (remote)
    remote->backward(ctx, c, w, gw, moe_layer, s, scratch.d_rows, scratch.dx_rows, N);
  else
    local_experts_backward(ctx, c, w, gw, s, scratch);

  phase.emplace(ctx, Phase::dense_ffn);
  if (Is > 0)
    ffn_backward(ctx, {w.shared_gate, w.shared_up, w.shared_down}, {gw.shared_gate, gw.shared_up, gw.shared_down}, x,
                 d_out, dx, {s.shared_g, s.shared_u, s.shared_a}, scratch.ffn, N, D, Is, false);
  else
    std::fill_n(dx, N * D, 0.0f);

  phase.emplace(ctx, Phase::routed_experts);
  // Gather the routed rows' input gradients back to their tokens.
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    float* d = dx + t * D;
    for (int64_t k = 0; k < K; ++k) {
      const float* r = scratch.dx_rows + int64_t(s.slot_row[t * K + k]) * D;
      for (int64_t i = 0; i < D; ++i) d[i] += r[i];
    }
  }

  // Router: gradients reach the scores through the gate weights and the balance losses.
  phase.emplace(ctx, Phase::router);
  std::fill_n(scratch.d_scores, N * E, 0.0f);
  route_weights_backward(c, s.scores, s.expert, scratch.d_weight, scratch.d_scores, N);
  phase.emplace(ctx, Phase::balancing);
  if (balance.aux_alpha > 0 && balance.aux_step_fractions)
    aux_loss_backward(s.scores, balance.aux_step_fractions + moe_layer * E, N, E, balance.aux_alpha, scratch.d_scores,
                      loss_scale);
  else if (balance.aux_alpha > 0)
    aux_loss(s.scores, s.expert, N, E, K, balance.aux_alpha, scratch.d_scores, loss_scale);
  if (balance.seq_aux_alpha > 0)
    seq_aux_loss(s.scores, s.expert, B, T, E, K, balance.seq_aux_alpha, scratch.d_scores, loss_scale);
  phase.emplace(ctx, Phase::router);
  router_scores_backward(s.scores, scratch.d_scores, scratch.d_logits, N, E, c.scoring_func);
  if (balance.z_alpha > 0) {
    PhaseScope z(ctx, Phase::balancing);
    router_z_loss(s.logits, N, E, balance.z_alpha, scratch.d_logits, loss_scale);
  }
  linear_backward(ctx, x, w.router, scratch.d_logits, dx, gw.router, N, D, E, /*accumulate_dx=*/true);
}

}  // namespace moe
