// Every flag a subcommand's --help lists is documented in that subcommand's README section (the
// synopsis or the text under it), so the README never falls behind the binary.
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "../support/run_moe.hpp"

using moe_test::run_moe;

namespace {

std::string readme_section(const std::string& heading) {
  std::ifstream in(MOE_SOURCE_DIR "/README.md");
  std::stringstream s;
  s << in.rdbuf();
  const std::string text = s.str();
  const size_t begin = text.find("\n" + heading + "\n");
  REQUIRE(begin != std::string::npos);
  const size_t end = text.find("\n## ", begin + 1);
  size_t next_sub = text.find("\n### ", begin + 1);
  return text.substr(begin, std::min(end, next_sub) - begin);
}

}  // namespace

TEST_CASE("README documents every flag of every subcommand", "[cli]") {
  const std::pair<std::vector<std::string>, std::string> commands[] = {
      {{"train"}, "### `moe train`"},
      {{"infer"}, "### `moe infer`"},
      {{"eval"}, "### `moe eval`"},
      {{"inspect"}, "### `moe inspect`"},
      {{"bench"}, "## Performance"},
      {{"data", "synth"}, "### `moe train`"},
      {{"export", "gguf"}, "### `moe export gguf`"},
      {{"sweep"}, "### `moe sweep`"},
      {{"tokenizer", "train"}, "## Your own data"},
      {{"data", "prepare"}, "## Your own data"},
  };
  const std::regex flag("(^|[ ,])(--[a-z][a-z0-9-]*)");
  for (const auto& [args, heading] : commands) {
    std::vector<std::string> a = args;
    a.push_back("--help");
    const auto help = run_moe(a);
    REQUIRE(help.code == 0);
    const std::string section = readme_section(heading);
    std::set<std::string> flags;
    std::istringstream lines(help.out);
    for (std::string line; std::getline(lines, line);) {
      // Option lines start with spaces and a dash; descriptions may mention other flags too.
      if (line.rfind("  -", 0) != 0) continue;
      const std::string names =
          line.substr(0, line.find_first_of(" ", 2) == std::string::npos ? line.size() : line.find(' ', 3));
      for (std::sregex_iterator it(names.begin(), names.end(), flag), end; it != end; ++it) flags.insert((*it)[2]);
    }
    flags.erase("--help");
    REQUIRE_FALSE(flags.empty());
    for (const std::string& f : flags) {
      CAPTURE(args, f, heading);
      CHECK(section.find(f) != std::string::npos);
    }
  }
}

TEST_CASE("help and mistakes: usage names moe, typos get the nearest command or flag, -t is threads", "[cli]") {
  const auto help = run_moe({"train", "--help"});
  CHECK(help.out.find("Usage: moe train [OPTIONS]") != std::string::npos);
  CHECK(help.out.find("-t,--threads") != std::string::npos);
  CHECK(help.out.find("Exit status: 0 done; 1 any error") != std::string::npos);
  const auto typo = run_moe({"trian"});
  CHECK(typo.code == 1);
  CHECK(typo.err == "moe: unknown command \"trian\"; did you mean \"train\"? (see moe --help)\n");
  const auto flag = run_moe({"train", "--stpes", "5"});
  CHECK(flag.code == 1);
  CHECK(flag.err == "moe: unknown option --stpes; did you mean --steps? (see moe train --help)\n");
  const auto infer = run_moe({"infer", "-m", "x", "-p", "a", "--tmep", "0.5"});
  CHECK(infer.err == "moe: unknown option --tmep; did you mean --temp? (see moe infer --help)\n");
  // The same wording for ranges everywhere (no CLI11 "INT:POSITIVE" or "[1 - 1000]").
  for (const char* command : {"train", "infer", "eval", "inspect", "bench"}) {
    CAPTURE(command);
    const auto h = run_moe({command, "--help"});
    CHECK(h.out.find("POSITIVE") == std::string::npos);
    CHECK(h.out.find(" - ") == std::string::npos);
  }
}
