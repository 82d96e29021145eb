// Int8 products for the speculative draft (the MTP module at decode time). A draft only has to be
// usually right: the main model verifies every drafted token in f32, so the output does not depend
// on the draft's precision, only the acceptance rate does. A quarter of the bytes matters because
// batch-1 decoding is bound by weight reads, and because the module's f32 weights on top of the
// main model's outgrow the last-level cache (see README, "Self-speculative decoding").
//
// Weights are quantized per output row, symmetrically, to 7 bits (|q| ≤ 63); activations per row to
// unsigned 8 bits around 128. 7-bit weights keep the u8·s8 pair sums of the AVX2/AVX-512 kernels
// without VNNI (vpmaddubsw, saturating at 16 bits) exact: 2·255·63 < 32767. The products run on
// oneDNN's dnnl_gemm_u8s8s32 with zero offsets (its fast path); the activation offset of 128 is
// taken out afterwards with sums of q precomputed per row and over 16-column blocks, so any column
// slice that starts on a block boundary can be multiplied alone (the decode threads' slices).
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

struct QuantMatrix {
  static constexpr int64_t kBlock = 16;
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> q;           // (rows, cols): round(w / scale[row])
  std::vector<float> scale;        // (rows): max |w| over the row / 63
  std::vector<int32_t> row_sum;    // (rows): Σ q over the row
  std::vector<int16_t> block_sum;  // (ceil(cols / 16), rows): Σ q over each 16-column block (|Σ| ≤ 1008)
  int64_t blocks() const { return (cols + kBlock - 1) / kBlock; }
};

// W (rows, cols) row-major -> its int8 form.
QuantMatrix quantize_rows(const float* W, int64_t rows, int64_t cols);

// Activation rows x (M, K, row stride ldx) -> xq (M, K) = round(x / xs[m]) + 128 and xs (M), the
// per-row scale max |x| / 127 (1 for an all-zero row).
void quantize_activations(const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* xq, float* xs);

// y (M, n_rows) (+)= x · W[row0 : row0 + n_rows, col0 : col0 + K]ᵀ, dequantized, for x given as
// quantize_activations' (xq (M, K), xs). col0 must be a multiple of 16 and col0 + K a multiple of
// 16 or W.cols. acc (M, n_rows) is int32 scratch. Returns false if the slice breaks those rules or
// oneDNN fails.
bool qgemm_rows(int64_t M, const uint8_t* xq, const float* xs, const QuantMatrix& W, int64_t row0, int64_t n_rows,
                int64_t col0, int64_t K, float* y, int64_t ldy, bool accumulate, int32_t* acc);

}  // namespace moe
