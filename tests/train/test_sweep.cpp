// `moe sweep`: planning (names, grids, presets, settings and their errors) and the command itself
// (each run an ordinary run directory, the comparison report, skip when finished, resume when
// interrupted, refuse changed settings).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "core/error.hpp"
#include "train/sweep.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;

std::vector<std::string> names(const std::vector<moe::SweepRun>& runs) {
  std::vector<std::string> out;
  for (const auto& r : runs) out.push_back(r.name);
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<json> lines_of(const std::string& path, const std::string& kind) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (json j = json::parse(line); j.at("kind") == kind) out.push_back(j);
  return out;
}

}  // namespace

TEST_CASE("plan_sweep: runs, grids crossed with runs, the paper preset, settings applied and validated", "[sweep]") {
  const moe::Config base = moe::load_config_file("tiny");
  SECTION("the paper preset") {
    const auto runs = moe::plan_sweep(base, {{"steps=50"}, {}, {}, "paper"});
    CHECK(names(runs) == std::vector<std::string>{"none", "aux", "u=1e-4", "u=1e-3", "u=1e-2"});
    CHECK(runs[0].config.train.balance == moe::Balance::none);
    CHECK(runs[1].config.train.balance == moe::Balance::aux);
    CHECK(runs[2].config.train.balance == moe::Balance::loss_free);
    CHECK(runs[2].config.train.bias_rate == 1e-4);
    CHECK(runs[4].config.train.bias_rate == 1e-2);
    for (const auto& r : runs) CHECK(r.config.train.steps == 50);  // --set reaches every run
  }
  SECTION("a grid, crossed with named runs; model fields too") {
    const auto runs = moe::plan_sweep(
        base, {{}, {"sign:bias_update=sign", "prop:bias-update=proportional"}, {"bias_rate=1e-3,1e-2"}, ""});
    CHECK(names(runs) == std::vector<std::string>{"sign_u=1e-3", "sign_u=1e-2", "prop_u=1e-3", "prop_u=1e-2"});
    CHECK(runs[3].config.train.bias_update == moe::BiasUpdate::proportional);
    CHECK(runs[3].config.train.bias_rate == 1e-2);
    const auto e = moe::plan_sweep(base, {{}, {}, {"model.n_routed_experts=8,16", "train.seed=1,2"}, ""});
    CHECK(names(e) == std::vector<std::string>{"n_routed_experts=8_seed=1", "n_routed_experts=8_seed=2",
                                               "n_routed_experts=16_seed=1", "n_routed_experts=16_seed=2"});
    CHECK(e[2].config.model.n_routed_experts == 16);
    CHECK(e[1].config.train.seed == 2);
  }
  SECTION("bad entries name what is wrong") {
    auto fails_with = [&](const moe::SweepPlan& plan, const std::string& part) {
      try {
        moe::plan_sweep(base, plan);
        FAIL("accepted");
      } catch (const moe::Error& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find(part) != std::string::npos);
      }
    };
    fails_with({{"bias_rat=1"}, {}, {}, ""}, "bias_rate");           // nearest field named
    fails_with({{"steps"}, {}, {}, ""}, "KEY=VALUE");                // no value
    fails_with({{}, {"no colon"}, {}, ""}, "NAME:KEY=VALUE");        // malformed run
    fails_with({{}, {"a/b:seed=1"}, {}, ""}, "run name");            // unsafe directory name
    fails_with({{}, {"x:seed=1", "x:seed=2"}, {}, ""}, "two runs");  // duplicate name
    fails_with({{}, {"x:balance=lossfree"}, {}, ""}, "balance");     // bad choice
    fails_with({{}, {"x:bias_freeze_at=2"}, {}, ""}, "bias_freeze_at");
    fails_with({{}, {}, {"steps=1,,2"}, ""}, "empty value");
    fails_with({{}, {}, {}, "wang"}, "unknown preset");
    fails_with({{}, {}, {"model.hidden=2,3"}, ""}, "unknown model key");
  }
}

