// The balancing options of `moe train` (issue "balancing observatory"): the bias rules checked from
// the logged counts against an independent re-computation of each rule, centring, freezing, the
// z-loss in the log, the load statistics of every line against a naive recomputation, and bad values.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;

std::vector<json> train_lines(const std::string& dir) {
  std::vector<json> lines;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (json j = json::parse(line); j.at("kind") == "train") lines.push_back(j);
  return lines;
}

std::vector<json> train(const TempDir& tmp, const std::string& name, const Args& extra) {
  Args args = {"train", "--config",     "tiny", "--steps",   "6", "--eval-every", "0",       "--eval-tokens",
               "2048",  "--save-every", "0",    "--threads", "1", "--out",        tmp / name};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_moe(args, {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.ok());
  auto lines = train_lines(tmp / name);
  REQUIRE(lines.size() == 6);
  return lines;
}

std::vector<double> bias_of(const json& line, size_t layer) {
  return line.at("layers")[layer].at("bias").get<std::vector<double>>();
}
std::vector<double> counts_of(const json& line, size_t layer) {
  return line.at("layers")[layer].at("counts").get<std::vector<double>>();
}

// One update of the rule from `before` with the step's counts, written out independently.
std::vector<double> expected_update(std::vector<double> b, const std::vector<double>& c, double u, bool proportional,
                                    bool center) {
  const double mean = std::accumulate(c.begin(), c.end(), 0.0) / double(c.size());
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = mean - c[i];
    b[i] += proportional ? (mean > 0 ? u * d / mean : 0.0) : u * double((d > 0) - (d < 0));
  }
  if (center) {
    const double m = std::accumulate(b.begin(), b.end(), 0.0) / double(b.size());
    for (double& v : b) v -= m;
  }
  return b;
}

void check_rule(const std::vector<json>& lines, double u, bool proportional, bool center, int64_t frozen_after) {
  for (size_t s = 0; s < lines.size(); ++s)
    for (size_t l = 0; l < lines[s].at("layers").size(); ++l) {
      INFO("step " << s + 1 << " layer " << l);
      const std::vector<double> before =
          s == 0 ? std::vector<double>(bias_of(lines[0], l).size(), 0.0) : bias_of(lines[s - 1], l);
      const std::vector<double> want =
          int64_t(s) < frozen_after ? expected_update(before, counts_of(lines[s], l), u, proportional, center) : before;
      const std::vector<double> got = bias_of(lines[s], l);
      for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(2e-6));
    }
}

}  // namespace

TEST_CASE("bias rules: sign and proportional updates, centring and freezing follow the logged counts",
          "[train][balance]") {
  TempDir tmp("balance_options");
  SECTION("sign (DeepSeek-V3)") { check_rule(train(tmp, "sign", {"--bias-rate", "0.01"}), 0.01, false, false, 6); }
  SECTION("proportional") {
    const auto lines = train(tmp, "prop", {"--bias-rate", "0.01", "--bias-update", "proportional"});
    check_rule(lines, 0.01, true, false, 6);
    // Not the sign rule: some step moved some bias by other than ±u.
    bool other = false;
    for (double b : bias_of(lines[0], 0)) other |= std::fabs(std::fabs(b) - 0.01) > 1e-4 && b != 0.0;
    CHECK(other);
  }
  SECTION("centred: mean bias 0 every step") {
    const auto lines = train(tmp, "center", {"--bias-rate", "0.01", "--bias-center"});
    check_rule(lines, 0.01, false, true, 6);
    for (const json& line : lines)
      for (size_t l = 0; l < line.at("layers").size(); ++l) {
        const auto b = bias_of(line, l);
        CHECK(std::fabs(std::accumulate(b.begin(), b.end(), 0.0)) < 1e-5);
      }
  }
  SECTION("frozen after half the steps (6 steps, F = 0.5: steps 1-3 update, 4-6 do not)") {
    const auto lines = train(tmp, "freeze", {"--bias-rate", "0.01", "--bias-freeze-at", "0.5"});
    check_rule(lines, 0.01, false, false, 3);
    CHECK(bias_of(lines[2], 0) != bias_of(lines[1], 0));
    CHECK(bias_of(lines[5], 0) == bias_of(lines[2], 0));
  }
  SECTION("the settings are in the effective config") {
    train(tmp, "cfg",
          {"--bias-update", "proportional", "--bias-center", "--bias-freeze-at", "0.75", "--z-loss", "0.01"});
    std::ifstream in(tmp / "cfg/train_config.json");
    const json t = json::parse(in).at("train");
    CHECK(t.at("bias_update") == "proportional");
    CHECK(t.at("bias_center") == true);
    CHECK(t.at("bias_freeze_at") == 0.75);
    CHECK(t.at("z_loss") == 0.01);
  }
}

