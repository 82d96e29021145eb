// The chart kit of the HTML report: escaping and number formatting, colours, and two charts drawn as
// inline SVG (a line chart and a share heatmap, each with its axes, legend or colour scale). It knows
// nothing of runs or metrics: the report sections fill its plain structs and paste the markup it returns.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/format.hpp"

namespace moe::svg {

// ---------------------------------------------------------------------------------------------
// Text

using moe::format;  // printf into a string (core/format.hpp)

// Escapes for both element content and quoted attribute values; drops control characters, which
// are not allowed in HTML text.
std::string escape(std::string_view text);

inline constexpr const char* kDash = "\xe2\x80\x93";  // en dash, for ranges and missing values

// Numbers as the report prints them; a non-finite value prints as kDash.
std::string fixed(double v, int decimals);         // 0.123
std::string signed_fixed(double v, int decimals);  // +0.123
std::string percent(double share);                 // 12.3%, or 0.12% below 1%
std::string thousands(int64_t n);                  // 1,234,567
std::string compact_count(int64_t n);              // 1.23M, 4.5K, 999

// ---------------------------------------------------------------------------------------------
// Colours: one categorical palette for series (runs, layers, experts, train/val), one diverging
// ramp for shares (blue = below the uniform share, white = uniform, red = above).

inline constexpr const char* kPalette[] = {"#4269d0", "#ff725c", "#3ca951", "#efb118", "#a463f2",
                                           "#6cc5b0", "#ff8ab7", "#9c6b4e", "#97bbf5", "#9498a0"};

inline const char* palette_color(size_t i) { return kPalette[i % std::size(kPalette)]; }

// Colour i of n series: the palette while it lasts, then hues a golden angle apart with three
// lightness levels, so that neighbouring experts (e.g. of 64) never look alike.
std::string series_color(size_t i, size_t n);

// Colour of a share on the diverging ramp: white at the uniform share, saturating at 1/4 and 4x it.
std::string share_color(double share, double uniform);

// ---------------------------------------------------------------------------------------------
// Series

struct Points {
  std::vector<double> x, y;
  size_t size() const { return x.size(); }
  void add(double px, double py) { x.push_back(px), y.push_back(py); }
};

// Half-width of the centred moving average drawn over noisy per-step curves; 0 = draw them raw.
size_t smoothing_half_window(size_t steps);

// Centred mean over [i - half, i + half] of the finite values (NaN where there are none).
std::vector<double> centred_mean(const std::vector<double>& y, size_t half);

// ---------------------------------------------------------------------------------------------
// Line chart

// Many series (e.g. 64 experts) would bury a chart under its legend: past this many, the first few
// are named and the rest summarised. Tables of more rows than this are folded away too.
inline constexpr size_t kMaxLegendEntries = 16;

struct Series {
  Series(std::string name_, std::string role_, std::string color_, Points points_)
      : name(std::move(name_)), role(std::move(role_)), color(std::move(color_)), points(std::move(points_)) {}
  std::string name;  // legend label and data-series
  std::string role;  // data-role: raw, smoothed, eval, global, mean
  std::string color;
  Points points;
  double width = 2.0, opacity = 1.0;
  bool markers = false;  // a dot at every point (sparse series such as evaluations)
  bool in_legend = true;
  std::string attributes;  // extra attributes, e.g. data-layer="1"
};

struct ReferenceLine {
  double y = 0;
  std::string label;
};

// A vertical line at x (e.g. the step a --resume continued from), labelled in its tooltip.
struct StepMarker {
  double x = 0;
  std::string label;
};

struct LineChart {
  std::string kind, run, layer;  // data-chart, data-run, data-layer ("" = none)
  std::string title, hint, x_title, y_title;
  std::vector<Series> series;
  std::vector<ReferenceLine> references;
  std::vector<StepMarker> step_markers;
  bool y_from_zero = false;
  bool y_log = false;
  std::string empty_message;  // shown when no series has a drawable point
  double width = 560, height = 300;
};

// A <figure> with the caption, the SVG and its legend. Non-finite points (and non-positive ones on a
// log axis) are skipped; long series are downsampled to a few hundred points, keeping their spikes.
std::string render_line_chart(const LineChart& chart);

// ---------------------------------------------------------------------------------------------
// Share heatmap

// Rows (e.g. experts) by columns (bins of an integer x such as the step), each cell coloured by the
// ratio of its share to the uniform share, with a colour scale marking the observed extremes.
struct ShareHeatmap {
  std::string kind = "heatmap", run, layer;  // data-chart, data-run, data-layer
  std::string title, label, hint;            // caption, SVG title, caption hint (shown when drawn)
  std::string x_title, y_title, row_name;    // axis titles; a cell's hover text names its row "ROW_NAME i"
  std::string scale_title;                   // above the colour scale
  std::string empty_message;                 // the whole chart, when there are no rows or columns
  std::string empty_cell, empty_note;        // a cell of an empty column; the scale when every column is empty
  size_t rows = 0;
  double uniform = 0;                      // the share that is drawn white
  int64_t x_first = 0, x_last = 0;         // x range covered by the columns, for the axis ticks
  std::vector<std::string> column_labels;  // hover text of each column; no columns = empty chart
  std::vector<double> shares;              // (columns, rows); NaN in a column with nothing to share
  std::string column_note;                 // after the observed extremes, e.g. "40 columns of ~5 steps"
  bool ratio_values = false;               // values are ratios (uniform 1), shown "2.50x", not as percentages
};

// A wide <figure> with the heatmap and its colour scale.
std::string render_share_heatmap(const ShareHeatmap& heatmap);

}  // namespace moe::svg
