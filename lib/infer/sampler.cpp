#include "infer/sampler.hpp"

#include <algorithm>
#include <cmath>

namespace moe {

Sampler::Sampler(const SamplerConfig& config, int64_t vocab, uint64_t seed)
    : config_(config), vocab_(vocab), rng_(seed), seen_(static_cast<size_t>(vocab)) {
  candidates_.reserve(static_cast<size_t>(vocab));
}

void Sampler::load(const float* logits) {
  candidates_.clear();
  for (int64_t i = 0; i < vocab_; ++i) candidates_.push_back({int32_t(i), logits[i], 0.0f});
}

void Sampler::apply_repeat_penalty(const std::vector<int32_t>& history) {
  const float penalty = float(config_.repeat_penalty);
  if (penalty == 1.0f || config_.repeat_last_n == 0) return;
  std::fill(seen_.begin(), seen_.end(), 0);
  const size_t n = config_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(config_.repeat_last_n));
  for (size_t i = history.size() - n; i < history.size(); ++i) seen_[size_t(history[i])] = 1;
  // candidates_ is still indexed by id here (load() order).
  for (Candidate& c : candidates_)
    if (seen_[size_t(c.id)]) c.logit = c.logit > 0 ? c.logit / penalty : c.logit * penalty;
}

void Sampler::renormalise() {
  const float max = candidates_.front().logit;
  double sum = 0.0;
  for (const Candidate& c : candidates_) sum += std::exp(double(c.logit - max));
  for (Candidate& c : candidates_) c.prob = float(std::exp(double(c.logit - max)) / sum);
}

void Sampler::sort_by_logit() {
  std::sort(candidates_.begin(), candidates_.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  });
  renormalise();
}

void Sampler::apply_top_k() {
  if (config_.top_k > 0 && size_t(config_.top_k) < candidates_.size()) {
    candidates_.resize(size_t(config_.top_k));
    renormalise();
  }
}

void Sampler::apply_top_p() {
  if (config_.top_p >= 1.0) return;
  double mass = 0.0;
  size_t keep = candidates_.size();
  for (size_t i = 0; i < candidates_.size(); ++i) {
    mass += candidates_[i].prob;
    if (mass >= config_.top_p) {
      keep = i + 1;
      break;
    }
  }
  candidates_.resize(keep);
  renormalise();
}

void Sampler::apply_min_p() {
  if (config_.min_p <= 0.0) return;
  const float threshold = float(config_.min_p) * candidates_.front().prob;
  size_t keep = 1;
  while (keep < candidates_.size() && candidates_[keep].prob >= threshold) ++keep;
  candidates_.resize(keep);
  renormalise();
}

void Sampler::distribution(const float* logits, const std::vector<int32_t>& history, std::vector<double>& probs) {
  probs.assign(size_t(vocab_), 0.0);
  load(logits);
  apply_repeat_penalty(history);
  if (greedy()) {
    const Candidate* best = &candidates_[0];
    for (const Candidate& c : candidates_)
      if (c.logit > best->logit) best = &c;
    probs[size_t(best->id)] = 1.0;
    return;
  }
  sort_by_logit();
  apply_top_k();
  apply_top_p();
  apply_min_p();
  const double inv_temp = 1.0 / config_.temp, max = candidates_.front().logit;
  double sum = 0.0;
  for (const Candidate& c : candidates_) sum += std::exp((double(c.logit) - max) * inv_temp);
  for (const Candidate& c : candidates_) probs[size_t(c.id)] = std::exp((double(c.logit) - max) * inv_temp) / sum;
}

int32_t Sampler::draw(const std::vector<double>& weights) {
  double sum = 0.0;
  for (double w : weights) sum += w;
  double r = rng_.uniform() * sum;
  int32_t last = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0.0) continue;
    last = int32_t(i);
    r -= weights[i];
    if (r < 0) return int32_t(i);
  }
  return last;
}

int32_t Sampler::sample(const float* logits, const std::vector<int32_t>& history) {
  load(logits);
  apply_repeat_penalty(history);
  if (config_.temp <= 0.0) {
    // Greedy: the largest (penalised) logit, ties to the lower id.
    const Candidate* best = &candidates_[0];
    for (const Candidate& c : candidates_)
      if (c.logit > best->logit) best = &c;
    return best->id;
  }
  sort_by_logit();
  apply_top_k();
  apply_top_p();
  apply_min_p();
  // Temperature last, over the surviving candidates.
  const double inv_temp = 1.0 / config_.temp;
  const double max = candidates_.front().logit;
  double sum = 0.0;
  for (Candidate& c : candidates_) {
    c.prob = float(std::exp((double(c.logit) - max) * inv_temp));
    sum += c.prob;
  }
  double r = rng_.uniform() * sum;
  for (const Candidate& c : candidates_) {
    r -= c.prob;
    if (r < 0) return c.id;
  }
  return candidates_.back().id;
}

}  // namespace moe
