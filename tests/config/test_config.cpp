// Config parsing and validation: every rule in lib/model/config.cpp has a failing example whose
// one-line message must name the field and what was expected, plus the shipped configs and the
// to_json -> from_json round trip.
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/checks.hpp"
#include "../support/temp_dir.hpp"
#include "core/error.hpp"
#include "train/train_config.hpp"

using Catch::Contains;
using moe_test::TempDir;
using nlohmann::json;

namespace {

// Checks both that `expr` throws moe::Error (not some other exception) and that its message matches.

// A small valid config; each test breaks one field of it.
json valid_config() {
  return json::parse(R"({
    "model": {
      "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 128, "moe_intermediate_size": 32,
      "first_k_dense_replace": 1, "n_shared_experts": 1, "n_routed_experts": 8,
      "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 1.0,
      "norm_topk_prob": true, "scoring_func": "sigmoid", "rms_norm_eps": 1e-6,
      "rope_theta": 10000.0, "max_position_embeddings": 64, "initializer_range": 0.02
    },
    "train": {
      "steps": 10, "batch": 4, "seq": 32, "accum": 1, "lr": 0.003, "min_lr": 0.0003, "warmup": 2,
      "weight_decay": 0.1, "grad_clip": 1.0, "balance": "loss-free", "bias_rate": 0.001,
      "aux_alpha": 0.01, "seq_aux_alpha": 0.0001, "eval_every": 5, "eval_tokens": 1024,
      "save_every": 5, "log_every": 1, "threads": 0, "seed": 7
    }
  })");
}

moe::Config parse(const json& j) { return moe::config_from_json(j, "test.json"); }

json with_model(const std::string& key, const json& value) {
  json j = valid_config();
  j["model"][key] = value;
  return j;
}

json with_train(const std::string& key, const json& value) {
  json j = valid_config();
  j["train"][key] = value;
  return j;
}

json with_model(std::initializer_list<std::pair<const char*, json>> fields) {
  json j = valid_config();
  for (const auto& [key, value] : fields) j["model"][key] = value;
  return j;
}

std::string project_file(const std::string& relative) { return std::string(MOE_SOURCE_DIR) + "/" + relative; }

}  // namespace

TEST_CASE("config: the valid example parses", "[config]") {
  const moe::Config c = parse(valid_config());
  CHECK(c.model.hidden_size == 64);
  CHECK(c.model.head_dim == 16);  // default hidden_size / num_attention_heads
  CHECK(c.train.seed == 7);
  CHECK(c.train.balance == moe::Balance::loss_free);
}

TEST_CASE("config: file that is not JSON", "[config]") {
  TempDir dir("config_not_json");
  const std::string path = dir.write("broken.json", "{\"model\": {\"vocab_size\": 256,, }");
  REQUIRE_MOE_ERROR(moe::load_config_file(path), Contains(path) && Contains("not valid JSON"));
  const std::string empty = dir.write("empty.json", "");
  REQUIRE_MOE_ERROR(moe::load_config_file(empty), Contains(empty) && Contains("not valid JSON"));
}

TEST_CASE("config: missing file and directory", "[config]") {
  TempDir dir("config_missing");
  const std::string missing = dir / "nope.json";
  REQUIRE_MOE_ERROR(moe::load_config_file(missing), Contains(missing) && Contains("cannot open"));
  // A directory must not be reported as "not valid JSON".
  const std::string directory = dir.path();
  REQUIRE_MOE_ERROR(moe::load_config_file(directory), Contains(directory) && Contains("directory"));
}

TEST_CASE("config: top level must be an object with a model section", "[config]") {
  REQUIRE_MOE_ERROR(parse(json::array()), Contains("test.json") && Contains("expected a JSON object"));
  json no_model = valid_config();
  no_model.erase("model");
  REQUIRE_MOE_ERROR(parse(no_model), Contains("missing the \"model\" section"));
  json extra = valid_config();
  extra["modle"] = json::object();
  REQUIRE_MOE_ERROR(parse(extra), Contains("unknown top-level key \"modle\""));
  json model_not_object = valid_config();
  model_not_object["model"] = 3;
  REQUIRE_MOE_ERROR(parse(model_not_object), Contains("model") && Contains("expected a JSON object, got 3"));
}

TEST_CASE("config: a train section that is not an object names the section", "[config]") {
  json j = valid_config();
  j["train"] = 3;
  REQUIRE_MOE_ERROR(parse(j), Contains("train") && Contains("expected a JSON object, got 3"));
}

