// The whole model against an independent double-precision forward written from the spec (issue 2)
// that reads every weight by its checkpoint name, and model_backward against central differences
// of the loss at sampled coordinates of every tensor in the layout.
#include <functional>
#include <limits>
#include <map>

#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "model/model.hpp"

namespace {

struct Variant {
  const char* name;
  moe::ModelConfig config;
  double mtp_weight = 0.0;  // λ of the multi-token-prediction loss (models with the MTP module)
};

std::vector<Variant> variants() {
  moe::ModelConfig a;
  a.vocab_size = 256, a.hidden_size = 16, a.num_hidden_layers = 3, a.first_k_dense_replace = 1;
  a.num_attention_heads = 2, a.num_key_value_heads = 1, a.head_dim = 8;  // GQA
  a.intermediate_size = 24, a.moe_intermediate_size = 8, a.n_shared_experts = 1;
  a.n_routed_experts = 8, a.num_experts_per_tok = 2, a.n_group = 2, a.topk_group = 1;
  a.routed_scaling_factor = 2.5, a.norm_topk_prob = true, a.scoring_func = moe::ScoringFunc::sigmoid;
  a.rms_norm_eps = 1e-6, a.rope_theta = 10000.0, a.max_position_embeddings = 16;
  a.initializer_range = 0.3;
  moe::ModelConfig b = a;  // softmax scores, no normalisation, MHA, two shared experts, no groups
  b.num_hidden_layers = 2, b.num_key_value_heads = 2, b.n_shared_experts = 2, b.n_routed_experts = 4;
  b.n_group = 1, b.topk_group = 1, b.norm_topk_prob = false, b.routed_scaling_factor = 1.0;
  b.scoring_func = moe::ScoringFunc::softmax, b.rope_theta = 100.0;
  // Multi-head latent attention (DeepSeek-V3): with a query latent and adjacent-pair RoPE, and
  // without (q_proj) and with half-split RoPE; d_v differs from d_n + d_r.
  moe::ModelConfig m = a;
  m.q_lora_rank = 12, m.kv_lora_rank = 10, m.qk_nope_head_dim = 6, m.qk_rope_head_dim = 4, m.v_head_dim = 5;
  m.num_attention_heads = 3, m.num_key_value_heads = 3, m.head_dim = 4, m.rope_interleave = true;
  m.rms_norm_eps = 1e-5;  // differs from the latent norms' fixed 1e-6, so a mix-up shows
  moe::ModelConfig n = m;
  n.q_lora_rank.reset(), n.rope_interleave = false, n.num_hidden_layers = 2;
  // DeepSeek-V3's multi-token-prediction module on top: its layer (index L) is MoE.
  moe::ModelConfig t = n;
  t.num_nextn_predict_layers = 1;
  // HF's rule for the module's layer too: with every main layer dense it can be the only MoE
  // layer; with first_k_dense_replace past it, it is dense.
  moe::ModelConfig u = t, v = t;
  u.first_k_dense_replace = u.num_hidden_layers, v.first_k_dense_replace = v.num_hidden_layers + 1;
  return {{"sigmoid, grouped, GQA", a},
          {"softmax, MHA, no norm", b},
          {"MLA, q latent, interleaved RoPE", m},
          {"MLA, q_proj, half-split RoPE", n},
          {"MLA + MTP (lambda 0.3)", t, 0.3},
          {"MLA + MTP, dense main layers: the module's is the only MoE layer", u, 0.3},
          {"MLA + MTP, all dense: the module's layer too", v, 0.3}};
}

struct ReferenceResult {
  ref::DVec logits;       // (N, V)
  double loss = 0.0;      // mean cross-entropy
  double mtp_loss = 0.0;  // MTP: mean CE of t_{i+2} over B·(T-1) positions
  ref::DVec mtp_logits;   // (N, V), MTP models
  double total(double mtp_weight) const { return loss + mtp_weight * mtp_loss; }
  std::map<int64_t, std::vector<ref::Route>> routes;  // per MoE layer, per token
};

using Lookup = std::function<const float*(const std::string&)>;

// x' = h + ffn(rmsnorm(h)): SwiGLU on dense layers, the DeepSeek-V3 MoE on the others.
ref::DVec ffn_reference(const moe::ModelConfig& c, const Lookup& W, const std::string& p, const ref::DVec& h, int64_t N,
                        int64_t l, ReferenceResult& result) {
  const int64_t D = c.hidden_size;
  const ref::DVec hn = ref::rmsnorm(h.data(), W(p + "post_attention_layernorm.weight"), N, D, c.rms_norm_eps);
  ref::DVec f;
  if (l < c.first_k_dense_replace) {
    f = ref::ffn(hn.data(), W(p + "mlp.gate_proj.weight"), W(p + "mlp.up_proj.weight"), W(p + "mlp.down_proj.weight"),
                 N, D, c.intermediate_size);
  } else {
    ref::MoeLayerRef mw;
    mw.router = W(p + "mlp.gate.weight");
    mw.bias = W(p + "mlp.gate.e_score_correction_bias");
    for (int64_t j = 0; j < c.n_routed_experts; ++j) {
      const std::string e = p + "mlp.experts." + std::to_string(j) + ".";
      mw.gate.push_back(W(e + "gate_proj.weight"));
      mw.up.push_back(W(e + "up_proj.weight"));
      mw.down.push_back(W(e + "down_proj.weight"));
    }
    if (c.n_shared_experts > 0) {
      mw.shared_gate = W(p + "mlp.shared_experts.gate_proj.weight");
      mw.shared_up = W(p + "mlp.shared_experts.up_proj.weight");
      mw.shared_down = W(p + "mlp.shared_experts.down_proj.weight");
    }
    f = ref::moe_layer(c, mw, hn.data(), N, &result.routes[l]);
  }
  ref::DVec out(h.size());
  for (size_t i = 0; i < h.size(); ++i) out[i] = h[i] + f[i];
  return out;
}

// Multi-head latent attention as Hugging Face DeepseekV3Attention computes it (eager), in double:
// queries directly or through the normed latent, keys and values from the normed kv latent, one
// rotated key part shared by every head, scale (d_n + d_r)^-1/2. Returns (N, H * d_v).
ref::DVec mla_reference(const moe::ModelConfig& c, const Lookup& W, const std::string& p, const ref::DVec& xn,
                        int64_t B, int64_t T) {
  const int64_t N = B * T, D = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim;
  const int64_t dr = c.qk_rope_head_dim, dv = c.v_head_dim, dqk = dn + dr, rkv = *c.kv_lora_rank;
  const double latent_eps = 1e-6;  // HF builds q_a_layernorm / kv_a_layernorm with its default
  ref::DVec q;
  if (c.q_lora_rank) {
    const int64_t rq = *c.q_lora_rank;
    const ref::DVec qa = ref::linear(xn.data(), W(p + "self_attn.q_a_proj.weight"), N, D, rq);
    const ref::DVec qan = ref::rmsnorm(qa.data(), W(p + "self_attn.q_a_layernorm.weight"), N, rq, latent_eps);
    q = ref::linear(qan.data(), W(p + "self_attn.q_b_proj.weight"), N, rq, H * dqk);
  } else {
    q = ref::linear(xn.data(), W(p + "self_attn.q_proj.weight"), N, D, H * dqk);
  }
  const ref::DVec ckv_kr = ref::linear(xn.data(), W(p + "self_attn.kv_a_proj_with_mqa.weight"), N, D, rkv + dr);
  ref::DVec ckv(size_t(N * rkv));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < rkv; ++i) ckv[size_t(n * rkv + i)] = ckv_kr[size_t(n * (rkv + dr) + i)];
  const ref::DVec ckvn = ref::rmsnorm(ckv.data(), W(p + "self_attn.kv_a_layernorm.weight"), N, rkv, latent_eps);
  const ref::DVec kv = ref::linear(ckvn.data(), W(p + "self_attn.kv_b_proj.weight"), N, rkv, H * (dn + dv));
  auto rope = [&](const double* in, double* out, int64_t pos) {
    if (c.rope_interleave)
      ref::rope_vector_adjacent(in, out, dr, pos, c.rope_theta);
    else
      ref::rope_vector(in, out, dr, pos, c.rope_theta);
  };
  ref::DVec attn(size_t(N * H * dv));
  for (int64_t b = 0; b < B; ++b) {
    ref::DVec qh(size_t(H * T * dqk)), kh(size_t(H * T * dqk)), vh(size_t(H * T * dv));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t;
      std::vector<double> k_rope(static_cast<size_t>(dr));
      rope(ckv_kr.data() + n * (rkv + dr) + rkv, k_rope.data(), t);
      for (int64_t h = 0; h < H; ++h) {
        double* qo = qh.data() + (h * T + t) * dqk;
        double* ko = kh.data() + (h * T + t) * dqk;
        const double* qi = q.data() + n * H * dqk + h * dqk;
        const double* kvi = kv.data() + n * H * (dn + dv) + h * (dn + dv);
        for (int64_t i = 0; i < dn; ++i) qo[i] = qi[i], ko[i] = kvi[i];
        rope(qi + dn, qo + dn, t);
        for (int64_t i = 0; i < dr; ++i) ko[dn + i] = k_rope[size_t(i)];
        for (int64_t i = 0; i < dv; ++i) vh[size_t((h * T + t) * dv + i)] = kvi[dn + i];
      }
    }
    const ref::DVec o = ref::causal_attention(qh.data(), kh.data(), vh.data(), H, H, T, dqk, nullptr, dv);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < dv; ++i)
          attn[size_t((b * T + t) * H * dv + h * dv + i)] = o[size_t((h * T + t) * dv + i)];
  }
  return attn;
}

