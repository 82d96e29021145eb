#include "train/sweep.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

using nlohmann::json;

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) parts.push_back(trim(s.substr(start, i - start))), start = i + 1;
  return parts;
}

// A run's name is its directory: nothing a shell or a path would read differently.
void check_run_name(const std::string& name, const std::string& where) {
  const bool safe = !name.empty() && name != "." && name != ".." && name.size() <= 100 &&
                    name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=+-") ==
                        std::string::npos;
  if (!safe)
    fail(where + ": run name \"" + name +
         "\" must be 1-100 characters of letters, digits and . _ = + - (it names the "
         "run's directory)");
}

// The value as JSON: a number, true/false or null as written, anything else as text ("loss-free").
json setting_value(const std::string& text) {
  json v = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (v.is_discarded() || v.is_object() || v.is_array()) return json(text);
  return v;
}

// The part of a name a setting contributes: "u=1e-3" for bias_rate, else "key=value".
std::string name_part(const SweepSetting& s) {
  std::string key = s.key.substr(s.key.find('.') + 1);
  if (key == "bias_rate") key = "u";
  return key + "=" + s.value;
}

}  // namespace

const std::vector<std::string>& sweep_presets() {
  static const std::vector<std::string> names = {"paper"};
  return names;
}

std::vector<std::string> sweep_preset_runs(const std::string& preset) {
  // Wang et al. 2024 (arXiv 2408.15664), Table 2 and Figure 4: no balancing, the auxiliary loss,
  // and loss-free balancing at three update rates (1e-3 best; 1e-4 too slow; 1e-2 oscillates).
  if (preset == "paper")
    return {"none:balance=none", "aux:balance=aux", "u=1e-4:balance=loss-free,bias_rate=1e-4",
            "u=1e-3:balance=loss-free,bias_rate=1e-3", "u=1e-2:balance=loss-free,bias_rate=1e-2"};
  std::string names;
  for (const auto& n : sweep_presets()) names += (names.empty() ? "" : ", ") + n;
  fail("--preset: unknown preset \"" + preset + "\" (expected one of: " + names + ")");
}

SweepSetting parse_sweep_setting(const std::string& text, const std::string& where) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || trim(text.substr(0, eq)).empty() || trim(text.substr(eq + 1)).empty())
    fail(where + ": expected KEY=VALUE (e.g. bias_rate=1e-3), got \"" + text + "\"");
  return {trim(text.substr(0, eq)), trim(text.substr(eq + 1))};
}

void apply_sweep_setting(Config& config, const SweepSetting& s, const std::string& where) {
  std::string key = s.key;
  std::replace(key.begin(), key.end(), '-', '_');  // the flag's spelling works too
  const std::string at = where + ": " + s.key;
  if (key.rfind("model.", 0) == 0) {
    json file = config_file_json(config);
    const std::string field = key.substr(6);
    if (!file["model"].contains(field)) fail(at + ": unknown model key \"" + field + "\"");
    file["model"][field] = setting_value(s.value);
    config.model = model_config_from_json(file["model"], at, false);
    return;
  }
  if (key.rfind("train.", 0) == 0) key = key.substr(6);
  const Field<TrainConfig>* f = find_field(train_fields(), key);
  if (!f)
    fail(at + ": unknown setting (a train field such as bias_rate, or model.FIELD; did you mean \"" +
         nearest_name(key, field_names(train_fields())) + "\"?)");
  json v = setting_value(s.value);
  if (std::holds_alternative<Choice<TrainConfig>>(f->member)) v = json(s.value);
  read_field(*f, config.train, v, at);
}

std::vector<SweepRun> plan_sweep(const Config& base, const SweepPlan& plan) {
  Config common = base;
  for (const std::string& text : plan.set) apply_sweep_setting(common, parse_sweep_setting(text, "--set"), "--set");

  // Named runs: explicit ones, then the preset's.
  std::vector<std::string> entries = plan.runs;
  if (!plan.preset.empty())
    for (const std::string& r : sweep_preset_runs(plan.preset)) entries.push_back(r);
  struct Named {
    std::string name;
    std::vector<SweepSetting> settings;
  };
  std::vector<Named> named;
  for (const std::string& entry : entries) {
    const size_t colon = entry.find(':');
    if (colon == std::string::npos)
      fail("--run: expected NAME:KEY=VALUE[,KEY=VALUE...] (e.g. \"u=1e-3:balance=loss-free,bias_rate=1e-3\"), got \"" +
           entry + "\"");
    Named n{trim(entry.substr(0, colon)), {}};
    check_run_name(n.name, "--run");
    const std::string rest = trim(entry.substr(colon + 1));
    if (!rest.empty())
      for (const std::string& part : split(rest, ','))
        n.settings.push_back(parse_sweep_setting(part, "--run " + n.name));
    named.push_back(std::move(n));
  }
  if (named.empty()) named.push_back({"", {}});

  // Grid axes, crossed in the order given (the last one varies fastest).
  std::vector<std::pair<std::string, std::vector<std::string>>> axes;
  for (const std::string& text : plan.grid) {
    const SweepSetting s = parse_sweep_setting(text, "--grid");
    std::vector<std::string> values = split(s.value, ',');
    for (const auto& v : values)
      if (v.empty()) fail("--grid " + s.key + ": an empty value in \"" + s.value + "\"");
    axes.push_back({s.key, values});
  }
  std::vector<std::vector<SweepSetting>> combos{{}};
  for (const auto& [key, values] : axes) {
    std::vector<std::vector<SweepSetting>> next;
    for (const auto& combo : combos)
      for (const std::string& v : values) {
        next.push_back(combo);
        next.back().push_back({key, v});
      }
    combos = std::move(next);
  }

  std::vector<SweepRun> runs;
  for (const Named& n : named)
    for (const auto& combo : combos) {
      SweepRun run;
      run.name = n.name;
      run.settings = n.settings;
      for (const SweepSetting& s : combo) {
        run.settings.push_back(s);
        run.name += (run.name.empty() ? "" : "_") + name_part(s);
      }
      if (run.name.empty()) run.name = "base";
      check_run_name(run.name, "--grid");
      run.config = common;
      for (const SweepSetting& s : run.settings) apply_sweep_setting(run.config, s, "run " + run.name);
      validate(run.config.train, run.config.model, "run " + run.name);
      for (const SweepRun& other : runs)
        if (other.name == run.name) fail("two runs are named \"" + run.name + "\"; give each --run its own name");
      runs.push_back(std::move(run));
    }
  return runs;
}

}  // namespace moe
