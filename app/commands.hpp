// Each subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "config/fields.hpp"
#include "core/error.hpp"
#include "core/threads.hpp"
#include "train/run_dir.hpp"

namespace moe::app {

using Run = std::function<int()>;

// Number checks whose messages say what was expected (CLI11's own ranges print "Value -1 not in
// range 0.000000 to 1797693...").
inline CLI::Validator number_in(double low, double high, bool low_open, const std::string& expected) {
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(input, v) || std::isnan(v))
          return "expected " + expected + ", got \"" + input + "\"";
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
  return number_in(low, high, low_open,
                   std::string("a number in ") + (low_open ? "(" : "[") + text(low) + ", " + text(high) + "]");
}

// A seed as the user typed it: a decimal integer in [0, 2^64 - 1]. CLI11 alone wraps "-1" to
// 2^64 - 1 and saturates larger values, so two different seeds gave one run; here every accepted
// seed is exactly the number given, and every printed seed can be given back.
inline CLI::Validator SeedValue() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        uint64_t v = 0;
        const char* end = input.data() + input.size();
        const bool digits = !input.empty() && input.find_first_not_of("0123456789") == std::string::npos;
        const auto [ptr, ec] = std::from_chars(input.data(), end, v);
        if (!digits || ec != std::errc() || ptr != end)
          return "expected an integer in [0, 18446744073709551615], got \"" + input + "\"";
        return std::string();
      },
      "0..18446744073709551615");
}

// A file the user asked us to write: an existing one is replaced only with --force (nothing the
// user wrote is lost by accident). Checked before any work; returns whether the file exists (the
// caller then says "replaced", not "wrote").
inline bool check_output_file(const std::string& path, bool force) {
  if (is_directory(path)) fail(path + ": is a directory; expected a file name to write");
  if (!path_exists(path)) return false;
  if (!force) fail(path + ": exists; add --force to replace it");
  return true;
}

// CLI11 reports a mistyped flag as "The following arguments were not expected: 5 --stpes". Finds
// the first argument after the subcommand that looks like a flag and that the subcommand does not
// know, and names it with the nearest known flag; "" when there is none (another error).
inline std::string unknown_option(CLI::App& app, int argc, char** argv) {
  CLI::App* sub = &app;
  for (CLI::App* next = sub; next;) {
    auto parsed = next->get_subcommands();
    next = parsed.empty() ? nullptr : parsed.front();
    if (next) sub = next;
  }
  if (sub == &app) return "";
  std::vector<std::string> known;
  for (const CLI::Option* o : sub->get_options()) {
    for (const std::string& l : o->get_lnames()) known.push_back("--" + l);
    for (const std::string& sn : o->get_snames()) known.push_back("-" + sn);
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-' || (arg[1] >= '0' && arg[1] <= '9') || arg[1] == '.') continue;
    if (arg == "--") break;
    const std::string name = arg.substr(0, arg.find('='));
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    return "unknown option " + name + "; did you mean " + nearest_name(name, known) + "?";
  }
  return "";
}

// Cores of this machine (at least 1).
inline int64_t hardware_threads() { return std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency())); }

// Every subcommand's thread count: 0 = all cores, at most kMaxThreads (per-thread tables are
// sized for it). Validated the same way everywhere, with the same message.
inline CLI::Validator ThreadCount() { return InRange(0, kMaxThreads); }

// More threads than cores runs, but each OpenMP barrier then waits for a descheduled thread.
inline void warn_if_oversubscribed(int64_t threads) {
  if (threads > hardware_threads())
    std::fprintf(stderr,
                 "moe: warning: --threads %lld is more than the %lld cores here; every step will wait for threads the "
                 "OS has parked\n",
                 (long long)threads, (long long)hardware_threads());
}

// Sets the OpenMP team size for this process: `threads`, or every core for 0 (never the
// environment's OMP_NUM_THREADS, which is not validated).
inline void use_threads(int64_t threads) {
  warn_if_oversubscribed(threads);
  omp_set_num_threads(int(threads > 0 ? threads : std::min<int64_t>(hardware_threads(), kMaxThreads)));
}

// Adds a command-line flag for every field of `fields` that has one (type, check and help from the
// table). The values land in `values`; `given` collects, for the flags actually given, how to copy
// them into a config, so flags override a config file field by field.
template <class S>
void add_field_flags(CLI::App* cmd, const std::vector<Field<S>>& fields, S& values,
                     std::vector<std::pair<CLI::Option*, std::function<void(S&)>>>& given,
                     std::vector<std::string>& choice_values) {
  choice_values.reserve(fields.size());  // options keep pointers into it
  for (const Field<S>& field : fields) {
    if (!field.flag) continue;
    CLI::Option* opt = nullptr;
    const bool zero_ok = field.check == Check::non_negative || field.check == Check::non_negative_finite;
    std::function<void(S&)> apply;
    // -t is the thread count in every subcommand (infer, eval, inspect, bench have it too).
    const std::string names = std::string(field.flag) == "--threads" ? "-t,--threads" : field.flag;
    if (auto p = std::get_if<int64_t S::*>(&field.member)) {
      opt = cmd->add_option(names, values.*(*p), field.help);
      apply = [&values, p = *p](S& s) { s.*p = values.*p; };
    } else if (auto p = std::get_if<double S::*>(&field.member)) {
      opt = cmd->add_option(field.flag, values.*(*p), field.help);
      apply = [&values, p = *p](S& s) { s.*p = values.*p; };
    } else if (auto p = std::get_if<uint64_t S::*>(&field.member)) {
      opt = cmd->add_option(field.flag, values.*(*p), field.help)->check(SeedValue());
      apply = [&values, p = *p](S& s) { s.*p = values.*p; };
    } else if (auto p = std::get_if<Choice<S>>(&field.member)) {
      std::string& text = choice_values.emplace_back();
      opt = cmd->add_option(field.flag, text, field.help)->check(CLI::IsMember(p->names));
      apply = [&text, &field](S& s) { read_field(field, s, nlohmann::json(text), field.flag); };
    } else if (auto p = std::get_if<bool S::*>(&field.member)) {
      // A switch: given means true (a config file's true stays true without it).
      opt = cmd->add_flag(field.flag, values.*(*p), field.help);
      apply = [&values, p = *p](S& s) { s.*p = values.*p; };
      given.push_back({opt, std::move(apply)});
      continue;
    } else {
      continue;  // optional integers: config file only
    }
    if (field.at_most > 0)  // the same bound and message as the config file's check
      opt->check(InRange(zero_ok ? 0 : 1, double(field.at_most)));
    else if (field.check != Check::any)
      opt->check(zero_ok ? NonNegative : Positive);
    given.push_back({opt, std::move(apply)});
  }
}

Run add_inspect(CLI::App& app);
Run add_train(CLI::App& app);
Run add_data(CLI::App& app);
Run add_infer(CLI::App& app);
Run add_eval(CLI::App& app);
Run add_bench(CLI::App& app);
Run add_export(CLI::App& app);
Run add_sweep(CLI::App& app);
Run add_tokenizer(CLI::App& app);

}  // namespace moe::app
