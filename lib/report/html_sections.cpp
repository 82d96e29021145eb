// The sections of the HTML report: one run's facts, charts and load tables, and the comparison of
// several runs. What to draw is decided here; how to draw it is svg.hpp's business.
#include "report/html_sections.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>

#include "model/summary.hpp"
#include "report/svg.hpp"

namespace moe {

using svg::compact_count;
using svg::escape;
using svg::fixed;
using svg::format;
using svg::kDash;
using svg::percent;
using svg::signed_fixed;
using svg::thousands;

namespace {

const char* const kTrainColor = svg::kPalette[0];
const char* const kEvalColor = svg::kPalette[1];

// ---------------------------------------------------------------------------------------------
// Run data

svg::Points train_series(const RunMetrics& run, double StepRecord::*field) {
  svg::Points p;
  for (const StepRecord& t : run.train) p.add(double(t.step), t.*field);
  return p;
}

svg::Points val_loss_series(const RunMetrics& run) {
  svg::Points p;
  for (const EvalRecord& e : run.eval) p.add(double(e.step), e.val_loss);
  return p;
}

// The MTP module's losses (a model with the module): the train lines' and eval lines' that have one.
svg::Points mtp_train_series(const RunMetrics& run) {
  svg::Points p;
  for (const StepRecord& t : run.train)
    if (t.mtp_loss) p.add(double(t.step), *t.mtp_loss);
  return p;
}
svg::Points mtp_val_series(const RunMetrics& run) {
  svg::Points p;
  for (const EvalRecord& e : run.eval)
    if (e.mtp_val_loss) p.add(double(e.step), *e.mtp_val_loss);
  return p;
}

// Per-step MaxVio_batch averaged over the MoE layers (finite values only).
svg::Points mean_maxvio_series(const RunMetrics& run) {
  svg::Points p;
  for (const StepRecord& t : run.train) {
    double sum = 0;
    int count = 0;
    for (const LayerLoad& l : t.layers)
      if (std::isfinite(l.maxvio)) sum += l.maxvio, ++count;
    p.add(double(t.step), count > 0 ? sum / count : std::nan(""));
  }
  return p;
}

double mean_tokens_per_s(const RunMetrics& run) {
  double sum = 0;
  int64_t count = 0;
  for (const StepRecord& t : run.train)
    if (std::isfinite(t.tokens_per_s) && t.tokens_per_s > 0) sum += t.tokens_per_s, ++count;
  return count > 0 ? sum / double(count) : std::nan("");
}

double last_finite_val_loss(const RunMetrics& run) {
  const EvalRecord* e = run.last_val_eval();
  return e ? e->val_loss : std::nan("");
}

double recent_maxvio_mean(const LoadReport& report) {
  double sum = 0;
  int count = 0;
  for (const auto& l : report.layers)
    if (std::isfinite(l.recent_maxvio)) sum += l.recent_maxvio, ++count;
  return count > 0 ? sum / count : std::nan("");
}

// Adds the raw curve (thin, faint) and, for long runs, its centred mean (bold) as two series.
void add_noisy_series(svg::LineChart& chart, const std::string& name, const std::string& color, const svg::Points& raw,
                      const std::string& attributes, bool legend_raw) {
  const size_t half = svg::smoothing_half_window(raw.size());
  svg::Series r{name, "raw", color, raw};
  r.attributes = attributes;
  if (half == 0) {
    chart.series.push_back(std::move(r));
    return;
  }
  r.width = 1.0, r.opacity = 0.3, r.in_legend = legend_raw;
  if (legend_raw) r.name = name + " (each step)";
  chart.series.push_back(std::move(r));
  svg::Series s{name, "smoothed", color, {raw.x, svg::centred_mean(raw.y, half)}};
  s.width = 2.2, s.attributes = attributes;
  chart.series.push_back(std::move(s));
  chart.hint = format("thin: each step; bold: centred mean over %d steps", int(2 * half + 1));
}

std::string badge(Verdict v) {
  const char* cls = v == Verdict::balanced ? "balanced" : v == Verdict::converging ? "converging" : "diverging";

  return std::string("<span class=\"badge ") + cls + "\">" + to_string(v) + "</span>";
}

// ---------------------------------------------------------------------------------------------
// Charts of one run

// Each --resume of the run, as a vertical line on its step charts (a changed setting, such as an
// extended --steps, bends the curves there).
std::vector<svg::StepMarker> resume_markers(const HtmlRun& r) {
  std::vector<svg::StepMarker> markers;
  for (const ResumeRecord& resume : r.metrics->resumes) markers.push_back({double(resume.step), resume.describe()});
  return markers;
}

std::string loss_chart(const HtmlRun& r) {
  svg::LineChart c;
  c.step_markers = resume_markers(r);
  c.kind = "loss", c.run = r.label;
  c.title = "Loss";
  c.x_title = "step", c.y_title = "loss (nats/token)";
  c.empty_message = "no train or eval lines yet";
  add_noisy_series(c, "train loss", kTrainColor, train_series(*r.metrics, &StepRecord::loss), "", true);
  svg::Series val{"validation loss", "eval", kEvalColor, val_loss_series(*r.metrics)};
  val.markers = val.points.size() <= 60, val.width = 2.2;
  c.series.push_back(std::move(val));
  // The MTP module's (the token after next), dashed in their own colours.
  if (const svg::Points mtp = mtp_train_series(*r.metrics); !mtp.x.empty())
    add_noisy_series(c, "train MTP loss", svg::kPalette[2], mtp, " stroke-dasharray=\"4 3\"", true);
  if (svg::Series mtp{"validation MTP loss", "eval", svg::kPalette[3], mtp_val_series(*r.metrics)};
      !mtp.points.x.empty()) {
    mtp.markers = mtp.points.size() <= 60, mtp.width = 2.2, mtp.attributes = " stroke-dasharray=\"4 3\"";
    c.series.push_back(std::move(mtp));
  }
  return svg::render_line_chart(c);
}

std::string maxvio_overview_chart(const HtmlRun& r) {
  svg::LineChart c;
  c.step_markers = resume_markers(r);
  c.kind = "maxvio", c.run = r.label, c.layer = "all";
  c.title = "MaxVio_batch, all MoE layers";
  c.x_title = "step", c.y_title = "MaxVio_batch (unitless)";
  c.y_from_zero = true;
  c.empty_message = "no train lines yet";
  c.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  const auto& layers = r.report->layers;
  const size_t half = svg::smoothing_half_window(r.metrics->train.size());
  for (size_t li = 0; li < layers.size(); ++li) {
    svg::Points p;
    for (size_t i = 0; i < layers[li].steps.size(); ++i) p.add(double(layers[li].steps[i]), layers[li].maxvio_batch[i]);
    svg::Series s{"layer " + std::to_string(layers[li].layer), half ? "smoothed" : "raw", svg::palette_color(li),
                  half ? svg::Points{p.x, svg::centred_mean(p.y, half)} : p};
    s.attributes = " data-layer=\"" + std::to_string(layers[li].layer) + "\"";
    c.series.push_back(std::move(s));
  }
  if (half) c.hint = format("centred mean over %d steps", int(2 * half + 1));
  return svg::render_line_chart(c);
}

std::string maxvio_layer_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const std::string id = std::to_string(layer.layer);
  svg::LineChart c;
  c.step_markers = resume_markers(r);
  c.kind = "maxvio", c.run = r.label, c.layer = id;
  c.title = "MaxVio over training";
  c.x_title = "step", c.y_title = "MaxVio (unitless)";
  c.y_from_zero = true;
  c.empty_message = "no train or eval lines yet";
  c.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  svg::Points batch;
  for (size_t i = 0; i < layer.steps.size(); ++i) batch.add(double(layer.steps[i]), layer.maxvio_batch[i]);
  const std::string attributes = " data-layer=\"" + id + "\"";
  add_noisy_series(c, "MaxVio_batch", svg::palette_color(li), batch, attributes, false);
  svg::Points global;
  for (const EvalRecord& e : r.metrics->eval)
    for (const LayerLoad& l : e.layers)
      if (l.layer == layer.layer) global.add(double(e.step), l.maxvio);
  svg::Series g{"MaxVio_global (eval)", "global", "#1f2328", global};
  g.markers = true, g.width = 1.2, g.attributes = attributes;
  c.series.push_back(std::move(g));
  return svg::render_line_chart(c);
}

std::string bias_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const size_t experts = layer.experts.size();
  svg::LineChart c;
  c.step_markers = resume_markers(r);
  c.kind = "bias", c.run = r.label, c.layer = std::to_string(layer.layer);
  c.title = "Routing bias per expert";
  c.x_title = "step", c.y_title = "bias (added to routing scores)";
  c.y_from_zero = true;
  std::vector<svg::Points> bias(experts);
  bool any = false, nonzero = false;
  for (const StepRecord& t : r.metrics->train) {
    if (li >= t.layers.size() || t.layers[li].bias.size() != experts) continue;
    for (size_t e = 0; e < experts; ++e) {
      bias[e].add(double(t.step), t.layers[li].bias[e]);
      any = true, nonzero = nonzero || t.layers[li].bias[e] != 0;
    }
  }
  c.empty_message = r.metrics->train.empty() ? "no train lines yet"
                    : !any                   ? "no routing bias logged for this layer"
                                             : "the bias stays 0: this run balances without a routing bias";
  if (nonzero) {
    for (size_t e = 0; e < experts; ++e) {
      svg::Series s{"expert " + std::to_string(e), "raw", svg::series_color(e, experts), std::move(bias[e])};
      s.width = experts > 16 ? 1.2 : 1.8;
      s.attributes = " data-layer=\"" + c.layer + "\" data-expert=\"" + std::to_string(e) + "\"";
      c.series.push_back(std::move(s));
    }
  }
  if (nonzero) c.hint = "overloaded experts are pushed down, idle ones up";
  return svg::render_line_chart(c);
}

