// Training text: bytes of a file (or the embedded synthetic corpus), the first 90% for training
// and the last 10% for validation, sampled as random windows from a seeded RNG.
// A prepared directory (`moe data prepare`) instead holds token files that are memory-mapped: its
// tokens are read window by window, never all at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "core/tokenizer.hpp"
#include "train/token_file.hpp"

namespace moe {

struct TextData {
  std::string source;           // a path (file or prepared directory), or "synthetic:<bytes>:<seed>"
  std::vector<uint8_t> bytes;   // a raw file's bytes (byte tokens); empty for a prepared corpus
  std::vector<uint8_t> domain;  // per-byte domain when known (synthetic corpus), else empty
  int64_t train_end = 0;        // tokens [0, train_end) train, [train_end, size) validation
  // A prepared corpus: train.bin and val.bin, and the tokenizer that wrote them.
  std::shared_ptr<const TokenFile> train_file, val_file;
  Tokenizer tokenizer;

  bool prepared() const { return train_file != nullptr; }
  int64_t size() const { return prepared() ? train_file->size() + val_file->size() : int64_t(bytes.size()); }
  int64_t val_size() const { return size() - train_end; }
  // Tokens [start, start + n) of [train | validation] into out.
  void copy(int64_t start, int64_t n, int32_t* out) const;
  // UTF-8 bytes per token of the validation text (1 for bytes): for bits per byte.
  double val_bytes_per_token() const;
  const char* unit() const { return prepared() ? "tokens" : "bytes"; }
};

// Reads a file; errors name the path (missing, a directory, unreadable, empty).
TextData load_text_file(const std::string& path);
// A directory written by `moe data prepare`: its token files mapped, its tokenizer loaded; errors
// name the file (missing, damaged, a header from another tokenizer).
TextData load_prepared(const std::string& dir);
// A prepared directory or a text file.
TextData load_training_data(const std::string& path);
TextData synthetic_text(int64_t bytes, uint64_t seed);
// Loads `path`.domains next to a synthetic-corpus file when present (written by `moe data synth`).
void load_domains_if_present(TextData& data, const std::string& path);

// Checks the data can feed windows of seq + 1 bytes for training and for validation.
void check_data_fits(const TextData& data, int64_t seq);

// Draws B windows of T+1 bytes at random offsets of the training part: inputs (B, T), targets (B, T).
void sample_batch(const TextData& data, Rng& rng, int64_t B, int64_t T, int32_t* inputs, int32_t* targets);

// 64-bit FNV-1a over the bytes, stored in trainer_state.json to notice a changed data file on resume.
uint64_t fingerprint(const std::vector<uint8_t>& bytes);
// The data's fingerprint: of every byte of a raw file, of the headers and sampled pages of a
// prepared corpus's token files.
uint64_t fingerprint(const TextData& data);

}  // namespace moe
