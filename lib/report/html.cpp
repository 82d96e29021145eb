// The HTML report: every chart is drawn here as inline SVG (a line chart and a heatmap), laid out with
// one stylesheet and one colour palette. Nothing is fetched: the file must open offline, forever.
#include "report/html.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string_view>
#include <utility>

#include "core/error.hpp"
#include "model/summary.hpp"

namespace moe {
namespace {

// ---------------------------------------------------------------------------------------------
// Text

template <class... Args>
std::string format(const char* pattern, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, pattern, args...);
  return buffer;
}

// Escapes for both element content and quoted attribute values; drops control characters, which
// are not allowed in HTML text.
std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\n' || c == '\t') out += c;
    }
  }
  return out;
}

const char* const kDash = "\xe2\x80\x93";  // en dash, for ranges and missing values

std::string fixed(double v, int decimals) { return std::isfinite(v) ? format("%.*f", decimals, v) : kDash; }

std::string percent(double share) {
  if (!std::isfinite(share)) return kDash;
  return format(share > 0 && share < 0.01 ? "%.2f%%" : "%.1f%%", 100.0 * share);
}

std::string signed_fixed(double v, int decimals) { return std::isfinite(v) ? format("%+.*f", decimals, v) : kDash; }

std::string thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string compact_count(int64_t n) {
  if (n >= 1000000) return format("%.2fM", double(n) / 1e6);
  if (n >= 1000) return format("%.1fK", double(n) / 1e3);
  return std::to_string(n);
}

std::string coord(double v) { return format("%.1f", v); }

// ---------------------------------------------------------------------------------------------
// Colours: one categorical palette for series (runs, layers, experts, train/val), one diverging
// ramp for the heatmap (blue = below the uniform share, white = uniform, red = above).

const char* const kPalette[] = {"#4269d0", "#ff725c", "#3ca951", "#efb118", "#a463f2",
                                "#6cc5b0", "#ff8ab7", "#9c6b4e", "#97bbf5", "#9498a0"};
constexpr size_t kPaletteSize = std::size(kPalette);
const char* const kTrainColor = kPalette[0];
const char* const kEvalColor = kPalette[1];
const char* const kReferenceColor = "#57606a";

struct Rgb {
  double r, g, b;
};

std::string hex(Rgb c) {
  auto byte = [](double v) { return int(std::lround(std::clamp(v, 0.0, 255.0))); };
  return format("#%02x%02x%02x", byte(c.r), byte(c.g), byte(c.b));
}

// hue in degrees, saturation and lightness in [0, 1].
std::string hsl(double hue, double saturation, double lightness) {
  const double c = (1 - std::abs(2 * lightness - 1)) * saturation;
  const double h = std::fmod(hue, 360.0) / 60.0;
  const double x = c * (1 - std::abs(std::fmod(h, 2.0) - 1));
  Rgb rgb{0, 0, 0};
  if (h < 1)
    rgb = {c, x, 0};
  else if (h < 2)
    rgb = {x, c, 0};
  else if (h < 3)
    rgb = {0, c, x};
  else if (h < 4)
    rgb = {0, x, c};
  else if (h < 5)
    rgb = {x, 0, c};
  else
    rgb = {c, 0, x};
  const double m = lightness - c / 2;
  return hex({255 * (rgb.r + m), 255 * (rgb.g + m), 255 * (rgb.b + m)});
}

// Colour i of n series: the palette while it lasts, then hues a golden angle apart with three
// lightness levels, so that neighbouring experts (e.g. of 64) never look alike.
std::string series_color(size_t i, size_t n) {
  if (n <= kPaletteSize) return kPalette[i % kPaletteSize];
  return hsl(137.508 * double(i), 0.68, 0.36 + 0.1 * double(i % 3));
}

// Heatmap position t in [-1, 1] of a share: log2(share / uniform) / 2, so 1/4 of the uniform share
// and 4x it saturate, and being half as loaded reads as strongly as being twice as loaded.
constexpr double kRatioOctaves = 2.0;

double share_position(double share, double uniform) {
  if (!(uniform > 0) || !std::isfinite(share)) return 0.0;
  if (share <= 0) return -1.0;
  return std::clamp(std::log2(share / uniform) / kRatioOctaves, -1.0, 1.0);
}

std::string diverging_color(double t) {
  // ColorBrewer RdBu, reversed so that overload is red.
  static const Rgb stops[] = {{5, 48, 97},     {33, 102, 172},  {67, 147, 195},  {146, 197, 222},
                              {209, 229, 240}, {247, 247, 247}, {253, 219, 199}, {244, 165, 130},
                              {214, 96, 77},   {178, 24, 43},   {103, 0, 31}};
  const double position = std::clamp((t + 1) / 2, 0.0, 1.0) * double(std::size(stops) - 1);
  const size_t i = std::min(size_t(position), std::size(stops) - 2);
  const double f = position - double(i);
  const Rgb a = stops[i], b = stops[i + 1];
  return hex({a.r + (b.r - a.r) * f, a.g + (b.g - a.g) * f, a.b + (b.b - a.b) * f});
}

std::string share_color(double share, double uniform) { return diverging_color(share_position(share, uniform)); }

// ---------------------------------------------------------------------------------------------
// Series preparation

struct Points {
  std::vector<double> x, y;
  size_t size() const { return x.size(); }
  void add(double px, double py) { x.push_back(px), y.push_back(py); }
};

// Drops non-finite points (and non-positive ones for a log axis).
Points drawable(const Points& in, bool positive_only) {
  Points out;
  for (size_t i = 0; i < in.size(); ++i)
    if (std::isfinite(in.x[i]) && std::isfinite(in.y[i]) && (!positive_only || in.y[i] > 0)) out.add(in.x[i], in.y[i]);
  return out;
}

