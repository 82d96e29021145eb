// The shared expert dispatch (moe/dispatch.hpp): the counting sort against a known layout, and the
// per-expert SwiGLU under a skewed load (one expert holding most rows runs alone with every thread
// in its GEMMs) against the double-precision reference FFN per expert, forward and backward
// (weight gradients by central differences of Σ r·y).
#include <catch2/catch.hpp>
#include <omp.h>

#include "../reference.hpp"
#include "moe/dispatch.hpp"

TEST_CASE("sort_by_expert: a known layout with padding", "[moe]") {
  // Slots j = token·K + k of 3 tokens, K = 2: experts (2,0) (2,1) (0,2).
  const int32_t expert[6] = {2, 0, 2, 1, 0, 2};
  int32_t counts[3], offsets[4], cursor[3], slot_row[6], row_slot[12];
  moe::sort_by_expert(expert, 6, 3, 4, counts, offsets, cursor, slot_row, row_slot);
  CHECK(std::vector<int32_t>(counts, counts + 3) == std::vector<int32_t>{2, 1, 3});
  CHECK(std::vector<int32_t>(offsets, offsets + 4) == std::vector<int32_t>{0, 4, 8, 12});
  // Expert 0: slots 1, 4; expert 1: slot 3; expert 2: slots 0, 2, 5 (slot order within an expert).
  CHECK(std::vector<int32_t>(slot_row, slot_row + 6) == std::vector<int32_t>{8, 0, 9, 4, 1, 10});
  CHECK(std::vector<int32_t>(row_slot, row_slot + 12) ==
        std::vector<int32_t>{1, 4, -1, -1, 3, -1, -1, -1, 0, 2, 5, -1});
}

TEST_CASE("experts_forward / experts_backward under a skewed load equal the reference FFN per expert", "[moe]") {
  const int64_t E = 4, D = 32, Im = 16;
  // Expert 1 holds 70 % of the rows (it runs alone on every thread), expert 2 none.
  const std::vector<int32_t> offsets = {0, 24, 24 + 168, 24 + 168, 24 + 168 + 48};
  const int64_t R = offsets[E];
  ref::Vec gate = ref::randn(E * Im * D, 1, 0.2), up = ref::randn(E * Im * D, 2, 0.2);
  ref::Vec down = ref::randn(E * D * Im, 3, 0.2);
  const ref::Vec x = ref::randn(R * D, 4), r = ref::randn(R * D, 5);
  ref::Vec y(size_t(R * D)), g(size_t(R * Im)), u(size_t(R * Im)), a(size_t(R * Im));
  moe::ComputeContext ctx;
  const int restore = omp_get_max_threads();
  const moe::ExpertStack w{gate.data(), up.data(), down.data(), D, Im};
  for (const int threads : {1, 2}) {
    omp_set_num_threads(threads);
    CAPTURE(threads);
    moe::experts_forward(ctx, w, offsets.data(), E, x.data(), y.data(), g.data(), u.data(), a.data());
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
      if (rows == 0) continue;
      const ref::DVec want = ref::ffn(x.data() + r0 * D, gate.data() + e * Im * D, up.data() + e * Im * D,
                                      down.data() + e * D * Im, rows, D, Im);
      CHECK(ref::rel_error(ref::to_double(y.data() + r0 * D, rows * D), want) < 1e-5);
    }
    // Backward of L = Σ r·y: weight gradients against central differences of the reference.
    ref::Vec dgate(gate.size(), 0.0f), dup(up.size(), 0.0f), ddown(down.size(), 0.0f), dx(size_t(R * D));
    ref::Vec scratch(size_t(2 * R * Im));
    const moe::ExpertStack grads{dgate.data(), dup.data(), ddown.data(), D, Im};
    moe::experts_backward(ctx, w, grads, offsets.data(), E, x.data(), r.data(), dx.data(), g.data(), u.data(), a.data(),
                          scratch.data());
    auto loss = [&] {
      double total = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
        if (rows == 0) continue;
        const ref::DVec ye = ref::ffn(x.data() + r0 * D, gate.data() + e * Im * D, up.data() + e * Im * D,
                                      down.data() + e * D * Im, rows, D, Im);
        for (int64_t i = 0; i < rows * D; ++i) total += double(r[size_t(r0 * D + i)]) * ye[size_t(i)];
      }
      return total;
    };
    for (const auto& p : {std::make_pair(&gate, &dgate), std::make_pair(&up, &dup), std::make_pair(&down, &ddown)}) {
      const auto check = ref::check_gradient(p.first->data(), p.second->data(),
                                             ref::sample_coords(int64_t(p.first->size()), 40, 9), 1e-3, loss);
      CHECK(check.error() < 2e-3);
    }
    // Expert 2 had no rows: its gradients stay zero.
    for (int64_t i = 2 * Im * D; i < 3 * Im * D; ++i) REQUIRE(dgate[size_t(i)] == 0.0f);
  }
  omp_set_num_threads(restore);
}
