#include "model/checkpoint.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <set>

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
// one gradient) and writes the copies; on load a copy must equal its main tensor, and may be absent
// (a writer that ties the two, as safetensors' shared-tensor deduplication does, stores it once).
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

std::vector<CheckpointEntry> checkpoint_entries(const ModelConfig& config, const ParamLayout& whole) {
  std::vector<CheckpointEntry> entries;
  for (size_t i = 0; i < whole.tensors.size(); ++i)
    entries.push_back({whole.tensors[i].name, whole.tensors[i].shape, i});
  for (const SharedCopy& copy : mtp_shared_copies(config))
    for (size_t i = 0; i < whole.tensors.size(); ++i)
      if (whole.tensors[i].name == copy.main) entries.push_back({copy.name, whole.tensors[i].shape, i});
  return entries;
}

std::map<std::string, std::string> checkpoint_metadata() {
  return {{"format", "pt"}, {"producer", "moe " MOE_VERSION}};
}

void save_checkpoint_config(const std::string& dir, const ModelConfig& config, int64_t train_seq) {
  nlohmann::json j = to_json(config);
  if (train_seq > 0) j[kTrainSeqKey] = train_seq;
  write_file_atomic(dir + "/config.json", j.dump(2) + "\n");
}

void save_checkpoint(const std::string& dir, const Model& model, int64_t train_seq) {
  check(model.shard.whole(model.config), "internal: save_checkpoint of an expert shard");
  ::mkdir(dir.c_str(), 0755);
  std::vector<TensorRef> refs;
  for (const CheckpointEntry& entry : checkpoint_entries(model.config, model.layout))
    refs.push_back({entry.name, entry.shape, model.params.data() + model.layout.tensors[entry.source].offset});
  write_safetensors(dir + "/" + kModelFile, refs, checkpoint_metadata());
  save_checkpoint_config(dir, model.config, train_seq);
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

void check_checkpoint_tensors(const CheckpointTensors& tensors, const ModelConfig& config, const ParamLayout& whole) {
  const std::vector<CheckpointEntry> entries = checkpoint_entries(config, whole);
  const std::vector<SharedCopy> copies = mtp_shared_copies(config);
  size_t present = 0;
  for (const CheckpointEntry& entry : entries) {
    const bool copy =
        std::any_of(copies.begin(), copies.end(), [&](const SharedCopy& c) { return c.name == entry.name; });
    if (!tensors.contains(entry.name) && copy) continue;
    if (!tensors.contains(entry.name)) fail(tensors.source() + ": missing tensor \"" + entry.name + "\"");
    ++present;
    if (tensors.shape(entry.name) != entry.shape)
      fail(tensors.file_of(entry.name) + ": tensor \"" + entry.name + "\" has shape " +
           shape_text(tensors.shape(entry.name)) + ", config implies " + shape_text(entry.shape));
  }
  if (tensors.size() == present) return;  // every name is one of the entries: nothing else is there
  std::set<std::string> known;
  for (const CheckpointEntry& entry : entries) known.insert(entry.name);
  for (const std::string& name : tensors.names())
    if (!known.count(name))
      fail(tensors.file_of(name) + ": unknown tensor \"" + name + "\" (not part of this config's model)");
}

void read_checkpoint_tensor(const CheckpointTensors& tensors, const TensorSpec& spec, float* dest) {
  tensors.copy_f32(spec.name, dest);
  // Checked after conversion: a BF16 or F16 infinity or NaN is one in float32 too.
  for (int64_t i = 0; i < spec.numel; ++i)
    if (!std::isfinite(dest[i]))
      fail(tensors.file_of(spec.name) + ": tensor \"" + spec.name + "\" holds a non-finite value (" +
           tensors.dtype(spec.name) + ")");
}

void check_shared_copies(const CheckpointTensors& tensors, const Model& model, const float* params) {
  for (const SharedCopy& copy : mtp_shared_copies(model.config)) {
    if (!tensors.contains(copy.name)) continue;
    const TensorSpec* main = model.find(copy.main);
    std::vector<float> values(size_t(main->numel));
    tensors.copy_f32(copy.name, values.data());
    if (!std::equal(values.begin(), values.end(), params + main->offset))
      fail(tensors.file_of(copy.name) + ": tensor \"" + copy.name + "\" differs from \"" + copy.main +
           "\" (the MTP module shares the main model's; the two must be equal)");
  }
}

void load_tensors_into(const CheckpointTensors& tensors, const Model& model, float* dest) {
  check_checkpoint_tensors(tensors, model.config,
                           model.shard.whole(model.config) ? model.layout : make_layout(model.config));
  for (const TensorSpec& spec : model.layout.tensors) read_checkpoint_tensor(tensors, spec, dest + spec.offset);
  check_shared_copies(tensors, model, dest);
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

Tokenizer checkpoint_tokenizer(const std::string& dir, const ModelConfig& config) {
  Tokenizer tok = Tokenizer::from_dir(dir);
  const int64_t V = config.vocab_size;
  if (tok.is_bytes() ? V < 256 : V != tok.vocab_size())
    fail(dir + ": the model's vocab_size " + std::to_string(V) + " does not match its tokenizer (" + tok.describe() +
         (tok.is_bytes() ? ": no tokenizer.model, so byte tokens" : "") + ")");
  return tok;
}

}  // namespace moe
