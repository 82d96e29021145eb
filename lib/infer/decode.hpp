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
#include <memory>
#include <vector>

#include "core/arena.hpp"
#include "core/compute.hpp"
#include "core/quant.hpp"
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
  std::vector<int64_t> length;  // tokens cached per sequence (main layers)
  // The MTP module's layer (layer L of `latent`, models with the module): positions it has cached.
  std::vector<int64_t> mtp_length;

  KvCache(const ModelConfig& c, int64_t batch, int64_t max_len);
  float* latent_at(int64_t l, int64_t b) { return latent.data() + (l * batch + b) * max_len * latent_dim; }
  float* k_at(int64_t l, int64_t b, int64_t h) {
    return k.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim;
  }
  float* v_at(int64_t l, int64_t b, int64_t h) {
    return v.data() + (((l * batch + b) * kv_heads + h) * max_len) * head_dim;
  }
};

// The MTP module's FFN and eh_proj in int8 (core/quant.hpp), for drafting: its attention, router
// and norms stay f32 (a few percent of its bytes, and the router decides which experts are read).
struct DraftWeights {
  struct Ffn {
    QuantMatrix gate, up, down;
  };
  QuantMatrix eh_proj;  // (D, 2D)
  Ffn ffn;              // the shared experts (E_s·I_m wide), or the dense FFN if the layer is dense
  Ffn experts;          // every routed expert stacked: gate/up (E·I_m, D), down (E·D, I_m)
};

class Decoder {
 public:
  // max_rows: rows a step may hold (default: batch); speculative decoding verifies several tokens
  // of one sequence in one step. int8_draft: mtp_step runs on DraftWeights.
  Decoder(const Model& model, int64_t batch, int64_t max_len, int64_t max_rows = 0, bool int8_draft = false);

  // Runs the prompt of sequence b (cache must be empty for b) and returns the logits of its last
  // position (V floats, valid until the next call). For a model with the MTP module, its cache is
  // filled too (positions 0 .. T-2: each needs the next prompt token) and hidden() holds the last
  // position's hidden state.
  const float* prefill(ComputeContext& ctx, int64_t b, const std::vector<int32_t>& prompt, ExpertTally* tally);

  // Row i appends tokens[i] to sequence seq[i]; several rows may extend one sequence, in order
  // (consecutive positions, each seeing the rows before it). Returns logits (n, V).
  const float* step(ComputeContext& ctx, const int32_t* seq, const int32_t* tokens, int64_t n, ExpertTally* tally);

  // The main model's last hidden state (the residual stream before model.norm) of each row of the
  // last step or of prefill's last position: (n, D).
  const float* hidden() const { return hidden_.data(); }

  // The MTP module for rows (sequence seq[i], hidden state h_i (D), next token t_{i+1}), appended
  // to that sequence's MTP cache in order. Only each sequence's last row is run to the end (a draft
  // needs nothing else): returns the logits for t_{i+2} of those rows (one per sequence, in the
  // order of their last rows; (m, V)), and mtp_hidden() their output hidden states (m, D) (the
  // input of a further draft).
  const float* mtp_step(const int32_t* seq, const float* hidden, const int32_t* next, int64_t n, ExpertTally* tally);
  const float* mtp_hidden() const { return mtp_hidden_.data(); }

  // Forgets cached positions past these lengths (rejected draft tokens).
  void truncate(int64_t b, int64_t length, int64_t mtp_length);

  KvCache& cache() { return cache_; }

  // Distinct routed experts the last step (or mtp_step) read, summed over its MoE layers: K per
  // layer for one row, more when several rows chose different experts (a verification's cost).
  int64_t experts_read() const { return experts_read_; }

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
  ForcedRouting forced_routing_ = ForcedRouting::natural;  // the step's ctx.forced_routing
  std::vector<ThreadScratch> scratch_;
  Buffer<float> partial_;  // (2, threads, rows, D): attention and FFN partial sums
  int64_t max_rows_ = 1;
  int64_t exact_rows_ = 1;          // rows per product call (sgemm_exact_rows)
  std::vector<int64_t> positions_;  // (rows) position of each row of the current step
  Buffer<float> hidden_;            // (rows, D)
  Buffer<float> mtp_hidden_;        // (rows, D)
  // An MTP step's rows reordered: cache-only rows first (see mtp_step).
  std::vector<int32_t> mtp_seq_, mtp_next_;
  std::vector<int64_t> mtp_pos_;
  Buffer<float> mtp_input_;              // (rows, D)
  std::unique_ptr<DraftWeights> draft_;  // int8_draft only
  int64_t experts_read_ = 0;             // written by thread 0 of a step
  // Runs one step (main layers, or the MTP module) over n rows at positions pos in one parallel
  // region; in the MTP module the first cache_only rows stop after appending to its cache.
  void run(const int32_t* seq, const int64_t* pos, const int32_t* tokens, const float* mtp_input, int64_t n,
           int64_t cache_only);
};

}  // namespace moe
