// The lines of metrics.jsonl: one schema (these structs, their writers and their readers) shared by
// `moe train`, which writes them, and everything that reads them back (the load report, the HTML
// report, `moe inspect --follow`, resume). A field is added here once.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace moe {

// One MoE layer's load in a step or an evaluation.
struct LayerLoad {
  int64_t layer = 0;
  std::vector<int64_t> counts;  // tokens routed to each expert
  std::vector<double> bias;     // routing bias after this step's update (train lines only)
  double maxvio = 0.0;
  double balance_loss = 0.0;     // enabled balance losses of this layer (train lines only)
  std::optional<double> z_loss;  // router z-loss of this layer (train lines of runs with --z-loss)
  // Several processes (train lines only): expert rows each rank computed, and their MaxVio.
  std::vector<int64_t> rank_rows;
  double rank_maxvio = 0.0;
};

// {"kind": "train", ...}: one optimizer step.
struct StepRecord {
  int64_t step = 0;   // optimizer steps completed
  int64_t steps = 0;  // of the schedule (not written)
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, seconds = 0, balance_loss = 0;
  bool skipped = false;            // non-finite loss or gradient: nothing was updated
  std::optional<double> mtp_loss;  // models with a trained MTP module: mean CE of t_{i+2}
  std::optional<double> z_loss;    // runs with --z-loss: Σ over MoE layers of the router z-loss
  double comm_seconds = 0;         // rank 0's time inside MPI collectives during the step
  double alltoall_seconds = 0;     // the expert-parallel all-to-alls among them
  int64_t ranks = 1;
  std::vector<LayerLoad> layers;
};

// {"kind": "eval", ...}: one evaluation on the validation part.
struct EvalRecord {
  int64_t step = 0;
  double val_loss = 0;  // mean cross-entropy per token (nats)
  double val_bpb = 0;   // bits per byte of the evaluated text (0 in lines written before it existed)
  int64_t tokens = 0;
  std::optional<double> mtp_val_loss;  // models with an MTP module: its validation CE of t_{i+2}
  std::vector<LayerLoad> layers;
};

// {"kind": "resume", "step": N, "changed": {"steps": {"from": 300, "to": 600}, ...}}: a --resume
// continued the run from step N, with the settings it was allowed to change (none: {}).
struct ResumeRecord {
  int64_t step = 0;
  struct Change {
    std::string setting, from, to;  // values as JSON text
  };
  std::vector<Change> changed;
  std::string describe() const;  // "resumed at step 300 (steps 300 -> 600)"
};

// The peak memory of every rank (one entry for one process) when the run stopped, in KiB: the
// kernel's peak resident set (VmHWM) and the high-water mark of moe's own arenas (ArenaBytes).
struct RankMemory {
  std::vector<int64_t> peak_rss_kib, peak_arena_kib;
};

nlohmann::json to_json(const StepRecord& r);
nlohmann::json to_json(const ResumeRecord& r);
nlohmann::json to_json(const EvalRecord& r);
// {"kind": "end", "step": N, "reason": ..., "memory": {"peak_rss_kib": [per rank], "peak_arena_kib":
// [per rank]}}: training finished or stopped (memory left out when empty).
nlohmann::json end_json(int64_t step, const std::string& reason, const RankMemory& memory = {});

// Readers that check every field's presence and type; errors start with `where` ("file:line").
StepRecord step_from_json(const nlohmann::json& j, const std::string& where);
EvalRecord eval_from_json(const nlohmann::json& j, const std::string& where);
ResumeRecord resume_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace moe
