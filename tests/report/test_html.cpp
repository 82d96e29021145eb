// The HTML report: self-contained (no external references), every MoE layer charted, edge cases
// (empty, single step, zero counts, NaN, huge runs) rendered without crashing, and a real headless
// Chromium loading the file and laying out every chart.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/chromium.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "model/summary.hpp"
#include "report/html.hpp"
#include "report/load_console.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace moe;
using moe_test::chromium_dump_dom;
using moe_test::TempDir;

// A metrics.jsonl like training writes it: `steps` train lines for `layers` MoE layers (ids 1..) of
// `experts` experts whose imbalance decays (expert E-1 overloaded, expert 0 idle at first), with
// the bias moving against the load, and `evals` eval lines spread over the run.
std::string write_fixture(const TempDir& dir, const std::string& name, int steps, int layers, int experts, int evals,
                          double imbalance, bool ended) {
  fs::create_directories(dir / name);
  std::ostringstream out;
  auto layer_lines = [&](int step, bool with_bias, int tokens) {
    json result = json::array();
    for (int l = 0; l < layers; ++l) {
      const double a = imbalance * (l == 0 ? 1.0 : 0.7) * std::exp(-step / 15.0);
      std::vector<int64_t> counts;
      std::vector<double> bias, load;
      double load_sum = 0;
      for (int e = 0; e < experts; ++e) {
        const double weight = experts > 1 ? (2.0 * e / (experts - 1) - 1.0) : 0.0;  // -1 .. 1
        load.push_back(std::exp(a * weight)), load_sum += load.back();
        bias.push_back(-0.001 * step * weight);
      }
      for (double x : load) counts.push_back(std::llround(tokens * x / load_sum));
      double total = 0, top = 0;
      for (int64_t c : counts) total += double(c), top = std::max(top, double(c));
      json line = {{"layer", l + 1}, {"counts", counts}, {"maxvio", (top - total / experts) / (total / experts)}};
      if (with_bias) line["bias"] = bias;
      result.push_back(line);
    }
    return result;
  };
  for (int step = 1; step <= steps; ++step) {
    out << json{{"kind", "train"},
                {"step", step},
                {"loss", 1.0 + 4.5 * std::exp(-step / 20.0)},
                {"lr", 1e-3},
                {"grad_norm", 1.0},
                {"tokens_per_s", 20000.0 + 10 * step},
                {"balance_loss", 0.0},
                {"layers", layer_lines(step, true, 2048)}}
               .dump()
        << "\n";
    if (evals > 0 && step % std::max(1, steps / evals) == 0)
      out << json{{"kind", "eval"},
                  {"step", step},
                  {"val_loss", 1.2 + 4.0 * std::exp(-step / 20.0) + imbalance * 0.1},
                  {"tokens", 4096},
                  {"layers", layer_lines(step, false, 8192)}}
                 .dump()
          << "\n";
  }
  if (ended) out << json{{"kind", "end"}, {"step", steps}, {"reason", "completed"}}.dump() << "\n";
  const std::string path = dir.write(name + "/metrics.jsonl", out.str());
  return path;
}

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// One <svg class="chart"> element: its data-* attributes and its content.
struct Chart {
  std::map<std::string, std::string> attributes;
  std::string body;
  std::string attr(const std::string& name) const {
    auto it = attributes.find(name);
    return it == attributes.end() ? "" : it->second;
  }
  std::vector<std::string> series_d() const {  // d attribute of every path.series
    std::vector<std::string> result;
    const std::regex path_re("<path class=\"series\"[^>]*?\\sd=\"([^\"]*)\"");
    for (auto it = std::sregex_iterator(body.begin(), body.end(), path_re); it != std::sregex_iterator(); ++it)
      result.push_back((*it)[1]);
    return result;
  }
  std::vector<int> series_points() const {
    std::vector<int> result;
    const std::regex points_re("<path class=\"series\"[^>]*?data-points=\"([0-9]+)\"");
    for (auto it = std::sregex_iterator(body.begin(), body.end(), points_re); it != std::sregex_iterator(); ++it)
      result.push_back(std::stoi((*it)[1]));
    return result;
  }
  size_t cells() const { return count(body, "<rect class=\"cell"); }
};

