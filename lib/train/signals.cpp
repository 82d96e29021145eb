// SIGINT/SIGTERM for training, taken by one waiting thread (see StopSignals::Waiter).
#include "train/signals.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <ctime>
#include <thread>

namespace moe {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void on_signal(int sig) {
  if (g_stop_signal != 0 && sig == SIGINT) {
    // Second Ctrl-C: leave now (the last checkpoint is intact), on a line of its own below the
    // status line. write(2) and _exit are async-signal-safe; stdio is not.
    static const char kMessage[] = "\nmoe: interrupted twice: leaving without saving; the last checkpoint is intact\n";
    ssize_t ignored = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
    (void)ignored;
    _exit(130);
  }
  g_stop_signal = sig;
}

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

// SIGINT/SIGTERM are taken by one waiting thread (sigtimedwait), not by interrupting a compute
// thread: a signal frame pushed onto the stack of a thread inside a oneDNN JIT kernel corrupted
// the heap (reproduced: 3 of 40 runs aborted with "corrupted size vs. prev_size" in the step after
// a SIGINT). block_stop_signals() before any thread starts makes the waiter the only taker; the
// handler stays as the fallback for threads created earlier (library use).
class StopSignals::Waiter {
 public:
  struct sigaction old_int {
  }, old_term{};
  std::atomic<bool> done{false};
  std::thread waiter;
  Waiter() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    waiter = std::thread([this] {
      const sigset_t set = stop_signals();
      pthread_sigmask(SIG_BLOCK, &set, nullptr);
      const timespec tick{0, 50 * 1000 * 1000};
      while (!done.load()) {
        const int sig = sigtimedwait(&set, nullptr, &tick);
        if (sig > 0) on_signal(sig);
      }
    });
  }
  ~Waiter() {
    done.store(true);
    waiter.join();
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

StopSignals::StopSignals() : waiter_(std::make_unique<Waiter>()) {}
StopSignals::~StopSignals() = default;
int StopSignals::received() const { return int(g_stop_signal); }

}  // namespace moe
