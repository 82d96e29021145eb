// moe: train, run and inspect small DeepSeek-V3-style MoE transformers on CPUs.
// Parses the command line, runs one subcommand, turns every moe::Error into one line + exit 1.
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "config/fields.hpp"
#include "core/error.hpp"
#include "dist/dist.hpp"

int main(int argc, char** argv) {
  // Named explicitly: usage lines say "moe", not the path the binary was started by.
  CLI::App app{
      "moe: train and run small DeepSeek-V3-style Mixture-of-Experts transformers on CPUs,\n"
      "and watch how the experts' load is balanced.",
      "moe"};
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 done; 1 any error (bad flag, config, data or checkpoint, a failed run), with one line\n"
      "on stderr; 130 / 143 train stopped by SIGINT / SIGTERM after saving a checkpoint (continue with --resume).");
  app.fallthrough(false);
  const std::pair<std::string, moe::app::Run> commands[] = {
      {"train", moe::app::add_train(app)},         {"infer", moe::app::add_infer(app)},
      {"eval", moe::app::add_eval(app)},           {"inspect", moe::app::add_inspect(app)},
      {"data", moe::app::add_data(app)},           {"bench", moe::app::add_bench(app)},
      {"export", moe::app::add_export(app)},       {"sweep", moe::app::add_sweep(app)},
      {"tokenizer", moe::app::add_tokenizer(app)},
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // One line, like every other error, naming the flag and where to look.
    std::string command = "moe";
    for (auto* sub = &app; sub != nullptr;) {
      auto parsed = sub->get_subcommands();
      sub = parsed.empty() ? nullptr : parsed.front();
      if (sub) command += " " + sub->get_name();
    }
    if (command == "moe" && argc > 1) {
      std::vector<std::string> names;
      for (const auto& [name, run] : commands) names.push_back(name);
      if (argv[1][0] == '-')
        std::fprintf(stderr, "moe: unknown option \"%s\"; a command comes first (see moe --help)\n", argv[1]);
      else
        std::fprintf(stderr, "moe: unknown command \"%s\"; did you mean \"%s\"? (see moe --help)\n", argv[1],
                     moe::nearest_name(argv[1], names).c_str());
    } else if (const std::string unknown = moe::app::unknown_option(app, argc, argv); !unknown.empty()) {
      std::fprintf(stderr, "moe: %s (see %s --help)\n", unknown.c_str(), command.c_str());
    } else {
      std::fprintf(stderr, "moe: %s (see %s --help)\n", e.what(), command.c_str());
    }
    return 1;  // CLI11's own codes (105, 106, ...) would make "bad input" depend on which check caught it
  }
  try {
    for (auto* sub : app.get_subcommands())
      for (const auto& [name, run] : commands)
        if (sub->get_name() == name) return run();
  } catch (const moe::Error& e) {
    std::fflush(stdout);
    // Under mpirun every rank may report; the others say which one they are.
    const int rank = moe::Dist::rank_if_joined();
    if (rank > 0)
      std::fprintf(stderr, "moe: rank %d: %s\n", rank, e.what());
    else
      std::fprintf(stderr, "moe: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moe: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: %s\n", e.what());
    return 1;
  }
  return 1;
}
