#include "infer/decode.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "core/error.hpp"
#include "core/vmath.hpp"
#include "model/attention_block.hpp"
#include "moe/dispatch.hpp"
#include "moe/router.hpp"
#include "ops/embedding.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"

namespace moe {

KvCache::KvCache(const ModelConfig& c, int64_t batch_, int64_t max_len_)
    : layers(c.decoder_layers()),
      batch(batch_),
      max_len(max_len_),
      kv_heads(c.mla() ? 0 : c.num_key_value_heads),
      head_dim(c.head_dim),
      latent_dim(c.mla() ? *c.kv_lora_rank + c.qk_rope_head_dim : 0),
      k(layers * batch_ * kv_heads * max_len_ * head_dim),
      v(layers * batch_ * kv_heads * max_len_ * head_dim),
      latent(layers * batch_ * max_len_ * latent_dim),
      length(size_t(batch_), 0),
      mtp_length(size_t(batch_), 0) {}

namespace {

// The t-th of T contiguous slices of [0, total), each a multiple of `align` long (the last may be
// shorter, some may be empty).
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range slice(int64_t total, int t, int T, int64_t align) {
  int64_t chunk = (total + T - 1) / T;
  chunk = (chunk + align - 1) / align * align;
  const int64_t begin = std::min(total, chunk * t);
  return {begin, std::min(total, begin + chunk)};
}

// Slices of the intermediate dimension and of the vocabulary: multiples of 16 floats keep every
// thread's rows on whole cache lines.
constexpr int64_t kSliceAlign = 16;

}  // namespace

// One thread's scratch for a decode step of up to B tokens. plan() hands out the pointers from two
// bumps; Decoder's constructor runs it on counting bumps to size the buffers, so the sizes and the
// layout are one piece of code.
struct ThreadBuffers {
  float *x, *h, *xn;                            // (B, D) residual, after attention, normed
  float *router_logits, *scores;                // (B, E)
  float *weight, *row_scale;                    // (B*K) gate weights, per-row scales
  float *x_rows, *y_rows;                       // (B*K, D) gathered expert inputs and outputs
  float *gate, *up;                             // (B*K, max FFN width)
  float* q_rot;                                 // (H, head_dim) rotated queries of one KV head's group
  int32_t *expert, *counts, *offsets, *cursor;  // (B*K), (E), (E+1), (E): sort_by_expert's
  int32_t *slot_row, *row_slot;                 // (B*K) each
  // MLA only (empty for GQA): rq, rkv the latent ranks, lat = rkv + dr.
  float* q_heads;  // (B, H*(dn+dr)) queries (this thread's heads' columns)
  // The thread's hn heads only, row-major (B, hn, ·): a row's heads are one block.
  float* q_cat;      // (B, hn, lat) absorbed queries: [q_nope · W_kb | rope(q_rope)]
  float* o_lat;      // (B, hn, rkv) attention output in latent space
  float* kv_lat;     // (B, lat) kv_a_proj_with_mqa output (thread 0)
  float* head_norm;  // (B * H) 1 / softmax sum of each score row (both attentions)
  float* mtp_cat;    // (B, 2D) the MTP module's [enorm(embed(t)) | hnorm(h)]
  // int8 drafting only: quantized activation rows, their scales, the int32 products.
  uint8_t* xq;             // (rows, max(2D, width))
  float* xq_scale;         // (rows)
  int32_t* acc;            // (rows, max(D, width))
  float *pair_a, *pair_c;  // (2, widest) each: a lone row's product as a two-row one (see mm)
  int64_t widest;          // the largest N or K of a decode product

  void plan(const ModelConfig& c, int64_t B, int64_t max_len, Bump<float>& f, Bump<int32_t>& ib) {
    const int64_t D = c.hidden_size, E = c.n_routed_experts, rows = B * std::max<int64_t>(c.num_experts_per_tok, 1);
    const int64_t width = std::max({c.intermediate_size, c.moe_intermediate_size, c.shared_intermediate()});
    x = f.take(B * D), h = f.take(B * D), xn = f.take(B * D);
    router_logits = f.take(B * E), scores = f.take(B * E);
    weight = f.take(rows), row_scale = f.take(rows);
    x_rows = f.take(rows * D), y_rows = f.take(rows * D);
    gate = f.take(rows * width), up = f.take(rows * width);
    q_rot = f.take(c.num_attention_heads * c.head_dim);
    expert = ib.take(rows), counts = ib.take(E), offsets = ib.take(E + 1), cursor = ib.take(E);
    slot_row = ib.take(rows), row_slot = ib.take(rows);
    const int64_t H = c.num_attention_heads, rkv = c.kv_lora_rank.value_or(0);
    const int64_t lat = c.mla() ? rkv + c.qk_rope_head_dim : 0;
    q_heads = f.take(c.mla() ? B * H * c.qk_head_dim() : 0);
    q_cat = f.take(B * H * lat), o_lat = f.take(B * H * rkv), kv_lat = f.take(B * lat);
    head_norm = f.take(B * H);
    mtp_cat = f.take(c.mtp() ? B * 2 * D : 0);
    const int64_t qrows = c.mtp() ? rows : 0;
    xq = reinterpret_cast<uint8_t*>(ib.take((qrows * std::max(2 * D, width) + 3) / 4));
    xq_scale = f.take(qrows);
    acc = ib.take(qrows * std::max(D, width));
    widest = std::max({max_len, 2 * D, width, int64_t(c.vocab_size), E, H * c.qk_head_dim(), H * c.v_head_dim,
                       H * c.head_dim, int64_t(c.q_lora_rank.value_or(0)), lat});
    pair_a = f.take(2 * widest), pair_c = f.take(2 * widest);
  }
};

// One thread's share of one decode step (see the header): its scratch and the pieces it runs.
struct Decoder::ThreadStep {
  Decoder& d;
  const ModelConfig& c;
  const int32_t* seq;
  const int64_t* pos;  // (n) the position each row takes in its sequence
  int64_t n;
  std::atomic<bool>& ok;
  const int t, T;  // this thread, team size
  const int64_t D, E, K, B;
  ThreadBuffers buf;

