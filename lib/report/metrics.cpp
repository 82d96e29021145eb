#include "report/metrics.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "config/fields.hpp"
#include "core/error.hpp"
#include "core/format.hpp"
#include "moe/balance.hpp"
#include "train/eval_routing.hpp"
#include "train/run_dir.hpp"

namespace moe {

using nlohmann::json;

const char* to_string(Verdict v) {
  switch (v) {
    case Verdict::balanced:
      return "balanced";
    case Verdict::converging:
      return "still converging";
    case Verdict::diverging:
      return "diverging";
  }
  return "?";
}

int64_t RunMetrics::num_experts() const {
  if (!train.empty() && !train.back().layers.empty()) return int64_t(train.back().layers[0].counts.size());
  if (!eval.empty() && !eval.back().layers.empty()) return int64_t(eval.back().layers[0].counts.size());
  return 0;
}

namespace {

std::string string_field(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) fail(where + ": missing field \"" + key + "\"");
  if (!it->is_string())
    fail(where + ": field \"" + key + "\" has the wrong type (expected a string, got " + show(*it) + ")");
  return it->get<std::string>();
}

}  // namespace

std::string RunSettings::balance_text() const {
  char buf[160];
  std::string bias;  // "u 0.001" with the bias rule's options
  if (balance == "loss-free" || balance == "loss-free+seq") {
    std::snprintf(buf, sizeof buf, "%su %g", bias_update == "proportional" ? "proportional " : "", bias_rate);
    bias = buf;
    if (bias_center) bias += ", centred";
    if (bias_freeze_at < 1.0) {
      std::snprintf(buf, sizeof buf, ", frozen at %g%%", 100 * bias_freeze_at);
      bias += buf;
    }
  }
  std::string text = balance;
  if (balance == "loss-free")
    text = "loss-free (" + bias + ")";
  else if (balance == "loss-free+seq")
    std::snprintf(buf, sizeof buf, "loss-free+seq (%s, alpha %g)", bias.c_str(), seq_aux_alpha), text = buf;
  else if (balance == "aux" || balance == "global-aux")
    std::snprintf(buf, sizeof buf, "%s (alpha %g)", balance.c_str(), aux_alpha), text = buf;
  if (z_loss > 0) {
    std::snprintf(buf, sizeof buf, "; z-loss %g", z_loss);
    text += buf;
  }
  return text;
}

std::string RunSettings::shape_text() const {
  return std::to_string(batch) + " x " + std::to_string(seq) + " x " + std::to_string(accum);
}

std::string RunMetrics::status_text() const {
  const int64_t last = train.empty() ? 0 : train.back().step;
  const int64_t planned = settings ? settings->steps : 0;
  const std::string of = planned > 0 ? " of " + std::to_string(planned) : "";
  if (ended && end_reason == "completed") return "finished all " + std::to_string(end_step) + " steps";
  if (ended)
    return "stopped at step " + std::to_string(end_step) + of + " (" + (end_reason.empty() ? "ended" : end_reason) +
           ")";
  return "in progress (step " + std::to_string(last) + of + ")";
}

std::string RunMetrics::final_val_text() const {
  const EvalRecord* e = last_val_eval();
  if (!e) return "none yet";
  return format("%.4f (step %lld%s)", e->val_loss, (long long)e->step,
                eval.size() == 1 && e->step == 0 ? ", the only evaluation: before training" : "");
}

const EvalRecord* RunMetrics::last_val_eval() const {
  for (auto it = eval.rbegin(); it != eval.rend(); ++it)
    if (std::isfinite(it->val_loss)) return &*it;
  return nullptr;
}

const EvalRecord* RunMetrics::last_mtp_eval() const {
  for (auto it = eval.rbegin(); it != eval.rend(); ++it)
    if (it->mtp_val_loss && std::isfinite(*it->mtp_val_loss)) return &*it;
  return nullptr;
}

std::vector<std::string> comparison_notes(const std::vector<const RunMetrics*>& runs) {
  std::vector<std::string> notes;
  if (runs.size() < 2) return notes;
  auto steps = [](const RunMetrics* r) { return r->train.empty() ? int64_t(0) : r->train.back().step; };
  bool lengths = false, data = false;
  for (const RunMetrics* r : runs) {
    lengths = lengths || steps(r) != steps(runs[0]);
    if (r->settings && runs[0]->settings) data = data || r->settings->data != runs[0]->settings->data;
  }
  if (lengths) notes.push_back("the runs have different numbers of steps: compare their curves at equal steps");
  if (data) notes.push_back("the runs trained on different data: their losses are not comparable");
  return notes;
}

