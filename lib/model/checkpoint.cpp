#include "model/checkpoint.hpp"

#include <sys/stat.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/safetensors.hpp"

namespace moe {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

void save_checkpoint(const std::string& dir, const Model& model) {
  ::mkdir(dir.c_str(), 0755);
  std::vector<TensorRef> refs;
  for (const TensorSpec& spec : model.layout.tensors)
    refs.push_back({spec.name, spec.shape, model.params.data() + spec.offset});
  write_safetensors(dir + "/model.safetensors", refs, {{"format", "pt"}, {"producer", "moe " MOE_VERSION}});
  write_file_atomic(dir + "/config.json", to_json(model.config).dump(2) + "\n");
}

ModelConfig load_checkpoint_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  return model_config_from_json(read_json_file(path), path, true);
}

void load_tensors_into(const SafetensorsFile& file, const Model& model, float* dest) {
  for (const TensorSpec& spec : model.layout.tensors) {
    const std::string& name = spec.name;
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) fail(file.path + ": missing tensor \"" + name + "\"");
    if (it->second.shape != spec.shape)
      fail(file.path + ": tensor \"" + name + "\" has shape " + shape_text(it->second.shape) + ", config implies " +
           shape_text(spec.shape));
    const float* src = file.f32(name);
    for (int64_t i = 0; i < spec.numel; ++i)
      if (!std::isfinite(src[i])) fail(file.path + ": tensor \"" + name + "\" holds a non-finite value");
    std::copy_n(src, spec.numel, dest + spec.offset);
  }
  if (file.tensors.size() != model.layout.tensors.size())
    for (const auto& [name, entry] : file.tensors) {
      (void)entry;
      if (!model.find(name)) fail(file.path + ": unknown tensor \"" + name + "\" (not part of this config's model)");
    }
}

std::unique_ptr<Model> load_checkpoint(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail(dir + ": no such checkpoint directory");
  if (!S_ISDIR(st.st_mode)) fail(dir + ": expected a checkpoint directory (config.json + model.safetensors)");
  // Inference and evaluation never need gradients.
  auto model = std::make_unique<Model>(load_checkpoint_config(dir), ExpertShard{}, /*with_grads=*/false);
  const SafetensorsFile file = read_safetensors(dir + "/model.safetensors");
  load_tensors_into(file, *model, model->params.data());
  return model;
}

}  // namespace moe
