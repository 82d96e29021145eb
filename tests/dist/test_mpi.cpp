// Training across processes through the real binary under mpirun (oversubscribed on a 2-core
// machine; --allow-run-as-root because CI runs as root): data- and expert-parallel runs match one
// process, resume with the same ranks, refuse bad options, and survive a killed rank with the last
// checkpoint intact. Built only with MPI.
#ifdef MOE_WITH_MPI
#include <dirent.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "mpi_util.hpp"

using namespace moe_mpi;

TEST_CASE("mpi: data- and expert-parallel runs on 2 and 4 ranks match one process over 20 steps", "[mpi]") {
  TempDir tmp("mpi");
  const Run one = train_run(tmp, "one", 0, {});
  REQUIRE(one.train.size() == 20);
  struct Case {
    const char* name;
    int ranks;
    std::vector<std::string> flags;
  };
  for (const Case& k : {Case{"dp2", 2, {}}, Case{"ep2", 2, {"--expert-parallel"}}, Case{"dp4", 4, {}},
                        Case{"ep4", 4, {"--expert-parallel"}}}) {
    INFO(k.name);
    const Run run = train_run(tmp, k.name, k.ranks, k.flags);
    REQUIRE(run.train.size() == 20);
    for (size_t s = 0; s < 20; ++s) {
      const json &a = one.train[s], &b = run.train[s];
      INFO("step " << s + 1);
      // The same global batches and the same math; only the order of float sums differs (per-rank
      // partial losses and gradients added by MPI): observed differences are ~1e-9, a wrong
      // share of the batch or a missing gradient term moves the loss by > 1e-3 within a step.
      CHECK(std::fabs(a["loss"].get<double>() - b["loss"].get<double>()) < 1e-4);
      for (size_t l = 0; l < a["layers"].size(); ++l) {
        // Bias moves in steps of ±bias_rate from the global counts: equal unless a routing
        // decision flipped on a near-tie, which would show as a difference of 2 · bias_rate.
        const auto ba = a["layers"][l]["bias"].get<std::vector<double>>();
        const auto bb = b["layers"][l]["bias"].get<std::vector<double>>();
        for (size_t e = 0; e < ba.size(); ++e) CHECK(std::fabs(ba[e] - bb[e]) < 1e-6);
        CHECK(a["layers"][l]["counts"] == b["layers"][l]["counts"]);
      }
      // Per-rank load: every expert row was computed by exactly one rank.
      REQUIRE(b.contains("ranks"));
      CHECK(b["ranks"]["n"] == k.ranks);
      CHECK(b["ranks"]["comm_seconds"].get<double>() >= 0.0);
      // All-to-all time is part of the communication, and only expert parallelism has any.
      const double a2a = b["ranks"]["alltoall_seconds"].get<double>();
      CHECK(a2a <= b["ranks"]["comm_seconds"].get<double>());
      CHECK((k.flags.empty() ? a2a == 0.0 : a2a > 0.0));
      for (size_t l = 0; l < b["layers"].size(); ++l) {
        int64_t rows = 0;
        for (int64_t v : b["ranks"]["layers"][l]["rows"].get<std::vector<int64_t>>()) rows += v;
        CHECK(rows == 8 * 32 * 2);  // batch x seq x top-2
      }
    }
    REQUIRE(run.eval.size() == one.eval.size());
    for (size_t e = 0; e < one.eval.size(); ++e)
      CHECK(std::fabs(one.eval[e]["val_loss"].get<double>() - run.eval[e]["val_loss"].get<double>()) < 1e-4);
    // One checkpoint directory, usable by the one-process tools.
    const RunResult ev = run_moe({"eval", "-m", run.dir, "--data", kShakespeare, "--json"}, {.timeout_s = 120});
    INFO(ev.describe());
    CHECK(ev.code == 0);
  }
}

