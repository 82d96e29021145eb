// AdamW over the flat parameter arena (moments share the parameter layout), global-norm gradient
// clipping, and the learning-rate schedule (linear warm-up, cosine decay to min_lr).
#pragma once
#include <cstdint>

#include "core/arena.hpp"
#include "model/model.hpp"

namespace moe {

struct AdamW {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  Buffer<float> m, v;  // (layout.total) each
  int64_t t = 0;       // optimizer steps taken (for bias correction)

  explicit AdamW(const ParamLayout& layout) : m(layout.total), v(layout.total) {}
  // One update of every trainable tensor; decay only where spec.decay (matrices).
  void step(Model& model, double lr, double weight_decay);
};

// sqrt(Σ g²) over trainable tensors.
double grad_norm(const Model& model);
// Scales the gradients so their global norm is at most max_norm (no-op when max_norm <= 0).
void clip_grads(Model& model, double norm, double max_norm);

// Learning rate of optimizer step `step` (0-based) out of `steps`.
double learning_rate(int64_t step, int64_t steps, int64_t warmup, double lr, double min_lr);

}  // namespace moe
