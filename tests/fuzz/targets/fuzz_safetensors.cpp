// libFuzzer entry point for moe::fuzz::run_safetensors (tests/fuzz/harnesses.hpp). Built only with
// -DMOE_FUZZ=ON (clang); scripts/fuzz runs it. Not part of moe_tests (see tests/CMakeLists.txt).
#include "../harnesses.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)moe::fuzz::run_safetensors(data, size);
  return 0;
}
