// Interrupting `moe train`: SIGINT / SIGTERM stop it after the current step with a checkpoint
// (exit 130 / 143), a second SIGINT exits at once leaving the last checkpoint intact, and SIGKILL at
// random moments (also in the middle of saves) never costs more than the steps since the last
// checkpoint: resuming after every kill reaches the same final weights, byte for byte, as a run
// that was never interrupted.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "reliability_util.hpp"
#include "train/trainer.hpp"

using namespace moe_rel;
using namespace moe_test;

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> train_args(const std::string& config, const std::string& dir, std::vector<std::string> extra) {
  std::vector<std::string> a = {kMoeBinary,   "train", "--config", config,      "--data",
                                kShakespeare, "--out", dir,        "--threads", "2"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::vector<std::string> resume_args(const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {kMoeBinary, "train", "--out", dir, "--resume", "--threads", "2"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

size_t train_lines(const std::string& dir) {
  return count_substr(read_bytes(dir + "/metrics.jsonl"), "\"kind\":\"train\"");
}

// Polls `ready` every 0.2 ms until it holds; false when the process ended first or after `limit_s`.
template <class F>
bool poll_until(const Process& process, F ready, double limit_s = 30) {
  const auto t0 = Clock::now();
  while (!ready()) {
    if (process.has_exited()) return false;
    if (std::chrono::duration<double>(Clock::now() - t0).count() > limit_s) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

int64_t checkpoint_step(const std::string& dir) {
  return read_json(dir + "/trainer_state.json").at("step").get<int64_t>();
}

// `moe eval` of the checkpoint in `dir` succeeds.
void check_checkpoint_loads(const std::string& dir, const std::string& logs) {
  const std::string text = logs + "/eval.txt";
  write_bytes(text, "to be or not to be, that is the question\n");
  const RunResult r = run_moe({"eval", "--model", dir, "--data", text, "-t", "2"}, {.timeout_s = 60});
  INFO("moe eval of the checkpoint in " << dir << "\n" << r.describe());
  CHECK(r.exited);
  CHECK(r.code == 0);
}

}  // namespace

TEST_CASE("reliability: SIGINT and SIGTERM stop training with a checkpoint and exit 130 and 143", "[reliability]") {
  TempDir tmp("reliability"), logs("reliability_logs");
  const std::string config = write_json(tmp / "micro.json", micro_config());
  for (const auto& [sig, code, name] : {std::tuple{SIGINT, 130, "SIGINT"}, std::tuple{SIGTERM, 143, "SIGTERM"}}) {
    INFO(name);
    const std::string dir = tmp / (std::string("run_") + name);
    Process train(train_args(config, dir, {"--steps", "100000", "--save-every", "0", "--eval-every", "0"}));
    const bool running = poll_until(train, [&] { return train_lines(dir) >= 3; });
    train.kill(sig);
    const RunResult r = train.wait(30);
    INFO(r.describe());
    REQUIRE(running);
    REQUIRE(r.exited);
    CHECK(r.code == code);
    // Where the checkpoint is and how to continue (the closing summary, on stdout).
    CHECK(r.out.find("stopped at step ") != std::string::npos);
    CHECK(r.out.find("continue with: moe train --out " + dir + " --resume") != std::string::npos);
    CHECK(leftovers(dir).empty());
    // The checkpoint holds the last finished step; the log ends there with a "signal" end line.
    const int64_t step = checkpoint_step(dir);
    CHECK(step >= 3);
    CHECK(int64_t(train_lines(dir)) == step);
    CHECK(read_bytes(dir + "/metrics.jsonl").find("\"reason\":\"signal\"") != std::string::npos);
    check_checkpoint_loads(dir, logs.path());
    // --resume continues from there.
    const RunResult again = run(resume_args(dir, {"--stop-at", std::to_string(step + 2)}), {.timeout_s = 60});
    INFO(again.describe());
    REQUIRE(again.exited);
    CHECK(again.code == 0);
    CHECK(checkpoint_step(dir) == step + 2);
    CHECK(int64_t(train_lines(dir)) == step + 2);
  }
}

TEST_CASE("reliability: a second SIGINT exits at once and the last checkpoint stays intact", "[reliability]") {
  TempDir tmp("reliability"), logs("reliability_logs");
  // The tiny model with 10 micro-batches of 16 x 256 per step: a step takes about half a second
  // (tiny trains at ~80k tokens/s here), so the second SIGINT (50 ms after the first) arrives while
  // the first waits for the step to end.
  const std::string config = MOE_SOURCE_DIR "/configs/tiny.json";
  const std::string dir = tmp / "run";
  Process train(train_args(config, dir,
                           {"--steps", "100000", "--save-every", "1", "--eval-every", "0", "--eval-tokens", "128",
                            "--batch", "16", "--seq", "256", "--accum", "10"}));
  // Once a checkpoint is in place and its .pending directory gone, the next step has begun.
  auto saved_step = [&]() -> int64_t {
    const std::string text = read_bytes(dir + "/trainer_state.json");
    return text.empty() ? 0 : json::parse(text).at("step").get<int64_t>();
  };
  bool running = poll_until(
      train, [&] { return saved_step() >= 1; }, 60);
  const int64_t seen = saved_step();
  running = running && poll_until(
                           train, [&] { return saved_step() > seen && !fs::exists(dir + "/.pending"); }, 60);
  const int64_t before_signals = saved_step();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  train.kill(SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t_second = Clock::now();
  train.kill(SIGINT);
  const RunResult r = train.wait(30);
  const double exit_after = std::chrono::duration<double>(Clock::now() - t_second).count();
  INFO(r.describe());
  REQUIRE(running);
  REQUIRE(r.exited);
  CHECK(r.code == 130);
  // At once: not through the graceful path (no checkpoint message, no end line), saying so on a
  // line of its own.
  CHECK(r.err.find("checkpoint saved") == std::string::npos);
  CHECK(r.err.find("\nmoe: interrupted twice: leaving without saving; the last checkpoint is intact\n") !=
        std::string::npos);
  CHECK(read_bytes(dir + "/metrics.jsonl").find("\"kind\":\"end\"") == std::string::npos);
  CHECK(exit_after < 2.0);
  // The last checkpoint loads, and --resume (which discards a save cut short) continues it.
  const int64_t step = checkpoint_step(dir);
  CHECK(step == before_signals);  // the step under way when the signals came was not saved
  check_checkpoint_loads(dir, logs.path());
  const RunResult again = run(resume_args(dir, {"--stop-at", std::to_string(step + 1)}), {.timeout_s = 60});
  INFO(again.describe());
  REQUIRE(again.exited);
  CHECK(again.code == 0);
  CHECK(checkpoint_step(dir) == step + 1);
  CHECK(leftovers(dir).empty());
}

TEST_CASE("reliability: SIGKILL at random moments then --resume reaches the uninterrupted weights exactly",
          "[reliability]") {
  TempDir tmp("reliability"), logs("reliability_logs");
  const std::string config = write_json(tmp / "micro.json", micro_config());
  const int kSteps = 30;
  const std::vector<std::string> flags = {
      "--steps", std::to_string(kSteps), "--save-every", "1", "--eval-every", "10", "--seed", "99"};
  const std::string ref = tmp / "reference", dir = tmp / "killed";
  double step_s = 0;  // wall time of a step with its save, from the reference run
  {
    const RunResult r = run(train_args(config, ref, flags), {.timeout_s = 60});
    INFO(r.describe());
    REQUIRE(r.exited);
    REQUIRE(r.code == 0);
    step_s = r.seconds / kSteps;
  }

  std::mt19937 rng(20240607);  // fixed: the same kill schedule on every run
  // Random kills within about four steps of the start, so the six kills land before the run
  // could finish however fast the machine is (measured 10-70 ms a step, mostly fsync).
  std::uniform_real_distribution<double> delay_steps(0.0, 4.0);
  const int kKills = 6;
  int kills = 0, kills_in_save = 0, segments = 0;
  int64_t last_step = 0;
  for (bool first = true;; first = false) {
    REQUIRE(segments++ < 40);
    Process train(first ? train_args(config, dir, flags) : resume_args(dir));
    if (kills < kKills) {
      // The first run must have written a checkpoint; a resumed run always has one.
      if (first) poll_until(train, [&] { return fs::exists(dir + "/trainer_state.json"); });
      const bool aimed = kills % 2 == 1;
      if (aimed) {
        // Aimed at a save: once a save cut short by the last kill has been cleared away at
        // startup, kill as soon as DIR/.pending appears again.
        poll_until(train, [&] { return !fs::exists(dir + "/.pending"); });
        poll_until(train, [&] { return fs::exists(dir + "/.pending"); });
      } else {
        const auto until = Clock::now() + std::chrono::microseconds(5000 + int64_t(1e6 * step_s * delay_steps(rng)));
        poll_until(train, [&] { return Clock::now() >= until; });
      }
      train.kill(SIGKILL);
      const RunResult r = train.wait(30);
      if (r.exited) {  // finished before the kill landed
        INFO(r.describe());
        REQUIRE(r.code == 0);
        break;
      }
      REQUIRE(r.signaled);
      REQUIRE(r.signal == SIGKILL);
      ++kills;
      const bool in_save = aimed && fs::exists(dir + "/.pending");
      kills_in_save += in_save;
      // The last checkpoint always loads (eval does not touch the run directory).
      const int64_t step = checkpoint_step(dir);
      INFO("kill " << kills << (in_save ? " during a save" : "") << " at checkpoint step " << step);
      if (std::getenv("MOE_REL_VERBOSE"))
        std::fprintf(stderr, "kill %d%s%s after %.3f s: checkpoint step %lld\n", kills,
                     aimed ? " (aimed at a save)" : "", in_save ? " during a save" : "", r.seconds, (long long)step);
      CHECK(step >= last_step);
      last_step = step;
      check_checkpoint_loads(dir, logs.path());
      continue;
    }
    const RunResult r = train.wait(60);
    INFO(r.describe());
    REQUIRE(r.exited);
    REQUIRE(r.code == 0);
    break;
  }
  INFO(kills << " kills, " << kills_in_save << " during a save");
  CHECK(kills >= 4);
  CHECK(kills_in_save >= 2);
  CHECK(checkpoint_step(dir) == kSteps);
  // Same weights, optimizer state and RNG as the run that was never interrupted.
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    INFO(file);
    CHECK(read_bytes(dir + "/" + file) == read_bytes(ref + "/" + file));
  }
  CHECK(read_json(dir + "/trainer_state.json").at("rng") == read_json(ref + "/trainer_state.json").at("rng"));
  // The log reads as one run: steps 1..kSteps, each once.
  std::vector<int64_t> steps;
  std::istringstream lines(read_bytes(dir + "/metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line);
    if (j.at("kind") == "train") steps.push_back(j.at("step").get<int64_t>());
  }
  REQUIRE(steps.size() == size_t(kSteps));
  for (size_t i = 0; i < steps.size(); ++i) CHECK(steps[i] == int64_t(i) + 1);
  CHECK(leftovers(dir).empty());
}

namespace {
// Sends itself SIGTERM during step `at`, as a user's kill would.
struct SignalAtStep : moe::TrainObserver {
  int64_t at;
  explicit SignalAtStep(int64_t step) : at(step) {}
  void on_start(const moe::RunStart&) override {}
  void on_step(const moe::StepRecord& r, double) override {
    if (r.step == at) ::kill(::getpid(), SIGTERM);
  }
  void on_eval(const moe::EvalRecord&) override {}
  void on_save(const std::string&, int64_t) override {}
  void on_end(const moe::RunEnd&) override {}
};
}  // namespace

TEST_CASE("reliability: the library returns a stop signal to its caller instead of exiting", "[reliability]") {
  TempDir tmp("reliability");
  moe::TrainOptions options;
  json cfg = micro_config();
  cfg["train"]["steps"] = 50;
  options.config = moe::config_from_json(cfg, "micro");
  options.out_dir = tmp / "run";
  SignalAtStep observer(3);
  // Before: std::exit(143) inside moe::train ended this test process.
  const moe::TrainResult r = moe::train(options, observer);
  CHECK(r.stop_signal == SIGTERM);
  CHECK(r.last_step == 3);
  CHECK(checkpoint_step(options.out_dir) == 3);
}