TEST_CASE("config: the train section is optional", "[config]") {
  json j = valid_config();
  j.erase("train");
  j["model"]["max_position_embeddings"] = 256;  // the default train.seq is 128
  const moe::Config c = parse(j);
  CHECK(c.train.steps == moe::TrainConfig{}.steps);
}

TEST_CASE("config: wrong types name the field and the expected type", "[config]") {
  SECTION("string for an integer") {
    REQUIRE_MOE_ERROR(parse(with_model("hidden_size", "64")),
                      Contains("model: hidden_size") && Contains("expected an integer") && Contains("\"64\""));
  }
  SECTION("fractional number for an integer") {
    REQUIRE_MOE_ERROR(parse(with_model("num_hidden_layers", 2.5)),
                      Contains("num_hidden_layers") && Contains("expected an integer, got 2.5"));
  }
  SECTION("integer for a boolean") {
    REQUIRE_MOE_ERROR(parse(with_model("norm_topk_prob", 1)),
                      Contains("norm_topk_prob") && Contains("expected true or false, got 1"));
  }
  SECTION("string for a real number") {
    REQUIRE_MOE_ERROR(parse(with_model("rope_theta", "1e4")), Contains("rope_theta") && Contains("expected a number"));
  }
  SECTION("number for a string") {
    REQUIRE_MOE_ERROR(parse(with_model("scoring_func", 1)), Contains("scoring_func") && Contains("expected a string"));
  }
  SECTION("array for an integer") {
    REQUIRE_MOE_ERROR(parse(with_model("vocab_size", json::array({256}))),
                      Contains("vocab_size") && Contains("expected an integer"));
  }
  SECTION("train: string for an integer") {
    REQUIRE_MOE_ERROR(parse(with_train("batch", "16")), Contains("train.batch") && Contains("expected an integer"));
  }
  SECTION("train: fractional number for an integer") {
    REQUIRE_MOE_ERROR(parse(with_train("steps", 2.5)), Contains("train.steps") && Contains("expected an integer"));
  }
  SECTION("train: string for a number") {
    REQUIRE_MOE_ERROR(parse(with_train("lr", "fast")), Contains("train.lr") && Contains("expected a number"));
  }
  SECTION("train: number for a string") {
    REQUIRE_MOE_ERROR(parse(with_train("balance", 1)), Contains("train.balance") && Contains("expected a string"));
  }
}

TEST_CASE("config: whole-valued floats are accepted as integers, null head_dim means the default", "[config]") {
  const moe::Config c = parse(with_model({{"hidden_size", 64.0}, {"head_dim", nullptr}}));
  CHECK(c.model.hidden_size == 64);
  CHECK(c.model.head_dim == 16);
  CHECK(parse(with_model("head_dim", 32)).model.head_dim == 32);  // q_dim need not equal hidden_size
}

TEST_CASE("config: integers too large for int64 are not shown as a different number", "[config]") {
  // 2^64 - 1 parses as unsigned; the message must not claim the user wrote -1.
  const json j = with_model("vocab_size", json(uint64_t(18446744073709551615ull)));
  REQUIRE_MOE_ERROR(parse(j), Contains("vocab_size") && !Contains("got -1"));
}

TEST_CASE("config: unknown keys suggest the nearest known one", "[config]") {
  json j = valid_config();
  j["model"]["hiden_size"] = 64;
  REQUIRE_MOE_ERROR(parse(j), Contains("unknown key \"hiden_size\"") && Contains("did you mean \"hidden_size\""));
  json k = valid_config();
  k["model"]["num_expert_per_tok"] = 2;
  REQUIRE_MOE_ERROR(parse(k), Contains("did you mean \"num_experts_per_tok\""));
  // model_type belongs to a checkpoint's config.json, not to a configs/ file.
  REQUIRE_MOE_ERROR(parse(with_model("model_type", "moe")), Contains("unknown key \"model_type\""));
}

TEST_CASE("config: unknown train keys suggest the nearest known one", "[config]") {
  json j = valid_config();
  j["train"]["warmpu"] = 3;
  REQUIRE_MOE_ERROR(parse(j), Contains("unknown key \"train.warmpu\"") && Contains("did you mean \"warmup\""));
  json k = valid_config();
  k["train"]["min-lr"] = 0.0;
  REQUIRE_MOE_ERROR(parse(k), Contains("did you mean \"min_lr\""));
}

