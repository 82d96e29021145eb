// The whole MoE layer (router, grouped experts, shared experts, scatter): forward against a naive
// per-token double-precision reference, the dispatch bookkeeping (counts, offsets, rows), and
// backward against central differences on x and on every weight tensor, for both score functions.
#include <limits>
#include <set>

#include <catch2/catch.hpp>

#include "../reference.hpp"
#include "moe/moe_layer.hpp"
#include "moe/router.hpp"

namespace {

moe::ModelConfig layer_config(moe::ScoringFunc func) {
  moe::ModelConfig c;
  c.hidden_size = 12, c.moe_intermediate_size = 6, c.n_routed_experts = 8;
  c.scoring_func = func;
  if (func == moe::ScoringFunc::sigmoid) {
    c.num_experts_per_tok = 2, c.n_group = 2, c.topk_group = 1, c.n_shared_experts = 1;
    c.norm_topk_prob = true, c.routed_scaling_factor = 2.5;
  } else {
    c.num_experts_per_tok = 3, c.n_group = 1, c.topk_group = 1, c.n_shared_experts = 2;
    c.norm_topk_prob = false, c.routed_scaling_factor = 1.5;
  }
  return c;
}

// One MoE layer with its own parameter and gradient blocks and the saved/scratch buffers sized by
// moe_saved_floats / moe_saved_ints / moe_scratch_floats.
struct MoeLayer {
  moe::ModelConfig c;
  int64_t B, T, N;
  ref::Vec params, grads;
  moe::MoeWeights w, gw;
  std::vector<float> saved_floats, scratch_floats;
  std::vector<int32_t> saved_ints;
  moe::MoeSaved saved;
  moe::MoeScratch scratch;

  // Tensor sizes in params order: router, bias, experts gate, up, down, shared gate, up, down.
  std::vector<int64_t> sizes() const {
    const int64_t D = c.hidden_size, E = c.n_routed_experts, Im = c.moe_intermediate_size;
    const int64_t Is = c.shared_intermediate();
    return {E * D, E, E * Im * D, E * Im * D, E * D * Im, Is * D, Is * D, D * Is};
  }

  MoeLayer(const moe::ModelConfig& config, int64_t B_, int64_t T_, uint64_t seed)
      : c(config), B(B_), T(T_), N(B_ * T_) {
    const std::vector<int64_t> n = sizes();
    int64_t total = 0;
    for (int64_t s : n) total += s;
    params.assign(size_t(total), 0.0f), grads.assign(size_t(total), 0.0f);
    auto bind = [&](float* base) {
      moe::MoeWeights lw;
      float** fields[] = {&lw.router,       &lw.router_bias, &lw.experts_gate, &lw.experts_up,
                          &lw.experts_down, &lw.shared_gate, &lw.shared_up,    &lw.shared_down};
      int64_t offset = 0;
      for (size_t i = 0; i < n.size(); ++i) *fields[i] = base + offset, offset += n[i];
      return lw;
    };
    w = bind(params.data()), gw = bind(grads.data());
    // Router rows ~ N(0, 0.5²) give logits of std ~1.7 on unit inputs: spread scores, few near-ties.
    const double stddev[] = {0.5, 0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3};
    int64_t offset = 0;
    for (size_t i = 0; i < n.size(); ++i) {
      const ref::Vec v = ref::randn(n[i], seed + i, stddev[i]);
      std::copy(v.begin(), v.end(), params.begin() + offset);
      offset += n[i];
    }

    // Carve MoeSaved / MoeScratch in field order, with the sizes the header documents (R = the
    // gathered-row capacity, padding included); the library's size functions must cover them.
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, D = c.hidden_size;
    const int64_t Im = c.moe_intermediate_size, Is = c.shared_intermediate(), R = moe::moe_row_capacity(c, N);
    const int64_t sf = moe::moe_saved_floats(c, N), si = moe::moe_saved_ints(c, N);
    const int64_t xf = moe::moe_scratch_floats(c, N);
    saved_floats.assign(size_t(sf), 0.0f), saved_ints.assign(size_t(si), 0), scratch_floats.assign(size_t(xf), 0.0f);
    int64_t used_f = 0, used_i = 0, used_x = 0;
    auto f = [&](int64_t count) {
      float* p = saved_floats.data() + used_f;
      used_f += count;
      return p;
    };
    auto i = [&](int64_t count) {
      int32_t* p = saved_ints.data() + used_i;
      used_i += count;
      return p;
    };
    auto x = [&](int64_t count) {
      float* p = scratch_floats.data() + used_x;
      used_x += count;
      return p;
    };
    saved.scores = f(N * E), saved.weight = f(N * K), saved.logits = f(N * E);
    saved.x_rows = f(R * D), saved.y_rows = f(R * D);
    saved.g = f(R * Im), saved.u = f(R * Im), saved.a = f(R * Im);
    saved.shared_g = f(N * Is), saved.shared_u = f(N * Is), saved.shared_a = f(N * Is);
    saved.expert = i(N * K), saved.counts = i(E), saved.offsets = i(E + 1);
    saved.slot_row = i(N * K), saved.row_slot = i(R), saved.cursor = i(E);
    scratch.d_rows = x(R * D), scratch.dx_rows = x(R * D);
    scratch.ffn = x(2 * std::max(R * Im, N * Is));
    scratch.d_weight = x(N * K), scratch.d_scores = x(N * E), scratch.d_logits = x(N * E);
    REQUIRE(used_f <= sf);
    REQUIRE(used_i <= si);
    REQUIRE(used_x <= xf);
  }

