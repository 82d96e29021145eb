// The int8 products of the speculative draft (core/quant.hpp): quantization error bounds, the
// products against a naive integer reference (exact: the offset correction, slices and
// accumulation), and against the f32 product within the bound the two roundings allow.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "core/quant.hpp"

using namespace moe;

namespace {

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint32_t seed, float spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> m(size_t(rows * cols));
  // Rows of very different magnitudes (per-row scales must follow them), one row all zero.
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      m[size_t(r * cols + c)] = r == 1 ? 0.0f : normal(rng) * std::pow(spread, float(r % 4));
  return m;
}

}  // namespace

TEST_CASE("int8 quantization: weights to 7 bits per row, activations to 8 bits per row", "[core]") {
  const int64_t rows = 9, cols = 40;  // 40: the last 16-column block is partial
  const std::vector<float> W = random_matrix(rows, cols, 3, 10.0f);
  const QuantMatrix q = quantize_rows(W.data(), rows, cols);
  REQUIRE(q.blocks() == 3);
  for (int64_t r = 0; r < rows; ++r) {
    int32_t sum = 0, block[3] = {0, 0, 0};
    for (int64_t c = 0; c < cols; ++c) {
      const int8_t v = q.q[size_t(r * cols + c)];
      CHECK(std::abs(v) <= 63);
      CHECK(std::fabs(W[size_t(r * cols + c)] - float(v) * q.scale[size_t(r)]) <= 0.5001f * q.scale[size_t(r)]);
      sum += v, block[c / 16] += v;
    }
    CHECK(q.row_sum[size_t(r)] == sum);
    for (int b = 0; b < 3; ++b) CHECK(q.block_sum[size_t(b * q.rows + r)] == block[b]);
  }
  CHECK(q.scale[1] == 1.0f);  // the zero row

  const std::vector<float> x = random_matrix(4, cols, 5, 100.0f);
  std::vector<uint8_t> xq(4 * cols);
  std::vector<float> xs(4);
  quantize_activations(x.data(), 4, cols, cols, xq.data(), xs.data());
  for (int64_t m = 0; m < 4; ++m)
    for (int64_t k = 0; k < cols; ++k) {
      const uint8_t v = xq[size_t(m * cols + k)];
      CHECK(v >= 1);
      CHECK(std::fabs(x[size_t(m * cols + k)] - float(int(v) - 128) * xs[size_t(m)]) <= 0.5001f * xs[size_t(m)]);
    }
  // The extremes of a row land on 1 and 255 exactly.
  int64_t lo = 0, hi = 0;
  for (int64_t k = 0; k < cols; ++k) lo += xq[size_t(k)] == 1, hi += xq[size_t(k)] == 255;
  CHECK(lo + hi >= 1);
}