// Expert share of routed tokens per step bin (columns) and expert (rows), coloured by the ratio to
// the uniform share 1/E.
std::string heatmap_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const size_t experts = layer.experts.size();
  svg::ShareHeatmap h;
  h.run = r.label, h.layer = std::to_string(layer.layer);
  h.title = "Expert share of routed tokens";
  h.label = h.title + ", layer " + h.layer;
  h.hint = "rows: experts; columns: steps; white = uniform share, red = overloaded, blue = idle";
  h.x_title = "step", h.y_title = "expert", h.row_name = "expert";
  h.scale_title = "share of routed tokens (colour: ratio to uniform)";
  h.empty_message = "no train lines yet", h.empty_cell = "no tokens", h.empty_note = "no tokens were routed";
  h.rows = experts;
  h.uniform = experts > 0 ? 1.0 / double(experts) : 0.0;

  auto has_counts = [&](const StepRecord& t) { return li < t.layers.size() && t.layers[li].counts.size() == experts; };
  int64_t first = INT64_MAX, last = INT64_MIN;
  for (const StepRecord& t : r.metrics->train)
    if (has_counts(t)) first = std::min(first, t.step), last = std::max(last, t.step);
  if (experts == 0 || first > last) return svg::render_share_heatmap(h);
  h.x_first = first, h.x_last = last;

  // Bin steps into columns: at most 200, and fewer for many experts to keep the file small.
  const int64_t span = last - first + 1;
  const int64_t columns =
      std::max<int64_t>(1, std::min<int64_t>({200, span, std::max<int64_t>(24, 6000 / int64_t(experts))}));
  std::vector<double> counts(size_t(columns) * experts, 0.0), totals(size_t(columns), 0.0);
  std::vector<int64_t> bin_first(size_t(columns), INT64_MAX), bin_last(size_t(columns), INT64_MIN);
  for (const StepRecord& t : r.metrics->train) {
    if (!has_counts(t)) continue;
    const size_t c = size_t(std::min<int64_t>(columns - 1, (t.step - first) * columns / span));
    for (size_t e = 0; e < experts; ++e) {
      counts[c * experts + e] += double(t.layers[li].counts[e]);
      totals[c] += double(t.layers[li].counts[e]);
    }
    bin_first[c] = std::min(bin_first[c], t.step), bin_last[c] = std::max(bin_last[c], t.step);
  }
  h.shares.assign(size_t(columns) * experts, std::nan(""));
  for (size_t c = 0; c < size_t(columns); ++c) {
    h.column_labels.push_back(bin_first[c] > bin_last[c] ? std::string("no steps")
                              : bin_first[c] == bin_last[c]
                                  ? format("step %lld", (long long)bin_first[c])
                                  : format("steps %lld%s%lld", (long long)bin_first[c], kDash, (long long)bin_last[c]));
    if (totals[c] > 0)
      for (size_t e = 0; e < experts; ++e) h.shares[c * experts + e] = counts[c * experts + e] / totals[c];
  }
  h.column_note = format("%lld", (long long)columns) + (columns == 1 ? " column" : " columns") +
                  (span > columns ? format(" of ~%lld steps", (long long)((span + columns - 1) / columns)) : "");
  return svg::render_share_heatmap(h);
}

