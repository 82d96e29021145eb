// `moe bench`: forced routings (balanced gives MaxVio 0, skewed the most top-K allows), the phase
// shares (the router is its own small phase, the routed experts theirs), the decode roofline and
// the ratio table, from one quick run of the tiny config.
#include <string>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"

using nlohmann::json;

namespace {

// `moe bench ARGS -o json`: its "results" (the run must succeed).
json bench_results(const std::vector<std::string>& args) {
  std::vector<std::string> json_args = args;
  json_args.insert(json_args.end(), {"-o", "json"});
  const moe_test::RunResult r = moe_test::run_moe(json_args, {.timeout_s = 300});
  INFO(r.describe());
  REQUIRE(r.ok());
  return json::parse(r.out)["results"];
}

}  // namespace

TEST_CASE("moe bench --routing: balanced and skewed loads, phase shares, decode roofline", "[bench][cli]") {
  const std::vector<std::string> args = {"bench",     "--config",        "tiny",   "--routing", "balanced",
                                         "--routing", "skewed",          "--reps", "1",         "--steps",
                                         "1",         "--decode-tokens", "8",      "-t",        "2"};
  const json results = bench_results(args);
  REQUIRE(results.size() == 2);
  CHECK(results[0]["routing"] == "balanced");
  CHECK(results[1]["routing"] == "skewed");
  // tiny: 8 experts, top-2. Balanced: every expert N*K/E rows; skewed: expert 0 in every top-K,
  // MaxVio (N - N*K/E) / (N*K/E) = E/K - 1 = 3.
  CHECK(results[0]["train_maxvio"].get<double>() == 0.0);
  CHECK(results[1]["train_maxvio"].get<double>() == Approx(3.0));
  for (const json& result : results) {
    const json& phases = result["phase_share"];
    // The router (scores, top-K, weights, their backward) is small beside the experts it routes to;
    // the experts' forward was once charged to it.
    CHECK(phases["router"].get<double>() < phases["routed experts"].get<double>());
    const json& roofline = result["decode_roofline"];
    CHECK(roofline["read_gb_per_s"].get<double>() > 1.0);
    CHECK(roofline["weight_bytes_per_token"].get<double>() > 0);
    CHECK(roofline["tokens_per_s"].get<double>() ==
          Approx(roofline["read_gb_per_s"].get<double>() * 1e9 / roofline["weight_bytes_per_token"].get<double>()));
  }
  const moe_test::RunResult md = moe_test::run_moe(args, {.timeout_s = 300});
  REQUIRE(md.ok());
  CHECK(md.out.find("against balanced routing") != std::string::npos);
  CHECK(md.out.find("| tiny | skewed | 2 | 3.00 |") != std::string::npos);
  CHECK(md.out.find("decode B1 roofline") != std::string::npos);
}

TEST_CASE("moe bench refuses an unknown routing and a missing data file, naming them", "[bench][cli]") {
  const moe_test::RunResult a = moe_test::run_moe({"bench", "--config", "tiny", "--routing", "uniform"});
  CHECK(a.exited);
  CHECK(a.code == 1);
  CHECK(a.err.find("--routing") != std::string::npos);
  const moe_test::RunResult b = moe_test::run_moe({"bench", "--config", "tiny", "--data", "/nonexistent/x.txt"});
  CHECK(b.code == 1);
  CHECK(b.err.find("/nonexistent/x.txt") != std::string::npos);
}

TEST_CASE("moe bench on a model with the MTP module: decode-spec rows for the int8 and the f32 draft", "[bench][cli]") {
  const std::vector<std::string> args = {"bench", "--config",        "tiny-v3", "--reps", "1", "--steps",
                                         "1",     "--decode-tokens", "8",       "-t",     "2"};
  const json spec = bench_results(args)[0]["decode_spec"];
  REQUIRE(spec.is_object());
  CHECK(spec["draft_precision"] == "int8");
  CHECK(spec["trained"] == false);  // a config: fresh weights
  CHECK(spec["tokens_per_s"]["mean"].get<double>() > 0);
  CHECK(spec["plain_tokens_per_s"]["mean"].get<double>() > 0);
  CHECK(spec["f32_draft"]["tokens_per_s"]["mean"].get<double>() > 0);
  for (const double acceptance : {spec["acceptance"].get<double>(), spec["f32_draft"]["acceptance"].get<double>()}) {
    CHECK(acceptance >= 0.0);
    CHECK(acceptance <= 1.0);
  }
  // 8 tokens: the first from the prompt, then 7 from main-model steps of 1 + accepted tokens each.
  const double per_step = spec["tokens_per_main_step"].get<double>();
  CHECK(per_step >= 1.0);
  CHECK(per_step <= 2.0);
  // The round's breakdown: a plain step reads K = 2 experts per MoE layer, a verification of two
  // rows the union of theirs (the last round may have no draft: one row); tiny-v3 routes within
  // one group of 4 experts.
  const json round = spec["round"];
  CHECK(round["experts_per_moe_layer_plain"].get<double>() == 2.0);
  CHECK(round["experts_per_moe_layer_verify"].get<double>() >= 2.0);
  CHECK(round["experts_per_moe_layer_verify"].get<double>() <= 4.0);
  CHECK(round["verify_step_vs_plain"].get<double>() > 0);
  CHECK(round["draft_vs_plain_step"].get<double>() > 0);
  CHECK(round["free_draft_ceiling"].get<double>() ==
        Approx(per_step / round["verify_step_vs_plain"].get<double>()).epsilon(1e-9));
  const moe_test::RunResult md = moe_test::run_moe(args, {.timeout_s = 300});
  REQUIRE(md.ok());
  CHECK(md.out.find("decode-spec B1, --draft mtp (int8 draft, untrained weights") != std::string::npos);
  CHECK(md.out.find("decode-spec B1, --draft mtp --draft-precision f32") != std::string::npos);
  CHECK(md.out.find("decode-spec B1 round, int8 draft: verification ") != std::string::npos);
}
