// The inputs of `moe tokenizer train` and `moe data prepare`: files and directories (walked in
// sorted order; regular files only, names starting with '.' skipped), each a text file or, by its
// `.jsonl` extension, JSON lines whose text field holds one document each.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe {

struct CorpusFile {
  std::string path;
  bool jsonl = false;
  uint64_t bytes = 0;  // file size
};

// Every input in order (a directory's files sorted by path). Errors: a missing input, an empty
// directory, an empty file list.
std::vector<CorpusFile> list_corpus(const std::vector<std::string>& inputs, const std::string& flag);

// Calls fn(text, input bytes it came from) for the documents of `f` in order: a text file in pieces of at most about
// `chunk` bytes, each cut after a line break when there is one; a JSONL file one document per
// line (its `text_field`, a string; blank lines skipped). Errors name the file and, for JSONL,
// the line: a line that is not JSON, a missing or non-string field. A NUL byte marks a binary
// file given as text: refused.
void read_documents(const CorpusFile& f, const std::string& text_field, size_t chunk,
                    const std::function<void(std::string&&, uint64_t)>& fn);

}  // namespace moe
