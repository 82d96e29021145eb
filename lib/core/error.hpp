// Errors the user can act on: one line that names the file/field/flag and what was expected.
// Thrown anywhere in lib/, caught once in app/main.cpp, printed as "moe: <message>".
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

struct Error : std::runtime_error {
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

inline void check(bool condition, const std::string& message) {
  if (!condition) fail(message);
}

}  // namespace moe
