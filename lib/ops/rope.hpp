// Rotary position embedding, fused with the move from token-major (B, T, heads, hd) projections to
// head-major (B, heads, T, hd) blocks that the batched attention GEMMs read. Two pairings: the
// rotate-half convention of Hugging Face Llama (x_i with x_{i+hd/2}) and adjacent pairs (x_2i with
// x_2i+1), which is what DeepSeek-V3's rope_interleave computes on released weights.
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

// cos/sin for positions [0, max_positions) and frequencies i < hd/2: (max_positions, hd/2) each.
struct RopeTable {
  int64_t head_dim = 0, max_positions = 0;
  bool adjacent_pairs = false;  // rotate (x_2i, x_2i+1) instead of (x_i, x_{i+hd/2})
  std::vector<float> cos, sin;
  RopeTable() = default;
  RopeTable(int64_t head_dim, int64_t max_positions, double theta, bool adjacent_pairs = false);
};

// in (B, T, heads, hd) -> out (B, heads, T, hd), rotated for positions pos0 .. pos0+T-1.
// Rotates one head vector x (hd) at position pos into y (may not alias x).
inline void rope_rotate(const RopeTable& table, const float* x, float* y, int64_t pos) {
  const int64_t half = table.head_dim / 2;
  const float* c = table.cos.data() + pos * half;
  const float* s = table.sin.data() + pos * half;
  if (table.adjacent_pairs) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[2 * i], x2 = x[2 * i + 1];
      y[2 * i] = x1 * c[i] - x2 * s[i];
      y[2 * i + 1] = x2 * c[i] + x1 * s[i];
    }
    return;
  }
  // q' = q cos + rotate_half(q) sin, rotate_half(q) = [-q2, q1]
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    y[i] = x1 * c[i] - x2 * s[i];
    y[i + half] = x2 * c[i] + x1 * s[i];
  }
}

// The transpose of rope_rotate (a rotation by -angle): dy at position pos -> dx (may not alias).
inline void rope_rotate_back(const RopeTable& table, const float* dy, float* dx, int64_t pos) {
  const int64_t half = table.head_dim / 2;
  const float* c = table.cos.data() + pos * half;
  const float* s = table.sin.data() + pos * half;
  const int64_t step = table.adjacent_pairs ? 1 : 0;  // index of x_i's partner: 2i+1 or i+half
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = step ? 2 * i : i, b = step ? 2 * i + 1 : i + half;
    const float g1 = dy[a], g2 = dy[b];
    dx[a] = g1 * c[i] + g2 * s[i];
    dx[b] = g2 * c[i] - g1 * s[i];
  }
}

void rope_forward(const RopeTable& table, const float* in, float* out, int64_t B, int64_t T, int64_t heads,
                  int64_t pos0);
// The inverse map: d_out (B, heads, T, hd) -> d_in (B, T, heads, hd) (written).
void rope_backward(const RopeTable& table, const float* d_out, float* d_in, int64_t B, int64_t T, int64_t heads,
                   int64_t pos0);

// Plain layout moves used around attention: (B, T, heads, hd) <-> (B, heads, T, hd).
void split_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd);
void merge_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd);

}  // namespace moe
