// `moe data prepare`: tokenizes a corpus once (all cores) into train.bin / val.bin (token_file.hpp)
// plus meta.json and a copy of the tokenizer, streaming: memory stays bounded by a batch of
// documents, whatever the corpus size.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tokenizer.hpp"

namespace moe {

struct PrepareOptions {
  std::vector<std::string> data;  // files, directories, .jsonl files
  std::vector<std::string> val;   // when given: the validation text (else the last val_fraction of data)
  double val_fraction = 0.1;
  std::string text_field = "text";
  std::string tokenizer_dir;  // "" = bytes
  std::string out;
  int threads = 1;
};

struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0;
  uint64_t train_bytes = 0, val_bytes = 0;  // UTF-8 text bytes
  int64_t files = 0;
};

// progress(bytes read so far, bytes in total) is called every few megabytes.
PrepareResult prepare_corpus(const PrepareOptions& options,
                             const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

// A directory written by prepare_corpus (it holds train.bin).
bool is_prepared_dir(const std::string& path);

}  // namespace moe
