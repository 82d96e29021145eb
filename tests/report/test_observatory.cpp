// The balancing observatory's run-level statistics: the eval routing files and the routing
// settling computed from them (checked against an independent reader of the documented format),
// the co-activation lift (a hand-computed trace and `inspect --data`), and their bad inputs.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/chromium.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "infer/routing.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;

// The file format as the README documents it, read without moe's reader.
struct RoutingFile {
  uint32_t layers = 0, tokens = 0, K = 0, E = 0;
  int64_t step = 0;
  std::vector<uint16_t> ids;
};
RoutingFile read_routing(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string b = buffer.str();
  REQUIRE(b.size() >= 36);
  REQUIRE(b.substr(0, 8) == "MOEROUTE");
  auto le = [&](size_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(uint8_t(b[at + size_t(i)])) << (8 * i);
    return v;
  };
  RoutingFile r;
  REQUIRE(le(8, 4) == 1);
  r.layers = uint32_t(le(12, 4)), r.tokens = uint32_t(le(16, 4)), r.K = uint32_t(le(20, 4)), r.E = uint32_t(le(24, 4));
  r.step = int64_t(le(28, 8));
  REQUIRE(b.size() == 36 + 2 * size_t(r.layers) * r.tokens * r.K);
  for (size_t i = 0; i < size_t(r.layers) * r.tokens * r.K; ++i) r.ids.push_back(uint16_t(le(36 + 2 * i, 2)));
  return r;
}

// Share of tokens of layer l with the same set in a and b.
double same_share(const RoutingFile& a, const RoutingFile& b, size_t l) {
  size_t same = 0;
  for (size_t t = 0; t < a.tokens; ++t) {
    bool eq = true;
    for (size_t k = 0; k < a.K; ++k) eq &= a.ids[(l * a.tokens + t) * a.K + k] == b.ids[(l * b.tokens + t) * b.K + k];
    same += eq;
  }
  return double(same) / double(a.tokens);
}

}  // namespace

