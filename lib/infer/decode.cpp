#include "infer/decode.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "core/error.hpp"
#include "core/vmath.hpp"
#include "ops/embedding.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"
#include "moe/router.hpp"

namespace moe {

KvCache::KvCache(const ModelConfig& c, int64_t batch_, int64_t max_len_)
    : layers(c.num_hidden_layers), batch(batch_), max_len(max_len_), kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim), k(layers * batch_ * kv_heads * max_len_ * head_dim),
      v(layers * batch_ * kv_heads * max_len_ * head_dim), length(size_t(batch_), 0) {}

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

Decoder::Decoder(const Model& model, int64_t batch, int64_t max_len)
    : model_(model), cache_(model.config, batch, max_len), step_ws_(model.config, batch, 1, false),
      attn_scratch_(batch * model.config.num_attention_heads * max_len), max_threads_(std::max(1, omp_get_max_threads())) {
  const ModelConfig& c = model.config;
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t rows = batch * std::max<int64_t>(K, 1);
  const int64_t width = std::max({c.intermediate_size, c.moe_intermediate_size,
                                  c.n_shared_experts * c.moe_intermediate_size});
  scratch_.resize(size_t(max_threads_));
  for (ThreadScratch& s : scratch_) {
    Bump<float> f;
    f.take(batch * D), f.take(batch * D), f.take(batch * D);  // x, h, xn
    f.take(batch * E), f.take(batch * E), f.take(rows);       // router logits, scores, weights
    f.take(rows * D), f.take(rows * D);                       // gathered rows, expert outputs
    f.take(rows * width), f.take(rows * width);               // gate, up
    f.take(c.head_dim), f.take(rows);                         // one rotated query, row scales
    s.floats.resize(f.used());
    Bump<int32_t> n;
    n.take(rows), n.take(E + 1), n.take(E + 1), n.take(rows);  // experts, counts, offsets, slots
    s.ints.resize(n.used());
    s.route.resize(c);
  }
  partial_.resize(2 * max_threads_ * batch * D);
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
  (void)ctx;  // decoding multiplies through dnnl_sgemm on each thread (see the header)
  const ModelConfig& c = model_.config;
  check(n >= 0 && n <= cache_.batch, "internal: more decode rows than the cache holds");
  for (int64_t i = 0; i < n; ++i) {
    check(tokens[i] >= 0 && tokens[i] < c.vocab_size,
          "token id " + std::to_string(tokens[i]) + " is outside the vocabulary");
    check(seq[i] >= 0 && seq[i] < cache_.batch, "internal: decode sequence outside the cache");
    check(cache_.length[size_t(seq[i])] < cache_.max_len, "internal: KV cache is full");
  }
  if (n == 0) return step_ws_.logits;
  std::atomic<bool> ok{true};
#pragma omp parallel num_threads(max_threads_)
  step_thread(seq, tokens, n, ok);
  check(ok.load(), "oneDNN sgemm failed during decoding");
  for (int64_t i = 0; i < n; ++i) ++cache_.length[size_t(seq[i])];
  if (tally) tally->add(c, step_ws_, n);
  return step_ws_.logits;
}

