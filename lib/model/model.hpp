// The MoE transformer: parameters and gradients in one arena each (one layout from the tensor
// list), a workspace of activations sized once for (B, T), and the forward/backward pass.
#pragma once
#include <cstdint>
#include <vector>

#include "config/model_config.hpp"
#include "core/arena.hpp"
#include "core/compute.hpp"
#include "model/params.hpp"
#include "moe/moe_layer.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"

namespace moe {

struct Model {
  ModelConfig config;
  ParamLayout layout;
  Buffer<float> params;  // (layout.total)
  Buffer<float> grads;   // (layout.total), same layout
  ModelWeights weights;  // views into params
  ModelWeights grad;     // views into grads
  RopeTable rope;

  ExpertShard shard;  // the routed experts held here (all, unless expert-parallel)

  // with_grads = false for inference and for staging copies: no gradient arena.
  explicit Model(const ModelConfig& config, ExpertShard shard = {}, bool with_grads = true);
  Model(const Model&) = delete;
  // Matrices and embeddings ~ normal(0, initializer_range), norms 1, routing bias 0, each tensor from
  // a stream seeded by `seed` and its name: a shard gets exactly the values of its tensors in the
  // whole model initialised with the same seed, and draws nothing else.
  void init(uint64_t seed);
  const TensorSpec* find(const std::string& name) const;
};

// Activations of one layer, saved in forward for backward.
struct LayerActivations {
  float* xn1 = nullptr;    // (N, D) input_layernorm output
  float* rstd1 = nullptr;  // (N)
  // Heads: GQA hd = head_dim, hv = head_dim, Hk = Hkv; MLA hd = dn + dr, hv = dv, Hk = H.
  float* q = nullptr;           // (B, H, T, hd) after RoPE
  float* k = nullptr;           // (B, Hk, T, hd) after RoPE
  float* v = nullptr;           // (B, Hk, T, hv)
  float* probs = nullptr;       // (B, H, T, T)
  float* attn_heads = nullptr;  // (B, H, T, hv)
  float* attn = nullptr;        // (N, H*hv) merged heads, o_proj input
  // MLA only: the latents and their norms (rq, rkv: latent ranks), and the shared rotated key.
  float* q_lat = nullptr;    // (N, rq) q_a_proj output
  float* q_lat_n = nullptr;  // (N, rq) after q_a_layernorm
  float* rstd_q = nullptr;   // (N)
  float* c_kv = nullptr;     // (N, rkv) the latent part of kv_a_proj_with_mqa
  float* ckv_n = nullptr;    // (N, rkv) after kv_a_layernorm: what the decode cache holds
  float* rstd_kv = nullptr;  // (N)
  float* k_rope = nullptr;   // (N, dr) rotated shared key part: cached too
  float* h = nullptr;        // (N, D) residual after attention
  float* xn2 = nullptr;      // (N, D) post_attention_layernorm output
  float* rstd2 = nullptr;    // (N)
  FfnSaved dense{};          // (N, I) each, dense layers
  MoeSaved moe{};            // MoE layers
};

// Everything a forward/backward over B sequences of T tokens needs, allocated once.
struct Workspace {
  int64_t B = 0, T = 0;
  bool training = false;
  // Built with the multi-token-prediction module's activations: a forward with targets then also
  // runs the module (mtp_ran), which predicts t_{i+2} from h_i and t_{i+1} = targets[i], unless
  // run_mtp is cleared (training with mtp_weight 0: the module is evaluated, not trained).
  bool mtp = false, mtp_ran = false, run_mtp = true;
  Buffer<float> floats;
  Buffer<int32_t> ints;
  int32_t* tokens = nullptr;   // (N)
  int32_t* targets = nullptr;  // (N)
  std::vector<float*> resid;   // L + 1 residual states (N, D); resid[0] = embeddings
  std::vector<LayerActivations> layers;
  float* xnf = nullptr;     // (N, D) final norm output
  float* rstdf = nullptr;   // (N)
  float* logits = nullptr;  // (N, V)
  // Scratch, reused by every layer. MLA: q_flat the queries (N, H*hd), k_flat the raw shared key
  // part (N, dr), v_flat the kv_b_proj output (N, H*(dn+dv)); their gradients in backward.
  float* q_flat = nullptr;       // (N, H*max(hd, hv))
  float* k_flat = nullptr;       // (N, Hkv*hd)
  float* v_flat = nullptr;       // (N, Hkv*hd)
  float* ffn_out = nullptr;      // (N, D)
  float* d_resid = nullptr;      // (N, D)
  float* d_norm = nullptr;       // (N, D)
  float* d_heads = nullptr;      // (B, H, T, hv)
  float* dq = nullptr;           // (B, H, T, hd)
  float* dk = nullptr;           // (B, Hk, T, hd)
  float* dv = nullptr;           // (B, Hk, T, hv)
  float* d_probs = nullptr;      // (B, H, T, T)
  float* d_logits = nullptr;     // (N, V)
  float* d_latent = nullptr;     // MLA: (N, 2*rkv + 2*rq + dr) latent gradients
  float* ffn_scratch = nullptr;  // dense FFN backward
  MoeScratch moe_scratch{};
  // Routed experts computed on other processes (expert parallelism); null: here. Their inputs and
  // activations live with their owners, so such a workspace holds no rows of its own for them: only
  // each (token, expert) slot's output and, in backward, its gradients.
  RemoteExperts* const remote = nullptr;
  double balance_loss = 0.0;  // sum over MoE layers of the last forward's balance losses
  double z_loss = 0.0;        // sum over MoE layers of the last forward's router z-losses
  // The MTP module (layers[L] holds its decoder layer's activations):
  int32_t* mtp_targets = nullptr;  // (N) t_{i+2} = targets[i+1], kIgnoreTarget at each sequence's end
  float* mtp_embed = nullptr;      // (N, D) embed(t_{i+1})
  float* mtp_en = nullptr;         // (N, D) enorm(embed)
  float* mtp_rstd_e = nullptr;     // (N)
  float* mtp_hn = nullptr;         // (N, D) hnorm(h), h = resid[L]
  float* mtp_rstd_h = nullptr;     // (N)
  float* mtp_cat = nullptr;        // (N, 2D) [enorm | hnorm]
  float* mtp_x = nullptr;          // (N, D) eh_proj output: the MTP layer's input
  float* mtp_out = nullptr;        // (N, D) the MTP layer's output
  float* mtp_xf = nullptr;         // (N, D) shared_head.norm output
  float* mtp_rstd_f = nullptr;     // (N)
  float* mtp_logits = nullptr;     // (N, V)
  float* d_mtp_h = nullptr;        // (N, D) the MTP loss's gradient into resid[L]
  float* d_mtp_cat = nullptr;      // (N, 2D)
  double mtp_loss_sum = 0.0;       // Σ CE over the positions with a target (last forward)
  int64_t mtp_tokens = 0;          // those positions: B·(T-1)

