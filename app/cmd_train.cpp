// `moe train`: options -> effective config -> lib/train.
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "core/error.hpp"
#include "dist/dist.hpp"
#include "report/train_console.hpp"
#include "train/run_dir.hpp"
#include "train/trainer.hpp"

namespace moe::app {

namespace {

struct TrainFlags {
  std::string config = "configs/tiny.json";
  std::string data, out;
  bool resume = false, force = false, expert_parallel = false;
  int64_t stop_at = 0, max_ranks_per_token = 0;
  TrainConfig values;  // flag values; only those given on the command line are applied
  std::string balance;
  std::vector<std::pair<CLI::Option*, std::function<void(TrainConfig&)>>> given;
};

}  // namespace

Run add_train(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand("train", "Train a model on text with DeepSeek-style expert balancing");
  cmd->add_option("--config", f->config, "Config file with model and train sections")->capture_default_str();
  cmd->add_option("--data", f->data, "Text file to train on (default: the embedded synthetic corpus)");
  cmd->add_option("--out", f->out, "Run directory (default: runs/<config name>)");
  cmd->add_flag("--resume", f->resume, "Continue the run in --out from its last checkpoint");
  cmd->add_flag("--force", f->force, "Overwrite an existing run directory");
  cmd->add_option("--stop-at", f->stop_at, "Stop after this step (keeping the schedule of --steps), with a checkpoint")
      ->check(Positive);
  cmd->add_flag("--expert-parallel", f->expert_parallel,
                "Under mpirun: split each MoE layer's routed experts over the ranks (default: data parallel)");
  cmd->add_option("--max-ranks-per-token", f->max_ranks_per_token,
                  "With --expert-parallel: each token's experts live on at most M ranks (device-limited routing)")
      ->check(Positive);
  TrainConfig& v = f->values;
  // The setters live inside *f: they point at it without owning it (a shared_ptr here would be a
  // reference cycle, never freed).
  TrainFlags* flags = f.get();
  auto int_flag = [&](const char* name, int64_t TrainConfig::*field, const char* help, bool allow_zero) {
    auto* opt = cmd->add_option(name, v.*field, help)->check(allow_zero ? NonNegative : Positive);
    flags->given.push_back({opt, [flags, field](TrainConfig& t) { t.*field = flags->values.*field; }});
  };
  auto real_flag = [&](const char* name, double TrainConfig::*field, const char* help, bool allow_zero) {
    auto* opt = cmd->add_option(name, v.*field, help)->check(allow_zero ? NonNegative : Positive);
    flags->given.push_back({opt, [flags, field](TrainConfig& t) { t.*field = flags->values.*field; }});
  };
  int_flag("--steps", &TrainConfig::steps, "Optimizer steps in total", false);
  int_flag("--batch", &TrainConfig::batch, "Sequences per micro-batch", false);
  int_flag("--seq", &TrainConfig::seq, "Tokens per sequence", false);
  int_flag("--accum", &TrainConfig::accum, "Micro-batches per optimizer step", false);
  real_flag("--lr", &TrainConfig::lr, "Peak learning rate", false);
  real_flag("--min-lr", &TrainConfig::min_lr, "Learning rate at the end of the cosine decay", true);
  int_flag("--warmup", &TrainConfig::warmup, "Linear warm-up steps", true);
  real_flag("--weight-decay", &TrainConfig::weight_decay, "AdamW weight decay (matrices only)", true);
  real_flag("--grad-clip", &TrainConfig::grad_clip, "Global gradient-norm clip (0: off)", true);
  real_flag("--bias-rate", &TrainConfig::bias_rate, "Bias update speed u of loss-free balancing", true);
  real_flag("--aux-alpha", &TrainConfig::aux_alpha, "Weight of the auxiliary balance loss (--balance aux)", true);
  real_flag("--seq-aux-alpha", &TrainConfig::seq_aux_alpha, "Weight of the sequence-wise loss (loss-free+seq)", true);
  int_flag("--eval-every", &TrainConfig::eval_every, "Evaluate every N steps (0: only at the end)", true);
  int_flag("--eval-tokens", &TrainConfig::eval_tokens, "Validation tokens per evaluation", false);
  int_flag("--save-every", &TrainConfig::save_every, "Checkpoint every N steps (0: only at the end)", true);
  int_flag("--log-every", &TrainConfig::log_every, "Plain log line every N steps when not on a TTY", false);
  int_flag("--threads", &TrainConfig::threads, "Threads (0: all cores)", true);
  int_flag("--max-bad-steps", &TrainConfig::max_bad_steps, "Stop after this many consecutive non-finite steps", false);
  {
    auto* opt = cmd->add_option("--seed", v.seed, "Seed for initialisation and batch sampling");
    flags->given.push_back({opt, [flags](TrainConfig& t) { t.seed = flags->values.seed; }});
  }
  {
    auto* opt = cmd->add_option("--balance", f->balance, "none | aux | loss-free | loss-free+seq")
                    ->check(CLI::IsMember({"none", "aux", "loss-free", "loss-free+seq"}));
    flags->given.push_back({opt, [flags](TrainConfig& t) { t.balance = parse_balance(flags->balance, "--balance"); }});
  }

  return [f, cmd]() {
    block_stop_signals();  // before any thread exists (see train())
    TrainOptions options;
    const bool config_given = cmd->get_option("--config")->count() > 0;
    options.out_dir = f->out.empty() ? default_run_dir(f->config) : f->out;
    options.data_path = f->data;
    if (f->resume) {
      // The run's own effective config is the base; flags given now override its train section.
      // Under mpirun only rank 0 reads the run directory; the others get the state from it.
      const std::string state_path = options.out_dir + "/trainer_state.json";
      Dist& dist = Dist::world();
      std::string state_text;
      if (dist.root()) {
        recover_pending_checkpoint(options.out_dir);
        if (!path_exists(state_path))
          fail(options.out_dir + ": nothing to resume (no checkpoint yet: trainer_state.json is missing); start over without --resume (add --force if the directory is not empty)");
        state_text = read_json_file(state_path).dump();
      }
      dist.broadcast(state_text);
      const nlohmann::json state = nlohmann::json::parse(state_text);
      if (!state.is_object() || !state.contains("config")) fail(state_path + ": missing the config section");
      options.config = config_from_json(state["config"], state_path + ": config");
      if (config_given) {
        const Config file = load_config_file(f->config);
        if (to_json(file.model) != to_json(options.config.model))
          fail(f->config + ": its model differs from the one the run in " + options.out_dir + " was trained with");
      }
      if (f->data.empty() && state.contains("data") && state["data"].is_object()) {
        const auto it = state["data"].find("source");
        const std::string source = it != state["data"].end() && it->is_string() ? it->get<std::string>() : "";
        if (source.rfind("synthetic:", 0) != 0) options.data_path = source;
      }
    } else {
      options.config = load_config_file(f->config);
    }
    for (auto& [opt, apply] : f->given)
      if (opt->count() > 0) apply(options.config.train);
    validate(options.config.train, options.config.model, "command line");
    options.resume = f->resume;
    options.force = f->force;
    options.stop_at = f->stop_at;
    options.expert_parallel = f->expert_parallel;
    options.max_ranks_per_token = f->max_ranks_per_token;
    ConsoleTrainObserver console(stdout, ::isatty(STDOUT_FILENO) != 0, options.config.train.log_every);
    train(options, console);
    return 0;
  };
}

}  // namespace moe::app
