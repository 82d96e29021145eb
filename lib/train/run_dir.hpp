// A run directory holds the latest checkpoint (config.json, model.safetensors,
// optimizer.safetensors, trainer_state.json) plus metrics.jsonl. The four checkpoint files are
// first written into DIR/.pending/, sealed with a COMPLETE marker, then renamed into place, so a
// crash at any moment leaves either the old or the new checkpoint recoverable, never a mix.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "dist/dist.hpp"
#include "model/model.hpp"
#include "train/optimizer.hpp"

namespace moe {

// Collective: every rank passes its own model and Adam state (the whole model, or its expert block).
// Rank 0 writes the checkpoint into DIR/.pending one tensor at a time — its own copy of a replicated
// tensor, an expert's tensor as the rank holding it sends it — seals it and renames it into place,
// so no rank ever holds more than its own tensors plus one. A failure (a full disk) ends every rank
// with the same message; the previous checkpoint stays.
void save_training_checkpoint(const std::string& dir, const Model& model, const AdamW& adam,
                              const nlohmann::json& trainer_state, Dist& dist);
// Collective: rank 0 checks DIR's model.safetensors and optimizer.safetensors (every name and shape
// first), then reads them tensor by tensor and each rank receives only the tensors it holds, into
// `model` and `adam` (adam.t too). A bad file ends every rank with rank 0's message.
void load_training_checkpoint(const std::string& dir, Model& model, AdamW& adam, Dist& dist);
// Finishes (COMPLETE present) or discards (absent) an interrupted save. Safe to call always.
void recover_pending_checkpoint(const std::string& dir);

// An exclusive advisory lock (flock) on a run directory itself, held by the `moe train` that uses
// it from before it reads or changes anything until it ends. A second trainer on the same
// directory is refused ("DIR: in use by moe train (pid N)"), with or without --force. The lock
// lives in the kernel with the open directory, so a killed holder releases it and leaves no file
// behind. Only rank 0 of a distributed run takes it (the other ranks never touch the directory).
class RunDirLock {
 public:
  RunDirLock() = default;
  explicit RunDirLock(const std::string& dir);  // dir must exist
  ~RunDirLock();
  RunDirLock(RunDirLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  RunDirLock& operator=(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
void make_directories(const std::string& path);  // mkdir -p; errors name the path
void remove_tree(const std::string& path);

}  // namespace moe
