#include "infer/decode.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "ops/embedding.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"

namespace moe {

KvCache::KvCache(const ModelConfig& c, int64_t batch_, int64_t max_len_)
    : layers(c.num_hidden_layers), batch(batch_), max_len(max_len_), kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim), k(layers * batch_ * kv_heads * max_len_ * head_dim),
      v(layers * batch_ * kv_heads * max_len_ * head_dim), length(size_t(batch_), 0) {}

ExpertTally::ExpertTally(const ModelConfig& c)
    : counts(static_cast<size_t>(c.num_moe_layers()), std::vector<int64_t>(static_cast<size_t>(c.n_routed_experts))) {}

void ExpertTally::add(const ModelConfig& c, const Workspace& ws, int64_t tokens) {
  size_t m = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const int32_t* expert = ws.layers[size_t(l)].moe.expert;
    for (int64_t j = 0; j < tokens * c.num_experts_per_tok; ++j) ++counts[m][size_t(expert[j])];
    ++m;
  }
}

Decoder::Decoder(const Model& model, int64_t batch, int64_t max_len)
    : model_(model), cache_(model.config, batch, max_len), step_ws_(model.config, batch, 1, false),
      attn_scratch_(batch * model.config.num_attention_heads * max_len) {
  for (auto& layer : step_ws_.layers) layer.moe.row_align = 1;
}

const float* Decoder::prefill(ComputeContext& ctx, int64_t b, const std::vector<int32_t>& prompt, ExpertTally* tally) {
  const ModelConfig& c = model_.config;
  const int64_t T = int64_t(prompt.size()), hd = c.head_dim;
  check(T > 0 && T <= cache_.max_len, "internal: prompt does not fit the cache");
  check(cache_.length[size_t(b)] == 0, "internal: prefill into a used cache slot");
  // The prompt's own workspace: allocated once per prompt, not per token.
  Workspace ws(c, 1, T, false);
  model_forward(ctx, model_, ws, prompt.data(), nullptr);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
      // ws k/v are (1, Hkv, T, hd): each head's T rows are contiguous, as in the cache.
      std::memcpy(cache_.k_at(l, b, h), ws.layers[size_t(l)].k + h * T * hd, sizeof(float) * T * hd);
      std::memcpy(cache_.v_at(l, b, h), ws.layers[size_t(l)].v + h * T * hd, sizeof(float) * T * hd);
    }
  cache_.length[size_t(b)] = T;
  if (tally) tally->add(c, ws, T);
  // Keep the last position's logits beyond ws's lifetime.
  float* out = step_ws_.logits;
  std::memcpy(out, ws.logits + (T - 1) * c.vocab_size, sizeof(float) * c.vocab_size);
  return out;
}

const float* Decoder::step(ComputeContext& ctx, const int32_t* seq, const int32_t* tokens, int64_t n,
                           ExpertTally* tally) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  Workspace& ws = step_ws_;
  const int64_t D = c.hidden_size, V = c.vocab_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t hd = c.head_dim, g = H / Hkv, qd = c.q_dim(), kvd = c.kv_dim(), L = cache_.max_len;
  const float eps = float(c.rms_norm_eps), scale = 1.0f / std::sqrt(float(hd));
  for (int64_t i = 0; i < n; ++i) {
    check(tokens[i] >= 0 && tokens[i] < V, "token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
    check(cache_.length[size_t(seq[i])] < L, "internal: KV cache is full");
  }

  embedding_forward(w.embed_tokens, tokens, ws.resid[0], n, D);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    LayerActivations& a = ws.layers[size_t(l)];
    const float* x = ws.resid[size_t(l)];
    rmsnorm_forward(x, lw.input_layernorm, a.xn1, a.rstd1, n, D, eps);
    linear_forward(ctx, a.xn1, lw.q_proj, ws.q_flat, n, D, qd);
    linear_forward(ctx, a.xn1, lw.k_proj, ws.k_flat, n, D, kvd);
    linear_forward(ctx, a.xn1, lw.v_proj, ws.v_flat, n, D, kvd);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = seq[i], pos = cache_.length[size_t(b)];
      // (1, 1, heads, hd) -> (1, heads, 1, hd): the same memory order, rotated at `pos`.
      rope_forward(model_.rope, ws.q_flat + i * qd, a.q + i * qd, 1, 1, H, pos);
      rope_forward(model_.rope, ws.k_flat + i * kvd, a.k + i * kvd, 1, 1, Hkv, pos);
      for (int64_t h = 0; h < Hkv; ++h) {
        std::memcpy(cache_.k_at(l, b, h) + pos * hd, a.k + i * kvd + h * hd, sizeof(float) * hd);
        std::memcpy(cache_.v_at(l, b, h) + pos * hd, ws.v_flat + i * kvd + h * hd, sizeof(float) * hd);
      }
    }
    // Attention of each new token over its sequence's cache (matrix-vector work per head).
#pragma omp parallel for schedule(static)
    for (int64_t ih = 0; ih < n * H; ++ih) {
      const int64_t i = ih / H, h = ih % H, b = seq[i], len = cache_.length[size_t(b)] + 1;
      const float* q = a.q + i * qd + h * hd;
      const float* keys = cache_.k_at(l, b, h / g);
      const float* values = cache_.v_at(l, b, h / g);
      float* p = attn_scratch_.data() + ih * L;
      float max = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        float dot = 0.0f;
        for (int64_t d = 0; d < hd; ++d) dot += q[d] * keys[j * hd + d];
        p[j] = dot * scale;
        max = std::max(max, p[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < len; ++j) sum += (p[j] = std::exp(p[j] - max));
      float* out = a.attn + i * qd + h * hd;
      std::fill_n(out, hd, 0.0f);
      for (int64_t j = 0; j < len; ++j) {
        const float pj = p[j] / sum;
        for (int64_t d = 0; d < hd; ++d) out[d] += pj * values[j * hd + d];
      }
    }
    std::copy_n(x, n * D, a.h);
    gemm(ctx, false, true, n, D, qd, a.attn, qd, lw.o_proj, qd, a.h, D, /*accumulate=*/true);
    rmsnorm_forward(a.h, lw.post_attention_layernorm, a.xn2, a.rstd2, n, D, eps);
    if (c.is_moe_layer(l))
      moe_forward(ctx, c, lw, a.xn2, ws.ffn_out, a.moe, n, 1, {});
    else
      ffn_forward(ctx, {lw.gate_proj, lw.up_proj, lw.down_proj}, a.xn2, ws.ffn_out, a.dense, n, D,
                  c.intermediate_size);
    float* next = ws.resid[size_t(l + 1)];
    for (int64_t i = 0; i < n * D; ++i) next[i] = a.h[i] + ws.ffn_out[i];
  }
  for (int64_t i = 0; i < n; ++i) ++cache_.length[size_t(seq[i])];
  rmsnorm_forward(ws.resid.back(), w.norm, ws.xnf, ws.rstdf, n, D, eps);
  linear_forward(ctx, ws.xnf, w.lm_head, ws.logits, n, D, V);
  if (tally) tally->add(c, ws, n);
  return ws.logits;
}

}  // namespace moe
