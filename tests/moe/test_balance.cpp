// Load balancing: the loss-free bias update rule, the two balance losses (classic batch-wise aux
// loss, DeepSeek-V3 sequence-wise loss) against hand-computed values, their formulas and finite
// differences, and MaxVio.
#include <cmath>
#include <functional>

#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "moe/balance.hpp"
#include "moe/moe_layer.hpp"

namespace {

// P_i summed over tokens [t0, t1) of s_ti / Σ_j s_tj, in double.
template <class S>
ref::DVec normalised_sum(const S& scores, int64_t t0, int64_t t1, int64_t E) {
  ref::DVec P(size_t(E), 0.0);
  for (int64_t t = t0; t < t1; ++t) {
    double sum = 0.0;
    for (int64_t i = 0; i < E; ++i) sum += double(scores[size_t(t * E + i)]);
    for (int64_t i = 0; i < E; ++i) P[size_t(i)] += double(scores[size_t(t * E + i)]) / sum;
  }
  return P;
}

// Classic: α·E·Σ_i f_i P_i, f_i = count_i / (N K), P_i = mean normalised score.
template <class S>
double aux_reference(const S& scores, const std::vector<int32_t>& expert, int64_t N, int64_t E, int64_t K,
                     double alpha) {
  ref::DVec f(size_t(E), 0.0);
  for (int32_t e : expert) f[size_t(e)] += 1.0 / double(N * K);
  const ref::DVec P = normalised_sum(scores, 0, N, E);
  double loss = 0.0;
  for (int64_t i = 0; i < E; ++i) loss += f[size_t(i)] * P[size_t(i)] / double(N);
  return alpha * double(E) * loss;
}

// Sequence-wise: per sequence α·Σ_i f_i P_i, f_i = E/(K T) · count_i, averaged over sequences.
template <class S>
double seq_reference(const S& scores, const std::vector<int32_t>& expert, int64_t B, int64_t T, int64_t E, int64_t K,
                     double alpha) {
  double loss = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    ref::DVec f(size_t(E), 0.0);
    for (int64_t j = b * T * K; j < (b + 1) * T * K; ++j) f[size_t(expert[size_t(j)])] += double(E) / double(K * T);
    const ref::DVec P = normalised_sum(scores, b * T, (b + 1) * T, E);
    for (int64_t i = 0; i < E; ++i) loss += alpha * f[size_t(i)] * P[size_t(i)] / double(T) / double(B);
  }
  return loss;
}