  ref::MoeLayerRef reference_weights() const {
    const int64_t D = c.hidden_size, Im = c.moe_intermediate_size;
    ref::MoeLayerRef r;
    r.router = w.router, r.bias = w.router_bias;
    for (int64_t j = 0; j < c.n_routed_experts; ++j) {
      r.gate.push_back(w.experts_gate + j * Im * D);
      r.up.push_back(w.experts_up + j * Im * D);
      r.down.push_back(w.experts_down + j * D * Im);
    }
    r.shared_gate = w.shared_gate, r.shared_up = w.shared_up, r.shared_down = w.shared_down;
    return r;
  }

  void forward(moe::ComputeContext& ctx, const float* x, float* out, const moe::BalanceLossConfig& balance = {}) {
    moe::moe_forward(ctx, c, w, x, out, saved, B, T, balance);
  }
  std::vector<int32_t> chosen() const { return {saved.expert, saved.expert + N * c.num_experts_per_tok}; }
};

struct FdResult {
  ref::GradCheck check;
  int64_t skipped = 0;
};

// Central differences of loss() at the given coordinates of param, skipping a coordinate when the
// expert choice at x+h or x-h differs from the base choice (routing is piecewise constant: a flip
// makes the loss jump, and its derivative is not defined there).
FdResult fd_fixed_routing(MoeLayer& layer, float* param, const float* grad, const std::vector<int64_t>& coords,
                          double h, const std::function<double()>& loss, const std::vector<int32_t>& base_choice) {
  FdResult r;
  for (int64_t i : coords) {
    bool flipped = false;
    const double numeric = ref::central_difference(param, i, h, [&] {
      const double l = loss();
      flipped = flipped || layer.chosen() != base_choice;
      return l;
    });
    if (flipped) {
      ++r.skipped;
      continue;
    }
    r.check.analytic.push_back(double(grad[i]));
    r.check.numeric.push_back(numeric);
  }
  return r;
}

}  // namespace

