// Reading a run's metrics.jsonl (possibly still growing) and turning it into the load report:
// per-expert shares early vs recent, bias, MaxVio over training, and a verdict per layer.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "train/metrics_line.hpp"

namespace moe {

// A run's training settings, from its directory's train_config.json and trainer_state.json (a bare
// metrics.jsonl has none): what a report must say next to its curves.
struct RunSettings {
  std::string balance;  // none, aux, loss-free, loss-free+seq
  double bias_rate = 0, aux_alpha = 0, seq_aux_alpha = 0, lr = 0, min_lr = 0;
  std::string bias_update = "sign";  // sign | proportional
  bool bias_center = false;
  double bias_freeze_at = 1.0, z_loss = 0.0;
  int64_t batch = 0, seq = 0, accum = 1, steps = 0;
  double mtp_weight = 0.3;  // λ of the MTP loss (0: the module, if any, was evaluated, not trained)
  std::string data;         // the data source (a path or synthetic:<bytes>:<seed>)
  // "loss-free (u 0.001)", "loss-free (proportional u 0.001, centred, frozen at 80%)", "aux (alpha
  // 0.01)", "none"; "; z-loss 0.001" appended when the router z-loss is on.
  std::string balance_text() const;
  std::string shape_text() const;  // "16 x 128 x 1" (batch x seq x accum)
};

struct RunMetrics {
  std::string path;  // the metrics.jsonl file
  std::string name;  // short label (the run directory's name)
  std::vector<StepRecord> train;
  std::vector<EvalRecord> eval;
  std::vector<ResumeRecord> resumes;  // every --resume, in order
  bool ended = false;                 // the last "end" line is not followed by a resume
  std::string end_reason;             // of that end line: completed, stop-at, signal, non-finite, ...
  int64_t end_step = 0;
  std::optional<RunSettings> settings;
  // "finished all 300 steps", "stopped at step 42 of 300 (signal)", "in progress (step 42 of 300)".
  std::string status_text() const;
  // The last evaluation with a finite loss: "0.4173 (step 1000)", "5.5766 (step 0, the only
  // evaluation: before training)", or "none yet".
  std::string final_val_text() const;
  // The last evaluation with a finite validation loss (a skipped step's is null in the file), or
  // null; and the same for the MTP validation loss (a model with the multi-token-prediction module).
  const EvalRecord* last_val_eval() const;
  const EvalRecord* last_mtp_eval() const;
  // A model with the MTP module trained with mtp_weight 0: its MTP losses are an untrained module's.
  bool mtp_untrained() const { return settings && settings->mtp_weight == 0.0; }
  std::vector<std::string> notes;  // e.g. a torn last line of a run in progress
  int64_t num_experts() const;
};

// Parses metrics.jsonl. A torn (incomplete) last line is skipped with a note, as training may be
// writing it right now; any other malformed line is an Error naming the file and line number.
RunMetrics read_metrics(const std::string& path);

// Notes for a comparison of runs trained for different numbers of steps or on different data.
std::vector<std::string> comparison_notes(const std::vector<const RunMetrics*>& runs);

enum class Verdict { balanced, converging, diverging };
const char* to_string(Verdict v);

struct ExpertShare {
  int64_t expert = 0;
  double early = 0, recent = 0;  // share of routed tokens in the early / recent window
  double min = 0, max = 0;       // smallest / largest per-step share over the run
  double bias = 0;               // current (last logged) routing bias
};

// The load statistics of moe/balance.hpp's load_stats, averaged over the steps of a window.
struct WindowStats {
  double cv = 0, jain = 0, dead = 0, share_p5 = 0, share_p50 = 0, share_p95 = 0;
};

struct LayerLoadReport {
  int64_t layer = 0;
  std::vector<ExpertShare> experts;
  std::vector<int64_t> steps;          // train steps, for the series below
  std::vector<double> maxvio_batch;    // MaxVio_batch per step
  std::vector<double> cv, jain, dead;  // load statistics per step
  WindowStats early_stats, recent_stats;
  double early_maxvio = 0, recent_maxvio = 0;       // mean MaxVio_batch over each window
  std::optional<double> global_first, global_last;  // MaxVio_global at the first / last eval
  int64_t global_first_step = 0, global_last_step = 0;
  Verdict verdict = Verdict::balanced;
};

// How routing settles over the evaluations (train/eval_routing.hpp): per evaluation and MoE layer,
// saturation = share of the kept evaluated tokens whose top-K set equals the final evaluation's,
// churn = share whose set differs from the previous evaluation's (NaN at the first).
struct RoutingSettling {
  int64_t tokens = 0;          // evaluated tokens compared
  std::vector<int64_t> steps;  // evaluations with a routing file
  std::vector<int64_t> layers;
  std::vector<std::vector<double>> saturation, churn;  // (evaluations, layers)
};

struct LoadReport {
  int64_t window = 0;                                                    // steps per window
  int64_t early_from = 0, early_to = 0, recent_from = 0, recent_to = 0;  // step ranges (inclusive)
  std::vector<LayerLoadReport> layers;
  std::optional<RoutingSettling> settling;  // set by add_routing_settling when the files exist
};

// Balanced when the recent window's mean MaxVio_batch is at most this.
constexpr double kBalancedMaxVio = 0.2;

// window <= 0 picks max(1, min(50, steps / 10)).
LoadReport build_load_report(const RunMetrics& run, int64_t window);
nlohmann::json load_report_json(const RunMetrics& run, const LoadReport& report);

// Reads the run's routing/eval_<step>.bin files (those of its eval lines; runs from before they
// existed have none) into report.settling. Needs at least two evaluations.
void add_routing_settling(const RunMetrics& run, LoadReport& report);

}  // namespace moe
