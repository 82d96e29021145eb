#include "train/step.hpp"

#include <cmath>

#include "core/error.hpp"
#include "core/threads.hpp"
#include "moe/balance.hpp"

namespace moe {

namespace {

// Decoder layers a training step runs: the main ones, and the MTP module's when it is trained.
int64_t ran_layers_of(const ModelConfig& c, bool mtp) { return c.num_hidden_layers + (mtp ? 1 : 0); }

}  // namespace

TrainStep::TrainStep(const TrainConfig& config, const Model& model, Parallel parallel)
    : config_(config),
      parallel_(parallel),
      // A model's MTP module trains only with a positive weight; with 0 its forward still runs in
      // evaluations (mtp_val_loss), from this workspace: run_mtp is cleared for the steps.
      ws_(model.config, config.batch / parallel.ranks(), config.seq, /*training=*/true, /*with_mtp=*/true,
          parallel.experts),
      bias_balancing_(uses_bias(config.balance)),
      inputs_(static_cast<size_t>(config.accum * config.batch * config.seq)),
      targets_(static_cast<size_t>(config.accum * config.batch * config.seq)),
      counts_(static_cast<size_t>(model.config.num_routed_layers()),
              std::vector<int64_t>(static_cast<size_t>(model.config.n_routed_experts))),
      layer_balance_(static_cast<size_t>(model.config.num_routed_layers())),
      layer_z_(static_cast<size_t>(model.config.num_routed_layers())) {
  check(config.batch % parallel.ranks() == 0, "internal: batch not divisible by the ranks");
  // Contiguous runs of tensors: the rank's own experts (expert parallel) or replicated ones.
  for (const TensorSpec& spec : model.layout.tensors) {
    auto& ranges = parallel.experts && spec.role == TensorRole::routed_expert ? owned_ : replicated_;
    if (!ranges.empty() && ranges.back().first + ranges.back().second == spec.offset)
      ranges.back().second += spec.numel;
    else
      ranges.push_back({spec.offset, spec.numel});
  }
  // aux: each pass (a micro-batch on one rank) is its own batch, as most trainers compute it.
  if (config.balance == Balance::aux) balance_.aux_alpha = float(config.aux_alpha);
  balance_.z_alpha = float(config.z_loss);
  if (config.balance == Balance::global_aux) {
    balance_.aux_alpha = float(config.aux_alpha);
    const size_t routed = size_t(model.config.num_routed_layers() * model.config.n_routed_experts);
    aux_prob_sums_.resize(routed);
    aux_fractions_.resize(routed);
    balance_.aux_step_fractions = aux_fractions_.data();
  }
  if (config.balance == Balance::loss_free_seq) balance_.seq_aux_alpha = float(config.seq_aux_alpha);
  ws_.run_mtp = config.mtp_weight > 0;
}

StepRecord TrainStep::run(ComputeContext& ctx, Model& model, AdamW& adam, const TextData& data, Rng& rng, int64_t step,
                          bool& finite) {
  const TrainConfig& tc = config_;
  const ModelConfig& mc = model.config;
  const int64_t E = mc.n_routed_experts, K = mc.num_experts_per_tok, ranks = parallel_.ranks();
  const int64_t local_rows = ws_.B * ws_.T, global_rows = tc.batch * tc.seq;
  const bool step_aux = balance_.aux_step_fractions != nullptr;
  const int64_t step_tokens = global_rows * tc.accum;
  {
    float* g = model.grads.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < model.layout.total; ++i) g[i] = 0.0f;
  }
  for (auto& c : counts_) std::fill(c.begin(), c.end(), 0);
  std::fill(layer_balance_.begin(), layer_balance_.end(), 0.0);
  std::fill(layer_z_.begin(), layer_z_.end(), 0.0);
  std::fill(aux_prob_sums_.begin(), aux_prob_sums_.end(), 0.0);
  // Every rank draws the same global batches (one random stream) and takes its own rows of each.
  for (int64_t micro = 0; micro < tc.accum; ++micro)
    sample_batch(data, rng, tc.batch, tc.seq, inputs_.data() + micro * global_rows,
                 targets_.data() + micro * global_rows);
  // Each pass is 1/(accum·ranks) of the step's tokens: its losses and gradients enter with that share.
  const double passes = double(tc.accum * ranks);
  ws_.run_mtp = tc.mtp_weight > 0;  // (evaluate() runs the module and restores this)
  const float mtp_weight = ws_.mtp ? float(tc.mtp_weight) : 0.0f;
  auto forward = [&](int64_t micro) {
    const int64_t first = micro * global_rows + parallel_.rank() * local_rows;
    return model_forward(ctx, model, ws_, inputs_.data() + first, targets_.data() + first, balance_);
  };
  auto backward = [&] { model_backward(ctx, model, ws_, balance_, float(1.0 / passes), mtp_weight); };
  double loss = 0.0, mtp_loss = 0.0;
  // The step's statistics from the pass in the workspace: losses, expert counts, the aux loss's sums.
  auto record = [&](double pass_loss) {
    loss += pass_loss / passes;
    if (ws_.mtp_ran) mtp_loss += ws_.mtp_loss_sum / double(ws_.mtp_tokens) / passes;
    size_t m = 0;
    for (int64_t l = 0; l < ran_layers_of(mc, ws_.mtp_ran); ++l) {
      if (!mc.is_moe_layer(l)) continue;
      const MoeSaved& saved = ws_.layers[size_t(l)].moe;
      for (int64_t e = 0; e < E; ++e) counts_[m][size_t(e)] += saved.counts[e];
      layer_z_[m] += saved.z_loss / passes;  // a mean over tokens: the passes' shares add up
      if (step_aux)
        aux_prob_sums(saved.scores, local_rows, E, aux_prob_sums_.data() + m * size_t(E));
      else
        layer_balance_[m] += saved.balance_loss / passes;
      ++m;
    }
  };
  if (!step_aux) {
    for (int64_t micro = 0; micro < tc.accum; ++micro) {
      record(forward(micro));
      backward();
    }
  } else {
    // Σ f_i·P_i over the step is not a sum over its passes: every backward needs the f_i of the whole
    // step, known once every micro-batch on every rank has routed. So: all forwards, one exchange of
    // the E-sized sums, then the backwards. The last micro-batch's forward is still in the workspace;
    // the others run their forward again (the weights do not change within a step, so they route the
    // same way), which costs accum - 1 extra forwards per step and no memory.
    for (int64_t micro = 0; micro < tc.accum; ++micro) record(forward(micro));
    if (ranks > 1) {
      for (auto& c : counts_) parallel_.dist->allreduce_sum(c.data(), int64_t(c.size()));
      parallel_.dist->allreduce_sum(aux_prob_sums_.data(), int64_t(aux_prob_sums_.size()));
    }
    for (size_t m = 0; m < counts_.size(); ++m)
      for (int64_t e = 0; e < E; ++e)
        aux_fractions_[m * size_t(E) + size_t(e)] = double(counts_[m][size_t(e)]) / double(step_tokens * K);
    backward();
    for (int64_t micro = 0; micro + 1 < tc.accum; ++micro) {
      forward(micro);
      backward();
    }
  }
  StepRecord r;
  r.ranks = ranks;
  if (ranks > 1) {
    // One exchange for the step's statistics (loss, balance losses, expert counts), then the
    // gradients of the replicated parameters (each already scaled by 1/ranks: a sum is the mean).
    Dist& dist = *parallel_.dist;
    std::vector<double> stats{loss, mtp_loss};
    stats.insert(stats.end(), layer_balance_.begin(), layer_balance_.end());
    stats.insert(stats.end(), layer_z_.begin(), layer_z_.end());
    dist.allreduce_sum(stats.data(), int64_t(stats.size()));
    loss = stats[0], mtp_loss = stats[1];
    std::copy(stats.begin() + 2, stats.begin() + 2 + int64_t(layer_balance_.size()), layer_balance_.begin());
    std::copy(stats.begin() + 2 + int64_t(layer_balance_.size()), stats.end(), layer_z_.begin());
    if (!step_aux)  // else exchanged before the backwards
      for (auto& c : counts_) dist.allreduce_sum(c.data(), int64_t(c.size()));
    for (const auto& [offset, n] : replicated_) dist.allreduce_sum(model.grads.data() + offset, n);
  }
  if (step_aux)
    for (size_t m = 0; m < counts_.size(); ++m)
      layer_balance_[m] = aux_loss_from_sums(counts_[m].data(), aux_prob_sums_.data() + m * size_t(E), step_tokens, E,
                                             K, balance_.aux_alpha);
  {
    PhaseScope phase(ctx, Phase::optimizer);
    const double norm = global_grad_norm(model);
    const double lr = learning_rate(step, tc.steps, tc.warmup, tc.lr, tc.min_lr);
    finite = std::isfinite(loss) && std::isfinite(mtp_loss) && std::isfinite(norm);
    if (finite)
      adam.step(model, lr, tc.weight_decay, clip_scale(norm, tc.grad_clip), /*train_mtp=*/ws_.run_mtp && ws_.mtp);
    r.step = step + 1;
    r.steps = tc.steps;
    r.loss = loss, r.lr = lr, r.grad_norm = norm;
    if (ws_.mtp_ran) r.mtp_loss = mtp_loss;  // a window of one token has no t+2 to predict: no value
  }
  PhaseScope phase(ctx, Phase::balancing);
  // --bias-freeze-at F: from step F·steps on, the bias stays where it is (DeepSeek-V3 sets γ = 0 for
  // the last part of training).
  const bool bias_moves = bias_balancing_ && finite && double(step) < tc.bias_freeze_at * double(tc.steps);
  if (balance_.z_alpha > 0) r.z_loss = 0.0;
  size_t m = 0;
  for (int64_t l = 0; l < ran_layers_of(mc, ws_.mtp_ran); ++l) {
    if (!mc.is_moe_layer(l)) continue;
    float* bias = model.weights.layers[size_t(l)].moe.router_bias;
    // No bias update for a step that went non-finite.
    if (bias_moves)
      update_bias(bias, counts_[m].data(), E, float(tc.bias_rate), tc.bias_update == BiasUpdate::proportional,
                  tc.bias_center);
    LayerLoad load;
    load.layer = l;
    load.counts = counts_[m];
    load.bias.assign(bias, bias + E);
    load.maxvio = max_violation(counts_[m].data(), E);
    load.balance_loss = layer_balance_[m];
    if (balance_.z_alpha > 0) load.z_loss = layer_z_[m], *r.z_loss += layer_z_[m];
    if (ranks > 1) {
      // Expert rows each rank computed: its own tokens' slots (data parallel), or every slot routed
      // to its block of experts (expert parallel).
      load.rank_rows.assign(size_t(ranks), 0);
      for (int64_t q = 0; q < ranks; ++q)
        if (parallel_.experts)
          for (int64_t e = q * E / ranks; e < (q + 1) * E / ranks; ++e)
            load.rank_rows[size_t(q)] += counts_[m][size_t(e)];
        else
          load.rank_rows[size_t(q)] = local_rows * tc.accum * mc.num_experts_per_tok;
      load.rank_maxvio = max_violation(load.rank_rows.data(), ranks);
    }
    r.balance_loss += layer_balance_[m];
    r.layers.push_back(std::move(load));
    ++m;
  }
  if (parallel_.dist) {
    r.comm_seconds = parallel_.dist->take_comm_seconds();
    r.alltoall_seconds = parallel_.dist->take_alltoall_seconds();
  }
  return r;
}

double TrainStep::global_grad_norm(const Model& model) {
  // Non-trainable entries (the routing bias) never receive a gradient, so summing whole ranges is
  // the trainable parameters' norm. Replicated gradients are equal on every rank after the
  // allreduce; the ranks' own experts are summed over ranks.
  const float* g = model.grads.data();
  auto sum_sq = [g](const std::vector<std::pair<int64_t, int64_t>>& ranges) {
    double total = 0.0;
    for (const auto& [offset, n] : ranges)
      total +=
          parallel_sum(n, [g, offset = offset](int64_t i) { return double(g[offset + i]) * double(g[offset + i]); });
    return total;
  };
  double owned = sum_sq(owned_);
  if (parallel_.dist && !owned_.empty()) parallel_.dist->allreduce_sum(&owned, 1);
  return std::sqrt(sum_sq(replicated_) + owned);
}

}  // namespace moe
