// Checkpoint directories: config.json (flat model fields + "model_type": "moe") and the weights with
// Hugging Face DeepSeek-V3 tensor names, readable by other tools. moe writes one F32
// model.safetensors; it reads that or HF's sharded layout, in F32, BF16 or F16 (checkpoint_tensors.hpp).
#pragma once
#include <memory>
#include <string>

#include "model/checkpoint_tensors.hpp"
#include "model/model.hpp"

namespace moe {

// train_seq > 0: the window length the model was trained on, written to config.json as
// "moe_train_seq" (other tools ignore it; moe's eval and infer read it back).
void save_checkpoint(const std::string& dir, const Model& model, int64_t train_seq = 0);

// Reads and checks config.json and the weights (CheckpointTensors::open: model.safetensors or the
// shards of model.safetensors.index.json), then load_tensors_into.
std::unique_ptr<Model> load_checkpoint(const std::string& dir);

ModelConfig load_checkpoint_config(const std::string& dir);

// The window length the checkpoint was trained on ("moe_train_seq" in config.json), or 0 when it
// does not say (a Hugging Face checkpoint, or one saved by an older moe). Positions past it were
// never trained: eval's default context, and infer warns when generation goes past it.
int64_t load_checkpoint_train_seq(const std::string& dir);

// Copies every tensor of `model`'s layout, converted to float32, into `dest` (an arena with the
// model's layout); rejects missing, unknown, mis-shaped and non-finite tensors.
void load_tensors_into(const CheckpointTensors& tensors, const Model& model, float* dest);

}  // namespace moe
