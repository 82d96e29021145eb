// `moe inspect PATH`: model summary of a config file or checkpoint directory.
#include <sys/stat.h>

#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "model/checkpoint.hpp"
#include "model/summary.hpp"

namespace moe::app {

namespace {
struct InspectOptions {
  std::string path;
  bool json = false;
};
}  // namespace

Run add_inspect(CLI::App& app) {
  auto opts = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Show a model's parameters: total vs activated per token, by part");
  cmd->add_option("path", opts->path, "A config file (configs/*.json) or a checkpoint directory")->required();
  cmd->add_flag("--json", opts->json, "Print one JSON document instead of tables");
  return [opts]() {
    struct stat st {};
    ModelConfig config;
    if (::stat(opts->path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) config = load_checkpoint_config(opts->path);
    else config = load_config_file(opts->path).model;
    if (opts->json) std::cout << summary_json(config).dump(2) << "\n";
    else std::cout << format_model_summary(config, opts->path);
    return 0;
  };
}

}  // namespace moe::app
