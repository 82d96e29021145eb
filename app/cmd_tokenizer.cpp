// `moe tokenizer train`: a byte-fallback BPE (SentencePiece) from text files, directories or JSONL.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "commands.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "core/tokenizer.hpp"
#include "train/corpus.hpp"

namespace moe::app {

namespace {

struct TokenizerFlags {
  std::vector<std::string> data;
  std::string out, text_field = "text";
  int64_t vocab = 2048, max_bytes = int64_t(256) << 20, threads = 0;
  bool force = false;
};

}  // namespace

Run add_tokenizer(CLI::App& app) {
  auto f = std::make_shared<TokenizerFlags>();
  auto* cmd = app.add_subcommand("tokenizer", "Tokenizer tools");
  cmd->require_subcommand(1);
  auto* train = cmd->add_subcommand("train", "Train a byte-fallback BPE tokenizer (SentencePiece) on text");
  train->add_option("--data", f->data, "Text files, directories (walked in sorted order) or .jsonl files")->required();
  train->add_option("--vocab", f->vocab, "Vocabulary size: 256 byte tokens + <unk>, <s>, </s> + merges")
      ->capture_default_str()
      ->check(InRange(300, 65536));
  train->add_option("--out", f->out, "Directory to write tokenizer.model into")->required();
  train->add_option("--text-field", f->text_field, "Field of each .jsonl line that holds the text")
      ->capture_default_str();
  train->add_option("--max-bytes", f->max_bytes, "Read at most this many bytes of text (the trainer samples anyway)")
      ->capture_default_str()
      ->check(InRange(1, 1e12));
  train->add_option("-t,--threads", f->threads, "Threads (0: all cores)")->check(ThreadCount());
  train->add_flag("--force", f->force, "Replace DIR/tokenizer.model if it exists");
  return [f]() {
    const std::string model_path = f->out + "/" + kTokenizerFile;
    const bool replacing = check_output_file(model_path, f->force);
    const auto files = list_corpus(f->data, "--data");
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string> texts;
    int64_t read = 0;
    for (const CorpusFile& file : files) {
      if (read >= f->max_bytes) break;
      read_documents(file, f->text_field, size_t(8) << 20, [&](std::string&& text, uint64_t) {
        if (read >= f->max_bytes) return;
        read += int64_t(text.size());
        texts.push_back(std::move(text));
      });
    }
    const int threads = int(f->threads > 0 ? f->threads : hardware_threads());
    const std::string model = train_bpe_tokenizer(texts, f->vocab, threads);
    make_directories(f->out);
    write_file_atomic(model_path, model);
    const Tokenizer tok = Tokenizer::load(model_path);
    // How much shorter the text gets: bytes per token over what it was trained on (up to 4 MB).
    int64_t bytes = 0, tokens = 0;
    for (const std::string& t : texts) {
      if (bytes > (4 << 20)) break;
      bytes += int64_t(t.size()), tokens += int64_t(tok.encode(t).size());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s %s: %s, trained on %lld bytes of %zu file%s in %.1f s; %.2f bytes per token on it\n",
                replacing ? "replaced" : "wrote", model_path.c_str(), tok.describe().c_str(), (long long)read,
                files.size(), files.size() == 1 ? "" : "s", seconds, tokens > 0 ? double(bytes) / double(tokens) : 0.0);
    return 0;
  };
}

}  // namespace moe::app
