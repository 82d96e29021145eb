#include "report/load_console.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/format.hpp"

namespace moe {

namespace {

const char* kBlocks[] = {"\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"};

std::string verdict_text(Verdict v, bool color) {
  const char* code = v == Verdict::balanced ? "\033[32m" : v == Verdict::converging ? "\033[33m" : "\033[31m";
  return color ? std::string(code) + to_string(v) + "\033[0m" : std::string(to_string(v));
}

std::string bar(double fraction, int width) {
  const int cells = int(std::lround(std::clamp(fraction, 0.0, 1.0) * width * 8));
  std::string s;
  for (int i = 0; i < cells / 8; ++i) s += kBlocks[7];
  if (cells % 8) s += kBlocks[cells % 8 - 1];
  return s;
}

double mean_tokens_per_s(const RunMetrics& run) {
  double sum = 0;
  int64_t n = 0;
  // Skip the first steps: they include one-time primitive creation.
  for (size_t i = run.train.size() / 10; i < run.train.size(); ++i)
    if (std::isfinite(run.train[i].tokens_per_s)) sum += run.train[i].tokens_per_s, ++n;
  return n ? sum / double(n) : 0.0;
}

}  // namespace

std::string sparkline(const std::vector<double>& values, size_t width) {
  if (values.empty() || width == 0) return "";
  const size_t bins = std::min(width, values.size());
  std::vector<double> binned(bins, 0.0);
  for (size_t b = 0; b < bins; ++b) {
    const size_t lo = b * values.size() / bins, hi = std::max(lo + 1, (b + 1) * values.size() / bins);
    double sum = 0;
    size_t n = 0;
    for (size_t i = lo; i < hi; ++i)
      if (std::isfinite(values[i])) sum += values[i], ++n;
    binned[b] = n ? sum / double(n) : 0.0;
  }
  const double max = *std::max_element(binned.begin(), binned.end());
  std::string s;
  for (double v : binned) s += kBlocks[max > 0 ? std::clamp(int(v / max * 7.999), 0, 7) : 0];
  return s;
}

std::string format_load_summary(const RunMetrics& run, const LoadReport& report, bool color, int width) {
  auto fit = [width](std::string line) {
    if (width > 1 && int(line.size()) >= width) line.resize(size_t(width - 1));
    return line + "\n";
  };
  std::string buf;  // any length: paths and values are not bounded
  const int64_t last = run.train.empty() ? 0 : run.train.back().step;
  std::string out;
  (void)last;
  buf = format("%s: %s", run.name.empty() ? run.path.c_str() : run.name.c_str(), run.status_text().c_str());
  std::string head = buf;
  if (!run.train.empty()) {
    buf = format(", loss %.4f", run.train.back().loss);
    head += buf;
  }
  if (const EvalRecord* e = run.last_val_eval()) {
    buf = format(", val %.4f @%lld", e->val_loss, (long long)e->step);
    head += buf;
  }
  out += fit(head);
  if (run.train.empty()) return out + fit("  no training steps logged yet");
  for (const auto& l : report.layers) {
    double busiest = 0;
    int64_t expert = 0;
    for (const auto& e : l.experts)
      if (e.recent > busiest) busiest = e.recent, expert = e.expert;
    buf = format("  L%lld %-10s MaxVio %.3f -> %.3f  busiest e%lld %.1f%%", (long long)l.layer, to_string(l.verdict),
                 l.early_maxvio, l.recent_maxvio, (long long)expert, 100 * busiest);
    std::string line = fit(buf);
    if (color) {  // the verdict word in its colour (escape codes take no columns)
      const std::string word = to_string(l.verdict);
      const size_t at = line.find(word);
      if (at != std::string::npos) line.replace(at, word.size(), verdict_text(l.verdict, true));
    }
    out += line;
  }
  return out;
}

std::string format_load_report(const RunMetrics& run, const LoadReport& report, bool color) {
  std::string out;
  std::string buf;  // any length: paths and values are not bounded
  const int64_t last = run.train.empty() ? 0 : run.train.back().step;
  buf = format("load report: %s — %zu train steps (last %lld), %zu evaluation%s, %s\n", run.path.c_str(),
               run.train.size(), (long long)last, run.eval.size(), run.eval.size() == 1 ? "" : "s",
               run.status_text().c_str());
  out += buf;
  if (run.settings) {
    const RunSettings& st = *run.settings;
    buf = format("  settings: balance %s, lr %g -> %g, batch x seq x accum %s, data %s\n", st.balance_text().c_str(),
                 st.lr, st.min_lr, st.shape_text().c_str(), st.data.c_str());
    out += buf;
  }
  out += "  final validation loss: " + run.final_val_text() + "\n";
  if (const EvalRecord* e = run.last_mtp_eval()) {
    buf = format("  final MTP validation loss: %.4f (step %lld; the module's loss on the token after next%s)\n",
                 *e->mtp_val_loss, (long long)e->step, run.mtp_untrained() ? "; untrained: mtp_weight 0" : "");
    out += buf;
  }
  for (const auto& note : run.notes) out += "  note: " + note + "\n";
  if (run.train.empty()) {
    out += "  no training steps logged yet\n";
    return out;
  }
  if (run.eval.empty()) out += "  note: no evaluation lines yet, so no MaxVio_global\n";
  buf = format("  early window: steps %lld-%lld, recent window: steps %lld-%lld (%lld steps each)\n",
               (long long)report.early_from, (long long)report.early_to, (long long)report.recent_from,
               (long long)report.recent_to, (long long)report.window);
  out += buf;
  for (const auto& l : report.layers) {
    const double uniform = l.experts.empty() ? 0.0 : 1.0 / double(l.experts.size());
    buf = format("\nlayer %lld: ", (long long)l.layer);
    out += buf + verdict_text(l.verdict, color);
    buf = format("   MaxVio_batch %.3f (early) -> %.3f (recent)", l.early_maxvio, l.recent_maxvio);
    out += buf;
    if (l.global_first && l.global_last) {
      buf = format("   MaxVio_global %.3f @%lld -> %.3f @%lld", *l.global_first, (long long)l.global_first_step,
                   *l.global_last, (long long)l.global_last_step);
      out += buf;
    }
    double max_v = 0;
    for (double v : l.maxvio_batch)
      if (std::isfinite(v)) max_v = std::max(max_v, v);
    buf = format("\n  MaxVio_batch over steps %lld-%lld (0 .. %.2f): ", (long long)l.steps.front(),
                 (long long)l.steps.back(), max_v);
    out += buf + sparkline(l.maxvio_batch, 60) + "\n";
    for (const auto& [name, w] : {std::pair{"early", &l.early_stats}, std::pair{"recent", &l.recent_stats}}) {
      buf = format(
          "  %-6s CV %.3f  Jain %.3f  dead %.1f of %zu  share p5/p50/p95 %.1f%% / %.1f%% / %.1f%% (uniform "
          "%.1f%%)\n",
          name, w->cv, w->jain, w->dead, l.experts.size(), 100 * w->share_p5, 100 * w->share_p50, 100 * w->share_p95,
          100 * uniform);
      out += buf;
    }
    buf = format("  %-6s %7s %7s %7s %7s %9s  recent share (10 cells = uniform %.1f%%, \xe2\x96\xb6 past 20)\n",
                 "expert", "early", "recent", "min", "max", "bias", 100 * uniform);
    out += buf;
    const double scale = std::max(2.0 * uniform, 1e-9);  // bars span 0 .. twice the uniform share
    for (const auto& e : l.experts) {
      buf = format("  %-6lld %6.1f%% %6.1f%% %6.1f%% %6.1f%% %+9.4f  ", (long long)e.expert, 100 * e.early,
                   100 * e.recent, 100 * e.min, 100 * e.max, e.bias);
      out += buf;
      // Bars stop at twice the uniform share; a larger share ends in an arrow so it is not read as
      // exactly that.
      std::string b = bar(e.recent / scale, 20) + (e.recent > scale ? "\xe2\x96\xb6" : "");
      const bool over = e.recent > uniform * 1.2, under = e.recent < uniform * 0.8;
      if (color && over)
        out += "\033[31m" + b + "\033[0m";
      else if (color && under)
        out += "\033[34m" + b + "\033[0m";
      else
        out += b;
      out += "\n";
    }
  }
  if (report.settling) {
    const RoutingSettling& st = *report.settling;
    buf = format(
        "\nrouting settling over %zu evaluations (%lld evaluated tokens; saturation = top-K set equal to the "
        "final evaluation's, churn = changed since the previous one)\n",
        st.steps.size(), (long long)st.tokens);
    out += buf;
    out += "  step    ";
    for (int64_t layer : st.layers) {
      buf = format("  L%-3lld sat  churn", (long long)layer);
      out += buf;
    }
    out += "\n";
    for (size_t e = 0; e < st.steps.size(); ++e) {
      buf = format("  %-8lld", (long long)st.steps[e]);
      out += buf;
      for (size_t l = 0; l < st.layers.size(); ++l) {
        if (std::isfinite(st.churn[e][l]))
          buf = format("  %6.1f%% %6.1f%%", 100 * st.saturation[e][l], 100 * st.churn[e][l]);
        else
          buf = format("  %6.1f%% %7s", 100 * st.saturation[e][l], "-");
        out += buf;
      }
      out += "\n";
    }
  }
  // Several processes: how the expert rows were spread over the ranks, and the communication.
  const StepRecord& end = run.train.back();
  auto has_rank_rows = [](const StepRecord& p) {
    return p.ranks > 1 && !p.layers.empty() && !p.layers[0].rank_rows.empty();
  };
  if (has_rank_rows(end)) {
    const StepRecord* start = nullptr;
    for (const auto& p : run.train)
      if (has_rank_rows(p) && p.layers.size() == end.layers.size()) {
        start = &p;
        break;
      }
    double comm = 0, total = 0;
    for (const auto& p : run.train) comm += p.comm_seconds, total += p.seconds;
    buf = format("\nranks: %lld processes; %.1f%% of step time in MPI collectives (rank 0)\n", (long long)end.ranks,
                 total > 0 ? 100 * comm / total : 0.0);
    out += buf;
    for (size_t l = 0; l < end.layers.size() && l < report.layers.size(); ++l) {
      buf = format("  layer %lld: rows per rank at step %lld:", (long long)report.layers[l].layer, (long long)end.step);
      out += buf;
      for (int64_t r : end.layers[l].rank_rows) {
        buf = format(" %lld", (long long)r);
        out += buf;
      }
      buf = format("   MaxVio_ranks %.3f @%lld -> %.3f @%lld\n", start->layers[l].rank_maxvio, (long long)start->step,
                   end.layers[l].rank_maxvio, (long long)end.step);
      out += buf;
    }
  }
  return out;
}

std::string format_comparison(const std::vector<const RunMetrics*>& runs, const std::vector<const LoadReport*>& reports,
                              bool color) {
  std::string out = "comparison\n";
  std::string buf;  // any length: paths and values are not bounded
  // The run column fits the longest name, uncut: sweep names differ anywhere, and any cut could
  // make two runs look alike (a sweep's names are at most 100 characters).
  size_t width = 24;
  for (const RunMetrics* r : runs) width = std::max(width, r->name.size());
  const int w = int(std::min<size_t>(width, 200));
  // Runs of a model with the MTP module: its validation loss too, after the main one.
  const bool mtp = std::any_of(runs.begin(), runs.end(), [](const RunMetrics* r) { return r->last_mtp_eval(); });
  const char* mtp_head[2] = {mtp ? "    MTP val" : "", mtp ? "     (last)" : ""};
  buf = format("  %-*s %11s %10s%s %16s %16s %10s  %s\n", w, "run", "steps", "val loss", mtp_head[0], "MaxVio_global",
               "MaxVio_batch", "tok/s", "settings");
  out += buf;
  buf = format("  %-*s %11s %10s%s %16s %16s %10s  %s\n", w, "", "(planned)", "(last)", mtp_head[1], "(last, mean L)",
               "(recent, mean L)", "(mean)", "balance; lr; batch x seq x accum; data");
  out += buf;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = *runs[i];
    const LoadReport& rep = *reports[i];
    double global = 0, batch = 0;
    int64_t n_global = 0;
    for (const auto& l : rep.layers) {
      if (l.global_last) global += *l.global_last, ++n_global;
      batch += l.recent_maxvio;
    }
    const double layers = std::max<double>(1.0, double(rep.layers.size()));
    // "-": no eval, no MoE layer; any width (a loss of 1e300 stays on its line).
    const EvalRecord* last_val = r.last_val_eval();
    const std::string val = last_val ? format("%.4f", last_val->val_loss) : "-";
    const std::string glob = n_global ? format("%.3f", global / double(n_global)) : "-";
    const std::string recent = rep.layers.empty() ? "-" : format("%.3f", batch / layers);
    const std::string& name = r.name;
    std::string steps = std::to_string(r.train.empty() ? 0 : r.train.back().step);
    if (r.settings) steps.append("/").append(std::to_string(r.settings->steps));
    std::string settings = "-";
    if (r.settings)
      settings = r.settings->balance_text() + "; " + format("%g", r.settings->lr) + "; " + r.settings->shape_text() +
                 "; " + r.settings->data;
    std::string mtp_val = mtp ? format(" %10s", "-") : "";
    if (const EvalRecord* e = mtp ? r.last_mtp_eval() : nullptr)
      mtp_val = format(r.mtp_untrained() ? " %9.4f*" : " %10.4f", *e->mtp_val_loss);
    buf = format("  %-*s %11s %10s%s %16s %16s %10.0f  ", w, name.c_str(), steps.c_str(), val.c_str(), mtp_val.c_str(),
                 glob.c_str(), recent.c_str(), mean_tokens_per_s(r));
    out += buf + settings + "\n";  // the settings end with the data path: any length
  }
  for (const std::string& note : comparison_notes(runs)) out += "  note: " + note + "\n";
  if (std::any_of(runs.begin(), runs.end(),
                  [](const RunMetrics* r) { return r->last_mtp_eval() && r->mtp_untrained(); }))
    out += "  *: mtp_weight 0, the MTP module's loss untrained (evaluated, not trained)\n";
  out += "\n  MaxVio_batch over training (mean over layers; each line scaled to its own max)\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = *runs[i];
    std::vector<double> mean;
    for (const auto& p : r.train) {
      double s = 0;
      for (const auto& l : p.layers) s += l.maxvio;
      mean.push_back(p.layers.empty() ? 0.0 : s / double(p.layers.size()));
    }
    double max_v = 0;
    for (double v : mean) max_v = std::max(max_v, v);
    std::string name = r.name.size() > 24 ? r.name.substr(r.name.size() - 24) : r.name;
    buf = format("  %-24s (max %5.2f) ", name.c_str(), max_v);
    out += buf + sparkline(mean, 50) + "\n";
  }
  (void)color;
  return out;
}

}  // namespace moe