std::vector<Chart> charts(const std::string& html) {
  std::vector<Chart> result;
  const std::regex attr_re("(data-[a-z-]+)=\"([^\"]*)\"");
  for (size_t at = html.find("<svg class=\"chart\""); at != std::string::npos;
       at = html.find("<svg class=\"chart\"", at + 1)) {
    const size_t tag_end = html.find('>', at), close = html.find("</svg>", at);
    REQUIRE(tag_end != std::string::npos);
    REQUIRE(close != std::string::npos);
    Chart c;
    const std::string tag = html.substr(at, tag_end - at);
    for (auto it = std::sregex_iterator(tag.begin(), tag.end(), attr_re); it != std::sregex_iterator(); ++it)
      c.attributes[(*it)[1]] = (*it)[2];
    c.body = html.substr(tag_end + 1, close - tag_end - 1);
    result.push_back(std::move(c));
  }
  return result;
}

const Chart* find_chart(const std::vector<Chart>& all, const std::string& kind, const std::string& layer,
                        const std::string& run = "") {
  for (const Chart& c : all)
    if (c.attr("data-chart") == kind && c.attr("data-layer") == layer && (run.empty() || c.attr("data-run") == run))
      return &c;
  return nullptr;
}

// Self-contained: nothing that a browser would fetch, no scripts.
void require_no_external_references(const std::string& html) {
  const std::pair<const char*, const char*> forbidden[] = {
      {"http://", "http://"},      {"https://", "https://"}, {"src\\s*=", "src="},
      {"<link", "<link"},          {"@import", "@import"},   {"url\\((?!#)", "url("},
      {"<script", "<script"},      {"<iframe", "<iframe"},   {"<img", "<img"},
      {"<object", "<object"},      {"<embed", "<embed"},     {"href=\"(?!#)", "href to a non-fragment"},
      {"@font-face", "@font-face"}};
  for (const auto& [pattern, name] : forbidden) {
    INFO("forbidden in a self-contained report: " << name);
    CHECK_FALSE(std::regex_search(html, std::regex(pattern, std::regex::icase)));
  }
}

ModelConfig fixture_model() {
  ModelConfig m;
  m.num_hidden_layers = 3;  // 1 dense + 2 MoE, as in the fixture
  return m;
}

struct LoadedRun {
  RunMetrics metrics;
  LoadReport report;
  LoadedRun(const std::string& path, const std::string& name) : metrics(read_metrics(path)) {
    metrics.name = name;
    report = build_load_report(metrics, 0);
  }
};

}  // namespace

