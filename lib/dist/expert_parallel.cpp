#include "dist/expert_parallel.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.hpp"
#include "core/threads.hpp"
#include "ops/swiglu.hpp"

namespace moe {

namespace {

FfnWeights expert_ffn(const MoeWeights& w, int64_t e, int64_t D, int64_t Im) {
  return {w.experts_gate + e * Im * D, w.experts_up + e * Im * D, w.experts_down + e * D * Im};
}

// Local experts by descending rows, for the same largest-first dynamic schedule as moe_layer.
void largest_first(const std::vector<int64_t>& offsets, std::vector<int64_t>& order) {
  order.resize(offsets.size() - 1);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return offsets[size_t(a) + 1] - offsets[size_t(a)] > offsets[size_t(b) + 1] - offsets[size_t(b)];
  });
}

}  // namespace

ExpertShard ExpertParallel::shard_of(const ModelConfig& c, int rank, int ranks) {
  const int64_t per = c.n_routed_experts / ranks;
  return {rank * per, per};
}

int ExpertParallel::owner_of(const ModelConfig& c, int64_t expert, int ranks) {
  return int(expert / (c.n_routed_experts / ranks));
}

ExpertParallel::ExpertParallel(Dist& dist, const ModelConfig& c, int64_t tokens) : dist_(dist) {
  const int64_t ranks = dist.size(), E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t D = c.hidden_size, Im = c.moe_intermediate_size;
  check(E % ranks == 0, "internal: experts not divisible by ranks");
  local_experts_ = E / ranks;
  first_expert_ = dist.rank() * local_experts_;
  // Padding to the alignment the one-process layer would use for the whole job's tokens.
  row_align_ = expert_row_align(c, tokens * ranks);
  // Worst case: every slot of every rank that can reach this rank's experts (a token uses each
  // expert at most once), plus the padding of every local expert.
  capacity_ = tokens * ranks * std::min(K, local_experts_) + local_experts_ * (row_align_ - 1);
  layers_.resize(size_t(c.num_moe_layers()));
  for (Layer& l : layers_) {
    l.x_rows.resize(capacity_ * D), l.g.resize(capacity_ * Im), l.u.resize(capacity_ * Im), l.a.resize(capacity_ * Im);
    l.recv_to_row.resize(size_t(tokens * ranks * std::min(K, local_experts_)));
  }
  recv_.resize(capacity_ * D), back_.resize(capacity_ * D), y_rows_.resize(capacity_ * D);
  ffn_scratch_.resize(2 * capacity_ * Im);
  count_send_.resize(size_t(E)), count_recv_.resize(size_t(E));
}