// ---------------------------------------------------------------------------------------------
// Tables

std::string load_table(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const LoadReport& report = *r.report;
  const size_t experts = layer.experts.size();
  const double uniform = experts > 0 ? 1.0 / double(experts) : 0.0;
  double bar_scale = 2 * uniform;
  for (const auto& e : layer.experts)
    for (double share : {e.early, e.recent})
      if (std::isfinite(share)) bar_scale = std::max(bar_scale, share);
  auto bar_width = [&](double share) {
    return format("%.1f", bar_scale > 0 && std::isfinite(share) ? 100 * std::clamp(share / bar_scale, 0.0, 1.0) : 0.0);
  };
  // A long table is folded away (no script needed): the heatmap above already gives the overview.
  std::string out = experts > svg::kMaxLegendEntries
                        ? "<details><summary>Load table of " + std::to_string(experts) + " experts</summary>\n"
                        : "";
  out += "<div class=\"table-wrap\"><table class=\"load\" data-layer=\"" + std::to_string(layer.layer) +
         "\">\n<thead><tr><th>expert</th><th>early share<br><small>steps " +
         format("%lld%s%lld", (long long)report.early_from, kDash, (long long)report.early_to) +
         "</small></th><th>recent share<br><small>steps " +
         format("%lld%s%lld", (long long)report.recent_from, kDash, (long long)report.recent_to) +
         "</small></th><th class=\"bar-col\">share: early (thin), recent (bar);<br><small>line = uniform " +
         percent(uniform) + "</small>" + "</th><th>min</th><th>max</th><th>bias</th></tr></thead>\n<tbody>\n";
  for (const auto& e : layer.experts) {
    out += "<tr><td><span class=\"dot\" style=\"background:" + svg::series_color(size_t(e.expert), experts) +
           "\"></span>" + std::to_string(e.expert) + "</td><td>" + percent(e.early) + "</td><td>" + percent(e.recent) +
           "</td><td class=\"bar-col\"><div class=\"bar\"><b style=\"width:" + bar_width(e.early) +
           "%\"></b><span style=\"width:" + bar_width(e.recent) +
           "%;background:" + svg::share_color(e.recent, uniform) +
           "\"></span><i style=\"left:" + format("%.1f", bar_scale > 0 ? 100 * uniform / bar_scale : 0.0) +
           "%\"></i></div></td><td>" + percent(e.min) + "</td><td>" + percent(e.max) + "</td><td>" +
           signed_fixed(e.bias, 4) + "</td></tr>\n";
  }
  out += "</tbody></table></div>\n";
  if (experts > svg::kMaxLegendEntries) out += "</details>\n";
  return out;
}

