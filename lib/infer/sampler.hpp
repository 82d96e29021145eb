// Token sampling as in llama.cpp: repeat penalty, then top-k, top-p, min-p, then temperature.
// `--temp 0` is greedy (argmax after the repeat penalty). Candidate buffers are sized once.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.hpp"

namespace moe {

struct SamplerConfig {
  double temp = 0.8;
  int64_t top_k = 40;           // <= 0: keep all
  double top_p = 0.95;          // 1: off
  double min_p = 0.0;           // 0: off
  double repeat_penalty = 1.0;  // 1: off
  int64_t repeat_last_n = 64;   // how many recent tokens the penalty looks at
};

struct Candidate {
  int32_t id;
  float logit;
  float prob;
};

class Sampler {
 public:
  Sampler(const SamplerConfig& config, int64_t vocab, uint64_t seed);

  // Picks the next token from logits (V) given the tokens so far (prompt + generated).
  int32_t sample(const float* logits, const std::vector<int32_t>& history);

  // For speculative sampling: the distribution sample() draws from, over token ids (probs gets V
  // entries: the kept candidates' tempered probabilities, 0 elsewhere; greedy: 1 on the argmax),
  // a draw from any non-negative weights over ids, and a uniform number, all from this sampler's
  // random stream.
  bool greedy() const { return config_.temp <= 0.0; }
  void distribution(const float* logits, const std::vector<int32_t>& history, std::vector<double>& probs);
  int32_t draw(const std::vector<double>& weights);
  double uniform() { return rng_.uniform(); }

  // The steps, exposed for tests. Each works on candidates_ in place.
  // Repeat penalty: each distinct token among the last repeat_last_n of history has its logit
  // divided by the penalty when positive and multiplied by it when negative.
  void load(const float* logits);
  void apply_repeat_penalty(const std::vector<int32_t>& history);
  void sort_by_logit();  // descending logit, ties to the lower id; fills prob = softmax
  void apply_top_k();    // keep the top_k best
  void apply_top_p();    // keep the smallest prefix whose probability mass reaches top_p
  void apply_min_p();    // keep tokens with prob >= min_p * max prob
  const std::vector<Candidate>& candidates() const { return candidates_; }

 private:
  void renormalise();
  SamplerConfig config_;
  int64_t vocab_;
  Rng rng_;
  std::vector<Candidate> candidates_;
  std::vector<uint8_t> seen_;
};

}  // namespace moe