TEST_CASE("the router z-loss (--z-loss) is logged per layer and in total; off, it is absent and changes nothing",
          "[train][balance]") {
  TempDir tmp("z_loss");
  const auto off = train(tmp, "off", {});
  const auto on = train(tmp, "on", {"--z-loss", "0.001"});
  for (const json& line : off) CHECK_FALSE(line.contains("z_loss"));
  for (const json& line : on) {
    double sum = 0;
    for (const json& l : line.at("layers")) sum += l.at("z_loss").get<double>();
    CHECK(line.at("z_loss").get<double>() == Approx(sum));
    CHECK(line.at("z_loss").get<double>() > 0.0);
  }
  // The first step's forward is the same; its gradient differs, so step 2 does.
  CHECK(on[0].at("loss") == off[0].at("loss"));
  CHECK(on[1].at("loss") != off[1].at("loss"));
}

TEST_CASE("every metrics line carries the load statistics of its counts", "[train][balance]") {
  TempDir tmp("load_stats");
  const auto lines = train(tmp, "run", {"--balance", "none"});
  for (const json& line : lines)
    for (const json& l : line.at("layers")) {
      std::vector<double> c = l.at("counts").get<std::vector<double>>();
      const double E = double(c.size()), sum = std::accumulate(c.begin(), c.end(), 0.0), mean = sum / E;
      double sq = 0, dead = 0;
      for (double v : c) sq += (v - mean) * (v - mean), dead += v == 0;
      CHECK(l.at("cv").get<double>() == Approx(std::sqrt(sq / E) / mean));
      CHECK(l.at("jain").get<double>() ==
            Approx(sum * sum / (E * std::inner_product(c.begin(), c.end(), c.begin(), 0.0))));
      CHECK(l.at("dead").get<double>() == dead);
      std::vector<double> share;
      for (double v : c) share.push_back(v / sum);
      std::sort(share.begin(), share.end());
      const double r = 0.5 * (E - 1);  // the median by linear interpolation
      const double p50 =
          share[size_t(r)] + (r - std::floor(r)) * (share[std::min(size_t(r) + 1, c.size() - 1)] - share[size_t(r)]);
      CHECK(l.at("share_p50").get<double>() == Approx(p50));
      CHECK(l.at("share_p5").get<double>() <= l.at("share_p50").get<double>());
      CHECK(l.at("share_p95").get<double>() >= l.at("share_p50").get<double>());
    }
}

TEST_CASE("bad balancing values are refused with one line naming the setting", "[train][balance]") {
  TempDir tmp("balance_bad");
  for (const Args& bad : {Args{"--bias-freeze-at", "1.5"}, Args{"--bias-update", "linear"}, Args{"--z-loss", "-1"},
                          Args{"--balance", "global_aux"}}) {
    Args args = {"train", "--config", "tiny", "--steps", "2", "--out", tmp / "bad"};
    args.insert(args.end(), bad.begin(), bad.end());
    const RunResult r = run_moe(args, {.timeout_s = 60});
    INFO(r.describe());
    CHECK(r.exited);
    CHECK(r.code == 1);
    CHECK(r.err.find(bad[0].substr(2, 4)) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(std::filesystem::exists(tmp / "bad"));
  }
}
