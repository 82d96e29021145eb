// Each subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>

namespace moe::app {

using Run = std::function<int()>;

// Number checks whose messages say what was expected (CLI11's own ranges print "Value -1 not in
// range 0.000000 to 1797693...").
inline CLI::Validator number_in(double low, double high, bool low_open, const std::string& expected) {
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(input, v) || std::isnan(v)) return "expected " + expected + ", got \"" + input + "\"";
        if (v < low || (low_open && v == low) || v > high) return "expected " + expected + ", got " + input;
        return std::string();
      },
      expected);
}
inline const CLI::Validator Positive = number_in(0, std::numeric_limits<double>::infinity(), true, "a number > 0");
inline const CLI::Validator NonNegative = number_in(0, std::numeric_limits<double>::infinity(), false, "a number >= 0");
inline CLI::Validator InRange(double low, double high, bool low_open = false) {
  auto text = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.12g", v);
    return std::string(buf);
  };
  return number_in(low, high, low_open, std::string("a number in ") + (low_open ? "(" : "[") + text(low) + ", " + text(high) + "]");
}

Run add_inspect(CLI::App& app);
Run add_train(CLI::App& app);
Run add_data(CLI::App& app);
Run add_infer(CLI::App& app);
Run add_eval(CLI::App& app);
Run add_bench(CLI::App& app);

}  // namespace moe::app
