#include "moe/dispatch.hpp"

#include <algorithm>
#include <vector>

#include <omp.h>

#include "core/threads.hpp"

namespace moe {

void sort_by_expert(const int32_t* expert, int64_t slots, int64_t E, int32_t align, int32_t* counts, int32_t* offsets,
                    int32_t* cursor, int32_t* slot_row, int32_t* row_slot) {
  std::fill_n(counts, E, 0);
  for (int64_t j = 0; j < slots; ++j) ++counts[expert[j]];
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + (counts[e] + align - 1) / align * align;
  std::fill_n(row_slot, offsets[E], -1);
  std::copy_n(offsets, E, cursor);
  for (int64_t j = 0; j < slots; ++j) {
    const int32_t row = cursor[expert[j]]++;
    slot_row[j] = row;
    row_slot[row] = int32_t(j);
  }
}

namespace {

// The experts with rows, split into those that run alone on every thread (more than 1/threads of
// all rows) and the rest, largest first.
struct Schedule {
  std::vector<int32_t> alone, shared;
};

const Schedule& schedule(const int32_t* offsets, int64_t E) {
  thread_local Schedule s;  // capacity kept across calls: no allocation per step
  s.alone.clear(), s.shared.clear();
  const int64_t total = offsets[E], threads = omp_get_max_threads();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    (threads > 1 && rows * threads > total ? s.alone : s.shared).push_back(int32_t(e));
  }
  std::stable_sort(s.shared.begin(), s.shared.end(), [offsets](int32_t a, int32_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  return s;
}

// Runs `one(e)` for every expert with rows: the big ones in turn outside any parallel region (their
// GEMMs and elementwise ops then use every thread), the rest spread over the threads.
template <class One>
void for_each_expert(const int32_t* offsets, int64_t E, One one) {
  const Schedule& s = schedule(offsets, E);
  for (const int32_t e : s.alone) one(e);
  ParallelErrors errors;
  const int64_t n = int64_t(s.shared.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) errors.run([&] { one(s.shared[size_t(i)]); });
  errors.rethrow();
}

}  // namespace

void experts_forward(ComputeContext& ctx, const ExpertStack& w, const int32_t* offsets, int64_t E, const float* x_rows,
                     float* y_rows, float* g, float* u, float* a) {
  const int64_t D = w.D, Im = w.Im;
  for_each_expert(offsets, E, [&](int64_t e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    ffn_forward(ctx, w.weights(e), x_rows + r0 * D, y_rows + r0 * D, {g + r0 * Im, u + r0 * Im, a + r0 * Im}, rows, D,
                Im);
  });
}

void experts_backward(ComputeContext& ctx, const ExpertStack& w, const ExpertStack& grads, const int32_t* offsets,
                      int64_t E, const float* x_rows, const float* d_rows, float* dx_rows, float* g, float* u, float* a,
                      float* scratch) {
  const int64_t D = w.D, Im = w.Im;
  for_each_expert(offsets, E, [&](int64_t e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - r0;
    ffn_backward(ctx, w.weights(e), grads.grads(e), x_rows + r0 * D, d_rows + r0 * D, dx_rows + r0 * D,
                 {g + r0 * Im, u + r0 * Im, a + r0 * Im}, scratch + 2 * r0 * Im, rows, D, Im,
                 /*accumulate_dx=*/false);
  });
}

}  // namespace moe
