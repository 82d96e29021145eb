// `moe sweep`: a set of training runs that differ in named settings. This part plans them: the
// base config, settings shared by every run (--set), named runs (--run), a grid of values (--grid,
// every combination) and presets, resolved into one validated Config per run with a unique name
// that is also its directory under the sweep's --out. Running and reporting live in the app.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "train/train_config.hpp"

namespace moe {

// One setting: "train.bias_rate" or "bias_rate" (a train field), "model.n_routed_experts" (a model
// field); the value as the user wrote it (a JSON number, true/false, or text for a choice).
struct SweepSetting {
  std::string key, value;
};

struct SweepRun {
  std::string name;                    // directory name under --out: [A-Za-z0-9._=+-]
  std::vector<SweepSetting> settings;  // what sets it apart from the base (after --set)
  Config config;                       // base + --set + settings, validated
};

struct SweepPlan {
  std::vector<std::string> set;   // KEY=VALUE, applied to every run
  std::vector<std::string> runs;  // NAME:KEY=VALUE[,KEY=VALUE...] (NAME: alone = the base)
  std::vector<std::string> grid;  // KEY=V1,V2,...: every combination, crossed with the runs
  std::string preset;             // "" or "paper"
};

// The preset names and what they expand to (as --run entries).
const std::vector<std::string>& sweep_presets();
std::vector<std::string> sweep_preset_runs(const std::string& preset);

// Parses "KEY=VALUE" (errors name `where`, e.g. "--set").
SweepSetting parse_sweep_setting(const std::string& text, const std::string& where);
// Applies one setting to a config (the field's own type and checks; a choice takes its name).
void apply_sweep_setting(Config& config, const SweepSetting& setting, const std::string& where);

// Every run of the plan over `base`, in order: runs (or the base alone) × grid combinations. Throws
// Error on a malformed entry, an unknown key, a bad value, a duplicate or unsafe name, or no run.
std::vector<SweepRun> plan_sweep(const Config& base, const SweepPlan& plan);

}  // namespace moe
