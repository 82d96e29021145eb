#include "core/tokenizer.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/safetensors.hpp"

// Defined by libsentencepiece (0.1.97) but not declared in its public headers: quiets its INFO log.
namespace sentencepiece::logging {
void SetMinLogLevel(int v);
}

namespace moe {

namespace {

// "▁" (U+2581), SentencePiece's mark for a space.
constexpr std::string_view kSpaceMark = "\xe2\x96\x81";

}  // namespace

Tokenizer::Tokenizer() {
  for (int b = 0; b < 256; ++b) bytes_.push_back(std::string(1, char(b)));
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  Tokenizer t;
  t.model_ = read_file_bytes(model_path, "tokenizer model");
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(t.model_);
  if (!status.ok()) fail(model_path + ": not a SentencePiece model (" + status.ToString() + ")");
  t.vocab_ = sp->GetPieceSize();
  t.hash_ = fnv1a(t.model_.data(), t.model_.size());
  t.bytes_.assign(size_t(t.vocab_), std::string());
  for (int id = 0; id < int(t.vocab_); ++id) {
    if (sp->IsControl(id)) continue;  // <s>, </s>: no text
    if (sp->IsUnknown(id)) continue;  // never produced with byte fallback
    const std::string& piece = sp->IdToPiece(id);
    if (sp->IsByte(id)) {  // "<0x0A>"
      unsigned value = 0;
      if (std::sscanf(piece.c_str(), "<0x%2X>", &value) != 1) fail(model_path + ": malformed byte piece " + piece);
      t.bytes_[size_t(id)] = std::string(1, char(value));
      continue;
    }
    std::string text;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
        text += ' ', i += kSpaceMark.size();
      } else {
        text += piece[i++];
      }
    }
    t.bytes_[size_t(id)] = std::move(text);
  }
  t.sp_ = std::move(sp);
  return t;
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  const std::string path = dir + "/" + kTokenizerFile;
  std::ifstream probe(path);
  return probe ? load(path) : Tokenizer();
}

std::string Tokenizer::describe() const {
  if (is_bytes()) return "bytes (256)";
  char buf[96];
  std::snprintf(buf, sizeof buf, "SentencePiece BPE, %lld tokens (hash %016llx)", (long long)vocab_,
                (unsigned long long)hash_);
  return buf;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (is_bytes()) {
    // Each byte as 0..255: `char` is signed here, so UTF-8's bytes past 0x7f would become negative ids.
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (const unsigned char byte : text) ids.push_back(int32_t(byte));
    return ids;
  }
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) fail("tokenizer: cannot encode text (" + status.ToString() + ")");
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    check(id >= 0 && (is_bytes() || id < vocab_), "token id " + std::to_string(id) + " is outside the vocabulary");
    out += bytes_of(id);
  }
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  check(id >= 0 && (is_bytes() || id < vocab_), "token id " + std::to_string(id) + " is outside the vocabulary");
  if (is_bytes()) return id < 256 ? bytes_[size_t(id)] : "<unused " + std::to_string(id) + ">";
  return sp_->IdToPiece(id);
}

namespace {

// Every line of every text, one sentence each (SentencePiece trains on sentences; a line break
// never appears inside a piece, so encoding a long text in chunks cut at line breaks is exact).
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& texts) : texts_(texts) { advance(); }
  bool done() const override { return text_ >= texts_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  void advance() {
    while (text_ < texts_.size()) {
      const std::string& t = texts_[text_];
      if (pos_ >= t.size()) {
        ++text_, pos_ = 0;
        continue;
      }
      const size_t end = std::min(t.find('\n', pos_), t.size());
      line_ = t.substr(pos_, end - pos_);
      pos_ = end + 1;
      if (!line_.empty()) return;
    }
  }
  const std::vector<std::string>& texts_;
  size_t text_ = 0, pos_ = 0;
  std::string line_;
};

}  // namespace

std::string train_bpe_tokenizer(const std::vector<std::string>& texts, int64_t vocab, int threads) {
  // 256 byte tokens + <unk>, <s>, </s> come first; BPE needs room for at least some merges.
  if (vocab < 300 || vocab > 65536)
    fail("--vocab: expected a number in [300, 65536] (256 byte tokens + 3 special ones + merges), got " +
         std::to_string(vocab));
  size_t chars = 0;
  for (const auto& t : texts) chars += t.size();
  if (chars == 0) fail("no text to train the tokenizer on");
  sentencepiece::logging::SetMinLogLevel(2);
  LineIterator lines(texts);
  // Byte-fallback BPE, text kept as it is: no normalization, no dummy prefix, whitespace runs kept,
  // digits split (a number's digits stay separate tokens, as in DeepSeek's and LLaMA's BPE).
  const std::string args = "--model_type=bpe --vocab_size=" + std::to_string(vocab) +
                           " --byte_fallback=true --character_coverage=0.9995 --normalization_rule_name=identity"
                           " --add_dummy_prefix=false --remove_extra_whitespaces=false"
                           " --allow_whitespace_only_pieces=true --split_digits=true --max_sentence_length=65536"
                           " --input_sentence_size=2000000 --shuffle_input_sentence=true --num_threads=" +
                           std::to_string(std::max(1, threads));
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (!status.ok()) {
    // SentencePiece's two answers to a vocabulary that does not fit the text, in moe's terms (its
    // own text points at options moe does not have).
    const std::string message = status.ToString(), v = "--vocab " + std::to_string(vocab);
    int have = 0, need = 0, most = 0;
    if (const size_t at = message.find("smaller than required_chars.");
        at != std::string::npos &&
        std::sscanf(message.c_str() + at, "smaller than required_chars. %d vs %d", &have, &need) == 2)
      fail(v + ": too small for this text: its characters and the special tokens alone need " + std::to_string(need) +
           " tokens; give a larger --vocab");
    if (const size_t at = message.find("Please set it to a value <=");
        at != std::string::npos && std::sscanf(message.c_str() + at, "Please set it to a value <= %d", &most) == 1)
      fail(v + ": too large for this little text (it yields at most " + std::to_string(most) +
           " distinct tokens); give more text");
    fail("tokenizer training failed: " + message);
  }
  return model;
}

}  // namespace moe
