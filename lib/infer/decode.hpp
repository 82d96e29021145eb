// KV-cached inference. Prefill runs the training forward (one code path for the math) over a
// whole prompt and copies its rotated keys and values into the cache; each decode step then runs
// one token per active sequence: projections as small GEMMs, attention as matrix-vector work over
// the cache, and MoE layers through the same routed-expert code as training (unpadded, so only
// the chosen experts compute). Buffers are sized once; a decode step allocates nothing.
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.hpp"
#include "core/compute.hpp"
#include "model/model.hpp"

namespace moe {

struct KvCache {
  int64_t layers = 0, batch = 0, max_len = 0, kv_heads = 0, head_dim = 0;
  Buffer<float> k, v;            // (L, batch, Hkv, max_len, hd) each, keys after RoPE
  std::vector<int64_t> length;   // tokens cached per sequence

  KvCache(const ModelConfig& c, int64_t batch, int64_t max_len);
  float* k_at(int64_t l, int64_t b, int64_t h) { return k.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim; }
  float* v_at(int64_t l, int64_t b, int64_t h) { return v.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim; }
};

// Expert load seen during inference: tokens per expert per MoE layer.
struct ExpertTally {
  std::vector<std::vector<int64_t>> counts;  // (MoE layers, E)
  explicit ExpertTally(const ModelConfig& c);
  void add(const ModelConfig& c, const Workspace& ws, int64_t tokens);
};

class Decoder {
 public:
  Decoder(const Model& model, int64_t batch, int64_t max_len);

  // Runs the prompt of sequence b (cache must be empty for b) and returns the logits of its last
  // position (V floats, valid until the next call).
  const float* prefill(ComputeContext& ctx, int64_t b, const std::vector<int32_t>& prompt, ExpertTally* tally);

  // One token for each of n sequences seq[i] (each with room in the cache); logits (n, V).
  const float* step(ComputeContext& ctx, const int32_t* seq, const int32_t* tokens, int64_t n, ExpertTally* tally);

  KvCache& cache() { return cache_; }

 private:
  const Model& model_;
  KvCache cache_;
  Workspace step_ws_;          // (batch, 1), unpadded expert rows
  Buffer<float> attn_scratch_;  // (batch * H, max_len) attention weights
};

}  // namespace moe
