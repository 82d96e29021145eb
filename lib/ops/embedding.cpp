#include "ops/embedding.hpp"

#include <algorithm>
#include <cmath>

#include <omp.h>

#include "core/threads.hpp"

namespace moe {

void embedding_forward(const float* table, const int32_t* tokens, float* x, int64_t rows, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) std::copy_n(table + int64_t(tokens[r]) * D, D, x + r * D);
}

void embedding_backward(const int32_t* tokens, const float* dx, float* d_table, int64_t rows, int64_t D) {
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t lo = D * id / threads, hi = D * (id + 1) / threads;
    for (int64_t r = 0; r < rows; ++r) {
      float* row = d_table + int64_t(tokens[r]) * D;
      const float* g = dx + r * D;
      for (int64_t i = lo; i < hi; ++i) row[i] += g[i];
    }
  }
}

double cross_entropy_forward_backward(const float* logits, const int32_t* targets, float* d_logits, int64_t rows,
                                      int64_t V, float scale) {
  return parallel_sum(rows, [&](int64_t r) {
    const float* z = logits + r * V;
    if (targets[r] == kIgnoreTarget) {
      if (d_logits) std::fill_n(d_logits + r * V, V, 0.0f);
      return 0.0;
    }
    float max = z[0];
    for (int64_t i = 1; i < V; ++i) max = std::max(max, z[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(z[i] - max));
    const double log_sum = std::log(sum) + double(max);
    const double loss = log_sum - double(z[targets[r]]);
    if (d_logits) {
      float* d = d_logits + r * V;
      for (int64_t i = 0; i < V; ++i) d[i] = float(std::exp(double(z[i]) - log_sum)) * scale;
      d[targets[r]] -= scale;
    }
    return loss;
  });
}

}  // namespace moe
