// Model::init draws every tensor from its own stream (the seed and the tensor's name), so an expert
// shard is initialised with exactly its values in the whole model without drawing or allocating the
// rest, whatever the thread count; and the values follow the documented distribution.
#include <cmath>
#include <cstring>
#include <string>

#include <catch2/catch.hpp>
#include <omp.h>

#include "../support/checks.hpp"
#include "core/arena.hpp"
#include "model/model.hpp"

namespace {

moe::ModelConfig eight_experts() {
  moe::ModelConfig c = moe_test::small_config();
  c.n_routed_experts = 8;
  moe::validate(c, "eight_experts");
  return c;
}

bool same_values(const moe::Model& a, const moe::TensorSpec& spec, const moe::Model& b) {
  const moe::TensorSpec* other = b.find(spec.name);
  REQUIRE(other != nullptr);
  REQUIRE(other->numel == spec.numel);
  return std::memcmp(a.params.data() + spec.offset, b.params.data() + other->offset, size_t(spec.numel) * 4) == 0;
}

}  // namespace

TEST_CASE("model init: an expert shard holds the whole model's values and allocates only its own tensors", "[model]") {
  const moe::ModelConfig c = eight_experts();
  moe::Model whole(c, {}, /*with_grads=*/false);
  whole.init(77);
  for (int ranks : {2, 4, 8}) {
    for (int rank = 0; rank < ranks; ++rank) {
      CAPTURE(ranks, rank);
      const int64_t per = c.n_routed_experts / ranks;
      const int64_t before = moe::ArenaBytes::held.load();
      moe::ArenaBytes::reset_peak();
      moe::Model part(c, {rank * per, per}, /*with_grads=*/false);
      part.init(77);
      // Its own parameter arena and nothing else: init stages no whole model.
      CHECK(moe::ArenaBytes::peak.load() - before == (part.layout.total * 4 + 63) / 64 * 64);
      CHECK(part.layout.total < whole.layout.total);
      for (const moe::TensorSpec& spec : part.layout.tensors) {
        CAPTURE(spec.name);
        CHECK(same_values(part, spec, whole));
      }
    }
  }
}

TEST_CASE("model init: the same values for any thread count, different ones for another seed or tensor", "[model]") {
  const moe::ModelConfig c = eight_experts();
  const int threads = omp_get_max_threads();
  moe::Model one(c, {}, false), two(c, {}, false), other_seed(c, {}, false);
  omp_set_num_threads(1);
  one.init(5);
  omp_set_num_threads(2);
  two.init(5);
  other_seed.init(6);
  omp_set_num_threads(threads);
  CHECK(std::memcmp(one.params.data(), two.params.data(), size_t(one.layout.total) * 4) == 0);
  const moe::TensorSpec* expert0 = one.find("model.layers.1.mlp.experts.0.up_proj.weight");
  const moe::TensorSpec* expert1 = one.find("model.layers.1.mlp.experts.1.up_proj.weight");
  REQUIRE(expert0);
  REQUIRE(expert1);
  int64_t equal_across_experts = 0, equal_across_seeds = 0;
  for (int64_t i = 0; i < expert0->numel; ++i) {
    equal_across_experts += one.params[expert0->offset + i] == one.params[expert1->offset + i];
    equal_across_seeds += one.params[expert0->offset + i] == other_seed.params[expert0->offset + i];
  }
  CHECK(equal_across_experts == 0);
  CHECK(equal_across_seeds == 0);
  // Matrices ~ normal(0, initializer_range), norms 1, the routing bias 0.
  for (const moe::TensorSpec& spec : one.layout.tensors) {
    CAPTURE(spec.name);
    const float* p = one.params.data() + spec.offset;
    if (spec.role == moe::TensorRole::norm || spec.role == moe::TensorRole::router_bias) {
      const float expected = spec.role == moe::TensorRole::norm ? 1.0f : 0.0f;
      for (int64_t i = 0; i < spec.numel; ++i) CHECK(p[i] == expected);
      continue;
    }
    if (spec.numel < 2000) continue;  // too few values for a tight check of the moments
    double sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < spec.numel; ++i) sum += p[i], sum_sq += double(p[i]) * p[i];
    const double n = double(spec.numel), mean = sum / n, sd = std::sqrt(sum_sq / n - mean * mean);
    const double range = c.initializer_range;
    CHECK(std::fabs(mean) < 5 * range / std::sqrt(n));
    CHECK(std::fabs(sd - range) < 5 * range / std::sqrt(2 * n));
  }
}
