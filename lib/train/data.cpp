#include "train/data.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "train/synth.hpp"

namespace moe {

namespace {

void split(TextData& data) { data.train_end = data.size() - data.size() / 10; }

}  // namespace

TextData load_text_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path + ": cannot open data file (" + std::strerror(errno) + ")");
  if (S_ISDIR(st.st_mode)) fail(path + ": is a directory, expected a text file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open data file (permission denied?)");
  TextData data;
  data.source = path;
  data.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path + ": read error");
  if (data.bytes.empty()) fail(path + ": data file is empty");
  split(data);
  return data;
}

TextData synthetic_text(int64_t bytes, uint64_t seed) {
  SynthCorpus corpus = make_synth_corpus(bytes, seed);
  TextData data;
  data.source = "synthetic:" + std::to_string(bytes) + ":" + std::to_string(seed);
  data.bytes.assign(corpus.text.begin(), corpus.text.end());
  data.domain = std::move(corpus.domain);
  split(data);
  return data;
}

void load_domains_if_present(TextData& data, const std::string& path) {
  std::ifstream in(path + ".domains", std::ios::binary);
  if (!in) return;
  std::vector<uint8_t> domain((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (domain.size() != data.bytes.size())
    fail(path + ".domains: has " + std::to_string(domain.size()) + " labels for " + std::to_string(data.bytes.size()) +
         " bytes of " + path);
  for (uint8_t d : domain)
    if (d >= kNumDomains) fail(path + ".domains: label " + std::to_string(d) + " is not a known domain");
  data.domain = std::move(domain);
}

TextData load_prepared(const std::string& dir) {
  TextData data;
  data.source = dir;
  data.train_file = TokenFile::open(dir + "/train.bin");
  data.val_file = TokenFile::open(dir + "/val.bin");
  data.tokenizer = Tokenizer::from_dir(dir);
  for (const TokenFile* f : {data.train_file.get(), data.val_file.get()}) {
    const TokenFileInfo& i = f->info();
    if (i.tokenizer_hash != data.tokenizer.hash() || int64_t(i.vocab) != data.tokenizer.vocab_size())
      fail(f->path() + ": written by another tokenizer (hash " + std::to_string(i.tokenizer_hash) + ", " +
           std::to_string(i.vocab) + " tokens) than " + dir + "'s " +
           (data.tokenizer.is_bytes() ? std::string("byte tokens (no tokenizer.model)") : kTokenizerFile) + " (hash " +
           std::to_string(data.tokenizer.hash()) + ")");
  }
  data.train_end = data.train_file->size();
  return data;
}

TextData load_training_data(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    struct stat bin {};
    if (::stat((path + "/train.bin").c_str(), &bin) != 0)
      fail(path + ": a directory without train.bin; prepare it first (moe data prepare --data " + path +
           " --out DIR), or give a text file");
    return load_prepared(path);
  }
  return load_text_file(path);
}

void TextData::copy(int64_t start, int64_t n, int32_t* out) const {
  check(start >= 0 && n >= 0 && start + n <= size(), "internal: window outside the data");
  if (!prepared()) {
    for (int64_t i = 0; i < n; ++i) out[i] = bytes[size_t(start + i)];
    return;
  }
  const int64_t in_train = std::clamp<int64_t>(train_end - start, 0, n);
  if (in_train > 0) train_file->copy(start, in_train, out);
  if (n > in_train) val_file->copy(start + in_train - train_end, n - in_train, out + in_train);
}

double TextData::val_bytes_per_token() const {
  if (!prepared() || val_file->size() == 0) return 1.0;
  return double(val_file->info().text_bytes) / double(val_file->size());
}

void check_data_fits(const TextData& data, int64_t seq) {
  const char* unit = data.unit();
  if (data.train_end < seq + 1)
    fail(data.source + ": training part (" + std::to_string(data.train_end) + " " + unit +
         (data.prepared() ? "" : ", 90% of the file") +
         ") is shorter than one window of seq+1 = " + std::to_string(seq + 1) + " " + unit);
  if (data.val_size() < 2)
    fail(data.source + ": validation part (" + (data.prepared() ? "val.bin, " : "last 10%, ") +
         std::to_string(data.val_size()) + " " + unit + ") is too short to evaluate");
}

void sample_batch(const TextData& data, Rng& rng, int64_t B, int64_t T, int32_t* inputs, int32_t* targets) {
  const uint64_t starts = uint64_t(data.train_end - T);  // offsets whose window of T+1 fits
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = int64_t(rng.below(starts));
    // Read twice (the targets are the inputs shifted by one) rather than stage T + 1 tokens in a
    // buffer: no allocation per step, and the second read hits the page cache.
    data.copy(s, T, inputs + b * T);
    data.copy(s + 1, T, targets + b * T);
  }
}

uint64_t fingerprint(const std::vector<uint8_t>& bytes) { return fnv1a(bytes.data(), bytes.size()); }

uint64_t fingerprint(const TextData& data) {
  if (!data.prepared()) return fingerprint(data.bytes);
  return fnv1a_word(data.train_file->fingerprint(), data.val_file->fingerprint());
}

}  // namespace moe
