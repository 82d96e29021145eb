// Checkpoint directories: config.json (flat model fields + "model_type": "moe") and
// model.safetensors with Hugging Face DeepSeek-V3 tensor names, readable by other tools.
#pragma once
#include <memory>
#include <string>

#include "core/safetensors.hpp"
#include "model/model.hpp"

namespace moe {

void save_checkpoint(const std::string& dir, const Model& model);

// Reads and checks config.json and model.safetensors (every expected tensor present with the
// shape the config implies, no unknown tensors, F32, finite values).
std::unique_ptr<Model> load_checkpoint(const std::string& dir);

ModelConfig load_checkpoint_config(const std::string& dir);

// Copies every tensor of `model`'s layout from a checked safetensors file into `dest` (an arena
// with the model's layout); rejects missing, unknown, mis-shaped and non-finite tensors.
void load_tensors_into(const SafetensorsFile& file, const Model& model, float* dest);

}  // namespace moe