// The model of issue 2, in double, token by token where that is simplest. Weights are looked up
// by their Hugging Face names through model.layout, never through model.weights.
ReferenceResult reference_forward(const moe::Model& model, const std::vector<int32_t>& tokens,
                                  const std::vector<int32_t>& targets, int64_t B, int64_t T) {
  const moe::ModelConfig& c = model.config;
  const int64_t N = B * T, D = c.hidden_size, V = c.vocab_size, H = c.num_attention_heads;
  const int64_t Hkv = c.num_key_value_heads, hd = c.head_dim, qd = H * hd, kvd = Hkv * hd;
  auto W = [&](const std::string& name) -> const float* {
    const moe::TensorSpec* spec = model.find(name);
    REQUIRE(spec != nullptr);
    return model.params.data() + spec->offset;
  };
  ReferenceResult result;

  // x = embed[tokens]
  ref::DVec x(size_t(N * D));
  const float* embed = W("model.embed_tokens.weight");
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < D; ++i) x[size_t(t * D + i)] = embed[tokens[size_t(t)] * D + i];

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    // h = x + o_proj(attention(rope(q), rope(k), v)) over rmsnorm(x)
    const ref::DVec xn = ref::rmsnorm(x.data(), W(p + "input_layernorm.weight"), N, D, c.rms_norm_eps);
    if (c.mla()) {
      const ref::DVec attn = mla_reference(c, W, p, xn, B, T);
      const int64_t od = H * c.v_head_dim;
      const ref::DVec proj = ref::linear(attn.data(), W(p + "self_attn.o_proj.weight"), N, od, D);
      for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
      x = ffn_reference(c, W, p, x, N, l, result);
      continue;
    }
    const ref::DVec q = ref::linear(xn.data(), W(p + "self_attn.q_proj.weight"), N, D, qd);
    const ref::DVec k = ref::linear(xn.data(), W(p + "self_attn.k_proj.weight"), N, D, kvd);
    const ref::DVec v = ref::linear(xn.data(), W(p + "self_attn.v_proj.weight"), N, D, kvd);
    ref::DVec attn(size_t(N * qd));
    for (int64_t b = 0; b < B; ++b) {
      ref::DVec qh(size_t(H * T * hd)), kh(size_t(Hkv * T * hd)), vh(size_t(Hkv * T * hd));
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = b * T + t;
        for (int64_t h = 0; h < H; ++h)
          ref::rope_vector(q.data() + row * qd + h * hd, qh.data() + (h * T + t) * hd, hd, t, c.rope_theta);
        for (int64_t h = 0; h < Hkv; ++h) {
          ref::rope_vector(k.data() + row * kvd + h * hd, kh.data() + (h * T + t) * hd, hd, t, c.rope_theta);
          for (int64_t i = 0; i < hd; ++i) vh[size_t((h * T + t) * hd + i)] = v[size_t(row * kvd + h * hd + i)];
        }
      }
      const ref::DVec o = ref::causal_attention(qh.data(), kh.data(), vh.data(), H, Hkv, T, hd);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < hd; ++i)
            attn[size_t((b * T + t) * qd + h * hd + i)] = o[size_t((h * T + t) * hd + i)];
    }
    const ref::DVec proj = ref::linear(attn.data(), W(p + "self_attn.o_proj.weight"), N, qd, D);
    ref::DVec h(size_t(N * D));
    for (size_t i = 0; i < h.size(); ++i) h[i] = x[i] + proj[i];

    x = ffn_reference(c, W, p, h, N, l, result);
  }
  if (c.mtp()) {
    // DeepSeek-V3's MTP module as vLLM reads its weights: h'_i = eh_proj([enorm(embed(t_{i+1})) |
    // hnorm(h_i)]), one decoder layer L, shared_head.norm, the main lm_head; predicts t_{i+2}.
    const int64_t L = c.num_hidden_layers;
    const std::string p = "model.layers." + std::to_string(L) + ".";
    ref::DVec e(size_t(N * D));
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < D; ++i) e[size_t(t * D + i)] = embed[targets[size_t(t)] * D + i];
    const ref::DVec en = ref::rmsnorm(e.data(), W(p + "enorm.weight"), N, D, c.rms_norm_eps);
    const ref::DVec hn = ref::rmsnorm(x.data(), W(p + "hnorm.weight"), N, D, c.rms_norm_eps);
    ref::DVec cat(size_t(N * 2 * D));
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < D; ++i)
        cat[size_t(t * 2 * D + i)] = en[size_t(t * D + i)], cat[size_t(t * 2 * D + D + i)] = hn[size_t(t * D + i)];
    ref::DVec m = ref::linear(cat.data(), W(p + "eh_proj.weight"), N, 2 * D, D);
    const ref::DVec mn = ref::rmsnorm(m.data(), W(p + "input_layernorm.weight"), N, D, c.rms_norm_eps);
    const ref::DVec attn = mla_reference(c, W, p, mn, B, T);
    const ref::DVec proj = ref::linear(attn.data(), W(p + "self_attn.o_proj.weight"), N, H * c.v_head_dim, D);
    for (size_t i = 0; i < m.size(); ++i) m[i] += proj[i];
    m = ffn_reference(c, W, p, m, N, L, result);
    const ref::DVec mf = ref::rmsnorm(m.data(), W(p + "shared_head.norm.weight"), N, D, c.rms_norm_eps);
    result.mtp_logits = ref::linear(mf.data(), W("lm_head.weight"), N, D, V);
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 < T; ++t) {
        const int32_t target = targets[size_t(b * T + t + 1)];
        sum += ref::cross_entropy_sum(result.mtp_logits.data() + (b * T + t) * V, &target, 1, V);
      }
    result.mtp_loss = sum / double(B * (T - 1));
  }
  const ref::DVec xf = ref::rmsnorm(x.data(), W("model.norm.weight"), N, D, c.rms_norm_eps);
  result.logits = ref::linear(xf.data(), W("lm_head.weight"), N, D, V);
  result.loss = ref::cross_entropy_sum(result.logits.data(), targets.data(), N, V) / double(N);
  return result;
}