// Central differences in double of loss(s) at every coordinate of s (h = 1e-6: truncation error
// ~h² and rounding ~1e-16/h, both far below the float precision of the analytic gradient).
ref::DVec numeric_gradient(ref::DVec s, const std::function<double(const ref::DVec&)>& loss) {
  const double h = 1e-6;
  ref::DVec g(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const double orig = s[i];
    s[i] = orig + h;
    const double lp = loss(s);
    s[i] = orig - h;
    const double lm = loss(s);
    s[i] = orig;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// The tiny hand example: N = 4 tokens (B = 2 sequences of T = 2), E = 4 experts, K = 2.
// Rows 0, 1 and 3 sum to 1 (already normalised), row 2 sums to 2 (normalises to 0.25 each).
constexpr int64_t kB = 2, kT = 2, kN = 4, kE = 4, kK = 2;
const ref::Vec kScores = {0.4f, 0.3f, 0.2f, 0.1f,   // token 0 (sequence 0)
                          0.1f, 0.1f, 0.4f, 0.4f,   // token 1 (sequence 0)
                          0.5f, 0.5f, 0.5f, 0.5f,   // token 2 (sequence 1)
                          0.2f, 0.6f, 0.1f, 0.1f};  // token 3 (sequence 1)
// Chosen experts (held fixed: the choice carries no gradient).
const std::vector<int32_t> kExpert = {0, 1,   // token 0
                                      2, 3,   // token 1
                                      0, 2,   // token 2
                                      1, 0};  // token 3

}  // namespace

TEST_CASE("aux_loss and seq_aux_loss on a hand-computed 4-token example", "[moe][balance]") {
  const float alpha = 0.5f;
  // Classic aux loss. counts = [3, 2, 2, 1] -> f = counts / (N K = 8) = [3/8, 2/8, 2/8, 1/8].
  // Normalised scores: t0 [.4 .3 .2 .1], t1 [.1 .1 .4 .4], t2 [.25 .25 .25 .25], t3 [.2 .6 .1 .1]
  // P = column means = [0.95, 1.25, 0.95, 0.85] / 4 = [0.2375, 0.3125, 0.2375, 0.2125].
  // Σ f P = (3·0.2375 + 2·0.3125 + 2·0.2375 + 1·0.2125) / 8 = 2.025 / 8 = 0.253125.
  // L = α·E·Σ f P = 0.5 · 4 · 0.253125 = 0.50625.
  const double aux = moe::aux_loss(kScores.data(), kExpert.data(), kN, kE, kK, alpha, nullptr, 0.0f);
  CHECK(aux == Approx(0.50625).epsilon(1e-6));

  // Sequence-wise loss, f_i = E/(K·T)·count_i = 1·count_i.
  // Sequence 0 (t0, t1): counts [1 1 1 1], P = [(.4+.1)/2, (.3+.1)/2, (.2+.4)/2, (.1+.4)/2]
  //   = [0.25, 0.2, 0.3, 0.25], Σ f P = 1.0.
  // Sequence 1 (t2, t3): counts [2 1 1 0], P = [(.25+.2)/2, (.25+.6)/2, (.25+.1)/2, (.25+.1)/2]
  //   = [0.225, 0.425, 0.175, 0.175], Σ f P = 0.45 + 0.425 + 0.175 = 1.05.
  // Averaged over the B = 2 sequences: α·(1.0 + 1.05)/2 = 0.5 · 1.025 = 0.5125.
  const double seq = moe::seq_aux_loss(kScores.data(), kExpert.data(), kB, kT, kE, kK, alpha, nullptr, 0.0f);
  CHECK(seq == Approx(0.5125).epsilon(1e-6));

  // The double references below agree with the hand numbers (guards the references themselves).
  CHECK(aux_reference(kScores, kExpert, kN, kE, kK, alpha) == Approx(0.50625).epsilon(1e-6));
  CHECK(seq_reference(kScores, kExpert, kB, kT, kE, kK, alpha) == Approx(0.5125).epsilon(1e-6));
}

TEST_CASE("aux_loss and seq_aux_loss gradients match double finite differences on the hand example", "[moe][balance]") {
  const float alpha = 0.5f, scale = 0.75f;
  // Gradients accumulate (+=) onto whatever d_scores holds, scaled by `scale`.
  const ref::Vec prefill = ref::randn(kN * kE, 11);
  const ref::DVec base = ref::to_double(kScores);
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    ref::Vec d_scores = prefill;
    double value;
    if (which == 0)
      value = moe::aux_loss(kScores.data(), kExpert.data(), kN, kE, kK, alpha, d_scores.data(), scale);
    else
      value = moe::seq_aux_loss(kScores.data(), kExpert.data(), kB, kT, kE, kK, alpha, d_scores.data(), scale);
    // Asking for the gradient must not change the value.
    CHECK(value == Approx(which == 0 ? 0.50625 : 0.5125).epsilon(1e-6));
    auto loss = [&](const ref::DVec& s) {
      return double(scale) * (which == 0 ? aux_reference(s, kExpert, kN, kE, kK, alpha)
                                         : seq_reference(s, kExpert, kB, kT, kE, kK, alpha));
    };
    const ref::DVec numeric = numeric_gradient(base, loss);
    double max_err = 0.0, max_grad = 0.0;
    for (size_t i = 0; i < numeric.size(); ++i) {
      const double analytic = double(d_scores[i]) - double(prefill[i]);
      max_err = std::max(max_err, std::abs(analytic - numeric[i]));
      max_grad = std::max(max_grad, std::abs(numeric[i]));
    }
    CAPTURE(max_err, max_grad);
    CHECK(max_grad > 0.05);  // the gradient is not trivially zero
    CHECK(max_err < 2e-6);   // float analytic vs double numeric
  }
  // One coordinate by hand: classic loss, token 2 (sum 2, normalised 0.25 each), expert 3.
  // coef_i = α·E·f_i/N = 0.5·4·[3,2,2,1]/8/4 = [0.1875, 0.125, 0.125, 0.0625];
  // dL/ds_23 = (coef_3 − Σ_i coef_i·0.25) / 2 = (0.0625 − 0.125) / 2 = −0.03125; times scale 0.75.
  ref::Vec d(size_t(kN * kE), 0.0f);
  moe::aux_loss(kScores.data(), kExpert.data(), kN, kE, kK, alpha, d.data(), scale);
  CHECK(d[2 * 4 + 3] == Approx(-0.03125 * 0.75).epsilon(1e-5));
}

