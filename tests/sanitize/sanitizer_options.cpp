// Default runtime options of the MOE_SANITIZE=ON build, compiled into `moe` and `moe_tests` (see
// the top-level CMakeLists.txt) so that ctest, scripts/test and a hand-run binary all behave the
// same without any environment. ASAN_OPTIONS / LSAN_OPTIONS / UBSAN_OPTIONS still override them.
// Not part of the normal build (tests/CMakeLists.txt leaves tests/sanitize/ out of moe_tests).

extern "C" {

// detect_leaks: on (the default on Linux, made explicit); the few known leaks are suppressed one
// by one in lsan.supp. oneDNN's JIT and libgomp run cleanly under ASan with GCC 12 (checked with
// the whole suite), so no blanket exclusion is needed.
// abort_on_error=0: exit with status 1 rather than SIGABRT, so a report in the `moe` child of a
// CLI test is a clean failure. strict_string_checks / detect_stack_use_after_return: extra checks
// that cost little at -O1.
const char* __asan_default_options() {
  return "detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:"
         "check_initialization_order=1:strict_init_order=1";
}

const char* __lsan_default_options() { return "suppressions=" MOE_LSAN_SUPPRESSIONS ":print_suppressions=0"; }

// -fno-sanitize-recover=undefined already stops at the first report; print where it happened.
const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }

}  // extern "C"
