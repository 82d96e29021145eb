#include "moe/balance.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {

double max_violation(const int64_t* counts, int64_t E) {
  double total = 0.0, max = 0.0;
  for (int64_t i = 0; i < E; ++i) total += double(counts[i]), max = std::max(max, double(counts[i]));
  if (total == 0.0) return 0.0;
  const double mean = total / double(E);
  return (max - mean) / mean;
}

LoadStats load_stats(const int64_t* counts, int64_t E) {
  LoadStats st;
  if (E <= 0) return st;
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t i = 0; i < E; ++i) {
    sum += double(counts[i]), sum_sq += double(counts[i]) * double(counts[i]);
    st.dead += counts[i] == 0;
  }
  if (sum == 0.0) return st;
  const double mean = sum / double(E);
  st.cv = std::sqrt(std::max(0.0, sum_sq / double(E) - mean * mean)) / mean;
  st.jain = sum * sum / (double(E) * sum_sq);
  std::vector<double> shares(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) shares[size_t(i)] = double(counts[i]) / sum;
  std::sort(shares.begin(), shares.end());
  auto percentile = [&](double p) {
    const double rank = p / 100.0 * double(E - 1);
    const size_t lo = size_t(rank), hi = std::min(size_t(E - 1), lo + 1);
    return shares[lo] + (rank - double(lo)) * (shares[hi] - shares[lo]);
  };
  st.share_p5 = percentile(5), st.share_p50 = percentile(50), st.share_p95 = percentile(95);
  return st;
}

void update_bias(float* bias, const int64_t* counts, int64_t E, float rate, bool proportional, bool center) {
  double mean = 0.0;
  for (int64_t i = 0; i < E; ++i) mean += double(counts[i]);
  mean /= double(E);
  for (int64_t i = 0; i < E; ++i) {
    const double diff = mean - double(counts[i]);
    if (proportional)
      bias[i] += mean > 0 ? float(double(rate) * diff / mean) : 0.0f;
    else
      bias[i] += rate * float((diff > 0) - (diff < 0));
  }
  if (center) {
    double sum = 0.0;
    for (int64_t i = 0; i < E; ++i) sum += double(bias[i]);
    const float shift = float(sum / double(E));
    for (int64_t i = 0; i < E; ++i) bias[i] -= shift;
  }
}

double router_z_loss(const float* logits, int64_t N, int64_t E, float alpha, float* d_logits, float scale) {
  double total = 0.0;
  for (int64_t t = 0; t < N; ++t) {
    const float* z = logits + t * E;
    double max = -INFINITY;
    for (int64_t i = 0; i < E; ++i) max = std::max(max, double(z[i]));
    double sum = 0.0;
    for (int64_t i = 0; i < E; ++i) sum += std::exp(double(z[i]) - max);
    const double lse = max + std::log(sum);
    total += lse * lse;
    if (d_logits) {
      // d(lse²)/dz_i = 2·lse·softmax(z)_i, and the mean over tokens divides by N.
      const double coef = double(scale) * double(alpha) * 2.0 * lse / double(N);
      for (int64_t i = 0; i < E; ++i) d_logits[t * E + i] += float(coef * std::exp(double(z[i]) - lse));
    }
  }
  return double(alpha) * total / double(N);
}

namespace {

// Shared by both losses: given per-expert coefficients coef_i = dL/ds'_{t,i} (the same for every
// token of a block), add scale · dL/ds for tokens [t0, t1) through s' = s / Σ s.
void add_normalised_grad(const float* scores, int64_t t0, int64_t t1, int64_t E, const double* coef, float* d_scores,
                         float scale) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* s = scores + t * E;
    float* ds = d_scores + t * E;
    double sum = 0.0, dot = 0.0;
    for (int64_t i = 0; i < E; ++i) sum += s[i];
    for (int64_t i = 0; i < E; ++i) dot += coef[i] * s[i] / sum;
    for (int64_t i = 0; i < E; ++i) ds[i] += float(scale * (coef[i] - dot) / sum);
  }
}

// Σ_t over [t0, t1) of s_t / Σ s_t, into P (E), not yet divided by the token count.
void sum_normalised(const float* scores, int64_t t0, int64_t t1, int64_t E, double* P) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* s = scores + t * E;
    double sum = 0.0;
    for (int64_t i = 0; i < E; ++i) sum += s[i];
    for (int64_t i = 0; i < E; ++i) P[i] += s[i] / sum;
  }
}

}  // namespace

double aux_loss(const float* scores, const int32_t* expert, int64_t N, int64_t E, int64_t K, float alpha,
                float* d_scores, float scale) {
  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  std::vector<double> P(static_cast<size_t>(E), 0.0);
  for (int64_t j = 0; j < N * K; ++j) ++counts[size_t(expert[j])];
  sum_normalised(scores, 0, N, E, P.data());
  if (d_scores) {
    std::vector<double> f(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i) f[size_t(i)] = double(counts[size_t(i)]) / double(N * K);
    aux_loss_backward(scores, f.data(), N, E, alpha, d_scores, scale);
  }
  return aux_loss_from_sums(counts.data(), P.data(), N, E, K, alpha);
}

void aux_prob_sums(const float* scores, int64_t N, int64_t E, double* prob_sums) {
  sum_normalised(scores, 0, N, E, prob_sums);
}

double aux_loss_from_sums(const int64_t* counts, const double* prob_sums, int64_t tokens, int64_t E, int64_t K,
                          float alpha) {
  double loss = 0.0;
  for (int64_t i = 0; i < E; ++i) loss += double(counts[i]) / double(tokens * K) * prob_sums[i] / double(tokens);
  return loss * (double(alpha) * double(E));
}

void aux_loss_backward(const float* scores, const double* f, int64_t N, int64_t E, float alpha, float* d_scores,
                       float scale) {
  // f_i is a count and carries no gradient; P_i = (1/N) Σ_t s'_ti gives every token the same coefficients.
  std::vector<double> coef(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) coef[size_t(i)] = double(alpha) * double(E) * f[i] / double(N);
  add_normalised_grad(scores, 0, N, E, coef.data(), d_scores, scale);
}

double seq_aux_loss(const float* scores, const int32_t* expert, int64_t B, int64_t T, int64_t E, int64_t K, float alpha,
                    float* d_scores, float scale) {
  double loss = 0.0;
  std::vector<double> f(static_cast<size_t>(E)), P(static_cast<size_t>(E)), coef(static_cast<size_t>(E));
  for (int64_t b = 0; b < B; ++b) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t j = b * T * K; j < (b + 1) * T * K; ++j) f[size_t(expert[j])] += 1.0;
    for (auto& v : f) v *= double(E) / double(K * T);
    sum_normalised(scores, b * T, (b + 1) * T, E, P.data());
    double seq_loss = 0.0;
    for (int64_t i = 0; i < E; ++i) seq_loss += f[size_t(i)] * P[size_t(i)] / double(T);
    loss += double(alpha) * seq_loss / double(B);
    if (d_scores) {
      for (int64_t i = 0; i < E; ++i) coef[size_t(i)] = double(alpha) * f[size_t(i)] / double(T * B);
      add_normalised_grad(scores, b * T, (b + 1) * T, E, coef.data(), d_scores, scale);
    }
  }
  return loss;
}

}  // namespace moe