TEST_CASE("aux_loss and seq_aux_loss match their formulas and finite differences of the scores", "[moe][balance]") {
  const int64_t B = 3, T = 5, N = B * T, E = 6, K = 2;
  ref::Vec scores = ref::uniform(N * E, 1, 0.05, 1.0);
  std::vector<int32_t> expert(size_t(N * K));
  moe::Rng rng(2);
  for (int64_t t = 0; t < N; ++t) {
    expert[size_t(t * K)] = int32_t(rng.below(E));
    expert[size_t(t * K + 1)] = int32_t((expert[size_t(t * K)] + 1 + int64_t(rng.below(E - 1))) % E);
  }
  const float alpha = 0.7f, scale = 0.5f;

  const double aux = moe::aux_loss(scores.data(), expert.data(), N, E, K, alpha, nullptr, 0.0f);
  CHECK(aux == Approx(aux_reference(scores, expert, N, E, K, alpha)).epsilon(1e-6));
  const double seq = moe::seq_aux_loss(scores.data(), expert.data(), B, T, E, K, alpha, nullptr, 0.0f);
  CHECK(seq == Approx(seq_reference(scores, expert, B, T, E, K, alpha)).epsilon(1e-6));
  // A perfectly uniform router (equal scores, equal counts) gives the classic loss exactly α.
  {
    const ref::Vec flat(size_t(N * E), 0.3f);
    std::vector<int32_t> even(size_t(6 * 1));
    for (int64_t t = 0; t < 6; ++t) even[size_t(t)] = int32_t(t);
    CHECK(moe::aux_loss(flat.data(), even.data(), 6, E, 1, alpha, nullptr, 0.0f) == Approx(alpha));
  }

  // Gradients accumulate onto a prefill, scaled by `scale`; counts are constants (no gradient).
  const ref::Vec prefill = ref::randn(N * E, 3);
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);
    ref::Vec d_scores = prefill;
    if (which == 0)
      moe::aux_loss(scores.data(), expert.data(), N, E, K, alpha, d_scores.data(), scale);
    else
      moe::seq_aux_loss(scores.data(), expert.data(), B, T, E, K, alpha, d_scores.data(), scale);
    ref::Vec grad(d_scores.size());
    for (size_t i = 0; i < grad.size(); ++i) grad[i] = d_scores[i] - prefill[i];
    auto loss = [&] {
      return double(scale) * (which == 0 ? aux_reference(scores, expert, N, E, K, alpha)
                                         : seq_reference(scores, expert, B, T, E, K, alpha));
    };
    // Double-precision loss: only truncation error remains, ~h² relative.
    const auto g = ref::check_gradient(scores.data(), grad.data(), ref::all_coords(N * E), 1e-3, loss);
    CHECK(g.error() < 1e-3);
    CHECK(ref::norm2(g.numeric) > 1e-3);
  }
}