TEST_CASE("html report of one run is self-contained and charts every MoE layer", "[html]") {
  TempDir dir("html");
  LoadedRun run(write_fixture(dir, "lf run", 60, 2, 8, 3, 0.9, true), "lf run");
  const ModelConfig model = fixture_model();
  const std::string html =
      render_html_report({{"lf \"run\" <1>", &run.metrics, &run.report, &model}}, "Report <b>&amp; \"quotes\"</b>");
  require_no_external_references(html);

  // Inserted text is escaped: the title and the label cannot open tags or break attributes.
  CHECK(html.find("<b>") == std::string::npos);
  CHECK(html.find("<title>Report &lt;b&gt;&amp;amp; &quot;quotes&quot;&lt;/b&gt;</title>") != std::string::npos);
  CHECK(html.find("data-run=\"lf &quot;run&quot; &lt;1&gt;\"") != std::string::npos);

  const std::vector<Chart> all = charts(html);
  const Chart* loss = find_chart(all, "loss", "");
  REQUIRE(loss != nullptr);
  const auto loss_points = loss->series_points();
  REQUIRE(loss_points.size() == 2);  // 60 steps: train loss drawn raw, plus validation loss
  CHECK(loss_points[0] == 60);
  CHECK(loss_points[1] == 3);
  CHECK(html.find("loss (nats/token)") != std::string::npos);

  const Chart* overview = find_chart(all, "maxvio", "all");
  REQUIRE(overview != nullptr);
  CHECK(overview->series_points() == std::vector<int>{60, 60});
  CHECK(overview->body.find("class=\"reference\"") != std::string::npos);
  CHECK(overview->body.find("balanced (0.2)") != std::string::npos);

  for (const std::string layer : {"1", "2"}) {
    INFO("layer " << layer);
    const Chart* maxvio = find_chart(all, "maxvio", layer);
    REQUIRE(maxvio != nullptr);
    CHECK(maxvio->series_points() == std::vector<int>{60, 3});  // MaxVio_batch per step, MaxVio_global per eval
    const Chart* bias = find_chart(all, "bias", layer);
    REQUIRE(bias != nullptr);
    CHECK(bias->series_points() == std::vector<int>(8, 60));  // one line per expert
    const Chart* heatmap = find_chart(all, "heatmap", layer);
    REQUIRE(heatmap != nullptr);
    CHECK(heatmap->cells() == 60 * 8);  // 60 steps fit in 60 columns, one row per expert
    CHECK(count(heatmap->body, "class=\"cell empty\"") == 0);
    CHECK(heatmap->body.find("12.5% = 1/8") != std::string::npos);  // the uniform share on the colour scale
    CHECK(count(html, "<table class=\"load\" data-layer=\"" + layer + "\"") == 1);
    for (const auto& d : maxvio->series_d()) CHECK(d.size() > 10);
  }

  // Colour follows load: at step 1 expert 7 carries ~2.3x the uniform share (red: more red than
  // blue), expert 0 ~0.4x (blue); by step 60 all are near the uniform share (close to white).
  auto cell_fill = [&](const Chart& c, int expert, int step) {
    const std::regex re("fill=\"#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})\"><title>expert " + std::to_string(expert) +
                        ", step " + std::to_string(step) + ":");
    std::smatch m;
    REQUIRE(std::regex_search(c.body, m, re));
    return std::vector<int>{std::stoi(m[1], nullptr, 16), std::stoi(m[2], nullptr, 16), std::stoi(m[3], nullptr, 16)};
  };
  const Chart& heatmap = *find_chart(all, "heatmap", "1");
  const auto hot = cell_fill(heatmap, 7, 1), cold = cell_fill(heatmap, 0, 1), late = cell_fill(heatmap, 7, 60);
  CHECK(hot[0] > hot[2] + 60);
  CHECK(cold[2] > cold[0] + 60);
  CHECK(late[0] > 225);
  CHECK(late[1] > 225);
  CHECK(late[2] > 225);

  // Header and model summary.
  CHECK(html.find("/metrics.jsonl") != std::string::npos);
  CHECK(html.find("60 logged (1\xe2\x80\x93"
                  "60)") != std::string::npos);
  CHECK(html.find("class=\"badge ended\"") != std::string::npos);
  const ParamSummary summary = summarize_params(model);
  CHECK(html.find("<table class=\"model-summary\">") != std::string::npos);
  std::string total = std::to_string(summary.total);
  for (int i = int(total.size()) - 3; i > 0; i -= 3) total.insert(size_t(i), ",");
  CHECK(html.find("<td>all</td><td>" + total + "</td>") != std::string::npos);
  CHECK(html.find("verdict-line") != std::string::npos);
  CHECK(count(html, "<section class=\"comparison") == 0);  // one run: no comparison
}

