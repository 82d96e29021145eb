// `moe train`: the training loop — sample, forward, backward, clip, AdamW, balance, record —
// with evaluation, atomic checkpoints and exact resume. Observers (the terminal UI in app/)
// receive every record; metrics.jsonl is written here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "train/metrics_line.hpp"
#include "train/signals.hpp"
#include "train/step.hpp"
#include "train/train_config.hpp"

namespace moe {

struct TrainOptions {
  Config config;          // effective config (file + flags)
  std::string data_path;  // empty: the embedded synthetic corpus
  std::string out_dir;
  bool resume = false;  // continue the run in out_dir
  // Start from the weights (and routing bias) of this checkpoint directory, moe's or a Hugging Face
  // DeepSeek-V3 one, with a fresh optimizer; config.model must be the checkpoint's model.
  std::string init_from;
  bool force = false;   // overwrite an existing run directory
  int64_t stop_at = 0;  // stop (with a checkpoint) after this step; 0: config.train.steps
  // Several processes (mpirun): routed experts split over the ranks (else data parallel), and
  // device-limited routing (each token's experts on at most this many ranks; 0: the config's). It
  // becomes the model's max_ranks_per_token over expert_ranks = the ranks; --resume keeps the
  // stored one and refuses another.
  bool expert_parallel = false;
  int64_t max_ranks_per_token = 0;
  // --resume: the settings changed from the stored ones (resume_changes), recorded in
  // metrics.jsonl as a "resume" line.
  std::vector<ResumeRecord::Change> resume_changes;
};

// What a run starts from, for its observers' opening lines.
struct RunStart {
  const Config* config = nullptr;  // the effective config
  std::string out_dir, data_source;
  int64_t train_bytes = 0, val_bytes = 0;
  int64_t start_step = 0;  // > 0: resumed
  int threads = 1, ranks = 1;
};

// How it ended: reason "completed", "stop-at", "signal" or "output-closed" (stdout went away).
struct RunEnd {
  std::string reason, out_dir;
  int64_t step = 0, planned_steps = 0;
  int64_t saved_step = -1;  // the checkpoint in out_dir (-1: none)
  const EvalRecord* first_eval = nullptr;
  const EvalRecord* last_eval = nullptr;
  const StepRecord* last_step = nullptr;
  double seconds = 0, mean_tokens_per_s = 0;
};

class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void on_start(const RunStart& start) = 0;
  virtual void on_step(const StepRecord& record, double last_val_loss) = 0;
  virtual void on_eval(const EvalRecord& record) = 0;
  virtual void on_save(const std::string& dir, int64_t step) = 0;
  virtual void on_end(const RunEnd& end) = 0;
  // True once the observer can no longer show anything (its output was closed, e.g. `| head`):
  // the run then stops as on a signal, with a checkpoint.
  virtual bool output_closed() const { return false; }
};

// What `moe train --resume` continues: the run's stored effective config (flags given now may
// override its train section) and its data file when `data_path` is empty (the embedded corpus
// stays ""). `config_file`, when not empty, must describe the same model. Under mpirun rank 0 reads
// the run directory and every rank gets the result.
struct ResumePlan {
  Config config;
  std::string data_path;
};
ResumePlan plan_resume(const std::string& dir, const std::string& config_file, const std::string& data_path);

// What a --resume with flags changes in the run's stored train settings. Only what leaves the
// run's math alone may change (when to log, evaluate and save, how many evaluation tokens, the
// stop rule for bad steps, the thread count) and --steps may grow; anything else (model,
// optimizer, schedule, balancing, batch and window, seed) is refused naming the flag and its
// stored value, since the run's history would then mix two configurations.
std::vector<ResumeRecord::Change> resume_changes(const TrainConfig& stored, const TrainConfig& now,
                                                 const std::string& dir);

// The effective config of `moe train --init-from DIR`: DIR's model (its config.json) with the train
// section of `config_file` when one was named on the command line (`given`; its model section must
// be DIR's), else the built-in train settings.
Config init_from_config(const std::string& dir, const std::string& config_file, bool given);

// How a run ended: its last completed step, and the stop signal (SIGINT/SIGTERM) that ended it
// early after saving a checkpoint, or 0. The library never exits the process: app/ turns this
// into an exit status.
struct TrainResult {
  int64_t last_step = 0;
  int stop_signal = 0;
};

// Runs training.
TrainResult train(const TrainOptions& options, TrainObserver& observer);

// Default run directory for a config path: runs/<file name without .json>.
std::string default_run_dir(const std::string& config_path);

}  // namespace moe
