// Shared helpers for the math tests: seeded random tensors, central finite differences, error
// measures, and naive double-precision reference ops written straight from the spec (issue 2),
// never from lib/'s code, so a test compares two independent derivations of the same formula.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "config/model_config.hpp"
#include "core/rng.hpp"

namespace ref {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

// ---------------------------------------------------------------------------------------------
// Random data and small utilities.

inline Vec randn(int64_t n, uint64_t seed, double stddev = 1.0, double mean = 0.0) {
  moe::Rng rng(seed);
  Vec v(static_cast<size_t>(n));
  for (auto& x : v) x = float(mean + stddev * rng.normal());
  return v;
}

inline Vec uniform(int64_t n, uint64_t seed, double lo, double hi) {
  moe::Rng rng(seed);
  Vec v(static_cast<size_t>(n));
  for (auto& x : v) x = float(lo + (hi - lo) * rng.uniform());
  return v;
}

inline DVec to_double(const float* p, int64_t n) { return DVec(p, p + n); }
inline DVec to_double(const Vec& v) { return DVec(v.begin(), v.end()); }

// Σ r_i y_i in double: the scalar loss whose gradient with respect to y is exactly r.
inline double weighted_sum(const Vec& r, const float* y) {
  double s = 0.0;
  for (size_t i = 0; i < r.size(); ++i) s += double(r[i]) * double(y[i]);
  return s;
}
inline double weighted_sum(const Vec& r, const DVec& y) {
  double s = 0.0;
  for (size_t i = 0; i < r.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

inline double norm2(const DVec& a) {
  double s = 0.0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

// ||got - want|| / ||want||, with a floor on the denominator so an all-zero reference does not
// divide by zero (the floor is far below every gradient these tests check).
inline double rel_error(const DVec& got, const DVec& want, double floor = 1e-12) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) diff += (got[i] - want[i]) * (got[i] - want[i]), ref += want[i] * want[i];
  return std::sqrt(diff) / std::max(std::sqrt(ref), floor);
}

inline double max_abs_diff(const DVec& a, const DVec& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
inline double max_abs(const DVec& a) {
  double m = 0.0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

// `count` distinct coordinates of [0, n), sorted (all of them when n <= count).
inline std::vector<int64_t> sample_coords(int64_t n, int64_t count, uint64_t seed) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  if (n <= count) return all;
  moe::Rng rng(seed);
  for (int64_t i = 0; i < count; ++i) std::swap(all[size_t(i)], all[size_t(i + int64_t(rng.below(uint64_t(n - i))))]);
  all.resize(size_t(count));
  std::sort(all.begin(), all.end());
  return all;
}

// Central difference of loss() with respect to param[i]. The step is taken on the float value,
// so the denominator is the step actually realised after rounding (x+h and x-h as floats).
inline double central_difference(float* param, int64_t i, double h, const std::function<double()>& loss) {
  const float orig = param[i];
  const float plus = float(double(orig) + h), minus = float(double(orig) - h);
  param[i] = plus;
  const double lp = loss();
  param[i] = minus;
  const double lm = loss();
  param[i] = orig;
  return (lp - lm) / (double(plus) - double(minus));
}

struct GradCheck {
  DVec analytic, numeric;
  double error() const { return rel_error(analytic, numeric); }
};

// Compares grad[i] with the central difference of loss() at every coordinate in coords.
inline GradCheck check_gradient(float* param, const float* grad, const std::vector<int64_t>& coords, double h,
                                const std::function<double()>& loss) {
  GradCheck out;
  for (int64_t i : coords) {
    out.analytic.push_back(double(grad[i]));
    out.numeric.push_back(central_difference(param, i, h, loss));
  }
  return out;
}
inline std::vector<int64_t> all_coords(int64_t n) { return sample_coords(n, n, 0); }

// Finite-difference settings of the op tests. The loss L = Σ r_i y_i is evaluated from float
// forward passes, so each evaluation carries a rounding error of about 6e-8 · sqrt(n) · |r||y|
// (~1e-6 at these sizes); divided by the 2h = 2e-2 step that is at most ~1e-4 absolute per
// coordinate, and the truncation error (h²/6) · f₃ (third derivative) is ~1e-5 relative.
// Gradients are O(0.1 .. 1), so a correct backward measures ~1e-5 norm-wise relative error over
// all coordinates (observed 4e-8 .. 4e-5), while a wrong factor, sign or missing term gives
// O(0.1 .. 1). 2e-3 leaves a 50x margin for noise and still fails any real mistake.
constexpr double kFdStep = 1e-2;
constexpr double kFdTolerance = 2e-3;

// ---------------------------------------------------------------------------------------------
// Reference ops in double. Layouts follow the spec: matrices [out, in], y = x Wᵀ.

// x (rows, in), W (out, in) -> (rows, out)
template <class TX, class TW>
DVec linear(const TX* x, const TW* W, int64_t rows, int64_t in, int64_t out) {
  DVec y(size_t(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t i = 0; i < in; ++i) s += double(x[r * in + i]) * double(W[o * in + i]);
      y[size_t(r * out + o)] = s;
    }
  return y;
}

// y = x / sqrt(mean(x²) + eps) * w, row by row.
template <class TX, class TW>
DVec rmsnorm(const TX* x, const TW* w, int64_t rows, int64_t dim, double eps) {
  DVec y(size_t(rows * dim));
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t i = 0; i < dim; ++i) ms += double(x[r * dim + i]) * double(x[r * dim + i]);
    const double inv = 1.0 / std::sqrt(ms / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) y[size_t(r * dim + i)] = double(x[r * dim + i]) * inv * double(w[i]);
  }
  return y;
}

inline double silu(double g) { return g / (1.0 + std::exp(-g)); }
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// SwiGLU FFN: down(silu(gate x) ⊙ up x); gate, up (I, D), down (D, I); x (rows, D).
template <class TX, class TW>
DVec ffn(const TX* x, const TW* gate, const TW* up, const TW* down, int64_t rows, int64_t D, int64_t I) {
  const DVec g = linear(x, gate, rows, D, I), u = linear(x, up, rows, D, I);
  DVec a(size_t(rows * I));
  for (size_t i = 0; i < a.size(); ++i) a[i] = silu(g[i]) * u[i];
  return linear(a.data(), down, rows, I, D);
}

// Rotate-half RoPE of one head vector at absolute position pos, angles computed here in double:
// inv_freq_i = theta^(-2i/hd), q' = q cos + rotate_half(q) sin, rotate_half(q) = [-q2, q1].
template <class T>
void rope_vector(const T* in, double* out, int64_t hd, int64_t pos, double theta) {
  const int64_t half = hd / 2;
  for (int64_t j = 0; j < hd; ++j) {
    const int64_t i = j % half;  // cos/sin repeated over both halves
    const double angle = double(pos) * std::pow(theta, -2.0 * double(i) / double(hd));
    const double rotated = j < half ? -double(in[j + half]) : double(in[j - half]);
    out[j] = double(in[j]) * std::cos(angle) + rotated * std::sin(angle);
  }
}

// RoPE on adjacent pairs (DeepSeek-V3's rope_interleave = true on released weights): pair i is
// (in[2i], in[2i+1]), rotated by pos * theta^(-2i/hd).
template <class T>
void rope_vector_adjacent(const T* in, double* out, int64_t hd, int64_t pos, double theta) {
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double angle = double(pos) * std::pow(theta, -2.0 * double(i) / double(hd));
    const double a = double(in[2 * i]), b = double(in[2 * i + 1]);
    out[2 * i] = a * std::cos(angle) - b * std::sin(angle);
    out[2 * i + 1] = b * std::cos(angle) + a * std::sin(angle);
  }
}