TEST_CASE("html report handles empty, tiny, zero, non-finite and huge runs", "[html]") {
  auto render = [](const RunMetrics& m) {
    const LoadReport report = build_load_report(m, 0);
    const std::string html = render_html_report({{m.name, &m, &report, nullptr}}, "edge");
    require_no_external_references(html);
    CHECK(html.find("</html>") != std::string::npos);
    return html;
  };
  auto layer = [](int64_t id, std::vector<int64_t> counts, double maxvio) {
    LayerLoad p;
    p.layer = id, p.counts = std::move(counts), p.maxvio = maxvio;
    p.bias.assign(p.counts.size(), 0.0);
    return p;
  };

  SECTION("no lines at all, with a note of a torn line") {
    RunMetrics m;
    m.path = "/tmp/x/metrics.jsonl", m.name = "empty";
    m.notes.push_back("the last line is incomplete <torn>");
    const std::string html = render(m);
    CHECK(html.find("no train or eval lines yet") != std::string::npos);
    CHECK(html.find("in progress") != std::string::npos);
    CHECK(html.find("the last line is incomplete &lt;torn&gt;") != std::string::npos);
  }
  SECTION("eval lines only") {
    RunMetrics m;
    m.name = "eval-only";
    EvalRecord e;
    e.step = 0, e.val_loss = 5.5, e.layers = {layer(1, {10, 20, 30, 40}, 0.6)};
    m.eval.push_back(e);
    const std::string html = render(m);
    const auto all = charts(html);
    REQUIRE(find_chart(all, "heatmap", "1") != nullptr);
    CHECK(find_chart(all, "heatmap", "1")->cells() == 0);
    CHECK(find_chart(all, "maxvio", "1")->series_points() == std::vector<int>{1});  // the one MaxVio_global
    CHECK(html.find("<circle") != std::string::npos);                               // a lone point gets a dot
  }
  SECTION("a single step, no eval") {
    RunMetrics m;
    m.name = "one";
    StepRecord t;
    t.step = 7, t.loss = 3.0, t.layers = {layer(1, {5, 5, 5, 5}, 0.0)};
    m.train.push_back(t);
    const auto all = charts(render(m));
    CHECK(find_chart(all, "loss", "")->series_points() == std::vector<int>{1});
    CHECK(find_chart(all, "heatmap", "1")->cells() == 4);
  }
  SECTION("all-zero counts and non-finite values") {
    RunMetrics m;
    m.name = "zeros";
    for (int s = 1; s <= 30; ++s) {
      StepRecord t;
      t.step = s;
      t.loss = s % 5 == 0 ? std::nan("") : s % 7 == 0 ? INFINITY : 2.0;
      t.tokens_per_s = s % 3 == 0 ? -INFINITY : 100.0;
      t.layers = {layer(1, {0, 0, 0}, s % 2 ? std::nan("") : 0.0)};
      t.layers[0].bias = {0.0, s % 4 == 0 ? INFINITY : 0.01, -0.01};
      m.train.push_back(t);
    }
    EvalRecord e;
    e.step = 30, e.val_loss = std::nan(""), e.layers = {layer(1, {0, 0, 0}, std::nan(""))};
    m.eval.push_back(e);
    const std::string html = render(m);
    const auto all = charts(html);
    CHECK(find_chart(all, "loss", "")->series_points() == std::vector<int>{30 - 6 - 4});  // NaN and inf skipped
    CHECK(find_chart(all, "maxvio", "1")->series_points() == std::vector<int>{15});
    CHECK(find_chart(all, "heatmap", "1")->cells() == 30 * 3);
    CHECK(count(find_chart(all, "heatmap", "1")->body, "class=\"cell empty\"") == 30 * 3);
    CHECK(html.find("no tokens were routed") != std::string::npos);
    CHECK(html.find("nan") == std::string::npos);
    CHECK(html.find("inf") == std::string::npos);
  }
  SECTION("a huge run is downsampled") {
    RunMetrics m;
    m.name = "huge";
    const int steps = 100000;
    m.train.reserve(steps);
    for (int s = 1; s <= steps; ++s) {
      StepRecord t;
      t.step = s, t.loss = 2.0 + std::sin(s * 0.01);
      t.layers = {layer(1, {int64_t(100 + s % 17), 100, 100, int64_t(100 - s % 13)}, 0.1 + 0.05 * std::sin(s * 0.1))};
      t.layers[0].bias = {1e-6 * s, 0.0, 0.0, -1e-6 * s};
      m.train.push_back(t);
    }
    const std::string html = render(m);
    CHECK(html.size() < 2'000'000);
    const auto all = charts(html);
    size_t paths = 0;
    for (const Chart& c : all)
      for (int points : c.series_points()) {
        CHECK(points <= 400);
        CHECK(points >= 100);
        ++paths;
      }
    CHECK(paths >= 8);
    CHECK(find_chart(all, "heatmap", "1")->cells() == 200 * 4);  // at most 200 step columns
    CHECK(html.find("100k") != std::string::npos);               // step ticks in thousands
  }
}