TEST_CASE("config: nearest_name", "[config]") {
  CHECK(moe::nearest_name("hiden_size", {"vocab_size", "hidden_size", "head_dim"}) == "hidden_size");
  CHECK(moe::nearest_name("n_groups", {"n_group", "topk_group"}) == "n_group");
  CHECK(moe::nearest_name("", {"ab", "a"}) == "a");
}

TEST_CASE("config: non-positive sizes are refused", "[config]") {
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok",
                            "n_group", "topk_group", "max_position_embeddings"}) {
    for (int value : {0, -4}) {
      INFO(field << " = " << value);
      REQUIRE_MOE_ERROR(parse(with_model(field, value)),
                        Contains(std::string(field) + ": expected a positive integer, got " + std::to_string(value)));
    }
  }
  REQUIRE_MOE_ERROR(parse(with_model("head_dim", -2)), Contains("head_dim: expected a positive integer, got -2"));
  // Dense FFN width must be positive while dense layers exist, and may be 0 when none do.
  REQUIRE_MOE_ERROR(parse(with_model("intermediate_size", 0)),
                    Contains("intermediate_size: expected a positive integer, got 0"));
  CHECK(parse(with_model({{"intermediate_size", 0}, {"first_k_dense_replace", 0}})).model.intermediate_size == 0);
  REQUIRE_MOE_ERROR(parse(with_model({{"intermediate_size", -1}, {"first_k_dense_replace", 0}})),
                    Contains("intermediate_size: expected an integer >= 0, got -1"));
  REQUIRE_MOE_ERROR(parse(with_model("n_shared_experts", -1)),
                    Contains("n_shared_experts: expected an integer >= 0, got -1"));
  CHECK(parse(with_model("n_shared_experts", 0)).model.n_shared_experts == 0);
  REQUIRE_MOE_ERROR(parse(with_model("first_k_dense_replace", -1)),
                    Contains("first_k_dense_replace: expected an integer >= 0, got -1"));
}

TEST_CASE("config: vocabulary must hold the 256 byte tokens", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model("vocab_size", 100)),
                    Contains("vocab_size: expected at least 256") && Contains("got 100"));
}

TEST_CASE("config: real-valued model fields must be positive and finite", "[config]") {
  for (const char* field : {"routed_scaling_factor", "rms_norm_eps", "rope_theta", "initializer_range"}) {
    INFO(field);
    REQUIRE_MOE_ERROR(parse(with_model(field, 0.0)), Contains(field) && Contains("expected a positive finite number"));
    REQUIRE_MOE_ERROR(parse(with_model(field, -1.5)), Contains(field) && Contains("got -1.5"));
  }
}

TEST_CASE("config: scoring_func must be sigmoid or softmax", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model("scoring_func", "relu")),
                    Contains("scoring_func") && Contains("expected \"sigmoid\" or \"softmax\"") && Contains("relu"));
  CHECK(parse(with_model("scoring_func", "softmax")).model.scoring_func == moe::ScoringFunc::softmax);
}

TEST_CASE("config: attention heads must divide hidden_size when head_dim is not given", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model("num_attention_heads", 5)),
                    Contains("num_attention_heads (5) must divide hidden_size (64)"));
  // With an explicit head_dim the heads need not divide hidden_size.
  CHECK(parse(with_model({{"num_attention_heads", 6}, {"num_key_value_heads", 3}, {"head_dim", 16}})).model.q_dim() ==
        96);
}

TEST_CASE("config: key/value heads must divide attention heads", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model("num_key_value_heads", 3)),
                    Contains("num_key_value_heads (3) must divide num_attention_heads (4)"));
}

TEST_CASE("config: head_dim must be even", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model("head_dim", 15)), Contains("head_dim: expected an even number") && Contains("15"));
  // Also when it is derived: 60 / 4 = 15.
  REQUIRE_MOE_ERROR(parse(with_model("hidden_size", 60)),
                    Contains("head_dim: expected an even number") && Contains("15"));
}

TEST_CASE("config: model_difference names the first field that builds another model", "[config]") {
  const moe::ModelConfig a = parse(with_model("first_k_dense_replace", 1)).model;
  CHECK(moe::model_difference(a, a).empty());
  CHECK(moe::model_difference(a, parse(with_model("intermediate_size", 96)).model) ==
        "intermediate_size: 128 against 96");
  // Past the last layer every value is the same all-dense model.
  CHECK(moe::model_difference(parse(with_model("first_k_dense_replace", 2)).model,
                              parse(with_model("first_k_dense_replace", 9)).model)
            .empty());
  CHECK(moe::model_difference(a, parse(with_model("first_k_dense_replace", 2)).model) ==
        "first_k_dense_replace: 1 against 2");
  // Layers of another count: that field, with the values as written (not as clamped).
  const moe::ModelConfig wide = parse(with_model({{"first_k_dense_replace", 5}, {"num_hidden_layers", 3}})).model;
  const moe::ModelConfig narrow = parse(with_model({{"first_k_dense_replace", 5}, {"num_hidden_layers", 2}})).model;
  CHECK(moe::model_difference(wide, narrow) == "num_hidden_layers: 3 against 2");
}

