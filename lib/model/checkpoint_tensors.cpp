// CheckpointTensors: opens moe's single-file checkpoints and Hugging Face's sharded ones, and checks
// that the index and the shards agree before any tensor is trusted.
#include "model/checkpoint_tensors.hpp"

#include <filesystem>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "config/fields.hpp"
#include "core/error.hpp"

namespace moe {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

// weight_map of an index file: tensor name -> shard file name, each name a plain file name in the
// checkpoint directory (the index must not make us read files elsewhere).
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  const json index = read_json_file(index_path);
  if (!index.is_object()) fail(index_path + ": expected a JSON object with \"weight_map\"");
  if (index.contains("metadata") && !index["metadata"].is_object())
    fail(index_path + ": \"metadata\" is not an object");
  if (!index.contains("weight_map")) fail(index_path + ": no \"weight_map\" (tensor name -> shard file name)");
  const json& map = index["weight_map"];
  if (!map.is_object()) fail(index_path + ": weight_map is not an object (tensor name -> shard file name)");
  std::map<std::string, std::string> shard_of;
  for (const auto& [name, value] : map.items()) {
    const std::string at = index_path + ": weight_map[" + quoted(name) + "]";
    if (!value.is_string()) fail(at + " is not a string (a shard file name)");
    const std::string shard = value.get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard.find("..") != std::string::npos ||
        shard.find('\0') != std::string::npos)
      fail(at + " = " + quoted(shard) + " is not a file name inside the checkpoint directory");
    shard_of[name] = shard;
  }
  return shard_of;
}

}  // namespace

bool holds_checkpoint_tensors(const std::string& dir) {
  return exists(dir + "/" + kModelFile) || exists(dir + "/" + kModelIndexFile);
}

CheckpointTensors CheckpointTensors::open_file(const std::string& path) {
  CheckpointTensors t;
  t.source_ = path;
  t.files_.push_back(open_safetensors(path));
  for (const auto& [name, entry] : t.files_[0].tensors) {
    (void)entry;
    t.file_of_tensor_[name] = 0;
  }
  return t;
}

CheckpointTensors CheckpointTensors::open(const std::string& dir) {
  const std::string single = dir + "/" + kModelFile, index_path = dir + "/" + kModelIndexFile;
  if (!exists(index_path)) return open_file(single);
  if (exists(single))
    fail(dir + ": holds both " + kModelFile + " and " + kModelIndexFile +
         "; which one is the model is ambiguous (remove one)");

  const std::map<std::string, std::string> shard_of = read_weight_map(index_path);
  std::map<std::string, std::string> first_tensor_of;  // shard -> a tensor it holds, for messages
  for (const auto& [name, shard] : shard_of) first_tensor_of.emplace(shard, name);

  // A *.safetensors file the index does not list is a leftover or a broken index: refuse to guess.
  std::error_code ec;
  std::set<std::string> present;
  for (const auto& entry : fs::directory_iterator(dir, ec)) present.insert(entry.path().filename().string());
  if (ec) fail(dir + ": cannot list the directory (" + ec.message() + ")");
  for (const std::string& file : present) {
    const std::string suffix = ".safetensors";
    const bool is_safetensors = file.size() > suffix.size() && file.ends_with(suffix);
    if (is_safetensors && !first_tensor_of.count(file))
      fail(dir + "/" + file + ": shard not listed in " + kModelIndexFile + " (remove it or list its tensors)");
  }

  CheckpointTensors t;
  t.source_ = index_path;
  for (const auto& [shard, some_tensor] : first_tensor_of) {
    const std::string path = dir + "/" + shard;
    if (!present.count(shard))
      fail(path + ": shard listed in " + kModelIndexFile + " (for tensor " + quoted(some_tensor) + ") does not exist");
    t.files_.push_back(open_safetensors(path));  // every check of the single-file reader, per shard
  }

  // Where each tensor really is; a tensor in two shards is refused before asking which one was meant.
  for (size_t i = 0; i < t.files_.size(); ++i)
    for (const auto& [name, entry] : t.files_[i].tensors) {
      (void)entry;
      const auto [it, added] = t.file_of_tensor_.emplace(name, i);
      if (!added)
        fail(index_path + ": tensor " + quoted(name) + " is present in two shards: " + t.files_[it->second].path +
             " and " + t.files_[i].path);
    }
  for (const auto& [name, i] : t.file_of_tensor_) {
    const std::string& path = t.files_[i].path;
    const auto listed = shard_of.find(name);
    if (listed == shard_of.end())
      fail(path + ": holds tensor " + quoted(name) + ", which " + kModelIndexFile + " does not list");
    if (dir + "/" + listed->second != path)
      fail(path + ": holds tensor " + quoted(name) + ", which " + kModelIndexFile + " maps to shard " + listed->second);
  }
  for (const auto& [name, shard] : shard_of)
    if (!t.file_of_tensor_.count(name))
      fail(dir + "/" + shard + ": tensor " + quoted(name) + " is missing (" + kModelIndexFile +
           " maps it to this shard)");
  return t;
}

std::vector<std::string> CheckpointTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : file_of_tensor_) {
    (void)i;
    out.push_back(name);
  }
  return out;
}

const SafetensorsFile& CheckpointTensors::holder(const std::string& name) const {
  const auto it = file_of_tensor_.find(name);
  if (it == file_of_tensor_.end()) fail(source_ + ": no tensor " + quoted(name));
  return files_[it->second];
}

const std::vector<int64_t>& CheckpointTensors::shape(const std::string& name) const {
  return holder(name).entry(name).shape;
}

const std::string& CheckpointTensors::dtype(const std::string& name) const { return holder(name).entry(name).dtype; }

const std::string& CheckpointTensors::file_of(const std::string& name) const { return holder(name).path; }

void CheckpointTensors::copy_f32(const std::string& name, float* dest) const { holder(name).copy_f32(name, dest); }

}  // namespace moe