  Workspace(const ModelConfig& config, int64_t B, int64_t T, bool training, bool with_mtp = false,
            RemoteExperts* remote = nullptr);
};

// Tokens routed to each expert of each MoE layer, summed over the forward passes added: the load
// statistics of training steps, evaluations and generation.
struct ExpertTally {
  std::vector<std::vector<int64_t>> counts;  // (MoE layers, E)
  explicit ExpertTally(const ModelConfig& c);
  // The routes of the first `tokens` positions of the last forward pass in `ws`.
  void add(const ModelConfig& c, const Workspace& ws, int64_t tokens);
};

// tokens (B, T) -> ws.logits; returns the mean cross-entropy over the B*T positions when targets
// is given (else 0). Tokens must lie in [0, vocab_size). With targets, a workspace built with the
// MTP module also runs it (ws.mtp_logits, ws.mtp_loss_sum over ws.mtp_tokens positions).
double model_forward(ComputeContext& ctx, const Model& model, Workspace& ws, const int32_t* tokens,
                     const int32_t* targets, const BalanceLossConfig& balance = {});

// Accumulates into model.grads the gradient of loss_scale · (mean CE + mtp_weight · mean MTP CE +
// balance losses) of the last forward (the workspace must be a training workspace; the MTP term
// needs a forward that ran the module).
void model_backward(ComputeContext& ctx, Model& model, Workspace& ws, const BalanceLossConfig& balance = {},
                    float loss_scale = 1.0f, float mtp_weight = 0.0f);

}  // namespace moe
