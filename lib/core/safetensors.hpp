// The safetensors file format (8-byte little-endian header length, JSON header, raw data), F32
// only, with a reader that checks every offset and size before trusting it, and atomic writes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe {

struct SafetensorsEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
};

struct SafetensorsFile {
  std::string path;
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;
  std::vector<char> data;  // the data section

  const float* f32(const std::string& name) const {
    return reinterpret_cast<const float*>(data.data() + tensors.at(name).begin);
  }
};

// Throws Error naming the path and the problem for any malformed file.
SafetensorsFile read_safetensors(const std::string& path);

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};
// Writes path atomically (temporary file in the same directory, fsync, rename).
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Write a whole file atomically: temp file, fsync, rename over `path`.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace moe
