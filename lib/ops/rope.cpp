#include "ops/rope.hpp"

#include <cmath>

namespace moe {

RopeTable::RopeTable(int64_t hd, int64_t max_pos, double theta, bool adjacent)
    : head_dim(hd), max_positions(max_pos), adjacent_pairs(adjacent) {
  const int64_t half = hd / 2;
  cos.resize(size_t(max_pos * half));
  sin.resize(size_t(max_pos * half));
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      // Computed in double so long contexts keep accurate angles.
      const double inv_freq = std::pow(theta, -2.0 * double(i) / double(hd));
      const double angle = double(p) * inv_freq;
      cos[size_t(p * half + i)] = float(std::cos(angle));
      sin[size_t(p * half + i)] = float(std::sin(angle));
    }
}

void rope_forward(const RopeTable& table, const float* in, float* out, int64_t B, int64_t T, int64_t heads,
                  int64_t pos0) {
  const int64_t hd = table.head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        rope_rotate(table, in + ((b * T + t) * heads + h) * hd, out + ((b * heads + h) * T + t) * hd, pos0 + t);
}

void rope_backward(const RopeTable& table, const float* d_out, float* d_in, int64_t B, int64_t T, int64_t heads,
                   int64_t pos0) {
  const int64_t hd = table.head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        rope_rotate_back(table, d_out + ((b * heads + h) * T + t) * hd, d_in + ((b * T + t) * heads + h) * hd,
                         pos0 + t);
}

void split_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = in + ((b * T + t) * heads + h) * hd;
        float* y = out + ((b * heads + h) * T + t) * hd;
        for (int64_t i = 0; i < hd; ++i) y[i] = x[i];
      }
}

void merge_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = in + ((b * heads + h) * T + t) * hd;
        float* y = out + ((b * T + t) * heads + h) * hd;
        for (int64_t i = 0; i < hd; ++i) y[i] = x[i];
      }
}

}  // namespace moe
