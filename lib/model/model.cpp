// Forward and backward of the whole model; backward mirrors forward in exact reverse order.
#include "model/model.hpp"

#include <algorithm>
#include <cstring>
#include <optional>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/rng.hpp"
#include "model/attention_block.hpp"
#include "ops/embedding.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/swiglu.hpp"

namespace moe {

Model::Model(const ModelConfig& c, ExpertShard shard_, bool with_grads)
    : config((validate(c, "model config"), c)),
      layout(make_layout(c, shard_)),
      params(layout.total),
      grads(with_grads ? layout.total : 0),
      weights(bind_weights(c, params.data(), shard_)),
      grad(with_grads ? bind_weights(c, grads.data(), shard_) : ModelWeights{}),
      rope(c.head_dim, c.max_position_embeddings, c.rope_theta, c.mla() && c.rope_interleave),
      shard(shard_) {
  check(shard.first >= 0 && shard.first + shard.size(c) <= c.n_routed_experts, "internal: expert shard out of range");
}

void Model::init(uint64_t seed) {
  const double stddev = config.initializer_range;
  const int64_t n = int64_t(layout.tensors.size());
  // Every tensor draws from its own stream, seeded by the seed and the tensor's name (each routed
  // expert's tensors have their own names), so an expert block is initialised without drawing the
  // rest of the model and holds exactly its values in the whole model; the streams are independent,
  // so the tensors are filled in parallel with the same result for any thread count.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < n; ++t) {
    const TensorSpec& spec = layout.tensors[size_t(t)];
    float* p = params.data() + spec.offset;
    if (spec.role == TensorRole::norm) {
      std::fill_n(p, spec.numel, 1.0f);
    } else if (spec.role == TensorRole::router_bias) {
      std::fill_n(p, spec.numel, 0.0f);
    } else {
      Rng rng(fnv1a(spec.name.data(), spec.name.size(), fnv1a_word(kFnvOffset, seed)));
      for (int64_t i = 0; i < spec.numel; ++i) p[i] = float(rng.normal() * stddev);
    }
  }
}

const TensorSpec* Model::find(const std::string& name) const {
  for (const TensorSpec& spec : layout.tensors)
    if (spec.name == name) return &spec;
  return nullptr;
}

