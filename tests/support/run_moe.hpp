// Running the built `moe` binary (or any other program, such as mpirun or chromium) from the tests:
// an argument vector (no shell, no quoting), optional stdin text and environment, a time limit, and
// stdout and stderr captured apart. `run` / `run_moe` wait for the end; a `Process` is the handle
// kept by tests that signal, throttle or watch a running child. Both go through the same launching code.
#pragma once
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace moe_test {

inline const std::string kMoeBinary = MOE_BINARY;

struct RunOptions {
  // Every field has an initializer, so that callers can name only the ones they set, as in
  // run_moe(args, {.timeout_s = 60}), without -Wmissing-field-initializers.
  std::string stdin_text = "";  // written to the child's stdin, then end of file (empty: stdin is /dev/null)
  std::vector<std::pair<std::string, std::string>> env = {};  // set in the child, over the inherited values
  // A child still running after this long is killed with its process group and the test fails.
  // The default is CTest's per-test TIMEOUT: runs that must end quickly ask for less.
  double timeout_s = 600;
  std::string cwd = MOE_SOURCE_DIR;  // relative paths (configs/tiny.json) resolve from the project root
  bool ignore_sigxfsz = false;       // writes past RLIMIT_FSIZE then fail with EFBIG instead of killing
};

struct RunResult {
  int status = 0;  // raw wait status
  bool exited = false, signaled = false, timed_out = false;
  int code = -1;   // exit code when exited
  int signal = 0;  // terminating signal when signaled
  std::string out, err;
  double seconds = 0;  // wall time from start to end

  bool ok() const { return exited && code == 0; }
  // Both streams, for searches that do not care which of the two a message went to.
  std::string output() const { return out + err; }
  // How it ended, with the ends of stderr and stdout, for failure messages.
  std::string describe() const;
};

// A running child. The destructor kills and reaps it if nobody waited, so a failed REQUIRE between
// spawn and wait does not leave a trainer running.
class Process {
 public:
  explicit Process(const std::vector<std::string>& argv, const RunOptions& options = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // Whether the child has ended, without reaping it (its status stays for wait()).
  bool has_exited() const;
  void kill(int sig) const;
  // What the child has written so far; readable while it runs.
  std::string stdout_so_far() const;
  std::string stderr_so_far() const;
  // Waits for the end, at most options.timeout_s from the start, and collects the result.
  RunResult wait();
  // The same with a limit counted from now, for a child that was meant to run until signalled.
  RunResult wait(double limit_s);

 private:
  std::vector<std::string> argv_;
  RunOptions options_;
  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;  // anonymous files the child's stdout and stderr go to
  double start_ = 0;               // steady clock, seconds
  bool reaped_ = false;
};

// `argv[0]` is looked up in PATH.
RunResult run(const std::vector<std::string>& argv, const RunOptions& options = {});
// `moe ARGS...`
std::vector<std::string> moe_argv(std::vector<std::string> args);
// `moe ARGS...` on `ranks` MPI processes; ranks 0: without mpirun. The ranks oversubscribe the
// machine's cores and do not spin while waiting; --allow-run-as-root because CI runs as root.
std::vector<std::string> mpirun_argv(int ranks, std::vector<std::string> args);
RunResult run_moe(const std::vector<std::string>& args, const RunOptions& options = {});

}  // namespace moe_test