TEST_CASE("html report compares several runs first", "[html]") {
  TempDir dir("html");
  LoadedRun a(write_fixture(dir, "loss-free", 60, 2, 8, 3, 0.9, true), "loss-free");
  LoadedRun b(write_fixture(dir, "none", 60, 2, 8, 3, 2.5, true), "none");
  LoadedRun c(write_fixture(dir, "aux", 40, 2, 8, 2, 1.5, false), "aux");
  const std::string html = render_html_report({{"loss-free", &a.metrics, &a.report, nullptr},
                                               {"none", &b.metrics, &b.report, nullptr},
                                               {"aux", &c.metrics, &c.report, nullptr}},
                                              "three runs");
  require_no_external_references(html);
  const size_t comparison = html.find("<section class=\"card comparison\"");
  REQUIRE(comparison != std::string::npos);
  CHECK(comparison < html.find("<section class=\"card run\""));
  CHECK(count(html, "<section class=\"card run\"") == 3);

  const auto all = charts(html);
  for (const char* kind : {"compare-maxvio-global", "compare-maxvio", "compare-val-loss"}) {
    INFO(kind);
    const Chart* chart = find_chart(all, kind, "");
    REQUIRE(chart != nullptr);
    CHECK(chart->series_d().size() == 3);
    for (const char* run : {"loss-free", "none", "aux"})
      CHECK(chart->body.find(std::string("data-series=\"") + run + "\"") != std::string::npos);
  }
  CHECK(find_chart(all, "compare-val-loss", "")->series_points() == std::vector<int>{3, 3, 2});
  // MaxVio_global at each evaluation, mean over the layers, on a log axis (the paper's figure).
  CHECK(find_chart(all, "compare-maxvio-global", "")->series_points() == std::vector<int>{3, 3, 2});
  CHECK(find_chart(all, "compare-maxvio-global", "")->body.find("log scale") != std::string::npos);
  for (const char* run : {"loss-free", "none", "aux"}) {
    CHECK(count(html, std::string("<tr data-run=\"") + run + "\"") == 1);
    for (const char* layer : {"1", "2"}) CHECK(find_chart(all, "heatmap", layer, run) != nullptr);
  }
  // The table shows the final validation loss and the last MaxVio_global of each layer.
  CHECK(html.find("MaxVio_global<br><small>layer 2, last eval") != std::string::npos);
  char val[32];
  std::snprintf(val, sizeof val, "%.4f", b.metrics.eval.back().val_loss);
  CHECK(html.find(std::string("<td>") + val + "</td>") != std::string::npos);
}

