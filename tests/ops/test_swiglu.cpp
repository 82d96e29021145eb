// SwiGLU elementwise op and the whole SwiGLU FFN: forward against double references, backward
// against central differences; weight gradients accumulate, dx is written or accumulated on request.
#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "ops/swiglu.hpp"

// Finite-difference step and tolerance: ref::kFdStep / ref::kFdTolerance, justified in reference.hpp.

TEST_CASE("swiglu_forward is silu(g)·u and swiglu_backward matches finite differences", "[ops]") {
  const int64_t n = 37;
  ref::Vec g = ref::randn(n, 1, 2.0), u = ref::randn(n, 2);
  const ref::Vec r = ref::randn(n, 3);
  ref::Vec a(static_cast<size_t>(n));
  moe::swiglu_forward(g.data(), u.data(), a.data(), n);
  for (int64_t i = 0; i < n; ++i)
    REQUIRE(double(a[size_t(i)]) == Approx(ref::silu(g[size_t(i)]) * u[size_t(i)]).margin(1e-6));

  auto loss = [&] {
    moe::swiglu_forward(g.data(), u.data(), a.data(), n);
    return ref::weighted_sum(r, a.data());
  };
  ref::Vec dg(size_t(n), 5.0f), du(size_t(n), 5.0f);
  moe::swiglu_backward(g.data(), u.data(), r.data(), dg.data(), du.data(), n);
  auto fd_error = [&](ref::Vec& param, const ref::Vec& grad) {
    return ref::check_gradient(param.data(), grad.data(), ref::all_coords(int64_t(param.size())), ref::kFdStep, loss)
        .error();
  };
  CHECK(fd_error(g, dg) < ref::kFdTolerance);
  CHECK(fd_error(u, du) < ref::kFdTolerance);
}

TEST_CASE("ffn_forward matches down(silu(gate x) ⊙ up x) and ffn_backward matches finite differences", "[ops]") {
  moe::ComputeContext ctx;
  const int64_t rows = 5, D = 7, I = 9;
  {
    ref::Vec x = ref::randn(rows * D, 10), gate = ref::randn(I * D, 11, 0.5), up = ref::randn(I * D, 12, 0.5),
             down = ref::randn(D * I, 13, 0.5);
    const ref::Vec r = ref::randn(rows * D, 14);
    ref::Vec g(size_t(rows * I)), u(g.size()), a(g.size()), y(size_t(rows * D));
    const moe::FfnWeights w{gate.data(), up.data(), down.data()};
    const moe::FfnSaved saved{g.data(), u.data(), a.data()};
    auto loss = [&] {
      moe::ffn_forward(ctx, w, x.data(), y.data(), saved, rows, D, I);
      return ref::weighted_sum(r, y.data());
    };
    loss();
    const ref::DVec want = ref::ffn(x.data(), gate.data(), up.data(), down.data(), rows, D, I);
    CHECK(ref::max_abs_diff(ref::to_double(y), want) < 1e-5);

    // Weight gradients accumulate onto a prefill; dx is written (accumulate_dx = false).
    const ref::Vec pre_gate = ref::randn(I * D, 15), pre_up = ref::randn(I * D, 16), pre_down = ref::randn(D * I, 17);
    ref::Vec d_gate = pre_gate, d_up = pre_up, d_down = pre_down, dx(size_t(rows * D), 42.0f);
    ref::Vec scratch(size_t(2 * rows * I));
    moe::ffn_backward(ctx, w, {d_gate.data(), d_up.data(), d_down.data()}, x.data(), r.data(), dx.data(), saved,
                      scratch.data(), rows, D, I, false);
    auto minus = [](const ref::Vec& a, const ref::Vec& b) {
      ref::Vec d(a.size());
      for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
      return d;
    };
    const ref::Vec g_gate = minus(d_gate, pre_gate), g_up = minus(d_up, pre_up), g_down = minus(d_down, pre_down);
    auto fd_error = [&](ref::Vec& param, const ref::Vec& grad) {
      return ref::check_gradient(param.data(), grad.data(), ref::all_coords(int64_t(param.size())), ref::kFdStep, loss)
          .error();
    };
    CHECK(fd_error(x, dx) < ref::kFdTolerance);
    CHECK(fd_error(gate, g_gate) < ref::kFdTolerance);
    CHECK(fd_error(up, g_up) < ref::kFdTolerance);
    CHECK(fd_error(down, g_down) < ref::kFdTolerance);

    // accumulate_dx = true adds the same gradient onto what dx held.
    loss();
    const ref::Vec dx0 = ref::randn(rows * D, 18);
    ref::Vec dx_acc = dx0, sink_gate(d_gate.size()), sink_up(d_up.size()), sink_down(d_down.size());
    moe::ffn_backward(ctx, w, {sink_gate.data(), sink_up.data(), sink_down.data()}, x.data(), r.data(), dx_acc.data(),
                      saved, scratch.data(), rows, D, I, true);
    for (size_t i = 0; i < dx.size(); ++i) REQUIRE(dx_acc[i] == Approx(dx0[i] + dx[i]).margin(1e-5));
    for (size_t i = 0; i < g_gate.size(); ++i) REQUIRE(sink_gate[i] == Approx(g_gate[i]).margin(1e-5));
  }
}
