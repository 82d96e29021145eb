#include "core/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

using nlohmann::json;

// Tensor data is little-endian; it is copied byte for byte into floats and halves.
static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path + ": write failed (" + errno_text() + ")");
    }
    p += w, n -= size_t(w);
  }
}

}  // namespace

// Streams chunks into a temporary file next to `path`, then renames it into place, so a reader
// never sees a half-written file and the previous version survives any failure.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path) : path_(path), tmp_(path + ".tmp" + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path + ": cannot create file (" + errno_text() + ")");
  }
  ~AtomicWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  void write(const char* p, size_t n) { write_all(fd_, p, n, path_); }
  void commit() {
    if (::fsync(fd_) != 0) fail(path_ + ": fsync failed (" + errno_text() + ")");
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(path_ + ": close failed (" + errno_text() + ")");
    }
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(path_ + ": rename failed (" + errno_text() + ")");
    committed_ = true;
    // Make the rename itself durable.
    std::string dir = path_.substr(0, path_.find_last_of('/') == std::string::npos ? 0 : path_.find_last_of('/'));
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) ::fsync(dfd), ::close(dfd);
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

namespace {

uint64_t numel_of(const std::vector<int64_t>& shape) {
  uint64_t numel = 1;
  for (int64_t d : shape) numel *= uint64_t(d);
  return numel;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicWriter out(path);
  out.write(contents.data(), contents.size());
  out.commit();
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorRef>& tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorRef& t : tensors) {
    bytes_.push_back(4 * numel_of(t.shape));
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes_.back()}}};
    offset += bytes_.back();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = char((n >> (8 * i)) & 0xff);  // little-endian
  try {
    out_ = std::make_unique<AtomicWriter>(path);
    out_->write(length, 8);
    out_->write(text.data(), text.size());
  } catch (const Error& e) {
    error_ = e.what();
    out_.reset();  // removes the temporary file
  }
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write_next(const float* values) {
  check(next_ < bytes_.size(), "internal: " + path_ + ": more tensors written than its header lists");
  const uint64_t bytes = bytes_[next_++];
  if (!error_.empty()) return;
  try {
    out_->write(reinterpret_cast<const char*>(values), bytes);
  } catch (const Error& e) {
    error_ = e.what();
    out_.reset();
  }
}

void SafetensorsWriter::commit() {
  if (!error_.empty()) fail(error_);
  check(next_ == bytes_.size(), "internal: " + path_ + ": " + std::to_string(next_) + " of " +
                                    std::to_string(bytes_.size()) + " tensors written");
  out_->commit();
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter out(path, tensors, metadata);
  for (const TensorRef& t : tensors) out.write_next(t.data);
  out.commit();
}

size_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "BF16" || dtype == "F16") return 2;
  return 0;
}

float bf16_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

float f16_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0x1f)  // infinity (mantissa 0) or NaN (payload kept)
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0)  // normal: rebias the exponent from 15 to 127
    return std::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float32 (a normal number there).
  const float magnitude = float(mantissa) * 0x1p-24f;
  return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
}

uint16_t float_to_f16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x1ffu));  // NaN, quiet
  if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (magnitude < 0x38800000u) {
    // Below the smallest normal half (2^-14): a subnormal, units of 2^-24. Adding 0.5 (2^-1) in
    // float32 shifts the units into the low mantissa bits with the hardware's round-to-nearest-even.
    const float shifted = std::bit_cast<float>(magnitude) + 0.5f;
    return uint16_t(sign | (std::bit_cast<uint32_t>(shifted) - 0x3f000000u));
  }
  // Normal: rebias the exponent, then round the 13 dropped mantissa bits to nearest even (a carry
  // into the exponent is the correct next binade).
  const uint32_t odd = (magnitude >> 13) & 1u;
  return uint16_t(sign | ((magnitude - 0x38000000u + 0xfffu + odd) >> 13));
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = tensors.find(name);
  if (it == tensors.end()) fail(path + ": no tensor \"" + name + "\"");
  return it->second;
}

const float* SafetensorsFile::f32(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  if (e.dtype != "F32") fail(path + ": tensor \"" + name + "\" is " + e.dtype + ", not F32");
  check(data.size() >= e.end, "internal: " + path + " was opened without its data; use copy_f32");
  return reinterpret_cast<const float*>(data.data() + e.begin);
}

