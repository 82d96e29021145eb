#include "dist/expert_parallel.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "moe/dispatch.hpp"

namespace moe {

namespace {

// This rank's experts as a stack: local expert e is global expert first + e.
ExpertStack local_stack(const MoeWeights& w, const ModelConfig& c) {
  return {w.experts_gate, w.experts_up, w.experts_down, c.hidden_size, c.moe_intermediate_size};
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
  const int64_t D = c.hidden_size;
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
    L.offsets[size_t(e + 1)] = int32_t(L.offsets[size_t(e)] + (rows + row_align_ - 1) / row_align_ * row_align_);
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

  experts_forward(ctx, local_stack(w, c), L.offsets.data(), El, L.x_rows.data(), y_rows_.data(), L.g.data(), L.u.data(),
                  L.a.data());
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(back_.data() + r * D, y_rows_.data() + int64_t(L.recv_to_row[size_t(r)]) * D, sizeof(float) * D);
  // Outputs return to the slots' ranks, arriving in send order.
  dist_.alltoallv(back_.data(), L.recv_rows.data(), s.y_rows, L.send_rows.data(), D);
}

void ExpertParallel::backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw,
                              int64_t moe_layer, const MoeSaved&, const float* d_rows, float* dx_rows, int64_t) {
  const int64_t El = local_experts_, D = c.hidden_size;
  Layer& L = layers_[size_t(moe_layer)];
  // Output gradients to the owners, into the padded layout (padding rows carry none).
  dist_.alltoallv(d_rows, L.send_rows.data(), recv_.data(), L.recv_rows.data(), D);
  float* d_owner = y_rows_.data();
  std::memset(d_owner, 0, sizeof(float) * size_t(L.offsets[size_t(El)] * D));
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(d_owner + int64_t(L.recv_to_row[size_t(r)]) * D, recv_.data() + r * D, sizeof(float) * D);
  float* dx_owner = recv_.data();  // the received gradients now live in d_owner
  experts_backward(ctx, local_stack(w, c), local_stack(gw, c), L.offsets.data(), El, L.x_rows.data(), d_owner, dx_owner,
                   L.g.data(), L.u.data(), L.a.data(), ffn_scratch_.data());
  for (int64_t r = 0; r < L.received; ++r)
    std::memcpy(back_.data() + r * D, dx_owner + int64_t(L.recv_to_row[size_t(r)]) * D, sizeof(float) * D);
  dist_.alltoallv(back_.data(), L.recv_rows.data(), dx_rows, L.send_rows.data(), D);
}

}  // namespace moe