  ThreadStep(Decoder& decoder, const int32_t* seq_, const int64_t* pos_, int64_t n_, std::atomic<bool>& ok_)
      : d(decoder),
        c(decoder.model_.config),
        seq(seq_),
        pos(pos_),
        n(n_),
        ok(ok_),
        t(omp_get_thread_num()),
        T(omp_get_num_threads()),
        D(c.hidden_size),
        E(c.n_routed_experts),
        K(c.num_experts_per_tok),
        B(decoder.max_rows_) {
    Bump<float> f(d.scratch_[size_t(t)].floats.data());
    Bump<int32_t> ib(d.scratch_[size_t(t)].ints.data());
    buf.plan(c, B, d.cache_.max_len, f, ib);
  }

  float* partial(int which, int thread) const {
    return d.partial_.data() + ((which * d.max_threads_ + thread) * B) * D;
  }

  // C (M, N) = A (M, Kd) · op(B) in calls of exactly d.exact_rows_ rows (core/compute.hpp,
  // sgemm_exact_rows): a row gets the same bits in a verification's batch as alone in plain
  // decoding, so greedy speculative text is plain greedy text even at a near-tie. With two rows per
  // call, a lone last row is paired with a copy of itself.
  void mm(bool trans_b, int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* Bm, int64_t ldb,
          float* C, int64_t ldc) {
    const int64_t G = d.exact_rows_;
    for (int64_t m = 0; m + G <= M; m += G)
      if (!sgemm_rowmajor(trans_b, G, N, Kd, A + m * lda, lda, Bm, ldb, C + m * ldc, ldc, false)) ok.store(false);
    if (M % G == 0) return;
    if (Kd > buf.widest || N > buf.widest) {  // cannot happen: every product of a step fits
      ok.store(false);
      return;
    }
    const float* a = A + (M - 1) * lda;
    std::copy_n(a, Kd, buf.pair_a), std::copy_n(a, Kd, buf.pair_a + Kd);
    if (!sgemm_rowmajor(trans_b, 2, N, Kd, buf.pair_a, Kd, Bm, ldb, buf.pair_c, N, false)) ok.store(false);
    std::copy_n(buf.pair_c, N, C + (M - 1) * ldc);
  }

  // An attention product of one row's heads (the thread's query heads of one token against its
  // sequence's cache): the same heads, positions and widths whether the row is decoded alone or in
  // a verification, so any grouping of them is exact. With AVX-512, one call (the cache streamed
  // once, not per head); with AVX2 one call per head, as mm does: its matrix-vector kernel is the
  // faster one there even reading the cache once per head (context 1024: ~4%, three A/B pairs).
  void mm_heads(bool trans_b, int64_t heads, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* Bm,
                int64_t ldb, float* C, int64_t ldc) {
    if (d.exact_rows_ == 1) return mm(trans_b, heads, N, Kd, A, lda, Bm, ldb, C, ldc);
    if (!sgemm_rowmajor(trans_b, heads, N, Kd, A, lda, Bm, ldb, C, ldc, false)) ok.store(false);
  }

  // out (n, D) = base + all threads' partial sums of `which`, added in thread order (the same bits
  // on every thread).
  void reduce(const float* base, int which, float* out) const {
    for (int64_t i = 0; i < n * D; ++i) out[i] = base[i];
    for (int u = 0; u < T; ++u) {
      const float* p = partial(which, u);
      for (int64_t i = 0; i < n * D; ++i) out[i] += p[i];
    }
  }

  // y (+)= x · W[rows, cols]ᵀ in int8: x (M, K, stride ldx) quantized into buf.xq first, unless
  // `quantized` says buf.xq already holds it.
  void qmm(int64_t M, const float* x, int64_t ldx, const QuantMatrix& W, int64_t row0, int64_t n_rows, int64_t col0,
           int64_t K, float* y, int64_t ldy, bool acc, bool quantized = false) {
    if (!quantized) quantize_activations(x, M, K, ldx, buf.xq, buf.xq_scale);
    if (!qgemm_rows(M, buf.xq, buf.xq_scale, W, row0, n_rows, col0, K, y, ldy, acc, buf.acc)) ok.store(false);
  }

