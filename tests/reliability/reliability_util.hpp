// Helpers of the reliability tests: temporary directories, running the built `moe` binary as a
// child process (with a time limit, stdout and stderr captured apart), directory snapshots, and a
// micro model config that trains in milliseconds.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace moe_rel {

namespace fs = std::filesystem;
using nlohmann::json;

inline const std::string kBinary = MOE_BINARY;
inline const std::string kShakespeare = MOE_SHARED_DATA "/tinyshakespeare.txt";

// A fresh directory under /tmp, removed with everything in it at the end of the test.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/moe_reliability_XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out << bytes;
  REQUIRE(out);
}

// Every file and directory below `dir` (relative path -> contents; directories map to "<dir>").
inline std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = fs::relative(it->path(), dir).string();
    if (it->is_directory() && !it->is_symlink()) files[rel] = "<dir>";
    else files[rel] = read_bytes(it->path().string());
  }
  return files;
}

// Names of temporary or half-written files (`*.tmp<pid>` of atomic writes, `.pending` saves).
inline std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp") != std::string::npos || name == ".pending") found.push_back(e.path().string());
  }
  return found;
}

struct Result {
  int status = 0;
  bool exited = false, signaled = false;
  int code = -1;  // exit code when exited
  std::string out, err;
  double seconds = 0;
  std::string describe() const {
    std::ostringstream s;
    s << (exited ? "exit " + std::to_string(code) : signaled ? "signal " + std::to_string(WTERMSIG(status)) : "?")
      << " after " << seconds << " s\n--- stderr ---\n"
      << err.substr(err.size() > 1500 ? err.size() - 1500 : 0) << "--- stdout (end) ---\n"
      << out.substr(out.size() > 800 ? out.size() - 800 : 0);
    return s.str();
  }
};

// Starts argv[0] (searched in PATH) from the project root with stdout and stderr sent to files.
// OMP_WAIT_POLICY=PASSIVE keeps OpenMP from spin-waiting on the shared 2-core machine.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path,
                   bool ignore_sigxfsz = false) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0 || ::chdir(MOE_SOURCE_DIR) != 0) ::_exit(120);
    ::dup2(in, 0), ::dup2(out, 1), ::dup2(err, 2);
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    // Catch2 may have installed handlers; the child starts from the defaults (and unblocked).
    for (int sig : {SIGINT, SIGTERM, SIGSEGV, SIGABRT, SIGFPE, SIGILL, SIGXFSZ}) ::signal(sig, SIG_DFL);
    if (ignore_sigxfsz) ::signal(SIGXFSZ, SIG_IGN);  // writes past RLIMIT_FSIZE then fail with EFBIG
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execvp(args[0], args.data());
    ::_exit(121);
  }
  return pid;
}

// Waits for `pid`; a child still running after `limit_s` is killed and the test fails.
inline int wait_for(pid_t pid, double limit_s) {
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    REQUIRE(r == 0);
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("process " << pid << " still running after " << limit_s << " s; killed");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

inline Result collect(int status, const std::string& out_path, const std::string& err_path, double seconds) {
  Result r;
  r.status = status;
  r.exited = WIFEXITED(status);
  r.signaled = WIFSIGNALED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  r.seconds = seconds;
  std::remove(out_path.c_str());
  std::remove(err_path.c_str());
  return r;
}

// Runs argv to completion; stdout and stderr pass through files in `log_dir`, removed afterwards.
inline Result run(const std::vector<std::string>& argv, const std::string& log_dir, double limit_s = 60) {
  static int counter = 0;
  const std::string base = log_dir + "/log_" + std::to_string(++counter);
  const std::string out_path = base + ".out", err_path = base + ".err";
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = spawn(argv, out_path, err_path);
  const int status = wait_for(pid, limit_s);
  return collect(status, out_path, err_path, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// `moe ARGS...`
inline std::vector<std::string> moe_cmd(std::vector<std::string> args) {
  args.insert(args.begin(), kBinary);
  return args;
}

// A model small enough that a training step takes milliseconds and a checkpoint ~450 KB.
inline json micro_config() {
  return json{{"model",
               {{"vocab_size", 256},
                {"hidden_size", 32},
                {"num_hidden_layers", 2},
                {"num_attention_heads", 2},
                {"num_key_value_heads", 1},
                {"intermediate_size", 64},
                {"moe_intermediate_size", 16},
                {"first_k_dense_replace", 1},
                {"n_shared_experts", 1},
                {"n_routed_experts", 4},
                {"num_experts_per_tok", 2},
                {"n_group", 1},
                {"topk_group", 1},
                {"max_position_embeddings", 64}}},
              {"train",
               {{"steps", 4},
                {"batch", 2},
                {"seq", 32},
                {"eval_every", 0},
                {"eval_tokens", 64},
                {"save_every", 0},
                {"log_every", 1},
                {"warmup", 1},
                {"threads", 2}}}};
}

inline std::string write_json(const std::string& path, const json& j) {
  write_bytes(path, j.dump(2) + "\n");
  return path;
}

inline size_t count_substr(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

inline json read_json(const std::string& path) {
  const std::string text = read_bytes(path);
  INFO(path);
  REQUIRE(!text.empty());
  return json::parse(text);
}

}  // namespace moe_rel