// At most ~max_points: the smallest and largest value of each of max_points / 2 buckets, in order,
// so spikes survive the downsampling (a plain stride would hide them).
constexpr size_t kMaxSeriesPoints = 400;

Points downsample(const Points& in, size_t max_points) {
  if (in.size() <= max_points) return in;
  const size_t buckets = std::max<size_t>(1, max_points / 2);
  Points out;
  for (size_t b = 0; b < buckets; ++b) {
    const size_t from = b * in.size() / buckets, to = (b + 1) * in.size() / buckets;
    if (from >= to) continue;
    size_t lo = from, hi = from;
    for (size_t i = from; i < to; ++i) {
      if (in.y[i] < in.y[lo]) lo = i;
      if (in.y[i] > in.y[hi]) hi = i;
    }
    const size_t first = std::min(lo, hi), second = std::max(lo, hi);
    out.add(in.x[first], in.y[first]);
    if (second != first) out.add(in.x[second], in.y[second]);
  }
  return out;
}

// Half-width of the centred moving average drawn over noisy per-step curves; 0 = draw them raw.
size_t smoothing_half_window(size_t steps) { return steps >= 120 ? std::min<size_t>(100, steps / 60) : 0; }

// Centred mean over [i - half, i + half] of the finite values (NaN where there are none).
std::vector<double> centred_mean(const std::vector<double>& y, size_t half) {
  const size_t n = y.size();
  std::vector<double> sum(n + 1, 0.0), count(n + 1, 0.0), out(n);
  for (size_t i = 0; i < n; ++i) {
    const bool ok = std::isfinite(y[i]);
    sum[i + 1] = sum[i] + (ok ? y[i] : 0.0);
    count[i + 1] = count[i] + (ok ? 1.0 : 0.0);
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t from = i >= half ? i - half : 0, to = std::min(n, i + half + 1);
    const double c = count[to] - count[from];
    out[i] = c > 0 ? (sum[to] - sum[from]) / c : std::nan("");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Axes

struct Scale {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<double> ticks;
  double step = 1;  // tick spacing of a linear scale, for labels

  double fraction(double v) const {
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

double nice_step(double raw, bool integer) {
  if (!(raw > 0) || !std::isfinite(raw)) return 1.0;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  const double m = raw / power;
  double step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * power;
  if (integer) step = std::max(1.0, std::round(step));
  return step;
}

// Ticks at 1/2/5 x 10^k. snap: widen [lo, hi] to whole ticks (y axes); x axes keep the data range.
Scale linear_scale(double lo, double hi, int target_ticks, bool snap, bool integer) {
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;
  if (!(hi > lo)) {
    const double pad = integer ? 1.0 : (lo == 0 ? 1.0 : std::abs(lo) * 0.1);
    lo -= pad, hi += pad;
  }
  Scale s;
  s.step = nice_step((hi - lo) / target_ticks, integer);
  if (snap) lo = std::floor(lo / s.step) * s.step, hi = std::ceil(hi / s.step) * s.step;
  s.lo = lo, s.hi = hi;
  const double first = std::ceil(lo / s.step - 1e-9);
  for (double k = first; k * s.step <= hi + s.step * 1e-9 && s.ticks.size() < 64; k += 1) s.ticks.push_back(k * s.step);
  return s;
}

Scale log_scale(double lo, double hi) {
  Scale s;
  s.log = true;
  double a = std::floor(std::log10(lo)), b = std::ceil(std::log10(hi));
  if (b <= a) b = a + 1;
  s.lo = std::pow(10.0, a), s.hi = std::pow(10.0, b);
  for (double k = a; k <= b; k += 1) {
    s.ticks.push_back(std::pow(10.0, k));
    if (b - a <= 2 && k < b) s.ticks.push_back(2 * std::pow(10.0, k)), s.ticks.push_back(5 * std::pow(10.0, k));
  }
  std::sort(s.ticks.begin(), s.ticks.end());
  return s;
}

std::string tick_label(const Scale& s, double v) {
  if (s.log) return format("%g", v);
  if (std::abs(v) < s.step * 1e-6) return "0";
  if (s.step >= 1000 && std::abs(v) >= 10000) return format("%gk", v / 1000);
  const int decimals = s.step >= 1 ? 0 : int(std::ceil(-std::log10(s.step) - 1e-9));
  if (decimals > 4) return format("%.0e", v);
  return format("%.*f", decimals, v);
}

// ---------------------------------------------------------------------------------------------
// Line chart

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

struct LineChart {
  std::string kind, run, layer;  // data-chart, data-run, data-layer ("" = none)
  std::string title, hint, x_title, y_title;
  std::vector<Series> series;
  std::vector<ReferenceLine> references;
  bool y_from_zero = false;
  bool y_log = false;
  std::string empty_message;  // shown when no series has a drawable point
  double width = 560, height = 300;
};

struct Frame {
  double left = 62, right = 18, top = 14, bottom = 48;
  double width = 560, height = 300;
  double x0() const { return left; }
  double x1() const { return width - right; }
  double y0() const { return top; }
  double y1() const { return height - bottom; }
};

std::string svg_open(const std::string& kind, const std::string& run, const std::string& layer,
                     const std::string& title, double width, double height) {
  std::string out = "<svg class=\"chart\" data-chart=\"" + escape(kind) + "\"";
  if (!run.empty()) out += " data-run=\"" + escape(run) + "\"";
  if (!layer.empty()) out += " data-layer=\"" + escape(layer) + "\"";
  out += " viewBox=\"0 0 " + coord(width) + " " + coord(height) + "\" role=\"img\" aria-label=\"" + escape(title) +
         "\"><title>" + escape(title) + "</title>\n";
  return out;
}

std::string axes(const Frame& f, const Scale& x, const Scale& y, const std::string& x_title,
                 const std::string& y_title) {
  std::string out = "<g class=\"grid\">";
  for (double t : y.ticks) {
    const double py = f.y1() - y.fraction(t) * (f.y1() - f.y0());
    out += "<line x1=\"" + coord(f.x0()) + "\" x2=\"" + coord(f.x1()) + "\" y1=\"" + coord(py) + "\" y2=\"" +
           coord(py) + "\"" + (!y.log && std::abs(t) < y.step * 1e-6 ? " class=\"zero\"" : "") + "/>";
  }
  out += "</g>\n<g class=\"axis\">";
  out += "<line class=\"domain\" x1=\"" + coord(f.x0()) + "\" x2=\"" + coord(f.x1()) + "\" y1=\"" + coord(f.y1()) +
         "\" y2=\"" + coord(f.y1()) + "\"/>";
  for (double t : x.ticks) {
    const double px = f.x0() + x.fraction(t) * (f.x1() - f.x0());
    out += "<line class=\"tick-mark\" x1=\"" + coord(px) + "\" x2=\"" + coord(px) + "\" y1=\"" + coord(f.y1()) +
           "\" y2=\"" + coord(f.y1() + 5) + "\"/>";
    out += "<text class=\"tick\" x=\"" + coord(px) + "\" y=\"" + coord(f.y1() + 18) + "\" text-anchor=\"middle\">" +
           tick_label(x, t) + "</text>";
  }
  for (double t : y.ticks) {
    const double py = f.y1() - y.fraction(t) * (f.y1() - f.y0());
    out += "<text class=\"tick\" x=\"" + coord(f.x0() - 8) + "\" y=\"" + coord(py + 4) + "\" text-anchor=\"end\">" +
           tick_label(y, t) + "</text>";
  }
  out += "</g>\n";
  out += "<text class=\"axis-title\" x=\"" + coord((f.x0() + f.x1()) / 2) + "\" y=\"" + coord(f.height - 8) +
         "\" text-anchor=\"middle\">" + escape(x_title) + "</text>\n";
  out += "<text class=\"axis-title\" transform=\"translate(14 " + coord((f.y0() + f.y1()) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">" + escape(y_title) + "</text>\n";
  return out;
}

struct LegendEntry {
  std::string name, color;
  double opacity = 1.0;
};

// Many series (e.g. 64 experts) would bury the chart under its legend: the first few are named,
// the rest are summarised, and every line names itself on hover.
constexpr size_t kMaxLegendEntries = 16;

std::string legend_html(const std::vector<LegendEntry>& entries, const std::vector<std::string>& dashed) {
  if (entries.empty() && dashed.empty()) return "";
  std::string out = "<ul class=\"legend\">";
  const size_t shown = entries.size() > kMaxLegendEntries ? 6 : entries.size();
  for (size_t i = 0; i < shown; ++i)
    out += "<li><span class=\"swatch\" style=\"background:" + entries[i].color +
           (entries[i].opacity < 1 ? format(";opacity:%.2g", entries[i].opacity) : std::string()) + "\"></span>" +
           escape(entries[i].name) + "</li>";
  if (shown < entries.size())
    out += "<li>" + std::string("\xe2\x80\xa6 ") + escape(entries.back().name) + " (" + std::to_string(entries.size()) +
           " lines; hover a line for its name)</li>";
  for (const auto& name : dashed) out += "<li><span class=\"swatch dashed\"></span>" + escape(name) + "</li>";
  return out + "</ul>\n";
}

std::string figure(const std::string& title, const std::string& hint, const std::string& svg, const std::string& legend,
                   const std::string& extra_class = "") {
  std::string out = "<figure class=\"chart-box" + (extra_class.empty() ? "" : " " + extra_class) + "\">";
  out += "<figcaption>" + escape(title);
  if (!hint.empty()) out += "<span class=\"hint\">" + escape(hint) + "</span>";
  out += "</figcaption>\n" + svg + legend + "</figure>\n";
  return out;
}

std::string render_line_chart(const LineChart& chart) {
  Frame f;
  f.width = chart.width, f.height = chart.height;
  std::vector<Points> drawn;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const Series& s : chart.series) {
    drawn.push_back(downsample(drawable(s.points, chart.y_log), kMaxSeriesPoints));
    for (size_t i = 0; i < drawn.back().size(); ++i) {
      xmin = std::min(xmin, drawn.back().x[i]), xmax = std::max(xmax, drawn.back().x[i]);
      ymin = std::min(ymin, drawn.back().y[i]), ymax = std::max(ymax, drawn.back().y[i]);
    }
  }
  const bool empty = !(xmax >= xmin);
  std::string svg = svg_open(chart.kind, chart.run, chart.layer, chart.title, f.width, f.height);
  if (empty) {
    svg += "<rect class=\"plot-frame\" x=\"" + coord(f.x0()) + "\" y=\"" + coord(f.y0()) + "\" width=\"" +
           coord(f.x1() - f.x0()) + "\" height=\"" + coord(f.y1() - f.y0()) + "\"/>";
    svg += "<text class=\"empty\" x=\"" + coord((f.x0() + f.x1()) / 2) + "\" y=\"" + coord((f.y0() + f.y1()) / 2) +
           "\" text-anchor=\"middle\">" + escape(chart.empty_message.empty() ? "no data" : chart.empty_message) +
           "</text>\n</svg>\n";
    return figure(chart.title, chart.hint, svg, "");
  }
  for (const auto& r : chart.references)
    if (!chart.y_log || r.y > 0) ymin = std::min(ymin, r.y), ymax = std::max(ymax, r.y);
  if (chart.y_from_zero && !chart.y_log) ymin = std::min(ymin, 0.0), ymax = std::max(ymax, 0.0);
  const Scale x = linear_scale(xmin, xmax, 6, false, true);
  const Scale y = chart.y_log ? log_scale(ymin, ymax) : linear_scale(ymin, ymax, 5, true, false);
  svg += axes(f, x, y, chart.x_title, chart.y_title);
  auto px = [&](double v) { return f.x0() + x.fraction(v) * (f.x1() - f.x0()); };
  auto py = [&](double v) { return f.y1() - y.fraction(std::clamp(v, y.lo, y.hi)) * (f.y1() - f.y0()); };

  std::vector<std::string> dashed;
  for (const auto& r : chart.references) {
    if (chart.y_log && r.y <= 0) continue;
    svg += "<line class=\"reference\" x1=\"" + coord(f.x0()) + "\" x2=\"" + coord(f.x1()) + "\" y1=\"" +
           coord(py(r.y)) + "\" y2=\"" + coord(py(r.y)) + "\"/>";
    svg += "<text class=\"reference-label\" x=\"" + coord(f.x1() - 4) + "\" y=\"" + coord(py(r.y) - 5) +
           "\" text-anchor=\"end\">" + escape(r.label) + "</text>\n";
    dashed.push_back(r.label);
  }
  std::vector<LegendEntry> legend;
  for (size_t si = 0; si < chart.series.size(); ++si) {
    const Series& s = chart.series[si];
    const Points& p = drawn[si];
    if (p.size() == 0) continue;
    if (s.in_legend) legend.push_back({s.name, s.color, std::max(s.opacity, 0.45)});
    std::string d;
    d.reserve(p.size() * 14);
    for (size_t i = 0; i < p.size(); ++i) {
      d += i ? 'L' : 'M';
      d += coord(px(p.x[i]));
      d += ' ';
      d += coord(py(p.y[i]));
    }
    svg += "<path class=\"series\" data-series=\"" + escape(s.name) + "\" data-role=\"" + escape(s.role) +
           "\" data-points=\"" + std::to_string(p.size()) + "\"" + s.attributes + " d=\"" + d + "\" stroke=\"" +
           s.color + "\" stroke-width=\"" + format("%.2g", s.width) + "\"" +
           (s.opacity < 1 ? " stroke-opacity=\"" + format("%.2g", s.opacity) + "\"" : "") + "><title>" +
           escape(s.name) + "</title></path>\n";
    // A lone point draws no line, so it always gets a dot.
    if (s.markers || p.size() == 1) {
      svg += "<g class=\"markers\" fill=\"" + s.color + "\">";
      for (size_t i = 0; i < p.size(); ++i)
        svg += "<circle cx=\"" + coord(px(p.x[i])) + "\" cy=\"" + coord(py(p.y[i])) + "\" r=\"3.5\"><title>" +
               escape(s.name) + format(": step %.0f, %.4g", p.x[i], p.y[i]) + "</title></circle>";
      svg += "</g>\n";
    }
  }
  svg += "</svg>\n";
  return figure(chart.title, chart.hint, svg, legend_html(legend, dashed));
}

// ---------------------------------------------------------------------------------------------
// Run data

Points train_series(const RunMetrics& run, double TrainPoint::*field) {
  Points p;
  for (const TrainPoint& t : run.train) p.add(double(t.step), t.*field);
  return p;
}

Points val_loss_series(const RunMetrics& run) {
  Points p;
  for (const EvalPoint& e : run.eval) p.add(double(e.step), e.val_loss);
  return p;
}

// Per-step MaxVio_batch averaged over the MoE layers (finite values only).
Points mean_maxvio_series(const RunMetrics& run) {
  Points p;
  for (const TrainPoint& t : run.train) {
    double sum = 0;
    int count = 0;
    for (const LayerPoint& l : t.layers)
      if (std::isfinite(l.maxvio)) sum += l.maxvio, ++count;
    p.add(double(t.step), count > 0 ? sum / count : std::nan(""));
  }
  return p;
}

double mean_tokens_per_s(const RunMetrics& run) {
  double sum = 0;
  int64_t count = 0;
  for (const TrainPoint& t : run.train)
    if (std::isfinite(t.tokens_per_s) && t.tokens_per_s > 0) sum += t.tokens_per_s, ++count;
  return count > 0 ? sum / double(count) : std::nan("");
}

double last_finite_val_loss(const RunMetrics& run) {
  for (auto it = run.eval.rbegin(); it != run.eval.rend(); ++it)
    if (std::isfinite(it->val_loss)) return it->val_loss;
  return std::nan("");
}

double recent_maxvio_mean(const LoadReport& report) {
  double sum = 0;
  int count = 0;
  for (const auto& l : report.layers)
    if (std::isfinite(l.recent_maxvio)) sum += l.recent_maxvio, ++count;
  return count > 0 ? sum / count : std::nan("");
}

// Adds the raw curve (thin, faint) and, for long runs, its centred mean (bold) as two series.
void add_noisy_series(LineChart& chart, const std::string& name, const std::string& color, const Points& raw,
                      const std::string& attributes, bool legend_raw) {
  const size_t half = smoothing_half_window(raw.size());
  Series r{name, "raw", color, raw};
  r.attributes = attributes;
  if (half == 0) {
    chart.series.push_back(std::move(r));
    return;
  }
  r.width = 1.0, r.opacity = 0.3, r.in_legend = legend_raw;
  if (legend_raw) r.name = name + " (each step)";
  chart.series.push_back(std::move(r));
  Series s{name, "smoothed", color, {raw.x, centred_mean(raw.y, half)}};
  s.width = 2.2, s.attributes = attributes;
  chart.series.push_back(std::move(s));
  chart.hint = format("thin: each step; bold: centred mean over %d steps", int(2 * half + 1));
}

std::string run_anchor(size_t run_index) { return "run-" + std::to_string(run_index); }

std::string badge(Verdict v) {
  const char* cls = v == Verdict::balanced ? "balanced" : v == Verdict::converging ? "converging" : "diverging";
  return std::string("<span class=\"badge ") + cls + "\">" + to_string(v) + "</span>";
}

// ---------------------------------------------------------------------------------------------
// Charts of one run

std::string loss_chart(const HtmlRun& r) {
  LineChart c;
  c.kind = "loss", c.run = r.label;
  c.title = "Loss";
  c.x_title = "step", c.y_title = "loss (nats/byte)";
  c.empty_message = "no train or eval lines yet";
  add_noisy_series(c, "train loss", kTrainColor, train_series(*r.metrics, &TrainPoint::loss), "", true);
  Series val{"validation loss", "eval", kEvalColor, val_loss_series(*r.metrics)};
  val.markers = val.points.size() <= 60, val.width = 2.2;
  c.series.push_back(std::move(val));
  return render_line_chart(c);
}

std::string maxvio_overview_chart(const HtmlRun& r) {
  LineChart c;
  c.kind = "maxvio", c.run = r.label, c.layer = "all";
  c.title = "MaxVio_batch, all MoE layers";
  c.x_title = "step", c.y_title = "MaxVio_batch (unitless)";
  c.y_from_zero = true;
  c.empty_message = "no train lines yet";
  c.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  const auto& layers = r.report->layers;
  const size_t half = smoothing_half_window(r.metrics->train.size());
  for (size_t li = 0; li < layers.size(); ++li) {
    Points p;
    for (size_t i = 0; i < layers[li].steps.size(); ++i) p.add(double(layers[li].steps[i]), layers[li].maxvio_batch[i]);
    Series s{"layer " + std::to_string(layers[li].layer), half ? "smoothed" : "raw", kPalette[li % kPaletteSize],
             half ? Points{p.x, centred_mean(p.y, half)} : p};
    s.attributes = " data-layer=\"" + std::to_string(layers[li].layer) + "\"";
    c.series.push_back(std::move(s));
  }
  if (half) c.hint = format("centred mean over %d steps", int(2 * half + 1));
  return render_line_chart(c);
}

std::string maxvio_layer_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const std::string id = std::to_string(layer.layer);
  LineChart c;
  c.kind = "maxvio", c.run = r.label, c.layer = id;
  c.title = "MaxVio over training";
  c.x_title = "step", c.y_title = "MaxVio (unitless)";
  c.y_from_zero = true;
  c.empty_message = "no train or eval lines yet";
  c.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  Points batch;
  for (size_t i = 0; i < layer.steps.size(); ++i) batch.add(double(layer.steps[i]), layer.maxvio_batch[i]);
  const std::string attributes = " data-layer=\"" + id + "\"";
  add_noisy_series(c, "MaxVio_batch", kPalette[li % kPaletteSize], batch, attributes, false);
  Points global;
  for (const EvalPoint& e : r.metrics->eval)
    for (const LayerPoint& l : e.layers)
      if (l.layer == layer.layer) global.add(double(e.step), l.maxvio);
  Series g{"MaxVio_global (eval)", "global", "#1f2328", global};
  g.markers = true, g.width = 1.2, g.attributes = attributes;
  c.series.push_back(std::move(g));
  return render_line_chart(c);
}

std::string bias_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const size_t experts = layer.experts.size();
  LineChart c;
  c.kind = "bias", c.run = r.label, c.layer = std::to_string(layer.layer);
  c.title = "Routing bias per expert";
  c.x_title = "step", c.y_title = "bias (added to routing scores)";
  c.y_from_zero = true;
  std::vector<Points> bias(experts);
  bool any = false, nonzero = false;
  for (const TrainPoint& t : r.metrics->train) {
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
      Series s{"expert " + std::to_string(e), "raw", series_color(e, experts), std::move(bias[e])};
      s.width = experts > 16 ? 1.2 : 1.8;
      s.attributes = " data-layer=\"" + c.layer + "\" data-expert=\"" + std::to_string(e) + "\"";
      c.series.push_back(std::move(s));
    }
  }
  if (nonzero) c.hint = "overloaded experts are pushed down, idle ones up";
  return render_line_chart(c);
}

// Expert share of routed tokens per step bin (columns) and expert (rows), coloured by the ratio to
// the uniform share 1/E.
std::string heatmap_chart(const HtmlRun& r, size_t li) {
  const LayerLoadReport& layer = r.report->layers[li];
  const std::string id = std::to_string(layer.layer);
  const size_t experts = layer.experts.size();
  const double uniform = experts > 0 ? 1.0 / double(experts) : 0.0;
  const std::string title = "Expert share of routed tokens";

  int64_t first = INT64_MAX, last = INT64_MIN;
  for (const TrainPoint& t : r.metrics->train)
    if (li < t.layers.size() && t.layers[li].counts.size() == experts)
      first = std::min(first, t.step), last = std::max(last, t.step);

  Frame f;
  f.width = 1120, f.left = 76, f.right = 24;
  const double row = experts == 0 ? 20 : std::clamp(440.0 / double(experts), 7.0, 24.0);
  const double plot_height = std::max(80.0, row * double(std::max<size_t>(experts, 1)));
  f.height = f.top + plot_height + 104;
  f.bottom = 104;
  std::string svg = svg_open("heatmap", r.label, id, title + ", layer " + id, f.width, f.height);
  if (experts == 0 || first > last) {
    svg += "<rect class=\"plot-frame\" x=\"" + coord(f.x0()) + "\" y=\"" + coord(f.y0()) + "\" width=\"" +
           coord(f.x1() - f.x0()) + "\" height=\"" + coord(f.y1() - f.y0()) + "\"/><text class=\"empty\" x=\"" +
           coord((f.x0() + f.x1()) / 2) + "\" y=\"" + coord((f.y0() + f.y1()) / 2) +
           "\" text-anchor=\"middle\">no train lines yet</text>\n</svg>\n";
    return figure(title, "", svg, "", "wide");
  }

  // Bin steps into columns: at most 200, and fewer for many experts to keep the file small.
  const int64_t span = last - first + 1;
  const int64_t columns =
      std::max<int64_t>(1, std::min<int64_t>({200, span, std::max<int64_t>(24, 6000 / int64_t(experts))}));
  std::vector<double> counts(size_t(columns) * experts, 0.0), totals(size_t(columns), 0.0);
  std::vector<int64_t> bin_first(size_t(columns), INT64_MAX), bin_last(size_t(columns), INT64_MIN);
  for (const TrainPoint& t : r.metrics->train) {
    if (li >= t.layers.size() || t.layers[li].counts.size() != experts) continue;
    const size_t c = size_t(std::min<int64_t>(columns - 1, (t.step - first) * columns / span));
    for (size_t e = 0; e < experts; ++e) {
      counts[c * experts + e] += double(t.layers[li].counts[e]);
      totals[c] += double(t.layers[li].counts[e]);
    }
    bin_first[c] = std::min(bin_first[c], t.step), bin_last[c] = std::max(bin_last[c], t.step);
  }
  double min_share = INFINITY, max_share = -INFINITY;
  for (size_t c = 0; c < size_t(columns); ++c)
    if (totals[c] > 0)
      for (size_t e = 0; e < experts; ++e)
        min_share = std::min(min_share, counts[c * experts + e] / totals[c]),
        max_share = std::max(max_share, counts[c * experts + e] / totals[c]);

  // x: step s is centred in [s - 0.5, s + 0.5], so bins tile the axis exactly.
  Scale x = linear_scale(double(first), double(last), 10, false, true);
  x.lo = double(first) - 0.5, x.hi = double(last) + 0.5;
  const double plot_width = f.x1() - f.x0(), column_width = plot_width / double(columns);
  svg += "<g class=\"cells\" shape-rendering=\"crispEdges\">";
  for (size_t c = 0; c < size_t(columns); ++c) {
    const double cx = f.x0() + double(c) * column_width;
    const std::string steps = bin_first[c] == bin_last[c]
                                  ? format("step %lld", (long long)bin_first[c])
                                  : format("steps %lld%s%lld", (long long)bin_first[c], kDash, (long long)bin_last[c]);
    for (size_t e = 0; e < experts; ++e) {
      const double y = f.y0() + double(e) * row;
      const bool has = totals[c] > 0;
      const double share = has ? counts[c * experts + e] / totals[c] : 0.0;
      svg += "<rect class=\"cell" + std::string(has ? "" : " empty") + "\" x=\"" + coord(cx) + "\" y=\"" + coord(y) +
             "\" width=\"" + format("%.2f", column_width + (c + 1 < size_t(columns) ? 0.4 : 0.0)) + "\" height=\"" +
             format("%.2f", row + (e + 1 < experts ? 0.4 : 0.0)) + "\" fill=\"" +
             (has ? share_color(share, uniform) : std::string("#e4e7eb")) + "\"><title>expert " + std::to_string(e) +
             ", " + (bin_first[c] <= bin_last[c] ? steps : "no steps") + ": " +
             (has ? percent(share) : std::string("no tokens")) + "</title></rect>";
    }
  }
  svg += "</g>\n<rect class=\"plot-outline\" x=\"" + coord(f.x0()) + "\" y=\"" + coord(f.y0()) + "\" width=\"" +
         coord(plot_width) + "\" height=\"" + coord(plot_height) + "\"/>\n";
  // Axes: experts down the left, steps along the bottom.
  const size_t label_every = std::max<size_t>(1, (experts + 31) / 32);
  svg += "<g class=\"axis\">";
  for (size_t e = 0; e < experts; e += label_every)
    svg += "<text class=\"tick\" x=\"" + coord(f.x0() - 6) + "\" y=\"" + coord(f.y0() + (double(e) + 0.5) * row + 4) +
           "\" text-anchor=\"end\">" + std::to_string(e) + "</text>";
  const double y_axis = f.y0() + plot_height;
  for (double t : x.ticks) {
    const double px = f.x0() + x.fraction(t) * plot_width;
    svg += "<line class=\"tick-mark\" x1=\"" + coord(px) + "\" x2=\"" + coord(px) + "\" y1=\"" + coord(y_axis) +
           "\" y2=\"" + coord(y_axis + 5) + "\"/><text class=\"tick\" x=\"" + coord(px) + "\" y=\"" +
           coord(y_axis + 18) + "\" text-anchor=\"middle\">" + tick_label(x, t) + "</text>";
  }
  svg += "</g>\n<text class=\"axis-title\" x=\"" + coord(f.x0() + plot_width / 2) + "\" y=\"" + coord(y_axis + 36) +
         "\" text-anchor=\"middle\">step</text>\n<text class=\"axis-title\" transform=\"translate(16 " +
         coord(f.y0() + plot_height / 2) + ") rotate(-90)\" text-anchor=\"middle\">expert</text>\n";

  // Colour scale: share from 1/4 to 4x uniform, with the observed min and max marked on it.
  const double bar_x = f.x0(), bar_w = 360, bar_y = y_axis + 62, bar_h = 12;
  svg += "<g class=\"color-scale\" data-uniform=\"" + format("%.6g", uniform) + "\" data-min=\"" +
         format("%.6g", std::isfinite(min_share) ? min_share : 0.0) + "\" data-max=\"" +
         format("%.6g", std::isfinite(max_share) ? max_share : 0.0) + "\" shape-rendering=\"crispEdges\">";
  svg += "<text class=\"axis-title\" x=\"" + coord(bar_x) + "\" y=\"" + coord(bar_y - 8) +
         "\">share of routed tokens (colour: ratio to uniform)</text>";
  const int steps = 72;
  for (int i = 0; i < steps; ++i)
    svg += "<rect x=\"" + coord(bar_x + bar_w * i / steps) + "\" y=\"" + coord(bar_y) + "\" width=\"" +
           format("%.2f", bar_w / steps + 0.4) + "\" height=\"" + coord(bar_h) + "\" fill=\"" +
           diverging_color(-1.0 + 2.0 * (i + 0.5) / steps) + "\"/>";
  svg += "<rect class=\"plot-outline\" x=\"" + coord(bar_x) + "\" y=\"" + coord(bar_y) + "\" width=\"" + coord(bar_w) +
         "\" height=\"" + coord(bar_h) + "\"/>";
  auto bar_pos = [&](double share) { return bar_x + (share_position(share, uniform) + 1) / 2 * bar_w; };
  for (double ratio : {0.25, 0.5, 1.0, 2.0, 4.0}) {
    const double px = bar_pos(ratio * uniform);
    svg += "<line class=\"tick-mark\" x1=\"" + coord(px) + "\" x2=\"" + coord(px) + "\" y1=\"" + coord(bar_y + bar_h) +
           "\" y2=\"" + coord(bar_y + bar_h + 4) + "\"/><text class=\"tick\" x=\"" + coord(px) + "\" y=\"" +
           coord(bar_y + bar_h + 16) + "\" text-anchor=\"middle\">" + percent(ratio * uniform) +
           (ratio == 1.0 ? " = 1/" + std::to_string(experts) : std::string()) + "</text>";
  }
  // Observed extremes, as markers above the bar.
  std::string extremes;
  if (std::isfinite(min_share)) {
    for (const auto& [share, name] : {std::pair<double, const char*>{min_share, "min"}, {max_share, "max"}}) {
      const double px = bar_pos(share);
      svg += "<path class=\"extreme\" d=\"M" + coord(px - 5) + " " + coord(bar_y - 6) + "L" + coord(px + 5) + " " +
             coord(bar_y - 6) + "L" + coord(px) + " " + coord(bar_y) + "Z\"/>";
      extremes += std::string(extremes.empty() ? "" : ", ") + name + " " + percent(share);
    }
  }
  svg += "<text class=\"scale-note\" x=\"" + coord(bar_x + bar_w + 18) + "\" y=\"" + coord(bar_y + 10) + "\">" +
         (extremes.empty() ? std::string("no tokens were routed") : "observed " + extremes) + " (" +
         format("%lld", (long long)columns) + (columns == 1 ? " column" : " columns") +
         (span > columns ? format(" of ~%lld steps", (long long)((span + columns - 1) / columns)) : "") + ")</text>";
  svg += "</g>\n</svg>\n";
  return figure(title, "rows: experts; columns: steps; white = uniform share, red = overloaded, blue = idle", svg, "",
                "wide");
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
  std::string out = experts > kMaxLegendEntries
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
    out += "<tr><td><span class=\"dot\" style=\"background:" + series_color(size_t(e.expert), experts) + "\"></span>" +
           std::to_string(e.expert) + "</td><td>" + percent(e.early) + "</td><td>" + percent(e.recent) +
           "</td><td class=\"bar-col\"><div class=\"bar\"><b style=\"width:" + bar_width(e.early) +
           "%\"></b><span style=\"width:" + bar_width(e.recent) + "%;background:" + share_color(e.recent, uniform) +
           "\"></span><i style=\"left:" + format("%.1f", bar_scale > 0 ? 100 * uniform / bar_scale : 0.0) +
           "%\"></i></div></td><td>" + percent(e.min) + "</td><td>" + percent(e.max) + "</td><td>" +
           signed_fixed(e.bias, 4) + "</td></tr>\n";
  }
  out += "</tbody></table></div>\n";
  if (experts > kMaxLegendEntries) out += "</details>\n";
  return out;
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
             (long long)c.num_hidden_layers, (long long)c.first_k_dense_replace, (long long)c.num_moe_layers(),
             (long long)c.hidden_size, (long long)c.num_attention_heads, (long long)c.max_position_embeddings);
  if (c.num_moe_layers() > 0)
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

