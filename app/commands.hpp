// Each subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once
#include <functional>

#include <CLI/CLI.hpp>

namespace moe::app {

using Run = std::function<int()>;

Run add_inspect(CLI::App& app);
Run add_train(CLI::App& app);
Run add_data(CLI::App& app);
Run add_infer(CLI::App& app);
Run add_eval(CLI::App& app);
Run add_bench(CLI::App& app);

}  // namespace moe::app
