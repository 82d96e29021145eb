// SwiGLU feed-forward: y = down(silu(gate(x)) ⊙ up(x)). Used by dense layers, shared experts and
// (per expert, on its gathered rows) routed experts, so all three share one tested code path.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/compute.hpp"
#include "core/vmath.hpp"

namespace moe {

// silu(g) · u for one value.
inline float swiglu_value(float g, float u) { return g * sigmoid_fast(g) * u; }

// a = silu(g) ⊙ u, elementwise over n values.
void swiglu_forward(const float* g, const float* u, float* a, int64_t n);
// dg, du written from da.
void swiglu_backward(const float* g, const float* u, const float* da, float* dg, float* du, int64_t n);

struct FfnWeights {
  const float* gate;  // (I, D)
  const float* up;    // (I, D)
  const float* down;  // (D, I)
};
struct FfnGrads {
  float* gate;  // (I, D), accumulated
  float* up;
  float* down;
};
// Saved activations, each (rows, I).
struct FfnSaved {
  float* g;
  float* u;
  float* a;
};

// x (rows, D) -> y (rows, D) written.
void ffn_forward(ComputeContext& ctx, const FfnWeights& w, const float* x, float* y, const FfnSaved& saved,
                 int64_t rows, int64_t D, int64_t I);
// dy (rows, D) -> dx (rows, D) written (accumulated when accumulate_dx); weight grads accumulate.
// scratch: 2 * rows * I floats.
void ffn_backward(ComputeContext& ctx, const FfnWeights& w, const FfnGrads& grads, const float* x, const float* dy,
                  float* dx, const FfnSaved& saved, float* scratch, int64_t rows, int64_t D, int64_t I,
                  bool accumulate_dx);

}  // namespace moe
