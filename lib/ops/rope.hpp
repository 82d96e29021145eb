// Rotary position embedding in the rotate-half convention (Hugging Face Llama), fused with the
// move from token-major (B, T, heads, hd) projections to head-major (B, heads, T, hd) blocks that
// the batched attention GEMMs read.
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

// cos/sin for positions [0, max_positions) and frequencies i < hd/2: (max_positions, hd/2) each.
struct RopeTable {
  int64_t head_dim = 0, max_positions = 0;
  std::vector<float> cos, sin;
  RopeTable() = default;
  RopeTable(int64_t head_dim, int64_t max_positions, double theta);
};

// in (B, T, heads, hd) -> out (B, heads, T, hd), rotated for positions pos0 .. pos0+T-1.
// Rotates one head vector x (hd) at position pos into y (may not alias x).
inline void rope_rotate(const RopeTable& table, const float* x, float* y, int64_t pos) {
  const int64_t half = table.head_dim / 2;
  const float* c = table.cos.data() + pos * half;
  const float* s = table.sin.data() + pos * half;
  // q' = q cos + rotate_half(q) sin, rotate_half(q) = [-q2, q1]
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    y[i] = x1 * c[i] - x2 * s[i];
    y[i + half] = x2 * c[i] + x1 * s[i];
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
