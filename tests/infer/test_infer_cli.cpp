// `moe infer` and `moe eval` end to end on a checkpoint written by the library.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "model/checkpoint.hpp"

using namespace moe;
using moe_test::run_moe;
using moe_test::RunResult;
using moe_test::TempDir;

namespace {

// A small random model saved into `dir`.
void make_checkpoint(const TempDir& dir) {
  ModelConfig c;
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 2, c.num_key_value_heads = 1;
  c.head_dim = 16, c.intermediate_size = 48, c.moe_intermediate_size = 16, c.first_k_dense_replace = 1;
  c.n_routed_experts = 4, c.num_experts_per_tok = 2, c.max_position_embeddings = 64, c.initializer_range = 0.2;
  Model model(c);
  model.init(3);
  save_checkpoint(dir.path(), model);
}

}  // namespace

TEST_CASE("infer --json carries the documented fields and a seed reproduces the text", "[infer][cli]") {
  const TempDir tmp("infer_cli");
  make_checkpoint(tmp);
  const std::string& dir = tmp.path();
  const RunResult a = run_moe({"infer", "-m", dir, "-p", "hello", "-n", "12", "--seed", "5", "--json", "-t", "1"});
  REQUIRE(a.code == 0);
  const auto j = nlohmann::json::parse(a.out);
  CHECK(j.at("prompt") == "hello");
  const std::vector<uint8_t> text_bytes = j.at("text_bytes").get<std::vector<uint8_t>>();
  CHECK(text_bytes.size() == 12);
  CHECK(j.at("prompt_tokens") == 5);
  CHECK(j.at("generated_tokens") == 12);
  CHECK(j.at("seed") == 5);
  for (const char* k : {"load_ms", "prompt_ms", "prompt_tokens_per_s", "generate_ms", "generate_tokens_per_s"})
    CHECK(j.at("timings").contains(k));
  REQUIRE(j.at("expert_stats").size() == 1);
  int64_t routed = 0;
  for (const auto& v : j["expert_stats"][0]["counts"]) routed += v.get<int64_t>();
  CHECK(routed == (5 + 11) * 2);
  const RunResult b = run_moe({"infer", "-m", dir, "-p", "hello", "-n", "12", "--seed", "5", "--json", "-t", "1"});
  CHECK(nlohmann::json::parse(b.out).at("text_bytes") == j.at("text_bytes"));
  // Streaming mode prints the prompt followed by the same text.
  const RunResult s = run_moe({"infer", "-m", dir, "-p", "hello", "-n", "12", "--seed", "5", "-t", "1"});
  CHECK(s.out == "hello" + std::string(text_bytes.begin(), text_bytes.end()) + "\n");
}

TEST_CASE("infer --prompts-file generates every prompt, in order", "[infer][cli]") {
  const TempDir tmp("infer_cli");
  make_checkpoint(tmp);
  const std::string& dir = tmp.path();
  const std::string prompts = dir + "/prompts.txt";
  std::ofstream(prompts) << "abc\n\nsecond prompt\n  \nthird\n";
  const RunResult r = run_moe({"infer", "-m", dir, "--prompts-file", prompts, "-n", "6", "--temp", "0", "--json"});
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  // Blank lines are skipped with one note, not generated from as empty prompts.
  REQUIRE(j.at("results").size() == 3);
  CHECK(j["results"][0]["prompt"] == "abc");
  CHECK(j["results"][1]["prompt"] == "second prompt");
  CHECK(j["results"][2]["prompt"] == "third");
  CHECK(r.err.find("moe: note: " + prompts + ": skipped 2 blank lines") != std::string::npos);
  std::ofstream(prompts) << "\n \n";
  const RunResult blank = run_moe({"infer", "-m", dir, "--prompts-file", prompts, "-n", "6"});
  CHECK(blank.code == 1);
  CHECK(blank.err.find(prompts + ": no prompts") != std::string::npos);
  // Batched greedy text equals each prompt generated alone.
  const RunResult single = run_moe({"infer", "-m", dir, "-p", "second prompt", "-n", "6", "--temp", "0", "--json"});
  CHECK(nlohmann::json::parse(single.out).at("text_bytes") == j["results"][1]["text_bytes"]);
}

