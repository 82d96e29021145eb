// A prepared token file (train.bin / val.bin of `moe data prepare`), memory-mapped for training so
// that a corpus larger than memory trains at constant RSS. Layout, little-endian:
//   0  "MOETOKEN"      8 bytes
//   8  u32 version     1
//   12 u32 width       bytes per token: 2 (vocabularies up to 65,536) or 4
//   16 u64 count       tokens
//   24 u64 tokenizer   FNV-1a hash of the tokenizer.model that wrote them (0: byte tokens)
//   32 u64 vocab       vocabulary size of that tokenizer
//   40 u64 text bytes  UTF-8 bytes of the text the tokens encode (for bits per byte)
//   48 16 bytes zero
//   64 count tokens of `width` bytes
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace moe {

inline constexpr int64_t kTokenHeaderBytes = 64;

struct TokenFileInfo {
  int width = 2;
  int64_t count = 0;
  uint64_t tokenizer_hash = 0, vocab = 256, text_bytes = 0;
};

class TokenFile {
 public:
  // Maps the file after checking its header and size; errors name the file (not a token file, an
  // unknown version, truncated or with trailing bytes).
  static std::shared_ptr<const TokenFile> open(const std::string& path);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  const TokenFileInfo& info() const { return info_; }
  int64_t size() const { return info_.count; }
  // Tokens [start, start + n) into out, each checked against the vocabulary (a corrupt file is an
  // error naming it and the position). The pages read are then dropped from this process's
  // resident set (they stay in the page cache): RSS does not grow with the corpus.
  void copy(int64_t start, int64_t n, int32_t* out) const;
  // FNV-1a of the header and of 64 pages spread over the file (not every byte: a corpus of
  // gigabytes would take seconds on every start).
  uint64_t fingerprint() const;

 private:
  TokenFile() = default;
  void drop(size_t offset, size_t bytes) const;  // unmap the pages read (they stay in the page cache)
  std::string path_;
  TokenFileInfo info_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
};

// Writes a token file: tokens appended in order, the header written last, then renamed into place
// (a crash leaves no half file under `path`).
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, int width);
  ~TokenFileWriter();  // an unfinished file is removed
  void append(const int32_t* tokens, int64_t n);
  void finish(uint64_t tokenizer_hash, uint64_t vocab, uint64_t text_bytes);
  int64_t count() const { return count_; }

 private:
  std::string path_, tmp_;
  int width_;
  int64_t count_ = 0;
  std::FILE* f_ = nullptr;
};

}  // namespace moe
