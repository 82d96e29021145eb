// Thread helpers. Reductions are summed in a fixed order so results are bit-identical from run
// to run with the same thread count (needed for exact --resume), unlike `reduction(+:)`.
#pragma once
#include <cstdint>

#include <omp.h>

namespace moe {

constexpr int kMaxThreads = 1024;

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
