// `moe export gguf`: a checkpoint as a GGUF file for llama.cpp (its deepseek2 architecture).
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "model/checkpoint.hpp"
#include "model/gguf_export.hpp"

namespace moe::app {

namespace {
struct ExportFlags {
  std::string model, out, type = "f32";
  bool force = false;
};
}  // namespace

Run add_export(CLI::App& app) {
  auto f = std::make_shared<ExportFlags>();
  auto* cmd = app.add_subcommand("export", "Write a checkpoint in another tool's format");
  cmd->require_subcommand(1);
  auto* gguf =
      cmd->add_subcommand("gguf",
                          "A DeepSeek-V3 (MLA) checkpoint as a GGUF file for llama.cpp (architecture deepseek2, byte "
                          "vocabulary; the MTP module is left out: llama.cpp's deepseek2 has none)");
  gguf->add_option("-m,--model", f->model, "Checkpoint directory")->required();
  gguf->add_option("--out", f->out, "Output file (.gguf)")->required();
  gguf->add_option("--type", f->type,
                   "Matrix type: f32, f16 or q8_0 (norms, router and its bias stay F32; a Q8_0 matrix whose "
                   "rows are not a multiple of 32 is written F16, as llama.cpp's converter does)")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str();
  gguf->add_flag("--force", f->force, "Replace the output file if it exists");
  return [f]() {
    const bool replacing = check_output_file(f->out, f->force);
    const auto model = load_checkpoint(f->model);
    const GgmlType type = f->type == "f16" ? GgmlType::f16 : f->type == "q8_0" ? GgmlType::q8_0 : GgmlType::f32;
    const std::string bytes = export_gguf(*model, type);
    write_file_atomic(f->out, bytes);
    std::printf("%s %s (%zu bytes, %s, llama.cpp architecture deepseek2%s)\n", replacing ? "replaced" : "wrote",
                f->out.c_str(), bytes.size(), f->type.c_str(),
                model->config.mtp() ? "; the MTP module was left out" : "");
    return 0;
  };
}

}  // namespace moe::app
