// `moe train`: options -> effective config -> lib/train.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <vector>

#include "commands.hpp"
#include "core/error.hpp"
#include "report/train_console.hpp"
#include "train/trainer.hpp"

namespace moe::app {

namespace {

struct TrainFlags {
  std::string config = "tiny";
  std::string data, out, init_from;
  bool resume = false, force = false, expert_parallel = false;
  int64_t stop_at = 0, max_ranks_per_token = 0;
  TrainConfig values;  // flag values; only those given on the command line are applied
  std::vector<std::string> choice_values;
  std::vector<std::pair<CLI::Option*, std::function<void(TrainConfig&)>>> given;
};

}  // namespace

Run add_train(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand("train", "Train a model on text with DeepSeek-style expert balancing");
  cmd->add_option("--config", f->config,
                  "Config file with model and train sections, or the name of a shipped one (tiny, tiny-v3, small, "
                  "small-e64, small-v3: built into moe, usable from any directory)")
      ->capture_default_str();
  cmd->add_option("--data", f->data, "Text file to train on (default: the embedded synthetic corpus)");
  cmd->add_option("--out", f->out, "Run directory (default: runs/<config name>)");
  cmd->add_flag("--resume", f->resume, "Continue the run in --out from its last checkpoint");
  cmd->add_flag("--force", f->force, "Overwrite an existing run directory");
  cmd->add_option("--init-from", f->init_from,
                  "Fine-tune: start from the weights of a checkpoint directory (moe's or a Hugging Face "
                  "DeepSeek-V3 one) with a fresh optimizer; the model is the checkpoint's, the train settings "
                  "those of --config if given (same model), else the defaults; flags override them")
      ->excludes("--resume");
  cmd->add_option("--stop-at", f->stop_at, "Stop after this step (keeping the schedule of --steps), with a checkpoint")
      ->check(Positive);
  cmd->add_flag("--expert-parallel", f->expert_parallel,
                "Under mpirun: split each MoE layer's routed experts over the ranks (default: data parallel)");
  cmd->add_option("--max-ranks-per-token", f->max_ranks_per_token,
                  "With --expert-parallel: each token's experts live on at most M ranks (device-limited routing)")
      ->check(Positive);
  // The setters live inside *f: they point at it without owning it (a shared_ptr here would be a
  // reference cycle, never freed).
  add_field_flags(cmd, train_fields(), f->values, f->given, f->choice_values);

  return [f, cmd]() {
    block_stop_signals();  // before any thread exists (see train())
    TrainOptions options;
    const bool config_given = cmd->get_option("--config")->count() > 0;
    options.out_dir = f->out.empty() ? default_run_dir(f->config) : f->out;
    // Stored as an absolute path, so that --resume finds the data from any directory.
    options.data_path = f->data.empty() ? "" : std::filesystem::absolute(f->data).lexically_normal().string();
    if (f->resume) {
      ResumePlan plan = plan_resume(options.out_dir, config_given ? f->config : "", options.data_path);
      options.config = std::move(plan.config);
      options.data_path = std::move(plan.data_path);
    } else if (!f->init_from.empty()) {
      options.config = init_from_config(f->init_from, f->config, config_given);
      options.init_from = f->init_from;
    } else {
      // Its train section is checked against the model with the flags applied (--seq 16 fixes a
      // seq longer than the context).
      options.config = load_config_file(f->config, /*check_train=*/false);
    }
    const TrainConfig stored = options.config.train;
    bool flags = false;
    for (auto& [opt, apply] : f->given)
      if (opt->count() > 0) apply(options.config.train), flags = true;
    validate(options.config.train, options.config.model,
             f->resume || !f->init_from.empty() ? "command line"
             : flags                            ? f->config + " with the command-line flags"
                                                : f->config);
    if (f->resume) {
      options.resume_changes = resume_changes(stored, options.config.train, options.out_dir);
      for (const auto& change : options.resume_changes)
        if (change.setting == "threads")
          std::fprintf(stderr,
                       "moe: note: --threads %s differs from the run's %s: training continues, but no longer bit for "
                       "bit as an uninterrupted run would (sums are split by thread)\n",
                       change.to.c_str(), change.from.c_str());
    }
    warn_if_oversubscribed(options.config.train.threads);
    options.resume = f->resume;
    options.force = f->force;
    options.stop_at = f->stop_at;
    options.expert_parallel = f->expert_parallel;
    options.max_ranks_per_token = f->max_ranks_per_token;
    ConsoleTrainObserver console(stdout, ::isatty(STDOUT_FILENO) != 0, options.config.train.log_every);
    // `moe train | head`: a write to the closed pipe returns EPIPE instead of killing the process,
    // and the console observer stops the run with a checkpoint.
    std::signal(SIGPIPE, SIG_IGN);
    const TrainResult result = train(options, console);
    if (result.stop_signal == SIGPIPE) return 0;  // quietly: the reader asked for no more
    // The shell's convention for a process ended by a signal (128 + its number), though this one
    // stopped on its own after saving: scripts can tell an interrupted run from a finished one.
    return result.stop_signal == 0 ? 0 : 128 + result.stop_signal;
  };
}

}  // namespace moe::app