TEST_CASE("eval routing files: one per evaluation, sorted sets, and inspect's saturation and churn from them",
          "[report][observatory]") {
  TempDir tmp("observatory");
  const std::string dir = tmp / "run";
  const RunResult r = run_moe({"train", "--config", "tiny", "--steps", "30", "--eval-every", "10", "--eval-tokens",
                               "4096", "--threads", "1", "--out", dir},
                              {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.ok());
  std::vector<RoutingFile> files;
  for (int step : {0, 10, 20, 30}) {
    char name[32];
    std::snprintf(name, sizeof name, "/routing/eval_%06d.bin", step);
    files.push_back(read_routing(dir + name));
    const RoutingFile& f = files.back();
    CHECK(f.step == step);
    CHECK(f.layers == 2);  // tiny: 3 layers, the first dense
    CHECK(f.tokens == 4096);
    CHECK(f.K == 2);
    CHECK(f.E == 8);
    for (size_t i = 0; i < f.ids.size(); i += f.K) {
      CHECK(f.ids[i] < f.ids[i + 1]);  // a set: distinct, increasing
      CHECK(f.ids[i + 1] < f.E);
    }
  }
  // Training moved the routing: the first and last evaluations differ somewhere.
  CHECK(same_share(files.front(), files.back(), 0) < 1.0);

  const RunResult j = run_moe({"inspect", dir, "--json"});
  INFO(j.describe());
  REQUIRE(j.ok());
  const json settling = json::parse(j.out).at("load").at("routing_settling");
  CHECK(settling.at("steps") == json({0, 10, 20, 30}));
  CHECK(settling.at("tokens") == 4096);
  for (size_t e = 0; e < files.size(); ++e)
    for (size_t l = 0; l < 2; ++l) {
      INFO("eval " << e << " layer " << l);
      CHECK(settling.at("saturation")[e][l].get<double>() == Approx(same_share(files[e], files.back(), l)));
      if (e == 0)
        CHECK(settling.at("churn")[e][l].is_null());
      else
        CHECK(settling.at("churn")[e][l].get<double>() == Approx(1.0 - same_share(files[e], files[e - 1], l)));
    }
  CHECK(settling.at("saturation")[3][0] == 1.0);
  const RunResult text = run_moe({"inspect", dir});
  CHECK(text.out.find("routing settling over 4 evaluations") != std::string::npos);

  // The HTML report draws saturation and churn of both layers, as the browser builds the page.
  const std::string html = tmp / "report.html";
  REQUIRE(run_moe({"inspect", dir, "--html", html}).ok());
  const std::string dom = chromium_dump_dom(tmp, html);
  const size_t chart = dom.find("data-chart=\"settling\"");
  REQUIRE(chart != std::string::npos);
  const std::string body = dom.substr(chart, dom.find("</svg>", chart) - chart);
  for (const char* series : {"saturation, layer 1", "churn, layer 1", "saturation, layer 2", "churn, layer 2"})
    CHECK(body.find(std::string("data-series=\"") + series + "\"") != std::string::npos);
  CHECK(dom.find("data-chart=\"load-stats\"") != std::string::npos);

  // A damaged file: inspect names it, in one line.
  std::filesystem::resize_file(dir + "/routing/eval_000020.bin", 100);
  const RunResult bad = run_moe({"inspect", dir});
  CHECK(bad.exited);
  CHECK(bad.code == 1);
  CHECK(bad.err.find("eval_000020.bin") != std::string::npos);
  CHECK(std::count(bad.err.begin(), bad.err.end(), '\n') == 1);

  // --force starts the run over: the old run's routing files go with it.
  const RunResult again = run_moe({"train", "--config", "tiny", "--steps", "5", "--eval-every", "0", "--eval-tokens",
                                   "2048", "--threads", "1", "--out", dir, "--force"},
                                  {.timeout_s = 300});
  REQUIRE(again.ok());
  CHECK_FALSE(std::filesystem::exists(dir + "/routing/eval_000020.bin"));
  CHECK(std::filesystem::exists(dir + "/routing/eval_000005.bin"));
}

TEST_CASE("co-activation: pair counts and lift on a hand-made trace", "[report][observatory]") {
  moe::RoutingTrace trace;
  trace.tokens = {1, 2, 3, 4};
  trace.layers = {1};
  // Top-2 of 4 experts for 4 tokens: {0,1}, {0,1}, {2,3}, {0,2}.
  trace.experts = {{0, 1, 1, 0, 2, 3, 0, 2}};
  trace.weights = {std::vector<float>(8, 0.5f)};
  const auto c = moe::co_activation(trace, 4);
  REQUIRE(c.size() == 1);
  CHECK(c[0].chosen == std::vector<int64_t>{3, 2, 2, 1});
  CHECK(c[0].pairs[0 * 4 + 1] == 2);
  CHECK(c[0].pairs[1 * 4 + 0] == 2);
  CHECK(c[0].pairs[0 * 4 + 2] == 1);
  CHECK(c[0].pairs[2 * 4 + 3] == 1);
  CHECK(c[0].pairs[1 * 4 + 3] == 0);
  CHECK(c[0].pairs[0 * 4 + 0] == 3);
  // lift(0,1) = 4·2 / (3·2); lift(2,3) = 4·1/(2·1); lift(1,3) = 0; the diagonal is undefined.
  CHECK(c[0].lift(0, 1) == Approx(8.0 / 6.0));
  CHECK(c[0].lift(2, 3) == Approx(2.0));
  CHECK(c[0].lift(1, 3) == 0.0);
  CHECK(std::isnan(c[0].lift(2, 2)));
}

TEST_CASE("inspect --data reports the co-activation (terminal, JSON, HTML heatmap)", "[report][observatory]") {
  TempDir tmp("coactivation");
  const std::string dir = tmp / "run";
  REQUIRE(run_moe({"train", "--config", "tiny", "--steps", "5", "--eval-every", "0", "--eval-tokens", "2048",
                   "--threads", "1", "--out", dir},
                  {.timeout_s = 300})
              .ok());
  const std::string text =
      tmp.write("text.txt", std::string(3000, 'a') + "the quick brown fox jumps over the lazy dog\n");
  const RunResult j = run_moe({"inspect", dir, "--data", text, "--json"});
  INFO(j.describe());
  REQUIRE(j.ok());
  const json co = json::parse(j.out).at("co_activation");
  REQUIRE(co.size() == 2);
  for (const json& layer : co) {
    const auto chosen = layer.at("chosen").get<std::vector<double>>();
    const auto pairs = layer.at("pairs");
    const double tokens = layer.at("tokens").get<double>();
    double slots = 0;
    for (double c : chosen) slots += c;
    CHECK(slots == 2 * tokens);  // top-2
    for (size_t i = 0; i < 8; ++i)
      for (size_t k = 0; k < 8; ++k) {
        CHECK(pairs[i][k] == pairs[k][i]);
        if (i == k || chosen[i] == 0 || chosen[k] == 0)
          CHECK(layer.at("lift")[i][k].is_null());
        else
          CHECK(layer.at("lift")[i][k].get<double>() ==
                Approx(tokens * pairs[i][k].get<double>() / (chosen[i] * chosen[k])));
      }
  }
  const std::string html = tmp / "co.html";
  const RunResult h = run_moe({"inspect", dir, "--data", text, "--html", html});
  INFO(h.describe());
  REQUIRE(h.ok());
  CHECK(h.out.find("co-activation over") != std::string::npos);
  std::ifstream in(html);
  std::stringstream page;
  page << in.rdbuf();
  CHECK(page.str().find("data-chart=\"co-activation\"") != std::string::npos);
  const std::string dom = chromium_dump_dom(tmp, html);
  for (const char* layer : {"1", "2"}) {
    const size_t at = dom.find(std::string("data-chart=\"co-activation\" data-layer=\"") + layer + "\"");
    REQUIRE(at != std::string::npos);
    // 8 x 8 cells, the diagonal drawn as "itself".
    const std::string body = dom.substr(at, dom.find("</svg>", at) - at);
    size_t cells = 0;
    for (size_t p = body.find("<rect class=\"cell"); p != std::string::npos; p = body.find("<rect class=\"cell", p + 1))
      ++cells;
    CHECK(cells == 64);
  }
  CHECK(page.str().find("<script") == std::string::npos);
}
