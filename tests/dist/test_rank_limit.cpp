// Device-limited routing against a brute-force reference: every token's experts live on at most
// M ranks, those ranks are the ones with the largest sums of their ceil(K/M) best keys, and the
// experts are the K best keys among them. It is part of the model config, so a forward on one
// process and an expert-parallel forward route the same tokens the same way. (No MPI needed:
// routing only sees the block layout.)
#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "../support/checks.hpp"
#include "core/rng.hpp"
#include "dist/expert_parallel.hpp"
#include "model/model.hpp"
#include "moe/router.hpp"

namespace {

// The K experts a token may use under the limit, best first, from its keys (scores + bias): written
// from the rule, not from router.cpp (sorts instead of the router's running selection).
std::vector<int64_t> reference_route(const std::vector<float>& keys, int64_t ranks, int64_t max_ranks, int64_t K) {
  const int64_t E = int64_t(keys.size()), size = E / ranks, per = (K + max_ranks - 1) / max_ranks;
  // Rank score = sum of its `per` best keys; the max_ranks best ranks, lower index on ties.
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
  std::vector<int64_t> chosen;
  for (int64_t k = 0; k < K; ++k) chosen.push_back(eligible[size_t(k)].second);
  return chosen;
}

}  // namespace

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
    c.expert_ranks = ranks;
    c.max_ranks_per_token = max_ranks;
    moe::validate(c, "test");
    std::vector<int32_t> expert(static_cast<size_t>(N * K));
    std::vector<float> weight(static_cast<size_t>(N * K));
    moe::route_tokens(c, scores.data(), bias.data(), expert.data(), weight.data(), N);
    const int64_t size = E / ranks;
    for (int64_t t = 0; t < N; ++t) {
      std::vector<float> keys(static_cast<size_t>(E));
      for (int64_t i = 0; i < E; ++i) keys[size_t(i)] = scores[size_t(t * E + i)] + bias[size_t(i)];
      const std::vector<int64_t> want = reference_route(keys, ranks, max_ranks, K);
      std::set<int64_t> used_ranks;
      for (int64_t k = 0; k < K; ++k) {
        INFO("token " << t << " slot " << k);
        REQUIRE(expert[size_t(t * K + k)] == want[size_t(k)]);
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
  c.expert_ranks = 4;
  c.max_ranks_per_token = 4;
  CHECK(!c.rank_limited());
  moe::route_tokens(c, scores.data(), nullptr, limited.data(), w2.data(), N);
  CHECK(plain == limited);
  CHECK(w1 == w2);
}

TEST_CASE("the model's rank limit routes a one-process forward exactly like an expert-parallel one", "[moe][dist]") {
  moe::ModelConfig c = moe_test::expert_parallel_config();
  // 4 blocks of 2 experts (the shards of a 4-rank expert-parallel run), one block per token.
  c.expert_ranks = 4;
  c.max_ranks_per_token = 1;
  moe::validate(c, "test");
  const int64_t B = 3, T = 20, N = B * T, E = 8, K = 2;
  moe::Model local(c), remote(c);
  local.init(5);
  remote.init(5);
  // A routing bias, as training leaves it: selection must use it, the reference too.
  moe::Rng rng(9);
  for (moe::Model* m : {&local, &remote}) {
    moe::Rng bias_rng(11);
    for (int64_t l = 1; l < c.num_hidden_layers; ++l)
      for (int64_t e = 0; e < E; ++e)
        m->weights.layers[size_t(l)].moe.router_bias[e] = float(bias_rng.uniform() * 0.2 - 0.1);
  }
  std::vector<int32_t> tokens(static_cast<size_t>(N)), targets(static_cast<size_t>(N));
  for (auto& t : tokens) t = int32_t(rng.next_u64() % 256);
  for (auto& t : targets) t = int32_t(rng.next_u64() % 256);
  REQUIRE(moe::Dist::world().size() == 1);
  moe::ExpertParallel ep(moe::Dist::world(), c, N);
  moe::ComputeContext ctx;
  moe::Workspace ws_local(c, B, T, false), ws_remote(c, B, T, false, false, &ep);
  const double loss_local = moe::model_forward(ctx, local, ws_local, tokens.data(), targets.data());
  const double loss_remote = moe::model_forward(ctx, remote, ws_remote, tokens.data(), targets.data());
  CHECK(loss_remote == Approx(loss_local).epsilon(1e-6));
  int64_t limited_tokens = 0;  // tokens whose plain top-K would span two blocks
  for (int64_t l = 1; l < c.num_hidden_layers; ++l) {
    const moe::MoeSaved &a = ws_local.layers[size_t(l)].moe, &b = ws_remote.layers[size_t(l)].moe;
    const float* bias = local.weights.layers[size_t(l)].moe.router_bias;
    for (int64_t t = 0; t < N; ++t) {
      std::vector<float> keys(static_cast<size_t>(E));
      for (int64_t i = 0; i < E; ++i) keys[size_t(i)] = a.scores[t * E + i] + bias[i];
      const std::vector<int64_t> want = reference_route(keys, 4, 1, K);
      const std::vector<int64_t> plain = reference_route(keys, 1, 1, K);
      limited_tokens += plain[0] / 2 != plain[1] / 2;
      for (int64_t k = 0; k < K; ++k) {
        INFO("layer " << l << " token " << t << " slot " << k);
        REQUIRE(a.expert[t * K + k] == want[size_t(k)]);
        REQUIRE(b.expert[t * K + k] == a.expert[t * K + k]);
      }
    }
  }
  // The limit changed the choice of many tokens, so the comparison above means something.
  CAPTURE(limited_tokens);
  CHECK(limited_tokens > N / 4);
}
