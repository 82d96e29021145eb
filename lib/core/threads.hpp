// Thread helpers. Reductions are summed in a fixed order so results are bit-identical from run
// to run with the same thread count (needed for exact --resume), unlike `reduction(+:)`.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>

#include <omp.h>

namespace moe {

constexpr int kMaxThreads = 1024;

// An exception may not leave an OpenMP region: the runtime calls std::terminate and the user sees
// an abort instead of the one-line error. Work inside a region that can throw (a oneDNN error in a
// GEMM, an allocation) runs through run(); the first exception is kept (later ones are dropped,
// and the remaining iterations are skipped), and rethrow() after the region raises it on the
// calling thread. Not for regions with barriers: a thread that stopped early would leave the
// others waiting at the barrier.
class ParallelErrors {
 public:
  template <class Work>
  void run(Work&& work) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      work();
    } catch (...) {
#pragma omp critical(moe_parallel_errors)
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

// Σ_{i<n} term(i), each thread summing one contiguous block, blocks added in thread order.
template <class Term>
double parallel_sum(int64_t n, const Term& term) {
  double partial[kMaxThreads] = {};
  int used = 1;
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), id = omp_get_thread_num();
#pragma omp single
    used = threads;
    const int64_t lo = n * id / threads, hi = n * (id + 1) / threads;
    double sum = 0.0;
    for (int64_t i = lo; i < hi; ++i) sum += term(i);
    partial[id] = sum;
  }
  double total = 0.0;
  for (int t = 0; t < used; ++t) total += partial[t];
  return total;
}

}  // namespace moe
