// Interop with Hugging Face DeepSeek-V3, proven against an independent PyTorch implementation
// (tests/interop/hf_deepseek_v3.py, written from transformers' modeling_deepseek_v3.py, not from
// moe): a checkpoint moe trains loads there with every tensor name matched and gives the same eval
// loss and greedy text; checkpoints it writes (F32, BF16, F16, sharded) load in moe with the same
// agreement. Needs Debian's python3-torch (installed by scripts/test).
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "interop_util.hpp"

using moe_test::TempDir;
using nlohmann::json;

namespace {

const std::string kReference = MOE_SOURCE_DIR "/tests/interop/hf_deepseek_v3.py";

// Debian's torch is installed for /usr/bin/python3 (a pyenv `python3` on PATH may not see it).
json reference(std::vector<std::string> args) {
  args.insert(args.begin(), {"/usr/bin/python3", kReference});
  return interop::run_json(args);
}

using interop::moe_json;

// Text the models have seen: the embedded corpus' format, written by `moe data synth`.
std::string sample_text(const TempDir& dir, int64_t bytes, int seed) {
  const std::string path = dir / ("sample" + std::to_string(seed) + ".txt");
  const moe_test::RunResult r = moe_test::run_moe(
      {"data", "synth", "--out", path, "--bytes", std::to_string(bytes), "--seed", std::to_string(seed)});
  REQUIRE(r.ok());
  return path;
}

// moe's eval and the reference's on the same file and window: the same loss to 1e-5 relative (f32
// against f64 arithmetic), over the same number of predictions.
void check_same_eval(const std::string& model, const std::string& data, int64_t ctx) {
  const json ours = moe_json({"eval", "--model", model, "--data", data, "--ctx", std::to_string(ctx), "--json"});
  const json theirs = reference({"eval", "--model", model, "--data", data, "--ctx", std::to_string(ctx)});
  CAPTURE(model, ctx, ours["loss"], theirs["loss"]);
  CHECK(ours["tokens"] == theirs["tokens"]);
  CHECK(ours["loss"].get<double>() == Approx(theirs["loss"].get<double>()).epsilon(1e-5));
  CHECK(ours["loss"].get<double>() < 4.0);  // a trained model, not a uniform guess (ln 256 = 5.5)
  // The multi-token-prediction module (tiny-v3 has one): t_{i+2} from h_i and t_{i+1}.
  CHECK(ours.contains("mtp_loss") == theirs.contains("mtp_loss"));
  if (ours.contains("mtp_loss")) {
    CHECK(ours["mtp_tokens"] == theirs["mtp_tokens"]);
    CHECK(ours["mtp_loss"].get<double>() == Approx(theirs["mtp_loss"].get<double>()).epsilon(1e-5));
    CHECK(ours["mtp_loss"].get<double>() < 4.5);
  }
}

void check_same_greedy(const std::string& model, const std::string& prompt, int n) {
  const json ours =
      moe_json({"infer", "--model", model, "-p", prompt, "-n", std::to_string(n), "--temp", "0", "--json"});
  const json theirs = reference({"generate", "--model", model, "--prompt", prompt, "-n", std::to_string(n)});
  CAPTURE(model, prompt);
  CHECK(ours["text_bytes"] == theirs["text_bytes"]);
  CHECK(ours["text_bytes"].size() == size_t(n));
}

}  // namespace

TEST_CASE("a moe-trained MLA checkpoint loads in the HF-style reference with the same loss and greedy text",
          "[interop]") {
  TempDir dir("interop");
  const std::string data = sample_text(dir, 4000, 21);
  // tiny-v3 (q_lora_rank, interleaved RoPE) and a variant with q_proj and half-split RoPE.
  json variant = json::parse(std::ifstream(MOE_SOURCE_DIR "/configs/tiny-v3.json"));
  variant["model"]["q_lora_rank"] = nullptr;
  variant["model"]["rope_interleave"] = false;
  variant["model"]["routed_scaling_factor"] = 2.5;
  variant["model"]["num_nextn_predict_layers"] = 0;  // the variant without the MTP module
  std::ofstream(dir / "variant.json") << variant.dump(2);
  for (const std::string& config : {std::string(MOE_SOURCE_DIR "/configs/tiny-v3.json"), dir / "variant.json"}) {
    CAPTURE(config);
    const std::string run = dir / "run";
    const moe_test::RunResult trained =
        moe_test::run_moe({"train", "--config", config, "--out", run, "--force", "--steps", "120", "--batch", "8",
                           "--seq", "64", "--eval-every", "0", "--threads", "2"});
    INFO(trained.describe());
    REQUIRE(trained.ok());
    const json names = reference({"names", "--model", run});
    CHECK(names["missing"].empty());
    CHECK(names["unexpected"].empty());
    CHECK(names["matched"].get<int>() > 40);
    check_same_eval(run, data, 64);
    check_same_eval(run, data, 100);  // 3999 predictions: 39 windows and one of 99
    check_same_greedy(run, "the old king ", 40);
  }
}

TEST_CASE("a checkpoint written by the HF-style reference loads in moe with the same loss and greedy text",
          "[interop]") {
  TempDir dir("interop");
  const std::string train = sample_text(dir, 20000, 3), data = sample_text(dir, 3000, 4);
  json config = json::parse(std::ifstream(MOE_SOURCE_DIR "/configs/tiny-v3.json"))["model"];
  config["model_type"] = "deepseek_v3";
  config["num_key_value_heads"] = config["num_attention_heads"];
  config["routed_scaling_factor"] = 2.5;
  std::ofstream(dir / "config.json") << config.dump(2);
  // F32 in one file; BF16 in 2 shards and F16 in 3 (HF's sharded layout with its index).
  const std::vector<std::vector<std::string>> layouts = {
      {"--dtype", "f32"}, {"--dtype", "bf16", "--shards", "2"}, {"--dtype", "f16", "--shards", "3"}};
  for (const auto& layout : layouts) {
    CAPTURE(layout);
    const std::string model = dir / ("hf-" + layout[1]);
    std::vector<std::string> args = {
        "write", "--config", dir / "config.json", "--out", model, "--seed", "5", "--train-steps", "60", "--data", train,
        "--seq", "64"};
    args.insert(args.end(), layout.begin(), layout.end());
    reference(args);
    check_same_eval(model, data, 64);
    check_same_greedy(model, "the old king ", 30);
  }
  // HF's dense/MoE rule at the MTP module's layer L = 3: with first_k_dense_replace = 3 it is the
  // only MoE layer, with 4 (past every layer) it is dense; the second written with the module's
  // embedding/head copies stored once (tied), as safetensors' deduplication leaves them.
  for (const int dense : {3, 4}) {
    CAPTURE(dense);
    json variant = config;
    variant["first_k_dense_replace"] = dense;
    const std::string path = dir / ("config-dense" + std::to_string(dense) + ".json");
    std::ofstream(path) << variant.dump(2);
    const std::string model = dir / ("hf-dense" + std::to_string(dense));
    std::vector<std::string> args = {"write",         "--config", path,     "--out", model,   "--seed", "6",
                                     "--train-steps", "60",       "--data", train,   "--seq", "64"};
    if (dense == 4) args.push_back("--tied");
    reference(args);
    check_same_eval(model, data, 64);
    check_same_greedy(model, "the old king ", 30);
  }
}
