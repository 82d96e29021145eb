// One optimizer step of training, shared by `moe train` and `moe bench`: `accum` micro-batches of
// forward + backward (gradients and expert counts accumulate), global-norm clipping, AdamW, then
// the loss-free bias update from the whole step's counts.
#pragma once
#include <cstdint>
#include <vector>

#include "core/compute.hpp"
#include "core/rng.hpp"
#include "dist/dist.hpp"
#include "dist/expert_parallel.hpp"
#include "model/model.hpp"
#include "train/data.hpp"
#include "train/metrics_line.hpp"
#include "train/optimizer.hpp"
#include "train/train_config.hpp"

namespace moe {

// How a step is spread over processes: one process (dist null or of size 1), data parallel (each
// rank a 1/N share of every global batch, every gradient averaged), or expert parallel (also the
// routed experts split over the ranks).
struct Parallel {
  Dist* dist = nullptr;
  ExpertParallel* experts = nullptr;
  int64_t ranks() const { return dist ? dist->size() : 1; }
  int64_t rank() const { return dist ? dist->rank() : 0; }
};

class TrainStep {
 public:
  // With several ranks, config.batch is the global batch (divisible by the ranks).
  TrainStep(const TrainConfig& config, const Model& model, Parallel parallel = {});

  // Runs optimizer step `step` (0-based) and returns its record (seconds and tokens_per_s unset).
  // A step whose loss or gradient norm is not finite changes nothing (finite = false).
  StepRecord run(ComputeContext& ctx, Model& model, AdamW& adam, const TextData& data, Rng& rng, int64_t step,
                 bool& finite);

  Workspace& workspace() { return ws_; }
  const Parallel& parallel() const { return parallel_; }
  int64_t tokens_per_step() const { return config_.batch * config_.seq * config_.accum; }

 private:
  // sqrt(Σ g²) over the whole job's trainable parameters (replicated ones counted once).
  double global_grad_norm(const Model& model);

  TrainConfig config_;
  Parallel parallel_;
  Workspace ws_;
  // Gradient ranges replicated on every rank (summed over ranks), and the rank's own experts.
  std::vector<std::pair<int64_t, int64_t>> replicated_, owned_;
  BalanceLossConfig balance_;
  bool bias_balancing_;
  std::vector<int32_t> inputs_, targets_;     // (accum, batch, seq): the step's global micro-batches
  std::vector<std::vector<int64_t>> counts_;  // (MoE layers, E) over the step
  std::vector<double> layer_balance_;         // (MoE layers)
  std::vector<double> layer_z_;               // (MoE layers) router z-loss
  // --balance aux, whose batch is the whole step: Σ_t s_t/Σ s_t per MoE layer and expert over the
  // step, and the step's f_i that every backward of the step uses; (MoE layers, E) each.
  std::vector<double> aux_prob_sums_, aux_fractions_;
};

}  // namespace moe