Workspace::Workspace(const ModelConfig& c, int64_t B_, int64_t T_, bool training_, bool with_mtp,
                     RemoteExperts* remote_)
    : B(B_), T(T_), training(training_), mtp(with_mtp && c.mtp()), remote(remote_) {
  // RoPE tables and the attention layout stop at the model's context.
  check(B > 0 && T > 0 && T <= c.max_position_embeddings, "sequence length " + std::to_string(T) + " must be in 1.." +
                                                              std::to_string(c.max_position_embeddings) +
                                                              " (max_position_embeddings)");
  const int64_t N = B * T, D = c.hidden_size, H = c.num_attention_heads;
  const int64_t V = c.vocab_size, L = c.num_hidden_layers, I = c.intermediate_size;
  // Head widths (see LayerActivations): query/key heads of hd, value heads of hv, Hk key heads.
  const bool mla = c.mla();
  const int64_t hd = mla ? c.qk_head_dim() : c.head_dim, hv = mla ? c.v_head_dim : c.head_dim;
  const int64_t Hk = mla ? H : c.num_key_value_heads, qd = H * hd, kd = Hk * hd, vd = Hk * hv, od = H * hv;
  const int64_t rq = c.q_lora_rank.value_or(0), rkv = c.kv_lora_rank.value_or(0), dr = c.qk_rope_head_dim;
  // Pass 1 counts, pass 2 hands out pointers: one allocation per element type.
  auto plan = [&](Bump<float>& f, Bump<int32_t>& n) {
    tokens = n.take(N);
    targets = n.take(N);
    resid.assign(size_t(L + 1), nullptr);
    for (auto& r : resid) r = f.take(N * D);
    const int64_t layer_count = L + (mtp ? 1 : 0);
    layers.assign(size_t(layer_count), LayerActivations{});
    for (int64_t l = 0; l < layer_count; ++l) {
      LayerActivations& a = layers[size_t(l)];
      a.xn1 = f.take(N * D), a.rstd1 = f.take(N);
      a.q = f.take(N * qd), a.k = f.take(N * kd), a.v = f.take(N * vd);
      a.probs = f.take(B * H * T * T);
      a.attn_heads = f.take(N * od), a.attn = f.take(N * od);
      if (mla) {
        a.q_lat = f.take(N * rq), a.q_lat_n = f.take(N * rq), a.rstd_q = f.take(rq > 0 ? N : 0);
        a.c_kv = f.take(N * rkv), a.ckv_n = f.take(N * rkv), a.rstd_kv = f.take(N), a.k_rope = f.take(N * dr);
      }
      a.h = f.take(N * D), a.xn2 = f.take(N * D), a.rstd2 = f.take(N);
      if (!c.is_moe_layer(l)) {
        a.dense = {f.take(N * I), f.take(N * I), f.take(N * I)};
        continue;
      }
      const int64_t K = c.num_experts_per_tok, E = c.n_routed_experts, Im = c.moe_intermediate_size;
      const int64_t Is = c.shared_intermediate();
      MoeSaved& m = a.moe;
      m.scores = f.take(N * E), m.weight = f.take(N * K);
      if (training) m.logits = f.take(N * E);  // for the router z-loss
      // Remote experts: the slots' outputs come back in slot order, N*K rows, without padding.
      const int64_t R = remote ? N * K : moe_row_capacity(c, N), local_rows = remote ? 0 : R;
      m.x_rows = f.take(local_rows * D), m.y_rows = f.take(R * D);
      m.g = f.take(local_rows * Im), m.u = f.take(local_rows * Im), m.a = f.take(local_rows * Im);
      m.shared_g = f.take(N * Is), m.shared_u = f.take(N * Is), m.shared_a = f.take(N * Is);
      m.expert = n.take(N * K), m.counts = n.take(E), m.offsets = n.take(E + 1);
      m.slot_row = n.take(N * K), m.row_slot = n.take(R), m.cursor = n.take(E);
      m.row_align = int32_t(expert_row_align(c, N));
    }
    xnf = f.take(N * D), rstdf = f.take(N), logits = f.take(N * V);
    q_flat = f.take(N * std::max(qd, od));
    k_flat = f.take(mla ? N * dr : N * kd);
    v_flat = f.take(mla ? N * H * (c.qk_nope_head_dim + c.v_head_dim) : N * vd);
    ffn_out = f.take(N * D);
    if (mtp) {
      mtp_targets = n.take(N);
      mtp_embed = f.take(N * D), mtp_en = f.take(N * D), mtp_rstd_e = f.take(N);
      mtp_hn = f.take(N * D), mtp_rstd_h = f.take(N), mtp_cat = f.take(2 * N * D);
      mtp_x = f.take(N * D), mtp_out = f.take(N * D), mtp_xf = f.take(N * D), mtp_rstd_f = f.take(N);
      mtp_logits = f.take(N * V);
      if (training) d_mtp_h = f.take(N * D), d_mtp_cat = f.take(2 * N * D);
    }
    if (!training) return;
    d_resid = f.take(N * D), d_norm = f.take(N * D);
    d_heads = f.take(N * od), dq = f.take(N * qd), dk = f.take(N * kd), dv = f.take(N * vd);
    if (mla) d_latent = f.take(N * (2 * rkv + 2 * rq + dr));
    d_probs = f.take(B * H * T * T);
    d_logits = f.take(N * V);
    ffn_scratch = f.take(2 * N * I);
    // Any MoE layer among this workspace's (the MTP module's layer can be the only one).
    if (layer_count > c.first_k_dense_replace) {
      const int64_t K = c.num_experts_per_tok, E = c.n_routed_experts;
      MoeScratch& m = moe_scratch;
      const int64_t R = remote ? N * K : moe_row_capacity(c, N), local_rows = remote ? 0 : R;
      m.d_rows = f.take(R * D), m.dx_rows = f.take(R * D);
      m.ffn = f.take(2 * std::max(local_rows * c.moe_intermediate_size, N * c.shared_intermediate()));
      m.d_weight = f.take(N * K), m.d_scores = f.take(N * E), m.d_logits = f.take(N * E);
    }
  };
  Bump<float> count_f;
  Bump<int32_t> count_i;
  plan(count_f, count_i);
  floats.resize(count_f.used());
  ints.resize(count_i.used());
  Bump<float> take_f(floats.data());
  Bump<int32_t> take_i(ints.data());
  plan(take_f, take_i);
}

