#include "train/prepare.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "train/corpus.hpp"
#include "train/run_dir.hpp"
#include "train/token_file.hpp"

namespace moe {

namespace {

// Encodes up to this much text at once, split into pieces of at most kPiece bytes that the threads
// encode in parallel; a piece ends at a line break when it can (no token spans one).
constexpr size_t kBatchBytes = size_t(32) << 20;
constexpr size_t kPiece = size_t(1) << 20;

struct Doc {
  std::string text;
  bool val = false;
};

class Encoder {
 public:
  Encoder(const Tokenizer& tok, TokenFileWriter& train, TokenFileWriter& val, int threads)
      : tok_(tok), train_(train), val_(val), threads_(threads) {}
  void add(std::string&& text, bool val) {
    (val ? val_bytes : train_bytes) += text.size();
    batch_bytes_ += text.size();
    docs_.push_back({std::move(text), val});
    if (batch_bytes_ >= kBatchBytes) flush();
  }
  void flush() {
    std::vector<std::vector<int32_t>> ids(docs_.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (size_t i = 0; i < docs_.size(); ++i) ids[i] = tok_.encode(docs_[i].text);
    for (size_t i = 0; i < docs_.size(); ++i)
      (docs_[i].val ? val_ : train_).append(ids[i].data(), int64_t(ids[i].size()));
    docs_.clear();
    batch_bytes_ = 0;
  }
  uint64_t train_bytes = 0, val_bytes = 0;

 private:
  const Tokenizer& tok_;
  TokenFileWriter &train_, &val_;
  int threads_;
  std::vector<Doc> docs_;
  size_t batch_bytes_ = 0;
};

// Cuts `text` into pieces of at most about kPiece bytes, each ending after a line break when there
// is one in its last half.
void add_in_pieces(Encoder& enc, std::string&& text, bool val) {
  if (text.size() <= kPiece) return enc.add(std::move(text), val);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = std::min(text.size(), start + kPiece);
    if (end < text.size()) {
      const size_t nl = text.rfind('\n', end - 1);
      if (nl != std::string::npos && nl >= start + kPiece / 2) end = nl + 1;
    }
    enc.add(text.substr(start, end - start), val);
    start = end;
  }
}

nlohmann::json sources_json(const std::vector<CorpusFile>& files) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& f : files) out.push_back({{"path", f.path}, {"bytes", f.bytes}, {"jsonl", f.jsonl}});
  return out;
}

}  // namespace

bool is_prepared_dir(const std::string& path) {
  struct stat st {};
  return ::stat((path + "/train.bin").c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

PrepareResult prepare_corpus(const PrepareOptions& o, const std::function<void(uint64_t, uint64_t)>& progress) {
  if (!o.val.empty() && o.val_fraction != 0.1) fail("--val and --val-fraction: give one of them");
  if (o.val.empty() && !(o.val_fraction > 0 && o.val_fraction < 1))
    fail("--val-fraction: expected a fraction in (0, 1), got " + std::to_string(o.val_fraction));
  const auto files = list_corpus(o.data, "--data");
  const auto val_files = o.val.empty() ? std::vector<CorpusFile>{} : list_corpus(o.val, "--val");
  const Tokenizer tok = o.tokenizer_dir.empty() ? Tokenizer() : Tokenizer::load(o.tokenizer_dir + "/" + kTokenizerFile);
  const int width = tok.vocab_size() <= 65536 ? 2 : 4;
  uint64_t total = 0, data_total = 0;
  for (const auto& f : files) data_total += f.bytes;
  total = data_total;
  for (const auto& f : val_files) total += f.bytes;

  // Nothing is left behind by a failure: the directory goes again when this call made it.
  const bool made = !is_directory(o.out);
  make_directories(o.out);
  struct RemoveIfFailed {
    std::string dir;
    bool armed;
    ~RemoveIfFailed() {
      if (armed) ::rmdir(dir.c_str());  // only when empty
    }
  } guard{o.out, made};
  TokenFileWriter train(o.out + "/train.bin", width), val(o.out + "/val.bin", width);
  Encoder enc(tok, train, val, std::max(1, o.threads));
  // The split: the first (1 - f) of the data's bytes train, the rest validate, cut after a line
  // break when the text has one (a JSONL document goes whole to the side its start falls on).
  const uint64_t boundary =
      o.val.empty() ? uint64_t(std::llround(double(data_total) * (1.0 - o.val_fraction))) : data_total;
  uint64_t consumed = 0, reported = 0, read = 0;
  auto report = [&](uint64_t n) {
    read += n;
    if (progress && read - reported >= (uint64_t(8) << 20)) progress(read, total), reported = read;
  };
  for (const CorpusFile& f : files) {
    read_documents(f, o.text_field, kPiece, [&](std::string&& text, uint64_t input) {
      if (f.jsonl && (text.empty() || text.back() != '\n')) text += '\n';  // documents end with a line break
      // The split counts input bytes (a JSONL line's, a text file's own): the fraction of the files.
      const uint64_t at = consumed;
      consumed += input;
      report(input);
      if (f.jsonl || at >= boundary || consumed <= boundary) return add_in_pieces(enc, std::move(text), at >= boundary);
      size_t cut = size_t(boundary - at);
      const size_t nl = text.find('\n', cut);
      if (nl != std::string::npos) cut = nl + 1;
      std::string rest = text.substr(cut);
      text.resize(cut);
      add_in_pieces(enc, std::move(text), false);
      if (!rest.empty()) add_in_pieces(enc, std::move(rest), true);
    });
  }
  for (const CorpusFile& f : val_files)
    read_documents(f, o.text_field, kPiece, [&](std::string&& text, uint64_t input) {
      if (f.jsonl && (text.empty() || text.back() != '\n')) text += '\n';
      report(input);
      add_in_pieces(enc, std::move(text), true);
    });
  enc.flush();
  if (train.count() < 2) fail("the training part has " + std::to_string(train.count()) + " tokens: not enough text");
  if (val.count() < 2)
    fail("the validation part has " + std::to_string(val.count()) + " tokens: raise --val-fraction or give --val");
  train.finish(tok.hash(), uint64_t(tok.vocab_size()), enc.train_bytes);
  val.finish(tok.hash(), uint64_t(tok.vocab_size()), enc.val_bytes);
  if (!tok.is_bytes()) write_file_atomic(o.out + "/" + kTokenizerFile, tok.model_bytes());
  nlohmann::json split = o.val.empty() ? nlohmann::json{{"val_fraction", o.val_fraction}}
                                       : nlohmann::json{{"val", sources_json(val_files)}};
  const nlohmann::json meta = {
      {"format", "moe prepared corpus"},
      {"version", 1},
      {"tokenizer", tok.is_bytes() ? nlohmann::json{{"kind", "bytes"}, {"vocab", 256}, {"hash", 0}}
                                   : nlohmann::json{{"kind", "sentencepiece"},
                                                    {"vocab", tok.vocab_size()},
                                                    {"hash", tok.hash()},
                                                    {"file", kTokenizerFile}}},
      {"token_width", width},
      {"sources", sources_json(files)},
      {"text_field", o.text_field},
      {"split", split},
      {"train", {{"tokens", train.count()}, {"text_bytes", enc.train_bytes}}},
      {"val", {{"tokens", val.count()}, {"text_bytes", enc.val_bytes}}}};
  write_file_atomic(o.out + "/meta.json", meta.dump(2) + "\n");
  if (progress) progress(total, total);
  guard.armed = false;
  return {train.count(), val.count(), enc.train_bytes, enc.val_bytes, int64_t(files.size() + val_files.size())};
}

}  // namespace moe
