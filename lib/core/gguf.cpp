#include "core/gguf.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/error.hpp"
#include "core/safetensors.hpp"

namespace moe {

namespace {

// ggml types: name, elements per block, bytes per block (ggml.c's type traits).
struct TypeTraits {
  uint32_t id;
  const char* name;
  uint64_t block, bytes;
};
constexpr TypeTraits kTypes[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},    {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},    {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},      {27, "I64", 1, 8},      {28, "F64", 1, 8},      {30, "BF16", 1, 2},
};

const TypeTraits* traits(uint32_t type) {
  for (const TypeTraits& t : kTypes)
    if (t.id == type) return &t;
  return nullptr;
}

// Sequential reads from the file, each checked against its size: a corrupt count or length is an
// error naming the field, never a huge allocation or a read past the end.
class Cursor {
 public:
  Cursor(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) fail(path + ": cannot open file");
    in_.seekg(0, std::ios::end);
    size_ = uint64_t(in_.tellg());
    in_.seekg(0);
  }
  uint64_t size() const { return size_; }
  uint64_t pos() const { return pos_; }
  void bytes(void* dest, uint64_t n, const char* what) {
    if (n > size_ - pos_)
      fail(path_ + ": truncated: " + what + " runs past the end of the file (at byte " + std::to_string(pos_) + ")");
    in_.read(static_cast<char*>(dest), std::streamsize(n));
    if (!in_) fail(path_ + ": read error at byte " + std::to_string(pos_));
    pos_ += n;
  }
  template <class T>
  T get(const char* what) {
    T v;
    bytes(&v, sizeof v, what);
    return v;
  }
  std::string string(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > size_ - pos_)
      fail(path_ + ": " + what + ": string length " + std::to_string(n) + " runs past the end of the file");
    std::string s(size_t(n), '\0');
    bytes(s.data(), n, what);
    return s;
  }
  // Whether `count` items of at least `min_bytes` each could still fit.
  void check_count(uint64_t count, uint64_t min_bytes, const std::string& what) {
    if (min_bytes > 0 && count > (size_ - pos_) / min_bytes)
      fail(path_ + ": " + what + ": count " + std::to_string(count) + " cannot fit in the rest of the file");
  }

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t size_ = 0, pos_ = 0;
};

uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::u8:
    case GgufType::i8:
    case GgufType::boolean:
      return 1;
    case GgufType::u16:
    case GgufType::i16:
      return 2;
    case GgufType::u32:
    case GgufType::i32:
    case GgufType::f32:
      return 4;
    case GgufType::u64:
    case GgufType::i64:
    case GgufType::f64:
      return 8;
    case GgufType::string:
      return 8;  // at least its length
    case GgufType::array:
      return 12;
  }
  return 0;
}

bool known(uint32_t t) { return t <= uint32_t(GgufType::f64); }

// One scalar value as text (strings quoted only inside arrays).
std::string scalar_text(Cursor& c, GgufType t, const std::string& where, bool quote) {
  char buf[64];
  switch (t) {
    case GgufType::u8:
      return std::to_string(c.get<uint8_t>(where.c_str()));
    case GgufType::i8:
      return std::to_string(c.get<int8_t>(where.c_str()));
    case GgufType::u16:
      return std::to_string(c.get<uint16_t>(where.c_str()));
    case GgufType::i16:
      return std::to_string(c.get<int16_t>(where.c_str()));
    case GgufType::u32:
      return std::to_string(c.get<uint32_t>(where.c_str()));
    case GgufType::i32:
      return std::to_string(c.get<int32_t>(where.c_str()));
    case GgufType::u64:
      return std::to_string(c.get<uint64_t>(where.c_str()));
    case GgufType::i64:
      return std::to_string(c.get<int64_t>(where.c_str()));
    case GgufType::f32:
      std::snprintf(buf, sizeof buf, "%g", double(c.get<float>(where.c_str())));
      return buf;
    case GgufType::f64:
      std::snprintf(buf, sizeof buf, "%g", c.get<double>(where.c_str()));
      return buf;
    case GgufType::boolean: {
      const uint8_t b = c.get<uint8_t>(where.c_str());
      return b == 0 ? "false" : b == 1 ? "true" : "invalid bool " + std::to_string(b);
    }
    case GgufType::string: {
      const std::string s = c.string(where.c_str());
      std::string shown;
      for (unsigned char ch : s) {
        if (ch < 32 || ch == 127) {
          std::snprintf(buf, sizeof buf, "\\x%02x", ch);
          shown += buf;
        } else {
          shown += char(ch);
        }
      }
      return quote ? "\"" + shown + "\"" : shown;
    }
    case GgufType::array:
      break;
  }
  return "?";
}

}  // namespace

