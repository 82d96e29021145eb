// A run directory holds the latest checkpoint (config.json, model.safetensors,
// optimizer.safetensors, trainer_state.json) plus metrics.jsonl. The four checkpoint files are
// first written into DIR/.pending/, sealed with a COMPLETE marker, then renamed into place, so a
// crash at any moment leaves either the old or the new checkpoint recoverable, never a mix.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "model/model.hpp"
#include "train/optimizer.hpp"

namespace moe {

void save_training_checkpoint(const std::string& dir, const Model& model, const AdamW& adam,
                              const nlohmann::json& trainer_state);
// Finishes (COMPLETE present) or discards (absent) an interrupted save. Safe to call always.
void recover_pending_checkpoint(const std::string& dir);
void load_optimizer_state(const std::string& dir, const Model& model, AdamW& adam);

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
void make_directories(const std::string& path);  // mkdir -p; errors name the path
void remove_tree(const std::string& path);

}  // namespace moe