TEST_CASE("eval --json reports loss, perplexity, tokens and per-layer counts", "[infer][cli]") {
  const TempDir tmp("infer_cli");
  make_checkpoint(tmp);
  const std::string& dir = tmp.path();
  const std::string data = dir + "/text.txt";
  std::ofstream(data) << std::string(150, 'x') << "some more text at the end";
  const RunResult r = run_moe({"eval", "-m", dir, "--data", data, "--ctx", "32", "--json"});
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("tokens") == 174);
  CHECK(j.at("perplexity").get<double>() == Approx(std::exp(j.at("loss").get<double>())));
  int64_t routed = 0;
  for (const auto& v : j["layers"][0]["counts"]) routed += v.get<int64_t>();
  CHECK(routed == 174 * 2);
  CHECK(run_moe({"eval", "-m", dir, "--data", dir + "/missing.txt"}).code != 0);
  CHECK(run_moe({"eval", "-m", dir, "--data", data, "--ctx", "1000"}).code != 0);
  CHECK(run_moe({"infer", "-m", dir, "-p", "x", "--top-p", "0"}).code != 0);
  CHECK(run_moe({"infer", "-m", dir, "-p", "x", "--temp", "-1"}).code != 0);
  CHECK(run_moe({"infer", "-m", dir + "/nope", "-p", "x"}).code != 0);
}

TEST_CASE("UTF-8 text (bytes past 0x7f) works in infer, eval and inspect --text of a byte model", "[infer][cli]") {
  // The byte tokenizer once turned such bytes into negative ids: "prompt token -61 is outside the
  // model's vocabulary". Now they are ids 128..255, and the counts cover every byte.
  const TempDir tmp("infer_utf8");
  make_checkpoint(tmp);
  const std::string& dir = tmp.path();
  const std::string text = "caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac";  // "café naïve €": 16 bytes
  const RunResult r = run_moe({"infer", "-m", dir, "-p", text, "-n", "4", "--temp", "0", "--json"});
  INFO(r.describe());
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("prompt_tokens") == 16);
  CHECK(j.at("generated_tokens") == 4);
  const std::string data = dir + "/utf8.txt";
  std::ofstream(data) << text << text;
  const RunResult e = run_moe({"eval", "-m", dir, "--data", data, "--ctx", "16", "--json"});
  INFO(e.describe());
  REQUIRE(e.code == 0);
  CHECK(nlohmann::json::parse(e.out).at("tokens") == 31);  // 32 bytes: 31 predicted
  const RunResult t = run_moe({"inspect", dir, "--text", text, "--json"});
  INFO(t.describe());
  REQUIRE(t.code == 0);
  CHECK(nlohmann::json::parse(t.out).at("token_ids").size() == 16);
}

TEST_CASE("a model with a context of 1 holds its prompt's last token and stops at the limit", "[infer][cli]") {
  const TempDir tmp("infer_ctx1");
  ModelConfig c;
  c.hidden_size = 16, c.num_hidden_layers = 1, c.num_attention_heads = 2, c.num_key_value_heads = 1;
  c.head_dim = 8, c.intermediate_size = 16, c.first_k_dense_replace = 1, c.max_position_embeddings = 1;
  Model model(c);
  model.init(5);
  save_checkpoint(tmp.path(), model);
  const RunResult r = run_moe({"infer", "-m", tmp.path(), "-p", "ab", "-n", "5", "--temp", "0", "--json"});
  INFO(r.describe());
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("prompt_tokens") == 1);
  CHECK(j.at("prompt_cut") == 1);
  CHECK(j.at("generated_tokens") == 0);
  CHECK(j.at("context_limit") == true);
}

