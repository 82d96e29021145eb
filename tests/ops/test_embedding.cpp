// Embedding lookup and its scatter-add backward (repeated tokens sum), and the softmax
// cross-entropy head: value against log-softmax in double, gradient against finite differences.
#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "ops/embedding.hpp"

TEST_CASE("embedding_forward copies rows and embedding_backward scatter-adds (finite differences)", "[ops]") {
  const int64_t V = 9, D = 6, rows = 8;
  ref::Vec table = ref::randn(V * D, 1);
  const std::vector<int32_t> tokens{3, 0, 3, 8, 5, 3, 0, 7};  // repeats must sum
  const ref::Vec r = ref::randn(rows * D, 2);
  ref::Vec x(size_t(rows * D));
  moe::embedding_forward(table.data(), tokens.data(), x.data(), rows, D);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < D; ++i) REQUIRE(x[size_t(t * D + i)] == table[size_t(tokens[size_t(t)] * D + i)]);

  auto loss = [&] {
    moe::embedding_forward(table.data(), tokens.data(), x.data(), rows, D);
    return ref::weighted_sum(r, x.data());
  };
  const ref::Vec prefill = ref::randn(V * D, 3);
  ref::Vec d_table = prefill;
  moe::embedding_backward(tokens.data(), r.data(), d_table.data(), rows, D);
  ref::Vec grad(d_table.size());
  for (size_t i = 0; i < grad.size(); ++i) grad[i] = d_table[i] - prefill[i];
  // Linear op: central differences are exact up to float rounding; unused rows (1, 2, 4, 6) must be 0.
  CHECK(ref::check_gradient(table.data(), grad.data(), ref::all_coords(V * D), 1e-2, loss).error() < 1e-3);
  for (int64_t v : {1, 2, 4, 6})
    for (int64_t i = 0; i < D; ++i) CHECK(d_table[size_t(v * D + i)] == prefill[size_t(v * D + i)]);
  // Exact: row 3 receives r[0] + r[2] + r[5].
  for (int64_t i = 0; i < D; ++i)
    CHECK(double(grad[size_t(3 * D + i)]) ==
          Approx(double(r[size_t(0 * D + i)]) + r[size_t(2 * D + i)] + r[size_t(5 * D + i)]).margin(1e-5));
}

TEST_CASE("cross_entropy_forward_backward: Σ -log softmax[target] and scaled gradient (finite differences)", "[ops]") {
  const int64_t rows = 4, V = 11;
  ref::Vec logits = ref::randn(rows * V, 4, 2.0);
  const std::vector<int32_t> targets{0, 10, 5, 5};
  const double loss = moe::cross_entropy_forward_backward(logits.data(), targets.data(), nullptr, rows, V, 0.0f);
  CHECK(loss == Approx(ref::cross_entropy_sum(logits.data(), targets.data(), rows, V)).epsilon(1e-6));

  const float scale = 0.37f;
  ref::Vec d_logits(logits.size(), 9.0f);
  moe::cross_entropy_forward_backward(logits.data(), targets.data(), d_logits.data(), rows, V, scale);
  auto scaled_loss = [&] { return double(scale) * ref::cross_entropy_sum(logits.data(), targets.data(), rows, V); };
  // The loss is evaluated in double here, so only truncation error (~h²) remains: 1e-3 is loose.
  const auto g = ref::check_gradient(logits.data(), d_logits.data(), ref::all_coords(rows * V), 1e-3, scaled_loss);
  CHECK(g.error() < 1e-3);
  // And the library's own loss value agrees with it under perturbation (FD of the library's loss).
  auto lib_loss = [&] {
    return double(scale) * moe::cross_entropy_forward_backward(logits.data(), targets.data(), nullptr, rows, V, 0.0f);
  };
  const auto g_lib =
      ref::check_gradient(logits.data(), d_logits.data(), ref::all_coords(rows * V), ref::kFdStep, lib_loss);
  CHECK(g_lib.error() < ref::kFdTolerance);

  // d_logits may alias logits.
  ref::Vec aliased = logits;
  moe::cross_entropy_forward_backward(aliased.data(), targets.data(), aliased.data(), rows, V, scale);
  for (size_t i = 0; i < aliased.size(); ++i) REQUIRE(aliased[i] == Approx(d_logits[i]).margin(1e-7));

  // Numerically stable for large logits: shifting every row by 1000 changes nothing.
  ref::Vec shifted = logits;
  for (auto& z : shifted) z += 1000.0f;
  const double shifted_loss = moe::cross_entropy_forward_backward(shifted.data(), targets.data(), nullptr, rows, V, 0);
  CHECK(std::isfinite(shifted_loss));
  CHECK(shifted_loss == Approx(loss).epsilon(1e-3));
}