// Causal attention for one (batch) slice: q (H, T, hd), k, v (Hkv, T, hd), query head h reads kv
// head h / (H / Hkv) (Hugging Face repeat_kv). Returns out (H, T, hd) and, if asked, probs (H, T, T).
template <class T>
DVec causal_attention(const T* q, const T* k, const T* v, int64_t H, int64_t Hkv, int64_t Tn, int64_t hd,
                      DVec* probs = nullptr, int64_t hv = 0) {
  if (hv == 0) hv = hd;  // value heads as wide as query/key heads unless given (MLA: d_v)
  DVec out(size_t(H * Tn * hv), 0.0);
  if (probs) probs->assign(size_t(H * Tn * Tn), 0.0);
  const double scale = 1.0 / std::sqrt(double(hd));
  const int64_t group = H / Hkv;
  std::vector<double> p(static_cast<size_t>(Tn));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t kh = h / group;
    for (int64_t t = 0; t < Tn; ++t) {
      double max = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        double s = 0.0;
        for (int64_t i = 0; i < hd; ++i) s += double(q[(h * Tn + t) * hd + i]) * double(k[(kh * Tn + j) * hd + i]);
        p[size_t(j)] = s * scale;
        max = std::max(max, p[size_t(j)]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j <= t; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - max));
      for (int64_t j = 0; j <= t; ++j) {
        const double pj = p[size_t(j)] / sum;
        if (probs) (*probs)[size_t((h * Tn + t) * Tn + j)] = pj;
        for (int64_t i = 0; i < hv; ++i) out[size_t((h * Tn + t) * hv + i)] += pj * double(v[(kh * Tn + j) * hv + i]);
      }
    }
  }
  return out;
}

// Σ over rows of -log softmax(logits)[target].
template <class T>
double cross_entropy_sum(const T* logits, const int32_t* targets, int64_t rows, int64_t V) {
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double max = -INFINITY;
    for (int64_t i = 0; i < V; ++i) max = std::max(max, double(logits[r * V + i]));
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(logits[r * V + i]) - max);
    total += std::log(sum) + max - double(logits[r * V + targets[r]]);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// DeepSeek-V3 routing for one token, from the spec: keys = s + b; with n_group > 1 a group's