TEST_CASE("moe_forward matches a naive per-token reference: shared + Σ w_i expert_i(x)", "[moe]") {
  moe::ComputeContext ctx;
  for (auto func : {moe::ScoringFunc::sigmoid, moe::ScoringFunc::softmax})
    for (int64_t shared : {-1, 0})  // -1: the config's shared experts; 0: none
      for (int32_t row_align : {int32_t(moe::kExpertRowAlign), 1}) {
        moe::ModelConfig c = layer_config(func);
        if (shared == 0) c.n_shared_experts = 0;
        CAPTURE(moe::to_string(func), c.n_shared_experts, row_align);
        MoeLayer layer(c, 2, 9, 100);
        layer.saved.row_align = row_align;
        const int64_t N = layer.N, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
        const ref::Vec bias = ref::randn(E, 5, 0.1);
        std::copy(bias.begin(), bias.end(), layer.w.router_bias);
        const ref::Vec x = ref::randn(N * D, 6);
        ref::Vec out(size_t(N * D), 77.0f);
        layer.forward(ctx, x.data(), out.data());

        std::vector<ref::Route> routes;
        const ref::DVec want = ref::moe_layer(c, layer.reference_weights(), x.data(), N, &routes);
        // Float accumulation over D = 12 and Im = 6 with O(1) values: errors ~1e-6.
        CHECK(ref::max_abs_diff(ref::to_double(out), want) < 2e-5 * std::max(1.0, ref::max_abs(want)));
        for (int64_t t = 0; t < N; ++t)
          for (int64_t k = 0; k < K; ++k) {
            REQUIRE(layer.saved.expert[t * K + k] == routes[size_t(t)].expert[size_t(k)]);
            REQUIRE(double(layer.saved.weight[t * K + k]) == Approx(routes[size_t(t)].weight[size_t(k)]).epsilon(1e-5));
          }

        // Dispatch bookkeeping: counts are the load and sum to N·K; each expert's block starts at
        // a multiple of row_align and holds its rows padded up to the next multiple; every
        // (token, k) slot has its own row inside its expert's block; all other rows are padding.
        int64_t total = 0;
        CHECK(layer.saved.offsets[0] == 0);
        for (int64_t e = 0; e < E; ++e) {
          int64_t count = 0;
          for (int64_t j = 0; j < N * K; ++j) count += layer.saved.expert[j] == e;
          REQUIRE(layer.saved.counts[e] == count);
          REQUIRE(layer.saved.offsets[e] % row_align == 0);
          REQUIRE(layer.saved.offsets[e + 1] - layer.saved.offsets[e] ==
                  (count + row_align - 1) / row_align * row_align);
          total += count;
        }
        CHECK(total == N * K);
        CHECK(layer.saved.offsets[E] <= moe::moe_row_capacity(c, N));
        std::set<int32_t> rows;
        for (int64_t j = 0; j < N * K; ++j) {
          const int32_t row = layer.saved.slot_row[j], e = layer.saved.expert[j];
          REQUIRE((row >= layer.saved.offsets[e] && row < layer.saved.offsets[e + 1]));
          REQUIRE(layer.saved.row_slot[row] == j);
          rows.insert(row);
        }
        CHECK(int64_t(rows.size()) == N * K);
        for (int32_t row = 0; row < layer.saved.offsets[E]; ++row)
          if (!rows.count(row)) REQUIRE(layer.saved.row_slot[row] == -1);
      }
}