  // One FFN as a decode step reads it: f32 gate/up (rows of D) and down (D, ld_down), or, for the
  // int8 draft, q's copy (gate/up rows from q_gate_row0, down rows from q_down_row0: one expert of
  // the stacked routed experts).
  struct FfnRef {
    const float *gate, *up, *down;
    int64_t ld_down;
    const DraftWeights::Ffn* q = nullptr;
    int64_t q_gate_row0 = 0, q_down_row0 = 0;
  };

  // A SwiGLU FFN slice: rows of xs (M, D) through gate/up rows [r.begin, r.end) and the matching
  // columns of down -> y (M, D). `scale_rows` (M) multiplies each row's
  // activation (the routed gate weights) when given.
  void ffn_slice(const float* xs, int64_t M, const FfnRef& f, Range r, const float* scale_rows, float* y) {
    const int64_t W = r.size();
    if (W == 0) {
      std::fill_n(y, M * D, 0.0f);
      return;
    }
    if (f.q) {
      qmm(M, xs, D, f.q->gate, f.q_gate_row0 + r.begin, W, 0, D, buf.gate, W, false);
      qmm(M, xs, D, f.q->up, f.q_gate_row0 + r.begin, W, 0, D, buf.up, W, false, /*quantized=*/true);
    } else {
      mm(true, M, W, D, xs, D, f.gate + r.begin * D, D, buf.gate, W);
      mm(true, M, W, D, xs, D, f.up + r.begin * D, D, buf.up, W);
    }
    for (int64_t m = 0; m < M; ++m) {
      const float s = scale_rows ? scale_rows[m] : 1.0f;
      for (int64_t j = 0; j < W; ++j) buf.gate[m * W + j] = swiglu_value(buf.gate[m * W + j], buf.up[m * W + j]) * s;
    }
    if (f.q)
      qmm(M, buf.gate, W, f.q->down, f.q_down_row0, D, r.begin, W, y, D, false);
    else
      mm(true, M, D, W, buf.gate, W, f.down + r.begin, f.ld_down, y, D);
  }

  // exp(scale · (s - max)) over the first len entries of each of `rows` score rows (stride ld), in
  // place; 1 / their sum into norm (rows) for normalise_rows, after the weighted sum (fewer
  // divisions: a head's output is narrower than its context).
  void softmax_rows(float* scores, int64_t rows, int64_t ld, int64_t len, float scale, float* norm) {
    for (int64_t h = 0; h < rows; ++h) {
      float* p = scores + h * ld;
      float max = -INFINITY;
#pragma omp simd reduction(max : max)
      for (int64_t j = 0; j < len; ++j) max = std::max(max, p[j]);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < len; ++j) sum += (p[j] = exp_fast((p[j] - max) * scale));
      norm[h] = 1.0f / sum;
    }
  }
  void normalise_rows(float* out, int64_t rows, int64_t width) const {  // by buf.head_norm
    for (int64_t h = 0; h < rows; ++h)
#pragma omp simd
      for (int64_t e = 0; e < width; ++e) out[h * width + e] *= buf.head_norm[h];
  }