// score is the sum of its two largest keys and only the topk_group best groups (ties to the lower
// group) stay eligible; the K largest eligible keys win (ties to the lower index), in descending
// key order; weights from the unbiased scores, normalised (+1e-20) when norm_topk_prob, times the
// scaling factor.

template <class T>
DVec router_scores(const T* logits, int64_t E, moe::ScoringFunc func) {
  DVec s(static_cast<size_t>(E));
  if (func == moe::ScoringFunc::sigmoid) {
    for (int64_t i = 0; i < E; ++i) s[size_t(i)] = sigmoid(double(logits[i]));
  } else {
    double max = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < E; ++i) max = std::max(max, double(logits[i]));
    for (int64_t i = 0; i < E; ++i) sum += (s[size_t(i)] = std::exp(double(logits[i]) - max));
    for (auto& x : s) x /= sum;
  }
  return s;
}

// Index order by (value descending, index ascending).
inline std::vector<int> order_desc(const DVec& v) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[size_t(a)] > v[size_t(b)]; });
  return idx;
}

// The groups that stay eligible for these keys (all of them when n_group == 1).
inline std::vector<bool> kept_groups(const moe::ModelConfig& c, const DVec& keys) {
  const int64_t G = c.n_group, size = c.n_routed_experts / G;
  std::vector<bool> kept(size_t(G), G == 1);
  if (G == 1) return kept;
  DVec group_score(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    DVec member(keys.begin() + g * size, keys.begin() + (g + 1) * size);
    std::sort(member.begin(), member.end(), std::greater<double>());
    group_score[size_t(g)] = member[0] + (size >= 2 ? member[1] : 0.0);
  }
  const std::vector<int> order = order_desc(group_score);
  for (int64_t i = 0; i < c.topk_group; ++i) kept[size_t(order[size_t(i)])] = true;
  return kept;
}

struct Route {
  std::vector<int> expert;  // K, descending key order
  DVec weight;              // K
};

template <class TB>
Route route(const moe::ModelConfig& c, const DVec& scores, const TB* bias) {
  const int64_t E = c.n_routed_experts, size = E / c.n_group;
  DVec keys(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) keys[size_t(i)] = scores[size_t(i)] + (bias ? double(bias[i]) : 0.0);
  const std::vector<bool> kept = kept_groups(c, keys);
  DVec eligible_keys = keys;
  for (int64_t i = 0; i < E; ++i)
    if (!kept[size_t(i / size)]) eligible_keys[size_t(i)] = -INFINITY;
  const std::vector<int> order = order_desc(eligible_keys);
  Route r;
  double sum = 0.0;
  for (int64_t k = 0; k < c.num_experts_per_tok; ++k) {
    r.expert.push_back(order[size_t(k)]);
    r.weight.push_back(scores[size_t(order[size_t(k)])]);
    sum += scores[size_t(order[size_t(k)])];
  }
  for (auto& w : r.weight) w = (c.norm_topk_prob ? w / (sum + 1e-20) : w) * c.routed_scaling_factor;
  return r;
}

// Weight pointers of one MoE layer as the spec names them: router (E, D), bias (E) or null,
// expert j's gate/up (Im, D) and down (D, Im), shared gate/up (Is, D) and down (D, Is).
struct MoeLayerRef {
  const float* router = nullptr;
  const float* bias = nullptr;
  std::vector<const float*> gate, up, down;
  const float* shared_gate = nullptr;
  const float* shared_up = nullptr;
  const float* shared_down = nullptr;
};

// out (N, D) = shared(x) + Σ_k w_k expert_k(x), token by token; the routes are returned too.
template <class TX>
DVec moe_layer(const moe::ModelConfig& c, const MoeLayerRef& w, const TX* x, int64_t N, std::vector<Route>* routes) {
  const int64_t D = c.hidden_size, E = c.n_routed_experts, Im = c.moe_intermediate_size;
  const int64_t Is = c.shared_intermediate();
  DVec out(size_t(N * D), 0.0);
  if (routes) routes->clear();
  for (int64_t t = 0; t < N; ++t) {
    const TX* xt = x + t * D;
    const DVec logits = linear(xt, w.router, 1, D, E);
    const DVec scores = router_scores(logits.data(), E, c.scoring_func);
    const Route r = route(c, scores, w.bias);
    if (Is > 0) {
      const DVec y = ffn(xt, w.shared_gate, w.shared_up, w.shared_down, 1, D, Is);
      for (int64_t i = 0; i < D; ++i) out[size_t(t * D + i)] += y[size_t(i)];
    }
    for (size_t k = 0; k < r.expert.size(); ++k) {
      const int e = r.expert[k];
      const DVec y = ffn(xt, w.gate[size_t(e)], w.up[size_t(e)], w.down[size_t(e)], 1, D, Im);
      for (int64_t i = 0; i < D; ++i) out[size_t(t * D + i)] += r.weight[k] * y[size_t(i)];
    }
    if (routes) routes->push_back(r);
  }
  return out;
}

}  // namespace ref