struct LoadStatsRow {
  const char* name;
  std::string (*value)(const WindowStats&);
};

// Jain's fairness index and the coefficient of variation of one layer's load per step (README
// "Balance statistics"), with the early/recent window means in a table under it.
std::string stats_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const std::string id = std::to_string(layer.layer);
  svg::LineChart c;
  c.step_markers = resume_markers(r);
  c.kind = "load-stats", c.run = r.label, c.layer = id;
  c.title = "Load statistics over training";
  c.x_title = "step", c.y_title = "Jain's index, CV (unitless)";
  c.y_from_zero = true;
  c.empty_message = "no train lines yet";
  c.references.push_back({1.0, "Jain = 1: perfectly even"});
  svg::Points jain, cv;
  for (size_t i = 0; i < layer.steps.size(); ++i)
    jain.add(double(layer.steps[i]), layer.jain[i]), cv.add(double(layer.steps[i]), layer.cv[i]);
  const std::string attributes = " data-layer=\"" + id + "\"";
  add_noisy_series(c, "Jain's fairness index", svg::kPalette[2], jain, attributes, false);
  add_noisy_series(c, "CV of the load", svg::kPalette[3], cv, attributes, false);
  return svg::render_line_chart(c);
}

std::string stats_table(const LayerLoadReport& layer, const LoadReport& report) {
  const LoadStatsRow rows[] = {
      {"CV of the load", [](const WindowStats& w) { return svg::fixed(w.cv, 3); }},
      {"Jain's fairness index", [](const WindowStats& w) { return svg::fixed(w.jain, 3); }},
      {"dead experts (mean per step)", [](const WindowStats& w) { return svg::fixed(w.dead, 1); }},
      {"share p5", [](const WindowStats& w) { return percent(w.share_p5); }},
      {"share p50", [](const WindowStats& w) { return percent(w.share_p50); }},
      {"share p95", [](const WindowStats& w) { return percent(w.share_p95); }},
  };
  std::string out = "<div class=\"table-wrap\"><table class=\"stats\" data-layer=\"" + std::to_string(layer.layer) +
                    "\">\n<thead><tr><th>statistic</th><th>early<br><small>steps " +
                    format("%lld%s%lld", (long long)report.early_from, kDash, (long long)report.early_to) +
                    "</small></th><th>recent<br><small>steps " +
                    format("%lld%s%lld", (long long)report.recent_from, kDash, (long long)report.recent_to) +
                    "</small></th></tr></thead>\n<tbody>\n";
  for (const LoadStatsRow& row : rows)
    out += "<tr><td>" + std::string(row.name) + "</td><td>" + row.value(layer.early_stats) + "</td><td>" +
           row.value(layer.recent_stats) + "</td></tr>\n";
  return out + "</tbody></table></div>\n<p class=\"note\">Means over each window of the per-step statistics of " +
         std::to_string(layer.experts.size()) +
         " experts: CV = std/mean of the expert counts, Jain = (&Sigma;c)&sup2;/(E&middot;&Sigma;c&sup2;) (1 = even, "
         "1/E = one expert takes all), dead = experts with no token in the step, share pX = X-th percentile of the "
         "per-expert shares (uniform " +
         percent(layer.experts.empty() ? 0.0 : 1.0 / double(layer.experts.size())) + ").</p>\n";
}