TEST_CASE("moe sweep trains each run in its own directory, reports, skips finished runs and resumes interrupted ones",
          "[sweep]") {
  TempDir tmp("sweep");
  const std::string out = tmp / "sw", html = tmp / "sw.html";
  const Args sweep = {"sweep",
                      "--config",
                      "tiny",
                      "--out",
                      out,
                      "--set",
                      "steps=6",
                      "--set",
                      "eval_every=3",
                      "--set",
                      "eval_tokens=2048",
                      "--set",
                      "save_every=3",
                      "--run",
                      "a:balance=none",
                      "--run",
                      "b:balance=loss-free,bias_rate=0.01",
                      "-t",
                      "1",
                      "--html",
                      html};
  const RunResult first = run_moe(sweep, {.timeout_s = 600});
  INFO(first.describe());
  REQUIRE(first.ok());
  for (const char* run : {"a", "b"}) {
    const auto end = lines_of(out + "/" + run + "/metrics.jsonl", "end");
    REQUIRE(end.size() == 1);
    CHECK(end[0].at("reason") == "completed");
    CHECK(std::filesystem::exists(out + "/" + run + "/model.safetensors"));
    CHECK(std::filesystem::exists(out + "/configs/" + run + ".json"));
  }
  CHECK(json::parse(slurp(out + "/configs/b.json")).at("train").at("bias_rate") == 0.01);
  // The comparison: one row per run, and the HTML with the paper's MaxVio_global chart.
  CHECK(first.out.find("comparison") != std::string::npos);
  CHECK(first.out.find("loss-free (u 0.01)") != std::string::npos);
  const std::string page = slurp(html);
  CHECK(page.find("data-chart=\"compare-maxvio-global\"") != std::string::npos);
  CHECK(page.find("<section class=\"card run\" id=\"run-1\" data-run=\"b\"") != std::string::npos);

  // The same command again: nothing to train, the report again (--force for the HTML).
  const std::string a_metrics = slurp(out + "/a/metrics.jsonl");
  Args again = sweep;
  again.push_back("--force");
  const RunResult second = run_moe(again, {.timeout_s = 600});
  INFO(second.describe());
  REQUIRE(second.ok());
  CHECK(second.out.find("[1/") == std::string::npos);  // no run started
  CHECK(slurp(out + "/a/metrics.jsonl") == a_metrics);

  // A config written by an older moe, without fields added since (their defaults apply): no change.
  json older = json::parse(slurp(out + "/configs/a.json"));
  older["train"].erase("bias_center"), older["train"].erase("z_loss");
  std::ofstream(out + "/configs/a.json") << older.dump(2);
  const RunResult upgraded = run_moe(again, {.timeout_s = 600});
  INFO(upgraded.describe());
  REQUIRE(upgraded.ok());
  CHECK(upgraded.out.find("[1/") == std::string::npos);

  // Interrupt b after its step-3 checkpoint (as a Ctrl-C would leave it), then the sweep resumes it.
  const RunResult stopped = run_moe(
      {"train", "--config", out + "/configs/b.json", "--out", out + "/b", "--force", "--stop-at", "3", "-t", "1"},
      {.timeout_s = 300});
  REQUIRE(stopped.ok());
  const RunResult third = run_moe(again, {.timeout_s = 600});
  INFO(third.describe());
  REQUIRE(third.ok());
  CHECK(third.out.find("interrupted: will resume") != std::string::npos);
  CHECK(third.out.find("b: resuming") != std::string::npos);
  const auto b_train = lines_of(out + "/b/metrics.jsonl", "train");
  CHECK(b_train.back().at("step") == 6);
  CHECK(lines_of(out + "/b/metrics.jsonl", "end").back().at("reason") == "completed");
  CHECK(slurp(out + "/a/metrics.jsonl") == a_metrics);

  // Other settings for an existing run are refused, naming it; nothing is trained or changed.
  Args changed = again;
  changed[6] = "steps=8";
  const RunResult refused = run_moe(changed, {.timeout_s = 60});
  CHECK(refused.exited);
  CHECK(refused.code == 1);
  CHECK(refused.err.find(out + "/a: this run was trained with other settings") != std::string::npos);
  CHECK(slurp(out + "/a/metrics.jsonl") == a_metrics);
  CHECK(json::parse(slurp(out + "/configs/a.json")).at("train").at("steps") == 6);
}

TEST_CASE("moe sweep: bad flags are one-line errors before anything is trained", "[sweep]") {
  TempDir tmp("sweep_bad");
  for (const Args& extra :
       {Args{"--run", "x:stpes=3"}, Args{"--grid", "seed"}, Args{"--preset", "nope"}, Args{"--jobs", "0"}, Args{}}) {
    Args args = {"sweep", "--config", "tiny", "--out", tmp / "sw"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_moe(args, {.timeout_s = 60});
    INFO(r.describe());
    CHECK(r.exited);
    CHECK(r.code == 1);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_FALSE(std::filesystem::exists(tmp / "sw"));
  }
}
