// The balance losses are functions of the whole optimizer step: splitting the step's batch into
// micro-batches (--accum) or over ranks (mpirun) must not change the losses, the balance losses or
// the routing, for every --balance mode but `aux`, which is per micro-batch by definition (and
// equals global-aux when the step is one pass). Runs `moe train` for 5 steps on the embedded corpus.
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/checks.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;

const char* const kModes[] = {"none", "global-aux", "loss-free", "loss-free+seq"};

// Two MoE layers of 8 experts, top-2, global batch 16 x 32 tokens. α = 1 for both balance losses:
// the balance term is then a large part of the router's gradient, so a balance loss formed per part
// of the step moves the run measurably (at α = 1 the per-micro-batch aux loss of accum 2 x 8 was off
// by 1.3e-4 at step 1 and 1.1e-2 at step 5, and the main loss by 5e-3 at step 2).
json step_config() {
  return json{{"model",
               {{"vocab_size", 256},
                {"hidden_size", 32},
                {"num_hidden_layers", 3},
                {"num_attention_heads", 2},
                {"num_key_value_heads", 1},
                {"intermediate_size", 64},
                {"moe_intermediate_size", 16},
                {"first_k_dense_replace", 1},
                {"n_shared_experts", 1},
                {"n_routed_experts", 8},
                {"num_experts_per_tok", 2},
                {"n_group", 1},
                {"topk_group", 1},
                {"max_position_embeddings", 64}}},
              {"train",
               {{"steps", 5},
                {"batch", 16},
                {"seq", 32},
                {"lr", 0.01},
                {"warmup", 1},
                {"bias_rate", 0.01},
                {"aux_alpha", 1.0},
                {"seq_aux_alpha", 1.0},
                {"eval_every", 0},
                {"eval_tokens", 256},
                {"save_every", 0},
                {"threads", 1}}}};
}

// The train lines of `moe train` on `ranks` processes (0: without mpirun) with the step config.
std::vector<json> train_lines(const TempDir& tmp, const std::string& name, int ranks, const Args& extra) {
  const std::string config = tmp / "step.json";
  write_bytes(config, step_config().dump());
  Args args = {"train", "--config", config, "--out", tmp / name};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run(mpirun_argv(ranks, args), {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.ok());
  std::vector<json> lines;
  std::ifstream in(tmp / name + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (json j = json::parse(line); j.at("kind") == "train") lines.push_back(j);
  REQUIRE(lines.size() == 5);
  return lines;
}

// The steps of two runs that split the same global batches differently: the same main loss, the same
// balance loss (the step's and each layer's) and the same expert counts. The order of float sums
// differs (observed differences ~1e-8).
void check_same_steps(const std::vector<json>& reference, const std::vector<json>& split, const std::string& mode) {
  for (size_t s = 0; s < reference.size(); ++s) {
    const json &a = reference[s], &b = split[s];
    INFO("step " << s + 1);
    CHECK(std::fabs(a.at("loss").get<double>() - b.at("loss").get<double>()) < 1e-4);
    CHECK(std::fabs(a.at("balance_loss").get<double>() - b.at("balance_loss").get<double>()) < 1e-4);
    // The balance loss is really there (α = 1: near 1 per layer), or really off.
    const bool has_loss = mode == "aux" || mode == "global-aux" || mode == "loss-free+seq";
    CHECK((has_loss ? a.at("balance_loss").get<double>() > 1.0 : a.at("balance_loss").get<double>() == 0.0));
    REQUIRE(a.at("layers").size() == 2);
    REQUIRE(b.at("layers").size() == 2);
    for (size_t l = 0; l < 2; ++l) {
      const json &la = a.at("layers")[l], &lb = b.at("layers")[l];
      CHECK(std::fabs(la.at("balance_loss").get<double>() - lb.at("balance_loss").get<double>()) < 1e-4);
      CHECK(la.at("counts") == lb.at("counts"));
    }
  }
}

}  // namespace

TEST_CASE("balance losses are global over the step: accum 2 x batch 8 equals accum 1 x batch 16 in every mode",
          "[train][balance]") {
  TempDir tmp("balance_step");
  for (const std::string mode : kModes) {
    INFO("--balance " << mode);
    const auto whole = train_lines(tmp, mode + "_whole", 0, {"--balance", mode});
    const auto accum = train_lines(tmp, mode + "_accum", 0, {"--balance", mode, "--batch", "8", "--accum", "2"});
    check_same_steps(whole, accum, mode);
  }
}

TEST_CASE("aux is per micro-batch: equal to global-aux for one pass per step, different with accum 2",
          "[train][balance]") {
  TempDir tmp("balance_aux");
  const auto global = train_lines(tmp, "global", 0, {"--balance", "global-aux"});
  const auto aux = train_lines(tmp, "aux", 0, {"--balance", "aux"});
  check_same_steps(global, aux, "aux");
  const auto global_accum =
      train_lines(tmp, "global_accum", 0, {"--balance", "global-aux", "--batch", "8", "--accum", "2"});
  const auto aux_accum = train_lines(tmp, "aux_accum", 0, {"--balance", "aux", "--batch", "8", "--accum", "2"});
  // Step 1 runs on the same weights and routes the same tokens: only the loss's batch differs. The
  // mean of the two micro-batches' α·E·Σf·P is above the step's (observed +1.3e-4 per layer at α = 1).
  const double a = aux_accum[0].at("balance_loss").get<double>(), g = global_accum[0].at("balance_loss").get<double>();
  CHECK(std::fabs(g - global[0].at("balance_loss").get<double>()) < 1e-5);
  CHECK(std::fabs(a - g) > 1e-6);
  CHECK(aux_accum[0].at("layers")[0].at("counts") == global_accum[0].at("layers")[0].at("counts"));
}

#ifdef MOE_WITH_MPI
TEST_CASE("balance losses are global over the step: 2 ranks (data and expert parallel) equal one process in every mode",
          "[mpi][balance]") {
  TempDir tmp("balance_step");
  for (const std::string mode : kModes) {
    INFO("--balance " << mode);
    const auto one = train_lines(tmp, mode + "_one", 0, {"--balance", mode});
    // Data parallel: each rank 8 of the 16 sequences of every step.
    check_same_steps(one, train_lines(tmp, mode + "_dp2", 2, {"--balance", mode}), mode);
    // Expert parallel with accum 2: each rank 4 sequences of each of two micro-batches of 8.
    check_same_steps(
        one,
        train_lines(tmp, mode + "_ep2", 2, {"--balance", mode, "--batch", "8", "--accum", "2", "--expert-parallel"}),
        mode);
  }
}
#endif
