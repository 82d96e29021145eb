// The chart kit of the HTML report (see svg.hpp): every piece of SVG markup is written here, from
// axis ticks to heatmap cells, so that the report sections only say what to draw.
#include "report/svg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace moe::svg {
namespace {

std::string coord(double v) { return format("%.1f", v); }

// ---------------------------------------------------------------------------------------------
// Colours

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

// ---------------------------------------------------------------------------------------------
// Series preparation

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
// Chart pieces

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

// The first few entries are named, the rest summarised: every line names itself on hover.
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

// ---------------------------------------------------------------------------------------------
// Share heatmap

// Where a heatmap goes: rows as tall as fit 440 px (7 to 24 px each), columns filling the width.
struct HeatmapLayout {
  Frame frame;
  double row = 0, plot_width = 0, plot_height = 0;
  double y_axis = 0;  // the bottom of the cells
};

HeatmapLayout heatmap_layout(size_t rows) {
  HeatmapLayout g;
  Frame& f = g.frame;
  f.width = 1120, f.left = 76, f.right = 24;
  g.row = rows == 0 ? 20 : std::clamp(440.0 / double(rows), 7.0, 24.0);
  g.plot_height = std::max(80.0, g.row * double(std::max<size_t>(rows, 1)));
  f.height = f.top + g.plot_height + 104;
  f.bottom = 104;
  g.plot_width = f.x1() - f.x0();
  g.y_axis = f.y0() + g.plot_height;
  return g;
}

std::string heatmap_cells(const ShareHeatmap& h, const HeatmapLayout& g) {
  const Frame& f = g.frame;
  const size_t columns = h.column_labels.size();
  const double column_width = g.plot_width / double(columns);
  std::string svg = "<g class=\"cells\" shape-rendering=\"crispEdges\">";
  for (size_t c = 0; c < columns; ++c) {
    const double cx = f.x0() + double(c) * column_width;
    const std::string column = escape(h.column_labels[c]);
    for (size_t e = 0; e < h.rows; ++e) {
      const double y = f.y0() + double(e) * g.row;
      const double share = h.shares[c * h.rows + e];
      const bool has = !std::isnan(share);
      svg += "<rect class=\"cell" + std::string(has ? "" : " empty") + "\" x=\"" + coord(cx) + "\" y=\"" + coord(y) +
             "\" width=\"" + format("%.2f", column_width + (c + 1 < columns ? 0.4 : 0.0)) + "\" height=\"" +
             format("%.2f", g.row + (e + 1 < h.rows ? 0.4 : 0.0)) + "\" fill=\"" +
             (has ? share_color(share, h.uniform) : std::string("#e4e7eb")) + "\"><title>" + escape(h.row_name) + " " +
             std::to_string(e) + ", " + column + ": " +
             (has ? (h.ratio_values ? format("%.2fx", share) : percent(share)) : escape(h.empty_cell)) +
             "</title></rect>";
    }
  }
  svg += "</g>\n<rect class=\"plot-outline\" x=\"" + coord(f.x0()) + "\" y=\"" + coord(f.y0()) + "\" width=\"" +
         coord(g.plot_width) + "\" height=\"" + coord(g.plot_height) + "\"/>\n";
  return svg;
}

// Rows down the left (every one up to 32 rows, then every k-th), x ticks along the bottom.
std::string heatmap_axes(const ShareHeatmap& h, const HeatmapLayout& g) {
  const Frame& f = g.frame;
  // x: value s is centred in [s - 0.5, s + 0.5], so the columns tile the axis exactly.
  Scale x = linear_scale(double(h.x_first), double(h.x_last), 10, false, true);
  x.lo = double(h.x_first) - 0.5, x.hi = double(h.x_last) + 0.5;
  const size_t label_every = std::max<size_t>(1, (h.rows + 31) / 32);
  std::string svg = "<g class=\"axis\">";
  for (size_t e = 0; e < h.rows; e += label_every)
    svg += "<text class=\"tick\" x=\"" + coord(f.x0() - 6) + "\" y=\"" + coord(f.y0() + (double(e) + 0.5) * g.row + 4) +
           "\" text-anchor=\"end\">" + std::to_string(e) + "</text>";
  for (double t : x.ticks) {
    const double px = f.x0() + x.fraction(t) * g.plot_width;
    svg += "<line class=\"tick-mark\" x1=\"" + coord(px) + "\" x2=\"" + coord(px) + "\" y1=\"" + coord(g.y_axis) +
           "\" y2=\"" + coord(g.y_axis + 5) + "\"/><text class=\"tick\" x=\"" + coord(px) + "\" y=\"" +
           coord(g.y_axis + 18) + "\" text-anchor=\"middle\">" + tick_label(x, t) + "</text>";
  }
  svg += "</g>\n<text class=\"axis-title\" x=\"" + coord(f.x0() + g.plot_width / 2) + "\" y=\"" + coord(g.y_axis + 36) +
         "\" text-anchor=\"middle\">" + escape(h.x_title) +
         "</text>\n<text class=\"axis-title\" transform=\"translate(16 " + coord(f.y0() + g.plot_height / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">" + escape(h.y_title) + "</text>\n";
  return svg;
}

// Colour scale: share from 1/4 to 4x uniform, with the observed min and max marked on it.
std::string heatmap_color_scale(const ShareHeatmap& h, const HeatmapLayout& g) {
  double min_share = INFINITY, max_share = -INFINITY;
  for (double share : h.shares)
    if (!std::isnan(share)) min_share = std::min(min_share, share), max_share = std::max(max_share, share);
  const double uniform = h.uniform;
  const double bar_x = g.frame.x0(), bar_w = 360, bar_y = g.y_axis + 62, bar_h = 12;
  std::string svg = "<g class=\"color-scale\" data-uniform=\"" + format("%.6g", uniform) + "\" data-min=\"" +
                    format("%.6g", std::isfinite(min_share) ? min_share : 0.0) + "\" data-max=\"" +
                    format("%.6g", std::isfinite(max_share) ? max_share : 0.0) + "\" shape-rendering=\"crispEdges\">";
  svg += "<text class=\"axis-title\" x=\"" + coord(bar_x) + "\" y=\"" + coord(bar_y - 8) + "\">" +
         escape(h.scale_title) + "</text>";
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
           coord(bar_y + bar_h + 16) + "\" text-anchor=\"middle\">" +
           (h.ratio_values ? format("%.3gx", ratio * uniform) : percent(ratio * uniform)) +
           (ratio == 1.0 && !h.ratio_values ? " = 1/" + std::to_string(h.rows) : std::string()) + "</text>";
  }
  // Observed extremes, as markers above the bar.
  std::string extremes;
  if (std::isfinite(min_share)) {
    for (const auto& [share, name] : {std::pair<double, const char*>{min_share, "min"}, {max_share, "max"}}) {
      const double px = bar_pos(share);
      svg += "<path class=\"extreme\" d=\"M" + coord(px - 5) + " " + coord(bar_y - 6) + "L" + coord(px + 5) + " " +
             coord(bar_y - 6) + "L" + coord(px) + " " + coord(bar_y) + "Z\"/>";
      extremes += std::string(extremes.empty() ? "" : ", ") + name + " " +
                  (h.ratio_values ? format("%.2fx", share) : percent(share));
    }
  }
  svg += "<text class=\"scale-note\" x=\"" + coord(bar_x + bar_w + 18) + "\" y=\"" + coord(bar_y + 10) + "\">" +
         (extremes.empty() ? escape(h.empty_note) : "observed " + extremes) +
         (h.column_note.empty() ? std::string() : " (" + escape(h.column_note) + ")") + "</text>";
  return svg + "</g>\n";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Text

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

// ---------------------------------------------------------------------------------------------
// Colours and series

std::string series_color(size_t i, size_t n) {
  if (n <= std::size(kPalette)) return palette_color(i);
  return hsl(137.508 * double(i), 0.68, 0.36 + 0.1 * double(i % 3));
}

std::string share_color(double share, double uniform) { return diverging_color(share_position(share, uniform)); }

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
// Line chart

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
  for (const StepMarker& m : chart.step_markers) {
    if (m.x < x.lo || m.x > x.hi) continue;
    svg += "<line class=\"step-marker\" x1=\"" + coord(px(m.x)) + "\" x2=\"" + coord(px(m.x)) + "\" y1=\"" +
           coord(f.y0()) + "\" y2=\"" + coord(f.y1()) + "\"><title>" + escape(m.label) + "</title></line>\n";
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
// Share heatmap

std::string render_share_heatmap(const ShareHeatmap& h) {
  const HeatmapLayout g = heatmap_layout(h.rows);
  const Frame& f = g.frame;
  std::string svg = svg_open(h.kind, h.run, h.layer, h.label, f.width, f.height);
  if (h.rows == 0 || h.column_labels.empty()) {
    svg += "<rect class=\"plot-frame\" x=\"" + coord(f.x0()) + "\" y=\"" + coord(f.y0()) + "\" width=\"" +
           coord(f.x1() - f.x0()) + "\" height=\"" + coord(f.y1() - f.y0()) + "\"/><text class=\"empty\" x=\"" +
           coord((f.x0() + f.x1()) / 2) + "\" y=\"" + coord((f.y0() + f.y1()) / 2) + "\" text-anchor=\"middle\">" +
           escape(h.empty_message) + "</text>\n</svg>\n";
    return figure(h.title, "", svg, "", "wide");
  }
  svg += heatmap_cells(h, g) + heatmap_axes(h, g) + heatmap_color_scale(h, g) + "</svg>\n";
  return figure(h.title, h.hint, svg, "", "wide");
}

}  // namespace moe::svg
