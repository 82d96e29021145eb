// Causal (grouped-query) attention: forward against a naive double-precision attention per head,
// backward against central differences of L = Σ r ⊙ out for q, k and v, with and without GQA.
#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "ops/attention.hpp"

namespace {

// hv: value head width (0: hd); MLA has query/key heads of d_n + d_r and value heads of d_v.
struct Case {
  int64_t B, T, H, Hkv, hd, hv = 0;
  int64_t vd() const { return hv > 0 ? hv : hd; }
};

}  // namespace

TEST_CASE("attention_forward matches naive causal attention in double (GQA, MHA, MLA widths)", "[ops]") {
  moe::ComputeContext ctx;
  for (const Case c : {Case{2, 5, 4, 2, 6}, Case{2, 5, 2, 2, 6}, Case{1, 7, 4, 1, 4}, Case{3, 1, 2, 1, 2},
                       Case{2, 5, 3, 3, 6, 4}, Case{1, 6, 2, 2, 4, 10}}) {
    CAPTURE(c.B, c.T, c.H, c.Hkv, c.hd, c.hv);
    const ref::Vec q = ref::randn(c.B * c.H * c.T * c.hd, 1), k = ref::randn(c.B * c.Hkv * c.T * c.hd, 2),
                   v = ref::randn(c.B * c.Hkv * c.T * c.vd(), 3);
    ref::Vec probs(size_t(c.B * c.H * c.T * c.T), 99.0f), out(size_t(c.B * c.H * c.T * c.vd()));
    moe::attention_forward(ctx, {c.B, c.T, c.H, c.Hkv, c.hd, c.hv}, q.data(), k.data(), v.data(), probs.data(),
                           out.data());
    for (int64_t b = 0; b < c.B; ++b) {
      ref::DVec want_probs;
      const ref::DVec want =
          ref::causal_attention(q.data() + b * c.H * c.T * c.hd, k.data() + b * c.Hkv * c.T * c.hd,
                                v.data() + b * c.Hkv * c.T * c.vd(), c.H, c.Hkv, c.T, c.hd, &want_probs, c.hv);
      const ref::DVec got = ref::to_double(out.data() + b * c.H * c.T * c.vd(), c.H * c.T * c.vd());
      const ref::DVec got_probs = ref::to_double(probs.data() + b * c.H * c.T * c.T, c.H * c.T * c.T);
      CHECK(ref::max_abs_diff(got, want) < 1e-5);
      // Includes the masked upper triangle, which must be exactly 0.
      CHECK(ref::max_abs_diff(got_probs, want_probs) < 1e-6);
    }
  }
}

TEST_CASE("attention_backward matches finite differences for q, k, v (GQA, MHA, MLA widths)", "[ops]") {
  moe::ComputeContext ctx;
  for (const Case c : {Case{2, 5, 4, 2, 6}, Case{2, 5, 2, 2, 6}, Case{1, 6, 4, 1, 4}, Case{2, 5, 3, 3, 6, 4},
                       Case{1, 5, 2, 2, 4, 6}}) {
    CAPTURE(c.B, c.T, c.H, c.Hkv, c.hd, c.hv);
    const moe::AttentionShape shape{c.B, c.T, c.H, c.Hkv, c.hd, c.hv};
    ref::Vec q = ref::randn(c.B * c.H * c.T * c.hd, 11), k = ref::randn(c.B * c.Hkv * c.T * c.hd, 12),
             v = ref::randn(c.B * c.Hkv * c.T * c.vd(), 13);
    const ref::Vec r = ref::randn(c.B * c.H * c.T * c.vd(), 14);
    ref::Vec probs(size_t(c.B * c.H * c.T * c.T)), out(r.size());
    auto loss = [&] {
      moe::attention_forward(ctx, shape, q.data(), k.data(), v.data(), probs.data(), out.data());
      return ref::weighted_sum(r, out.data());
    };
    loss();
    // Poisoned outputs: every gradient must be written, not accumulated.
    ref::Vec d_probs(probs.size()), dq(q.size(), 7.0f), dk(k.size(), 7.0f), dv(v.size(), 7.0f);
    moe::attention_backward(ctx, shape, q.data(), k.data(), v.data(), probs.data(), r.data(), d_probs.data(), dq.data(),
                            dk.data(), dv.data());
    // Tolerance as justified in test_rmsnorm.cpp: FD of float forwards, norm-wise over all coordinates.
    const auto gq = ref::check_gradient(q.data(), dq.data(), ref::all_coords(int64_t(q.size())), ref::kFdStep, loss);
    const auto gk = ref::check_gradient(k.data(), dk.data(), ref::all_coords(int64_t(k.size())), ref::kFdStep, loss);
    const auto gv = ref::check_gradient(v.data(), dv.data(), ref::all_coords(int64_t(v.size())), ref::kFdStep, loss);
    CHECK(gq.error() < ref::kFdTolerance);
    CHECK(gk.error() < ref::kFdTolerance);
    CHECK(gv.error() < ref::kFdTolerance);
  }
}

