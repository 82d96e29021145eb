// printf into a std::string of any length: report lines carry paths and numbers of no fixed size
// (a 220-character --data path, a loss of 1e300), which a fixed buffer would cut mid-line.
#pragma once
#include <cstdarg>
#include <cstdio>
#include <string>

namespace moe {

// The format attribute keeps the compiler's printf checks of every call.
[[gnu::format(printf, 1, 2)]] inline std::string format(const char* pattern, ...) {
  va_list args, again;
  va_start(args, pattern);
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, pattern, args);
  va_end(args);
  std::string out;
  if (n > 0) {
    out.resize(size_t(n) + 1);
    std::vsnprintf(out.data(), out.size(), pattern, again);
    out.resize(size_t(n));
  }
  va_end(again);
  return out;
}

}  // namespace moe
