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
  write_safetensors(dir + "/" + kModelFile, refs, {{"format", "pt"}, {"producer", "moe " MOE_VERSION}});
  write_file_atomic(dir + "/config.json", to_json(model.config).dump(2) + "\n");
}

ModelConfig load_checkpoint_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  return model_config_from_json(read_json_file(path), path, true);
}

void load_tensors_into(const CheckpointTensors& tensors, const Model& model, float* dest) {
  for (const TensorSpec& spec : model.layout.tensors) {
    const std::string& name = spec.name;
    if (!tensors.contains(name)) fail(tensors.source() + ": missing tensor \"" + name + "\"");
    const std::string& file = tensors.file_of(name);
    if (tensors.shape(name) != spec.shape)
      fail(file + ": tensor \"" + name + "\" has shape " + shape_text(tensors.shape(name)) + ", config implies " +
           shape_text(spec.shape));
    float* values = dest + spec.offset;
    tensors.copy_f32(name, values);
    // Checked after conversion: a BF16 or F16 infinity or NaN is one in float32 too.
    for (int64_t i = 0; i < spec.numel; ++i)
      if (!std::isfinite(values[i]))
        fail(file + ": tensor \"" + name + "\" holds a non-finite value (" + tensors.dtype(name) + ")");
  }
  if (tensors.size() != model.layout.tensors.size())
    for (const std::string& name : tensors.names())
      if (!model.find(name))
        fail(tensors.file_of(name) + ": unknown tensor \"" + name + "\" (not part of this config's model)");
}

std::unique_ptr<Model> load_checkpoint(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail(dir + ": no such checkpoint directory");
  if (!S_ISDIR(st.st_mode))
    fail(dir + ": expected a checkpoint directory (config.json + model.safetensors or model.safetensors.index.json)");
  // Inference and evaluation never need gradients.
  auto model = std::make_unique<Model>(load_checkpoint_config(dir), ExpertShard{}, /*with_grads=*/false);
  load_tensors_into(CheckpointTensors::open(dir), *model, model->params.data());
  return model;
}

}  // namespace moe