namespace {

// train_config.json and trainer_state.json next to a run's metrics.jsonl, when both are readable.
std::optional<RunSettings> read_run_settings(const std::string& metrics_path) {
  const size_t slash = metrics_path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : metrics_path.substr(0, slash);
  try {
    std::ifstream config(dir + "/train_config.json");
    if (!config) return std::nullopt;
    const json c = json::parse(config);
    const json& t = c.at("train");
    RunSettings s;
    s.balance = t.at("balance").get<std::string>();
    s.bias_rate = t.value("bias_rate", 0.0), s.aux_alpha = t.value("aux_alpha", 0.0);
    s.seq_aux_alpha = t.value("seq_aux_alpha", 0.0);
    s.bias_update = t.value("bias_update", std::string("sign")), s.bias_center = t.value("bias_center", false);
    s.bias_freeze_at = t.value("bias_freeze_at", 1.0), s.z_loss = t.value("z_loss", 0.0);
    s.lr = t.at("lr").get<double>(), s.min_lr = t.value("min_lr", 0.0);
    s.batch = t.at("batch").get<int64_t>(), s.seq = t.at("seq").get<int64_t>(), s.accum = t.value("accum", int64_t(1));
    s.steps = t.at("steps").get<int64_t>();
    s.mtp_weight = t.value("mtp_weight", 0.3);
    std::ifstream state(dir + "/trainer_state.json");
    if (state) s.data = json::parse(state).value(json::json_pointer("/data/source"), std::string());
    return s;
  } catch (const json::exception&) {
    return std::nullopt;  // a report still shows the curves; the settings are left out
  }
}

}  // namespace

RunMetrics read_metrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open metrics file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  RunMetrics run;
  run.path = path;
  size_t start = 0;
  int64_t line_number = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_number);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      if (!complete) {
        run.notes.push_back("the last line is incomplete (training is writing it); it was skipped");
        break;
      }
      fail(where + ": not valid JSON");
    }
    if (!j.is_object()) fail(where + ": expected a JSON object");
    const std::string kind = string_field(j, "kind", where);
    if (kind == "train") {
      run.train.push_back(step_from_json(j, where));
    } else if (kind == "eval") {
      run.eval.push_back(eval_from_json(j, where));
    } else if (kind == "end") {
      run.ended = true;
      run.end_step = j.contains("step") && j["step"].is_number_integer() ? j["step"].get<int64_t>() : 0;
      run.end_reason = j.contains("reason") && j["reason"].is_string() ? j["reason"].get<std::string>() : "";
    } else if (kind == "resume") {
      run.resumes.push_back(resume_from_json(j, where));
      run.ended = false;  // the run goes on
    } else {
      fail(where + ": unknown kind \"" + kind + "\" (expected train, eval, end or resume)");
    }
  }
  run.settings = read_run_settings(path);
  return run;
}

