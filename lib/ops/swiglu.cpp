#include "ops/swiglu.hpp"

#include <cmath>

namespace moe {

void swiglu_forward(const float* g, const float* u, float* a, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    a[i] = swiglu_value(g[i], u[i]);
  }
}

void swiglu_backward(const float* g, const float* u, const float* da, float* dg, float* du, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float sig = sigmoid_fast(g[i]);
    const float silu = g[i] * sig;
    // silu'(g) = sig (1 + g (1 - sig))
    dg[i] = da[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    du[i] = da[i] * silu;
  }
}

void ffn_forward(ComputeContext& ctx, const FfnWeights& w, const float* x, float* y, const FfnSaved& saved,
                 int64_t rows, int64_t D, int64_t I) {
  if (rows == 0) return;
  linear_forward(ctx, x, w.gate, saved.g, rows, D, I);
  linear_forward(ctx, x, w.up, saved.u, rows, D, I);
  swiglu_forward(saved.g, saved.u, saved.a, rows * I);
  linear_forward(ctx, saved.a, w.down, y, rows, I, D);
}

void ffn_backward(ComputeContext& ctx, const FfnWeights& w, const FfnGrads& grads, const float* x, const float* dy,
                  float* dx, const FfnSaved& saved, float* scratch, int64_t rows, int64_t D, int64_t I,
                  bool accumulate_dx) {
  if (rows == 0) return;
  float* da = scratch;             // (rows, I)
  float* dg = scratch + rows * I;  // (rows, I)
  linear_backward(ctx, saved.a, w.down, dy, da, grads.down, rows, I, D, false);
  float* du = da;  // da is consumed elementwise, so du can overwrite it
  swiglu_backward(saved.g, saved.u, da, dg, du, rows * I);
  linear_backward(ctx, x, w.gate, dg, dx, grads.gate, rows, D, I, accumulate_dx);
  linear_backward(ctx, x, w.up, du, dx, grads.up, rows, D, I, true);
}

}  // namespace moe