TEST_CASE("config: first_k_dense_replace past the last layer leaves every layer dense (HF's rule)", "[config]") {
  for (const int64_t k : {2, 3, 7}) {
    const moe::ModelConfig m = parse(with_model("first_k_dense_replace", k)).model;
    CHECK(m.num_moe_layers() == 0);
    CHECK(m.num_routed_layers() == 0);
    CHECK_FALSE(m.is_moe_layer(1));
  }
  CHECK(parse(with_model("first_k_dense_replace", 1)).model.num_moe_layers() == 1);
}

TEST_CASE("config: routing rules", "[config]") {
  SECTION("num_experts_per_tok > n_routed_experts") {
    REQUIRE_MOE_ERROR(parse(with_model({{"num_experts_per_tok", 9}, {"n_group", 1}, {"topk_group", 1}})),
                      Contains("num_experts_per_tok (9) must be at most n_routed_experts (8)"));
  }
  SECTION("n_routed_experts % n_group != 0") {
    REQUIRE_MOE_ERROR(parse(with_model("n_group", 3)), Contains("n_group (3) must divide n_routed_experts (8)"));
  }
  SECTION("topk_group > n_group") {
    REQUIRE_MOE_ERROR(parse(with_model("topk_group", 3)), Contains("topk_group (3) must be at most n_group (2)"));
  }
  SECTION("kept groups hold fewer experts than num_experts_per_tok") {
    // 8 experts in 4 groups of 2; keeping 1 group leaves 2 experts for top-3.
    REQUIRE_MOE_ERROR(parse(with_model({{"n_group", 4}, {"topk_group", 1}, {"num_experts_per_tok", 3}})),
                      Contains("keep only 2 experts") && Contains("num_experts_per_tok (3)"));
    // Exactly enough is fine.
    CHECK(parse(with_model({{"n_group", 4}, {"topk_group", 1}, {"num_experts_per_tok", 2}})).model.n_group == 4);
  }
  SECTION("groups of one expert") {
    const moe::Config c = parse(with_model({{"n_group", 8}, {"topk_group", 3}, {"num_experts_per_tok", 3}}));
    CHECK(c.model.n_group == 8);
  }
}

TEST_CASE("config: device-limited routing is two model fields, written only when set", "[config]") {
  const std::initializer_list<std::pair<const char*, json>> ungrouped = {{"n_group", 1}, {"topk_group", 1}};
  json file = with_model(ungrouped);
  // Absent (every config written before the fields existed, and Hugging Face's): off.
  const moe::ModelConfig plain = parse(file).model;
  CHECK(plain.max_ranks_per_token == 0);
  CHECK(plain.expert_ranks == 0);
  CHECK_FALSE(plain.rank_limited());
  CHECK_FALSE(moe::to_json(plain).contains("max_ranks_per_token"));
  CHECK_FALSE(moe::to_json(plain).contains("expert_ranks"));
  // Set: 2 blocks of 4 experts, 1 per token; config.json carries both and reads back the same.
  file["model"]["max_ranks_per_token"] = 1, file["model"]["expert_ranks"] = 2;
  const moe::ModelConfig limited = parse(file).model;
  CHECK(limited.rank_limited());
  const json j = moe::to_json(limited);
  CHECK(j.at("max_ranks_per_token") == 1);
  CHECK(j.at("expert_ranks") == 2);
  CHECK(moe::to_json(moe::model_config_from_json(json::parse(j.dump()), "ckpt/config.json", true)) == j);
  // A limit of every block restricts nothing (and is accepted, as --max-ranks-per-token N on N ranks).
  file["model"]["max_ranks_per_token"] = 2;
  CHECK_FALSE(parse(file).model.rank_limited());

  auto broken = [&](std::initializer_list<std::pair<const char*, json>> fields) {
    json k = with_model(ungrouped);
    for (const auto& [key, value] : fields) k["model"][key] = value;
    return k;
  };
  REQUIRE_MOE_ERROR(parse(broken({{"max_ranks_per_token", 1}, {"expert_ranks", 3}})),
                    Contains("test.json: model: expert_ranks (3) must divide n_routed_experts (8)"));
  REQUIRE_MOE_ERROR(parse(broken({{"max_ranks_per_token", 1}})), Contains("max_ranks_per_token: needs expert_ranks"));
  REQUIRE_MOE_ERROR(parse(broken({{"expert_ranks", 2}})),
                    Contains("expert_ranks: only used by device-limited routing"));
  REQUIRE_MOE_ERROR(parse(broken({{"max_ranks_per_token", -1}, {"expert_ranks", 2}})),
                    Contains("max_ranks_per_token: expected an integer >= 0"));
  // 8 blocks of one expert, one block per token: one expert for top-2.
  REQUIRE_MOE_ERROR(parse(broken({{"max_ranks_per_token", 1}, {"expert_ranks", 8}})),
                    Contains("1 of 8 expert blocks hold 1 experts, fewer than the 2 each token needs"));
  // Group-limited routing (valid_config keeps 1 of 2 groups) and rank-limited routing do not combine.
  json grouped = valid_config();
  grouped["model"]["max_ranks_per_token"] = 1, grouped["model"]["expert_ranks"] = 2;
  REQUIRE_MOE_ERROR(parse(grouped), Contains("max_ranks_per_token") && Contains("set n_group = 1"));
}

