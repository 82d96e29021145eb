// The DeepSeek-V3 gate: score functions and their backward (finite differences), the gate-weight
// backward with and without normalisation and scaling (finite differences at a fixed choice), and
// the routing invariants — K distinct experts, group-limited selection, bias moves the choice but
// never the weight formula, ties to the lower index — against an independent reference router.
#include <set>

#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "moe/router.hpp"

namespace {

moe::ModelConfig router_config(int64_t E, int64_t K, int64_t groups, int64_t topk_group, bool norm, double scaling,
                               moe::ScoringFunc func = moe::ScoringFunc::sigmoid) {
  moe::ModelConfig c;
  c.n_routed_experts = E, c.num_experts_per_tok = K, c.n_group = groups, c.topk_group = topk_group;
  c.norm_topk_prob = norm, c.routed_scaling_factor = scaling, c.scoring_func = func;
  return c;
}

struct Routing {
  std::vector<int32_t> expert;
  ref::Vec weight;
};

Routing run_router(const moe::ModelConfig& c, const ref::Vec& scores, const float* bias, int64_t N) {
  Routing r{std::vector<int32_t>(size_t(N * c.num_experts_per_tok), -1),
            ref::Vec(size_t(N * c.num_experts_per_tok), -1.0f)};
  moe::route_tokens(c, scores.data(), bias, r.expert.data(), r.weight.data(), N);
  return r;
}

// Every token: K distinct in-range experts, from kept groups only, equal (in order) to the
// reference choice, with weights scaling · s_e / (Σ_chosen s + 1e-20) of the *unbiased* scores.
void expect_routing_matches_reference(const moe::ModelConfig& c, const ref::Vec& scores, const float* bias, int64_t N) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, group_size = E / c.n_group;
  const Routing got = run_router(c, scores, bias, N);
  for (int64_t t = 0; t < N; ++t) {
    CAPTURE(t);
    const int32_t* chosen = got.expert.data() + t * K;
    std::set<int32_t> distinct(chosen, chosen + K);
    REQUIRE(int64_t(distinct.size()) == K);
    for (int64_t k = 0; k < K; ++k) REQUIRE((chosen[k] >= 0 && chosen[k] < E));

    const ref::DVec s = ref::to_double(scores.data() + t * E, E);
    ref::DVec keys = s;
    for (int64_t i = 0; i < E; ++i) keys[size_t(i)] += bias ? double(bias[i]) : 0.0;
    const std::vector<bool> kept = ref::kept_groups(c, keys);
    for (int64_t k = 0; k < K; ++k) REQUIRE(kept[size_t(chosen[k] / group_size)]);

    const ref::Route want = ref::route(c, s, bias);
    for (int64_t k = 0; k < K; ++k) REQUIRE(chosen[k] == want.expert[size_t(k)]);

    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += s[size_t(chosen[k])];
    for (int64_t k = 0; k < K; ++k) {
      const double formula = c.routed_scaling_factor * s[size_t(chosen[k])] / (c.norm_topk_prob ? sum + 1e-20 : 1.0);
      REQUIRE(double(got.weight[size_t(t * K + k)]) == Approx(formula).epsilon(1e-6));
    }
  }
}

}  // namespace

TEST_CASE("router_scores_forward and backward: sigmoid and softmax against double and finite differences", "[moe]") {
  const int64_t N = 4, E = 8;
  for (auto func : {moe::ScoringFunc::sigmoid, moe::ScoringFunc::softmax}) {
    CAPTURE(moe::to_string(func));
    ref::Vec logits = ref::randn(N * E, 1, 2.0);
    const ref::Vec r = ref::randn(N * E, 2);
    ref::Vec scores(logits.size());
    moe::router_scores_forward(logits.data(), scores.data(), N, E, func);
    for (int64_t t = 0; t < N; ++t) {
      const ref::DVec want = ref::router_scores(logits.data() + t * E, E, func);
      CHECK(ref::max_abs_diff(ref::to_double(scores.data() + t * E, E), want) < 1e-6);
    }
    auto loss = [&] {
      moe::router_scores_forward(logits.data(), scores.data(), N, E, func);
      return ref::weighted_sum(r, scores.data());
    };
    loss();
    ref::Vec d_logits(logits.size(), 3.0f);  // written, not accumulated
    moe::router_scores_backward(scores.data(), r.data(), d_logits.data(), N, E, func);
    const auto g = ref::check_gradient(logits.data(), d_logits.data(), ref::all_coords(N * E), ref::kFdStep, loss);
    CHECK(g.error() < ref::kFdTolerance);
  }
}

