// GQA and MLA attention blocks; each backward mirrors its forward in reverse order.
#include "model/attention_block.hpp"

#include <algorithm>

#include "ops/attention.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"

namespace moe {

namespace {

constexpr float kLatentNormEps = kMlaLatentNormEps;

void gqa_forward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, LayerActivations& a, Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size;
  const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, hd = c.head_dim;
  linear_forward(ctx, a.xn1, lw.q_proj, ws.q_flat, N, D, c.q_dim());
  linear_forward(ctx, a.xn1, lw.k_proj, ws.k_flat, N, D, c.kv_dim());
  linear_forward(ctx, a.xn1, lw.v_proj, ws.v_flat, N, D, c.kv_dim());
  rope_forward(model.rope, ws.q_flat, a.q, B, T, H, 0);
  rope_forward(model.rope, ws.k_flat, a.k, B, T, Hkv, 0);
  split_heads(ws.v_flat, a.v, B, T, Hkv, hd);
  attention_forward(ctx, {B, T, H, Hkv, hd}, a.q, a.k, a.v, a.probs, a.attn_heads);
  merge_heads(a.attn_heads, a.attn, B, T, H, hd);
}

void gqa_backward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, const LayerWeights& lg,
                  const LayerActivations& a, Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size;
  const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, hd = c.head_dim;
  // ws.q_flat holds d attn (from the caller); forward scratch is free in backward.
  split_heads(ws.q_flat, ws.d_heads, B, T, H, hd);
  attention_backward(ctx, {B, T, H, Hkv, hd}, a.q, a.k, a.v, a.probs, ws.d_heads, ws.d_probs, ws.dq, ws.dk, ws.dv);
  rope_backward(model.rope, ws.dq, ws.q_flat, B, T, H, 0);
  rope_backward(model.rope, ws.dk, ws.k_flat, B, T, Hkv, 0);
  merge_heads(ws.dv, ws.v_flat, B, T, Hkv, hd);
  linear_backward(ctx, a.xn1, lw.q_proj, ws.q_flat, ws.d_norm, lg.q_proj, N, D, c.q_dim(), false);
  linear_backward(ctx, a.xn1, lw.k_proj, ws.k_flat, ws.d_norm, lg.k_proj, N, D, c.kv_dim(), true);
  linear_backward(ctx, a.xn1, lw.v_proj, ws.v_flat, ws.d_norm, lg.v_proj, N, D, c.kv_dim(), true);
}