TEST_CASE("mpi: expert-parallel resume on the same ranks ends with the uninterrupted run's weights", "[mpi]") {
  TempDir tmp("mpi");
  const Run straight = train_run(tmp, "straight", 2, {"--expert-parallel"});
  train_run(tmp, "resumed", 2, {"--expert-parallel", "--stop-at", "10"});
  const RunResult r =
      run(mpirun(2, {"train", "--out", tmp / "resumed", "--resume", "--expert-parallel"}), {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.code == 0);
  CHECK(read_bytes(straight.dir + "/model.safetensors") == read_bytes(tmp / "resumed/model.safetensors"));
  CHECK(read_bytes(straight.dir + "/optimizer.safetensors") == read_bytes(tmp / "resumed/optimizer.safetensors"));
}

TEST_CASE("mpi: device-limited routing runs and every token's experts come from at most M ranks", "[mpi]") {
  TempDir tmp("mpi");
  const Run run = train_run(tmp, "limited", 4, {"--expert-parallel", "--max-ranks-per-token", "1"});
  REQUIRE(run.train.size() == 20);
  // With M = 1 and 2 experts per rank, both of a token's experts share a rank; the routing itself
  // is checked against a reference in test_rank_limit.cpp.
  CHECK(std::isfinite(run.train.back()["loss"].get<double>()));
  CHECK(run.train.back()["loss"].get<double>() < run.train.front()["loss"].get<double>());
}

TEST_CASE("mpi: bad parallel options are refused with one line naming the flag", "[mpi]") {
  TempDir tmp("mpi");
  const std::string config = tmp / "mpi.json";
  write_bytes(config, mpi_config().dump());
  json grouped = mpi_config();
  grouped["model"]["n_group"] = 2;
  grouped["model"]["topk_group"] = 1;
  write_bytes(tmp / "grouped.json", grouped.dump());
  struct Case {
    int ranks;
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {3, {"--config", config}, "--batch"},
      {3, {"--config", config, "--batch", "6", "--expert-parallel"}, "n_routed_experts (8) must be divisible"},
      {2, {"--config", config, "--max-ranks-per-token", "1"}, "needs --expert-parallel"},
      {2, {"--config", tmp / "grouped.json", "--expert-parallel", "--max-ranks-per-token", "1"}, "n_group"},
  };
  for (const Case& k : cases) {
    std::vector<std::string> args = {"train", "--data", kShakespeare, "--out", tmp / "bad"};
    args.insert(args.end(), k.args.begin(), k.args.end());
    const RunResult r = run(mpirun(k.ranks, args), {.timeout_s = 120});
    INFO(r.describe());
    CHECK(r.exited);
    CHECK(r.code != 0);
    CHECK(r.err.find(k.expect) != std::string::npos);
    CHECK(!fs::exists(tmp / "bad/model.safetensors"));
  }
}

namespace {

// Pid of the `moe` process of MPI rank `rank` whose command line mentions `marker`.
pid_t find_rank(int rank, const std::string& marker) {
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  DIR* proc = ::opendir("/proc");
  pid_t found = -1;
  while (dirent* e = ::readdir(proc)) {
    const pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    const std::string cmd = read_bytes("/proc/" + std::string(e->d_name) + "/cmdline");
    if (cmd.find(marker) == std::string::npos || cmd.find("mpirun") != std::string::npos) continue;
    const std::string env = read_bytes("/proc/" + std::string(e->d_name) + "/environ");
    if (env.find(want + '\0') != std::string::npos) found = pid;
  }
  ::closedir(proc);
  return found;
}

}  // namespace

TEST_CASE("mpi: killing one rank ends the job with an error and the last checkpoint stays intact", "[mpi]") {
  TempDir tmp("mpi");
  json c = mpi_config();
  c["train"]["steps"] = 100000;
  c["train"]["save_every"] = 5;
  c["train"]["eval_every"] = 0;
  write_bytes(tmp / "long.json", c.dump());
  const std::string out = tmp / "killed";
  Process job(
      mpirun(2, {"train", "--config", tmp / "long.json", "--data", kShakespeare, "--out", out, "--expert-parallel"}));
  // Wait for a checkpoint, then kill rank 1.
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(out + "/trainer_state.json")) {
    REQUIRE(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 120);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const pid_t victim = find_rank(1, out);
  REQUIRE(victim > 0);
  ::kill(victim, SIGKILL);
  const RunResult r = job.wait(120);
  INFO(r.describe());
  CHECK(r.exited);
  CHECK(r.code != 0);
  CHECK((r.err + r.out).find("signal 9") != std::string::npos);  // mpirun names the dead rank's signal
  // The checkpoint loads: a recovery of any interrupted save, then eval on one process.
  const RunResult ev = run_moe({"eval", "-m", out, "--data", kShakespeare}, {.timeout_s = 120});
  INFO(ev.describe());
  CHECK(ev.code == 0);
}

#endif  // MOE_WITH_MPI