bool same_routes(const ReferenceResult& a, const ReferenceResult& b) {
  for (const auto& [layer, routes] : a.routes)
    for (size_t t = 0; t < routes.size(); ++t)
      if (routes[t].expert != b.routes.at(layer)[t].expert) return false;
  return true;
}

struct Setup {
  moe::Model model;
  int64_t B = 2, T = 8;
  std::vector<int32_t> tokens, targets;

  explicit Setup(const moe::ModelConfig& c) : model(c) {
    moe::validate(c, "test config");
    model.init(1234);
    // A non-zero routing bias, so selection really uses keys s + b (init leaves it at 0).
    moe::Rng rng(99);
    for (const moe::TensorSpec& spec : model.layout.tensors)
      if (spec.role == moe::TensorRole::router_bias)
        for (int64_t i = 0; i < spec.numel; ++i) model.params[spec.offset + i] = float(0.05 * rng.normal());
    for (int64_t i = 0; i < B * T; ++i) {
      tokens.push_back(int32_t(rng.below(uint64_t(c.vocab_size))));
      targets.push_back(int32_t(rng.below(uint64_t(c.vocab_size))));
    }
  }
};

}  // namespace

TEST_CASE("model_forward matches an independent double-precision forward from the spec", "[model]") {
  for (const Variant& variant : variants()) {
    CAPTURE(variant.name);
    Setup s(variant.config);
    const moe::ModelConfig& c = s.model.config;
    moe::ComputeContext ctx;
    moe::Workspace ws(c, s.B, s.T, /*training=*/false, /*with_mtp=*/true);
    const double loss = moe::model_forward(ctx, s.model, ws, s.tokens.data(), s.targets.data());
    const ReferenceResult want = reference_forward(s.model, s.tokens, s.targets, s.B, s.T);
    CHECK(ws.mtp_ran == c.mtp());
    if (c.mtp()) {
      CHECK(ws.mtp_tokens == s.B * (s.T - 1));
      CHECK(ws.mtp_loss_sum / double(ws.mtp_tokens) == Approx(want.mtp_loss).epsilon(1e-5));
      const ref::DVec mtp_logits = ref::to_double(ws.mtp_logits, s.B * s.T * c.vocab_size);
      CHECK(ref::max_abs_diff(mtp_logits, want.mtp_logits) < 2e-5 * std::max(1.0, ref::max_abs(want.mtp_logits)));
    }

    const int64_t N = s.B * s.T, V = c.vocab_size;
    // Float rounding through a few layers of width 16: ~1e-6 relative (observed 3e-6 absolute on
    // logits up to ~5); a wrong op is off by O(0.1).
    const ref::DVec logits = ref::to_double(ws.logits, N * V);
    CHECK(ref::max_abs_diff(logits, want.logits) < 2e-5 * std::max(1.0, ref::max_abs(want.logits)));
    CHECK(loss == Approx(want.loss).epsilon(1e-5));
    CHECK(loss > 1.0);  // ~ln 256 at this init: the comparison is not between two zeros

    // The same experts, in the same order, and the same weights, for every MoE layer and token.
    const int64_t K = c.num_experts_per_tok;
    for (const auto& [layer, routes] : want.routes) {
      const moe::MoeSaved& saved = ws.layers[size_t(layer)].moe;
      for (int64_t t = 0; t < N; ++t)
        for (int64_t k = 0; k < K; ++k) {
          REQUIRE(saved.expert[t * K + k] == routes[size_t(t)].expert[size_t(k)]);
          REQUIRE(double(saved.weight[t * K + k]) == Approx(routes[size_t(t)].weight[size_t(k)]).epsilon(1e-4));
        }
      int64_t total = 0;
      for (int64_t e = 0; e < c.n_routed_experts; ++e) total += saved.counts[e];
      CHECK(total == N * K);
    }

    // Without targets the forward returns 0 and still writes the same logits.
    moe::Workspace ws2(c, s.B, s.T, false);
    CHECK(moe::model_forward(ctx, s.model, ws2, s.tokens.data(), nullptr) == 0.0);
    CHECK(ref::to_double(ws2.logits, N * V) == logits);
  }
}

