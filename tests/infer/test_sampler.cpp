// Sampling rules on hand-made distributions: exactly the intended candidates survive each filter.
#include <cmath>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "infer/sampler.hpp"

using namespace moe;

namespace {

// Logits whose softmax is exactly `probs` (log p).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> z;
  for (double p : probs) z.push_back(float(std::log(p)));
  return z;
}

std::set<int32_t> ids(const Sampler& s) {
  std::set<int32_t> out;
  for (const auto& c : s.candidates()) out.insert(c.id);
  return out;
}

}  // namespace

TEST_CASE("top-k keeps the k most likely tokens, ties to the lower id", "[sampler]") {
  SamplerConfig cfg;
  cfg.top_k = 3;
  Sampler s(cfg, 6, 1);
  const std::vector<float> z = {0.1f, 2.0f, 1.0f, 2.0f, -1.0f, 1.0f};
  s.load(z.data());
  s.sort_by_logit();
  s.apply_top_k();
  // 2.0 (ids 1, 3), then 1.0 tie between ids 2 and 5: the lower id wins.
  CHECK(ids(s) == std::set<int32_t>{1, 3, 2});
  double mass = 0;
  for (const auto& c : s.candidates()) mass += c.prob;
  CHECK(mass == Approx(1.0));
}

TEST_CASE("top-p keeps the smallest prefix reaching the mass", "[sampler]") {
  SamplerConfig cfg;
  cfg.top_k = 0;
  cfg.top_p = 0.75;
  Sampler s(cfg, 5, 1);
  const auto z = logits_of({0.1, 0.4, 0.3, 0.15, 0.05});
  s.load(z.data());
  s.sort_by_logit();
  s.apply_top_p();
  // 0.4 + 0.3 = 0.7 < 0.75, + 0.15 = 0.85 >= 0.75 -> ids 1, 2, 3.
  CHECK(ids(s) == std::set<int32_t>{1, 2, 3});
  cfg.top_p = 0.7;
  Sampler exact(cfg, 5, 1);
  exact.load(z.data());
  exact.sort_by_logit();
  exact.apply_top_p();
  CHECK(ids(exact).size() <= 3);
  CHECK(ids(exact).count(1) == 1);
  CHECK(ids(exact).count(2) == 1);
}

TEST_CASE("min-p drops tokens below min_p times the best probability", "[sampler]") {
  SamplerConfig cfg;
  cfg.top_k = 0;
  cfg.top_p = 1.0;
  cfg.min_p = 0.3;
  Sampler s(cfg, 5, 1);
  const auto z = logits_of({0.5, 0.2, 0.14, 0.1, 0.06});
  s.load(z.data());
  s.sort_by_logit();
  s.apply_min_p();
  // threshold 0.15: keeps 0.5 and 0.2 only.
  CHECK(ids(s) == std::set<int32_t>{0, 1});
}

TEST_CASE("repeat penalty divides positive and multiplies negative logits of recent tokens", "[sampler]") {
  SamplerConfig cfg;
  cfg.repeat_penalty = 2.0;
  cfg.repeat_last_n = 3;
  Sampler s(cfg, 6, 1);
  const std::vector<float> z = {4.0f, -1.0f, 3.0f, 2.0f, -2.0f, 1.0f};
  s.load(z.data());
  // Token 0 is outside the last 3 of the history; 1 (negative), 2 and 2 again (counted once), 4.
  s.apply_repeat_penalty({0, 1, 2, 2, 4});
  std::vector<float> got(6);
  for (const auto& c : s.candidates()) got[size_t(c.id)] = c.logit;
  CHECK(got[0] == 4.0f);
  CHECK(got[1] == -1.0f);  // only the last 3 tokens count: 2, 2, 4
  CHECK(got[2] == 1.5f);
  CHECK(got[3] == 2.0f);
  CHECK(got[4] == -4.0f);
  CHECK(got[5] == 1.0f);
}

TEST_CASE("greedy picks the argmax after the penalty and seeded sampling is reproducible", "[sampler]") {
  SamplerConfig greedy;
  greedy.temp = 0;
  greedy.repeat_penalty = 4.0;
  Sampler g(greedy, 4, 1);
  const std::vector<float> z = {1.0f, 3.0f, 2.0f, 0.5f};
  CHECK(g.sample(z.data(), {}) == 1);
  CHECK(g.sample(z.data(), {1}) == 2);  // 3 / 4 = 0.75 < 2

  SamplerConfig cfg;
  cfg.temp = 1.0;
  cfg.top_k = 0;
  cfg.top_p = 1.0;
  Sampler a(cfg, 4, 42), b(cfg, 4, 42), c(cfg, 4, 43);
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 200; ++i)
    ra.push_back(a.sample(z.data(), {})), rb.push_back(b.sample(z.data(), {})), rc.push_back(c.sample(z.data(), {}));
  CHECK(ra == rb);
  CHECK(ra != rc);
  // Frequencies follow softmax(z): token 1 has probability e^3 / Σ ≈ 0.63.
  const double p1 = std::exp(3.0) / (std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.5));
  int count = 0;
  Sampler d(cfg, 4, 7);
  for (int i = 0; i < 20000; ++i) count += d.sample(z.data(), {}) == 1;
  CHECK(double(count) / 20000 == Approx(p1).margin(0.015));
}

TEST_CASE("temperature sharpens: low temperature samples the mode almost always", "[sampler]") {
  SamplerConfig cfg;
  cfg.temp = 0.05;
  cfg.top_k = 0;
  cfg.top_p = 1.0;
  Sampler s(cfg, 3, 5);
  const std::vector<float> z = {1.0f, 1.5f, 0.0f};
  int mode = 0;
  for (int i = 0; i < 1000; ++i) mode += s.sample(z.data(), {}) == 1;
  CHECK(mode >= 999);
}
