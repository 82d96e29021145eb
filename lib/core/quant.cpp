#include "core/quant.hpp"

#include <algorithm>
#include <cmath>

#include <oneapi/dnnl/dnnl.h>

namespace moe {

namespace {

// The symmetric scale that maps a row's largest magnitude to `levels` (1 for an all-zero row).
float row_scale(const float* row, int64_t n, float levels) {
  float max = 0.0f;
#pragma omp simd reduction(max : max)
  for (int64_t i = 0; i < n; ++i) max = std::max(max, std::fabs(row[i]));
  return max > 0.0f ? max / levels : 1.0f;
}

}  // namespace

QuantMatrix quantize_rows(const float* W, int64_t rows, int64_t cols) {
  QuantMatrix m;
  m.rows = rows, m.cols = cols;
  m.q.resize(size_t(rows * cols));
  m.scale.resize(size_t(rows));
  m.row_sum.assign(size_t(rows), 0);
  m.block_sum.assign(size_t(rows * m.blocks()), 0);
  const int64_t blocks = m.blocks();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = W + r * cols;
    const float s = row_scale(w, cols, 63.0f), inv = 1.0f / s;
    m.scale[size_t(r)] = s;
    int8_t* q = m.q.data() + r * cols;
    // Round half away from zero; |w / s| ≤ 63 up to rounding, hence the clamp (NaN-safe, as below).
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float v = w[c] * inv;
      q[c] = int8_t(v >= 0.0f ? std::min(v, 63.0f) + 0.5f : v < 0.0f ? std::max(v, -63.0f) - 0.5f : 0.0f);
    }
    int32_t total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t sum = 0;
      for (int64_t c = b * QuantMatrix::kBlock; c < std::min(cols, (b + 1) * QuantMatrix::kBlock); ++c) sum += q[c];
      m.block_sum[size_t(b * rows + r)] = int16_t(sum);
      total += sum;
    }
    m.row_sum[size_t(r)] = total;
  }
  return m;
}

void quantize_activations(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* xq, float* xs) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * ldx;
    const float s = row_scale(row, K, 127.0f), inv = 1.0f / s;
    xs[m] = s;
    // x / s + 128 lies in [1, 255] (up to rounding, hence the clamp); + 0.5 and truncation round it.
    // Written so that a NaN (an overflowed activation) lands on a bound instead of an undefined
    // conversion: the draft is then wrong, and the verifier rejects it.
    uint8_t* q = xq + m * K;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const float v = row[k] * inv + 128.5f;
      q[k] = uint8_t(v >= 1.0f ? (v <= 255.0f ? v : 255.0f) : 1.0f);
    }
  }
}

bool qgemm_rows(int64_t M, const uint8_t* xq, const float* xs, const QuantMatrix& W, int64_t row0, int64_t n_rows,
                int64_t col0, int64_t K, float* y, int64_t ldy, bool accumulate, int32_t* acc) {
  if (M == 0 || n_rows == 0) return true;
  // Called inside the decoder's parallel region: a bad slice is a failure to report, not a throw.
  if (col0 % QuantMatrix::kBlock != 0 || ((col0 + K) % QuantMatrix::kBlock != 0 && col0 + K != W.cols) ||
      row0 + n_rows > W.rows || col0 + K > W.cols)
    return false;
  const int32_t zero = 0;
  if (K == 0) std::fill_n(acc, M * n_rows, 0);  // an empty sum
  // oneDNN 2.6 has a fast path for one row only: two rows in one call take ~1.6x two one-row calls
  // (measured, 64x256 to 256x512 slices); from four rows on, one call wins.
  const int64_t per_call = M <= 3 ? 1 : M;
  for (int64_t m = 0; m < M && K > 0; m += per_call)
    if (dnnl_gemm_u8s8s32('N', 'T', 'F', per_call, n_rows, K, 1.0f, xq + m * K, K, 0, W.q.data() + row0 * W.cols + col0,
                          W.cols, 0, 0.0f, acc + m * n_rows, n_rows, &zero) != dnnl_success)
      return false;
  // Σ_k (xq - 128) q = Σ_k xq q - 128 Σ_k q: the sums of q over the slice, out of the products.
  const int64_t b0 = col0 / QuantMatrix::kBlock, b1 = (col0 + K + QuantMatrix::kBlock - 1) / QuantMatrix::kBlock;
  if (col0 == 0 && K == W.cols) {
    const int32_t* sum = W.row_sum.data() + row0;
    for (int64_t m = 0; m < M; ++m)
#pragma omp simd
      for (int64_t j = 0; j < n_rows; ++j) acc[m * n_rows + j] -= 128 * sum[j];
  } else {
    // Block-major sums: one pass over the slice's rows per block, vectorized across the rows.
    for (int64_t b = b0; b < b1; ++b) {
      const int16_t* bs = W.block_sum.data() + b * W.rows + row0;
      for (int64_t m = 0; m < M; ++m)
#pragma omp simd
        for (int64_t j = 0; j < n_rows; ++j) acc[m * n_rows + j] -= 128 * int32_t(bs[j]);
    }
  }
  const float* ws = W.scale.data() + row0;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* a = acc + m * n_rows;
    float* yr = y + m * ldy;
    const float sx = xs[m];
    if (accumulate) {
#pragma omp simd
      for (int64_t j = 0; j < n_rows; ++j) yr[j] += float(a[j]) * sx * ws[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n_rows; ++j) yr[j] = float(a[j]) * sx * ws[j];
    }
  }
  return true;
}

}  // namespace moe
