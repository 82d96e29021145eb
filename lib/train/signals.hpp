// Stopping `moe train` cleanly on SIGINT/SIGTERM: the signal is noted, the step in progress
// finishes, a checkpoint is written, and the run can be resumed. A second Ctrl-C leaves at once.
#pragma once
#include <memory>

namespace moe {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards: call it
// first thing (before any OpenMP, oneDNN or MPI thread exists) in a process that will train, so
// that only the StopSignals waiting thread receives them.
void block_stop_signals();

// While it lives, SIGINT/SIGTERM are recorded instead of ending the process.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The signal received since construction (SIGINT or SIGTERM), or 0.
  int received() const;

 private:
  class Waiter;
  std::unique_ptr<Waiter> waiter_;
};

}  // namespace moe