TEST_CASE("config: absurd sizes are refused before anything is allocated", "[config]") {
  REQUIRE_MOE_ERROR(parse(with_model({{"hidden_size", 1 << 20}, {"intermediate_size", 1 << 20}})),
                    Contains("parameters") && Contains("at most 1000M"));
  REQUIRE_MOE_ERROR(parse(with_model({{"n_routed_experts", 1 << 20}})), Contains("at most 1000M"));
  REQUIRE_MOE_ERROR(parse(with_model("max_position_embeddings", 1 << 20)),
                    Contains("max_position_embeddings: expected at most 65536"));
  REQUIRE_MOE_ERROR(parse(with_model("vocab_size", (1 << 20) + 1)), Contains("vocab_size: expected at most 1048576"));
}

TEST_CASE("config: absurd head_dim is refused even when heads x head_dim overflows", "[config]") {
  // 4 * 2^62 wraps to 0 in int64: the size check must not be fooled into accepting it.
  REQUIRE_THROWS_AS(parse(with_model("head_dim", json(int64_t(1) << 62))), moe::Error);
  REQUIRE_THROWS_AS(parse(with_model("head_dim", json(int64_t(1) << 40))), moe::Error);
}

TEST_CASE("config: train values are checked", "[config]") {
  SECTION("non-positive counts") {
    for (const char* field : {"steps", "batch", "seq", "accum", "eval_tokens", "log_every"}) {
      INFO(field);
      REQUIRE_MOE_ERROR(parse(with_train(field, 0)),
                        Contains(std::string("train.") + field + ": expected a positive integer, got 0"));
    }
  }
  SECTION("negative counts") {
    for (const char* field : {"warmup", "eval_every", "save_every", "threads", "seed"}) {
      INFO(field);
      REQUIRE_MOE_ERROR(parse(with_train(field, -1)),
                        Contains(std::string("train.") + field + ": expected an integer >= 0, got -1"));
    }
  }
  SECTION("negative rates") {
    for (const char* field : {"min_lr", "weight_decay", "grad_clip", "bias_rate", "aux_alpha", "seq_aux_alpha"}) {
      INFO(field);
      REQUIRE_MOE_ERROR(parse(with_train(field, -0.5)),
                        Contains(std::string("train.") + field + ": expected a finite number >= 0, got -0.5"));
    }
    REQUIRE_MOE_ERROR(parse(with_train("lr", 0.0)), Contains("train.lr: expected a positive finite number"));
  }
  SECTION("seq longer than the context") {
    REQUIRE_MOE_ERROR(parse(with_train("seq", 65)),
                      Contains("train.seq (65) must be at most max_position_embeddings (64)"));
  }
  SECTION("min_lr above lr") {
    REQUIRE_MOE_ERROR(parse(with_train("min_lr", 0.01)), Contains("train.min_lr") && Contains("at most lr"));
  }
  SECTION("bad balance string") {
    REQUIRE_MOE_ERROR(parse(with_train("balance", "lossfree")),
                      Contains("train.balance") &&
                          Contains("expected one of none, aux, global-aux, loss-free, loss-free+seq") &&
                          Contains("\"lossfree\""));
  }
  SECTION("too many threads") {
    REQUIRE_MOE_ERROR(parse(with_train("threads", 5000)), Contains("train.threads: expected at most 1024"));
  }
  SECTION("activations that cannot fit in memory") {
    REQUIRE_MOE_ERROR(parse(with_train("batch", 1 << 24)), Contains("activations") && Contains("reduce batch or seq"));
  }
}

