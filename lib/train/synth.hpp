// The embedded synthetic corpus: deterministic text from four domains a small model can tell
// apart (arithmetic with correct answers, key/value records, code-like text, English-like prose),
// interleaved in spans, with the domain of every byte recorded so expert specialisation can be
// measured against ground truth.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

enum class Domain : uint8_t { arithmetic = 0, records = 1, code = 2, prose = 3 };
constexpr int kNumDomains = 4;
const char* domain_name(int domain);

struct SynthCorpus {
  std::string text;             // bytes
  std::vector<uint8_t> domain;  // one Domain value per byte
};

// Exactly `bytes` bytes (the last span is cut), the same for the same (bytes, seed).
SynthCorpus make_synth_corpus(int64_t bytes, uint64_t seed);

// Defaults of the embedded corpus used when `moe train` gets no --data.
constexpr int64_t kDefaultSynthBytes = 2'000'000;
constexpr uint64_t kDefaultSynthSeed = 7;

}  // namespace moe
