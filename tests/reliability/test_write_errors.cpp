// A save that cannot be written — the disk fills up, or a write fails — stops training with one
// clear line, leaves the previous checkpoint exactly as it was (and loadable), removes what the
// failed save wrote, and --resume continues once the problem is gone.
//
// Disk full: the run directory is on a tmpfs mounted by the test (as root) just big enough for one
// checkpoint, so the second save hits ENOSPC; where mounting is not allowed the test fails.
// Write error: RLIMIT_FSIZE is lowered on the running trainer (prlimit, no privileges needed) with
// SIGXFSZ ignored, so its next checkpoint write fails with EFBIG.
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <cstring>
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
  std::vector<std::string> a = {kMoeBinary,   "train", "--config", config,      "--data",
                                kShakespeare, "--out", dir,        "--threads", "2"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

int64_t checkpoint_step(const std::string& dir) {
  return read_json(dir + "/trainer_state.json").at("step").get<int64_t>();
}

void check_one_error_line(const RunResult& r) {
  CHECK_FALSE(r.signaled);
  REQUIRE(r.exited);
  CHECK(r.code == 1);
  CHECK(r.err.rfind("moe: ", 0) == 0);
  CHECK(count_substr(r.err, "\n") == 1);
}

void check_checkpoint_loads(const std::string& dir, const std::string& logs) {
  const std::string text = logs + "/eval.txt";
  write_bytes(text, "to be or not to be, that is the question\n");
  const RunResult r = run_moe({"eval", "--model", dir, "--data", text, "-t", "2"}, {.timeout_s = 60});
  INFO(r.describe());
  CHECK(r.exited);
  CHECK(r.code == 0);
}

}  // namespace

TEST_CASE("reliability: a full disk during a save keeps the previous checkpoint and reports the error",
          "[reliability]") {
  TempDir tmp("reliability"), logs("reliability_logs");
  const std::string config = write_json(tmp / "micro.json", micro_config());
  const std::vector<std::string> flags = {"--steps", "10", "--save-every", "1", "--eval-every", "0"};
  // References on the ordinary disk: the checkpoint of step 1 and the whole run.
  const std::string first = tmp / "first", full = tmp / "full";
  for (const auto& [dir, extra] :
       {std::pair{first, std::vector<std::string>{"--stop-at", "1"}}, std::pair{full, std::vector<std::string>{}}}) {
    std::vector<std::string> f = flags;
    f.insert(f.end(), extra.begin(), extra.end());
    const RunResult r = run(train_args(config, dir, f), {.timeout_s = 60});
    INFO(r.describe());
    REQUIRE(r.code == 0);
  }
  // Room for the run directory at step 1 plus half a checkpoint: the save of step 2 cannot fit.
  uint64_t checkpoint = 0;
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    checkpoint += pages(fs::file_size(first + "/" + f));
  const uint64_t size = (tree_pages(first) + checkpoint / 2) * 4096;
  TmpfsMount disk(tmp / "disk", size);
  // A test that cannot create its condition fails: passing here would claim a full disk was handled.
  if (!disk.mounted)
    FAIL("cannot mount a tmpfs to fill (" << disk.error
                                          << "); this test needs root (CAP_SYS_ADMIN), as scripts/test has");
  const std::string dir = disk.dir + "/run";
  const RunResult r = run(train_args(config, dir, flags), {.timeout_s = 60});
  INFO(r.describe());
  check_one_error_line(r);
  CHECK(r.err.find("No space left on device") != std::string::npos);
  CHECK(r.err.find(dir) != std::string::npos);
  CHECK(r.err.find("step 2 was not saved") != std::string::npos);
  CHECK(r.err.find("previous checkpoint") != std::string::npos);
  // The checkpoint of step 1 is in place, byte for byte, and loads; the failed save is gone.
  CHECK(checkpoint_step(dir) == 1);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "config.json"}) {
    INFO(f);
    CHECK(read_bytes(dir + "/" + f) == read_bytes(first + "/" + f));
  }
  CHECK(leftovers(dir).empty());
  check_checkpoint_loads(dir, logs.path());
  // With room again, --resume finishes the run with the weights of the run that had room all along.
  REQUIRE(disk.resize(16ull << 20));
  const RunResult again = run_moe({"train", "--out", dir, "--resume", "--threads", "2"}, {.timeout_s = 60});
  INFO(again.describe());
  REQUIRE(again.code == 0);
  CHECK(checkpoint_step(dir) == 10);
  CHECK(read_bytes(dir + "/model.safetensors") == read_bytes(full + "/model.safetensors"));
  CHECK(leftovers(dir).empty());
}

TEST_CASE("reliability: a write error during a save keeps the previous checkpoint and reports the error",
          "[reliability]") {
  TempDir tmp("reliability"), logs("reliability_logs");
  const std::string config = write_json(tmp / "micro.json", micro_config());
  const std::vector<std::string> flags = {"--steps", "300", "--save-every", "1", "--eval-every", "0"};
  const std::string dir = tmp / "run";
  const auto t0 = std::chrono::steady_clock::now();
  Process train(train_args(config, dir, flags), {.ignore_sigxfsz = true});
  // Once a checkpoint exists, no file of the trainer may grow past 64 KiB (a model is ~150 KiB).
  while (!fs::exists(dir + "/trainer_state.json") && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  const struct rlimit limit = {64 << 10, 64 << 10};
  const bool limited = ::prlimit(train.pid(), RLIMIT_FSIZE, &limit, nullptr) == 0;
  const RunResult r = train.wait(30);
  INFO(r.describe());
  REQUIRE(limited);
  check_one_error_line(r);
  CHECK(r.err.find("File too large") != std::string::npos);
  CHECK(r.err.find("was not saved") != std::string::npos);
  CHECK(r.err.find("previous checkpoint in " + dir + " is intact") != std::string::npos);
  CHECK(leftovers(dir).empty());
  // The last checkpoint is the one of an uninterrupted run stopped at that step.
  const int64_t step = checkpoint_step(dir);
  REQUIRE(step >= 1);
  REQUIRE(step < 300);
  const std::string ref = tmp / "reference";
  std::vector<std::string> f = flags;
  f.insert(f.end(), {"--stop-at", std::to_string(step)});
  const RunResult rr = run(train_args(config, ref, f), {.timeout_s = 60});
  INFO(rr.describe());
  REQUIRE(rr.code == 0);
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    INFO(file);
    CHECK(read_bytes(dir + "/" + file) == read_bytes(ref + "/" + file));
  }
  check_checkpoint_loads(dir, logs.path());
  // Without the limit, --resume continues.
  const RunResult again = run_moe(
      {"train", "--out", dir, "--resume", "--threads", "2", "--stop-at", std::to_string(step + 2)}, {.timeout_s = 60});
  INFO(again.describe());
  REQUIRE(again.code == 0);
  CHECK(checkpoint_step(dir) == step + 2);
}