TEST_CASE("config: balance names round-trip", "[config]") {
  for (moe::Balance b : {moe::Balance::none, moe::Balance::aux, moe::Balance::loss_free, moe::Balance::loss_free_seq})
    CHECK(moe::parse_balance(moe::to_string(b), "x") == b);
  REQUIRE_MOE_ERROR(moe::parse_balance("aux ", "--balance"), Contains("--balance") && Contains("\"aux \""));
}

TEST_CASE("config: configs/tiny.json loads", "[config]") {
  const moe::Config c = moe::load_config_file(project_file("configs/tiny.json"));
  CHECK(c.model.vocab_size == 256);
  CHECK(c.model.num_moe_layers() >= 1);
  CHECK(c.train.seq <= c.model.max_position_embeddings);
  // The working directory of the tests is the project root, so relative paths work too.
  CHECK(moe::load_config_file("configs/tiny.json").model.hidden_size == c.model.hidden_size);
}

TEST_CASE("config: configs/small.json is the reference benchmark model", "[config]") {
  const moe::Config c = moe::load_config_file(project_file("configs/small.json"));
  const moe::ModelConfig& m = c.model;
  CHECK(m.vocab_size == 256);
  CHECK(m.hidden_size == 256);
  CHECK(m.num_hidden_layers == 4);
  CHECK(m.num_attention_heads == 4);
  CHECK(m.head_dim == 64);
  CHECK(m.first_k_dense_replace == 1);
  CHECK(m.intermediate_size == 768);
  CHECK(m.num_moe_layers() == 3);
  CHECK_FALSE(m.is_moe_layer(0));
  CHECK(m.is_moe_layer(1));
  CHECK(m.n_routed_experts == 16);
  CHECK(m.moe_intermediate_size == 128);
  CHECK(m.num_experts_per_tok == 4);
  CHECK(m.n_shared_experts == 1);
  CHECK(m.n_group == 4);
  CHECK(m.topk_group == 2);
  CHECK(m.scoring_func == moe::ScoringFunc::sigmoid);
  CHECK(m.max_position_embeddings == 256);
  CHECK(c.train.batch == 16);
  CHECK(c.train.seq == 256);
}

namespace {

void require_same(const moe::ModelConfig& a, const moe::ModelConfig& b) {
  CHECK(a.vocab_size == b.vocab_size);
  CHECK(a.hidden_size == b.hidden_size);
  CHECK(a.num_hidden_layers == b.num_hidden_layers);
  CHECK(a.num_attention_heads == b.num_attention_heads);
  CHECK(a.num_key_value_heads == b.num_key_value_heads);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.intermediate_size == b.intermediate_size);
  CHECK(a.moe_intermediate_size == b.moe_intermediate_size);
  CHECK(a.first_k_dense_replace == b.first_k_dense_replace);
  CHECK(a.n_shared_experts == b.n_shared_experts);
  CHECK(a.n_routed_experts == b.n_routed_experts);
  CHECK(a.num_experts_per_tok == b.num_experts_per_tok);
  CHECK(a.n_group == b.n_group);
  CHECK(a.topk_group == b.topk_group);
  CHECK(a.routed_scaling_factor == b.routed_scaling_factor);
  CHECK(a.norm_topk_prob == b.norm_topk_prob);
  CHECK(a.scoring_func == b.scoring_func);
  CHECK(a.rms_norm_eps == b.rms_norm_eps);
  CHECK(a.rope_theta == b.rope_theta);
  CHECK(a.max_position_embeddings == b.max_position_embeddings);
  CHECK(a.initializer_range == b.initializer_range);
}

}  // namespace

