#include "ops/rmsnorm.hpp"

#include <cmath>

#include <omp.h>

namespace moe {

void rmsnorm_forward(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float s = rmsnorm_row(x + r * dim, w, y + r * dim, dim, eps);
    if (rstd) rstd[r] = s;
  }
}

void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                      int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float* dyr = dy + r * dim;
    float* dxr = dx + r * dim;
    const float s = rstd[r];
    // y_i = x_i s w_i, s = (mean x² + eps)^-1/2  =>  dx_i = s (w_i dy_i) - x_i s³/dim Σ_j w_j dy_j x_j
    float dot = 0.0f;
    for (int64_t i = 0; i < dim; ++i) dot += w[i] * dyr[i] * xr[i];
    const float c = dot * s * s * s / float(dim);
    for (int64_t i = 0; i < dim; ++i) dxr[i] += s * w[i] * dyr[i] - xr[i] * c;
  }
  // dw is a sum over rows: split by columns so each sum runs in a fixed order (deterministic).
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t lo = dim * id / threads, hi = dim * (id + 1) / threads;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      const float* dyr = dy + r * dim;
      const float s = rstd[r];
      for (int64_t i = lo; i < hi; ++i) dw[i] += dyr[i] * xr[i] * s;
    }
  }
}

}  // namespace moe