// Routing saturation (share of kept evaluated tokens whose top-K set equals the final evaluation's)
// and churn (changed since the previous evaluation), per MoE layer over the evaluations.
std::string settling_chart(const HtmlRun& r) {
  svg::LineChart c;
  c.kind = "settling", c.run = r.label, c.layer = "all";
  c.title = "Routing settling over evaluations";
  c.x_title = "step", c.y_title = "share of evaluated tokens";
  c.y_from_zero = true;
  c.empty_message = "fewer than two evaluations with routing files";
  if (r.report->settling) {
    const RoutingSettling& st = *r.report->settling;
    c.hint =
        format("%lld evaluated tokens; saturation = top-K set equal to the final evaluation's", (long long)st.tokens);
    for (size_t l = 0; l < st.layers.size(); ++l) {
      svg::Points sat, churn;
      for (size_t e = 0; e < st.steps.size(); ++e) {
        sat.add(double(st.steps[e]), st.saturation[e][l]);
        if (std::isfinite(st.churn[e][l])) churn.add(double(st.steps[e]), st.churn[e][l]);
      }
      const std::string layer = std::to_string(st.layers[l]);
      svg::Series a{"saturation, layer " + layer, "saturation", svg::palette_color(l), sat};
      a.markers = sat.size() <= 60, a.attributes = " data-layer=\"" + layer + "\"";
      svg::Series b{"churn, layer " + layer, "churn", svg::palette_color(l), churn};
      b.width = 1.2, b.opacity = 0.6, b.markers = churn.size() <= 60, b.attributes = a.attributes;
      c.series.push_back(std::move(a)), c.series.push_back(std::move(b));
    }
  }
  return svg::render_line_chart(c);
}

std::string verdict_line(const LayerLoadReport& layer, const LoadReport& report) {
  std::string out = "<p class=\"verdict-line\">" + badge(layer.verdict) + " MaxVio_batch " +
                    fixed(layer.early_maxvio, 3) + " (mean of steps " +
                    format("%lld%s%lld", (long long)report.early_from, kDash, (long long)report.early_to) + ") " +
                    "\xe2\x86\x92 " + fixed(layer.recent_maxvio, 3) + " (steps " +
                    format("%lld%s%lld", (long long)report.recent_from, kDash, (long long)report.recent_to) + ")";
  if (layer.global_first && layer.global_last)
    out += "; MaxVio_global " + fixed(*layer.global_first, 3) + " at step " + std::to_string(layer.global_first_step) +
           " \xe2\x86\x92 " + fixed(*layer.global_last, 3) + " at step " + std::to_string(layer.global_last_step);
  else
    out += "; MaxVio_global: no evaluation yet";
  return out + ".</p>\n";
}

