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
  // One update of every trainable tensor with gradient grad_scale · g (the clipping factor, applied
  // here rather than in a separate pass over the gradients); decay only where spec.decay (matrices).
  // With train_mtp false the multi-token-prediction module stays as it is (no update, no decay).
  void step(Model& model, double lr, double weight_decay, float grad_scale = 1.0f, bool train_mtp = true);
};

// The factor that brings a global gradient norm down to max_norm (1 when max_norm <= 0 or the norm
// is already within it).
float clip_scale(double norm, double max_norm);

// Learning rate of optimizer step `step` (0-based) out of `steps`.
double learning_rate(int64_t step, int64_t steps, int64_t warmup, double lr, double min_lr);

}  // namespace moe