TEST_CASE("model_backward matches finite differences at sampled coordinates of every tensor", "[model]") {
  for (const Variant& variant : variants()) {
    CAPTURE(variant.name);
    Setup s(variant.config);
    moe::Model& model = s.model;
    moe::ComputeContext ctx;
    const float lambda = float(variant.mtp_weight);
    moe::Workspace ws(model.config, s.B, s.T, /*training=*/true, /*with_mtp=*/true);
    const double loss = moe::model_forward(ctx, model, ws, s.tokens.data(), s.targets.data());
    moe::model_backward(ctx, model, ws, {}, 1.0f, lambda);
    const ReferenceResult base = reference_forward(model, s.tokens, s.targets, s.B, s.T);
    REQUIRE(loss == Approx(base.loss).epsilon(1e-5));

    // The numeric gradient is taken of the double-precision reference loss (checked equal to the
    // library's above), so it carries no float noise: with h = 1e-3 the central difference is
    // exact to ~h² · f₃ ~ 1e-7 relative. The analytic gradient is the library's float backward,
    // accurate to ~1e-5 relative. Per tensor, the norm-wise relative error over its sampled
    // coordinates must stay below 1e-3 (observed ~1e-5); the floor 1e-6 on ||g_fd|| covers tensors
    // whose sampled coordinates all carry (near) zero gradient, e.g. embedding rows of absent tokens.
    const double h = 1e-3;
    int64_t checked = 0, skipped = 0;
    ref::DVec all_analytic, all_numeric;
    for (const moe::TensorSpec& spec : model.layout.tensors) {
      CAPTURE(spec.name);
      float* param = model.params.data() + spec.offset;
      const float* grad = model.grads.data() + spec.offset;
      if (spec.role == moe::TensorRole::router_bias) {
        CHECK_FALSE(spec.trainable);
        for (int64_t i = 0; i < spec.numel; ++i) REQUIRE(grad[i] == 0.0f);
        continue;
      }
      std::vector<int64_t> coords = ref::sample_coords(spec.numel, 6, uint64_t(spec.offset) + 17);
      if (spec.role == moe::TensorRole::embedding) {
        // Only the rows of tokens in the batch have a gradient (16 of 256): sample there, or a
        // backward that dropped the embedding gradient would compare zeros with zeros.
        const int64_t D = model.config.hidden_size;
        coords.clear();
        for (int64_t k = 0; k < 6; ++k) coords.push_back(int64_t(s.tokens[size_t(2 * k)]) * D + (5 * k + 1) % D);
        // The MTP module embeds t_{i+1} = targets[i]: rows of targets carry its gradient.
        if (model.config.mtp())
          for (int64_t k = 0; k < 6; ++k) coords.push_back(int64_t(s.targets[size_t(2 * k + 1)]) * D + (3 * k + 2) % D);
      }
      ref::GradCheck check;
      for (int64_t i : coords) {
        bool flipped = false;
        const double numeric = ref::central_difference(param, i, h, [&] {
          const ReferenceResult r = reference_forward(model, s.tokens, s.targets, s.B, s.T);
          flipped = flipped || !same_routes(r, base);
          return r.total(lambda);
        });
        if (flipped) {  // a routing decision changed: the loss is not differentiable across it
          ++skipped;
          continue;
        }
        ++checked;
        check.analytic.push_back(grad[i]);
        check.numeric.push_back(numeric);
      }
      const double err = ref::norm2([&] {
                           ref::DVec d(check.analytic.size());
                           for (size_t j = 0; j < d.size(); ++j) d[j] = check.analytic[j] - check.numeric[j];
                           return d;
                         }()) /
                         std::max(ref::norm2(check.numeric), 1e-6);
      CHECK(err < 1e-3);
      all_analytic.insert(all_analytic.end(), check.analytic.begin(), check.analytic.end());
      all_numeric.insert(all_numeric.end(), check.numeric.begin(), check.numeric.end());
    }
    CHECK(skipped * 10 <= checked);
    CHECK(ref::rel_error(all_analytic, all_numeric) < 1e-4);
    CHECK(ref::norm2(all_numeric) > 1e-2);  // not vacuous

    // And the library's own (float) loss agrees: central differences of model_forward itself at
    // the largest-gradient coordinates of a few tensors. Step 3e-3 balances the two errors
    // (measured against the double reference): float rounding of the loss costs ~1e-5 absolute per
    // coordinate, truncation ~1e-3 relative on the embedding (its rows, ~0.3, feed an RMSNorm).
    // Norm-wise over the ~16 coordinates that is ~1e-3; 1e-2 keeps a 10x margin.
    ref::DVec lib_analytic, lib_numeric;
    moe::Workspace probe(model.config, s.B, s.T, false, /*with_mtp=*/true);
    const char* query = !model.config.mla()        ? "model.layers.1.self_attn.q_proj.weight"
                        : model.config.q_lora_rank ? "model.layers.1.self_attn.q_a_proj.weight"
                                                   : "model.layers.1.self_attn.q_proj.weight";
    // The first MoE layer's router (the MTP module's layer may be the only one), else a dense FFN.
    const moe::ModelConfig& mc = model.config;
    const std::string ffn = mc.num_routed_layers() > 0
                                ? "model.layers." + std::to_string(mc.first_k_dense_replace) + ".mlp.gate.weight"
                                : "model.layers.1.mlp.gate_proj.weight";
    for (const std::string& name :
         {std::string("lm_head.weight"), std::string(query), ffn, std::string("model.embed_tokens.weight")}) {
      const moe::TensorSpec* spec = model.find(name);
      REQUIRE(spec != nullptr);
      float* param = model.params.data() + spec->offset;
      const float* grad = model.grads.data() + spec->offset;
      // Coordinates with the largest |gradient|, so the float-noise floor is far below them.
      std::vector<int64_t> order(static_cast<size_t>(spec->numel));
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + 4, order.end(),
                        [&](int64_t a, int64_t b) { return std::fabs(grad[a]) > std::fabs(grad[b]); });
      for (int k = 0; k < 4; ++k) {
        bool flipped = false;
        const double numeric = ref::central_difference(param, order[size_t(k)], 3e-3, [&] {
          double l = moe::model_forward(ctx, model, probe, s.tokens.data(), s.targets.data());
          if (probe.mtp_ran) l += lambda * probe.mtp_loss_sum / double(probe.mtp_tokens);
          for (const auto& [layer, routes] : base.routes)
            for (int64_t t = 0; t < s.B * s.T; ++t)
              for (int64_t j = 0; j < model.config.num_experts_per_tok; ++j)
                flipped = flipped || probe.layers[size_t(layer)].moe.expert[t * model.config.num_experts_per_tok + j] !=
                                         routes[size_t(t)].expert[size_t(j)];
          return l;
        });
        if (flipped) continue;
        lib_analytic.push_back(grad[order[size_t(k)]]);
        lib_numeric.push_back(numeric);
      }
    }
    CHECK(lib_numeric.size() >= 12);
    CHECK(ref::rel_error(lib_analytic, lib_numeric) < 1e-2);

    // Gradients accumulate: a second forward/backward on the same batch doubles them.
    const ref::Vec first(model.grads.data(), model.grads.data() + model.layout.total);
    moe::model_forward(ctx, model, ws, s.tokens.data(), s.targets.data());
    moe::model_backward(ctx, model, ws, {}, 1.0f, lambda);
    for (int64_t i = 0; i < model.layout.total; ++i)
      REQUIRE(model.grads[i] == Approx(2.0 * first[size_t(i)]).margin(1e-7));
    // loss_scale scales the whole gradient.
    model.grads.zero();
    moe::model_forward(ctx, model, ws, s.tokens.data(), s.targets.data());
    moe::model_backward(ctx, model, ws, {}, 0.5f, lambda);
    for (int64_t i = 0; i < model.layout.total; ++i)
      REQUIRE(model.grads[i] == Approx(0.5 * first[size_t(i)]).margin(1e-7));
  }
}

