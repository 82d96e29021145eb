// An error inside an OpenMP parallel region (a failing oneDNN product in the expert loops, an
// allocation) reaches the caller as the usual moe::Error instead of std::terminate: every GEMM of a
// training step's forward and backward is made to fail in turn (ComputeContext's fault injection).
#include <algorithm>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "../support/checks.hpp"
#include "core/error.hpp"
#include "core/threads.hpp"
#include "model/model.hpp"

TEST_CASE("reliability: an exception inside a parallel region is rethrown after it", "[reliability]") {
  moe::ParallelErrors errors;
  int64_t done = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : done)
  for (int i = 0; i < 64; ++i)
    errors.run([&] {
      if (i == 17) moe::fail("item 17 failed");
      ++done;
    });
  REQUIRE_THROWS_WITH(errors.rethrow(), "item 17 failed");
  CHECK(done < 64);
  moe::ParallelErrors none;
#pragma omp parallel for
  for (int i = 0; i < 8; ++i) none.run([] {});
  CHECK_NOTHROW(none.rethrow());
}

TEST_CASE("reliability: every failing GEMM of a training step becomes one error, not an abort", "[reliability]") {
  moe::ModelConfig c = moe_test::small_config();
  c.n_routed_experts = 8, c.num_experts_per_tok = 2, c.n_group = 1, c.topk_group = 1;
  moe::Model model(c);
  model.init(7);
  const int64_t B = 2, T = 16;
  std::vector<int32_t> tokens(size_t(B * T)), targets(size_t(B * T));
  for (int64_t i = 0; i < B * T; ++i)
    tokens[size_t(i)] = int32_t(i * 37 % 256), targets[size_t(i)] = int32_t(i * 11 % 256);
  moe::ComputeContext ctx;
  moe::Workspace ws(c, B, T, /*training=*/true);
  auto step = [&] {
    std::fill_n(model.grads.data(), model.layout.total, 0.0f);
    moe::model_forward(ctx, model, ws, tokens.data(), targets.data());
    moe::model_backward(ctx, model, ws);
  };
  // Count the step's 2-D products, then fail each in turn (the expert ones run inside the
  // parallel expert loops of forward and backward).
  const int64_t large = int64_t(1) << 40;
  ctx.fail_gemm_after = large;
  step();
  const int64_t products = large - ctx.fail_gemm_after.load();
  REQUIRE(products > 10);
  for (int64_t k = 0; k < products; ++k) {
    CAPTURE(k);
    auto failing_step = [&] {
      ctx.fail_gemm_after = k;
      step();
    };
    REQUIRE_MOE_ERROR(failing_step(), Catch::Contains("oneDNN sgemm failed"));
  }
  ctx.fail_gemm_after = -1;
  CHECK_NOTHROW(step());
}
