// exp_fast against double-precision exp: relative error, the special values, and the boundaries.
#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include "core/vmath.hpp"

TEST_CASE("exp_fast matches double exp to 2e-7 relative over the finite float range", "[core]") {
  double worst = 0.0;
  float worst_at = 0.0f;
  // ~350k points spread over [-87.3, 88], denser near 0 where softmax and SiLU live.
  for (float x = -87.3f; x < 88.0f; x += 5e-4f + 1e-4f * std::fabs(x)) {
    const double rel = std::fabs(double(moe::exp_fast(x)) / std::exp(double(x)) - 1.0);
    if (rel > worst) worst = rel, worst_at = x;
  }
  INFO("worst at x = " << worst_at);
  CHECK(worst < 2e-7);
  CHECK(moe::exp_fast(0.0f) == 1.0f);
  CHECK(moe::exp_fast(1.0f) == Approx(2.718281828).epsilon(2e-7));
  CHECK(moe::exp_fast(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(moe::exp_fast(-100.0f) == 0.0f);
  CHECK(std::isinf(moe::exp_fast(100.0f)));
  CHECK(std::isnan(moe::exp_fast(std::numeric_limits<float>::quiet_NaN())));
  CHECK(moe::sigmoid_fast(0.0f) == 0.5f);
  CHECK(moe::sigmoid_fast(-200.0f) == 0.0f);
  CHECK(moe::sigmoid_fast(200.0f) == 1.0f);
  CHECK(moe::sigmoid_fast(2.0f) == Approx(1.0 / (1.0 + std::exp(-2.0))).epsilon(2e-7));
}
