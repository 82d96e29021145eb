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
void rope_forward(const RopeTable& table, const float* in, float* out, int64_t B, int64_t T, int64_t heads,
                  int64_t pos0);
// The inverse map: d_out (B, heads, T, hd) -> d_in (B, T, heads, hd) (written).
void rope_backward(const RopeTable& table, const float* d_out, float* d_in, int64_t B, int64_t T, int64_t heads,
                   int64_t pos0);

// Plain layout moves used around attention: (B, T, heads, hd) <-> (B, heads, T, hd).
void split_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd);
void merge_heads(const float* in, float* out, int64_t B, int64_t T, int64_t heads, int64_t hd);

}  // namespace moe
