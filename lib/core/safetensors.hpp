// The safetensors file format (8-byte little-endian header length, JSON header, raw data): a reader
// of F32, BF16 and F16 tensors that checks every offset and size before trusting it and converts to
// float32 on copy, and an F32-only writer with atomic writes. Both work one tensor at a time, so a
// checkpoint never has to be in memory whole, beside the model it is read into or written from.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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
  uint64_t data_start = 0;  // byte offset of the data section in the file
  std::vector<char> data;   // the data section when read whole (read_safetensors); empty when opened

  // The values of an F32 tensor in place (a file read whole); Error for a missing tensor or another
  // dtype.
  const float* f32(const std::string& name) const;
  // Copies the tensor's numel values, converted to float32 (exactly: every BF16 and F16 value is a
  // float32), to `dest`, from `data` or, for an opened file, from the file itself; Error for a
  // missing tensor.
  void copy_f32(const std::string& name, float* dest) const;
  const SafetensorsEntry& entry(const std::string& name) const;

  std::shared_ptr<const int> fd;  // open_safetensors: the file, kept open (and closed with the last copy)
};

// Bytes per element of the dtypes the reader accepts ("F32" 4, "BF16" 2, "F16" 2); 0 for any other.
size_t safetensors_dtype_size(const std::string& dtype);

// BF16: the upper 16 bits of an IEEE float32. F16: IEEE half (1 sign, 5 exponent, 10 mantissa bits),
// subnormals, infinities and NaN included.
float bf16_to_float(uint16_t bits);
float f16_to_float(uint16_t bits);
// float32 to IEEE half, rounded to nearest even (as numpy's astype(float16) and ggml's
// GGML_FP32_TO_FP16): overflow gives infinity, tiny values subnormals or zero, NaN stays NaN.
uint16_t float_to_f16(float value);

// Reads and checks the header; the tensors stay in the file until copy_f32 reads one. Throws Error
// naming the path and the problem for any malformed file.
SafetensorsFile open_safetensors(const std::string& path);
// open_safetensors, then the whole data section into memory (for f32() in place).
SafetensorsFile read_safetensors(const std::string& path);

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

class AtomicWriter;

// Writes an F32 safetensors file one tensor at a time: the header (every name and shape known up
// front) at once, then each tensor's values in header order as they become available. Atomic like
// write_file_atomic. A failure is kept and thrown by commit(), every later write skipped: a caller
// that receives the tensors from other processes keeps receiving them to the end, so no process is
// left waiting for it.
class SafetensorsWriter {
 public:
  // `tensors`' data pointers are not used: only the names and shapes.
  SafetensorsWriter(const std::string& path, const std::vector<TensorRef>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // The values of the next tensor of the header (its numel floats).
  void write_next(const float* values);
  // Makes the file durable and renames it into place, or throws the first failure.
  void commit();

 private:
  std::string path_, error_;
  std::vector<uint64_t> bytes_;  // per tensor, in header order
  size_t next_ = 0;
  std::unique_ptr<AtomicWriter> out_;
};

// Writes path atomically (temporary file in the same directory, fsync, rename).
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Write a whole file atomically: temp file, fsync, rename over `path`.
void write_file_atomic(const std::string& path, const std::string& contents);
// The whole file as bytes; a file that cannot be opened is an Error "PATH: cannot open <what>".
std::string read_file_bytes(const std::string& path, const std::string& what = "file");

}  // namespace moe