std::string run_section(const HtmlRun& r, size_t run_index, size_t run_count) {
  const RunMetrics& m = *r.metrics;
  const LoadReport& report = *r.report;
  std::string out =
      "<section class=\"card run\" id=\"" + run_anchor(run_index) + "\" data-run=\"" + escape(r.label) + "\">\n<h2>";
  if (run_count > 1)
    out +=
        "<span class=\"dot big\" style=\"background:" + std::string(kPalette[run_index % kPaletteSize]) + "\"></span>";
  out += escape(r.label.empty() ? m.path : r.label) + " " +
         (m.ended ? "<span class=\"badge ended\">ended</span>" : "<span class=\"badge running\">in progress</span>") +
         "</h2>\n<dl class=\"facts\">";
  out += fact("metrics", m.path.empty() ? kDash : "<code>" + escape(m.path) + "</code>");
  if (m.train.empty())
    out += fact("steps", "no train lines yet");
  else
    out += fact("steps", thousands(int64_t(m.train.size())) + " logged (" + thousands(m.train.front().step) + kDash +
                             thousands(m.train.back().step) + ")");
  out += fact("status", m.ended ? "ended (an end line was written)" : "in progress: the file may still grow");
  if (m.eval.empty())
    out += fact("evaluations", "none yet");
  else
    out += fact("evaluations", std::to_string(m.eval.size()) + " (steps " + std::to_string(m.eval.front().step) +
                                   kDash + std::to_string(m.eval.back().step) + ")");
  out += fact("final validation loss", fixed(last_finite_val_loss(m), 4) + (m.eval.empty() ? "" : " nats/byte"));
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
  out += "</dl>\n";
  if (!m.notes.empty()) {
    out += "<ul class=\"notes\">";
    for (const auto& n : m.notes) out += "<li>" + escape(n) + "</li>";
    out += "</ul>\n";
  }
  if (r.model) out += model_section(*r.model);

  out += "<h3>Training</h3>\n<div class=\"grid2\">\n" + loss_chart(r);
  if (!report.layers.empty()) out += maxvio_overview_chart(r);
  out += "</div>\n";
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
    out += load_table(r, li);
    out += "</section>\n";
  }
  return out + "</section>\n";
}