  // Phase 1: q/k/v of this thread's KV heads (and their query heads) for xn, RoPE, append to the
  // cache, attend, and this thread's columns of o_proj -> partial sum 0.
  void attention(int64_t l, const LayerWeights& lw, LayerActivations& a) {
    Workspace& ws = d.step_ws_;
    KvCache& cache = d.cache_;
    const int64_t Hkv = c.num_key_value_heads, hd = c.head_dim, g = c.num_attention_heads / Hkv;
    const int64_t qd = c.q_dim(), kvd = c.kv_dim(), L = cache.max_len;
    const float scale = 1.0f / std::sqrt(float(hd));
    const Range heads = slice(Hkv, t, T, 1);
    const int64_t q0 = heads.begin * g * hd, nq = heads.size() * g * hd, k0 = heads.begin * hd, nk = heads.size() * hd;
    float* part = partial(0, t);
    if (nq == 0) {
      std::fill_n(part, n * D, 0.0f);
      return;
    }
    mm(true, n, nq, D, buf.xn, D, lw.q_proj + q0 * D, D, ws.q_flat + q0, qd);
    mm(true, n, nk, D, buf.xn, D, lw.k_proj + k0 * D, D, ws.k_flat + k0, kvd);
    mm(true, n, nk, D, buf.xn, D, lw.v_proj + k0 * D, D, ws.v_flat + k0, kvd);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = seq[i], p = pos[i], len = p + 1;
      for (int64_t kh = heads.begin; kh < heads.end; ++kh) {
        rope_rotate(d.model_.rope, ws.k_flat + i * kvd + kh * hd, cache.k_at(l, b, kh) + p * hd, p);
        std::copy_n(ws.v_flat + i * kvd + kh * hd, hd, cache.v_at(l, b, kh) + p * hd);
      }
      // Each KV head's g query heads in two products over its cached keys and values.
      for (int64_t kh = heads.begin; kh < heads.end; ++kh) {
        for (int64_t r = 0; r < g; ++r)
          rope_rotate(d.model_.rope, ws.q_flat + i * qd + (kh * g + r) * hd, buf.q_rot + r * hd, p);
        float* scores = d.attn_scratch_.data() + (i * c.num_attention_heads + kh * g) * L;  // (g, L)
        float* out = a.attn + i * qd + kh * g * hd;                                         // (g, hd)
        mm_heads(true, g, len, hd, buf.q_rot, hd, cache.k_at(l, b, kh), hd, scores, L);
        softmax_rows(scores, g, L, len, scale, buf.head_norm);
        mm_heads(false, g, hd, len, scores, L, cache.v_at(l, b, kh), hd, out, hd);
        normalise_rows(out, g, hd);
      }
    }
    // o_proj (D, qd): this thread's columns -> a partial sum over its heads.
    mm(true, n, D, nq, a.attn + q0, qd, lw.o_proj + q0, qd, part, D);
  }

  // The MLA cache rows [rmsnorm(c_kv) | rope(k_rope)] of `rows` normed inputs xn (sequence seq[i],
  // position pos[i]) in layer l.
  void append_latent(int64_t l, const LayerWeights& lw, const float* xn, const int32_t* seqs, const int64_t* positions,
                     int64_t rows) {
    const int64_t rkv = *c.kv_lora_rank, lat = rkv + c.qk_rope_head_dim;
    mm(true, rows, lat, D, xn, D, lw.kv_a_proj_with_mqa, D, buf.kv_lat, lat);
    for (int64_t i = 0; i < rows; ++i) {
      float* row = d.cache_.latent_at(l, seqs[i]) + positions[i] * lat;
      rmsnorm_row(buf.kv_lat + i * lat, lw.kv_a_layernorm, row, rkv, kMlaLatentNormEps);
      rope_rotate(d.model_.rope, buf.kv_lat + i * lat + rkv, row + rkv, positions[i]);
    }
  }

  // Phase 1 of an MLA layer, absorbed (DeepSeek's inference "absorb" path): the cache holds only
  // the normed latent and the shared rotated key, so each head's key part of kv_b_proj is folded
  // into its query (q_nope · W_kb, width rkv) and its value part applied after the weighted sum
  // over latents (W_vb · Σ p_j c_j). Scores are then one dot product of width rkv + dr per cached
  // token: [q_nope W_kb | rope(q_rope)] · [c_j | k_rope_j].
  void mla_attention(int64_t l, const LayerWeights& lw, LayerActivations& a) {
    KvCache& cache = d.cache_;
    const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
    const int64_t dqk = dn + dr, rkv = *c.kv_lora_rank, lat = rkv + dr, L = cache.max_len, qd = H * dqk;
    const float scale = 1.0f / std::sqrt(float(dqk));
    float* part = partial(0, t);
    // Before the barrier, in parallel: thread 0 appends this step's latent and rotated key to the
    // cache; the last thread projects the query latent of every row (a.q_lat_n, shared), or, with
    // q_proj, every thread projects its heads' queries. The barrier publishes both. (Every thread
    // projecting the query latent itself read q_a_proj once per thread and left the others waiting
    // for thread 0's append.)
    if (t == 0) append_latent(l, lw, buf.xn, seq, pos, n);
    const Range heads = slice(H, t, T, 1);
    const int64_t q0 = heads.begin * dqk, nq = heads.size() * dqk, hn = heads.size();
    if (c.q_lora_rank && t == T - 1) {
      const int64_t rq = *c.q_lora_rank;
      mm(true, n, rq, D, buf.xn, D, lw.q_a_proj, D, a.q_lat, rq);
      for (int64_t i = 0; i < n; ++i)
        rmsnorm_row(a.q_lat + i * rq, lw.q_a_layernorm, a.q_lat_n + i * rq, rq, kMlaLatentNormEps);
    }
    if (!c.q_lora_rank && nq > 0) mm(true, n, nq, D, buf.xn, D, lw.q_proj + q0 * D, D, buf.q_heads + q0, qd);
#pragma omp barrier
    if (nq == 0) {
      std::fill_n(part, n * D, 0.0f);
      return;
    }
    if (c.q_lora_rank) {
      const int64_t rq = *c.q_lora_rank;
      mm(true, n, nq, rq, a.q_lat_n, rq, lw.q_b_proj + q0 * rq, rq, buf.q_heads + q0, qd);
    }
    for (int64_t h = heads.begin; h < heads.end; ++h) {
      // (n, dn) · W_kb_h (dn, rkv): rows h·(dn+dv) .. +dn of kv_b_proj.
      const int64_t hh = h - heads.begin;
      mm(false, n, rkv, dn, buf.q_heads + h * dqk, qd, lw.kv_b_proj + h * (dn + dv) * rkv, rkv, buf.q_cat + hh * lat,
         hn * lat);
      for (int64_t i = 0; i < n; ++i)
        rope_rotate(d.model_.rope, buf.q_heads + i * qd + h * dqk + dn, buf.q_cat + (i * hn + hh) * lat + rkv, pos[i]);
    }
    // Per row, this thread's heads in two products: every head attends over the same cached latents
    // (one shared "key/value head"), so the cache is streamed once per thread and row, not once per
    // head, and oneDNN's kernels do the dot products and the weighted sum. One row at a time, over
    // exactly its own positions: a verification's rows get the bits plain decoding gives them (on
    // AVX2 a sum over a few more positions of weight 0 already changes them; see mm_heads).
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = pos[i] + 1;
      const float* rows = cache.latent_at(l, seq[i]);
      float* scores = d.attn_scratch_.data() + (heads.begin * n + i * hn) * L;  // (hn, L)
      float* o = buf.o_lat + i * hn * rkv;                                      // (hn, rkv)
      mm_heads(true, hn, len, lat, buf.q_cat + i * hn * lat, lat, rows, lat, scores, L);
      softmax_rows(scores, hn, L, len, scale, buf.head_norm);
      // Σ_j p_j c_j over the latent part of each cached row (its first rkv floats).
      mm_heads(false, hn, rkv, len, scores, L, rows, lat, o, rkv);
      normalise_rows(o, hn, rkv);
    }
    // out_h (n, dv) = o_lat_h (n, rkv) · W_vb_hᵀ, W_vb_h = rows h·(dn+dv)+dn .. +dv of kv_b_proj.
    for (int64_t h = heads.begin; h < heads.end; ++h)
      mm(true, n, dv, rkv, buf.o_lat + (h - heads.begin) * rkv, hn * rkv, lw.kv_b_proj + (h * (dn + dv) + dn) * rkv,
         rkv, a.attn + h * dv, H * dv);
    // o_proj (D, H·dv): this thread's heads' columns -> a partial sum.
    mm(true, n, D, heads.size() * dv, a.attn + heads.begin * dv, H * dv, lw.o_proj + heads.begin * dv, H * dv, part, D);
  }

  // Phase 2 of an MoE layer: route every token (redundantly on each thread: tiny), then this
  // thread's slice of the shared experts and of every chosen expert -> partial sum 1.
  void moe(const MoeWeights& mw, LayerActivations& a, RouteScratch& route, const DraftWeights* dq) {
    const int64_t Im = c.moe_intermediate_size, Is = c.shared_intermediate();
    float* part = partial(1, t);
    mm(true, n, E, D, buf.xn, D, mw.router, D, buf.router_logits, E);
    for (int64_t i = 0; i < n; ++i) {
      router_scores_row(buf.router_logits + i * E, buf.scores + i * E, E, c.scoring_func);
      route_token(c, buf.scores + i * E, mw.router_bias, buf.expert + i * K, buf.weight + i * K, route);
      force_route_token(c, d.forced_routing_, pos[i], buf.scores + i * E, buf.expert + i * K, buf.weight + i * K);
    }
    if (t == 0) std::copy_n(buf.expert, n * K, a.moe.expert);
    ffn_slice(buf.xn, n, {mw.shared_gate, mw.shared_up, mw.shared_down, Is, dq ? &dq->ffn : nullptr},
              slice(Is, t, T, kSliceAlign), nullptr, part);
    // Tokens grouped by expert (the shared counting sort, no padding: a padded row would cost as
    // much as a token), so an expert chosen twice is read once. Each thread takes a slice of every
    // expert's intermediate width, so a skewed load splits over the threads like any other.
    sort_by_expert(buf.expert, n * K, E, 1, buf.counts, buf.offsets, buf.cursor, buf.slot_row, buf.row_slot);
    if (t == 0)
      for (int64_t e = 0; e < E; ++e) d.experts_read_ += buf.offsets[e + 1] > buf.offsets[e];
    const Range r = slice(Im, t, T, kSliceAlign);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t first = buf.offsets[e], M = buf.offsets[e + 1] - first;
      if (M == 0 || r.size() == 0) continue;
      for (int64_t m = 0; m < M; ++m) {
        const int32_t j = buf.row_slot[first + m];
        std::copy_n(buf.xn + (j / K) * D, D, buf.x_rows + m * D);
        buf.row_scale[m] = buf.weight[j];
      }
      ffn_slice(buf.x_rows, M,
                {mw.experts_gate + e * Im * D, mw.experts_up + e * Im * D, mw.experts_down + e * D * Im, Im,
                 dq ? &dq->experts : nullptr, e * Im, e * D},
                r, buf.row_scale, buf.y_rows);
      for (int64_t m = 0; m < M; ++m) {
        float* dst = part + (buf.row_slot[first + m] / K) * D;
        const float* src = buf.y_rows + m * D;
        for (int64_t k = 0; k < D; ++k) dst[k] += src[k];
      }
    }
  }

  // Decoder layer l over the rows in buf.x (the residual stream), in place; its FFN on dq if given.
  void layer(int64_t l, const DraftWeights* dq = nullptr) {
    const LayerWeights& lw = d.model_.weights.layers[size_t(l)];
    LayerActivations& a = d.step_ws_.layers[size_t(l)];
    const float eps = float(c.rms_norm_eps);
    for (int64_t i = 0; i < n; ++i) rmsnorm_row(buf.x + i * D, lw.input_layernorm, buf.xn + i * D, D, eps);
    if (c.mla())
      mla_attention(l, lw, a);
    else
      attention(l, lw, a);
#pragma omp barrier
    // Every thread forms the same h and normed input; then its slice of the FFN.
    reduce(buf.x, 0, buf.h);
    for (int64_t i = 0; i < n; ++i) rmsnorm_row(buf.h + i * D, lw.post_attention_layernorm, buf.xn + i * D, D, eps);
    if (c.is_moe_layer(l))
      moe(lw.moe, a, d.scratch_[size_t(t)].route, dq);
    else
      ffn_slice(buf.xn, n, {lw.gate_proj, lw.up_proj, lw.down_proj, c.intermediate_size, dq ? &dq->ffn : nullptr},
                slice(c.intermediate_size, t, T, kSliceAlign), nullptr, partial(1, t));
#pragma omp barrier
    reduce(buf.h, 1, buf.x);
  }

  // rmsnorm(buf.x) with `norm`, then this thread's vocabulary slice of lm_head -> logits (n, V).
  void head(const float* norm, float* logits) {
    const int64_t V = c.vocab_size;
    const Range vr = slice(V, t, T, kSliceAlign);
    for (int64_t i = 0; i < n; ++i) rmsnorm_row(buf.x + i * D, norm, buf.xn + i * D, D, float(c.rms_norm_eps));
    mm(true, n, vr.size(), D, buf.xn, D, d.model_.weights.lm_head + vr.begin * D, D, logits + vr.begin, V);
  }

  void run(const int32_t* tokens) {
    const ModelWeights& w = d.model_.weights;
    for (int64_t i = 0; i < n; ++i) std::copy_n(w.embed_tokens + int64_t(tokens[i]) * D, D, buf.x + i * D);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) layer(l);
    if (t == 0) std::copy_n(buf.x, n * D, d.hidden_.data());  // the same bits on every thread
    head(w.norm, d.step_ws_.logits);
  }

  // The MTP module: x = eh_proj([enorm(embed(t_{i+1})) | hnorm(h_i)]), its decoder layer (cache
  // layer L), then shared_head.norm and the main lm_head. eh_proj is small: each thread computes
  // all of it rather than meeting at another barrier. The first `cache_only` rows only enter the
  // cache: a draft reads the module's output at a sequence's last row alone, and the earlier rows
  // (positions the main model verified) need nothing past their latent, so their queries,
  // attention, experts and head, a second row's worth of expert reads, are skipped.
  void run_mtp(const float* h, const int32_t* next, int64_t cache_only) {
    const ModelWeights& w = d.model_.weights;
    const int64_t L = c.num_hidden_layers;
    const float eps = float(c.rms_norm_eps);
    for (int64_t i = 0; i < n; ++i) {
      rmsnorm_row(w.embed_tokens + int64_t(next[i]) * D, w.mtp.enorm, buf.mtp_cat + i * 2 * D, D, eps);
      rmsnorm_row(h + i * D, w.mtp.hnorm, buf.mtp_cat + i * 2 * D + D, D, eps);
    }
    const DraftWeights* dq = d.draft_.get();
    if (dq)
      qmm(n, buf.mtp_cat, 2 * D, dq->eh_proj, 0, D, 0, 2 * D, buf.x, D, false);
    else
      mm(true, n, D, 2 * D, buf.mtp_cat, 2 * D, w.mtp.eh_proj, 2 * D, buf.x, D);
    if (cache_only > 0) {
      // Thread 0 appends them before the layer's first barrier, which every thread passes before
      // it reads the cache.
      const LayerWeights& lw = d.model_.weights.layers[size_t(L)];
      if (t == 0) {
        for (int64_t i = 0; i < cache_only; ++i) rmsnorm_row(buf.x + i * D, lw.input_layernorm, buf.xn + i * D, D, eps);
        append_latent(L, lw, buf.xn, seq, pos, cache_only);
      }
      std::memmove(buf.x, buf.x + cache_only * D, sizeof(float) * (n - cache_only) * D);
      seq += cache_only, pos += cache_only, n -= cache_only;
    }
    layer(L, dq);
    if (t == 0) std::copy_n(buf.x, n * D, d.mtp_hidden_.data());
    head(w.mtp.shared_head_norm, d.step_ws_.mtp_logits);
  }
};

