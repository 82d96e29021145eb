// RoPE (rotate-half) forward against angles computed independently in double, including the
// position offset used by decoding; backward against finite differences and as the exact
// transpose of the forward; the head split/merge layout moves.
#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "ops/rope.hpp"

namespace {

// (B, T, heads, hd) token-major input -> (B, heads, T, hd) rotated for positions pos0 + t.
ref::DVec rope_reference(const ref::Vec& in, int64_t B, int64_t T, int64_t heads, int64_t hd, int64_t pos0,
                         double theta) {
  ref::DVec out(in.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        ref::rope_vector(in.data() + ((b * T + t) * heads + h) * hd, out.data() + ((b * heads + h) * T + t) * hd, hd,
                         pos0 + t, theta);
  return out;
}

}  // namespace

TEST_CASE("rope_forward is the rotate-half rotation at absolute positions, with pos0 offset", "[ops]") {
  const int64_t B = 2, T = 5, heads = 3, hd = 8;
  for (double theta : {10000.0, 100.0}) {
    const moe::RopeTable table(hd, 32, theta);
    const ref::Vec in = ref::randn(B * T * heads * hd, 1);
    ref::Vec out(in.size());
    for (int64_t pos0 : {0, 3, 20}) {
      CAPTURE(theta, pos0);
      moe::rope_forward(table, in.data(), out.data(), B, T, heads, pos0);
      CHECK(ref::max_abs_diff(ref::to_double(out), rope_reference(in, B, T, heads, hd, pos0, theta)) < 2e-6);
    }
  }
  // Position 0 is the identity (cos 0 = 1, sin 0 = 0), so only the layout changes.
  const moe::RopeTable table(hd, 4, 10000.0);
  const ref::Vec in = ref::randn(1 * 1 * 2 * hd, 2);
  ref::Vec out(in.size());
  moe::rope_forward(table, in.data(), out.data(), 1, 1, 2, 0);
  CHECK(out == in);
  // A hand-worked case: hd = 2, theta irrelevant (i = 0 has inv_freq 1), position 1:
  // [x1, x2] -> [x1 cos1 - x2 sin1, x2 cos1 + x1 sin1].
  const moe::RopeTable tiny(2, 4, 10000.0);
  const float x[2] = {1.0f, 2.0f};
  float y[2];
  moe::rope_forward(tiny, x, y, 1, 1, 1, 1);
  CHECK(y[0] == Approx(std::cos(1.0) - 2.0 * std::sin(1.0)).margin(1e-6));
  CHECK(y[1] == Approx(2.0 * std::cos(1.0) + std::sin(1.0)).margin(1e-6));
}

TEST_CASE("rope_backward matches finite differences and is the transpose of rope_forward", "[ops]") {
  const int64_t B = 2, T = 4, heads = 2, hd = 6, pos0 = 5;
  const moe::RopeTable table(hd, 16, 500.0);
  ref::Vec in = ref::randn(B * T * heads * hd, 3);
  const ref::Vec r = ref::randn(in.size(), 4);
  ref::Vec out(in.size()), d_in(in.size());
  auto loss = [&] {
    moe::rope_forward(table, in.data(), out.data(), B, T, heads, pos0);
    return ref::weighted_sum(r, out.data());
  };
  moe::rope_backward(table, r.data(), d_in.data(), B, T, heads, pos0);
  // The op is linear, so central differences are exact up to float rounding.
  const auto g = ref::check_gradient(in.data(), d_in.data(), ref::all_coords(int64_t(in.size())), ref::kFdStep, loss);
  CHECK(g.error() < ref::kFdTolerance);
  // <rope(x), r> == <x, ropeᵀ(r)> in double, to float rounding.
  loss();
  double lhs = ref::weighted_sum(r, out.data()), rhs = ref::weighted_sum(in, d_in.data());
  CHECK(lhs == Approx(rhs).epsilon(1e-5));
  // d_in is written, not accumulated.
  ref::Vec again(in.size(), 123.0f);
  moe::rope_backward(table, r.data(), again.data(), B, T, heads, pos0);
  CHECK(again == d_in);
}

TEST_CASE("split_heads and merge_heads move (B, T, heads, hd) <-> (B, heads, T, hd)", "[ops]") {
  const int64_t B = 2, T = 3, heads = 4, hd = 2;
  const ref::Vec in = ref::randn(B * T * heads * hd, 5);
  ref::Vec split(in.size()), back(in.size());
  moe::split_heads(in.data(), split.data(), B, T, heads, hd);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd; ++i)
          REQUIRE(split[size_t(((b * heads + h) * T + t) * hd + i)] == in[size_t(((b * T + t) * heads + h) * hd + i)]);
  moe::merge_heads(split.data(), back.data(), B, T, heads, hd);
  CHECK(back == in);
}

TEST_CASE("adjacent-pair RoPE (DeepSeek-V3 rope_interleave) rotates (x_2i, x_2i+1) and inverts exactly", "[ops]") {
  // The angle of pair i at position p is p * theta^(-2i/d), computed here in double.
  const int64_t hd = 8;
  const double theta = 10000.0;
  const moe::RopeTable table(hd, 64, theta, /*adjacent_pairs=*/true);
  const ref::Vec x = ref::randn(hd, 7);
  for (int64_t pos : {0, 1, 17, 63}) {
    CAPTURE(pos);
    float y[hd], back[hd];
    moe::rope_rotate(table, x.data(), y, pos);
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double angle = double(pos) * std::pow(theta, -2.0 * double(i) / double(hd));
      const double x1 = x[size_t(2 * i)], x2 = x[size_t(2 * i + 1)];
      CHECK(y[2 * i] == Approx(x1 * std::cos(angle) - x2 * std::sin(angle)).margin(2e-6));
      CHECK(y[2 * i + 1] == Approx(x2 * std::cos(angle) + x1 * std::sin(angle)).margin(2e-6));
    }
    // rope_rotate_back is the transpose, i.e. the inverse rotation.
    moe::rope_rotate_back(table, y, back, pos);
    for (int64_t i = 0; i < hd; ++i) CHECK(back[i] == Approx(x[size_t(i)]).margin(2e-6));
  }
  // The two pairings differ (a test that cannot tell them apart proves nothing).
  const moe::RopeTable halves(hd, 64, theta);
  float a[hd], b[hd];
  moe::rope_rotate(table, x.data(), a, 5);
  moe::rope_rotate(halves, x.data(), b, 5);
  double diff = 0;
  for (int64_t i = 0; i < hd; ++i) diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  CHECK(diff > 1e-2);
}