void Decoder::step_thread(const int32_t* seq, const int32_t* tokens, int64_t n, std::atomic<bool>& ok) {
  const int t = omp_get_thread_num(), T = omp_get_num_threads();
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  Workspace& ws = step_ws_;
  const int64_t D = c.hidden_size, V = c.vocab_size, Hkv = c.num_key_value_heads, E = c.n_routed_experts;
  const int64_t K = c.num_experts_per_tok, hd = c.head_dim, g = c.num_attention_heads / Hkv;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), L = cache_.max_len, B = cache_.batch;
  const int64_t Im = c.moe_intermediate_size, Is = c.n_shared_experts * Im, I = c.intermediate_size;
  const int64_t rows_cap = B * std::max<int64_t>(K, 1);
  const int64_t width = std::max({I, Im, Is});
  const float eps = float(c.rms_norm_eps), scale = 1.0f / std::sqrt(float(hd));

  Bump<float> f(scratch_[size_t(t)].floats.data());
  float* x = f.take(B * D);
  float* h = f.take(B * D);
  float* xn = f.take(B * D);
  float* router_logits = f.take(B * E);
  float* scores = f.take(B * E);
  float* weight = f.take(rows_cap);
  float* x_rows = f.take(rows_cap * D);
  float* y_rows = f.take(rows_cap * D);
  float* gate = f.take(rows_cap * width);
  float* up = f.take(rows_cap * width);
  float* q_rot = f.take(hd);
  float* row_scale = f.take(rows_cap);
  Bump<int32_t> ib(scratch_[size_t(t)].ints.data());
  int32_t* expert = ib.take(rows_cap);
  int32_t* counts = ib.take(E + 1);
  int32_t* offsets = ib.take(E + 1);
  int32_t* slots = ib.take(rows_cap);
  RouteScratch& route = scratch_[size_t(t)].route;
  auto partial = [&](int which, int thread) { return partial_.data() + ((which * max_threads_ + thread) * B) * D; };
  auto mm = [&](bool trans_b, int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* Bm,
                int64_t ldb, float* C, int64_t ldc, bool acc) {
    if (!sgemm_rowmajor(trans_b, M, N, Kd, A, lda, Bm, ldb, C, ldc, acc)) ok.store(false);
  };
  // out (rows, D) = sum of all threads' partial sums of `which`, added to `base`, in thread order.
  auto reduce = [&](const float* base, int which, float* out) {
    for (int64_t i = 0; i < n * D; ++i) out[i] = base[i];
    for (int u = 0; u < T; ++u) {
      const float* p = partial(which, u);
      for (int64_t i = 0; i < n * D; ++i) out[i] += p[i];
    }
  };
  // A SwiGLU FFN slice: rows of xs (M, D) through gate/up rows [r.begin, r.end) of (·, D) weights
  // and the matching columns of down (D, ld_down) -> y (M, D), written or accumulated. `scale_rows`
  // (M) multiplies each row's activation (the routed gate weights) when given.
  auto ffn_slice = [&](const float* xs, int64_t M, const float* wg, const float* wu, const float* wd, int64_t ld_down,
                       Range r, const float* scale_rows, float* y, bool acc) {
    const int64_t W = r.size();
    if (W == 0) {
      if (!acc) std::fill_n(y, M * D, 0.0f);
      return;
    }
    mm(true, M, W, D, xs, D, wg + r.begin * D, D, gate, W, false);
    mm(true, M, W, D, xs, D, wu + r.begin * D, D, up, W, false);
    for (int64_t m = 0; m < M; ++m) {
      const float s = scale_rows ? scale_rows[m] : 1.0f;
      for (int64_t j = 0; j < W; ++j) gate[m * W + j] = swiglu_value(gate[m * W + j], up[m * W + j]) * s;
    }
    mm(true, M, D, W, gate, W, wd + r.begin, ld_down, y, D, acc);
  };

  for (int64_t i = 0; i < n; ++i) std::copy_n(w.embed_tokens + int64_t(tokens[i]) * D, D, x + i * D);
  const Range heads = slice(Hkv, t, T, 1);
  const int64_t q0 = heads.begin * g * hd, nq = heads.size() * g * hd, k0 = heads.begin * hd, nk = heads.size() * hd;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    LayerActivations& a = ws.layers[size_t(l)];
    // Phase 1: attention of this thread's heads.
    float* part = partial(0, t);
    if (nq > 0) {
      for (int64_t i = 0; i < n; ++i) rmsnorm_row(x + i * D, lw.input_layernorm, xn + i * D, D, eps);
      mm(true, n, nq, D, xn, D, lw.q_proj + q0 * D, D, ws.q_flat + q0, qd, false);
      mm(true, n, nk, D, xn, D, lw.k_proj + k0 * D, D, ws.k_flat + k0, kvd, false);
      mm(true, n, nk, D, xn, D, lw.v_proj + k0 * D, D, ws.v_flat + k0, kvd, false);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = seq[i], pos = cache_.length[size_t(b)], len = pos + 1;
        for (int64_t kh = heads.begin; kh < heads.end; ++kh) {
          rope_rotate(model_.rope, ws.k_flat + i * kvd + kh * hd, cache_.k_at(l, b, kh) + pos * hd, pos);
          std::copy_n(ws.v_flat + i * kvd + kh * hd, hd, cache_.v_at(l, b, kh) + pos * hd);
        }
        for (int64_t qh = heads.begin * g; qh < heads.end * g; ++qh) {
          rope_rotate(model_.rope, ws.q_flat + i * qd + qh * hd, q_rot, pos);
          const float* keys = cache_.k_at(l, b, qh / g);
          const float* values = cache_.v_at(l, b, qh / g);
          float* p = attn_scratch_.data() + (i * c.num_attention_heads + qh) * L;
          float max = -INFINITY;
          for (int64_t j = 0; j < len; ++j) {
            // A vector reduction: a scalar chain of hd dependent adds per key would dominate the step.
            float dot = 0.0f;
            const float* key = keys + j * hd;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < hd; ++d) dot += q_rot[d] * key[d];
            p[j] = dot * scale;
            max = std::max(max, p[j]);
          }
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < len; ++j) sum += (p[j] = exp_fast(p[j] - max));
          float* out = a.attn + i * qd + qh * hd;
          std::fill_n(out, hd, 0.0f);
          for (int64_t j = 0; j < len; ++j) {
            const float pj = p[j] / sum;
            for (int64_t d = 0; d < hd; ++d) out[d] += pj * values[j * hd + d];
          }
        }
      }
      // o_proj (D, qd): this thread's columns -> a partial sum over its heads.
      mm(true, n, D, nq, a.attn + q0, qd, lw.o_proj + q0, qd, part, D, false);
    } else {
      std::fill_n(part, n * D, 0.0f);
    }