namespace {

// `bytes` bytes of the data section from `offset` on, read from the open file.
void read_data(const SafetensorsFile& file, uint64_t offset, char* dest, uint64_t bytes) {
  check(file.fd != nullptr, "internal: " + file.path + " has neither its data nor an open file");
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(*file.fd, dest + done, bytes - done, off_t(file.data_start + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(file.path + ": read failed (" + errno_text() + ")");
    if (n == 0) fail(file.path + ": truncated data section (the file shrank while it was read)");
    done += uint64_t(n);
  }
}

}  // namespace

void SafetensorsFile::copy_f32(const std::string& name, float* dest) const {
  const SafetensorsEntry& e = entry(name);
  const uint64_t bytes = e.end - e.begin;  // numel * element size, checked by the reader
  if (bytes == 0) return;                  // dest may be null for an empty tensor
  const bool in_memory = data.size() >= e.end;
  if (e.dtype == "F32") {
    if (in_memory)
      std::memcpy(dest, data.data() + e.begin, bytes);
    else
      read_data(*this, e.begin, reinterpret_cast<char*>(dest), bytes);
    return;
  }
  float (*convert)(uint16_t) = e.dtype == "BF16" ? bf16_to_float : f16_to_float;
  // Halves from the file come in chunks, so a tensor never has a second copy in memory.
  std::vector<uint16_t> chunk(in_memory ? 0 : size_t(std::min<uint64_t>(bytes / 2, 1 << 16)));
  for (uint64_t i = 0; i < bytes / 2;) {
    const uint64_t n = in_memory ? bytes / 2 : std::min<uint64_t>(bytes / 2 - i, chunk.size());
    const char* src = data.data() + e.begin + 2 * i;
    if (!in_memory) {
      read_data(*this, e.begin + 2 * i, reinterpret_cast<char*>(chunk.data()), 2 * n);
      src = reinterpret_cast<const char*>(chunk.data());
    }
    for (uint64_t k = 0; k < n; ++k) {
      uint16_t half;
      std::memcpy(&half, src + 2 * k, 2);
      dest[i + k] = convert(half);
    }
    i += n;
  }
}

SafetensorsFile open_safetensors(const std::string& path) {
  SafetensorsFile file;
  file.path = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path + ": cannot open file (" + errno_text() + ")");
  file.fd = std::shared_ptr<const int>(new int(fd), [](const int* p) {
    ::close(*p);
    delete p;
  });
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path + ": cannot open file (" + errno_text() + ")");
  if (S_ISDIR(st.st_mode)) fail(path + ": is a directory, expected a .safetensors file");
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) fail(path + ": truncated safetensors file (" + std::to_string(size) + " bytes, no header length)");
  unsigned char length[8];
  if (::pread(fd, length, 8, 0) != 8) fail(path + ": cannot read the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | length[i];
  if (header_len > kMaxHeader)
    fail(path + ": header length " + std::to_string(header_len) + " is absurdly large (limit 100 MiB)");
  if (header_len > size - 8)
    fail(path + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
         std::to_string(size) + " bytes)");
  std::string text(header_len, '\0');
  if (header_len > 0 && ::pread(fd, text.data(), header_len, 8) != ssize_t(header_len))
    fail(path + ": cannot read the header");
  file.data_start = 8 + header_len;
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception&) {
    fail(path + ": header is not valid JSON");
  }
  if (!header.is_object()) fail(path + ": header is not a JSON object");
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> names;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path + ": __metadata__ is not an object");
      for (const auto& [k, m] : v.items()) {
        if (!m.is_string()) fail(path + ": __metadata__." + k + " is not a string");
        file.metadata[k] = m.get<std::string>();
      }
      continue;
    }
    const std::string at = path + ": tensor \"" + name + "\"";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(at + ": expected an object with dtype, shape and data_offsets");
    SafetensorsEntry e;
    if (!v["dtype"].is_string()) fail(at + ": dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    const uint64_t element_size = safetensors_dtype_size(e.dtype);
    if (element_size == 0) fail(at + " has dtype " + e.dtype + "; moe reads F32, BF16 and F16");
    if (!v["shape"].is_array()) fail(at + ": shape is not an array");
    // numel: the product of the dimensions; span: the same with zeros counted as ones, bounded
    // too, so that an empty tensor of shape [0, 2^40, 2^40] cannot overflow a product of its
    // dimensions computed later.
    uint64_t numel = 1, span = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        fail(at + ": shape holds a non-integer or negative dimension");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (1ull << 40) || (dim > 0 && span > (1ull << 40) / dim)) fail(at + ": shape is absurdly large");
      numel *= dim;
      span *= std::max<uint64_t>(dim, 1);
      e.shape.push_back(int64_t(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(at + ": data_offsets must be two non-negative integers");
    e.begin = off[0].get<uint64_t>(), e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size)
      fail(at + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
           "] out of range (data section is " + std::to_string(data_size) + " bytes)");
    // numel <= 2^40 and element_size <= 4: the product cannot overflow.
    if (e.end - e.begin != numel * element_size)
      fail(at + ": data_offsets cover " + std::to_string(e.end - e.begin) + " bytes but shape needs " +
           std::to_string(numel * element_size) + " (" + e.dtype + ")");
    // Writers (HF's included) order tensors by falling alignment, so every tensor starts at a
    // multiple of its element size; f32() hands out a float pointer into the data.
    if (e.begin % element_size != 0)
      fail(at + ": data offset " + std::to_string(e.begin) + " is not " + std::to_string(element_size) +
           "-byte aligned (" + e.dtype + ")");
    ranges.push_back({e.begin, e.end});
    file.tensors[name] = e;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail(path + ": tensors overlap in the data section");
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  SafetensorsFile file = open_safetensors(path);
  struct stat st {};
  if (::fstat(*file.fd, &st) != 0) fail(path + ": cannot read (" + errno_text() + ")");
  std::vector<char> data(size_t(uint64_t(st.st_size) - file.data_start));
  read_data(file, 0, data.data(), data.size());
  file.data = std::move(data);
  file.fd.reset();
  return file;
}

std::string read_file_bytes(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open " + what);
  std::stringstream s;
  s << in.rdbuf();
  if (in.bad()) fail(path + ": read error");
  return s.str();
}

}  // namespace moe
