// The one expert dispatch shared by training (moe_layer), expert parallelism (dist/expert_parallel)
// and decoding (infer/decode): the counting sort that lays the (token, expert) slots out by expert,
// and the per-expert SwiGLU over those rows, scheduled by rows so that a skewed load (one expert
// holding most rows, as at the start of training) keeps every thread busy.
#pragma once
#include <cstdint>

#include "core/compute.hpp"
#include "ops/swiglu.hpp"

namespace moe {

// Routed experts stacked along their outermost dimension (weights or their gradients): expert e's
// gate and up (Im, D) and down (D, Im) start at e times their size.
struct ExpertStack {
  float* gate = nullptr;
  float* up = nullptr;
  float* down = nullptr;
  int64_t D = 0, Im = 0;
  FfnWeights weights(int64_t e) const { return {gate + e * Im * D, up + e * Im * D, down + e * D * Im}; }
  FfnGrads grads(int64_t e) const { return {gate + e * Im * D, up + e * Im * D, down + e * D * Im}; }
};

// Counting sort of the slots j (j = token·K + k) by expert[j], in slot order within an expert; each
// expert's block starts at a multiple of `align` and is padded to one. Writes counts (E, the load),
// offsets (E + 1), slot_row (slots: the row of each slot) and row_slot (offsets[E]: the slot of each
// row, -1 for padding); cursor (E) is scratch.
void sort_by_expert(const int32_t* expert, int64_t slots, int64_t E, int32_t align, int32_t* counts, int32_t* offsets,
                    int32_t* cursor, int32_t* slot_row, int32_t* row_slot);

// The experts' SwiGLU over their rows [offsets[e], offsets[e + 1]) of x_rows -> y_rows, keeping g, u,
// a (rows × Im each, same rows) for backward. Work is split by rows, not by experts: an expert
// holding more than 1/threads of all rows runs alone with every thread in its GEMMs (one expert per
// thread would leave the others idle while it runs), the others one per thread, largest first
// (longest-processing-time order evens the threads' shares). Deterministic for a given thread count.
void experts_forward(ComputeContext& ctx, const ExpertStack& w, const int32_t* offsets, int64_t E, const float* x_rows,
                     float* y_rows, float* g, float* u, float* a);
// d_rows (d loss / d y_rows) -> dx_rows written; weight gradients accumulate into grads. scratch:
// 2 · offsets[E] · Im floats.
void experts_backward(ComputeContext& ctx, const ExpertStack& w, const ExpertStack& grads, const int32_t* offsets,
                      int64_t E, const float* x_rows, const float* d_rows, float* dx_rows, float* g, float* u, float* a,
                      float* scratch);

}  // namespace moe