// MLA, materialised. Shapes: N = B·T tokens, H heads, dn/dr/dv the no-RoPE, RoPE and value head
// widths, dqk = dn + dr, rq/rkv the latent ranks.
//   q      (N, H·dqk)   = q_proj(xn)  or  q_b_proj(rmsnorm(q_a_proj(xn)))
//   c_kv   (N, rkv)     = kv_a_proj_with_mqa(xn)[:, :rkv],  k_rope_raw (N, dr) = [:, rkv:]
//   kv     (N, H·(dn+dv)) = kv_b_proj(rmsnorm(c_kv)), per head [k_nope | v]
//   heads: q_h = [q_nope | rope(q_rope)], k_h = [k_nope_h | rope(k_rope_raw)] (one rotated key
//   part shared by every head), v_h; scores scaled by dqk^-1/2.
void mla_forward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, LayerActivations& a, Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size, H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dqk = dn + dr;
  const int64_t rkv = *c.kv_lora_rank;
  float* q = ws.q_flat;           // (N, H·dqk)
  float* k_rope_raw = ws.k_flat;  // (N, dr)
  float* kv = ws.v_flat;          // (N, H·(dn+dv))
  if (c.q_lora_rank) {
    const int64_t rq = *c.q_lora_rank;
    linear_forward(ctx, a.xn1, lw.q_a_proj, a.q_lat, N, D, rq);
    rmsnorm_forward(a.q_lat, lw.q_a_layernorm, a.q_lat_n, a.rstd_q, N, rq, kLatentNormEps);
    linear_forward(ctx, a.q_lat_n, lw.q_b_proj, q, N, rq, H * dqk);
  } else {
    linear_forward(ctx, a.xn1, lw.q_proj, q, N, D, H * dqk);
  }
  // kv_a_proj_with_mqa's rows are [c_kv | k_rope]: two products over its two row blocks.
  linear_forward(ctx, a.xn1, lw.kv_a_proj_with_mqa, a.c_kv, N, D, rkv);
  linear_forward(ctx, a.xn1, lw.kv_a_proj_with_mqa + rkv * D, k_rope_raw, N, D, dr);
  rmsnorm_forward(a.c_kv, lw.kv_a_layernorm, a.ckv_n, a.rstd_kv, N, rkv, kLatentNormEps);
  linear_forward(ctx, a.ckv_n, lw.kv_b_proj, kv, N, rkv, H * (dn + dv));
  mla_rotate_key(model.rope, k_rope_raw, a.k_rope, B, T, 0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t;
      for (int64_t h = 0; h < H; ++h) {
        const float* qn = q + n * H * dqk + h * dqk;
        const float* kvh = kv + n * H * (dn + dv) + h * (dn + dv);
        float* qh = a.q + ((b * H + h) * T + t) * dqk;
        float* kh = a.k + ((b * H + h) * T + t) * dqk;
        std::copy_n(qn, dn, qh);
        rope_rotate(model.rope, qn + dn, qh + dn, t);
        std::copy_n(kvh, dn, kh);
        std::copy_n(a.k_rope + n * dr, dr, kh + dn);
        std::copy_n(kvh + dn, dv, a.v + ((b * H + h) * T + t) * dv);
      }
    }
  attention_forward(ctx, {B, T, H, H, dqk, dv}, a.q, a.k, a.v, a.probs, a.attn_heads);
  merge_heads(a.attn_heads, a.attn, B, T, H, dv);
}