TEST_CASE("aux loss over a batch formed in parts: summed parts give the whole batch's loss and gradient",
          "[moe][balance]") {
  // A batch of N = 3 + 5 tokens in two parts, as the micro-batches of a step (or the ranks) form it.
  const int64_t N = 8, E = 5, K = 2, parts[2][2] = {{0, 3}, {3, 8}};
  const ref::Vec scores = ref::uniform(N * E, 4, 0.05, 1.0);
  std::vector<int32_t> expert(size_t(N * K));
  for (int64_t t = 0; t < N; ++t)
    expert[size_t(t * K)] = int32_t(t % E), expert[size_t(t * K + 1)] = int32_t((t + 2) % E);
  const float alpha = 0.6f;
  std::vector<float> whole_grad(size_t(N * E), 0.0f);
  const double whole = moe::aux_loss(scores.data(), expert.data(), N, E, K, alpha, whole_grad.data(), 1.0f);
  CHECK(whole == Approx(aux_reference(scores, expert, N, E, K, alpha)).epsilon(1e-6));

  std::vector<int64_t> counts(size_t(E), 0);
  std::vector<double> prob_sums(size_t(E), 0.0), f(static_cast<size_t>(E));
  for (const auto& [t0, t1] : parts) {
    for (int64_t j = t0 * K; j < t1 * K; ++j) ++counts[size_t(expert[size_t(j)])];
    moe::aux_prob_sums(scores.data() + t0 * E, t1 - t0, E, prob_sums.data());
  }
  CHECK(moe::aux_loss_from_sums(counts.data(), prob_sums.data(), N, E, K, alpha) == Approx(whole).epsilon(1e-12));
  // Each part's gradient with the whole batch's f and its share of the tokens as the scale.
  for (int64_t i = 0; i < E; ++i) f[size_t(i)] = double(counts[size_t(i)]) / double(N * K);
  std::vector<float> part_grad(size_t(N * E), 0.0f);
  for (const auto& [t0, t1] : parts)
    moe::aux_loss_backward(scores.data() + t0 * E, f.data(), t1 - t0, E, alpha, part_grad.data() + t0 * E,
                           float(t1 - t0) / float(N));
  double worst = 0.0, largest = 0.0;
  for (size_t i = 0; i < whole_grad.size(); ++i) {
    worst = std::max(worst, double(std::fabs(part_grad[i] - whole_grad[i])));
    largest = std::max(largest, double(std::fabs(whole_grad[i])));
  }
  CAPTURE(worst, largest);
  CHECK(largest > 1e-3);
  CHECK(worst < 1e-7);
  // Each part's own loss (its own f and P) is not its share of the whole: the reason for the sums.
  const double own = (3 * moe::aux_loss(scores.data(), expert.data(), 3, E, K, alpha, nullptr, 0.0f) +
                      5 * moe::aux_loss(scores.data() + 3 * E, expert.data() + 3 * K, 5, E, K, alpha, nullptr, 0.0f)) /
                     8;
  CHECK(std::fabs(own - whole) > 1e-3);
}

