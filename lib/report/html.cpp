// The HTML report: the page around the sections (head, stylesheet, navigation, footer). The sections
// are in html_sections.cpp and every chart is drawn by svg.cpp. Nothing is fetched: the file must
// open offline, forever.
#include "report/html.hpp"

#include "core/error.hpp"
#include "report/html_sections.hpp"
#include "report/svg.hpp"

namespace moe {
namespace {

const char* const kStyle = R"css(
:root { --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #eef1f4; --bg: #f5f7f9; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 22px 56px; }
header.page h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
header.page p { margin: 0; color: var(--muted); }
nav.runs { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav.runs a { color: var(--ink); text-decoration: none; border-bottom: 1px dotted var(--muted); }
a { color: #0b57d0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 20px 22px;
  margin: 20px 0; box-shadow: 0 1px 3px rgba(31, 35, 40, 0.06); }
h2 { font-size: 20px; margin: 0 0 12px; display: flex; align-items: center; gap: 10px; }
h3 { font-size: 16px; margin: 24px 0 10px; }
h3 small, th small { color: var(--muted); font-weight: 400; }
section.layer { border-top: 1px solid var(--soft); margin-top: 22px; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; }
figure.chart-box { margin: 0; border: 1px solid var(--soft); border-radius: 10px; padding: 10px 12px 10px; }
figure.chart-box.wide { margin-top: 16px; }
figcaption { font-weight: 600; font-size: 14px; margin: 0 0 6px 2px; }
figcaption .hint { font-weight: 400; color: var(--muted); font-size: 12px; margin-left: 10px; }
svg.chart { display: block; width: 100%; height: auto; overflow: visible; }
svg.chart text { font-family: inherit; fill: #424a53; }
svg.chart .tick { font-size: 11px; font-variant-numeric: tabular-nums; }
svg.chart .axis-title { font-size: 12px; fill: var(--muted); }
svg.chart .grid line { stroke: #edf0f3; stroke-width: 1; }
svg.chart .grid line.zero { stroke: #c9d1d9; }
svg.chart .domain, svg.chart .tick-mark { stroke: #8c959f; stroke-width: 1; }
svg.chart path.series { fill: none; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .markers circle { stroke: #fff; stroke-width: 1.2; }
svg.chart .reference { stroke: #57606a; stroke-width: 1.3; stroke-dasharray: 6 4; }
svg.chart .step-marker { stroke: #bf8700; stroke-width: 1.5; stroke-dasharray: 2 3; }
svg.chart .reference-label { font-size: 11px; fill: #57606a; font-weight: 600; paint-order: stroke;
  stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg.chart .plot-frame { fill: #fafbfc; stroke: var(--soft); }
svg.chart .plot-outline { fill: none; stroke: #afb8c1; stroke-width: 1; }
svg.chart .empty { font-size: 14px; fill: var(--muted); }
svg.chart .extreme { fill: #1f2328; }
svg.chart .scale-note { font-size: 11px; fill: var(--muted); }
.legend { list-style: none; margin: 6px 0 0; padding: 0 0 0 4px; display: flex; flex-wrap: wrap; gap: 4px 16px;
  font-size: 12px; color: #424a53; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 20px; height: 4px; border-radius: 2px; }
.swatch.dashed { height: 0; border-top: 2px dashed #57606a; border-radius: 0; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 8px; vertical-align: -1px; }
.dot.big { width: 14px; height: 14px; margin: 0; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; margin: 8px 0; }
th, td { padding: 5px 12px; text-align: right; border-bottom: 1px solid var(--soft); white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; color: #424a53; background: #f6f8fa; vertical-align: bottom; line-height: 1.25; }
tbody tr:hover { background: #f8fafc; }
tr.total td { font-weight: 600; border-top: 1px solid var(--line); }
td.best { font-weight: 700; color: #116329; }
th.verdicts, td.verdicts { text-align: left; white-space: normal; min-width: 160px; }
td.verdicts .verdict-item { display: inline-block; margin: 1px 8px 1px 0; color: var(--muted); font-size: 12px; }
th.bar-col, td.bar-col { min-width: 170px; }
.bar { position: relative; height: 14px; }
.bar b { position: absolute; left: 0; top: 0; height: 3px; background: #8c959f; border-radius: 2px; }
.bar span { position: absolute; left: 0; top: 5px; height: 9px; border-radius: 2px; background: var(--soft);
  box-shadow: inset 0 0 0 1px rgba(0, 0, 0, 0.15); }
.bar i { position: absolute; top: -2px; bottom: -2px; border-left: 2px solid #1f2328; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  line-height: 18px; vertical-align: 1px; }
.badge.balanced { background: #dafbe1; color: #116329; }
.badge.converging { background: #fff4c2; color: #7d4e00; }
.badge.diverging { background: #ffebe9; color: #a40e26; }
.badge.ended { background: #eef1f4; color: #424a53; }
.badge.running { background: #ddf4ff; color: #0550ae; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 10px 22px; margin: 0 0 8px; }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
.facts dd { margin: 1px 0 0; }
.facts code { font-size: 12px; word-break: break-all; }
.verdict-item { margin-right: 12px; white-space: nowrap; }
.notes { background: #fff8c5; border: 1px solid #eed888; border-radius: 8px; padding: 8px 12px 8px 30px; margin: 10px 0; }
.verdict-line, .model-line, .note { color: #424a53; margin: 6px 0; }
details summary { cursor: pointer; color: #424a53; margin: 10px 0 4px; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
)css";

}  // namespace

std::string render_html_report(const std::vector<HtmlRun>& runs, const std::string& title) {
  for (size_t i = 0; i < runs.size(); ++i)
    check(runs[i].metrics != nullptr && runs[i].report != nullptr,
          "HTML report: run " + std::to_string(i) + " (" + runs[i].label + ") has no metrics or load report");
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>" +
      svg::escape(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<main>\n";
  html +=
      "<header class=\"page\"><h1>" + svg::escape(title) + "</h1><p>Expert load report from <code>metrics.jsonl</code>";
  html += runs.size() == 1 ? "" : ", " + std::to_string(runs.size()) + " runs";
  html += ". MaxVio = (largest expert load \xe2\x88\x92 mean load) / mean load: 0 is perfectly balanced.</p>\n";
  if (runs.size() > 1) {
    html += "<nav class=\"runs\"><a href=\"#comparison\">comparison</a>";
    for (size_t i = 0; i < runs.size(); ++i)
      html += "<a href=\"#" + run_anchor(i) + "\">" + svg::escape(runs[i].label) + "</a>";
    html += "</nav>\n";
  }
  html += "</header>\n";
  if (runs.empty()) html += "<section class=\"card\"><p class=\"note\">No runs to report.</p></section>\n";
  if (runs.size() > 1) html += comparison_section(runs);
  for (size_t i = 0; i < runs.size(); ++i) html += run_section(runs[i], i, runs.size());
  html +=
      "<footer>Written by moe inspect. Self-contained: inline SVG and CSS, no scripts, nothing loaded from "
      "the network. Hover a heatmap cell or an evaluation point for its value.</footer>\n</main>\n</body>\n</html>\n";
  return html;
}

std::string render_co_activation_html(const std::vector<CoActivation>& layers, const std::string& checkpoint,
                                      const std::string& data) {
  const std::string title = "moe co-activation: " + checkpoint;
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>" +
      svg::escape(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<main>\n";
  html += "<header class=\"page\"><h1>" + svg::escape(title) + "</h1><p>Routing of " + svg::escape(data) +
          ". Lift of a pair of experts = tokens &middot; (tokens choosing both) / ((tokens choosing i) &middot; "
          "(tokens choosing j)): 1 (white) = chosen together as often as if independent, red = more often, blue = "
          "less often.</p></header>\n";
  for (const CoActivation& c : layers) {
    svg::ShareHeatmap h;
    h.kind = "co-activation", h.layer = std::to_string(c.layer);
    h.title = "Co-activation lift, MoE layer " + h.layer;
    h.label = h.title;
    h.hint = svg::format("%lld tokens; rows and columns: experts", (long long)c.tokens);
    h.x_title = "expert", h.y_title = "expert", h.row_name = "expert";
    h.scale_title = "lift (together / independent)";
    h.empty_message = "no experts", h.empty_cell = "itself or never chosen", h.empty_note = "no pair was chosen";
    h.rows = size_t(c.E);
    h.uniform = 1.0;
    h.ratio_values = true;
    h.x_first = 0, h.x_last = c.E - 1;
    h.shares.assign(size_t(c.E * c.E), std::nan(""));
    for (int64_t j = 0; j < c.E; ++j) {
      h.column_labels.push_back("with expert " + std::to_string(j));
      for (int64_t i = 0; i < c.E; ++i) h.shares[size_t(j * c.E + i)] = c.lift(i, j);
    }
    html += "<section class=\"card\" data-layer=\"" + h.layer + "\">\n" + svg::render_share_heatmap(h) + "</section>\n";
  }
  html +=
      "<footer>Written by moe inspect --data. Self-contained: inline SVG and CSS, no scripts. Hover a cell for its "
      "value.</footer>\n</main>\n</body>\n</html>\n";
  return html;
}

}  // namespace moe
