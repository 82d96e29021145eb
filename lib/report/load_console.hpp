// Terminal rendering of load reports: per-layer expert tables with share bars, MaxVio sparklines,
// verdicts (coloured on a TTY only), and the side-by-side comparison of several runs.
#pragma once
#include <string>
#include <vector>

#include "report/metrics.hpp"

namespace moe {

// Unicode sparkline of `values` squeezed into at most `width` columns (bin means).
std::string sparkline(const std::vector<double>& values, size_t width);

std::string format_load_report(const RunMetrics& run, const LoadReport& report, bool color);

// The same report in one line per MoE layer (verdict, MaxVio early -> recent, the busiest expert's
// recent share), each cut to `width` columns: what `inspect --follow` shows when the full report
// does not fit the terminal.
std::string format_load_summary(const RunMetrics& run, const LoadReport& report, bool color, int width);
std::string format_comparison(const std::vector<const RunMetrics*>& runs, const std::vector<const LoadReport*>& reports,
                              bool color);

}  // namespace moe
