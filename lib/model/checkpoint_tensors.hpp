// The tensors of a checkpoint directory, wherever they are stored: moe's single model.safetensors,
// or Hugging Face's sharded layout (model.safetensors.index.json mapping each tensor name to one of
// several shard files). Every file's header is read and checked when the directory is opened; the
// tensors stay on disk until one is copied.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.hpp"

namespace moe {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kModelIndexFile = "model.safetensors.index.json";

// Whether `dir` holds model weights in either layout (it may still fail to open).
bool holds_checkpoint_tensors(const std::string& dir);

class CheckpointTensors {
 public:
  // dir/model.safetensors, or the shards listed in dir/model.safetensors.index.json; refuses a
  // directory with both. Each shard gets every check of open_safetensors, and the shards must match
  // the index exactly: every listed tensor in its shard, no tensor in an unlisted place or in two
  // shards, every listed shard readable, no *.safetensors file the index does not list.
  static CheckpointTensors open(const std::string& dir);
  // One safetensors file on its own.
  static CheckpointTensors open_file(const std::string& path);

  // What the tensors were read from, for messages: the single file, or the index.
  const std::string& source() const { return source_; }
  size_t size() const { return file_of_tensor_.size(); }
  bool contains(const std::string& name) const { return file_of_tensor_.count(name) != 0; }
  std::vector<std::string> names() const;  // sorted
  // The following throw Error for a name that is not there.
  const std::vector<int64_t>& shape(const std::string& name) const;
  const std::string& dtype(const std::string& name) const;
  const std::string& file_of(const std::string& name) const;  // the path of the file holding it
  // Copies the tensor, converted to float32, to `dest` (room for the product of shape(name)).
  void copy_f32(const std::string& name, float* dest) const;

 private:
  const SafetensorsFile& holder(const std::string& name) const;

  std::string source_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> file_of_tensor_;  // tensor name -> index into files_
};

}  // namespace moe
