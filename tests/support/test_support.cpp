// The test helpers themselves: TempDir and running programs. Every CLI test trusts them to pass
// arguments untouched, keep stdout and stderr apart, report how a child ended, and clean up.
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "run_moe.hpp"
#include "temp_dir.hpp"

using namespace moe_test;
namespace fs = std::filesystem;

TEST_CASE("support: TempDir is a fresh directory per instance, removed with its contents", "[support]") {
  std::string kept;
  {
    const TempDir a("support"), b("support");
    kept = a.path();
    CHECK(a.path() != b.path());
    CHECK(fs::is_directory(a.path()));
    CHECK(fs::is_empty(a.path()));
    CHECK(fs::path(a.path()).parent_path() == fs::temp_directory_path());
    CHECK(fs::path(a.path()).filename().string().rfind("moe_support_", 0) == 0);
    const std::string file = a.write("sub.txt", "some text");
    CHECK(file == a / "sub.txt");
    // A directory the tests made read-only must not survive the cleanup.
    fs::create_directories(a / "locked/inner");
    a.write("locked/inner/f.txt", "x");
    ::chmod((a / "locked/inner").c_str(), 0500);
    ::chmod((a / "locked").c_str(), 0500);
  }
  CHECK_FALSE(fs::exists(kept));
}

TEST_CASE("support: run passes arguments untouched and keeps stdout and stderr apart", "[support]") {
  // No shell between the test and the program: quotes, spaces and $ reach it as they are.
  const std::string awkward = "a b 'c' \"d\" $HOME; e";
  const RunResult r = run({"sh", "-c", "printf '%s' \"$1\"; printf 'to stderr' >&2; exit 3", "sh", awkward});
  CHECK(r.exited);
  CHECK_FALSE(r.signaled);
  CHECK(r.code == 3);
  CHECK_FALSE(r.ok());
  CHECK(r.out == awkward);
  CHECK(r.err == "to stderr");
}

TEST_CASE("support: run feeds stdin, adds to the environment and starts in the project root", "[support]") {
  const RunResult cat = run({"cat"}, {.stdin_text = "line one\nline two\n"});
  CHECK(cat.ok());
  CHECK(cat.out == "line one\nline two\n");
  // Without stdin text the child reads end of file at once instead of waiting on the test's stdin.
  CHECK(run({"cat"}, {.timeout_s = 10}).out.empty());

  const RunResult env = run({"sh", "-c", "printf '%s|%s' \"$MOE_SUPPORT_VAR\" \"$OMP_WAIT_POLICY\""},
                            {.env = {{"MOE_SUPPORT_VAR", "x y"}, {"OMP_WAIT_POLICY", "ACTIVE"}}});
  CHECK(env.out == "x y|ACTIVE");

  const RunResult pwd = run({"pwd"});
  CHECK(fs::equivalent(pwd.out.substr(0, pwd.out.find('\n')), MOE_SOURCE_DIR));

  const RunResult version = run_moe({"--help"});
  CHECK(version.ok());
  CHECK_FALSE(version.out.empty());
}

TEST_CASE("support: a program that cannot start, and one killed by a signal, are reported as such", "[support]") {
  const RunResult missing = run({"moe_support_no_such_program"});
  CHECK(missing.exited);
  CHECK(missing.code == 127);
  CHECK(missing.err.find("cannot execute") != std::string::npos);

  const RunResult killed = run({"sh", "-c", "kill -TERM $$"});
  CHECK_FALSE(killed.exited);
  CHECK(killed.signaled);
  CHECK(killed.signal == SIGTERM);
  CHECK_FALSE(killed.timed_out);
}

TEST_CASE("support: Process runs in the background, shows its output so far and takes signals", "[support]") {
  Process sleeper({"sh", "-c", "echo started; exec sleep 30"});
  const auto t0 = std::chrono::steady_clock::now();
  while (sleeper.stdout_so_far().empty() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(sleeper.stdout_so_far() == "started\n");
  CHECK(sleeper.pid() > 0);
  CHECK_FALSE(sleeper.has_exited());
  sleeper.kill(SIGINT);
  const RunResult r = sleeper.wait(10);
  CHECK(r.signaled);
  CHECK(r.signal == SIGINT);
  CHECK(r.out == "started\n");
  CHECK(r.seconds < 10);
}

// A hang must fail the test that ran it, whatever the test checks afterwards.
TEST_CASE("support: a child past its time limit is killed and fails the test", "[support][!shouldfail]") {
  const RunResult r = run({"sleep", "30"}, {.timeout_s = 0.2});
  CHECK(r.timed_out);
}
