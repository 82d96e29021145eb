// Checkpoint directories: config.json (flat model fields + "model_type": "moe") and the weights with
// Hugging Face DeepSeek-V3 tensor names, readable by other tools. moe writes one F32
// model.safetensors; it reads that or HF's sharded layout, in F32, BF16 or F16 (checkpoint_tensors.hpp).
#pragma once
#include <memory>
#include <string>

#include "model/checkpoint_tensors.hpp"
#include "model/model.hpp"

namespace moe {

void save_checkpoint(const std::string& dir, const Model& model);

// Reads and checks config.json and the weights (CheckpointTensors::open: model.safetensors or the
// shards of model.safetensors.index.json), then load_tensors_into.
std::unique_ptr<Model> load_checkpoint(const std::string& dir);

ModelConfig load_checkpoint_config(const std::string& dir);

// Copies every tensor of `model`'s layout, converted to float32, into `dest` (an arena with the
// model's layout); rejects missing, unknown, mis-shaped and non-finite tensors.
void load_tensors_into(const CheckpointTensors& tensors, const Model& model, float* dest);

}  // namespace moe