void mla_backward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, const LayerWeights& lg,
                  const LayerActivations& a, Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t B = ws.B, T = ws.T, N = B * T, D = c.hidden_size, H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dqk = dn + dr;
  const int64_t rkv = *c.kv_lora_rank;
  // ws.q_flat holds d attn (N, H·dv) from the caller.
  split_heads(ws.q_flat, ws.d_heads, B, T, H, dv);
  attention_backward(ctx, {B, T, H, H, dqk, dv}, a.q, a.k, a.v, a.probs, ws.d_heads, ws.d_probs, ws.dq, ws.dk, ws.dv);
  float* d_q = ws.q_flat;           // (N, H·dqk)
  float* d_k_rope_raw = ws.k_flat;  // (N, dr)
  float* d_kv = ws.v_flat;          // (N, H·(dn+dv))
  const int64_t rq = c.q_lora_rank.value_or(0);
  float* d_ckv_n = ws.d_latent;         // (N, rkv)
  float* d_c_kv = d_ckv_n + N * rkv;    // (N, rkv)
  float* d_q_lat_n = d_c_kv + N * rkv;  // (N, rq)
  float* d_q_lat = d_q_lat_n + N * rq;  // (N, rq)
  float* rope_sum = d_q_lat + N * rq;   // (N, dr)
  // Undo the head assembly; the shared rotated key collects the gradient of every head, and the
  // rotation is linear, so the sum is rotated back once.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t;
      float* rotated_sum = rope_sum + n * dr;
      std::fill_n(rotated_sum, dr, 0.0f);
      for (int64_t h = 0; h < H; ++h) {
        const float* dqh = ws.dq + ((b * H + h) * T + t) * dqk;
        const float* dkh = ws.dk + ((b * H + h) * T + t) * dqk;
        float* dqn = d_q + n * H * dqk + h * dqk;
        float* dkvh = d_kv + n * H * (dn + dv) + h * (dn + dv);
        std::copy_n(dqh, dn, dqn);
        rope_rotate_back(model.rope, dqh + dn, dqn + dn, t);
        std::copy_n(dkh, dn, dkvh);
        std::copy_n(ws.dv + ((b * H + h) * T + t) * dv, dv, dkvh + dn);
        for (int64_t i = 0; i < dr; ++i) rotated_sum[i] += dkh[dn + i];
      }
      rope_rotate_back(model.rope, rotated_sum, d_k_rope_raw + n * dr, t);
    }
  // kv = kv_b_proj(rmsnorm(c_kv)); [c_kv | k_rope_raw] = kv_a_proj_with_mqa(xn)
  linear_backward(ctx, a.ckv_n, lw.kv_b_proj, d_kv, d_ckv_n, lg.kv_b_proj, N, rkv, H * (dn + dv), false);
  std::fill_n(d_c_kv, N * rkv, 0.0f);
  rmsnorm_backward(a.c_kv, lw.kv_a_layernorm, a.rstd_kv, d_ckv_n, d_c_kv, lg.kv_a_layernorm, N, rkv);
  linear_backward(ctx, a.xn1, lw.kv_a_proj_with_mqa, d_c_kv, ws.d_norm, lg.kv_a_proj_with_mqa, N, D, rkv, false);
  linear_backward(ctx, a.xn1, lw.kv_a_proj_with_mqa + rkv * D, d_k_rope_raw, ws.d_norm, lg.kv_a_proj_with_mqa + rkv * D,
                  N, D, dr, true);
  if (c.q_lora_rank) {
    linear_backward(ctx, a.q_lat_n, lw.q_b_proj, d_q, d_q_lat_n, lg.q_b_proj, N, rq, H * dqk, false);
    std::fill_n(d_q_lat, N * rq, 0.0f);
    rmsnorm_backward(a.q_lat, lw.q_a_layernorm, a.rstd_q, d_q_lat_n, d_q_lat, lg.q_a_layernorm, N, rq);
    linear_backward(ctx, a.xn1, lw.q_a_proj, d_q_lat, ws.d_norm, lg.q_a_proj, N, D, rq, true);
  } else {
    linear_backward(ctx, a.xn1, lw.q_proj, d_q, ws.d_norm, lg.q_proj, N, D, H * dqk, true);
  }
}

}  // namespace

void mla_rotate_key(const RopeTable& rope, const float* raw, float* rotated, int64_t B, int64_t T, int64_t pos0) {
  const int64_t dr = rope.head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) rope_rotate(rope, raw + (b * T + t) * dr, rotated + (b * T + t) * dr, pos0 + t);
}

void attention_block_forward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, LayerActivations& a,
                             Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t N = ws.B * ws.T, D = c.hidden_size;
  if (c.mla())
    mla_forward(ctx, model, lw, a, ws);
  else
    gqa_forward(ctx, model, lw, a, ws);
  gemm(ctx, false, true, N, D, c.attn_dim(), a.attn, c.attn_dim(), lw.o_proj, c.attn_dim(), a.h, D,
       /*accumulate=*/true);
}

void attention_block_backward(ComputeContext& ctx, const Model& model, const LayerWeights& lw, const LayerWeights& lg,
                              const LayerActivations& a, Workspace& ws) {
  const ModelConfig& c = model.config;
  const int64_t N = ws.B * ws.T, D = c.hidden_size;
  // h = x + o_proj(attn): d attn into q_flat (forward scratch is free in backward).
  linear_backward(ctx, a.attn, lw.o_proj, ws.d_resid, ws.q_flat, lg.o_proj, N, c.attn_dim(), D, false);
  if (c.mla())
    mla_backward(ctx, model, lw, lg, a, ws);
  else
    gqa_backward(ctx, model, lw, lg, a, ws);
}

}  // namespace moe