TEST_CASE("route_weights_backward matches finite differences at a fixed choice (norm on/off, scaling)", "[moe]") {
  const int64_t N = 6, E = 8, K = 3;
  for (bool norm : {true, false})
    for (double scaling : {1.0, 2.5})
      for (int64_t groups : {1, 2}) {
        CAPTURE(norm, scaling, groups);
        const moe::ModelConfig c = router_config(E, K, groups, 1, norm, scaling);
        // Well-separated scores: per token a random half of the experts (one whole group when
        // groups = 2) draws a shuffle of 0.55, 0.65, 0.75, 0.85 and the other half a shuffle of
        // 0.1 .. 0.4, plus a jitter below 0.01. Experts differ by >= 0.08 and group sums by
        // >= 0.6, so a 1e-2 step never reorders anything and the choice stays fixed.
        ref::Vec scores(static_cast<size_t>(N * E));
        moe::Rng rng(7 + uint64_t(groups));
        auto shuffled = [&](std::vector<double> v) {
          for (size_t i = v.size() - 1; i > 0; --i) std::swap(v[i], v[rng.below(i + 1)]);
          return v;
        };
        for (int64_t t = 0; t < N; ++t) {
          const int64_t winner = int64_t(rng.below(2));
          const std::vector<double> high = shuffled({0.55, 0.65, 0.75, 0.85}), low = shuffled({0.1, 0.2, 0.3, 0.4});
          for (int64_t i = 0; i < E; ++i) {
            const bool in_winner = i / 4 == winner;
            const double value = (in_winner ? high : low)[size_t(i % 4)];
            scores[size_t(t * E + i)] = float(value + 0.01 * rng.uniform());
          }
        }
        const ref::Vec r = ref::randn(N * K, 3);
        const Routing base = run_router(c, scores, nullptr, N);

        // Analytic: accumulated onto a prefill, only at the chosen experts.
        const ref::Vec prefill = ref::randn(N * E, 4);
        ref::Vec d_scores = prefill;
        moe::route_weights_backward(c, scores.data(), base.expert.data(), r.data(), d_scores.data(), N);
        ref::Vec grad(d_scores.size());
        for (size_t i = 0; i < grad.size(); ++i) grad[i] = d_scores[i] - prefill[i];
        for (int64_t t = 0; t < N; ++t)
          for (int64_t e = 0; e < E; ++e) {
            const int32_t* chosen = base.expert.data() + t * K;
            if (std::find(chosen, chosen + K, e) == chosen + K)
              REQUIRE(d_scores[size_t(t * E + e)] == prefill[size_t(t * E + e)]);
          }

        // Numeric: perturb every score; the choice must not move (asserted), so non-chosen scores
        // have zero derivative and chosen ones the derivative of the weight formula.
        auto loss = [&] {
          const Routing now = run_router(c, scores, nullptr, N);
          REQUIRE(now.expert == base.expert);
          return ref::weighted_sum(r, now.weight.data());
        };
        const auto g = ref::check_gradient(scores.data(), grad.data(), ref::all_coords(N * E), ref::kFdStep, loss);
        CHECK(g.error() < ref::kFdTolerance);
        CHECK(ref::norm2(g.numeric) > 0.1);  // the check is not vacuous
      }
}

TEST_CASE("route_tokens matches the reference router on random scores (groups, bias, softmax, no norm)", "[moe]") {
  const int64_t N = 200;
  struct Variant {
    int64_t E, K, groups, topk_group;
    bool norm;
    double scaling;
    moe::ScoringFunc func;
  };
  const Variant variants[] = {
      {16, 3, 4, 2, true, 2.5, moe::ScoringFunc::sigmoid}, {16, 4, 8, 3, true, 1.0, moe::ScoringFunc::softmax},
      {8, 2, 1, 1, false, 1.5, moe::ScoringFunc::sigmoid}, {8, 2, 2, 1, false, 1.0, moe::ScoringFunc::softmax},
      {12, 3, 3, 1, true, 1.0, moe::ScoringFunc::sigmoid}, {6, 6, 1, 1, true, 1.0, moe::ScoringFunc::sigmoid}};
  uint64_t seed = 50;
  for (const Variant& v : variants) {
    CAPTURE(v.E, v.K, v.groups, v.topk_group, v.norm, v.scaling, moe::to_string(v.func));
    const moe::ModelConfig c = router_config(v.E, v.K, v.groups, v.topk_group, v.norm, v.scaling, v.func);
    const ref::Vec logits = ref::randn(N * v.E, ++seed, 1.5);
    ref::Vec scores(logits.size());
    moe::router_scores_forward(logits.data(), scores.data(), N, v.E, v.func);
    const ref::Vec bias = ref::randn(v.E, ++seed, 0.1);
    expect_routing_matches_reference(c, scores, nullptr, N);
    expect_routing_matches_reference(c, scores, bias.data(), N);
  }
}

