// Device-limited routing belongs to the model: a run trained with `--expert-parallel
// --max-ranks-per-token M` stores the limit in its checkpoint, `moe eval` on one process routes the
// same way (and reproduces the run's own val_loss), and --resume keeps it or refuses to change it.
// Built only with MPI (the flag needs --expert-parallel).
#ifdef MOE_WITH_MPI
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../reliability/reliability_util.hpp"
#include "../support/checks.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;

const std::string kShakespeare = MOE_SHARED_DATA "/tinyshakespeare.txt";
constexpr int64_t kSeq = 32, kEvalTokens = 512;

// 8 experts, top-2, no shared expert (the routed experts are the whole FFN, so routing shows in the
// loss), trained hard enough in 10 steps that the experts differ: the same checkpoint evaluated
// without the limit scored 2.1e-3 away from the run's own val_loss.
json limited_config() {
  json c = moe_rel::micro_config();
  c.merge_patch({{"model", {{"n_shared_experts", 0}, {"n_routed_experts", 8}, {"initializer_range", 0.1}}},
                 {"train",
                  {{"steps", 10},
                   {"batch", 8},
                   {"seq", kSeq},
                   {"lr", 0.02},
                   {"eval_tokens", kEvalTokens},
                   {"save_every", 5},
                   {"threads", 1}}}});
  return c;
}

RunResult train(const TempDir& tmp, int ranks, const std::string& name, const Args& extra) {
  const std::string config = tmp / "limited.json";
  write_bytes(config, limited_config().dump());
  Args args = {"train", "--config", config, "--data", kShakespeare, "--out", tmp / name};
  args.insert(args.end(), extra.begin(), extra.end());
  return run(mpirun_argv(ranks, args), {.timeout_s = 300});
}

std::vector<json> lines_of(const std::string& dir, const std::string& kind) {
  std::vector<json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (json j = json::parse(line); j.at("kind") == kind) out.push_back(j);
  return out;
}

using moe_rel::read_json;

}  // namespace

TEST_CASE("mpi: an expert-parallel run with --max-ranks-per-token evaluates on one process to its own val_loss",
          "[mpi][dist]") {
  TempDir tmp("rank_limit");
  const RunResult r = train(tmp, 2, "run", {"--expert-parallel", "--max-ranks-per-token", "1"});
  INFO(r.describe());
  REQUIRE(r.ok());
  const std::string run = tmp / "run";
  // The limit and the blocks it counts are the model's, in config.json and in the trainer state.
  const json config = read_json(run + "/config.json");
  CHECK(config.at("max_ranks_per_token") == 1);
  CHECK(config.at("expert_ranks") == 2);
  const json state_model = read_json(run + "/trainer_state.json").at("config").at("model");
  CHECK(state_model.at("max_ranks_per_token") == 1);
  CHECK(state_model.at("expert_ranks") == 2);

  // The trainer's evaluation: the first eval_tokens positions of the validation part (the last 10%
  // of the file) in consecutive windows of seq. `moe eval --ctx seq` on exactly those bytes runs
  // the same windows.
  const std::string text = read_bytes(kShakespeare);
  const int64_t n = int64_t(text.size()), train_end = n - n / 10;
  const int64_t windows = std::min((n - train_end - 1) / kSeq, (kEvalTokens + kSeq - 1) / kSeq);
  const std::string val = tmp / "val.txt";
  write_bytes(val, text.substr(size_t(train_end), size_t(windows * kSeq + 1)));
  const json last_eval = lines_of(run, "eval").back();
  REQUIRE(last_eval.at("step") == 10);
  REQUIRE(last_eval.at("tokens") == windows * kSeq);

  const RunResult ev = run_moe({"eval", "-m", run, "--data", val, "--ctx", std::to_string(kSeq), "--json"});
  INFO(ev.describe());
  REQUIRE(ev.ok());
  const json result = json::parse(ev.out);
  CHECK(result.at("tokens") == windows * kSeq);
  // Same weights, same routing, same windows: only the batching of the windows differs (observed
  // bit-identical).
  const double val_loss = last_eval.at("val_loss").get<double>(), loss = result.at("loss").get<double>();
  CAPTURE(val_loss, loss);
  CHECK(std::fabs(loss - val_loss) < 1e-4);
  // The eval's routing obeys the limit: every layer's counts sum to tokens x K (no token dropped).
  for (const json& layer : result.at("layers")) {
    int64_t slots = 0;
    for (int64_t c : layer.at("counts").get<std::vector<int64_t>>()) slots += c;
    CHECK(slots == windows * kSeq * 2);
  }
}

TEST_CASE("mpi: --resume keeps the device-limited routing it was trained with and refuses another", "[mpi][dist]") {
  TempDir tmp("rank_limit");
  const Args limited = {"--expert-parallel", "--max-ranks-per-token", "1"};
  const RunResult straight = train(tmp, 2, "straight", limited);
  INFO(straight.describe());
  REQUIRE(straight.ok());
  Args stop = limited;
  stop.insert(stop.end(), {"--stop-at", "5"});
  const RunResult stopped = train(tmp, 2, "resumed", stop);
  INFO(stopped.describe());
  REQUIRE(stopped.ok());
  const std::string dir = tmp / "resumed";
  const std::string model_at_5 = read_bytes(dir + "/model.safetensors");

  // A different limit, or the same limit over a different number of ranks, is refused with one line
  // naming the flag and the stored value; the run directory is left as it was.
  for (const auto& [ranks, flag] : {std::pair<int, const char*>{2, "2"}, {4, "1"}}) {
    CAPTURE(ranks, flag);
    const RunResult r =
        run(mpirun_argv(ranks, {"train", "--out", dir, "--resume", "--expert-parallel", "--max-ranks-per-token", flag}),
            {.timeout_s = 120});
    INFO(r.describe());
    CHECK(r.exited);
    CHECK(r.code != 0);
    CHECK(r.err.find("moe: --max-ranks-per-token: the run in " + dir +
                     " was trained with max_ranks_per_token = 1 over expert_ranks = 2") != std::string::npos);
    CHECK(read_bytes(dir + "/model.safetensors") == model_at_5);
    CHECK(read_json(dir + "/trainer_state.json").at("step") == 5);
  }

  // Without the flag the stored routing is used: the resumed run ends with the weights of the
  // uninterrupted one, byte for byte (unlimited routing would have trained other weights).
  const RunResult r = run(mpirun_argv(2, {"train", "--out", dir, "--resume", "--expert-parallel"}), {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.ok());
  CHECK(read_bytes(dir + "/model.safetensors") == read_bytes(tmp / "straight/model.safetensors"));
  CHECK(read_json(dir + "/config.json") == read_json(tmp / "straight/config.json"));
}

#endif  // MOE_WITH_MPI