TEST_CASE("infer --draft mtp prints the same greedy text and reports drafting; refused without the module",
          "[infer][cli]") {
  const TempDir tmp("infer_draft");
  ModelConfig c;
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 2, c.num_key_value_heads = 2;
  c.kv_lora_rank = 8, c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 4, c.v_head_dim = 8, c.head_dim = 4;
  c.intermediate_size = 48, c.moe_intermediate_size = 16, c.first_k_dense_replace = 1, c.n_routed_experts = 4;
  c.num_experts_per_tok = 2, c.max_position_embeddings = 64, c.initializer_range = 0.2;
  c.num_nextn_predict_layers = 1;
  Model model(c);
  model.init(4);
  save_checkpoint(tmp.path(), model);
  const std::vector<std::string> args = {"infer", "-m", tmp.path(), "-p", "hello", "-n", "20", "--temp", "0", "--json"};
  const RunResult plain = run_moe(args);
  REQUIRE(plain.ok());
  std::vector<std::string> draft = args;
  draft.insert(draft.end(), {"--draft", "mtp", "--draft-max", "2", "--expert-stats"});
  const RunResult spec = run_moe(draft);
  INFO(spec.describe());
  REQUIRE(spec.ok());
  const auto a = nlohmann::json::parse(plain.out), b = nlohmann::json::parse(spec.out);
  CHECK(a.at("text_bytes") == b.at("text_bytes"));
  const auto& s = b.at("speculative");
  CHECK(s.at("draft") == "mtp");
  CHECK(s.at("draft_max") == 2);
  CHECK(s.at("drafted").get<int64_t>() > 0);
  CHECK(s.at("accepted").get<int64_t>() <= s.at("drafted").get<int64_t>());
  CHECK(s.at("main_steps").get<int64_t>() == 19 - s.at("accepted").get<int64_t>());
  CHECK(s.at("tokens_per_main_step").get<double>() >= 1.0);
  // Time split and the verifications' expert reads: one MoE layer, K = 2 of 4 experts per row,
  // up to three rows per verification (draft-max 2).
  CHECK(s.at("verify_ms").get<double>() > 0);
  CHECK(s.at("draft_ms").get<double>() > 0);
  CHECK(s.at("verify_ms").get<double>() + s.at("draft_ms").get<double>() <= b.at("timings").at("generate_ms"));
  CHECK(s.at("experts_per_moe_layer").get<double>() >= 2.0);
  CHECK(s.at("experts_per_moe_layer").get<double>() <= 4.0);
  // The default picks the draft's precision: this module's weights (a few KiB) stay in cache, f32.
  CHECK(s.at("draft_precision") == "f32");
  CHECK(s.at("draft_precision_chosen") == "auto");
  // The MTP layer's load (layer 2, last in the table): each drafted token is one row through its
  // experts (the rows that only enter its cache route nowhere), K = 2 experts each.
  const auto& stats = b.at("expert_stats");
  REQUIRE(stats.size() == 2);
  CHECK(stats.back().at("layer") == 2);
  int64_t mtp_routed = 0;
  for (const auto& v : stats.back().at("counts")) mtp_routed += v.get<int64_t>();
  CHECK(mtp_routed == 2 * s.at("drafted").get<int64_t>());
  // The int8 draft, asked for: the same text.
  std::vector<std::string> int8 = draft;
  int8.insert(int8.end(), {"--draft-precision", "int8"});
  const RunResult int8_run = run_moe(int8);
  REQUIRE(int8_run.ok());
  const auto q = nlohmann::json::parse(int8_run.out);
  CHECK(q.at("text_bytes") == a.at("text_bytes"));
  CHECK(q.at("speculative").at("draft_precision") == "int8");
  CHECK(q.at("speculative").at("draft_precision_chosen") == "flag");
  CHECK(run_moe({"infer", "-m", tmp.path(), "-p", "hi", "--draft", "mtp", "--draft-precision", "int4"}).code != 0);
  // The streaming form reports on stderr.
  draft.pop_back(), draft.pop_back(), draft.pop_back(), draft.pop_back(), draft.pop_back();
  draft.erase(std::find(draft.begin(), draft.end(), "--json"));
  draft.insert(draft.end(), {"--draft", "mtp"});
  const RunResult streamed = run_moe(draft);
  CHECK(streamed.err.find("--draft mtp:") != std::string::npos);
  CHECK(streamed.err.find("accepted") != std::string::npos);
  CHECK(streamed.err.find("f32 draft (auto)") != std::string::npos);
  // A model without the module: a one-line refusal.
  const TempDir other("infer_nodraft");
  make_checkpoint(other);
  const RunResult refused = run_moe({"infer", "-m", other.path(), "-p", "hi", "-n", "4", "--draft", "mtp"});
  CHECK(refused.code == 1);
  CHECK(refused.err.find("no multi-token-prediction module") != std::string::npos);
  CHECK(refused.out.empty());  // refused before the prompt is echoed
  CHECK(run_moe({"infer", "-m", tmp.path(), "-p", "hi", "--draft", "eagle"}).code != 0);
  // The draft's options without --draft are a mistake, not silently ignored.
  for (const char* option : {"--draft-max", "--draft-precision"}) {
    const RunResult lone =
        run_moe({"infer", "-m", tmp.path(), "-p", "hi", option, std::string(option) == "--draft-max" ? "2" : "f32"});
    CHECK(lone.code != 0);
    CHECK(lone.err.find("requires --draft") != std::string::npos);
  }
  // Several prompts share each main-model step: tokens per step stay per sequence (<= draft-max + 1).
  std::ofstream(tmp / "prompts.txt") << "hello\nworld\nab\n";
  const RunResult batch = run_moe({"infer", "-m", tmp.path(), "--prompts-file", tmp / "prompts.txt", "-n", "12",
                                   "--temp", "0", "--draft", "mtp", "--draft-max", "2", "--json"});
  REQUIRE(batch.ok());
  const auto bs = nlohmann::json::parse(batch.out).at("speculative");
  CHECK(bs.at("tokens_per_main_step").get<double>() >= 1.0);
  CHECK(bs.at("tokens_per_main_step").get<double>() <= 3.0);
  // 3 sequences x 11 tokens from steps, each step giving a sequence 1 + its accepted drafts.
  CHECK(bs.at("tokens_per_main_step").get<double>() ==
        Approx(33.0 / (33.0 - double(bs.at("accepted").get<int64_t>()))).epsilon(1e-12));
  // eval reports the module's loss whenever the model has it: 7 bytes at --ctx 5 are one window of
  // 5 (positions 0..3 predict t+2) and one of 1 (none); at --ctx 1 none at all (0 and null).
  std::ofstream(tmp / "seven.txt") << "abcdefg";
  const auto ev = nlohmann::json::parse(
      run_moe({"eval", "-m", tmp.path(), "--data", tmp / "seven.txt", "--ctx", "5", "--json"}).out);
  CHECK(ev.at("tokens") == 6);
  CHECK(ev.at("mtp_tokens") == 4);
  CHECK(ev.at("mtp_loss").get<double>() > 0);
  const auto ev1 = nlohmann::json::parse(
      run_moe({"eval", "-m", tmp.path(), "--data", tmp / "seven.txt", "--ctx", "1", "--json"}).out);
  CHECK(ev1.at("mtp_tokens") == 0);
  CHECK(ev1.at("mtp_loss").is_null());
}