TEST_CASE("the bias changes which experts are picked, never the weight formula", "[moe]") {
  const int64_t N = 100, E = 8, K = 2;
  const moe::ModelConfig c = router_config(E, K, 2, 1, true, 2.5);
  const ref::Vec logits = ref::randn(N * E, 60);
  ref::Vec scores(logits.size());
  moe::router_scores_forward(logits.data(), scores.data(), N, E, moe::ScoringFunc::sigmoid);
  const Routing unbiased = run_router(c, scores, nullptr, N);

  const ref::Vec bias = ref::randn(E, 61, 0.3);
  const Routing biased = run_router(c, scores, bias.data(), N);
  int64_t changed = 0;
  for (int64_t t = 0; t < N; ++t)
    changed += !std::equal(biased.expert.begin() + t * K, biased.expert.begin() + (t + 1) * K,
                           unbiased.expert.begin() + t * K);
  CHECK(changed > N / 10);
  expect_routing_matches_reference(c, scores, bias.data(), N);

  // A huge bias on expert 5 makes every token pick it first, but its weight still comes from
  // the unbiased score: scaling · s_5 / (s_5 + s_other), so below the scaling factor.
  ref::Vec big(size_t(E), 0.0f);
  big[5] = 10.0f;
  const Routing forced = run_router(c, scores, big.data(), N);
  for (int64_t t = 0; t < N; ++t) {
    REQUIRE(forced.expert[size_t(t * K)] == 5);
    const int32_t other = forced.expert[size_t(t * K + 1)];
    REQUIRE(other / 4 == 1);  // expert 5's group (4..7) is the only kept group
    const double s5 = scores[size_t(t * E + 5)], so = scores[size_t(t * E + other)];
    REQUIRE(double(forced.weight[size_t(t * K)]) == Approx(2.5 * s5 / (s5 + so)).epsilon(1e-6));
    REQUIRE(double(forced.weight[size_t(t * K + 1)]) == Approx(2.5 * so / (s5 + so)).epsilon(1e-6));
  }
}

