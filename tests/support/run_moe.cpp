// The launching code behind run(), run_moe() and Process: fork and execve with stdin, stdout and
// stderr on anonymous in-memory files, so a child never blocks on a full pipe however long it runs
// or whoever forgets to read, and its output stays readable while it runs and after it ends.
#include "run_moe.hpp"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>

extern char** environ;

namespace moe_test {
namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int anonymous_file(const char* name) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC);
  INFO("memfd_create: " << ::strerror(errno));
  REQUIRE(fd >= 0);
  return fd;
}

std::string read_all(int fd) {
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) return {};
  std::string text(size_t(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + done, text.size() - done, off_t(done));
    if (n <= 0) break;
    done += size_t(n);
  }
  text.resize(done);
  return text;
}

// argv[0] as execvp would find it, resolved before fork: after fork only async-signal-safe calls
// are allowed, and the test process runs OpenMP threads.
std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // execve fails with ENOENT; the child reports it on stderr
}

// The inherited environment, OMP_WAIT_POLICY=PASSIVE unless set (OpenMP spin-waiting on a shared
// 2-core machine was measured to make runs several times slower; results do not depend on it),
// then the caller's additions.
std::vector<std::string> child_environment(const RunOptions& options) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  auto set = [&](const std::string& name, const std::string& value, bool overwrite) {
    for (std::string& entry : env)
      if (entry.compare(0, name.size() + 1, name + "=") == 0) {
        if (overwrite) entry = name + "=" + value;
        return;
      }
    env.push_back(name + "=" + value);
  };
  set("OMP_WAIT_POLICY", "PASSIVE", false);
  for (const auto& [name, value] : options.env) set(name, value, true);
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> p;
  for (std::string& s : strings) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

// In the child, between fork and exec: only async-signal-safe calls.
[[noreturn]] void exec_child(int in_fd, int out_fd, int err_fd, const RunOptions& options, const char* program,
                             char* const* argv, char* const* envp) {
  // Its own process group, so a timeout kills whatever it started too (mpirun's ranks, browser helpers).
  ::setpgid(0, 0);
  if (::dup2(in_fd, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) ::_exit(127);
  if (::chdir(options.cwd.c_str()) != 0) {
    const char message[] = "run_moe: cannot chdir to the working directory\n";
    (void)!::write(2, message, sizeof message - 1);
    ::_exit(127);
  }
  // Catch2 installs handlers and a test may ignore or block signals: the child starts from the
  // defaults, as a program started from a shell would.
  for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGSEGV, SIGABRT, SIGFPE, SIGILL, SIGBUS, SIGPIPE, SIGCHLD, SIGXFSZ})
    ::signal(sig, SIG_DFL);
  if (options.ignore_sigxfsz) ::signal(SIGXFSZ, SIG_IGN);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(program, argv, envp);
  const char message[] = "run_moe: cannot execute ";
  (void)!::write(2, message, sizeof message - 1);
  (void)!::write(2, program, ::strlen(program));
  (void)!::write(2, "\n", 1);
  ::_exit(127);  // the shell's status for a command that could not run
}

}  // namespace

std::string RunResult::describe() const {
  std::ostringstream s;
  s << (timed_out  ? std::string("timed out, killed")
        : exited   ? "exit " + std::to_string(code)
        : signaled ? "signal " + std::to_string(signal)
                   : "?")
    << " after " << seconds << " s\n--- stderr (end) ---\n"
    << err.substr(err.size() > 1500 ? err.size() - 1500 : 0) << "--- stdout (end) ---\n"
    << out.substr(out.size() > 800 ? out.size() - 800 : 0);
  return s.str();
}

Process::Process(const std::vector<std::string>& argv, const RunOptions& options) : argv_(argv), options_(options) {
  REQUIRE(!argv.empty());
  const std::string program = find_program(argv[0]);
  std::vector<std::string> args = argv, env = child_environment(options);
  const std::vector<char*> arg_pointers = pointers(args), env_pointers = pointers(env);

  out_fd_ = anonymous_file("moe_test_stdout");
  err_fd_ = anonymous_file("moe_test_stderr");
  int in_fd = -1;
  if (options.stdin_text.empty()) {
    in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  } else {
    in_fd = anonymous_file("moe_test_stdin");
    for (size_t done = 0; done < options.stdin_text.size();) {
      const ssize_t n = ::write(in_fd, options.stdin_text.data() + done, options.stdin_text.size() - done);
      REQUIRE(n > 0);
      done += size_t(n);
    }
    ::lseek(in_fd, 0, SEEK_SET);
  }
  REQUIRE(in_fd >= 0);

  start_ = now_s();
  pid_ = ::fork();
  if (pid_ == 0)
    exec_child(in_fd, out_fd_, err_fd_, options_, program.c_str(), arg_pointers.data(), env_pointers.data());
  ::close(in_fd);
  INFO("fork: " << ::strerror(errno));
  REQUIRE(pid_ > 0);
  ::setpgid(pid_, pid_);  // also here, so that the group exists before a kill however fast we are
}

Process::~Process() {
  if (pid_ > 0 && !reaped_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
  if (err_fd_ >= 0) ::close(err_fd_);
}

bool Process::has_exited() const {
  if (reaped_) return true;
  siginfo_t info{};
  return ::waitid(P_PID, id_t(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid_;
}

void Process::kill(int sig) const { ::kill(pid_, sig); }

std::string Process::stdout_so_far() const { return read_all(out_fd_); }
std::string Process::stderr_so_far() const { return read_all(err_fd_); }

RunResult Process::wait() { return wait(start_ + options_.timeout_s - now_s()); }

RunResult Process::wait(double limit_s) {
  REQUIRE(!reaped_);
  const double deadline = now_s() + limit_s;
  RunResult r;
  for (;;) {
    const pid_t done = ::waitpid(pid_, &r.status, WNOHANG);
    if (done == pid_) break;
    if (done != 0) FAIL("waitpid: " << ::strerror(errno));
    if (now_s() > deadline) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &r.status, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  reaped_ = true;
  r.seconds = now_s() - start_;
  r.exited = WIFEXITED(r.status);
  r.signaled = WIFSIGNALED(r.status);
  r.code = r.exited ? WEXITSTATUS(r.status) : -1;
  r.signal = r.signaled ? WTERMSIG(r.status) : 0;
  r.out = read_all(out_fd_);
  r.err = read_all(err_fd_);
  if (r.timed_out) {
    std::ostringstream command;
    for (const std::string& a : argv_) command << a << ' ';
    // A hang is always a failure; the caller's own checks still run and report what was seen.
    FAIL_CHECK("still running " << r.seconds << " s after its start, killed: " << command.str() << "\n"
                                << r.describe());
  }
  return r;
}

RunResult run(const std::vector<std::string>& argv, const RunOptions& options) {
  Process process(argv, options);
  return process.wait();
}

std::vector<std::string> moe_argv(std::vector<std::string> args) {
  args.insert(args.begin(), kMoeBinary);
  return args;
}

std::vector<std::string> mpirun_argv(int ranks, std::vector<std::string> args) {
  if (ranks == 0) return moe_argv(std::move(args));
  std::vector<std::string> argv = {"mpirun", "--allow-run-as-root",     "--oversubscribe", "-np", std::to_string(ranks),
                                   "-x",     "OMP_WAIT_POLICY=PASSIVE", kMoeBinary};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

RunResult run_moe(const std::vector<std::string>& args, const RunOptions& options) {
  return run(moe_argv(args), options);
}

}  // namespace moe_test