TEST_CASE("the MTP module's losses show in every report of a run that has them, and only there", "[html]") {
  // Two fixtures, one with mtp_loss on its train lines and mtp_val_loss on its eval lines (a model
  // with the MTP module), one without: the console report, its comparison table, the JSON and the
  // HTML (loss chart, facts, comparison table) show the module's losses for the first only.
  TempDir dir("html_mtp");
  const std::string plain_path = write_fixture(dir, "plain", 30, 2, 8, 3, 0.9, true);
  const std::string mtp_source = write_fixture(dir, "mtp", 30, 2, 8, 3, 0.9, true);
  std::ifstream in(mtp_source);
  std::ostringstream with_mtp;
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    const double step = j.value("step", 0.0);
    if (j["kind"] == "train") j["mtp_loss"] = 2.0 + 1.0 / step;
    if (j["kind"] == "eval") j["mtp_val_loss"] = 1.5 + 1.0 / step;
    with_mtp << j.dump() << "\n";
  }
  in.close();
  dir.write("mtp/metrics.jsonl", with_mtp.str());
  LoadedRun mtp(mtp_source, "mtp"), plain(plain_path, "plain");
  REQUIRE(mtp.metrics.last_mtp_eval() != nullptr);
  CHECK(mtp.metrics.last_mtp_eval()->step == 30);
  CHECK(plain.metrics.last_mtp_eval() == nullptr);
  const double last = 1.5 + 1.0 / 30;
  char value[32];
  std::snprintf(value, sizeof value, "%.4f", last);

  const std::string text = format_load_report(mtp.metrics, mtp.report, false);
  CHECK(text.find(std::string("final MTP validation loss: ") + value + " (step 30;") != std::string::npos);
  CHECK(format_load_report(plain.metrics, plain.report, false).find("MTP") == std::string::npos);
  const std::string table = format_comparison({&mtp.metrics, &plain.metrics}, {&mtp.report, &plain.report}, false);
  CHECK(table.find("MTP val") != std::string::npos);
  CHECK(table.find(value) != std::string::npos);
  CHECK(format_comparison({&plain.metrics}, {&plain.report}, false).find("MTP") == std::string::npos);

  const json j = load_report_json(mtp.metrics, mtp.report);
  CHECK(j.at("final_mtp_val").at("value").get<double>() == Approx(last));
  CHECK(j.at("final_mtp_val").at("step") == 30);
  CHECK(j.at("mtp_val_loss").size() == 3);
  CHECK(j.at("mtp_train_loss").size() == 30);
  const json p = load_report_json(plain.metrics, plain.report);
  CHECK(p.at("final_mtp_val").is_null());
  CHECK(p.at("mtp_val_loss").empty());

  const std::string html = render_html_report(
      {{"mtp", &mtp.metrics, &mtp.report, nullptr}, {"plain", &plain.metrics, &plain.report, nullptr}}, "mtp");
  const auto all = charts(html);
  const Chart* loss = find_chart(all, "loss", "", "mtp");
  REQUIRE(loss != nullptr);
  CHECK(loss->body.find("data-series=\"validation MTP loss\" data-role=\"eval\" data-points=\"3\"") !=
        std::string::npos);
  CHECK(loss->body.find("data-series=\"train MTP loss\"") != std::string::npos);
  const Chart* plain_loss = find_chart(all, "loss", "", "plain");
  REQUIRE(plain_loss != nullptr);
  CHECK(plain_loss->body.find("MTP") == std::string::npos);
  CHECK(html.find("final MTP val loss") != std::string::npos);  // the comparison table's column
  CHECK(html.find(std::string("<td class=\"best\">") + value + "</td>") != std::string::npos);
  CHECK(count(html, "final MTP validation loss") == 1);  // the facts of the run that has it
}