TEST_CASE("config: to_json -> model_config_from_json round trip", "[config]") {
  moe::ModelConfig m = parse(valid_config()).model;
  m.scoring_func = moe::ScoringFunc::softmax;
  m.norm_topk_prob = false;
  m.routed_scaling_factor = 2.5;
  m.rms_norm_eps = 1.2345678901234567e-5;
  m.initializer_range = 0.1 + 0.2;  // not exactly representable in short decimal: must survive exactly
  const json j = moe::to_json(m);
  CHECK(j.at("model_type") == "moe");
  CHECK(j.size() == 22);  // 21 model fields + model_type, flat
  // Through text, as a checkpoint's config.json would be.
  const moe::ModelConfig back = moe::model_config_from_json(json::parse(j.dump(2)), "config.json", true);
  require_same(m, back);
  // Every shipped config survives the round trip too.
  for (const char* file : {"configs/tiny.json", "configs/small.json"}) {
    INFO(file);
    const moe::ModelConfig shipped = moe::load_config_file(project_file(file)).model;
    require_same(shipped, moe::model_config_from_json(json::parse(moe::to_json(shipped).dump()), "x", true));
  }
}

TEST_CASE("config: checkpoint config.json must say model_type deepseek_v3 or moe", "[config]") {
  json j = moe::to_json(parse(valid_config()).model);
  j["model_type"] = "llama";
  REQUIRE_MOE_ERROR(moe::model_config_from_json(j, "ckpt/config.json", true),
                    Contains("ckpt/config.json: model_type") && Contains("expected \"deepseek_v3\" or \"moe\""));
  // A deepseek_v3 config.json must give the MLA sizes: Hugging Face's defaults are not assumed.
  j["model_type"] = "deepseek_v3";
  REQUIRE_MOE_ERROR(moe::model_config_from_json(j, "ckpt/config.json", true),
                    Contains("ckpt/config.json: missing \"q_lora_rank\""));
}

TEST_CASE("config: train to_json round trip", "[config]") {
  moe::TrainConfig t = parse(valid_config()).train;
  t.balance = moe::Balance::loss_free_seq;
  t.seed = 123456789012ull;
  t.lr = 0.1 + 0.2;
  const moe::TrainConfig back = moe::train_config_from_json(json::parse(moe::to_json(t).dump()), "x");
  CHECK(back.steps == t.steps);
  CHECK(back.batch == t.batch);
  CHECK(back.seq == t.seq);
  CHECK(back.accum == t.accum);
  CHECK(back.lr == t.lr);
  CHECK(back.min_lr == t.min_lr);
  CHECK(back.warmup == t.warmup);
  CHECK(back.weight_decay == t.weight_decay);
  CHECK(back.grad_clip == t.grad_clip);
  CHECK(back.balance == t.balance);
  CHECK(back.bias_rate == t.bias_rate);
  CHECK(back.aux_alpha == t.aux_alpha);
  CHECK(back.seq_aux_alpha == t.seq_aux_alpha);
  CHECK(back.eval_every == t.eval_every);
  CHECK(back.eval_tokens == t.eval_tokens);
  CHECK(back.save_every == t.save_every);
  CHECK(back.log_every == t.log_every);
  CHECK(back.threads == t.threads);
  CHECK(back.seed == t.seed);
}

namespace {

// A DeepSeek-V3 (MLA) model section as in configs/tiny-v3.json.
json mla_model() {
  json m = valid_config()["model"];
  m.erase("num_key_value_heads");
  m.erase("head_dim");
  m["q_lora_rank"] = 24, m["kv_lora_rank"] = 16, m["qk_nope_head_dim"] = 8, m["qk_rope_head_dim"] = 4;
  m["v_head_dim"] = 12;
  return m;
}

}  // namespace

