// `moe train` in a terminal of 80 columns (a pseudo-terminal from script(1)): a compact start-up,
// one status line that never wraps, checkpoint saves shown; in a pipe no escape codes; and a
// reader that goes away (`| head`) stops the run quietly with a checkpoint.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "report/train_console.hpp"

using moe_test::kMoeBinary;
using moe_test::RunResult;
using moe_test::TempDir;
using nlohmann::json;

namespace {

std::string train_command(const std::string& dir, const std::string& extra) {
  return kMoeBinary + " train --config tiny-v3 --batch 2 --seq 64 --eval-every 6 --eval-tokens 256 --threads 2 --out " +
         dir + " " + extra;
}

}  // namespace

TEST_CASE("train in an 80-column terminal: a short start-up and one status line that never wraps", "[train][tty]") {
  TempDir tmp("tty");
  const std::string dir = tmp / "run";
  const RunResult r =
      moe_test::run({"/usr/bin/script", "-qec",
                     "stty cols 80 rows 24; " + train_command(dir, "--steps 12 --save-every 5"), "/dev/null"});
  INFO(r.describe());
  REQUIRE(r.code == 0);
  // Every redraw of the status line ("\r\033[2K" + text) fits in 79 columns.
  int redraws = 0;
  size_t at = 0;
  while ((at = r.out.find("\r\033[2K", at)) != std::string::npos) {
    at += 5;
    const size_t end = r.out.find_first_of("\r\n", at);
    const std::string shown = r.out.substr(at, end - at);
    if (shown.rfind("step ", 0) != 0) continue;  // a clear before a message (eval, save, summary)
    ++redraws;
    CAPTURE(shown);
    CHECK(shown.size() < 80);
  }
  CHECK(redraws == 12);
  // The start-up is a few lines, not the config JSON; saves are shown on a terminal too.
  const std::string before_status = r.out.substr(0, r.out.find("\r\033[2K"));
  CHECK(std::count(before_status.begin(), before_status.end(), '\n') <= 7);
  CHECK(r.out.find("\"hidden_size\"") == std::string::npos);
  CHECK(r.out.find("saved checkpoint at step 5 in " + dir) != std::string::npos);
  CHECK(r.out.find("finished all 12 steps in ") != std::string::npos);
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    const std::string last = line.substr(line.rfind('\r') == std::string::npos ? 0 : line.rfind('\r') + 1);
    CAPTURE(last);
    if (last.find("\033[2K") == 0) continue;
    CHECK(last.size() <= 80);  // no start-up, eval or summary line wraps either
  }
}

TEST_CASE("the status line drops fields in a fixed order as the terminal narrows", "[train][tty]") {
  moe::StepRecord r;
  r.step = 420, r.steps = 1000, r.loss = 1.2345, r.lr = 3e-3, r.tokens_per_s = 12345, r.mtp_loss = 1.5;
  r.layers.push_back({});
  r.layers.back().maxvio = 0.25;
  const std::string wide = moe::status_line(r, 1.3, 75, 200);
  CHECK(wide ==
        "step 420/1000  loss 1.2345  mtp_loss 1.5000  val 1.3000  lr 3.00e-03  12345 tok/s  maxvio 0.250  eta 1m15s");
  CHECK(moe::status_line(r, 1.3, 75, 95) ==
        "step 420/1000  loss 1.2345  mtp_loss 1.5000  val 1.3000  12345 tok/s  maxvio 0.250  eta 1m15s");
  CHECK(moe::status_line(r, 1.3, 75, 80) ==
        "step 420/1000  loss 1.2345  val 1.3000  12345 tok/s  maxvio 0.250  eta 1m15s");
  CHECK(moe::status_line(r, 1.3, 75, 60) == "step 420/1000  loss 1.2345  val 1.3000  eta 1m15s");
  CHECK(moe::status_line(r, 1.3, 75, 40) == "step 420/1000  loss 1.2345  eta 1m15s");
  CHECK(moe::status_line(r, 1.3, 75, 20) == "step 420/1000  loss");
  for (int width = 10; width <= 120; ++width) CHECK(int(moe::status_line(r, 1.3, 75, width).size()) < width);
}

TEST_CASE("train in a pipe: plain lines only; a reader that leaves stops it quietly with a checkpoint",
          "[train][tty]") {
  TempDir tmp("pipe");
  const std::string dir = tmp / "run";
  const RunResult r = moe_test::run(
      {"/bin/bash", "-c",
       "set -o pipefail; " + train_command(dir, "--steps 100000 --log-every 1 --save-every 0") + " | head -n 12"});
  INFO(r.describe());
  CHECK(r.code == 0);  // moe's own status (pipefail): quiet success
  CHECK(r.out.find('\033') == std::string::npos);
  CHECK(r.err.empty());  // quietly
  std::ifstream state(dir + "/trainer_state.json");
  REQUIRE(state);
  const json s = json::parse(state);
  CHECK(s.at("step").get<int64_t>() >= 1);
  std::ifstream metrics(dir + "/metrics.jsonl");
  std::string line, last;
  while (std::getline(metrics, line)) last = line;
  CHECK(json::parse(last).at("reason") == "output-closed");
}

TEST_CASE("inspect --follow waits for the run, fits an 80x24 terminal, and writes no escape codes to a pipe",
          "[train][tty]") {
  TempDir tmp("follow");
  const std::string dir = tmp / "run";
  moe_test::Process follow(
      {"/usr/bin/script", "-qec",
       "stty cols 80 rows 24; " + kMoeBinary + " inspect " + dir + " --follow --interval 0.05", "/dev/null"},
      {.timeout_s = 120});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // it waits for a directory that is not there
  // small-e64: 64 experts in 3 layers, a full report far taller than 24 rows.
  const RunResult train =
      moe_test::run_moe({"train", "--config", "small-e64", "--steps", "6", "--batch", "2", "--seq", "32",
                         "--eval-every", "3", "--eval-tokens", "256", "-t", "2", "--out", dir});
  REQUIRE(train.ok());
  const RunResult r = follow.wait();
  INFO(r.describe());
  REQUIRE(r.code == 0);
  CHECK(r.out.find("waiting for " + dir + "/metrics.jsonl") != std::string::npos);
  // Each frame (after a clear) fits the window: at most 24 rows, each under 80 columns.
  const std::string clear = "\033[H\033[2J";
  size_t at = r.out.find(clear);
  REQUIRE(at != std::string::npos);
  int frames = 0;
  while (at != std::string::npos) {
    const size_t next = r.out.find(clear, at + clear.size());
    std::string frame =
        r.out.substr(at + clear.size(), next == std::string::npos ? std::string::npos : next - at - clear.size());
    for (size_t esc; (esc = frame.find("\033[")) != std::string::npos;)
      frame.erase(esc, frame.find('m', esc) - esc + 1);
    std::istringstream lines(frame);
    int rows = 0;
    for (std::string line; std::getline(lines, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      CAPTURE(line);
      CHECK(line.size() < 80);
      ++rows;
    }
    CHECK(rows <= 24);
    ++frames;
    at = next;
  }
  CHECK(frames >= 2);
  CHECK(r.out.find("finished") != std::string::npos);
  // In a pipe: the finished run's report once, plain.
  const RunResult piped = moe_test::run_moe({"inspect", dir, "--follow"});
  REQUIRE(piped.ok());
  CHECK(piped.out.find('\033') == std::string::npos);
  CHECK(piped.out.find("load report: ") != std::string::npos);
}