ExpertTally::ExpertTally(const ModelConfig& c)
    : counts(size_t(c.num_routed_layers()), std::vector<int64_t>(size_t(c.n_routed_experts))) {}

void ExpertTally::add(const ModelConfig& c, const Workspace& ws, int64_t tokens) {
  const int64_t layers = c.num_hidden_layers + (ws.mtp_ran ? 1 : 0);  // the MTP layer when it ran
  for (int64_t l = c.first_k_dense_replace; l < layers; ++l) {
    const int32_t* expert = ws.layers[size_t(l)].moe.expert;
    std::vector<int64_t>& layer = counts[size_t(c.moe_layer_index(l))];
    for (int64_t j = 0; j < tokens * c.num_experts_per_tok; ++j) ++layer[size_t(expert[j])];
  }
}

namespace {

// Decoder layer l (the MTP module's is l = num_hidden_layers): out = h + ffn(rmsnorm2(h)),
// h = x + attention(rmsnorm1(x)); what backward needs is saved in ws.layers[l].
void layer_forward(ComputeContext& ctx, const Model& model, int64_t l, const float* x, float* out, Workspace& ws,
                   const BalanceLossConfig& balance) {
  const ModelConfig& c = model.config;
  const LayerWeights& lw = model.weights.layers[size_t(l)];
  LayerActivations& a = ws.layers[size_t(l)];
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size;
  const float eps = float(c.rms_norm_eps);
  // h = x + o_proj(attention(...)) over rmsnorm(x): GQA or MLA (attention_block.hpp)
  {
    PhaseScope phase(ctx, Phase::other);
    rmsnorm_forward(x, lw.input_layernorm, a.xn1, a.rstd1, N, D, eps);
  }
  std::optional<PhaseScope> phase;
  phase.emplace(ctx, Phase::attention);
  std::copy_n(x, N * D, a.h);
  attention_block_forward(ctx, model, lw, a, ws);
  // x' = h + ffn(rmsnorm(h))
  phase.emplace(ctx, Phase::other);
  rmsnorm_forward(a.h, lw.post_attention_layernorm, a.xn2, a.rstd2, N, D, eps);
  phase.reset();
  if (c.is_moe_layer(l)) {
    moe_forward(ctx, c, lw.moe, a.xn2, ws.ffn_out, a.moe, B, T, balance, ws.remote, c.moe_layer_index(l));
    ws.balance_loss += a.moe.balance_loss;
    ws.z_loss += a.moe.z_loss;
  } else {
    PhaseScope dense(ctx, Phase::dense_ffn);
    ffn_forward(ctx, {lw.gate_proj, lw.up_proj, lw.down_proj}, a.xn2, ws.ffn_out, a.dense, N, D, c.intermediate_size);
  }
  phase.emplace(ctx, Phase::other);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * D; ++i) out[i] = a.h[i] + ws.ffn_out[i];
}

// Backward of layer_forward for input x: ws.d_resid holds d loss / d out on entry and d loss / d x
// on return.
void layer_backward(ComputeContext& ctx, Model& model, int64_t l, const float* x, Workspace& ws,
                    const BalanceLossConfig& balance, float loss_scale) {
  const ModelConfig& c = model.config;
  const LayerWeights& lw = model.weights.layers[size_t(l)];
  const LayerWeights& lg = model.grad.layers[size_t(l)];
  LayerActivations& a = ws.layers[size_t(l)];
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size;
  // x' = h + ffn(rmsnorm(h)): d_resid flows straight to h and through the FFN branch.
  if (c.is_moe_layer(l)) {
    moe_backward(ctx, c, lw.moe, lg.moe, a.xn2, ws.d_resid, ws.d_norm, a.moe, ws.moe_scratch, B, T, balance, loss_scale,
                 ws.remote, c.moe_layer_index(l));
  } else {
    PhaseScope dense(ctx, Phase::dense_ffn);
    ffn_backward(ctx, {lw.gate_proj, lw.up_proj, lw.down_proj}, {lg.gate_proj, lg.up_proj, lg.down_proj}, a.xn2,
                 ws.d_resid, ws.d_norm, a.dense, ws.ffn_scratch, N, D, c.intermediate_size, false);
  }
  std::optional<PhaseScope> phase;
  phase.emplace(ctx, Phase::other);
  rmsnorm_backward(a.h, lw.post_attention_layernorm, a.rstd2, ws.d_norm, ws.d_resid, lg.post_attention_layernorm, N, D);
  phase.emplace(ctx, Phase::attention);
  attention_block_backward(ctx, model, lw, lg, a, ws);
  phase.emplace(ctx, Phase::other);
  rmsnorm_backward(x, lw.input_layernorm, a.rstd1, ws.d_norm, ws.d_resid, lg.input_layernorm, N, D);
}