namespace {

DraftWeights quantize_draft(const Model& model) {
  const ModelConfig& c = model.config;
  const int64_t D = c.hidden_size, L = c.num_hidden_layers;
  const LayerWeights& lw = model.weights.layers[size_t(L)];
  DraftWeights q;
  q.eh_proj = quantize_rows(model.weights.mtp.eh_proj, D, 2 * D);
  if (c.is_moe_layer(L)) {
    const int64_t Is = c.shared_intermediate(), Im = c.moe_intermediate_size, E = c.n_routed_experts;
    const MoeWeights& mw = lw.moe;
    if (Is > 0)
      q.ffn = {quantize_rows(mw.shared_gate, Is, D), quantize_rows(mw.shared_up, Is, D),
               quantize_rows(mw.shared_down, D, Is)};
    q.experts = {quantize_rows(mw.experts_gate, E * Im, D), quantize_rows(mw.experts_up, E * Im, D),
                 quantize_rows(mw.experts_down, E * D, Im)};
  } else {
    const int64_t I = c.intermediate_size;
    q.ffn = {quantize_rows(lw.gate_proj, I, D), quantize_rows(lw.up_proj, I, D), quantize_rows(lw.down_proj, D, I)};
  }
  return q;
}

}  // namespace

Decoder::Decoder(const Model& model, int64_t batch, int64_t max_len, int64_t max_rows, bool int8_draft)
    : model_(model),
      cache_(model.config, batch, max_len),
      step_ws_(model.config, max_rows > 0 ? max_rows : batch, 1, false, /*with_mtp=*/true),
      attn_scratch_((max_rows > 0 ? max_rows : batch) * model.config.num_attention_heads * max_len),
      max_threads_(std::max(1, omp_get_max_threads())),
      max_rows_(max_rows > 0 ? max_rows : batch),
      exact_rows_(sgemm_exact_rows()),
      positions_(size_t(max_rows_)),
      hidden_(max_rows_ * model.config.hidden_size),
      mtp_hidden_(model.config.mtp() ? max_rows_ * model.config.hidden_size : 0),
      mtp_seq_(size_t(max_rows_)),
      mtp_next_(size_t(max_rows_)),
      mtp_pos_(size_t(max_rows_)),
      mtp_input_(model.config.mtp() ? max_rows_ * model.config.hidden_size : 0) {
  scratch_.resize(size_t(max_threads_));
  for (ThreadScratch& s : scratch_) {
    Bump<float> f;
    Bump<int32_t> n;
    ThreadBuffers sizes;
    sizes.plan(model.config, max_rows_, max_len, f, n);
    s.floats.resize(f.used());
    s.ints.resize(n.used());
    s.route.resize(model.config);
  }
  partial_.resize(2 * max_threads_ * max_rows_ * model.config.hidden_size);
  if (int8_draft && model.config.mtp()) draft_ = std::make_unique<DraftWeights>(quantize_draft(model));
}

