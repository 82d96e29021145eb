// Checkpoint directories: config.json (flat model fields + "model_type": "moe") and the weights with
// Hugging Face DeepSeek-V3 tensor names, readable by other tools. moe writes one F32
// model.safetensors; it reads that or HF's sharded layout, in F32, BF16 or F16 (checkpoint_tensors.hpp).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tokenizer.hpp"
#include "model/checkpoint_tensors.hpp"
#include "model/model.hpp"

namespace moe {

// model.safetensors in file order: every tensor of the whole model (`whole`: make_layout(config)),
// then the MTP module's copies of the shared embedding and head. `source` indexes whole.tensors: the
// tensor whose values the entry holds (itself, or the main tensor of a copy).
struct CheckpointEntry {
  std::string name;
  std::vector<int64_t> shape;
  size_t source = 0;
};
std::vector<CheckpointEntry> checkpoint_entries(const ModelConfig& config, const ParamLayout& whole);
// The __metadata__ moe writes into model.safetensors.
std::map<std::string, std::string> checkpoint_metadata();

// config.json and model.safetensors of a whole model. train_seq > 0: the window length the model was
// trained on, written to config.json as "moe_train_seq" (other tools ignore it; moe's eval and infer
// read it back).
void save_checkpoint(const std::string& dir, const Model& model, int64_t train_seq = 0);
void save_checkpoint_config(const std::string& dir, const ModelConfig& config, int64_t train_seq = 0);

// Reads and checks config.json and the weights (CheckpointTensors::open: model.safetensors or the
// shards of model.safetensors.index.json), then load_tensors_into.
std::unique_ptr<Model> load_checkpoint(const std::string& dir);
// The tokenizer of a checkpoint directory (its tokenizer.model, else bytes), checked against the
// model's vocabulary: equal for a SentencePiece model, at least 256 for bytes.
Tokenizer checkpoint_tokenizer(const std::string& dir, const ModelConfig& config);

ModelConfig load_checkpoint_config(const std::string& dir);

// The window length the checkpoint was trained on ("moe_train_seq" in config.json), or 0 when it
// does not say (a Hugging Face checkpoint, or one saved by an older moe). Positions past it were
// never trained: eval's default context, and infer warns when generation goes past it.
int64_t load_checkpoint_train_seq(const std::string& dir);

// Copies every tensor of `model`'s layout (the whole model, or its expert block), converted to
// float32, into `dest` (an arena with the model's layout), reading only those tensors; rejects a
// checkpoint that is not exactly the whole model's (check_checkpoint_tensors) and non-finite values.
void load_tensors_into(const CheckpointTensors& tensors, const Model& model, float* dest);

// The pieces of load_tensors_into, for a loader that streams tensors to other processes: the names
// and shapes (every tensor of `whole` with the shape the config implies, the MTP copies if present,
// nothing unknown) before any value is read; one tensor's values (finite); the MTP copies present
// against the main tensors `model` holds (embedding and head are on every process) at `params`.
void check_checkpoint_tensors(const CheckpointTensors& tensors, const ModelConfig& config, const ParamLayout& whole);
void read_checkpoint_tensor(const CheckpointTensors& tensors, const TensorSpec& spec, float* dest);
void check_shared_copies(const CheckpointTensors& tensors, const Model& model, const float* params);

}  // namespace moe