TEST_CASE("update_bias: overloaded experts go down by exactly u, underloaded up by u, at-mean unchanged",
          "[moe][balance]") {
  const float u = 0.125f;  // dyadic values: every expected result is exact in float
  SECTION("integer mean") {
    float bias[4] = {0.5f, -0.25f, 1.0f, 0.0f};
    const int64_t counts[4] = {5, 1, 3, 3};  // mean 3
    moe::update_bias(bias, counts, 4, u);
    CHECK(bias[0] == 0.375f);   // overloaded (5 > 3): loses priority by exactly u
    CHECK(bias[1] == -0.125f);  // underloaded (1 < 3): gains exactly u
    CHECK(bias[2] == 1.0f);     // exactly at the mean: unchanged
    CHECK(bias[3] == 0.0f);
  }
  SECTION("fractional mean: nobody sits at it") {
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int64_t counts[4] = {2, 3, 3, 3};  // mean 2.75
    moe::update_bias(bias, counts, 4, u);
    CHECK(bias[0] == 0.125f);
    CHECK(bias[1] == -0.125f);
    CHECK(bias[2] == -0.125f);
    CHECK(bias[3] == -0.125f);
  }
  SECTION("the step is u regardless of how far from the mean") {
    float bias[3] = {0.0f, 0.0f, 0.0f};
    const int64_t counts[3] = {1000, 1, 2};  // mean 334.33
    moe::update_bias(bias, counts, 3, 0.01f);
    CHECK(bias[0] == -0.01f);
    CHECK(bias[1] == 0.01f);
    CHECK(bias[2] == 0.01f);
  }
  SECTION("zero rate and all-equal counts change nothing") {
    float bias[4] = {0.5f, -0.5f, 0.25f, 0.0f};
    const int64_t skewed[4] = {9, 0, 0, 3};
    moe::update_bias(bias, skewed, 4, 0.0f);
    const int64_t even[4] = {7, 7, 7, 7};
    moe::update_bias(bias, even, 4, u);
    CHECK(bias[0] == 0.5f);
    CHECK(bias[1] == -0.5f);
    CHECK(bias[2] == 0.25f);
    CHECK(bias[3] == 0.0f);
  }
}

TEST_CASE("max_violation is (max - mean) / mean of the counts", "[moe][balance]") {
  const int64_t skewed[4] = {4, 0, 2, 2};  // mean 2, max 4
  CHECK(moe::max_violation(skewed, 4) == Approx(1.0));
  const int64_t third[4] = {5, 3, 2, 2};  // mean 3, max 5
  CHECK(moe::max_violation(third, 4) == Approx(2.0 / 3.0));
  const int64_t all_one[8] = {16, 0, 0, 0, 0, 0, 0, 0};  // everything on one expert: E - 1
  CHECK(moe::max_violation(all_one, 8) == Approx(7.0));
  const int64_t odd[3] = {10, 1, 1};  // mean 4, max 10
  CHECK(moe::max_violation(odd, 3) == Approx(1.5));
  const int64_t even[4] = {3, 3, 3, 3};
  CHECK(moe::max_violation(even, 4) == 0.0);
  const int64_t none[4] = {0, 0, 0, 0};
  CHECK(moe::max_violation(none, 4) == 0.0);
}

TEST_CASE("update_bias proportional: u·(mean − c_i)/mean, nothing when nothing was routed", "[moe][balance]") {
  const float u = 0.125f;
  float bias[4] = {0.5f, -0.25f, 1.0f, 0.0f};
  const int64_t counts[4] = {6, 2, 4, 4};  // mean 4: (mean - c)/mean = -0.5, +0.5, 0, 0
  moe::update_bias(bias, counts, 4, u, /*proportional=*/true);
  CHECK(bias[0] == 0.5f - 0.0625f);
  CHECK(bias[1] == -0.25f + 0.0625f);
  CHECK(bias[2] == 1.0f);
  CHECK(bias[3] == 0.0f);
  // Far from the mean the step grows with the distance (the sign rule's would stay u).
  float far[3] = {0.0f, 0.0f, 0.0f};
  const int64_t skewed[3] = {30, 0, 0};  // mean 10: -2, +1, +1
  moe::update_bias(far, skewed, 3, u, true);
  CHECK(far[0] == -0.25f);
  CHECK(far[1] == 0.125f);
  CHECK(far[2] == 0.125f);
  const int64_t none[3] = {0, 0, 0};
  moe::update_bias(far, none, 3, u, true);
  CHECK(far[0] == -0.25f);
}

TEST_CASE("update_bias with centring: mean bias 0 afterwards, differences (hence choices) as without",
          "[moe][balance]") {
  for (bool proportional : {false, true}) {
    CAPTURE(proportional);
    float plain[5] = {0.3f, -0.1f, 0.7f, 0.2f, 0.05f}, centred[5];
    std::copy(plain, plain + 5, centred);
    const int64_t counts[5] = {9, 1, 4, 0, 6};
    moe::update_bias(plain, counts, 5, 0.01f, proportional, false);
    moe::update_bias(centred, counts, 5, 0.01f, proportional, true);
    double mean = 0;
    for (float b : centred) mean += b;
    CHECK(std::fabs(mean / 5) < 1e-7);
    for (int i = 1; i < 5; ++i) CHECK(centred[i] - centred[0] == Approx(plain[i] - plain[0]).margin(1e-6));
  }
}