const char* to_string(GgufType type) {
  static const char* const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  return uint32_t(type) < std::size(names) ? names[uint32_t(type)] : "?";
}

std::string ggml_type_name(uint32_t type) {
  const TypeTraits* t = traits(type);
  return t ? t->name : "";
}

uint64_t ggml_tensor_bytes(uint32_t type, uint64_t elements) {
  const TypeTraits* t = traits(type);
  if (!t || elements % t->block != 0) return 0;
  return elements / t->block * t->bytes;
}

const GgufKv* GgufFile::find(const std::string& key) const {
  for (const GgufKv& kv : kvs)
    if (kv.key == key) return &kv;
  return nullptr;
}

GgufFile read_gguf(const std::string& path) {
  Cursor c(path);
  GgufFile f;
  f.path = path;
  char magic[4];
  c.bytes(magic, 4, "the magic number");
  if (std::memcmp(magic, "GGUF", 4) != 0) fail(path + ": not a GGUF file (it does not start with \"GGUF\")");
  f.version = c.get<uint32_t>("the version");
  if (f.version != 3) fail(path + ": GGUF version " + std::to_string(f.version) + " (expected 3)");
  const uint64_t n_tensors = c.get<uint64_t>("the tensor count"), n_kv = c.get<uint64_t>("the metadata count");
  c.check_count(n_kv, 12, "metadata");
  c.check_count(n_tensors, 24, "tensors");
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKv kv;
    kv.key = c.string("a metadata key");
    const std::string where = "metadata \"" + kv.key + "\"";
    for (const GgufKv& seen : f.kvs)
      if (seen.key == kv.key) fail(path + ": " + where + " appears twice");
    const uint32_t type = c.get<uint32_t>(where.c_str());
    if (!known(type)) fail(path + ": " + where + ": unknown value type " + std::to_string(type));
    kv.type = GgufType(type);
    if (kv.type == GgufType::array) {
      const uint32_t element = c.get<uint32_t>(where.c_str());
      if (!known(element) || element == uint32_t(GgufType::array))
        fail(path + ": " + where + ": unsupported array element type " + std::to_string(element));
      kv.element = GgufType(element);
      kv.count = c.get<uint64_t>(where.c_str());
      c.check_count(kv.count, scalar_size(kv.element), where);
      std::string text = "[";
      for (uint64_t j = 0; j < kv.count; ++j) {
        const std::string item = scalar_text(c, kv.element, where, true);
        if (j < 8) text += (j ? ", " : "") + item;
      }
      kv.text = text + (kv.count > 8 ? ", ... " + std::to_string(kv.count) + " in all]" : "]");
    } else {
      kv.text = scalar_text(c, kv.type, where, false);
    }
    if (kv.key == "general.alignment") {
      if (kv.type != GgufType::u32) fail(path + ": general.alignment must be a u32");
      f.alignment = std::stoull(kv.text);
      if (f.alignment == 0 || (f.alignment & (f.alignment - 1)) != 0)
        fail(path + ": general.alignment " + kv.text + " is not a power of two");
    }
    f.kvs.push_back(std::move(kv));
  }
  uint64_t expected = 0;  // tensors are packed in info order, each aligned
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.string("a tensor name");
    const std::string where = "tensor \"" + t.name + "\"";
    const uint32_t dims = c.get<uint32_t>(where.c_str());
    if (dims == 0 || dims > 4)
      fail(path + ": " + where + ": " + std::to_string(dims) + " dimensions (expected 1 to 4)");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      const uint64_t n = c.get<uint64_t>(where.c_str());
      if (n == 0 || elements > std::numeric_limits<uint64_t>::max() / n)
        fail(path + ": " + where + ": dimension " + std::to_string(d) + " is " + std::to_string(n));
      elements *= n;
      t.ne.push_back(n);
    }
    t.type = c.get<uint32_t>(where.c_str());
    t.offset = c.get<uint64_t>(where.c_str());
    t.bytes = ggml_tensor_bytes(t.type, elements);
    if (t.bytes == 0)
      fail(path + ": " + where + ": ggml type " + std::to_string(t.type) +
           (ggml_type_name(t.type).empty() ? " is unknown" : " needs whole blocks"));
    if (t.offset != expected)
      fail(path + ": " + where + ": data offset " + std::to_string(t.offset) + ", expected " +
           std::to_string(expected) + " (tensors packed in order, aligned to " + std::to_string(f.alignment) + ")");
    expected += (t.bytes + f.alignment - 1) / f.alignment * f.alignment;
    for (const GgufTensorInfo& seen : f.tensors)
      if (seen.name == t.name) fail(path + ": " + where + " appears twice");
    f.tensors.push_back(std::move(t));
  }
  f.data_start = (c.pos() + f.alignment - 1) / f.alignment * f.alignment;
  if (!f.tensors.empty()) {
    const GgufTensorInfo& last = f.tensors.back();
    if (f.data_start + last.offset + last.bytes > c.size())
      fail(path + ": truncated: tensor \"" + last.name + "\" ends at byte " +
           std::to_string(f.data_start + last.offset + last.bytes) + ", the file has " + std::to_string(c.size()));
  }
  return f;
}

