// The expert-parallel dispatch (pack by owner, all-to-all, owner layout, experts, return) on a job
// of one rank against the local MoE layer: the same logits, loss and gradients. Runs without MPI
// (and under the sanitizers), so the permutation code is covered everywhere.
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "../support/checks.hpp"
#include "core/rng.hpp"
#include "dist/expert_parallel.hpp"
#include "model/model.hpp"

TEST_CASE("expert-parallel dispatch on one rank equals the local MoE layer in forward and backward", "[dist]") {
  moe::ModelConfig c = moe_test::expert_parallel_config();
  moe::Model local(c), remote(c);
  local.init(5);
  remote.init(5);
  const int64_t B = 3, T = 20, N = B * T;
  moe::Rng rng(9);
  std::vector<int32_t> tokens(static_cast<size_t>(N)), targets(static_cast<size_t>(N));
  for (auto& t : tokens) t = int32_t(rng.next_u64() % 256);
  for (auto& t : targets) t = int32_t(rng.next_u64() % 256);
  REQUIRE(moe::Dist::world().size() == 1);
  moe::ExpertParallel ep(moe::Dist::world(), c, N);
  moe::ComputeContext ctx;
  moe::Workspace ws_local(c, B, T, true), ws_remote(c, B, T, true, false, &ep);
  for (int pass = 0; pass < 2; ++pass) {  // twice: buffers reused from the first pass
    local.grads.zero();
    remote.grads.zero();
    const double loss_local = moe::model_forward(ctx, local, ws_local, tokens.data(), targets.data());
    const double loss_remote = moe::model_forward(ctx, remote, ws_remote, tokens.data(), targets.data());
    CHECK(loss_remote == Approx(loss_local).epsilon(1e-6));
    double worst = 0;
    for (int64_t i = 0; i < N * c.vocab_size; ++i)
      worst = std::max(worst, double(std::fabs(ws_local.logits[i] - ws_remote.logits[i])));
    CHECK(worst < 1e-5);
    moe::model_backward(ctx, local, ws_local);
    moe::model_backward(ctx, remote, ws_remote);
    double worst_grad = 0, scale = 0;
    for (int64_t i = 0; i < local.layout.total; ++i) {
      worst_grad = std::max(worst_grad, double(std::fabs(local.grads[i] - remote.grads[i])));
      scale = std::max(scale, double(std::fabs(local.grads[i])));
    }
    INFO("largest gradient " << scale);
    CHECK(scale > 1e-3);  // the comparison means something
    CHECK(worst_grad < 1e-5 * (1 + scale));
    // The load statistics (per-expert counts) are the same too.
    for (int64_t l = 1; l < c.num_hidden_layers; ++l)
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        CHECK(ws_local.layers[size_t(l)].moe.counts[e] == ws_remote.layers[size_t(l)].moe.counts[e]);
    CHECK(ep.rows_received(0) == N * c.num_experts_per_tok);
  }
}
