// RMSNorm: y = x / sqrt(mean(x²) + eps) * w, row by row.
#pragma once
#include <cstdint>

namespace moe {

// x (rows, dim), w (dim) -> y (rows, dim), rstd (rows) saved for backward.
void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t dim, float eps);

// dx += ... (x is on the residual stream, whose gradient accumulates); dw += ...
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                      int64_t rows, int64_t dim);

}  // namespace moe