TEST_CASE("router_z_loss: known answer and gradient against double finite differences", "[moe][balance]") {
  // All-zero logits over 4 experts: logsumexp = log 4 for every token.
  const std::vector<float> zeros(3 * 4, 0.0f);
  CHECK(moe::router_z_loss(zeros.data(), 3, 4, 0.5f, nullptr, 0) == Approx(0.5 * std::log(4.0) * std::log(4.0)));
  // A naive reference in double, and its central differences.
  const int64_t N = 5, E = 6;
  const float alpha = 0.3f;
  ref::Vec z = ref::randn(N * E, 41, 2.0);
  auto naive = [&](const std::vector<double>& zd) {
    double total = 0;
    for (int64_t t = 0; t < N; ++t) {
      double s = 0;
      for (int64_t i = 0; i < E; ++i) s += std::exp(zd[size_t(t * E + i)]);
      total += std::log(s) * std::log(s);
    }
    return alpha * total / double(N);
  };
  std::vector<double> zd(z.begin(), z.end());
  CHECK(moe::router_z_loss(z.data(), N, E, alpha, nullptr, 0) == Approx(naive(zd)).epsilon(1e-6));
  std::vector<float> grad(size_t(N * E), 1.0f);  // accumulates: starts at 1
  moe::router_z_loss(z.data(), N, E, alpha, grad.data(), 2.0f);
  for (size_t k = 0; k < zd.size(); ++k) {
    std::vector<double> hi = zd, lo = zd;
    hi[k] += 1e-5, lo[k] -= 1e-5;
    const double fd = (naive(hi) - naive(lo)) / 2e-5;
    CHECK(grad[k] - 1.0f == Approx(2.0 * fd).epsilon(1e-4).margin(1e-6));
  }
}

TEST_CASE("load_stats: CV, Jain's index, dead experts and share percentiles on known counts", "[moe][balance]") {
  const int64_t counts[4] = {0, 10, 30, 0};  // sum 40, mean 10, Σc² 1000
  const moe::LoadStats st = moe::load_stats(counts, 4);
  CHECK(st.cv == Approx(std::sqrt(150.0) / 10.0));  // population variance 1000/4 - 100
  CHECK(st.jain == Approx(1600.0 / 4000.0));
  CHECK(st.dead == 2);
  // Sorted shares 0, 0, 0.25, 0.75 at ranks 0..3: p5 at rank 0.15, p50 at 1.5, p95 at 2.85.
  CHECK(st.share_p5 == Approx(0.0).margin(1e-12));
  CHECK(st.share_p50 == Approx(0.125));
  CHECK(st.share_p95 == Approx(0.25 + 0.85 * 0.5));
  const int64_t even[8] = {5, 5, 5, 5, 5, 5, 5, 5};
  const moe::LoadStats flat = moe::load_stats(even, 8);
  CHECK(flat.cv == Approx(0.0).margin(1e-12));
  CHECK(flat.jain == Approx(1.0));
  CHECK(flat.dead == 0);
  CHECK(flat.share_p5 == Approx(0.125));
  CHECK(flat.share_p95 == Approx(0.125));
  const int64_t one[4] = {12, 0, 0, 0};  // one expert takes all: Jain 1/E
  CHECK(moe::load_stats(one, 4).jain == Approx(0.25));
  const int64_t nothing[3] = {0, 0, 0};
  const moe::LoadStats empty = moe::load_stats(nothing, 3);
  CHECK(empty.dead == 3);
  CHECK(empty.jain == 1.0);
  CHECK(empty.cv == 0.0);
}
