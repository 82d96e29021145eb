// Text <-> token ids. Two kinds: bytes (the default: id = byte value, vocabulary 256, nothing to
// store) and a SentencePiece model (a byte-fallback BPE trained by `moe tokenizer train`: every
// byte sequence encodes, unknown characters as byte tokens). A run or checkpoint directory that
// holds `tokenizer.model` uses it; without one it is bytes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

inline constexpr const char* kTokenizerFile = "tokenizer.model";

class Tokenizer {
 public:
  Tokenizer();  // bytes
  // A SentencePiece model file; errors name the file.
  static Tokenizer load(const std::string& model_path);
  // `dir`/tokenizer.model when it exists, else bytes.
  static Tokenizer from_dir(const std::string& dir);

  bool is_bytes() const { return sp_ == nullptr; }
  int64_t vocab_size() const { return vocab_; }
  // 64-bit FNV-1a of the model file (0 for bytes): names a tokenizer in token files and checkpoints.
  uint64_t hash() const { return hash_; }
  const std::string& model_bytes() const { return model_; }
  std::string describe() const;  // "bytes (256)" or "SentencePiece BPE, 2048 tokens (hash 0x…)"

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // The bytes of text one id stands for on its own ("▁the" -> " the", <0x0A> -> "\n", control
  // tokens -> ""): what it adds to a decoded stream, and its length counts for bits per byte. A
  // byte model may have a larger vocabulary than its 256 byte tokens (vocab_size is free): the ids
  // past them stand for no text, like control tokens.
  const std::string& bytes_of(int32_t id) const {
    static const std::string kNone;
    return id >= 0 && size_t(id) < bytes_.size() ? bytes_[size_t(id)] : kNone;
  }
  // The piece as the model names it (for display: "▁the", "<0x0A>").
  std::string piece(int32_t id) const;

 private:
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::string model_;
  uint64_t hash_ = 0;
  int64_t vocab_ = 256;
  std::vector<std::string> bytes_;  // (vocab) bytes_of
};

// Trains a byte-fallback BPE of `vocab` tokens on the lines of `texts` (whole files' contents),
// returns the serialized model. Errors say what was wrong (too small a vocabulary, no text).
std::string train_bpe_tokenizer(const std::vector<std::string>& texts, int64_t vocab, int threads);

}  // namespace moe