TEST_CASE("group score is the sum of the two largest keys, not the max", "[moe]") {
  // 4 groups of 2, keep 1 group, pick 2. Group 0 holds the single best key (0.9 + 0.0 = 0.9) but
  // group 1 has the best pair (0.5 + 0.5 = 1.0): the choice must be experts 2 and 3.
  const moe::ModelConfig c = router_config(8, 2, 4, 1, true, 1.0);
  const ref::Vec scores{0.9f, 0.0f, 0.5f, 0.5f, 0.3f, 0.3f, 0.1f, 0.2f};
  const Routing r = run_router(c, scores, nullptr, 1);
  CHECK(r.expert == std::vector<int32_t>{2, 3});
  CHECK(r.weight[0] == Approx(0.5));
  CHECK(r.weight[1] == Approx(0.5));
  // A bias of +0.2 on expert 1 lifts group 0 to 1.1: now experts 0 and 1, with weights from the
  // unbiased scores 0.9 and 0.0.
  const ref::Vec bias{0.0f, 0.2f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const Routing b = run_router(c, scores, bias.data(), 1);
  CHECK(b.expert == std::vector<int32_t>{0, 1});
  CHECK(b.weight[0] == Approx(1.0));
  CHECK(b.weight[1] == Approx(0.0).margin(1e-7));
}

TEST_CASE("ties go to the lower index, for experts and for groups", "[moe]") {
  {
    const moe::ModelConfig c = router_config(4, 3, 1, 1, false, 1.0);
    const ref::Vec scores{0.5f, 0.7f, 0.5f, 0.7f};
    CHECK(run_router(c, scores, nullptr, 1).expert == std::vector<int32_t>{1, 3, 0});
  }
  {
    // All equal: experts 0..K-1; with groups, the lowest groups are kept.
    const moe::ModelConfig c = router_config(8, 3, 4, 2, true, 1.0);
    const ref::Vec scores(8, 0.25f);
    const Routing r = run_router(c, scores, nullptr, 1);
    CHECK(r.expert == std::vector<int32_t>{0, 1, 2});
    for (float w : r.weight) CHECK(w == Approx(1.0 / 3.0));
  }
  {
    // Groups 1 and 3 tie for best (exactly 1.0 in any precision); group 1 is kept, and within it
    // experts 2 and 3 tie.
    const moe::ModelConfig c = router_config(8, 2, 4, 1, true, 1.0);
    const ref::Vec scores{0.125f, 0.125f, 0.5f, 0.5f, 0.25f, 0.25f, 0.75f, 0.25f};
    CHECK(run_router(c, scores, nullptr, 1).expert == std::vector<int32_t>{2, 3});
  }
}

TEST_CASE("a token's weights sum to the scaling factor when normalised", "[moe]") {
  const int64_t N = 50, E = 8, K = 3;
  const moe::ModelConfig c = router_config(E, K, 1, 1, true, 2.5);
  const ref::Vec scores = ref::uniform(N * E, 70, 0.01, 1.0);
  const Routing r = run_router(c, scores, nullptr, N);
  for (int64_t t = 0; t < N; ++t) {
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) sum += r.weight[size_t(t * K + k)];
    REQUIRE(sum == Approx(2.5).epsilon(1e-6));
    // Descending key order (no bias: descending scores).
    for (int64_t k = 1; k < K; ++k) REQUIRE(r.weight[size_t(t * K + k - 1)] >= r.weight[size_t(t * K + k)]);
  }
}

TEST_CASE(
    "forced routing (moe bench --routing): balanced gives every expert N*K/E rows, skewed puts expert 0 in "
    "every top-K, weights by the router's formula",
    "[moe]") {
  const moe::ModelConfig c = router_config(16, 4, 4, 2, true, 2.5);
  const int64_t N = 64, E = 16, K = 4;
  ref::Vec scores(size_t(N * E));
  for (size_t i = 0; i < scores.size(); ++i) scores[i] = 0.05f + float((i * 37) % 91) / 100.0f;
  for (const moe::ForcedRouting mode : {moe::ForcedRouting::balanced, moe::ForcedRouting::skewed}) {
    Routing r = run_router(c, scores, nullptr, N);
    moe::force_routes(c, mode, scores.data(), r.expert.data(), r.weight.data(), N);
    std::vector<int64_t> counts(size_t(E), 0);
    for (int64_t t = 0; t < N; ++t) {
      const std::set<int32_t> distinct(r.expert.begin() + t * K, r.expert.begin() + (t + 1) * K);
      CHECK(distinct.size() == size_t(K));
      if (mode == moe::ForcedRouting::skewed) CHECK(distinct.count(0) == 1);
      float sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += scores[size_t(t * E + r.expert[size_t(t * K + k)])];
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = r.expert[size_t(t * K + k)];
        ++counts[size_t(e)];
        CHECK(r.weight[size_t(t * K + k)] == Approx(2.5 * scores[size_t(t * E + e)] / sum).epsilon(1e-6));
      }
    }
    if (mode == moe::ForcedRouting::balanced)
      for (int64_t e = 0; e < E; ++e) CHECK(counts[size_t(e)] == N * K / E);
    if (mode == moe::ForcedRouting::skewed) {
      CHECK(counts[0] == N);  // MaxVio (N - N·K/E) / (N·K/E) = E/K - 1 = 3: the most top-K allows
      for (int64_t e = 1; e < E; ++e) CHECK(std::abs(counts[size_t(e)] - N * (K - 1) / (E - 1)) <= 1);
    }
  }
  // natural leaves the router's choice alone
  Routing r = run_router(c, scores, nullptr, N);
  const Routing before = r;
  moe::force_routes(c, moe::ForcedRouting::natural, scores.data(), r.expert.data(), r.weight.data(), N);
  CHECK(r.expert == before.expert);
}
