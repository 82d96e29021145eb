#include "train/optimizer.hpp"

#include <algorithm>
#include <cmath>

namespace moe {

void AdamW::step(Model& model, double lr, double weight_decay, float grad_scale, bool train_mtp) {
  ++t;
  const float b1 = float(beta1), b2 = float(beta2);
  const float c1 = float(1.0 / (1.0 - std::pow(beta1, double(t))));
  const float c2 = float(1.0 / (1.0 - std::pow(beta2, double(t))));
  const float lr_f = float(lr), e = float(eps);
  const auto& tensors = model.layout.tensors;
  // One parallel region for the whole arena: a model with many experts has hundreds of small
  // tensors, and a region per tensor would cost more than the update itself.
#pragma omp parallel
  for (const TensorSpec& spec : tensors) {
    if (!spec.trainable || (spec.mtp && !train_mtp)) continue;
    float* p = model.params.data() + spec.offset;
    const float* g = model.grads.data() + spec.offset;
    float* mm = m.data() + spec.offset;
    float* vv = v.data() + spec.offset;
    const float decay = spec.decay ? float(lr * weight_decay) : 0.0f;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < spec.numel; ++i) {
      const float gi = g[i] * grad_scale;
      mm[i] = b1 * mm[i] + (1.0f - b1) * gi;
      vv[i] = b2 * vv[i] + (1.0f - b2) * gi * gi;
      // Decoupled weight decay (AdamW): shrink the weight, then apply the Adam step.
      p[i] -= decay * p[i] + lr_f * (mm[i] * c1) / (std::sqrt(vv[i] * c2) + e);
    }
  }
}

float clip_scale(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0f;
  return float(max_norm / (norm + 1e-6));
}

double learning_rate(int64_t step, int64_t steps, int64_t warmup, double lr, double min_lr) {
  if (step < warmup) return lr * double(step + 1) / double(warmup);
  const double span = double(std::max<int64_t>(1, steps - warmup));
  const double progress = std::min(1.0, double(step - warmup) / span);
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace moe