std::string model_section(const ModelConfig& c) {
  const ParamSummary s = summarize_params(c);
  std::string out =
      "<h3>Model</h3>\n<p class=\"model-line\">" +
      format("%lld layers (%lld dense, %lld MoE), hidden %lld, %lld heads, context %lld",
             (long long)c.num_hidden_layers, (long long)c.num_dense_layers(), (long long)c.num_moe_layers(),
             (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.max_position_embeddings);
  if (c.num_routed_layers() > 0)
    out += format("; MoE: %lld routed experts (top-%lld) + %lld shared, width %lld, ", (long long)c.n_routed_experts,
                  (long long)c.num_experts_per_tok, (long long)c.n_shared_experts, (long long)c.moe_intermediate_size) +
           std::string(to_string(c.scoring_func)) + " scores";
  out +=
      ".</p>\n<div class=\"table-wrap\"><table class=\"model-summary\">\n<thead><tr><th>part</th><th>total "
      "parameters</th><th>activated per token</th><th>activated / total</th></tr></thead>\n<tbody>\n";
  for (const auto& row : s.rows) {
    if (row.total == 0) continue;
    out += "<tr><td>" + escape(row.role) + "</td><td>" + thousands(row.total) + "</td><td>" + thousands(row.activated) +
           "</td><td>" + percent(double(row.activated) / double(row.total)) + "</td></tr>\n";
  }
  const double ratio = s.total > 0 ? double(s.activated) / double(s.total) : 0.0;
  out += "<tr class=\"total\"><td>all</td><td>" + thousands(s.total) + "</td><td>" + thousands(s.activated) +
         "</td><td>" + percent(ratio) + "</td></tr>\n</tbody></table></div>\n<p class=\"note\">Each token uses " +
         compact_count(s.activated) + " of " + compact_count(s.total) + " parameters (" +
         (s.activated > 0 ? format("%.2f", double(s.total) / double(s.activated)) : std::string(kDash)) +
         "\xc3\x97 fewer than the model holds)";
  if (s.state > 0) out += ", plus " + thousands(s.state) + " routing-bias values (balancing state, not trained)";
  return out + ".</p>\n";
}

// ---------------------------------------------------------------------------------------------
// Sections

std::string fact(const std::string& name, const std::string& value_html) {
  return "<div><dt>" + escape(name) + "</dt><dd>" + value_html + "</dd></div>";
}

std::string run_facts(const RunMetrics& m, const LoadReport& report) {
  std::string out = "<dl class=\"facts\">";
  out += fact("metrics", m.path.empty() ? kDash : "<code>" + escape(m.path) + "</code>");
  if (m.train.empty())
    out += fact("steps", "no train lines yet");
  else
    out += fact("steps", thousands(int64_t(m.train.size())) + " logged (" + thousands(m.train.front().step) + kDash +
                             thousands(m.train.back().step) + ")");
  out += fact("status", escape(m.status_text()) + (m.ended ? "" : ": the file may still grow"));
  if (m.settings) {
    const RunSettings& st = *m.settings;
    out += fact("balancing", escape(st.balance_text()));
    out += fact("learning rate", escape(format("%g", st.lr) + " \xe2\x86\x92 " + format("%g", st.min_lr)));
    out += fact("batch × seq × accum", escape(st.shape_text()));
    out += fact("data", "<code>" + escape(st.data) + "</code>");
  }
  if (m.eval.empty())
    out += fact("evaluations", "none yet");
  else
    out += fact("evaluations", m.eval.size() == 1
                                   ? "1 (step " + std::to_string(m.eval.front().step) + ")"
                                   : std::to_string(m.eval.size()) + " (steps " + std::to_string(m.eval.front().step) +
                                         kDash + std::to_string(m.eval.back().step) + ")");
  out += fact("final validation loss", escape(m.final_val_text()) + (m.eval.empty() ? "" : " nats/token"));
  if (const EvalRecord* e = m.last_mtp_eval())
    out += fact("final MTP validation loss",
                format("%.4f (step %lld) nats/token, the module's loss on the token after next%s", *e->mtp_val_loss,
                       (long long)e->step, m.mtp_untrained() ? "; untrained: mtp_weight 0" : ""));
  const double tps = mean_tokens_per_s(m);
  out += fact("mean throughput", std::isfinite(tps) ? thousands(int64_t(std::llround(tps))) + " tokens/s" : kDash);
  if (!m.train.empty())
    out +=
        fact("windows", std::to_string(report.window) + (report.window == 1 ? " step" : " steps") + ": early " +
                            std::to_string(report.early_from) + kDash + std::to_string(report.early_to) + ", recent " +
                            std::to_string(report.recent_from) + kDash + std::to_string(report.recent_to));
  if (!report.layers.empty()) {
    std::string verdicts;
    for (const auto& l : report.layers)
      verdicts += "<span class=\"verdict-item\">layer " + std::to_string(l.layer) + " " + badge(l.verdict) + "</span>";
    out += fact("load balance", verdicts);
  }
  return out + "</dl>\n";
}

// One row per run; the best (lowest) final validation loss and recent MaxVio_batch are highlighted.
std::string comparison_table(const std::vector<HtmlRun>& runs) {
  std::vector<int64_t> layer_ids;
  for (const auto& r : runs)
    for (const auto& l : r.report->layers)
      if (std::find(layer_ids.begin(), layer_ids.end(), l.layer) == layer_ids.end()) layer_ids.push_back(l.layer);
  std::sort(layer_ids.begin(), layer_ids.end());

  auto lowest = [&](auto value) {
    double best = INFINITY;
    for (const auto& r : runs)
      if (double v = value(r); std::isfinite(v)) best = std::min(best, v);
    return best;
  };
  const double best_val = lowest([](const HtmlRun& r) { return last_finite_val_loss(*r.metrics); });
  // Runs of a model with the MTP module: its validation loss too (the lowest highlighted).
  // An untrained module's (mtp_weight 0) is shown, marked, and not a candidate for the best.
  auto mtp_val = [](const HtmlRun& r) {
    const EvalRecord* e = r.metrics->last_mtp_eval();
    return e ? *e->mtp_val_loss : std::nan("");
  };
  const double best_mtp =
      lowest([&](const HtmlRun& r) { return r.metrics->mtp_untrained() ? std::nan("") : mtp_val(r); });
  const bool mtp = std::any_of(runs.begin(), runs.end(), [](const HtmlRun& r) { return r.metrics->last_mtp_eval(); });
  const double best_recent = lowest([](const HtmlRun& r) { return recent_maxvio_mean(*r.report); });
  auto cell = [](double v, double best, int decimals) {
    return std::string(std::isfinite(v) && v == best ? "<td class=\"best\">" : "<td>") + fixed(v, decimals) + "</td>";
  };

  std::string out =
      "<div class=\"table-wrap\"><table class=\"compare\">\n"
      "<thead><tr><th>run</th><th>steps</th><th>final val loss<br><small>nats/token</small></th>";
  if (mtp) out += "<th>final MTP val loss<br><small>the token after next</small></th>";
  for (int64_t id : layer_ids)
    out += "<th>MaxVio_global<br><small>layer " + std::to_string(id) + ", last eval</small></th>";
  out +=
      "<th>MaxVio_batch<br><small>last window, mean of layers</small></th><th>mean tokens/s</th>"
      "<th class=\"verdicts\">verdict per layer</th><th>balancing</th><th>lr</th>"
      "<th>batch × seq × accum</th><th>data</th></tr></thead>\n<tbody>\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const HtmlRun& r = runs[i];
    out += "<tr data-run=\"" + escape(r.label) +
           "\"><td><span class=\"dot\" style=\"background:" + svg::palette_color(i) + "\"></span><a href=\"#" +
           run_anchor(i) + "\">" + escape(r.label) + "</a></td><td>" +
           (r.metrics->train.empty() ? std::string(kDash) : thousands(r.metrics->train.back().step)) +
           (r.metrics->settings ? " <small>of " + thousands(r.metrics->settings->steps) + "</small>" : std::string()) +
           (r.metrics->ended ? "" : " <small>(running)</small>") + "</td>" +
           cell(last_finite_val_loss(*r.metrics), best_val, 4);
    if (mtp && r.metrics->mtp_untrained())
      out += "<td>" + fixed(mtp_val(r), 4) + " <small>untrained (mtp_weight 0)</small></td>";
    else if (mtp)
      out += cell(mtp_val(r), best_mtp, 4);
    for (int64_t id : layer_ids) {
      std::optional<double> g;
      for (const auto& l : r.report->layers)
        if (l.layer == id) g = l.global_last;
      out += "<td>" + (g ? fixed(*g, 3) : std::string(kDash)) + "</td>";
    }
    const double tps = mean_tokens_per_s(*r.metrics);
    out += cell(recent_maxvio_mean(*r.report), best_recent, 3) + "<td>" +
           (std::isfinite(tps) ? thousands(int64_t(std::llround(tps))) : std::string(kDash)) +
           "</td><td class=\"verdicts\">";
    for (const auto& l : r.report->layers)
      out += "<span class=\"verdict-item\">" + std::to_string(l.layer) + " " + badge(l.verdict) + "</span>";
    out += "</td>";
    if (const auto& st = r.metrics->settings)
      out += "<td>" + escape(st->balance_text()) + "</td><td>" + escape(format("%g", st->lr)) + "</td><td>" +
             escape(st->shape_text()) + "</td><td><code>" + escape(st->data) + "</code></td>";
    else
      for (int k = 0; k < 4; ++k) out += "<td>" + std::string(kDash) + "</td>";
    out += "</tr>\n";
  }
  out += "</tbody></table></div>\n";
  std::vector<const RunMetrics*> metrics;
  for (const auto& r : runs) metrics.push_back(r.metrics);
  for (const std::string& note : comparison_notes(metrics))
    out += "<p class=\"note\">Note: " + escape(note) + ".</p>\n";
  return out;
}