namespace {
template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}
}  // namespace

void GgufWriter::key(const std::string& k, GgufType type) {
  put_string(kv_bytes_, k);
  put<uint32_t>(kv_bytes_, uint32_t(type));
  ++kv_count_;
}
void GgufWriter::add_u32(const std::string& k, uint32_t v) { key(k, GgufType::u32), put(kv_bytes_, v); }
void GgufWriter::add_i32(const std::string& k, int32_t v) { key(k, GgufType::i32), put(kv_bytes_, v); }
void GgufWriter::add_f32(const std::string& k, float v) { key(k, GgufType::f32), put(kv_bytes_, v); }
void GgufWriter::add_bool(const std::string& k, bool v) { key(k, GgufType::boolean), put<uint8_t>(kv_bytes_, v); }
void GgufWriter::add_string(const std::string& k, const std::string& v) {
  key(k, GgufType::string), put_string(kv_bytes_, v);
}
void GgufWriter::add_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufType::array), put<uint32_t>(kv_bytes_, uint32_t(GgufType::string)), put<uint64_t>(kv_bytes_, v.size());
  for (const std::string& s : v) put_string(kv_bytes_, s);
}
void GgufWriter::add_f32_array(const std::string& k, const std::vector<float>& v) {
  key(k, GgufType::array), put<uint32_t>(kv_bytes_, uint32_t(GgufType::f32)), put<uint64_t>(kv_bytes_, v.size());
  for (float x : v) put(kv_bytes_, x);
}
void GgufWriter::add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, GgufType::array), put<uint32_t>(kv_bytes_, uint32_t(GgufType::i32)), put<uint64_t>(kv_bytes_, v.size());
  for (int32_t x : v) put(kv_bytes_, x);
}

void quantize_q8_0(const float* x, int64_t n, char* out) {
  for (int64_t b = 0; b < n; b += kQ8Block, out += kQ8BlockBytes) {
    float amax = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(x[b + i]));
    const float d = amax / 127, id = d != 0 ? 1 / d : 0;
    const uint16_t d16 = float_to_f16(d);
    std::memcpy(out, &d16, 2);
    for (int64_t i = 0; i < kQ8Block; ++i) out[2 + i] = char(int8_t(std::round(x[b + i] * id)));
  }
}

void dequantize_q8_0(const char* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n; b += kQ8Block, in += kQ8BlockBytes) {
    uint16_t d16;
    std::memcpy(&d16, in, 2);
    const float d = f16_to_float(d16);
    for (int64_t i = 0; i < kQ8Block; ++i) y[b + i] = float(int8_t(in[2 + i])) * d;
  }
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape, const float* values,
                            GgmlType type) {
  Tensor t;
  t.name = name;
  t.type = type;
  uint64_t n = 1;
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) t.ne.push_back(uint64_t(*it)), n *= uint64_t(*it);
  switch (type) {
    case GgmlType::f32:
      t.data.assign(reinterpret_cast<const char*>(values), size_t(n * sizeof(float)));
      break;
    case GgmlType::f16:
      t.data.resize(size_t(n * 2));
      for (uint64_t i = 0; i < n; ++i) {
        const uint16_t h = float_to_f16(values[i]);
        std::memcpy(t.data.data() + 2 * i, &h, 2);
      }
      break;
    case GgmlType::q8_0:
      check(!t.ne.empty() && t.ne[0] % kQ8Block == 0,
            "internal: gguf: Q8_0 tensor " + name + " needs a row length that is a multiple of 32");
      t.data.resize(size_t(n / kQ8Block * kQ8BlockBytes));
      quantize_q8_0(values, int64_t(n), t.data.data());
      break;
  }
  tensors_.push_back(std::move(t));
}

std::string GgufWriter::bytes() const {
  constexpr uint64_t kAlign = 32;
  std::string out = "GGUF";
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_count_);
  out += kv_bytes_;
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, uint32_t(t.ne.size()));
    for (uint64_t n : t.ne) put(out, n);
    put<uint32_t>(out, uint32_t(t.type));
    put(out, offset);
    offset += (t.data.size() + kAlign - 1) / kAlign * kAlign;
  }
  for (const Tensor& t : tensors_) {
    out.resize((out.size() + kAlign - 1) / kAlign * kAlign, '\0');
    out += t.data;
  }
  out.resize((out.size() + kAlign - 1) / kAlign * kAlign, '\0');
  return out;
}

}  // namespace moe
