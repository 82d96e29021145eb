// GGUF v3, the file format of llama.cpp (ggml's docs/gguf.md): a little-endian header, typed
// metadata key/values, tensor infos (ggml dimension order: ne[0] is the innermost, i.e. the last
// PyTorch dimension) and the tensor data, each tensor at an offset aligned to general.alignment
// (default 32) and packed in tensor-info order. A reader that checks every count, length and offset
// against the file before trusting it (`moe inspect FILE.gguf`), and a writer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

enum class GgufType : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};
const char* to_string(GgufType type);

struct GgufKv {
  std::string key;
  GgufType type = GgufType::u32;
  GgufType element = GgufType::u32;  // arrays: the type of their elements
  uint64_t count = 1;                // arrays: their length
  std::string text;                  // the value as text (arrays: their first elements)
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] innermost
  uint32_t type = 0;         // ggml_type
  uint64_t offset = 0;       // within the data section
  uint64_t bytes = 0;
};

struct GgufFile {
  std::string path;
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // byte offset of the data section
  std::vector<GgufKv> kvs;
  std::vector<GgufTensorInfo> tensors;
  const GgufKv* find(const std::string& key) const;
};

// The name of a ggml tensor type ("F32", "Q8_0", ...), or "" for one this reader does not know.
std::string ggml_type_name(uint32_t type);
// Bytes of a tensor of `elements` values of ggml `type` (block types need whole blocks); 0 when the
// type is unknown or the count is not a whole number of blocks.
uint64_t ggml_tensor_bytes(uint32_t type, uint64_t elements);

// Reads and checks the header, metadata and tensor infos; Error naming the path and what is wrong.
GgufFile read_gguf(const std::string& path);

// The tensor types the writer encodes (ggml_type ids).
enum class GgmlType : uint32_t { f32 = 0, f16 = 1, q8_0 = 8 };

// ggml's Q8_0 block of 32 values: scale d = max|x| / 127 stored as F16, then 32 int8 values
// round(x / d), halves away from zero (ggml-quants.c quantize_row_q8_0_ref, bit for bit).
constexpr int64_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;
void quantize_q8_0(const float* x, int64_t n, char* out);  // n a multiple of kQ8Block
void dequantize_q8_0(const char* in, int64_t n, float* y);

// Builds a GGUF v3 file in memory: metadata in the order added, then tensors in the order added,
// each aligned to 32 bytes.
class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  // `shape` in PyTorch order (outermost first); it is written reversed, as ggml's ne. Q8_0 needs
  // the innermost dimension to be a multiple of 32.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, const float* values, GgmlType type);
  void add_tensor_f32(const std::string& name, const std::vector<int64_t>& shape, const float* values) {
    add_tensor(name, shape, values, GgmlType::f32);
  }
  std::string bytes() const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    GgmlType type;
    std::string data;
  };
  std::string kv_bytes_;
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
  void key(const std::string& k, GgufType type);
};

}  // namespace moe
