// The self-contained HTML report of `moe inspect --html`: loss curves, MaxVio_batch, a heatmap of
// expert share over steps, bias trajectories and load tables per MoE layer, and a side-by-side
// comparison when several runs are given. Inline SVG + CSS only: no scripts, no network, no fonts.
#pragma once
#include <string>
#include <vector>

#include "config/model_config.hpp"
#include "infer/routing.hpp"
#include "report/metrics.hpp"

namespace moe {

struct HtmlRun {
  std::string label;                    // e.g. run directory name
  const RunMetrics* metrics = nullptr;  // required
  const LoadReport* report = nullptr;   // required (build_load_report(*metrics, 0))
  const ModelConfig* model = nullptr;   // optional: model summary section when present
};

// One HTML document. Stable hooks for tests and scripts:
//   <svg class="chart" data-chart="loss|maxvio|heatmap|bias|compare-maxvio|compare-val-loss"
//        data-run="LABEL" data-layer="L|all">   (data-layer only on per-layer and overview charts)
//   <path class="series" data-series="NAME" data-role="raw|smoothed|eval|global|mean" data-points="N">
//   <rect class="cell"> heatmap cells; <section class="run" data-run="LABEL">; <section class="comparison">.
// Every inserted text is escaped. Non-finite values are skipped; long series are downsampled to a
// few hundred points and heatmaps binned to at most 200 step columns, so the file stays small.
std::string render_html_report(const std::vector<HtmlRun>& runs, const std::string& title);

// `moe inspect CHECKPOINT --data FILE --html F`: the co-activation lift of every MoE layer as an
// experts x experts heatmap (<svg class="chart" data-chart="co-activation" data-layer="L">).
std::string render_co_activation_html(const std::vector<CoActivation>& layers, const std::string& checkpoint,
                                      const std::string& data);

}  // namespace moe
