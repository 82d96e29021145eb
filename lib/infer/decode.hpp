// KV-cached inference. Prefill runs the training forward (one code path for the math) over a
// whole prompt and copies its rotated keys and values into the cache; each decode step then runs
// one token per active sequence.
//
// A decode step is a few megabytes of weight reads for a few kilobytes of activations, so it is
// bound by memory bandwidth and by per-call overheads, not by FLOPs. It therefore runs as ONE
// OpenMP parallel region per step in which every thread owns a slice of every weight matrix and
// the threads meet at two barriers per layer:
//   1. each thread projects q/k/v for its own KV heads (and their query heads), applies RoPE,
//      appends to the cache, attends, and multiplies by its columns of o_proj -> a partial sum;
//   2. every thread adds all partial sums in thread order (the same bits on every thread), norms,
//      routes (redundantly: tiny), and computes its slice of the intermediate dimension of every
//      chosen expert, the shared experts or the dense FFN, times its rows of down_proj -> a
//      partial sum again.
// Products are oneDNN dnnl_sgemm calls on the calling thread (~0.5 µs fixed cost instead of ~2 µs
// per primitive execution). Only the chosen experts are read; tokens that chose the same expert
// share one product. Buffers are sized once; a decode step allocates nothing.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "core/arena.hpp"
#include "core/compute.hpp"
#include "model/model.hpp"
#include "moe/router.hpp"

namespace moe {

// GQA caches every KV head's rotated key and value; MLA caches per token only the normed latent
// rmsnorm(c_kv) and the shared rotated key part: (r_kv + d_r) floats per token and layer.
struct KvCache {
  int64_t layers = 0, batch = 0, max_len = 0, kv_heads = 0, head_dim = 0;
  int64_t latent_dim = 0;       // MLA: r_kv + d_r; 0 for GQA
  Buffer<float> k, v;           // GQA: (L, batch, Hkv, max_len, hd) each, keys after RoPE
  Buffer<float> latent;         // MLA: (L, batch, max_len, r_kv + d_r): [rmsnorm(c_kv) | rope(k_rope)]
  std::vector<int64_t> length;  // tokens cached per sequence

  KvCache(const ModelConfig& c, int64_t batch, int64_t max_len);
  float* latent_at(int64_t l, int64_t b) { return latent.data() + (l * batch + b) * max_len * latent_dim; }
  float* k_at(int64_t l, int64_t b, int64_t h) {
    return k.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim;
  }
  float* v_at(int64_t l, int64_t b, int64_t h) {
    return v.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim;
  }
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
  // The body of one decode step for thread omp_get_thread_num() of the current team.
  struct ThreadStep;

  const Model& model_;
  KvCache cache_;
  Workspace step_ws_;           // (batch, 1): shared q/k/v/attention buffers, logits, chosen experts
  Buffer<float> attn_scratch_;  // (batch * H, max_len) attention weights

  // Per-thread slices (see the header comment); sized for max_threads_ threads once.
  struct ThreadScratch {
    Buffer<float> floats;
    Buffer<int32_t> ints;
    RouteScratch route;
  };
  int max_threads_ = 1;
  std::vector<ThreadScratch> scratch_;
  Buffer<float> partial_;  // (2, threads, batch, D): attention and FFN partial sums
};

}  // namespace moe