TEST_CASE("config: MLA fields build a DeepSeek-V3 model and config.json is a complete HF DeepseekV3Config",
          "[config]") {
  json file = valid_config();
  file["model"] = mla_model();
  const moe::ModelConfig m = parse(file).model;
  CHECK(m.mla());
  CHECK(*m.q_lora_rank == 24);
  CHECK(m.head_dim == 4);                                 // HF: head_dim = qk_rope_head_dim
  CHECK(m.num_key_value_heads == m.num_attention_heads);  // one key/value head per query head
  CHECK(m.attn_dim() == m.num_attention_heads * 12);
  // The decode cache: r_kv + d_r floats per token and layer; MHA with these heads: k and v of every head.
  const double L = double(m.num_hidden_layers), H = double(m.num_attention_heads);
  CHECK(moe::kv_cache_bytes_per_token(m) == 4.0 * L * (16 + 4));
  CHECK(moe::kv_cache_bytes_per_token(m, /*as_gqa=*/true) == 4.0 * L * H * ((8 + 4) + 12));
  const json j = moe::to_json(m);
  CHECK(j["model_type"] == "deepseek_v3");
  CHECK(j["architectures"] == json::array({"DeepseekV3ForCausalLM"}));
  const json expected = {{"hidden_act", "silu"},         {"topk_method", "noaux_tc"}, {"moe_layer_freq", 1},
                         {"rope_scaling", nullptr},      {"attention_bias", false},   {"rope_interleave", true},
                         {"tie_word_embeddings", false}, {"torch_dtype", "float32"},  {"num_nextn_predict_layers", 0},
                         {"kv_lora_rank", 16},           {"v_head_dim", 12}};
  for (const auto& [key, value] : expected.items()) {
    CAPTURE(key);
    CHECK(j.at(key) == value);
  }
  // It reads back as the same model, and a configs/ file written from it too.
  CHECK(moe::to_json(moe::model_config_from_json(j, "config.json", true)) == j);
  moe::Config c{m, {}};
  c.train.seq = 32;
  CHECK(moe::to_json(moe::config_from_json(moe::config_file_json(c), "x").model) == j);
  // Without q_lora_rank the query is q_proj: null in config.json.
  file["model"].erase("q_lora_rank");
  const moe::ModelConfig direct = parse(file).model;
  CHECK_FALSE(direct.q_lora_rank.has_value());
  CHECK(moe::to_json(direct)["q_lora_rank"].is_null());
  // A GQA model writes none of the MLA or HF-only fields and stays model_type "moe".
  const json gqa = moe::to_json(parse(valid_config()).model);
  CHECK(gqa["model_type"] == "moe");
  for (const char* key : {"kv_lora_rank", "q_lora_rank", "hidden_act", "rope_scaling", "num_nextn_predict_layers"})
    CHECK_FALSE(gqa.contains(key));
}

TEST_CASE("config: a HF config.json is refused on fields that change the math, accepted on the others", "[config]") {
  json file = valid_config();
  file["model"] = mla_model();
  const json good = moe::to_json(parse(file).model);
  auto read = [](const json& j) { return moe::model_config_from_json(j, "hf/config.json", true); };
  const std::pair<const char*, json> refused[] = {
      {"rope_scaling", {{"type", "yarn"}, {"factor", 40}}},
      {"attention_bias", true},
      {"hidden_act", "gelu"},
      {"topk_method", "greedy"},
      {"moe_layer_freq", 2},
      {"tie_word_embeddings", true},
      {"scoring_func", "tanh"},
      {"num_nextn_predict_layers", 2},
  };
  for (const auto& [key, value] : refused) {
    CAPTURE(key);
    json j = good;
    j[key] = value;
    REQUIRE_MOE_ERROR(read(j), Contains(std::string("hf/config.json: ") + key));
  }
  // Fields without effect on the math are accepted.
  json extra = good;
  extra.update({{"use_cache", true},
                {"bos_token_id", 0},
                {"eos_token_id", 1},
                {"pad_token_id", nullptr},
                {"torch_dtype", "bfloat16"},
                {"pretraining_tp", 1},
                {"ep_size", 1},
                {"attention_dropout", 0.0},
                {"transformers_version", "4.57.0"},
                {"_name_or_path", "x"},
                {"aux_loss_alpha", 0.001},
                {"seq_aux", true}});
  CHECK(moe::to_json(read(extra)) == good);
  // Contradictions of what MLA implies, and half an MLA.
  json j = good;
  j["head_dim"] = 64;
  REQUIRE_MOE_ERROR(read(j), Contains("head_dim (64) must equal qk_rope_head_dim (4)"));
  j = good;
  j["num_key_value_heads"] = 1;
  REQUIRE_MOE_ERROR(read(j), Contains("num_key_value_heads (1) must equal num_attention_heads"));
  j = good;
  j["qk_rope_head_dim"] = 5, j["head_dim"] = 5;
  REQUIRE_MOE_ERROR(read(j), Contains("qk_rope_head_dim: expected an even number"));
  j = good;
  j["v_head_dim"] = 0;
  REQUIRE_MOE_ERROR(read(j), Contains("v_head_dim: expected a positive integer"));
  json gqa = valid_config();
  gqa["model"]["q_lora_rank"] = 8;
  REQUIRE_MOE_ERROR(parse(gqa), Contains("q_lora_rank: needs kv_lora_rank"));
  // A deepseek_v3 config.json must give the sizes whose HF defaults differ from moe's.
  j = good;
  j.erase("routed_scaling_factor");
  REQUIRE_MOE_ERROR(read(j), Contains("missing \"routed_scaling_factor\""));
}