TEST_CASE("qgemm_rows equals the naive integer product for row and column slices", "[core]") {
  const int64_t rows = 24, cols = 72;  // blocks 0..4, the last one partial (64..72)
  const std::vector<float> W = random_matrix(rows, cols, 7, 3.0f);
  const QuantMatrix q = quantize_rows(W.data(), rows, cols);
  struct Slice {
    int64_t row0, n_rows, col0, K;
  };
  for (const Slice s : {Slice{0, 24, 0, 72}, Slice{5, 11, 0, 72}, Slice{0, 24, 16, 32}, Slice{3, 7, 48, 24},
                        Slice{0, 24, 64, 8}, Slice{2, 4, 0, 16}}) {
    for (int64_t M : {1, 2, 3, 4, 5}) {  // one-row calls up to 3, one call from 4
      for (bool accumulate : {false, true}) {
        INFO("rows " << s.row0 << "+" << s.n_rows << ", cols " << s.col0 << "+" << s.K << ", M " << M
                     << (accumulate ? ", accumulate" : ""));
        const std::vector<float> x = random_matrix(M, s.K, uint32_t(11 + M), 2.0f);
        std::vector<uint8_t> xq(size_t(M * s.K));
        std::vector<float> xs(static_cast<size_t>(M));
        quantize_activations(x.data(), M, s.K, s.K, xq.data(), xs.data());
        const int64_t ldy = s.n_rows + 3;
        std::vector<float> y(size_t(M * ldy), 0.25f), base = y;
        std::vector<int32_t> acc(size_t(M * s.n_rows));
        REQUIRE(qgemm_rows(M, xq.data(), xs.data(), q, s.row0, s.n_rows, s.col0, s.K, y.data(), ldy, accumulate,
                           acc.data()));
        double worst = 0;
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t j = 0; j < s.n_rows; ++j) {
            int64_t dot = 0;  // exact
            for (int64_t k = 0; k < s.K; ++k)
              dot += int64_t(int(xq[size_t(m * s.K + k)]) - 128) * q.q[size_t((s.row0 + j) * cols + s.col0 + k)];
            const double want = double(dot) * xs[size_t(m)] * q.scale[size_t(s.row0 + j)] +
                                (accumulate ? double(base[size_t(m * ldy + j)]) : 0.0);
            worst = std::max(worst, std::fabs(double(y[size_t(m * ldy + j)]) - want) / (1.0 + std::fabs(want)));
          }
          for (int64_t j = s.n_rows; j < ldy; ++j) CHECK(y[size_t(m * ldy + j)] == 0.25f);  // past the rows: untouched
        }
        CHECK(worst < 1e-5);
      }
    }
  }
}

TEST_CASE("qgemm_rows stays within the quantization bound of the f32 product", "[core]") {
  // |x·w - x̂·ŵ| ≤ Σ_k (|x_k| δw + |w_k| δx + δx δw), δ = half a quantization step.
  const int64_t rows = 32, cols = 256, M = 2;
  const std::vector<float> W = random_matrix(rows, cols, 13, 1.0f), x = random_matrix(M, cols, 17, 1.0f);
  const QuantMatrix q = quantize_rows(W.data(), rows, cols);
  std::vector<uint8_t> xq(size_t(M * cols));
  std::vector<float> xs(static_cast<size_t>(M)), y(static_cast<size_t>(M * rows));
  std::vector<int32_t> acc(size_t(M * rows));
  quantize_activations(x.data(), M, cols, cols, xq.data(), xs.data());
  REQUIRE(qgemm_rows(M, xq.data(), xs.data(), q, 0, rows, 0, cols, y.data(), rows, false, acc.data()));
  double worst_share = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < rows; ++j) {
      double exact = 0, bound = 0;
      const double dx = 0.5 * xs[size_t(m)], dw = 0.5 * q.scale[size_t(j)];
      for (int64_t k = 0; k < cols; ++k) {
        const double xv = x[size_t(m * cols + k)], wv = W[size_t(j * cols + k)];
        exact += xv * wv;
        bound += std::fabs(xv) * dw + std::fabs(wv) * dx + dx * dw;
      }
      const double err = std::fabs(double(y[size_t(m * rows + j)]) - exact);
      CHECK(err <= bound * 1.0001 + 1e-6);
      worst_share = std::max(worst_share, err / bound);
    }
  CHECK(worst_share > 0.0);  // the int8 path really ran (an f32 product would be ~exact)
}

TEST_CASE("int8 quantization of non-finite values stays defined (an overflowed draft, not a crash)", "[core]") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {1.0f, nan, -2.0f, inf, 0.5f, -inf, 0.0f, 3.0f};
  std::vector<uint8_t> xq(x.size());
  float xs = 0;
  quantize_activations(x.data(), 1, int64_t(x.size()), int64_t(x.size()), xq.data(), &xs);
  for (uint8_t v : xq) CHECK(v >= 1);
  const QuantMatrix q = quantize_rows(x.data(), 2, 4);  // rows {1, NaN, -2, inf}, {0.5, -inf, 0, 3}
  for (int8_t v : q.q) CHECK(std::abs(v) <= 63);
}