LoadReport build_load_report(const RunMetrics& run, int64_t window) {
  LoadReport report;
  const int64_t n = int64_t(run.train.size());
  if (window <= 0) window = std::max<int64_t>(1, std::min<int64_t>(50, n / 10));
  window = std::max<int64_t>(1, std::min(window, std::max<int64_t>(n, 1)));
  report.window = window;
  if (n > 0) {
    report.early_from = run.train.front().step;
    report.early_to = run.train[size_t(window - 1)].step;
    report.recent_from = run.train[size_t(n - window)].step;
    report.recent_to = run.train.back().step;
  }
  const size_t layers =
      n > 0 ? run.train.front().layers.size() : (run.eval.empty() ? 0 : run.eval.front().layers.size());
  for (size_t li = 0; li < layers; ++li) {
    LayerLoadReport lr;
    lr.layer = n > 0 ? run.train.front().layers[li].layer : run.eval.front().layers[li].layer;
    const size_t E = n > 0 ? run.train.front().layers[li].counts.size() : run.eval.front().layers[li].counts.size();
    std::vector<double> early(E), recent(E), min(E, 1.0), max(E, 0.0);
    double early_total = 0, recent_total = 0;
    for (int64_t s = 0; s < n; ++s) {
      const StepRecord& p = run.train[size_t(s)];
      if (p.layers.size() != layers || p.layers[li].counts.size() != E)
        fail(run.path + ": step " + std::to_string(p.step) + " has a different number of layers or experts");
      const LayerLoad& lp = p.layers[li];
      double total = 0;
      for (int64_t c : lp.counts) total += double(c);
      for (size_t e = 0; e < E; ++e) {
        const double share = total > 0 ? double(lp.counts[e]) / total : 0.0;
        min[e] = std::min(min[e], share), max[e] = std::max(max[e], share);
        if (s < window) early[e] += double(lp.counts[e]);
        if (s >= n - window) recent[e] += double(lp.counts[e]);
      }
      if (s < window) early_total += total, lr.early_maxvio += lp.maxvio / double(window);
      if (s >= n - window) recent_total += total, lr.recent_maxvio += lp.maxvio / double(window);
      lr.steps.push_back(p.step);
      lr.maxvio_batch.push_back(lp.maxvio);
      const LoadStats st = load_stats(lp.counts.data(), int64_t(E));
      lr.cv.push_back(st.cv), lr.jain.push_back(st.jain), lr.dead.push_back(double(st.dead));
      for (auto [in, stats] : {std::pair{s < window, &lr.early_stats}, std::pair{s >= n - window, &lr.recent_stats}}) {
        if (!in) continue;
        const double w = 1.0 / double(window);
        stats->cv += w * st.cv, stats->jain += w * st.jain, stats->dead += w * double(st.dead);
        stats->share_p5 += w * st.share_p5, stats->share_p50 += w * st.share_p50, stats->share_p95 += w * st.share_p95;
      }
    }
    for (size_t e = 0; e < E; ++e) {
      ExpertShare share;
      share.expert = int64_t(e);
      share.early = early_total > 0 ? early[e] / early_total : 0.0;
      share.recent = recent_total > 0 ? recent[e] / recent_total : 0.0;
      share.min = n > 0 ? min[e] : 0.0;
      share.max = max[e];
      const auto& bias = n > 0 ? run.train.back().layers[li].bias : std::vector<double>{};
      share.bias = e < bias.size() ? bias[e] : 0.0;
      lr.experts.push_back(share);
    }
    if (!run.eval.empty()) {
      for (const EvalRecord* p : {&run.eval.front(), &run.eval.back()}) {
        if (li >= p->layers.size()) continue;
        if (p == &run.eval.front()) lr.global_first = p->layers[li].maxvio, lr.global_first_step = p->step;
        if (p == &run.eval.back()) lr.global_last = p->layers[li].maxvio, lr.global_last_step = p->step;
      }
    }
    // Verdict from MaxVio_batch: low now -> balanced; high but falling -> still converging;
    // high and not falling -> diverging.
    if (lr.recent_maxvio <= kBalancedMaxVio)
      lr.verdict = Verdict::balanced;
    else if (lr.recent_maxvio < lr.early_maxvio)
      lr.verdict = Verdict::converging;
    else
      lr.verdict = Verdict::diverging;
    report.layers.push_back(std::move(lr));
  }
  return report;
}

namespace {

json settling_json(const LoadReport& report) {
  if (!report.settling) return nullptr;
  const RoutingSettling& st = *report.settling;
  auto finite_or_null = [](const std::vector<std::vector<double>>& rows) {
    json out = json::array();
    for (const auto& row : rows) {
      json r = json::array();
      for (double v : row) r.push_back(std::isfinite(v) ? json(v) : json(nullptr));
      out.push_back(r);
    }
    return out;
  };
  return {{"tokens", st.tokens},
          {"steps", st.steps},
          {"layers", st.layers},
          {"saturation", finite_or_null(st.saturation)},
          {"churn", finite_or_null(st.churn)}};
}

}  // namespace