TEST_CASE("more threads than cores runs with one warning; the same text as with one thread", "[infer][cli]") {
  const TempDir tmp("infer_threads");
  make_checkpoint(tmp);
  const std::string more = std::to_string(std::max(1u, std::thread::hardware_concurrency()) + 1);
  const RunResult one = run_moe({"infer", "-m", tmp.path(), "-p", "hi", "-n", "6", "--temp", "0", "-t", "1"});
  const RunResult many = run_moe({"infer", "-m", tmp.path(), "-p", "hi", "-n", "6", "--temp", "0", "-t", more});
  REQUIRE(one.code == 0);
  REQUIRE(many.code == 0);
  CHECK(many.out == one.out);
  CHECK(many.err.find("moe: warning: --threads " + more + " is more than the") != std::string::npos);
  CHECK(one.err.find("warning") == std::string::npos);
}

TEST_CASE("every accepted or printed seed reproduces its text; greedy prints none", "[infer][cli]") {
  const TempDir tmp("infer_seeds");
  make_checkpoint(tmp);
  auto text = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> a = {"infer", "-m",     tmp.path(), "-p",     "hi", "-n",
                                  "24",    "--temp", "1.5",      "--json", "-t", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    const RunResult r = run_moe(a);
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out);
  };
  // Random seeds, printed, given back: the same text (half of all seeds are above 2^63).
  for (int i = 0; i < 6; ++i) {
    const auto j = text({});
    const uint64_t seed = j.at("seed").get<uint64_t>();
    CAPTURE(seed);
    CHECK(text({"-s", std::to_string(seed)}).at("text_bytes") == j.at("text_bytes"));
  }
  // Seeds above 2^63 are themselves, not the largest int64.
  const auto max64 = text({"-s", "18446744073709551615"});
  const auto max63 = text({"-s", "9223372036854775807"});
  const auto high = text({"-s", "11979873797463985713"});
  CHECK(max64.at("seed").get<uint64_t>() == 18446744073709551615ull);
  CHECK(high.at("seed").get<uint64_t>() == 11979873797463985713ull);
  CHECK(high.at("text_bytes") != max63.at("text_bytes"));
  CHECK(max64.at("text_bytes") != max63.at("text_bytes"));
  for (const char* bad : {"-1", "18446744073709551616", "1e3", "+5", ""}) {
    CAPTURE(bad);
    const RunResult r = run_moe({"infer", "-m", tmp.path(), "-p", "hi", "-n", "2", "-s", bad});
    CHECK(r.code == 1);
    CHECK(r.err.find("--seed: expected an integer in [0, 18446744073709551615]") != std::string::npos);
  }
  // Greedy decoding uses no seed and prints none.
  const RunResult greedy = run_moe({"infer", "-m", tmp.path(), "-p", "hi", "-n", "4", "--temp", "0", "-t", "1"});
  REQUIRE(greedy.code == 0);
  CHECK(greedy.err.find("seed") == std::string::npos);
  const RunResult greedy_json =
      run_moe({"infer", "-m", tmp.path(), "-p", "hi", "-n", "4", "--temp", "0", "--json", "-t", "1"});
  CHECK(nlohmann::json::parse(greedy_json.out).at("seed").is_null());
  // train's --seed takes the same check.
  const RunResult train = run_moe({"train", "--out", tmp.path() + "/run", "--seed", "-1", "--steps", "1"});
  CHECK(train.code == 1);
  CHECK(train.err.find("--seed: expected an integer in [0, 18446744073709551615]") != std::string::npos);
}