TEST_CASE("moe_backward matches finite differences on x and every weight tensor and the bias gets none", "[moe]") {
  moe::ComputeContext ctx;
  for (auto func : {moe::ScoringFunc::sigmoid, moe::ScoringFunc::softmax}) {
    const moe::ModelConfig c = layer_config(func);
    // Sigmoid runs with the training row alignment (padded blocks), softmax with 1 (decoding).
    const int32_t row_align = func == moe::ScoringFunc::sigmoid ? int32_t(moe::kExpertRowAlign) : 1;
    CAPTURE(moe::to_string(func), row_align);
    MoeLayer layer(c, 2, 5, 200);
    layer.saved.row_align = row_align;
    const int64_t N = layer.N, D = c.hidden_size;
    const ref::Vec bias = ref::randn(c.n_routed_experts, 7, 0.1);
    std::copy(bias.begin(), bias.end(), layer.w.router_bias);
    ref::Vec x = ref::randn(N * D, 8);
    const ref::Vec r = ref::randn(N * D, 9);
    ref::Vec out(size_t(N * D));
    auto loss = [&] {
      layer.forward(ctx, x.data(), out.data());
      return ref::weighted_sum(r, out.data());
    };
    loss();
    const std::vector<int32_t> base_choice = layer.chosen();
    ref::Vec dx(size_t(N * D), 55.0f);  // written, not accumulated
    // The bias's slot of the gradient arena holds a sentinel: backward must not touch it.
    float* bias_grad = layer.grads.data() + layer.sizes()[0];
    std::fill_n(bias_grad, c.n_routed_experts, 0.25f);
    moe::moe_backward(ctx, c, layer.w, layer.gw, x.data(), r.data(), dx.data(), layer.saved, layer.scratch, layer.B,
                      layer.T, {}, 1.0f);

    // The tolerance of reference.hpp (norm-wise, float forwards), over the coordinates whose
    // routing did not flip; a flip may skip at most a quarter of them.
    auto check = [&](const char* what, float* param, const float* grad, const std::vector<int64_t>& coords) {
      CAPTURE(what);
      const FdResult fd = fd_fixed_routing(layer, param, grad, coords, ref::kFdStep, loss, base_choice);
      CHECK(fd.skipped * 4 <= int64_t(coords.size()));
      CHECK(fd.check.error() < ref::kFdTolerance);
      CHECK(ref::norm2(fd.check.numeric) > 1e-3);  // not vacuous
    };
    check("x", x.data(), dx.data(), ref::sample_coords(N * D, 64, 301));
    const char* names[] = {"router",       "bias",        "experts gate", "experts up",
                           "experts down", "shared gate", "shared up",    "shared down"};
    const std::vector<int64_t> sizes = layer.sizes();
    int64_t offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      float* p = layer.params.data() + offset;
      const float* g = layer.grads.data() + offset;
      if (i == 1) {
        // The bias is state, not a parameter: backward leaves its slot alone, and it enters the
        // output only through the choice of experts: a nudge that changes no choice leaves the
        // output bit-identical (the gate weights come from the unbiased scores).
        for (int64_t e = 0; e < sizes[i]; ++e) CHECK(g[e] == 0.25f);
        const double base = loss();
        int64_t unchanged = 0;
        for (int64_t e = 0; e < sizes[i]; ++e) {
          const float keep = p[e];
          p[e] = keep + 1e-4f;
          const double nudged = loss();
          if (layer.chosen() == base_choice) {
            CHECK(nudged == base);
            ++unchanged;
          }
          p[e] = keep;
        }
        CHECK(unchanged > 0);
        loss();
        std::fill_n(bias_grad, c.n_routed_experts, 0.0f);  // the accumulation check below doubles every slot
      } else {
        check(names[i], p, g, ref::sample_coords(sizes[i], 40, 300 + i));
      }
      offset += sizes[i];
    }

    // Parameter gradients accumulate: a second backward doubles them; dx is written again.
    loss();
    const ref::Vec first = layer.grads;
    ref::Vec dx2(size_t(N * D), -3.0f);
    moe::moe_backward(ctx, c, layer.w, layer.gw, x.data(), r.data(), dx2.data(), layer.saved, layer.scratch, layer.B,
                      layer.T, {}, 1.0f);
    for (size_t i = 0; i < first.size(); ++i) REQUIRE(layer.grads[i] == Approx(2.0 * first[i]).margin(1e-6));
    for (size_t i = 0; i < dx.size(); ++i) REQUIRE(dx2[i] == Approx(dx[i]).margin(1e-6));
  }
}

