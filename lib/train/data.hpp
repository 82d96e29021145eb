// Training text: bytes of a file (or the embedded synthetic corpus), the first 90% for training
// and the last 10% for validation, sampled as random windows from a seeded RNG.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.hpp"

namespace moe {

struct TextData {
  std::string source;  // a path, or "synthetic:<bytes>:<seed>"
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> domain;  // per-byte domain when known (synthetic corpus), else empty
  int64_t train_end = 0;        // bytes [0, train_end) train, [train_end, size) validation

  int64_t size() const { return int64_t(bytes.size()); }
  int64_t val_size() const { return size() - train_end; }
};

// Reads a file; errors name the path (missing, a directory, unreadable, empty).
TextData load_text_file(const std::string& path);
TextData synthetic_text(int64_t bytes, uint64_t seed);
// Loads `path`.domains next to a synthetic-corpus file when present (written by `moe data synth`).
void load_domains_if_present(TextData& data, const std::string& path);

// Checks the data can feed windows of seq + 1 bytes for training and for validation.
void check_data_fits(const TextData& data, int64_t seq);

// Draws B windows of T+1 bytes at random offsets of the training part: inputs (B, T), targets (B, T).
void sample_batch(const TextData& data, Rng& rng, int64_t B, int64_t T, int32_t* inputs, int32_t* targets);

// 64-bit FNV-1a over the bytes, stored in trainer_state.json to notice a changed data file on resume.
uint64_t fingerprint(const std::vector<uint8_t>& bytes);

}  // namespace moe