TEST_CASE("html report renders in headless chromium", "[html]") {
  TempDir dir("html");
  LoadedRun a(write_fixture(dir, "loss-free", 60, 2, 8, 3, 0.9, true), "loss-free");
  LoadedRun b(write_fixture(dir, "none", 60, 2, 8, 3, 2.5, true), "none");
  LoadedRun c(write_fixture(dir, "aux", 40, 2, 8, 2, 1.5, false), "aux");
  const ModelConfig model = fixture_model();
  const std::vector<std::string> labels = {"loss-free", "none", "aux"};
  const std::string html = render_html_report({{labels[0], &a.metrics, &a.report, &model},
                                               {labels[1], &b.metrics, &b.report, &model},
                                               {labels[2], &c.metrics, &c.report, &model}},
                                              "MoE load report");
  const std::string report_path = dir.write("report.html", html);

  // 1. The report as written: the browser's DOM holds every chart with its data.
  const std::string dom = chromium_dump_dom(dir, report_path);
  const auto all = charts(dom);
  CHECK(all.size() == charts(html).size());
  for (const std::string& run : labels) {
    for (const std::string layer : {"1", "2"}) {
      INFO("run " << run << ", layer " << layer);
      for (const char* kind : {"maxvio", "bias", "load-stats"}) {
        const Chart* chart = find_chart(all, kind, layer, run);
        REQUIRE(chart != nullptr);
        const auto d = chart->series_d();
        CHECK_FALSE(d.empty());
        for (const auto& path : d) CHECK(path.size() > 10);
      }
      const Chart* heatmap = find_chart(all, "heatmap", layer, run);
      REQUIRE(heatmap != nullptr);
      CHECK(heatmap->cells() > 0);
    }
  }
  for (const char* kind : {"compare-maxvio-global", "compare-maxvio", "compare-val-loss"})
    CHECK(find_chart(all, kind, "")->series_d().size() == 3);

  // 2. A copy with a probe script (the report itself has none) that asks the layout engine for each
  // chart's box, the drawn length of its lines and the area of its heatmap cells.
  const std::string probe = R"(<script>
const rows = [];
for (const svg of document.querySelectorAll('svg.chart')) {
  const box = svg.getBoundingClientRect();
  let length = 0;
  for (const p of svg.querySelectorAll('path.series')) length += p.getTotalLength();
  let area = 0;
  for (const r of svg.querySelectorAll('rect.cell')) { const b = r.getBBox(); area += b.width * b.height; }
  rows.push([svg.dataset.chart, svg.dataset.run || '', svg.dataset.layer || '', Math.round(box.width),
             Math.round(box.height), Math.round(length), Math.round(area)].join('|'));
}
const pre = document.createElement('pre');
pre.id = 'geometry';
pre.textContent = rows.join('\n');
document.body.appendChild(pre);
</script>)";
  std::string probed = html;
  probed.insert(probed.rfind("</body>"), probe);
  const std::string probed_path = dir.write("probed.html", probed);
  const std::string probed_dom = chromium_dump_dom(dir, probed_path);
  const size_t from = probed_dom.find("<pre id=\"geometry\">"), to = probed_dom.find("</pre>", from);
  REQUIRE(from != std::string::npos);
  REQUIRE(to != std::string::npos);
  std::istringstream rows(probed_dom.substr(from + 19, to - from - 19));
  std::map<std::string, std::vector<double>> geometry;  // "kind run layer" -> width, height, length, area
  for (std::string line; std::getline(rows, line);) {
    std::vector<std::string> fields;
    std::istringstream split(line);
    for (std::string field; std::getline(split, field, '|');) fields.push_back(field);
    REQUIRE(fields.size() == 7);
    geometry[fields[0] + " " + fields[1] + " " + fields[2]] = {std::stod(fields[3]), std::stod(fields[4]),
                                                               std::stod(fields[5]), std::stod(fields[6])};
  }
  INFO("geometry:\n" << probed_dom.substr(from, std::min<size_t>(to - from, 3000)));
  CHECK(geometry.size() == all.size());
  for (const auto& [key, g] : geometry) {
    INFO(key);
    CHECK(g[0] > 300);  // every chart is laid out at a readable size
    CHECK(g[1] > 150);
  }
  for (const std::string& r : labels)
    for (const std::string l : {"1", "2"}) {
      INFO("run " << r << ", layer " << l);
      REQUIRE(geometry.count("maxvio " + r + " " + l));
      CHECK(geometry["maxvio " + r + " " + l][2] > 500);  // the lines have real drawn length
      CHECK(geometry["bias " + r + " " + l][2] > 1000);
      CHECK(geometry["heatmap " + r + " " + l][3] > 50000);  // the cells cover the plot area
    }
  CHECK(geometry["compare-maxvio  "][2] > 500);
  CHECK(geometry["loss " + labels[0] + " "][2] > 300);
}