nlohmann::json load_report_json(const RunMetrics& run, const LoadReport& report) {
  json layers = json::array();
  for (const auto& l : report.layers) {
    json experts = json::array();
    for (const auto& e : l.experts)
      experts.push_back({{"expert", e.expert},
                         {"early_share", e.early},
                         {"recent_share", e.recent},
                         {"min_share", e.min},
                         {"max_share", e.max},
                         {"bias", e.bias}});
    json layer = {{"layer", l.layer},
                  {"experts", experts},
                  {"early_maxvio_batch", l.early_maxvio},
                  {"recent_maxvio_batch", l.recent_maxvio},
                  {"maxvio_batch", {{"steps", l.steps}, {"values", l.maxvio_batch}}},
                  {"verdict", to_string(l.verdict)}};
    layer["maxvio_global_first"] = l.global_first ? json(*l.global_first) : json(nullptr);
    layer["maxvio_global_last"] = l.global_last ? json(*l.global_last) : json(nullptr);
    layer["maxvio_global_first_step"] = l.global_first ? json(l.global_first_step) : json(nullptr);
    layer["maxvio_global_last_step"] = l.global_last ? json(l.global_last_step) : json(nullptr);
    auto window_json = [](const WindowStats& w) {
      return json{{"cv", w.cv},
                  {"jain", w.jain},
                  {"dead", w.dead},
                  {"share_p5", w.share_p5},
                  {"share_p50", w.share_p50},
                  {"share_p95", w.share_p95}};
    };
    layer["stats"] = {{"early", window_json(l.early_stats)},
                      {"recent", window_json(l.recent_stats)},
                      {"cv", l.cv},
                      {"jain", l.jain},
                      {"dead", l.dead}};
    layers.push_back(layer);
  }
  json losses = json::array();
  for (const auto& p : run.train) losses.push_back({p.step, p.loss});
  json evals = json::array(), mtp_losses = json::array(), mtp_evals = json::array();
  for (const auto& p : run.eval) evals.push_back({p.step, p.val_loss});
  for (const auto& p : run.train)
    if (p.mtp_loss) mtp_losses.push_back({p.step, *p.mtp_loss});
  for (const auto& p : run.eval)
    if (p.mtp_val_loss) mtp_evals.push_back({p.step, *p.mtp_val_loss});
  const EvalRecord* mtp = run.last_mtp_eval();
  json settings = nullptr;
  if (run.settings) {
    const RunSettings& st = *run.settings;
    settings = {{"balance", st.balance},
                {"bias_rate", st.bias_rate},
                {"aux_alpha", st.aux_alpha},
                {"seq_aux_alpha", st.seq_aux_alpha},
                {"bias_update", st.bias_update},
                {"bias_center", st.bias_center},
                {"bias_freeze_at", st.bias_freeze_at},
                {"z_loss", st.z_loss},
                {"lr", st.lr},
                {"min_lr", st.min_lr},
                {"batch", st.batch},
                {"seq", st.seq},
                {"accum", st.accum},
                {"planned_steps", st.steps},
                {"mtp_weight", st.mtp_weight},
                {"data", st.data}};
  }
  const EvalRecord* last_val = run.last_val_eval();
  const json final_val = last_val ? json{{"value", last_val->val_loss}, {"step", last_val->step}} : json(nullptr);
  json resumes = json::array();
  for (const ResumeRecord& r : run.resumes) resumes.push_back(to_json(r));
  return {{"metrics", run.path},
          {"train_steps", run.train.size()},
          {"last_step", run.train.empty() ? 0 : run.train.back().step},
          {"ended", run.ended},
          {"status", run.status_text()},
          {"end_reason", run.ended ? json(run.end_reason) : json(nullptr)},
          {"settings", settings},
          {"final_val", final_val},
          {"final_mtp_val",
           mtp ? json{{"value", *mtp->mtp_val_loss}, {"step", mtp->step}, {"trained", !run.mtp_untrained()}}
               : json(nullptr)},
          {"resumes", resumes},
          {"notes", run.notes},
          {"window", report.window},
          {"early_steps", {report.early_from, report.early_to}},
          {"recent_steps", {report.recent_from, report.recent_to}},
          {"final_val_loss", last_val ? json(last_val->val_loss) : json(nullptr)},
          {"train_loss", losses},
          {"val_loss", evals},
          {"mtp_train_loss", mtp_losses},
          {"mtp_val_loss", mtp_evals},
          {"layers", layers},
          {"routing_settling", settling_json(report)}};
}

void add_routing_settling(const RunMetrics& run, LoadReport& report) {
  report.settling.reset();
  const size_t slash = run.path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : run.path.substr(0, slash);
  std::vector<EvalRouting> evals;
  for (const EvalRecord& e : run.eval) {
    const std::string path = eval_routing_path(dir, e.step);
    if (!path_exists(path)) continue;
    if (!evals.empty() && evals.back().step == e.step) continue;  // an eval redone after a resume
    evals.push_back(read_eval_routing(path));
    const EvalRouting& a = evals.front();
    const EvalRouting& b = evals.back();
    if (b.layers != a.layers || b.tokens != a.tokens || b.K != a.K)
      fail(path + ": a different shape from " + eval_routing_path(dir, a.step) + " (changed eval_tokens?)");
  }
  if (evals.size() < 2) return;
  RoutingSettling st;
  st.tokens = evals.front().tokens;
  for (const auto& l : report.layers) st.layers.push_back(l.layer);
  st.layers.resize(size_t(evals.front().layers));
  for (size_t i = 0; i < evals.size(); ++i) {
    st.steps.push_back(evals[i].step);
    st.saturation.push_back(same_set_share(evals[i], evals.back()));
    std::vector<double> churn =
        i == 0 ? std::vector<double>(size_t(evals[i].layers), std::nan("")) : same_set_share(evals[i], evals[i - 1]);
    if (i > 0)
      for (double& v : churn) v = 1.0 - v;
    st.churn.push_back(churn);
  }
  report.settling = std::move(st);
}

}  // namespace moe
