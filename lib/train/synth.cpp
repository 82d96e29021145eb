#include "train/synth.hpp"

#include <algorithm>
#include <array>

#include "core/rng.hpp"

namespace moe {

const char* domain_name(int domain) {
  static const char* names[] = {"arithmetic", "records", "code", "prose"};
  return domain >= 0 && domain < kNumDomains ? names[domain] : "unknown";
}

namespace {

template <size_t N>
const char* pick(Rng& rng, const std::array<const char*, N>& words) {
  return words[rng.below(N)];
}

std::string arithmetic_unit(Rng& rng) {
  const int64_t a = int64_t(rng.below(100)), b = int64_t(rng.below(100));
  switch (rng.below(3)) {
    case 0:
      return std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b) + "\n";
    case 1: {
      const int64_t hi = std::max(a, b), lo = std::min(a, b);
      return std::to_string(hi) + "-" + std::to_string(lo) + "=" + std::to_string(hi - lo) + "\n";
    }
    default: {
      const int64_t x = a % 13, y = b % 13;
      return std::to_string(x) + "*" + std::to_string(y) + "=" + std::to_string(x * y) + "\n";
    }
  }
}

std::string records_unit(Rng& rng) {
  static const std::array<const char*, 10> names = {"alice", "bob",   "carol", "dave", "erin",
                                                    "frank", "grace", "heidi", "ivan", "judy"};
  static const std::array<const char*, 8> cities = {"paris", "tokyo", "lima", "oslo",
                                                    "cairo", "delhi", "rome", "quito"};
  static const std::array<const char*, 6> colors = {"red", "green", "blue", "amber", "violet", "teal"};
  return std::string("{id:") + std::to_string(1000 + rng.below(9000)) + ", name:" + pick(rng, names) +
         ", age:" + std::to_string(18 + rng.below(60)) + ", city:" + pick(rng, cities) +
         ", color:" + pick(rng, colors) + "}\n";
}

std::string code_unit(Rng& rng) {
  static const std::array<const char*, 6> vars = {"x", "y", "n", "total", "count", "value"};
  static const std::array<const char*, 5> funcs = {"step", "scale", "merge", "clip", "update"};
  const char* v = pick(rng, vars);
  const char* f = pick(rng, funcs);
  switch (rng.below(3)) {
    case 0:
      return std::string("def ") + f + "(" + v + "):\n    return " + v + " * " + std::to_string(rng.below(10)) + " + " +
             std::to_string(rng.below(10)) + "\n";
    case 1:
      return std::string("for i in range(") + std::to_string(1 + rng.below(20)) + "):\n    " + v + " += " + f + "(i)\n";
    default:
      return std::string("if ") + v + " > " + std::to_string(rng.below(100)) + ":\n    " + v + " = " + f + "(" + v +
             ")\n";
  }
}

std::string prose_unit(Rng& rng) {
  static const std::array<const char*, 8> adjectives = {"quiet", "old",   "bright", "small",
                                                        "green", "tired", "brave",  "cold"};
  static const std::array<const char*, 10> nouns = {"fox",    "house", "river", "king", "garden",
                                                    "sailor", "city",  "bird",  "wind", "stone"};
  static const std::array<const char*, 8> verbs = {"sees",      "follows", "finds",   "leaves",
                                                   "remembers", "watches", "crosses", "loves"};
  static const std::array<const char*, 5> adverbs = {"slowly", "at dawn", "again", "in silence", "before the rain"};
  std::string s = std::string("the ") + pick(rng, adjectives) + " " + pick(rng, nouns) + " " + pick(rng, verbs) +
                  " a " + pick(rng, adjectives) + " " + pick(rng, nouns);
  if (rng.below(2)) s += std::string(" ") + pick(rng, adverbs);
  return s + ". ";
}

}  // namespace

SynthCorpus make_synth_corpus(int64_t bytes, uint64_t seed) {
  Rng rng(seed);
  SynthCorpus corpus;
  corpus.text.reserve(size_t(bytes) + 256);
  corpus.domain.reserve(size_t(bytes) + 256);
  while (int64_t(corpus.text.size()) < bytes) {
    const int domain = int(rng.below(kNumDomains));
    const int units = 2 + int(rng.below(5));  // spans of 2..6 units
    for (int u = 0; u < units; ++u) {
      std::string piece;
      switch (Domain(domain)) {
        case Domain::arithmetic:
          piece = arithmetic_unit(rng);
          break;
        case Domain::records:
          piece = records_unit(rng);
          break;
        case Domain::code:
          piece = code_unit(rng);
          break;
        case Domain::prose:
          piece = prose_unit(rng);
          break;
      }
      corpus.text += piece;
      corpus.domain.insert(corpus.domain.end(), piece.size(), uint8_t(domain));
    }
    if (Domain(domain) == Domain::prose) {
      corpus.text += '\n';
      corpus.domain.push_back(uint8_t(domain));
    }
  }
  corpus.text.resize(size_t(bytes));
  corpus.domain.resize(size_t(bytes));
  return corpus;
}

}  // namespace moe
