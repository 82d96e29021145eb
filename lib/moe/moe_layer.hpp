// The DeepSeek-V3 MoE feed-forward: shared experts on every token plus the top-K routed experts,
// computed llama.cpp-style as one stacked expert tensor driven by routing indices: count tokens
// per expert, lay their rows out contiguously once, one GEMM per active expert and projection,
// scatter back with the gate weights. The counts built for the layout are the load statistics.
#pragma once
#include <cstdint>

#include "config/model_config.hpp"
#include "core/compute.hpp"
#include "moe/router.hpp"

namespace moe {

// Each expert's rows start at a multiple of the row alignment and are zero-padded up to the next
// one, so every expert GEMM runs whole register blocks of oneDNN's sgemm kernels (measured 1-3%
// faster per training step than exact row counts on small and small-e64) at the cost of < align
// wasted rows per expert. The alignment grows with the expected rows per expert (N*K/E / 16, a
// power of two in [16, 256]) so the waste stays near 6%. (It was introduced when expert GEMMs
// were fixed-shape primitives, for which it also bounded the number of shapes.)
constexpr int64_t kExpertRowAlign = 16;
int64_t expert_row_align(const ModelConfig& c, int64_t N);

// One MoE layer's weights. Routed experts are stacked: expert j's matrix starts at j * (its size).
struct MoeWeights {
  float* router = nullptr;        // (E, D)
  float* router_bias = nullptr;   // (E) e_score_correction_bias
  float* experts_gate = nullptr;  // (E, Im, D)
  float* experts_up = nullptr;    // (E, Im, D)
  float* experts_down = nullptr;  // (E, D, Im)
  float* shared_gate = nullptr;   // (Is, D), Is = n_shared_experts * Im
  float* shared_up = nullptr;     // (Is, D)
  float* shared_down = nullptr;   // (D, Is)
};

// Balance-loss settings for one forward pass (zero alphas switch a loss off).
struct BalanceLossConfig {
  float aux_alpha = 0.0f;      // classic α·E·Σ f_i P_i over the batch
  float seq_aux_alpha = 0.0f;  // DeepSeek-V3 sequence-wise α·Σ f_i P_i, averaged over sequences
  // The classic loss's batch is the optimizer step (every micro-batch on every rank), of which this
  // pass is a part: its f_i, (MoE layers incl. the MTP layer, E), for backward. Null: the batch is
  // this pass alone (f from its own routes).
  const double* aux_step_fractions = nullptr;
  float z_alpha = 0.0f;  // router z-loss α·mean_t (logsumexp_i z_ti)² (needs MoeSaved::logits)
};

// Everything one MoE layer saves in forward for backward; N = tokens, K = experts per token.
struct MoeSaved {
  float* scores = nullptr;      // (N, E) unbiased affinities
  float* logits = nullptr;      // (N, E) router logits, kept for the z-loss (null: not kept)
  int32_t* expert = nullptr;    // (N, K) chosen experts
  float* weight = nullptr;      // (N, K) gate weights
  int32_t* counts = nullptr;    // (E) tokens routed to each expert = this pass's load
  int32_t* offsets = nullptr;   // (E + 1) first gathered row of each expert (aligned)
  int32_t* slot_row = nullptr;  // (N, K) gathered row of (token, k)
  int32_t* row_slot = nullptr;  // (R) slot (token·K + k) of each gathered row, -1 for padding; R = row capacity
  int32_t* cursor = nullptr;    // (E) counting-sort fill position
  // Row alignment of each expert's block; 1 for decoding, where a padded row would cost as much
  // as a real token.
  int32_t row_align = int32_t(kExpertRowAlign);
  float* x_rows = nullptr;    // (R, D) gathered inputs, padding rows zero
  float* g = nullptr;         // (R, Im) gate projections
  float* u = nullptr;         // (R, Im) up projections
  float* a = nullptr;         // (R, Im) silu(g) ⊙ u
  float* y_rows = nullptr;    // (R, D) expert outputs before weighting
  float* shared_g = nullptr;  // (N, Is)
  float* shared_u = nullptr;  // (N, Is)
  float* shared_a = nullptr;  // (N, Is)
  double balance_loss = 0.0;  // value of the enabled balance losses over this pass (already times α)
  double z_loss = 0.0;        // value of the router z-loss over this pass (already times α; 0 when off)
};

// Scratch for backward (not saved between passes).
struct MoeScratch {
  float* d_rows = nullptr;    // (R, D)
  float* dx_rows = nullptr;   // (R, D)
  float* ffn = nullptr;       // 2 * max(R*Im, N*Is)
  float* d_weight = nullptr;  // (N, K)
  float* d_scores = nullptr;  // (N, E)
  float* d_logits = nullptr;  // (N, E)
};

// Rows of the gathered layout for N tokens: N*K plus the worst-case padding at
// expert_row_align(c, N) (any smaller alignment fits too).
int64_t moe_row_capacity(const ModelConfig& c, int64_t N);

// Floats/ints needed by MoeSaved and MoeScratch for N tokens.
int64_t moe_saved_floats(const ModelConfig& c, int64_t N);
int64_t moe_saved_ints(const ModelConfig& c, int64_t N);
int64_t moe_scratch_floats(const ModelConfig& c, int64_t N);

// Routed experts that live elsewhere (other processes: dist/expert_parallel.hpp). The layer keeps
// routing, shared experts, the weighted scatter and their backward; the remote part computes each
// (token, expert) slot's expert output.
class RemoteExperts {
 public:
  virtual ~RemoteExperts() = default;
  // Given s.expert (N, K) for the tokens x (N, D): writes s.counts (E, this pass's load),
  // s.slot_row (N, K) and, at those rows of s.y_rows, each slot's expert output (unweighted).
  virtual void forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, int64_t moe_layer,
                       const float* x, MoeSaved& s, int64_t N) = 0;
  // Given d_rows (rows of s.slot_row: d loss / d expert output) writes dx_rows (d loss / d x of
  // each slot, same rows) and accumulates the held experts' weight gradients into gw.
  virtual void backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw,
                        int64_t moe_layer, const MoeSaved& s, const float* d_rows, float* dx_rows, int64_t N) = 0;
};

// x (N, D) normalised input -> out (N, D) written. Tokens are B sequences of T (for the
// sequence-wise loss). bias may be null.
// With `remote`, routed experts are computed by it (moe_layer: index of this MoE layer).
void moe_forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const float* x, float* out,
                 MoeSaved& saved, int64_t B, int64_t T, const BalanceLossConfig& balance,
                 RemoteExperts* remote = nullptr, int64_t moe_layer = 0);

// d_out (N, D) -> dx (N, D) written; weight grads accumulate into gw. loss_scale multiplies the
// balance-loss gradient (the same factor the caller applied to the main loss: this pass's share of
// the step's tokens, e.g. 1/accum).
void moe_backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw, const float* x,
                  const float* d_out, float* dx, const MoeSaved& saved, const MoeScratch& scratch, int64_t B, int64_t T,
                  const BalanceLossConfig& balance, float loss_scale, RemoteExperts* remote = nullptr,
                  int64_t moe_layer = 0);

}  // namespace moe