std::string comparison_section(const std::vector<HtmlRun>& runs) {
  std::vector<int64_t> layer_ids;
  for (const auto& r : runs)
    for (const auto& l : r.report->layers)
      if (std::find(layer_ids.begin(), layer_ids.end(), l.layer) == layer_ids.end()) layer_ids.push_back(l.layer);
  std::sort(layer_ids.begin(), layer_ids.end());

  // The best (lowest) value of a column is highlighted.
  auto lowest = [&](auto value) {
    double best = INFINITY;
    for (const auto& r : runs)
      if (double v = value(r); std::isfinite(v)) best = std::min(best, v);
    return best;
  };
  const double best_val = lowest([](const HtmlRun& r) { return last_finite_val_loss(*r.metrics); });
  const double best_recent = lowest([](const HtmlRun& r) { return recent_maxvio_mean(*r.report); });
  auto cell = [](double v, double best, int decimals) {
    return std::string(std::isfinite(v) && v == best ? "<td class=\"best\">" : "<td>") + fixed(v, decimals) + "</td>";
  };

  std::string out = "<section class=\"card comparison\" id=\"comparison\">\n<h2>Comparison of " +
                    std::to_string(runs.size()) +
                    " runs</h2>\n<div class=\"table-wrap\"><table class=\"compare\">\n"
                    "<thead><tr><th>run</th><th>steps</th><th>final val loss<br><small>nats/byte</small></th>";
  for (int64_t id : layer_ids)
    out += "<th>MaxVio_global<br><small>layer " + std::to_string(id) + ", last eval</small></th>";
  out +=
      "<th>MaxVio_batch<br><small>last window, mean of layers</small></th><th>mean tokens/s</th>"
      "<th class=\"verdicts\">verdict per layer</th></tr></thead>\n<tbody>\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const HtmlRun& r = runs[i];
    out += "<tr data-run=\"" + escape(r.label) +
           "\"><td><span class=\"dot\" style=\"background:" + kPalette[i % kPaletteSize] + "\"></span><a href=\"#" +
           run_anchor(i) + "\">" + escape(r.label) + "</a></td><td>" +
           (r.metrics->train.empty() ? std::string(kDash) : thousands(r.metrics->train.back().step)) +
           (r.metrics->ended ? "" : " <small>(running)</small>") + "</td>" +
           cell(last_finite_val_loss(*r.metrics), best_val, 4);
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
    out += "</td></tr>\n";
  }
  out += "</tbody></table></div>\n<div class=\"grid2\">\n";

  // MaxVio curves often span decades (no balancing vs loss-free), so a log axis keeps both readable.
  LineChart maxvio;
  maxvio.kind = "compare-maxvio";
  maxvio.title = "MaxVio_batch, mean over MoE layers";
  maxvio.x_title = "step", maxvio.y_title = "MaxVio_batch (unitless)";
  maxvio.y_from_zero = true;
  maxvio.empty_message = "no train lines yet";
  maxvio.references.push_back({kBalancedMaxVio, format("balanced (%g)", kBalancedMaxVio)});
  // One smoothing window for every run, so their curves are comparable; a little even for short runs.
  size_t longest = 0;
  for (const auto& r : runs) longest = std::max(longest, r.metrics->train.size());
  const size_t half = longest >= 20 ? std::max<size_t>(2, smoothing_half_window(longest)) : 0;
  if (half) maxvio.hint = format("centred mean over %d steps", int(2 * half + 1));
  double lo = INFINITY, hi = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const Points raw = mean_maxvio_series(*runs[i].metrics);
    Series s{runs[i].label, "mean", kPalette[i % kPaletteSize], half ? Points{raw.x, centred_mean(raw.y, half)} : raw};
    s.width = 2.2, s.attributes = " data-run=\"" + escape(runs[i].label) + "\"";
    for (double v : s.points.y)
      if (std::isfinite(v) && v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
    maxvio.series.push_back(std::move(s));
  }
  if (hi > 0 && hi / lo > 30) {
    maxvio.y_log = true, maxvio.y_from_zero = false;
    maxvio.y_title = "MaxVio_batch (unitless, log scale)";
  }
  out += render_line_chart(maxvio);

  LineChart val;
  val.kind = "compare-val-loss";
  val.title = "Validation loss";
  val.x_title = "step", val.y_title = "validation loss (nats/byte)";
  val.empty_message = "no evaluations yet";
  for (size_t i = 0; i < runs.size(); ++i) {
    Series s{runs[i].label, "eval", kPalette[i % kPaletteSize], val_loss_series(*runs[i].metrics)};
    s.width = 2.2, s.markers = s.points.size() <= 60;
    s.attributes = " data-run=\"" + escape(runs[i].label) + "\"";
    val.series.push_back(std::move(s));
  }
  out += render_line_chart(val);
  return out + "</div>\n</section>\n";
}

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
      escape(title) + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<main>\n";
  html += "<header class=\"page\"><h1>" + escape(title) + "</h1><p>Expert load report from <code>metrics.jsonl</code>";
  html += runs.size() == 1 ? "" : ", " + std::to_string(runs.size()) + " runs";
  html += ". MaxVio = (largest expert load \xe2\x88\x92 mean load) / mean load: 0 is perfectly balanced.</p>\n";
  if (runs.size() > 1) {
    html += "<nav class=\"runs\"><a href=\"#comparison\">comparison</a>";
    for (size_t i = 0; i < runs.size(); ++i)
      html += "<a href=\"#" + run_anchor(i) + "\">" + escape(runs[i].label) + "</a>";
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

}  // namespace moe