TEST_CASE("model forward/backward give the same result on a reused, NaN-poisoned workspace", "[model]") {
  // A training loop reuses one workspace: nothing may depend on what a previous step left there.
  const moe::ModelConfig c = variants()[0].config;
  Setup s(c);
  moe::ComputeContext ctx;
  moe::Workspace fresh(c, s.B, s.T, true), reused(c, s.B, s.T, true);
  for (int64_t i = 0; i < reused.floats.size(); ++i) reused.floats[i] = std::numeric_limits<float>::quiet_NaN();
  // A first step on other tokens leaves different routing and activations behind.
  std::vector<int32_t> other(s.tokens.rbegin(), s.tokens.rend());
  moe::model_forward(ctx, s.model, reused, other.data(), s.targets.data());
  moe::model_backward(ctx, s.model, reused);
  s.model.grads.zero();

  const double loss_reused = moe::model_forward(ctx, s.model, reused, s.tokens.data(), s.targets.data());
  moe::model_backward(ctx, s.model, reused);
  const ref::Vec grads_reused(s.model.grads.data(), s.model.grads.data() + s.model.layout.total);
  s.model.grads.zero();
  const double loss_fresh = moe::model_forward(ctx, s.model, fresh, s.tokens.data(), s.targets.data());
  moe::model_backward(ctx, s.model, fresh);
  const ref::Vec grads_fresh(s.model.grads.data(), s.model.grads.data() + s.model.layout.total);
  CHECK(loss_reused == Approx(loss_fresh).epsilon(1e-6));
  for (float g : grads_reused) REQUIRE(std::isfinite(g));
  CHECK(ref::max_abs_diff(ref::to_double(grads_reused), ref::to_double(grads_fresh)) <=
        1e-5 * ref::max_abs(ref::to_double(grads_fresh)));
}