const float* Decoder::prefill(ComputeContext& ctx, int64_t b, const std::vector<int32_t>& prompt, ExpertTally* tally) {
  const ModelConfig& c = model_.config;
  const int64_t T = int64_t(prompt.size()), hd = c.head_dim, L = c.num_hidden_layers;
  check(T > 0 && T <= cache_.max_len, "internal: prompt does not fit the cache");
  check(cache_.length[size_t(b)] == 0, "internal: prefill into a used cache slot");
  // The prompt's own workspace: allocated once per prompt, not per token. With the MTP module the
  // forward also runs it over the prompt: position i reads t_{i+1} = prompt[i+1], so positions
  // 0 .. T-2 fill its cache (the last one waits for the token generation picks).
  Workspace ws(c, 1, T, false, /*with_mtp=*/c.mtp());
  std::vector<int32_t> next(prompt.begin() + 1, prompt.end());
  next.push_back(prompt.back());  // a placeholder for the unknown t_T; its MTP output is not kept
  model_forward(ctx, model_, ws, prompt.data(), c.mtp() ? next.data() : nullptr);
  const int64_t cached_mtp = ws.mtp_ran ? T - 1 : 0;
  for (int64_t l = 0; l < c.decoder_layers() && c.mla(); ++l) {
    if (l == L && !ws.mtp_ran) break;
    // The latent cache rows: [rmsnorm(c_kv) | rope(k_rope)] of every prompt position.
    const LayerActivations& a = ws.layers[size_t(l)];
    const int64_t rkv = *c.kv_lora_rank, dr = c.qk_rope_head_dim;
    float* rows = cache_.latent_at(l, b);
    for (int64_t t = 0; t < (l == L ? cached_mtp : T); ++t) {
      std::memcpy(rows + t * (rkv + dr), a.ckv_n + t * rkv, sizeof(float) * rkv);
      std::memcpy(rows + t * (rkv + dr) + rkv, a.k_rope + t * dr, sizeof(float) * dr);
    }
  }
  for (int64_t l = 0; l < L && !c.mla(); ++l)
    for (int64_t h = 0; h < c.num_key_value_heads; ++h) {
      // ws k/v are (1, Hkv, T, hd): each head's T rows are contiguous, as in the cache.
      std::memcpy(cache_.k_at(l, b, h), ws.layers[size_t(l)].k + h * T * hd, sizeof(float) * T * hd);
      std::memcpy(cache_.v_at(l, b, h), ws.layers[size_t(l)].v + h * T * hd, sizeof(float) * T * hd);
    }
  cache_.length[size_t(b)] = T;
  cache_.mtp_length[size_t(b)] = cached_mtp;
  ws.mtp_ran = false;  // the prompt's load is the main model's (the MTP layer's last row is a placeholder)
  if (tally) tally->add(c, ws, T);
  std::copy_n(ws.resid[size_t(L)] + (T - 1) * c.hidden_size, c.hidden_size, hidden_.data());
  // Keep the last position's logits beyond ws's lifetime.
  float* out = step_ws_.logits;
  std::memcpy(out, ws.logits + (T - 1) * c.vocab_size, sizeof(float) * c.vocab_size);
  return out;
}

