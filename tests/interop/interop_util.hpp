// Shared by the interop tests: run a program (moe or a reference), require success, parse its JSON.
#pragma once
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"

namespace interop {

// `argv` (argv[0] looked up in PATH) must exit 0; its stdout as JSON.
inline nlohmann::json run_json(const std::vector<std::string>& argv, double timeout_s = 300) {
  const moe_test::RunResult r = moe_test::run(argv, {.timeout_s = timeout_s});
  INFO(r.describe());
  REQUIRE(r.ok());
  return nlohmann::json::parse(r.out);
}

// `moe ARGS...` must exit 0; its stdout as JSON.
inline nlohmann::json moe_json(const std::vector<std::string>& args) { return run_json(moe_test::moe_argv(args)); }

}  // namespace interop