TEST_CASE("eval shows progress on a terminal only; infer reports set-up apart from the prompt", "[infer][cli]") {
  const TempDir tmp("eval_progress");
  make_checkpoint(tmp);
  const std::string data = tmp.path() + "/text.txt";
  std::ofstream(data) << std::string(5000, 'x');
  const std::string command = moe_test::kMoeBinary + " eval -m " + tmp.path() + " --data " + data + " -t 1";
  // Through a pseudo-terminal (script(1)): a redrawn progress line, erased before the result.
  const RunResult pty = moe_test::run({"/usr/bin/script", "-qec", command, "/dev/null"});
  INFO(pty.describe());
  REQUIRE(pty.code == 0);
  CHECK(pty.out.find("\r\033[Keval ") != std::string::npos);
  CHECK(pty.out.find("4999 / 4999 tokens (100%)") != std::string::npos);
  CHECK(pty.out.find("ETA") != std::string::npos);
  // In a pipe: no escape codes, no progress.
  const RunResult pipe = run_moe({"eval", "-m", tmp.path(), "--data", data, "-t", "1"});
  REQUIRE(pipe.code == 0);
  CHECK(pipe.output().find("ETA") == std::string::npos);
  CHECK(pipe.output().find('\033') == std::string::npos);
  const RunResult infer = run_moe({"infer", "-m", tmp.path(), "-p", "hello", "-n", "4", "--json", "-t", "1"});
  REQUIRE(infer.code == 0);
  const auto timings = nlohmann::json::parse(infer.out).at("timings");
  CHECK(timings.at("setup_ms").get<double>() > 0);
  CHECK(timings.at("prompt_ms").get<double>() > 0);
}