// MaxVio curves often span decades (no balancing vs loss-free), so a log axis keeps both readable.
std::string compare_maxvio_chart(const std::vector<HtmlRun>& runs) {
  svg::LineChart maxvio;
  maxvio.kind = "compare-maxvio";
  maxvio.title = "MaxVio_batch, mean over MoE layers";
  maxvio.x_title = "step", maxvio.y_title = "MaxVio_batch (unitless)";
  maxvio.y_from_zero = true;
  maxvio.empty_message = "no train lines yet";
  maxvio.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  // One smoothing window for every run, so their curves are comparable; a little even for short runs.
  size_t longest = 0;
  for (const auto& r : runs) longest = std::max(longest, r.metrics->train.size());
  const size_t half = longest >= 20 ? std::max<size_t>(2, svg::smoothing_half_window(longest)) : 0;
  if (half) maxvio.hint = format("centred mean over %d steps", int(2 * half + 1));
  double lo = INFINITY, hi = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const svg::Points raw = mean_maxvio_series(*runs[i].metrics);
    svg::Series s{runs[i].label, "mean", svg::palette_color(i),
                  half ? svg::Points{raw.x, svg::centred_mean(raw.y, half)} : raw};
    s.width = 2.2, s.attributes = " data-run=\"" + escape(runs[i].label) + "\"";
    for (double v : s.points.y)
      if (std::isfinite(v) && v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
    maxvio.series.push_back(std::move(s));
  }
  if (hi > 0 && hi / lo > 30) {
    maxvio.y_log = true, maxvio.y_from_zero = false;
    maxvio.y_title = "MaxVio_batch (unitless, log scale)";
  }
  return svg::render_line_chart(maxvio);
}

