#include "model/checkpoint.hpp"

#include <sys/stat.h>

#include <algorithm>
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

// DeepSeek-V3's release stores the MTP module's embedding and head as copies of the main ones under
// the module's layer; vLLM and SGLang read them there. moe shares the main tensors (one parameter,
// one gradient) and writes the copies; on load they must equal the main ones.
struct SharedCopy {
  std::string name;  // the copy's name at layer L
  const char* main;  // the main tensor it copies
};
std::vector<SharedCopy> mtp_shared_copies(const ModelConfig& c) {
  if (!c.mtp()) return {};
  const std::string p = "model.layers." + std::to_string(c.num_hidden_layers) + ".";
  return {{p + "embed_tokens.weight", "model.embed_tokens.weight"}, {p + "shared_head.head.weight", "lm_head.weight"}};
}

}  // namespace

void save_checkpoint(const std::string& dir, const Model& model, int64_t train_seq) {
  ::mkdir(dir.c_str(), 0755);
  std::vector<TensorRef> refs;
  for (const TensorSpec& spec : model.layout.tensors)
    refs.push_back({spec.name, spec.shape, model.params.data() + spec.offset});
  for (const SharedCopy& copy : mtp_shared_copies(model.config)) {
    const TensorSpec* main = model.find(copy.main);
    refs.push_back({copy.name, main->shape, model.params.data() + main->offset});
  }
  write_safetensors(dir + "/" + kModelFile, refs, {{"format", "pt"}, {"producer", "moe " MOE_VERSION}});
  nlohmann::json config = to_json(model.config);
  if (train_seq > 0) config[kTrainSeqKey] = train_seq;
  write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
}

int64_t load_checkpoint_train_seq(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const nlohmann::json j = read_json_file(path);
  const ModelConfig c = model_config_from_json(j, path, true);
  if (!j.contains(kTrainSeqKey)) return 0;
  const nlohmann::json& v = j[kTrainSeqKey];
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > c.max_position_embeddings)
    fail(path + ": " + kTrainSeqKey + ": expected an integer in [1, max_position_embeddings = " +
         std::to_string(c.max_position_embeddings) + "], got " + v.dump());
  return v.get<int64_t>();
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
  const std::vector<SharedCopy> copies = mtp_shared_copies(model.config);
  for (const SharedCopy& copy : copies) {
    if (!tensors.contains(copy.name)) fail(tensors.source() + ": missing tensor \"" + copy.name + "\"");
    const TensorSpec* main = model.find(copy.main);
    const std::string& file = tensors.file_of(copy.name);
    if (tensors.shape(copy.name) != main->shape)
      fail(file + ": tensor \"" + copy.name + "\" has shape " + shape_text(tensors.shape(copy.name)) +
           ", config implies " + shape_text(main->shape));
    std::vector<float> values(size_t(main->numel));
    tensors.copy_f32(copy.name, values.data());
    if (!std::equal(values.begin(), values.end(), dest + main->offset))
      fail(file + ": tensor \"" + copy.name + "\" differs from \"" + copy.main +
           "\" (the MTP module shares the main model's; the two must be equal)");
  }
  if (tensors.size() != model.layout.tensors.size() + copies.size())
    for (const std::string& name : tensors.names()) {
      const bool is_copy =
          std::any_of(copies.begin(), copies.end(), [&](const SharedCopy& c) { return c.name == name; });
      if (!model.find(name) && !is_copy)
        fail(tensors.file_of(name) + ": unknown tensor \"" + name + "\" (not part of this config's model)");
    }
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