// Backward with d_out = r, then the gradients of x and of the router weights against central
// differences of `loss` at sampled coordinates (routing held fixed: a flip skips the coordinate).
template <class Loss>
void check_x_and_router_gradients(moe::ComputeContext& ctx, const moe::ModelConfig& c, MoeLayer& layer, ref::Vec& x,
                                  const ref::Vec& r, ref::Vec& dx, const moe::BalanceLossConfig& balance, Loss& loss,
                                  const std::vector<int32_t>& base_choice, uint64_t seed) {
  const int64_t N = layer.N, D = c.hidden_size;
  std::fill(layer.grads.begin(), layer.grads.end(), 0.0f);
  moe::moe_backward(ctx, c, layer.w, layer.gw, x.data(), r.data(), dx.data(), layer.saved, layer.scratch, layer.B,
                    layer.T, balance, 1.0f);
  for (auto [param, grad, n] :
       {std::tuple{x.data(), dx.data(), N * D}, std::tuple{layer.w.router, layer.gw.router, c.n_routed_experts * D}}) {
    const std::vector<int64_t> coords = ref::sample_coords(n, 48, seed);
    const FdResult fd = fd_fixed_routing(layer, param, grad, coords, ref::kFdStep, loss, base_choice);
    CHECK(fd.skipped * 4 <= int64_t(coords.size()));
    CHECK(fd.check.error() < ref::kFdTolerance);
    CHECK(ref::norm2(fd.check.numeric) > 1e-4);
  }
}

TEST_CASE("moe_backward with balance losses matches finite differences of Σ r·out + balance loss", "[moe]") {
  moe::ComputeContext ctx;
  const moe::ModelConfig c = layer_config(moe::ScoringFunc::sigmoid);
  MoeLayer layer(c, 2, 6, 400);
  const int64_t N = layer.N, D = c.hidden_size;
  // Large alphas so the balance term's gradient is a visible part of the total.
  const moe::BalanceLossConfig balance{0.5f, 0.3f};
  ref::Vec x = ref::randn(N * D, 10);
  ref::Vec r;
  ref::Vec out(size_t(N * D));
  auto loss = [&] {
    layer.forward(ctx, x.data(), out.data(), balance);
    return ref::weighted_sum(r, out.data()) + layer.saved.balance_loss;
  };
  ref::Vec dx(size_t(N * D));
  // r = 0 isolates the balance term; r ~ N(0, 0.1²) mixes it with the output term.
  for (double r_scale : {0.0, 0.1}) {
    CAPTURE(r_scale);
    r = ref::randn(N * D, 11, r_scale);
    loss();
    CHECK(layer.saved.balance_loss > 0.0);
    const std::vector<int32_t> base_choice = layer.chosen();
    check_x_and_router_gradients(ctx, c, layer, x, r, dx, balance, loss, base_choice, 500);
  }

  // loss_scale multiplies only the balance part (the caller scales d_out itself): backward with
  // d_out = s·r and loss_scale = s gives s times the unscaled router gradient.
  const float s = 0.25f;
  ref::Vec scaled_r = r;
  for (auto& v : scaled_r) v *= s;
  loss();
  std::fill(layer.grads.begin(), layer.grads.end(), 0.0f);
  moe::moe_backward(ctx, c, layer.w, layer.gw, x.data(), r.data(), dx.data(), layer.saved, layer.scratch, layer.B,
                    layer.T, balance, 1.0f);
  const ref::Vec unscaled(layer.gw.router, layer.gw.router + c.n_routed_experts * D);
  std::fill(layer.grads.begin(), layer.grads.end(), 0.0f);
  moe::moe_backward(ctx, c, layer.w, layer.gw, x.data(), scaled_r.data(), dx.data(), layer.saved, layer.scratch,
                    layer.B, layer.T, balance, s);
  for (size_t i = 0; i < unscaled.size(); ++i) REQUIRE(layer.gw.router[i] == Approx(s * unscaled[i]).margin(1e-6));
}

