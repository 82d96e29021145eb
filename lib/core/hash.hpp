// FNV-1a: the one hash for fingerprints of data and parameters (stored in trainer_state.json,
// compared across ranks) and for cache keys. Not cryptographic; stable across builds and runs.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

// Continues hash `h` over `bytes` bytes of `data`.
inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = kFnvOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * kFnvPrime;
  return h;
}

// Continues hash `h` with one integer as a whole word (the cache-key convention: one step per value).
inline uint64_t fnv1a_word(uint64_t h, uint64_t value) { return (h ^ value) * kFnvPrime; }

}  // namespace moe