void Decoder::run(const int32_t* seq, const int64_t* pos, const int32_t* tokens, const float* mtp_input, int64_t n,
                  int64_t cache_only) {
  std::atomic<bool> ok{true};
  experts_read_ = 0;
#pragma omp parallel num_threads(max_threads_)
  {
    ThreadStep step(*this, seq, pos, n, ok);
    if (mtp_input)
      step.run_mtp(mtp_input, tokens, cache_only);
    else
      step.run(tokens);
  }
  check(ok.load(), "oneDNN matrix product failed during decoding");
}

namespace {

// Positions of rows appended to sequences with `length` tokens: several rows of one sequence take
// consecutive positions. Checks the rows fit the step and the cache.
void row_positions(const int32_t* seq, int64_t n, const std::vector<int64_t>& length, int64_t batch, int64_t max_rows,
                   int64_t max_len, std::vector<int64_t>& positions) {
  check(n >= 0 && n <= max_rows, "internal: more decode rows than the decoder holds");
  for (int64_t i = 0; i < n; ++i) {
    check(seq[i] >= 0 && seq[i] < batch, "internal: decode sequence outside the cache");
    int64_t earlier = 0;
    for (int64_t j = 0; j < i; ++j) earlier += seq[j] == seq[i];
    positions[size_t(i)] = length[size_t(seq[i])] + earlier;
    check(positions[size_t(i)] < max_len, "internal: KV cache is full");
  }
}

}  // namespace