// The MTP module over every position of the window (causal, so each position sees the same as in
// a shorter window): h_i = resid[L][i], t_{i+1} = targets[i], predicting t_{i+2} = targets[i+1].
// Returns Σ CE over the B·(T-1) positions that have that target.
double mtp_forward(ComputeContext& ctx, const Model& model, Workspace& ws, const BalanceLossConfig& balance) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  const float eps = float(c.rms_norm_eps);
  {
    PhaseScope phase(ctx, Phase::other);
    embedding_forward(w.embed_tokens, ws.targets, ws.mtp_embed, N, D);
    rmsnorm_forward(ws.mtp_embed, w.mtp.enorm, ws.mtp_en, ws.mtp_rstd_e, N, D, eps);
    rmsnorm_forward(ws.resid[size_t(L)], w.mtp.hnorm, ws.mtp_hn, ws.mtp_rstd_h, N, D, eps);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {  // the embedding half first, as DeepSeek's weights are read
      std::copy_n(ws.mtp_en + n * D, D, ws.mtp_cat + n * 2 * D);
      std::copy_n(ws.mtp_hn + n * D, D, ws.mtp_cat + n * 2 * D + D);
    }
  }
  {
    PhaseScope phase(ctx, Phase::attention);
    linear_forward(ctx, ws.mtp_cat, w.mtp.eh_proj, ws.mtp_x, N, 2 * D, D);
  }
  layer_forward(ctx, model, L, ws.mtp_x, ws.mtp_out, ws, balance);
  PhaseScope phase(ctx, Phase::head_loss);
  rmsnorm_forward(ws.mtp_out, w.mtp.shared_head_norm, ws.mtp_xf, ws.mtp_rstd_f, N, D, eps);
  linear_forward(ctx, ws.mtp_xf, w.lm_head, ws.mtp_logits, N, D, V);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) ws.mtp_targets[b * T + t] = t + 1 < T ? ws.targets[b * T + t + 1] : kIgnoreTarget;
  ws.mtp_tokens = B * (T - 1);
  return cross_entropy_forward_backward(ws.mtp_logits, ws.mtp_targets, nullptr, N, V, 0.0f);
}

// Backward of mtp_forward for loss_scale · mtp_weight · mean MTP CE: the module's gradients, the
// shared embedding's and head's, and d loss / d resid[L] into ws.d_mtp_h.
void mtp_backward(ComputeContext& ctx, Model& model, Workspace& ws, const BalanceLossConfig& balance, float loss_scale,
                  float mtp_weight) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const ModelWeights& g = model.grad;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  {
    PhaseScope phase(ctx, Phase::head_loss);
    cross_entropy_forward_backward(ws.mtp_logits, ws.mtp_targets, ws.d_logits, N, V,
                                   loss_scale * mtp_weight / float(ws.mtp_tokens));
    linear_backward(ctx, ws.mtp_xf, w.lm_head, ws.d_logits, ws.d_norm, g.lm_head, N, D, V, false);
    std::fill_n(ws.d_resid, N * D, 0.0f);
    rmsnorm_backward(ws.mtp_out, w.mtp.shared_head_norm, ws.mtp_rstd_f, ws.d_norm, ws.d_resid, g.mtp.shared_head_norm,
                     N, D);
  }
  layer_backward(ctx, model, L, ws.mtp_x, ws, balance, loss_scale);
  PhaseScope phase(ctx, Phase::other);
  linear_backward(ctx, ws.mtp_cat, w.mtp.eh_proj, ws.d_resid, ws.d_mtp_cat, g.mtp.eh_proj, N, 2 * D, D, false);
  // Split [d enorm | d hnorm] into two (N, D) blocks (d_norm and d_resid are free now).
  float* d_en = ws.d_norm;
  float* d_hn = ws.d_resid;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    std::copy_n(ws.d_mtp_cat + n * 2 * D, D, d_en + n * D);
    std::copy_n(ws.d_mtp_cat + n * 2 * D + D, D, d_hn + n * D);
  }
  std::fill_n(ws.d_mtp_h, N * D, 0.0f);
  rmsnorm_backward(ws.resid[size_t(L)], w.mtp.hnorm, ws.mtp_rstd_h, d_hn, ws.d_mtp_h, g.mtp.hnorm, N, D);
  // d embed(t_{i+1}): d_mtp_cat is free again; its first N·D floats hold it.
  float* d_embed = ws.d_mtp_cat;
  std::fill_n(d_embed, N * D, 0.0f);
  rmsnorm_backward(ws.mtp_embed, w.mtp.enorm, ws.mtp_rstd_e, d_en, d_embed, g.mtp.enorm, N, D);
  embedding_backward(ws.targets, d_embed, g.embed_tokens, N, D);
}

}  // namespace

