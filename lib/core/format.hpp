// printf into a std::string of any length: report lines carry paths and numbers of no fixed size
// (a 220-character --data path, a loss of 1e300), which a fixed buffer would cut mid-line.
#pragma once
#include <cstdio>
#include <string>

namespace moe {

template <class... Args>
std::string format(const char* pattern, Args... args) {
  const int n = std::snprintf(nullptr, 0, pattern, args...);
  if (n <= 0) return {};
  std::string out(size_t(n) + 1, '\0');
  std::snprintf(out.data(), out.size(), pattern, args...);
  out.resize(size_t(n));
  return out;
}

}  // namespace moe
