// Replays the fuzz seed corpus (tests/fuzz/corpus/<harness>/) and every input a fuzzer ever
// crashed on (tests/fuzz/regressions/<harness>/) through the same harness bodies as the libFuzzer
// targets, without libFuzzer: each must be accepted or rejected with a moe::Error, never crash or
// throw anything else. Under the sanitizer stage of scripts/test this runs with ASan + UBSan.
// Corpus files named valid-* are known-good inputs and must be accepted, reject-* known-bad ones
// that must be rejected.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include <catch2/catch.hpp>

#include "harnesses.hpp"

namespace fs = std::filesystem;
using moe::fuzz::Outcome;

namespace {

const fs::path kFuzzDir = fs::path(MOE_SOURCE_DIR) / "tests" / "fuzz";

std::vector<fs::path> inputs_in(const fs::path& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().filename().string()[0] != '.' && entry.path().extension() != ".md")
      files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Replays corpus/<harness> (which must not be empty) and regressions/<harness>; returns the
// number of inputs replayed.
template <class Harness>
size_t replay(const std::string& harness, Harness run) {
  const std::vector<fs::path> corpus = inputs_in(kFuzzDir / "corpus" / harness);
  REQUIRE(!corpus.empty());
  std::vector<fs::path> all = corpus;
  const std::vector<fs::path> regressions = inputs_in(kFuzzDir / "regressions" / harness);
  all.insert(all.end(), regressions.begin(), regressions.end());
  for (const fs::path& path : all) {
    INFO("input: " << path.string());
    const std::vector<uint8_t> bytes = read_bytes(path);
    Outcome outcome = Outcome::rejected;
    // A crash fails the whole test binary; an exception other than moe::Error fails here.
    REQUIRE_NOTHROW(outcome = run(bytes.data(), bytes.size()));
    const std::string name = path.filename().string();
    if (name.rfind("valid-", 0) == 0) CHECK(outcome == Outcome::accepted);
    if (name.rfind("reject-", 0) == 0) CHECK(outcome == Outcome::rejected);
  }
  return all.size();
}

}  // namespace

TEST_CASE("fuzz corpus and regressions replay cleanly: safetensors reader", "[fuzz]") {
  CHECK(replay("safetensors", moe::fuzz::run_safetensors) > 0);
}

TEST_CASE("fuzz corpus and regressions replay cleanly: config parser", "[fuzz]") {
  CHECK(replay("config", moe::fuzz::run_config) > 0);
}

TEST_CASE("fuzz corpus and regressions replay cleanly: metrics reader", "[fuzz]") {
  CHECK(replay("metrics", moe::fuzz::run_metrics) > 0);
}
