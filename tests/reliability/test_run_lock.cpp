// One trainer per run directory: a second `moe train` on a directory in use is refused before it
// reads or removes anything (with --force, with --resume, or neither), the first run finishes
// untouched, and a lock left by a killed trainer does not block the next one.
#include <signal.h>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "reliability_util.hpp"

using namespace moe_rel;
using namespace moe_test;

namespace {

std::vector<std::string> train_args(const std::string& config, const std::string& dir, std::vector<std::string> extra) {
  std::vector<std::string> a = {kMoeBinary, "train", "--config", config, "--out", dir, "--threads", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// Waits until the run in `dir` has written a train line (its directory is prepared and locked).
bool wait_for_first_step(const Process& p, const std::string& dir) {
  const auto t0 = std::chrono::steady_clock::now();
  while (read_bytes(dir + "/metrics.jsonl").find("\"kind\":\"train\"") == std::string::npos) {
    if (p.has_exited() || std::chrono::steady_clock::now() - t0 > std::chrono::seconds(60)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace

TEST_CASE("reliability: a second trainer on a run directory in use is refused, with or without --force",
          "[reliability]") {
  TempDir tmp("run_lock");
  json cfg = micro_config();
  cfg["train"]["steps"] = 1000000;  // runs until the SIGTERM below
  cfg["train"]["save_every"] = 50;
  const std::string config = write_json(tmp / "micro.json", cfg);
  const std::string dir = tmp / "run";
  Process first(train_args(config, dir, {}));
  REQUIRE(wait_for_first_step(first, dir));
  const std::string in_use = dir + ": in use by moe train (pid " + std::to_string(first.pid()) + ")";
  for (const auto& extra : std::vector<std::vector<std::string>>{{"--force"}, {}, {"--steps", "3"}}) {
    const RunResult r = run(train_args(config, dir, extra), {.timeout_s = 60});
    INFO(r.describe());
    CHECK(r.code == 1);
    CHECK(r.err.find(in_use) != std::string::npos);
  }
  const RunResult resume = run({kMoeBinary, "train", "--out", dir, "--resume", "--threads", "1"}, {.timeout_s = 60});
  INFO(resume.describe());
  CHECK(resume.code == 1);
  CHECK(resume.err.find(in_use) != std::string::npos);
  // The first run was not disturbed: stopped, it saves, and its metrics hold its own steps 1..N,
  // each once, matching its checkpoint.
  first.kill(SIGTERM);
  const RunResult done = first.wait();
  INFO(done.describe());
  REQUIRE(done.exited);
  CHECK(done.code == 143);
  const int64_t last = read_json(dir + "/trainer_state.json").at("step").get<int64_t>();
  std::istringstream lines(read_bytes(dir + "/metrics.jsonl"));
  std::string line;
  int64_t expected = 1;
  while (std::getline(lines, line)) {
    const json j = json::parse(line);
    if (j.at("kind") == "train") CHECK(j.at("step").get<int64_t>() == expected++);
  }
  CHECK(expected - 1 == last);
}

TEST_CASE("reliability: the lock of a killed trainer does not block the next one", "[reliability]") {
  TempDir tmp("run_lock");
  json cfg = micro_config();
  cfg["train"]["steps"] = 100000;
  cfg["train"]["save_every"] = 5;
  const std::string config = write_json(tmp / "micro.json", cfg);
  const std::string dir = tmp / "run";
  Process first(train_args(config, dir, {}));
  REQUIRE(wait_for_first_step(first, dir));
  first.kill(SIGKILL);
  first.wait();
  const RunResult again = run(train_args(config, dir, {"--force", "--steps", "3"}), {.timeout_s = 60});
  INFO(again.describe());
  CHECK(again.ok());
  CHECK(read_json(dir + "/trainer_state.json").at("step") == 3);
}
