// The safetensors file format (8-byte little-endian header length, JSON header, raw data): a reader
// of F32, BF16 and F16 tensors that checks every offset and size before trusting it and converts to
// float32 on copy, and an F32-only writer with atomic writes.
#pragma once
#include <cstddef>
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

  // The values of an F32 tensor in place; Error for a missing tensor or another dtype.
  const float* f32(const std::string& name) const;
  // Copies the tensor's numel values, converted to float32 (exactly: every BF16 and F16 value is a
  // float32), to `dest`; Error for a missing tensor.
  void copy_f32(const std::string& name, float* dest) const;
  const SafetensorsEntry& entry(const std::string& name) const;
};

// Bytes per element of the dtypes the reader accepts ("F32" 4, "BF16" 2, "F16" 2); 0 for any other.
size_t safetensors_dtype_size(const std::string& dtype);

// BF16: the upper 16 bits of an IEEE float32. F16: IEEE half (1 sign, 5 exponent, 10 mantissa bits),
// subnormals, infinities and NaN included.
float bf16_to_float(uint16_t bits);
float f16_to_float(uint16_t bits);

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
