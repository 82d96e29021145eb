#include "train/step.hpp"

#include <cmath>

#include "moe/balance.hpp"

namespace moe {

TrainStep::TrainStep(const TrainConfig& config, const Model& model)
    : config_(config),
      ws_(model.config, config.batch, config.seq, /*training=*/true),
      bias_balancing_(config.balance == Balance::loss_free || config.balance == Balance::loss_free_seq),
      inputs_(static_cast<size_t>(config.batch * config.seq)),
      targets_(static_cast<size_t>(config.batch * config.seq)),
      counts_(static_cast<size_t>(model.config.num_moe_layers()),
              std::vector<int64_t>(static_cast<size_t>(model.config.n_routed_experts))),
      layer_balance_(static_cast<size_t>(model.config.num_moe_layers())) {
  if (config.balance == Balance::aux) balance_.aux_alpha = float(config.aux_alpha);
  if (config.balance == Balance::loss_free_seq) balance_.seq_aux_alpha = float(config.seq_aux_alpha);
}

StepRecord TrainStep::run(ComputeContext& ctx, Model& model, AdamW& adam, const TextData& data, Rng& rng,
                          int64_t step, bool& finite) {
  const TrainConfig& tc = config_;
  const ModelConfig& mc = model.config;
  const int64_t E = mc.n_routed_experts;
  {
    float* g = model.grads.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < model.layout.total; ++i) g[i] = 0.0f;
  }
  for (auto& c : counts_) std::fill(c.begin(), c.end(), 0);
  std::fill(layer_balance_.begin(), layer_balance_.end(), 0.0);
  double loss = 0.0;
  for (int64_t micro = 0; micro < tc.accum; ++micro) {
    sample_batch(data, rng, tc.batch, tc.seq, inputs_.data(), targets_.data());
    loss += model_forward(ctx, model, ws_, inputs_.data(), targets_.data(), balance_) / double(tc.accum);
    model_backward(ctx, model, ws_, balance_, float(1.0 / double(tc.accum)));
    size_t m = 0;
    for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
      if (!mc.is_moe_layer(l)) continue;
      const MoeSaved& saved = ws_.layers[size_t(l)].moe;
      for (int64_t e = 0; e < E; ++e) counts_[m][size_t(e)] += saved.counts[e];
      layer_balance_[m] += saved.balance_loss / double(tc.accum);
      ++m;
    }
  }
  StepRecord r;
  {
    PhaseScope phase(ctx, Phase::optimizer);
    const double norm = grad_norm(model);
    const double lr = learning_rate(step, tc.steps, tc.warmup, tc.lr, tc.min_lr);
    finite = std::isfinite(loss) && std::isfinite(norm);
    if (finite) {
      adam.step(model, lr, tc.weight_decay, clip_scale(norm, tc.grad_clip));
    }
    r.step = step + 1;
    r.steps = tc.steps;
    r.loss = loss, r.lr = lr, r.grad_norm = norm;
  }
  PhaseScope phase(ctx, Phase::balancing);
  size_t m = 0;
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
    if (!mc.is_moe_layer(l)) continue;
    float* bias = model.weights.layers[size_t(l)].router_bias;
    // No bias update for a step that went non-finite.
    if (bias_balancing_ && finite) update_bias(bias, counts_[m].data(), E, float(tc.bias_rate));
    LayerLoad load;
    load.layer = l;
    load.counts = counts_[m];
    load.bias.assign(bias, bias + E);
    load.maxvio = max_violation(counts_[m].data(), E);
    load.balance_loss = layer_balance_[m];
    r.balance_loss += layer_balance_[m];
    r.layers.push_back(std::move(load));
    ++m;
  }
  return r;
}

}  // namespace moe
