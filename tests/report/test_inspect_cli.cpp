// `moe inspect` details a newcomer trips over: --layer also filters --text/--data, an empty --text
// is an error, a space and an underscore are told apart, --window 0 is refused and a window longer
// than the run gets a note, the summary's wording.
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"

using moe_test::run_moe;
using moe_test::RunResult;
using moe_test::TempDir;

namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("inspect: --layer filters routing, empty --text and --window 0 are refused, '_' is not a space",
          "[report][cli]") {
  TempDir tmp("inspect_cli");
  const std::string run = tmp / "run";
  // tiny: layers 1 and 2 are MoE, layer 0 is dense.
  REQUIRE(run_moe({"train", "--config", "tiny", "--steps", "6", "--batch", "2", "--seq", "32", "--eval-every", "0",
                   "--eval-tokens", "128", "-t", "2", "--out", run})
              .ok());
  const RunResult all = run_moe({"inspect", run, "--text", "a_b c", "-t", "1"});
  REQUIRE(all.ok());
  CHECK(all.out.find("'\xe2\x90\xa3' is a space") != std::string::npos);
  CHECK(all.out.find("   _") != std::string::npos);             // the underscore as itself
  CHECK(all.out.find("   \xe2\x90\xa3") != std::string::npos);  // the space as an open box, aligned
  CHECK(count(all.out, "  L1 ") == 1);
  CHECK(count(all.out, "  L2 ") == 1);
  const RunResult one = run_moe({"inspect", run, "--text", "a_b c", "--layer", "2", "-t", "1"});
  REQUIRE(one.ok());
  CHECK(count(one.out, "  L1 ") == 0);
  CHECK(count(one.out, "  L2 ") == 1);
  const RunResult data = run_moe({"inspect", run, "--data", "@synthetic", "--layer", "1", "-t", "1", "--json"});
  REQUIRE(data.ok());
  CHECK(data.out.find("\"layer\": 1") != std::string::npos);
  CHECK(data.out.find("\"layer\": 2") == std::string::npos);
  const RunResult dense = run_moe({"inspect", run, "--text", "abc", "--layer", "0"});
  CHECK(dense.code == 1);
  CHECK(dense.err.find("--layer 0: " + run + " has no such MoE layer (its MoE layers: 1, 2)") != std::string::npos);
  const RunResult empty = run_moe({"inspect", run, "--text", ""});
  CHECK(empty.code == 1);
  CHECK(empty.err.find("--text: expected some text") != std::string::npos);
  const RunResult zero = run_moe({"inspect", run, "--window", "0"});
  CHECK(zero.code == 1);
  CHECK(zero.err.find("--window") != std::string::npos);
  const RunResult wide = run_moe({"inspect", run, "--window", "500"});
  REQUIRE(wide.ok());
  CHECK(wide.out.find("note: --window 500 is more than the 6 train steps logged") != std::string::npos);
  const RunResult summary = run_moe({"inspect", "tiny"});
  CHECK(summary.out.find("the model activates ") != std::string::npos);
  CHECK(summary.out.find("of its parameters per token") != std::string::npos);
}