void ExpertParallel::forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, int64_t moe_layer,
                             const float* x, MoeSaved& s, int64_t N) {
  const int64_t ranks = dist_.size(), E = c.n_routed_experts, K = c.num_experts_per_tok, El = local_experts_;
  const int64_t D = c.hidden_size, Im = c.moe_intermediate_size;
  Layer& L = layers_[size_t(moe_layer)];

  // Slots in send order: by global expert (so by owner rank), token order within an expert.
  std::fill_n(s.counts, E, 0);
  for (int64_t j = 0; j < N * K; ++j) ++s.counts[s.expert[j]];
  cursor_.assign(size_t(E), 0);
  for (int64_t e = 1; e < E; ++e) cursor_[size_t(e)] = cursor_[size_t(e - 1)] + s.counts[e - 1];
  float* send = back_.data();  // free until the outputs come back
  for (int64_t j = 0; j < N * K; ++j) {
    const int64_t row = cursor_[size_t(s.expert[j])]++;
    s.slot_row[j] = int32_t(row);
    std::memcpy(send + row * D, x + (j / K) * D, sizeof(float) * D);
  }
  L.send_rows.assign(size_t(ranks), 0);
  for (int64_t e = 0; e < E; ++e) {
    count_send_[size_t(e)] = s.counts[e];
    L.send_rows[size_t(e / El)] += s.counts[e];
  }
  // Per-expert counts first (each rank learns what arrives for each of its experts), then rows.
  dist_.alltoall(count_send_.data(), count_recv_.data(), El);
  L.recv_counts.assign(count_recv_.begin(), count_recv_.end());
  L.recv_rows.assign(size_t(ranks), 0);
  L.received = 0;
  for (int64_t q = 0; q < ranks; ++q)
    for (int64_t e = 0; e < El; ++e) L.recv_rows[size_t(q)] += L.recv_counts[size_t(q * El + e)];
  for (int64_t q = 0; q < ranks; ++q) L.received += L.recv_rows[size_t(q)];
  check(L.received <= int64_t(L.recv_to_row.size()), "internal: expert-parallel receive buffer too small");
  dist_.alltoallv(send, L.send_rows.data(), recv_.data(), L.recv_rows.data(), D);

  // The owner's layout: each local expert's rows contiguous (from every rank, in rank order),
  // padded to the row alignment with zero rows.
  L.offsets.assign(size_t(El + 1), 0);
  for (int64_t e = 0; e < El; ++e) {
    int64_t rows = 0;
    for (int64_t q = 0; q < ranks; ++q) rows += L.recv_counts[size_t(q * El + e)];
    L.offsets[size_t(e + 1)] = L.offsets[size_t(e)] + (rows + row_align_ - 1) / row_align_ * row_align_;
  }
  check(L.offsets[size_t(El)] <= capacity_, "internal: expert-parallel layout exceeds its capacity");
  std::vector<int64_t>& cursor = cursor_;
  cursor.assign(L.offsets.begin(), L.offsets.end() - 1);
  std::memset(L.x_rows.data(), 0, sizeof(float) * size_t(L.offsets[size_t(El)] * D));
  int64_t i = 0;
  for (int64_t q = 0; q < ranks; ++q)
    for (int64_t e = 0; e < El; ++e)
      for (int64_t r = 0; r < L.recv_counts[size_t(q * El + e)]; ++r, ++i) {
        const int64_t row = cursor[size_t(e)]++;
        L.recv_to_row[size_t(i)] = int32_t(row);
        std::memcpy(L.x_rows.data() + row * D, recv_.data() + i * D, sizeof(float) * D);
      }

  largest_first(L.offsets, order_);
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < El; ++k) {
    const int64_t e = order_[size_t(k)], r0 = L.offsets[size_t(e)], rows = L.offsets[size_t(e + 1)] - r0;
    if (rows == 0) continue;
    errors.run([&] {
      ffn_forward(ctx, expert_ffn(w, e, D, Im), L.x_rows.data() + r0 * D, y_rows_.data() + r0 * D,
                  {L.g.data() + r0 * Im, L.u.data() + r0 * Im, L.a.data() + r0 * Im}, rows, D, Im);
    });
  }
  errors.rethrow();
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(back_.data() + r * D, y_rows_.data() + int64_t(L.recv_to_row[size_t(r)]) * D, sizeof(float) * D);
  // Outputs return to the slots' ranks, arriving in send order.
  dist_.alltoallv(back_.data(), L.recv_rows.data(), s.y_rows, L.send_rows.data(), D);
}

void ExpertParallel::backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw,
                              int64_t moe_layer, const MoeSaved&, const float* d_rows, float* dx_rows, int64_t) {
  const int64_t El = local_experts_, D = c.hidden_size, Im = c.moe_intermediate_size;
  Layer& L = layers_[size_t(moe_layer)];
  // Output gradients to the owners, into the padded layout (padding rows carry none).
  dist_.alltoallv(d_rows, L.send_rows.data(), recv_.data(), L.recv_rows.data(), D);
  float* d_owner = y_rows_.data();
  std::memset(d_owner, 0, sizeof(float) * size_t(L.offsets[size_t(El)] * D));
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(d_owner + int64_t(L.recv_to_row[size_t(r)]) * D, recv_.data() + r * D, sizeof(float) * D);
  float* dx_owner = recv_.data();  // the received gradients now live in d_owner
  largest_first(L.offsets, order_);
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < El; ++k) {
    const int64_t e = order_[size_t(k)], r0 = L.offsets[size_t(e)], rows = L.offsets[size_t(e + 1)] - r0;
    if (rows == 0) continue;
    const FfnGrads grads{gw.experts_gate + e * Im * D, gw.experts_up + e * Im * D, gw.experts_down + e * D * Im};
    errors.run([&] {
      ffn_backward(ctx, expert_ffn(w, e, D, Im), grads, L.x_rows.data() + r0 * D, d_owner + r0 * D, dx_owner + r0 * D,
                   {L.g.data() + r0 * Im, L.u.data() + r0 * Im, L.a.data() + r0 * Im},
                   ffn_scratch_.data() + 2 * r0 * Im, rows, D, Im, /*accumulate_dx=*/false);
    });
  }
  errors.rethrow();
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(back_.data() + r * D, dx_owner + int64_t(L.recv_to_row[size_t(r)]) * D, sizeof(float) * D);
  dist_.alltoallv(back_.data(), L.recv_rows.data(), dx_rows, L.send_rows.data(), D);
}

}  // namespace moe
