#include "train/token_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "core/hash.hpp"

namespace moe {

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'E', 'N'};

uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}
void put(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = uint8_t(v >> (8 * i));
}

}  // namespace

std::shared_ptr<const TokenFile> TokenFile::open(const std::string& path) {
  std::shared_ptr<TokenFile> t(new TokenFile());
  t->path_ = path;
  t->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (t->fd_ < 0) fail(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(t->fd_, &st) != 0 || !S_ISREG(st.st_mode)) fail(path + ": not a regular file");
  const uint64_t size = uint64_t(st.st_size);
  uint8_t h[kTokenHeaderBytes] = {};
  if (size < uint64_t(kTokenHeaderBytes) || ::pread(t->fd_, h, sizeof h, 0) != ssize_t(sizeof h) ||
      std::memcmp(h, kMagic, sizeof kMagic) != 0)
    fail(path + ": not a moe token file (expected the MOETOKEN header of `moe data prepare`)");
  if (le(h + 8, 4) != 1) fail(path + ": token file version " + std::to_string(le(h + 8, 4)) + " (this moe reads 1)");
  TokenFileInfo& in = t->info_;
  in.width = int(le(h + 12, 4));
  in.count = int64_t(le(h + 16, 8));
  in.tokenizer_hash = le(h + 24, 8), in.vocab = le(h + 32, 8), in.text_bytes = le(h + 40, 8);
  if (in.width != 2 && in.width != 4) fail(path + ": token width " + std::to_string(in.width) + " (expected 2 or 4)");
  if (in.vocab < 1 || in.vocab > (uint64_t(1) << 31) || (in.width == 2 && in.vocab > 65536))
    fail(path + ": vocabulary size " + std::to_string(in.vocab) + " does not fit its token width");
  const uint64_t want = uint64_t(kTokenHeaderBytes) + uint64_t(in.count) * uint64_t(in.width);
  if (in.count < 0 || size != want)
    fail(path + ": " + std::to_string(size) + " bytes, but its header announces " + std::to_string(in.count) +
         " tokens (" + std::to_string(want) + " bytes): truncated or damaged");
  t->map_bytes_ = size_t(size);
  void* m = ::mmap(nullptr, t->map_bytes_, PROT_READ, MAP_PRIVATE, t->fd_, 0);
  if (m == MAP_FAILED) fail(path + ": cannot map (" + std::strerror(errno) + ")");
  t->map_ = static_cast<const uint8_t*>(m);
  // Windows are drawn at random offsets: read-ahead would only fill memory.
  ::madvise(m, t->map_bytes_, MADV_RANDOM);
  return t;
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

void TokenFile::copy(int64_t start, int64_t n, int32_t* out) const {
  check(start >= 0 && n >= 0 && start + n <= info_.count, "internal: token window outside " + path_);
  const uint8_t* p = map_ + kTokenHeaderBytes + size_t(start) * size_t(info_.width);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t v = info_.width == 2 ? le(p + 2 * i, 2) : le(p + 4 * i, 4);
    if (v >= info_.vocab)
      fail(path_ + ": token " + std::to_string(v) + " at position " + std::to_string(start + i) +
           " is outside the vocabulary of " + std::to_string(info_.vocab) + " (a damaged file?)");
    out[i] = int32_t(v);
  }
  drop(size_t(p - map_), size_t(n) * size_t(info_.width));
}

void TokenFile::drop(size_t offset, size_t bytes) const {
  // A fault may map a whole large page-cache folio (up to 2 MiB on ext4 here), not just the page
  // read: drop the 2 MiB-aligned span around the bytes read, so nothing stays mapped.
  constexpr size_t kSpan = size_t(2) << 20;
  const size_t first = offset / kSpan * kSpan;
  const size_t last = std::min(map_bytes_, (offset + bytes + kSpan - 1) / kSpan * kSpan);
  if (last > first) ::madvise(const_cast<uint8_t*>(map_) + first, last - first, MADV_DONTNEED);
}

uint64_t TokenFile::fingerprint() const {
  uint64_t h = fnv1a(map_, size_t(kTokenHeaderBytes));
  const size_t page = 4096, body = map_bytes_ - size_t(kTokenHeaderBytes);
  for (int i = 0; i < 64 && body > 0; ++i) {
    const size_t at = size_t(kTokenHeaderBytes) + (body > page ? (body - page) / 63 * size_t(i) : 0);
    h = fnv1a(map_ + at, std::min(page, map_bytes_ - at), h);
    drop(at, std::min(page, map_bytes_ - at));
  }
  return h;
}

TokenFileWriter::TokenFileWriter(const std::string& path, int width)
    : path_(path), tmp_(path + ".tmp" + std::to_string(::getpid())), width_(width) {
  check(width == 2 || width == 4, "internal: token width");
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail(tmp_ + ": cannot create (" + std::strerror(errno) + ")");
  const uint8_t zero[kTokenHeaderBytes] = {};
  if (std::fwrite(zero, 1, sizeof zero, f_) != sizeof zero) fail(tmp_ + ": write failed (disk full?)");
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void TokenFileWriter::append(const int32_t* tokens, int64_t n) {
  std::vector<uint8_t> buf(size_t(n) * size_t(width_));
  for (int64_t i = 0; i < n; ++i) put(buf.data() + size_t(i) * size_t(width_), uint64_t(uint32_t(tokens[i])), width_);
  if (std::fwrite(buf.data(), 1, buf.size(), f_) != buf.size())
    fail(tmp_ + ": write failed (" + std::strerror(errno) + "; disk full?)");
  count_ += n;
}

void TokenFileWriter::finish(uint64_t tokenizer_hash, uint64_t vocab, uint64_t text_bytes) {
  uint8_t h[kTokenHeaderBytes] = {};
  std::memcpy(h, kMagic, sizeof kMagic);
  put(h + 8, 1, 4), put(h + 12, uint64_t(width_), 4), put(h + 16, uint64_t(count_), 8);
  put(h + 24, tokenizer_hash, 8), put(h + 32, vocab, 8), put(h + 40, text_bytes, 8);
  if (std::fseek(f_, 0, SEEK_SET) != 0 || std::fwrite(h, 1, sizeof h, f_) != sizeof h || std::fflush(f_) != 0 ||
      ::fsync(::fileno(f_)) != 0)
    fail(tmp_ + ": write failed (" + std::strerror(errno) + "; disk full?)");
  std::fclose(f_);
  f_ = nullptr;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_.c_str());
    fail(path_ + ": cannot rename into place (" + std::strerror(errno) + ")");
  }
}

}  // namespace moe