TEST_CASE("moe_forward/backward never read stale buffer contents (NaN-poisoned saved and scratch)", "[moe]") {
  // Buffers are reused step after step, so a padding row or scratch block that is read before it
  // is written would carry the previous step's values; NaN makes any such read visible.
  moe::ComputeContext ctx;
  for (int32_t row_align : {int32_t(moe::kExpertRowAlign), 1}) {
    CAPTURE(row_align);
    const moe::ModelConfig c = layer_config(moe::ScoringFunc::sigmoid);
    MoeLayer clean(c, 2, 7, 600), poisoned(c, 2, 7, 600);
    clean.saved.row_align = poisoned.saved.row_align = row_align;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::fill(poisoned.saved_floats.begin(), poisoned.saved_floats.end(), nan);
    std::fill(poisoned.scratch_floats.begin(), poisoned.scratch_floats.end(), nan);
    std::fill(poisoned.saved_ints.begin(), poisoned.saved_ints.end(), -12345);
    const int64_t N = clean.N, D = c.hidden_size;
    const ref::Vec x = ref::randn(N * D, 12), d_out = ref::randn(N * D, 13);
    ref::Vec out_clean(size_t(N * D)), out_poisoned(size_t(N * D), nan);
    ref::Vec dx_clean(size_t(N * D)), dx_poisoned(size_t(N * D), nan);
    for (MoeLayer* layer : {&clean, &poisoned}) {
      const bool p = layer == &poisoned;
      layer->forward(ctx, x.data(), (p ? out_poisoned : out_clean).data());
      moe::moe_backward(ctx, c, layer->w, layer->gw, x.data(), d_out.data(), (p ? dx_poisoned : dx_clean).data(),
                        layer->saved, layer->scratch, layer->B, layer->T, {}, 1.0f);
    }
    // Same math on differently placed buffers: equal up to summation-order rounding, and finite.
    auto close = [](const ref::Vec& a, const ref::Vec& b) {
      const double diff = ref::max_abs_diff(ref::to_double(a), ref::to_double(b));  // NaN-aware below
      for (float v : a)
        if (!std::isfinite(v)) return false;
      return diff <= 1e-5 * std::max(1.0, ref::max_abs(ref::to_double(b)));
    };
    CHECK(close(out_poisoned, out_clean));
    CHECK(close(dx_poisoned, dx_clean));
    CHECK(close(poisoned.grads, clean.grads));
  }
}

TEST_CASE("moe_backward with the router z-loss matches finite differences of Σ r·out + z-loss", "[moe][balance]") {
  moe::ComputeContext ctx;
  for (auto func : {moe::ScoringFunc::sigmoid, moe::ScoringFunc::softmax}) {
    CAPTURE(int(func));
    const moe::ModelConfig c = layer_config(func);
    MoeLayer layer(c, 2, 6, 403);
    const int64_t N = layer.N, D = c.hidden_size;
    moe::BalanceLossConfig balance;
    balance.z_alpha = 0.5f;  // large, so its gradient is a visible part of the router's
    ref::Vec x = ref::randn(N * D, 12);
    ref::Vec out(size_t(N * D)), dx(size_t(N * D));
    ref::Vec r = ref::randn(N * D, 13, 0.05);
    auto loss = [&] {
      layer.forward(ctx, x.data(), out.data(), balance);
      return ref::weighted_sum(r, out.data()) + layer.saved.z_loss;
    };
    loss();
    CHECK(layer.saved.z_loss > 0.0);
    CHECK(layer.saved.balance_loss == 0.0);  // logged apart from the balance losses
    const std::vector<int32_t> base_choice = layer.chosen();
    check_x_and_router_gradients(ctx, c, layer, x, r, dx, balance, loss, base_choice, 502);
  }
}