#pragma omp barrier
    // Phase 2: every thread forms the same h and normed input; then its slice of the FFN.
    reduce(x, 0, h);
    for (int64_t i = 0; i < n; ++i) rmsnorm_row(h + i * D, lw.post_attention_layernorm, xn + i * D, D, eps);
    part = partial(1, t);
    if (c.is_moe_layer(l)) {
      mm(true, n, E, D, xn, D, lw.moe.router, D, router_logits, E, false);
      for (int64_t i = 0; i < n; ++i) {
        router_scores_row(router_logits + i * E, scores + i * E, E, c.scoring_func);
        route_token(c, scores + i * E, lw.moe.router_bias, expert + i * K, weight + i * K, route);
      }
      if (t == 0) std::copy_n(expert, n * K, a.moe.expert);
      ffn_slice(xn, n, lw.moe.shared_gate, lw.moe.shared_up, lw.moe.shared_down, Is, slice(Is, t, T, kSliceAlign), nullptr,
                part, false);
      // Tokens grouped by expert (counting sort), so an expert chosen twice is read once.
      std::fill_n(counts, E + 1, 0);
      for (int64_t j = 0; j < n * K; ++j) ++counts[expert[j]];
      offsets[0] = 0;
      for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
      std::copy_n(offsets, E, counts);  // reused as fill cursors
      for (int64_t j = 0; j < n * K; ++j) slots[counts[expert[j]]++] = int32_t(j);
      const Range r = slice(Im, t, T, kSliceAlign);
      for (int64_t e = 0; e < E; ++e) {
        const int64_t first = offsets[e], M = offsets[e + 1] - first;
        if (M == 0 || r.size() == 0) continue;
        for (int64_t m = 0; m < M; ++m) {
          const int32_t j = slots[first + m];
          std::copy_n(xn + (j / K) * D, D, x_rows + m * D);
          row_scale[m] = weight[j];
        }
        ffn_slice(x_rows, M, lw.moe.experts_gate + e * Im * D, lw.moe.experts_up + e * Im * D, lw.moe.experts_down + e * D * Im,
                  Im, r, row_scale, y_rows, false);
        for (int64_t m = 0; m < M; ++m) {
          float* dst = part + (slots[first + m] / K) * D;
          const float* src = y_rows + m * D;
          for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
        }
      }
    } else {
      ffn_slice(xn, n, lw.gate_proj, lw.up_proj, lw.down_proj, I, slice(I, t, T, kSliceAlign), nullptr, part, false);
    }
#pragma omp barrier
    reduce(h, 1, x);
  }
  const Range vr = slice(V, t, T, kSliceAlign);
  for (int64_t i = 0; i < n; ++i) rmsnorm_row(x + i * D, w.norm, xn + i * D, D, eps);
  mm(true, n, vr.size(), D, xn, D, w.lm_head + vr.begin * D, D, ws.logits + vr.begin, V, false);
}

}  // namespace moe