double model_forward(ComputeContext& ctx, const Model& model, Workspace& ws, const int32_t* tokens,
                     const int32_t* targets, const BalanceLossConfig& balance) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size, V = c.vocab_size;
  const float eps = float(c.rms_norm_eps);
  for (int64_t i = 0; i < N; ++i)
    check(tokens[i] >= 0 && tokens[i] < V, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
  if (targets)
    for (int64_t i = 0; i < N; ++i)
      check(targets[i] >= 0 && targets[i] < V,
            "target id " + std::to_string(targets[i]) + " is outside the vocabulary");
  std::copy_n(tokens, N, ws.tokens);
  if (targets) std::copy_n(targets, N, ws.targets);

  {
    PhaseScope phase(ctx, Phase::other);
    embedding_forward(w.embed_tokens, ws.tokens, ws.resid[0], N, D);
  }
  ws.balance_loss = 0.0;
  ws.z_loss = 0.0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    layer_forward(ctx, model, l, ws.resid[size_t(l)], ws.resid[size_t(l + 1)], ws, balance);
  ws.mtp_ran = ws.mtp && ws.run_mtp && targets && T > 1;
  ws.mtp_loss_sum = ws.mtp_ran ? mtp_forward(ctx, model, ws, balance) : 0.0;
  if (!ws.mtp_ran) ws.mtp_tokens = 0;
  PhaseScope phase(ctx, Phase::head_loss);
  rmsnorm_forward(ws.resid[size_t(c.num_hidden_layers)], w.norm, ws.xnf, ws.rstdf, N, D, eps);
  linear_forward(ctx, ws.xnf, w.lm_head, ws.logits, N, D, V);
  if (!targets) return 0.0;
  return cross_entropy_forward_backward(ws.logits, ws.targets, nullptr, N, V, 0.0f) / double(N);
}

void model_backward(ComputeContext& ctx, Model& model, Workspace& ws, const BalanceLossConfig& balance,
                    float loss_scale, float mtp_weight) {
  check(ws.training, "internal: backward needs a training workspace");
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const ModelWeights& g = model.grad;
  const int64_t N = ws.B * ws.T, D = c.hidden_size, V = c.vocab_size;
  // The MTP branch first: it ends in the gradient it sends into the main model's last hidden state.
  const bool mtp = ws.mtp_ran && mtp_weight > 0.0f;
  if (mtp) mtp_backward(ctx, model, ws, balance, loss_scale, mtp_weight);
  {
    PhaseScope phase(ctx, Phase::head_loss);
    cross_entropy_forward_backward(ws.logits, ws.targets, ws.d_logits, N, V, loss_scale / float(N));
    linear_backward(ctx, ws.xnf, w.lm_head, ws.d_logits, ws.d_norm, g.lm_head, N, D, V, false);
    if (mtp)
      std::copy_n(ws.d_mtp_h, N * D, ws.d_resid);
    else
      std::fill_n(ws.d_resid, N * D, 0.0f);
    rmsnorm_backward(ws.resid[size_t(c.num_hidden_layers)], w.norm, ws.rstdf, ws.d_norm, ws.d_resid, g.norm, N, D);
  }
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l)
    layer_backward(ctx, model, l, ws.resid[size_t(l)], ws, balance, loss_scale);
  PhaseScope phase(ctx, Phase::other);
  embedding_backward(ws.tokens, ws.d_resid, g.embed_tokens, N, D);
}

}  // namespace moe
