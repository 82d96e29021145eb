// RMSNorm forward against the spec formula in double, backward against central differences,
// and the accumulation contract of the backward (dx and dw are added to, not written).
#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "ops/rmsnorm.hpp"

// Finite-difference step and tolerance: ref::kFdStep / ref::kFdTolerance, justified in reference.hpp.

TEST_CASE("rmsnorm_forward matches x / sqrt(mean(x²) + eps) * w in double", "[ops]") {
  const int64_t rows = 5, dim = 12;
  const float eps = 1e-5f;
  const ref::Vec x = ref::randn(rows * dim, 1), w = ref::randn(dim, 2, 0.5, 1.0);
  ref::Vec y(size_t(rows * dim)), rstd(static_cast<size_t>(rows));
  moe::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, eps);
  const ref::DVec want = ref::rmsnorm(x.data(), w.data(), rows, dim, eps);
  CHECK(ref::max_abs_diff(ref::to_double(y), want) < 1e-5);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t i = 0; i < dim; ++i) ms += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + i)];
    CHECK(double(rstd[size_t(r)]) == Approx(1.0 / std::sqrt(ms / dim + eps)).epsilon(1e-6));
  }
  // eps matters when the row is tiny: a zero row gives zero, not NaN.
  ref::Vec zero(size_t(dim), 0.0f), out(size_t(dim), 1.0f);
  float r0 = 0.0f;
  moe::rmsnorm_forward(zero.data(), w.data(), out.data(), &r0, 1, dim, eps);
  for (float v : out) CHECK(v == 0.0f);
  CHECK(double(r0) == Approx(1.0 / std::sqrt(double(eps))).epsilon(1e-6));
}

TEST_CASE("rmsnorm_backward matches finite differences and accumulates into dx and dw", "[ops]") {
  const int64_t rows = 6, dim = 10;
  const float eps = 1e-6f;
  ref::Vec x = ref::randn(rows * dim, 3), w = ref::randn(dim, 4, 0.5, 1.0);
  const ref::Vec r = ref::randn(rows * dim, 5);
  ref::Vec y(size_t(rows * dim)), rstd(static_cast<size_t>(rows));
  auto loss = [&] {
    moe::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, eps);
    return ref::weighted_sum(r, y.data());
  };
  loss();
  ref::Vec dx(size_t(rows * dim), 0.0f), dw(size_t(dim), 0.0f);
  moe::rmsnorm_backward(x.data(), w.data(), rstd.data(), r.data(), dx.data(), dw.data(), rows, dim);

  const auto gx = ref::check_gradient(x.data(), dx.data(), ref::all_coords(rows * dim), ref::kFdStep, loss);
  CHECK(gx.error() < ref::kFdTolerance);
  const auto gw = ref::check_gradient(w.data(), dw.data(), ref::all_coords(dim), ref::kFdStep, loss);
  CHECK(gw.error() < ref::kFdTolerance);

  // Same call on prefilled buffers: the result is prefill + gradient (x is on the residual
  // stream, and dw sums over micro-batches).
  loss();
  const ref::Vec dx0 = ref::randn(rows * dim, 6), dw0 = ref::randn(dim, 7);
  ref::Vec dx_acc = dx0, dw_acc = dw0;
  moe::rmsnorm_backward(x.data(), w.data(), rstd.data(), r.data(), dx_acc.data(), dw_acc.data(), rows, dim);
  for (size_t i = 0; i < dx.size(); ++i) REQUIRE(dx_acc[i] == Approx(dx0[i] + dx[i]).margin(1e-6));
  for (size_t i = 0; i < dw.size(); ++i) REQUIRE(dw_acc[i] == Approx(dw0[i] + dw[i]).margin(1e-5));
}
