// The configs shipped in configs/, compiled into the binary (lib/CMakeLists.txt generates the
// table), so `moe train --config tiny` and `moe bench` work from any directory.
#pragma once
#include <string>
#include <vector>

namespace moe {

struct BuiltinConfig {
  const char* name;  // the file name without .json: tiny, small-v3, ...
  const char* json;  // its text
};

const std::vector<BuiltinConfig>& builtin_configs();

}  // namespace moe