// The paper's Figure 4 (Wang et al. 2024): MaxVio_global at every evaluation, mean over the MoE
// layers, one line per run, on a log axis (balanced runs sit orders of magnitude below the others).
std::string compare_global_chart(const std::vector<HtmlRun>& runs) {
  svg::LineChart c;
  c.kind = "compare-maxvio-global";
  c.title = "MaxVio_global over training, mean over MoE layers";
  c.x_title = "step", c.y_title = "MaxVio_global (unitless, log scale)";
  c.y_log = true;
  c.empty_message = "no evaluations yet";
  c.hint = "on the evaluated validation tokens at each evaluation";
  for (size_t i = 0; i < runs.size(); ++i) {
    svg::Points p;
    for (const EvalRecord& e : runs[i].metrics->eval) {
      if (e.layers.empty()) continue;
      double sum = 0;
      for (const LayerLoad& l : e.layers) sum += l.maxvio;
      p.add(double(e.step), sum / double(e.layers.size()));
    }
    svg::Series s{runs[i].label, "global", svg::palette_color(i), p};
    s.width = 2.2, s.markers = p.size() <= 60, s.attributes = " data-run=\"" + escape(runs[i].label) + "\"";
    c.series.push_back(std::move(s));
  }
  return svg::render_line_chart(c);
}

std::string compare_val_loss_chart(const std::vector<HtmlRun>& runs) {
  svg::LineChart val;
  val.kind = "compare-val-loss";
  val.title = "Validation loss";
  val.x_title = "step", val.y_title = "validation loss (nats/token)";
  val.empty_message = "no evaluations yet";
  for (size_t i = 0; i < runs.size(); ++i) {
    svg::Series s{runs[i].label, "eval", svg::palette_color(i), val_loss_series(*runs[i].metrics)};
    s.width = 2.2, s.markers = s.points.size() <= 60;
    s.attributes = " data-run=\"" + escape(runs[i].label) + "\"";
    val.series.push_back(std::move(s));
  }
  return svg::render_line_chart(val);
}

}  // namespace

std::string run_anchor(size_t run_index) { return "run-" + std::to_string(run_index); }

std::string run_section(const HtmlRun& r, size_t run_index, size_t run_count) {
  const RunMetrics& m = *r.metrics;
  const LoadReport& report = *r.report;
  std::string out =
      "<section class=\"card run\" id=\"" + run_anchor(run_index) + "\" data-run=\"" + escape(r.label) + "\">\n<h2>";
  if (run_count > 1)
    out += "<span class=\"dot big\" style=\"background:" + std::string(svg::palette_color(run_index)) + "\"></span>";
  out += escape(r.label.empty() ? m.path : r.label) + " " +
         (m.ended ? "<span class=\"badge ended\">ended</span>" : "<span class=\"badge running\">in progress</span>") +
         "</h2>\n";
  out += run_facts(m, report);
  if (!m.notes.empty()) {
    out += "<ul class=\"notes\">";
    for (const auto& n : m.notes) out += "<li>" + escape(n) + "</li>";
    out += "</ul>\n";
  }
  if (r.model) out += model_section(*r.model);

  out += "<h3>Training</h3>\n<div class=\"grid2\">\n" + loss_chart(r);
  if (!report.layers.empty()) out += maxvio_overview_chart(r);
  out += "</div>\n";
  if (report.settling) out += "<div class=\"grid2\">\n" + settling_chart(r) + "</div>\n";
  if (report.layers.empty())
    out += "<p class=\"note\">No MoE layer statistics in this file yet (no train or eval line with layers).</p>\n";
  for (size_t li = 0; li < report.layers.size(); ++li) {
    const LayerLoadReport& layer = report.layers[li];
    const std::string id = std::to_string(layer.layer);
    out += "<section class=\"layer\" id=\"" + run_anchor(run_index) + "-layer-" + id + "\" data-layer=\"" + id +
           "\">\n<h3>MoE layer " + id + " <small>" + std::to_string(layer.experts.size()) + " experts</small></h3>\n";
    out += verdict_line(layer, report);
    out += "<div class=\"grid2\">\n" + maxvio_layer_chart(r, li) + bias_chart(r, li) + "</div>\n";
    out += heatmap_chart(r, li);
    out += "<div class=\"grid2\">\n" + stats_chart(r, li) + "<div>" + stats_table(layer, report) + "</div></div>\n";
    out += load_table(r, li);
    out += "</section>\n";
  }
  return out + "</section>\n";
}

std::string comparison_section(const std::vector<HtmlRun>& runs) {
  return "<section class=\"card comparison\" id=\"comparison\">\n<h2>Comparison of " + std::to_string(runs.size()) +
         " runs</h2>\n" + comparison_table(runs) + "<div class=\"grid2\">\n" + compare_global_chart(runs) +
         compare_maxvio_chart(runs) + compare_val_loss_chart(runs) + "</div>\n</section>\n";
}

}  // namespace moe
