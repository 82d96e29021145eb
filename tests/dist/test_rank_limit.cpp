// Device-limited routing against a brute-force reference: every token's experts live on at most
// M ranks, those ranks are the ones with the largest sums of their ceil(K/M) best keys, and the
// experts are the K best keys among them. (No MPI needed: routing only sees the rank layout.)
#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "core/rng.hpp"
#include "moe/router.hpp"

TEST_CASE("device-limited routing picks experts from the M best ranks only", "[moe][dist]") {
  moe::ModelConfig c;
  c.n_routed_experts = 16;
  c.num_experts_per_tok = 4;
  c.n_group = 1;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  const int64_t E = 16, K = 4, N = 500;
  moe::Rng rng(7);
  std::vector<float> scores(static_cast<size_t>(N * E)), bias(static_cast<size_t>(E));
  for (float& s : scores) s = float(rng.uniform());
  for (float& b : bias) b = float(rng.uniform() * 0.1 - 0.05);
  for (const auto& [ranks, max_ranks] : std::vector<std::pair<int64_t, int64_t>>{{4, 1}, {4, 2}, {8, 2}, {2, 1}}) {
    CAPTURE(ranks, max_ranks);
    std::vector<int32_t> expert(static_cast<size_t>(N * K));
    std::vector<float> weight(static_cast<size_t>(N * K));
    moe::route_tokens(c, scores.data(), bias.data(), expert.data(), weight.data(), N, {ranks, max_ranks});
    const int64_t size = E / ranks, per = (K + max_ranks - 1) / max_ranks;
    for (int64_t t = 0; t < N; ++t) {
      std::vector<float> keys(static_cast<size_t>(E));
      for (int64_t i = 0; i < E; ++i) keys[size_t(i)] = scores[size_t(t * E + i)] + bias[size_t(i)];
      // Reference: rank score = sum of its `per` best keys; the max_ranks best ranks, lower index on ties.
      std::vector<std::pair<float, int64_t>> rank_score;
      for (int64_t r = 0; r < ranks; ++r) {
        std::vector<float> block(keys.begin() + r * size, keys.begin() + (r + 1) * size);
        std::sort(block.rbegin(), block.rend());
        rank_score.push_back({std::accumulate(block.begin(), block.begin() + per, 0.0f), r});
      }
      std::stable_sort(rank_score.begin(), rank_score.end(), [](auto a, auto b) { return a.first > b.first; });
      std::set<int64_t> allowed;
      for (int64_t m = 0; m < max_ranks; ++m) allowed.insert(rank_score[size_t(m)].second);
      std::vector<std::pair<float, int64_t>> eligible;
      for (int64_t i = 0; i < E; ++i)
        if (allowed.count(i / size)) eligible.push_back({keys[size_t(i)], i});
      std::stable_sort(eligible.begin(), eligible.end(), [](auto a, auto b) { return a.first > b.first; });
      std::set<int64_t> used_ranks;
      for (int64_t k = 0; k < K; ++k) {
        INFO("token " << t << " slot " << k);
        REQUIRE(expert[size_t(t * K + k)] == eligible[size_t(k)].second);
        used_ranks.insert(expert[size_t(t * K + k)] / size);
      }
      REQUIRE(int64_t(used_ranks.size()) <= max_ranks);
    }
  }
}

TEST_CASE("rank limit off (or M >= ranks) routes exactly like plain top-K", "[moe][dist]") {
  moe::ModelConfig c;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 1;
  c.topk_group = 1;
  moe::Rng rng(3);
  const int64_t N = 200, E = 8, K = 2;
  std::vector<float> scores(static_cast<size_t>(N * E));
  for (float& s : scores) s = float(rng.uniform());
  std::vector<int32_t> plain(static_cast<size_t>(N * K)), limited(static_cast<size_t>(N * K));
  std::vector<float> w1(static_cast<size_t>(N * K)), w2(static_cast<size_t>(N * K));
  moe::route_tokens(c, scores.data(), nullptr, plain.data(), w1.data(), N);
  moe::route_tokens(c, scores.data(), nullptr, limited.data(), w2.data(), N, {4, 4});
  CHECK(plain == limited);
  CHECK(w1 == w2);
}
