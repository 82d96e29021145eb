#include "train/data.hpp"

#include <sys/stat.h>

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

void check_data_fits(const TextData& data, int64_t seq) {
  if (data.train_end < seq + 1)
    fail(data.source + ": training part (" + std::to_string(data.train_end) +
         " bytes, 90% of the file) is shorter than one window of seq+1 = " + std::to_string(seq + 1) + " bytes");
  if (data.val_size() < 2)
    fail(data.source + ": validation part (last 10%, " + std::to_string(data.val_size()) +
         " bytes) is too short to evaluate");
}

void sample_batch(const TextData& data, Rng& rng, int64_t B, int64_t T, int32_t* inputs, int32_t* targets) {
  const uint64_t starts = uint64_t(data.train_end - T);  // offsets whose window of T+1 fits
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = int64_t(rng.below(starts));
    for (int64_t t = 0; t < T; ++t) {
      inputs[b * T + t] = data.bytes[size_t(s + t)];
      targets[b * T + t] = data.bytes[size_t(s + t + 1)];
    }
  }
}

uint64_t fingerprint(const std::vector<uint8_t>& bytes) { return fnv1a(bytes.data(), bytes.size()); }

}  // namespace moe
