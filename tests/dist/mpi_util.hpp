// Helpers of the tests that run `moe train` under mpirun: the small MPI config, the mpirun command
// line, metrics.jsonl lines of one kind, and a training run that must succeed.
#pragma once
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "../reliability/reliability_util.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"

namespace moe_mpi {

using namespace moe_rel;
using namespace moe_test;

// 8 routed experts (divisible by 1, 2, 4 ranks), top-2, no groups (so device-limited routing may
// apply), global batch 8, and a save every 10 steps.
inline json mpi_config() {
  json c = micro_config();
  c["model"]["n_routed_experts"] = 8;
  c["model"]["num_experts_per_tok"] = 2;
  c["model"]["n_group"] = 1;
  c["model"]["topk_group"] = 1;
  c["train"]["steps"] = 20;
  c["train"]["batch"] = 8;
  c["train"]["eval_every"] = 10;
  c["train"]["eval_tokens"] = 512;
  c["train"]["save_every"] = 10;
  c["train"]["threads"] = 1;
  c["train"]["lr"] = 0.01;
  return c;
}

inline std::vector<std::string> mpirun(int ranks, std::vector<std::string> args) {
  std::vector<std::string> cmd = {"mpirun", "--allow-run-as-root",     "--oversubscribe", "-np", std::to_string(ranks),
                                  "-x",     "OMP_WAIT_POLICY=PASSIVE", kMoeBinary};
  cmd.insert(cmd.end(), args.begin(), args.end());
  return cmd;
}

// `moe ARGS` on one process (ranks 0, no mpirun) or under mpirun with `ranks` ranks.
inline RunResult run_ranks(int ranks, const std::vector<std::string>& args, double timeout_s = 300) {
  return run(ranks == 0 ? moe_argv(args) : mpirun(ranks, args), {.timeout_s = timeout_s});
}

inline std::vector<json> lines(const std::string& path, const std::string& kind) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) {
      json j = json::parse(line);
      if (j.value("kind", "") == kind) out.push_back(j);
    }
  return out;
}

struct Run {
  std::string dir;
  std::vector<json> train, eval;
};

// `moe train --config CONFIG` into tmp/name (CONFIG: tmp/mpi.json, written from mpi_config() unless
// given) on one process (ranks 0) or under mpirun; it must succeed.
inline Run train_run(const TempDir& tmp, const std::string& name, int ranks, std::vector<std::string> extra,
                     std::string config = "") {
  if (config.empty()) {
    config = tmp / "mpi.json";
    if (!fs::exists(config)) write_bytes(config, mpi_config().dump());
  }
  std::vector<std::string> args = {"train", "--config", config, "--data", kShakespeare, "--out", tmp / name};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_ranks(ranks, args);
  INFO(r.describe());
  REQUIRE(r.exited);
  REQUIRE(r.code == 0);
  return {tmp / name, lines(tmp / name + "/metrics.jsonl", "train"), lines(tmp / name + "/metrics.jsonl", "eval")};
}

// `moe train --out DIR --resume` on one process or under mpirun; it must succeed.
inline Run resume_run(const std::string& dir, int ranks, std::vector<std::string> extra) {
  std::vector<std::string> args = {"train", "--out", dir, "--resume"};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run_ranks(ranks, args);
  INFO(r.describe());
  REQUIRE(r.exited);
  REQUIRE(r.code == 0);
  return {dir, lines(dir + "/metrics.jsonl", "train"), lines(dir + "/metrics.jsonl", "eval")};
}

}  // namespace moe_mpi
