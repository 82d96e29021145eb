// RMSNorm: y = x / sqrt(mean(x²) + eps) * w, row by row.
#pragma once
#include <cmath>
#include <cstdint>

namespace moe {

// x (rows, dim), w (dim) -> y (rows, dim), rstd (rows) saved for backward.
// One row: y = x · rstd · w, returns rstd = (mean x² + eps)^-1/2.
inline float rmsnorm_row(const float* x, const float* w, float* y, int64_t dim, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += x[i] * x[i];
  const float s = 1.0f / std::sqrt(sum / float(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) y[i] = x[i] * s * w[i];
  return s;
}

void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t dim, float eps);

// dx += ... (x is on the residual stream, whose gradient accumulates); dw += ...
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                      int64_t rows, int64_t dim);

}  // namespace moe
