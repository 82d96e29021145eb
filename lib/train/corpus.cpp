#include "train/corpus.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moe {

namespace fs = std::filesystem;

namespace {

bool is_jsonl(const fs::path& p) { return p.extension() == ".jsonl"; }

void refuse_binary(const std::string& text, const std::string& path, uint64_t offset) {
  const size_t nul = text.find('\0');
  if (nul != std::string::npos)
    fail(path + ": a binary file (a NUL byte at offset " + std::to_string(offset + nul) + "); expected text");
}

}  // namespace

std::vector<CorpusFile> list_corpus(const std::vector<std::string>& inputs, const std::string& flag) {
  if (inputs.empty()) fail(flag + ": give at least one file or directory");
  std::vector<CorpusFile> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (ec || !fs::exists(st)) fail(input + ": no such file or directory (" + flag + ")");
    if (fs::is_directory(st)) {
      std::vector<fs::path> found;
      for (auto it = fs::recursive_directory_iterator(input, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) found.push_back(it->path());
      }
      if (ec) fail(input + ": cannot read the directory (" + ec.message() + ")");
      std::sort(found.begin(), found.end());
      if (found.empty()) fail(input + ": an empty directory (no files to read) (" + flag + ")");
      for (const auto& p : found) files.push_back({p.string(), is_jsonl(p), uint64_t(fs::file_size(p))});
    } else if (fs::is_regular_file(st)) {
      files.push_back({input, is_jsonl(input), uint64_t(fs::file_size(input))});
    } else {
      fail(input + ": not a regular file or directory (" + flag + ")");
    }
  }
  return files;
}

void read_documents(const CorpusFile& f, const std::string& text_field, size_t chunk,
                    const std::function<void(std::string&&, uint64_t)>& fn) {
  std::ifstream in(f.path, std::ios::binary);
  if (!in) fail(f.path + ": cannot open");
  if (f.jsonl) {
    std::string line;
    uint64_t offset = 0, skipped = 0;  // skipped: bytes of blank lines, counted with the next document
    for (int64_t number = 1; std::getline(in, line); ++number, offset += line.size() + 1) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) {
        skipped += line.size() + 1;
        continue;
      }
      refuse_binary(line, f.path, offset);
      const std::string where = f.path + ":" + std::to_string(number);
      const nlohmann::json doc = nlohmann::json::parse(line, nullptr, false);
      if (doc.is_discarded()) fail(where + ": not a JSON value (each line of a .jsonl file is one JSON object)");
      if (!doc.is_object()) fail(where + ": expected a JSON object");
      const auto it = doc.find(text_field);
      if (it == doc.end()) fail(where + ": no field \"" + text_field + "\" (choose it with --text-field)");
      if (!it->is_string()) fail(where + ": field \"" + text_field + "\" is not a string");
      fn(it->get<std::string>(), uint64_t(line.size()) + 1 + skipped);
      skipped = 0;
    }
    return;
  }
  std::string carry;  // the part after the last line break of the previous read
  std::vector<char> buffer(std::max<size_t>(chunk, 1));
  uint64_t offset = 0;
  while (in) {
    in.read(buffer.data(), std::streamsize(buffer.size()));
    const size_t got = size_t(in.gcount());
    if (got == 0) break;
    std::string piece(buffer.data(), got);
    refuse_binary(piece, f.path, offset);
    offset += got;
    std::string text = std::move(carry);
    text += piece;
    carry.clear();
    const size_t cut = text.rfind('\n');
    if (in && cut != std::string::npos && cut + 1 < text.size()) {
      carry = text.substr(cut + 1);
      text.resize(cut + 1);
    }
    const uint64_t n = text.size();
    fn(std::move(text), n);
  }
  if (!carry.empty()) {
    const uint64_t n = carry.size();
    fn(std::move(carry), n);
  }
}

}  // namespace moe