const float* Decoder::step(ComputeContext& ctx, const int32_t* seq, const int32_t* tokens, int64_t n,
                           ExpertTally* tally) {
  // Decoding multiplies through dnnl_sgemm on each thread (see the header); of ctx it reads only
  // the benchmark's forced routing.
  forced_routing_ = ctx.forced_routing;
  const ModelConfig& c = model_.config;
  for (int64_t i = 0; i < n; ++i)
    check(tokens[i] >= 0 && tokens[i] < c.vocab_size,
          "token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
  row_positions(seq, n, cache_.length, cache_.batch, max_rows_, cache_.max_len, positions_);
  experts_read_ = 0;
  if (n == 0) return step_ws_.logits;
  run(seq, positions_.data(), tokens, nullptr, n, 0);
  for (int64_t i = 0; i < n; ++i) ++cache_.length[size_t(seq[i])];
  if (tally) tally->add(c, step_ws_, n);
  return step_ws_.logits;
}

const float* Decoder::mtp_step(const int32_t* seq, const float* hidden, const int32_t* next, int64_t n,
                               ExpertTally* tally) {
  const ModelConfig& c = model_.config;
  check(c.mtp(), "internal: the model has no MTP module");
  for (int64_t i = 0; i < n; ++i)
    check(next[i] >= 0 && next[i] < c.vocab_size, "token id " + std::to_string(next[i]) + " is outside the vocabulary");
  row_positions(seq, n, cache_.mtp_length, cache_.batch, max_rows_, cache_.max_len, positions_);
  experts_read_ = 0;
  if (n == 0) return step_ws_.mtp_logits;
  // The rows in step order: those that only enter the cache (a sequence's rows before its last),
  // then each sequence's last row, in input order.
  const int64_t D = c.hidden_size;
  int64_t cache_only = 0, r = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t i = 0; i < n; ++i) {
      const bool last = std::find(seq + i + 1, seq + n, seq[i]) == seq + n;
      if (last != (pass == 1)) continue;
      cache_only += pass == 0;
      mtp_seq_[size_t(r)] = seq[i], mtp_next_[size_t(r)] = next[i], mtp_pos_[size_t(r)] = positions_[size_t(i)];
      std::copy_n(hidden + i * D, D, mtp_input_.data() + r * D);
      ++r;
    }
  run(mtp_seq_.data(), mtp_pos_.data(), mtp_next_.data(), mtp_input_.data(), n, cache_only);
  for (int64_t i = 0; i < n; ++i) ++cache_.mtp_length[size_t(seq[i])];
  if (tally && c.is_moe_layer(c.num_hidden_layers)) {
    // The MTP layer's load (the rows that ran its experts): its row of the tally (the last MoE layer).
    const int32_t* expert = step_ws_.layers[size_t(c.num_hidden_layers)].moe.expert;
    auto& row = tally->counts[size_t(c.moe_layer_index(c.num_hidden_layers))];
    for (int64_t j = 0; j < (n - cache_only) * c.num_experts_per_tok; ++j) ++row[size_t(expert[j])];
  }
  return step_ws_.mtp_logits;
}

void Decoder::truncate(int64_t b, int64_t length, int64_t mtp_length) {
  check(length <= cache_.length[size_t(b)] && mtp_length <= cache_.mtp_length[size_t(b)],
        "internal: truncate past the cached positions");
  cache_.length[size_t(b)] = length;
  cache_.mtp_length[size_t(b)] = mtp_length;
}

}  // namespace moe