TEST_CASE("causally blocked attention at long T matches the reference and finite differences", "[ops]") {
  // T >= 128 splits the query rows into blocks that skip masked keys (uneven blocks at T = 200).
  moe::ComputeContext ctx;
  for (const Case c : {Case{1, 200, 4, 2, 4}, Case{1, 256, 2, 2, 4}}) {
    CAPTURE(c.B, c.T, c.H, c.Hkv, c.hd);
    const moe::AttentionShape shape{c.B, c.T, c.H, c.Hkv, c.hd};
    ref::Vec q = ref::randn(c.B * c.H * c.T * c.hd, 21), k = ref::randn(c.B * c.Hkv * c.T * c.hd, 22),
             v = ref::randn(c.B * c.Hkv * c.T * c.hd, 23);
    ref::Vec probs(size_t(c.B * c.H * c.T * c.T), 99.0f), out(q.size());
    moe::attention_forward(ctx, shape, q.data(), k.data(), v.data(), probs.data(), out.data());
    for (int64_t b = 0; b < c.B; ++b) {
      ref::DVec want_probs;
      const ref::DVec want =
          ref::causal_attention(q.data() + b * c.H * c.T * c.hd, k.data() + b * c.Hkv * c.T * c.hd,
                                v.data() + b * c.Hkv * c.T * c.hd, c.H, c.Hkv, c.T, c.hd, &want_probs);
      CHECK(ref::max_abs_diff(ref::to_double(out.data() + b * c.H * c.T * c.hd, c.H * c.T * c.hd), want) < 1e-5);
      CHECK(ref::max_abs_diff(ref::to_double(probs.data() + b * c.H * c.T * c.T, c.H * c.T * c.T), want_probs) < 1e-6);
    }
    const ref::Vec r = ref::randn(q.size(), 24);
    auto loss = [&] {
      moe::attention_forward(ctx, shape, q.data(), k.data(), v.data(), probs.data(), out.data());
      return ref::weighted_sum(r, out.data());
    };
    loss();
    ref::Vec d_probs(probs.size(), 5.0f), dq(q.size(), 7.0f), dk(k.size(), 7.0f), dv(v.size(), 7.0f);
    moe::attention_backward(ctx, shape, q.data(), k.data(), v.data(), probs.data(), r.data(), d_probs.data(), dq.data(),
                            dk.data(), dv.data());
    // Sampled coordinates, spread over every block (early keys get gradient from all later blocks).
    const auto gq =
        ref::check_gradient(q.data(), dq.data(), ref::sample_coords(int64_t(q.size()), 20, 1), ref::kFdStep, loss);
    const auto gk =
        ref::check_gradient(k.data(), dk.data(), ref::sample_coords(int64_t(k.size()), 20, 2), ref::kFdStep, loss);
    const auto gv =
        ref::check_gradient(v.data(), dv.data(), ref::sample_coords(int64_t(v.size()), 20, 3), ref::kFdStep, loss);
    CHECK(gq.error() < ref::kFdTolerance);
    CHECK(gk.error() < ref::kFdTolerance);
    CHECK(gv.error() < ref::kFdTolerance);
  }
}
