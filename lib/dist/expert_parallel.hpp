// Expert parallelism across processes, as DeepSeek does across devices: every rank holds 1/N of
// the routed experts of each MoE layer (a contiguous block, ExpertShard) and routes its own tokens;
// each (token, expert) slot's input row travels to the rank that owns the expert with
// MPI_Alltoallv, the owner runs its experts over everything it received, and the outputs travel
// back the same way. Backward mirrors it: output gradients go to the owners, which accumulate
// their experts' weight gradients and send the input gradients back. Expert weight gradients are
// therefore complete on their owner and need no allreduce.
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.hpp"
#include "dist/dist.hpp"
#include "model/params.hpp"
#include "moe/moe_layer.hpp"

namespace moe {

class ExpertParallel : public RemoteExperts {
 public:
  // tokens: tokens per forward pass on this rank (B * T). Routing, device-limited routing included,
  // is the model's (ModelConfig::max_ranks_per_token), the same as on one process.
  ExpertParallel(Dist& dist, const ModelConfig& c, int64_t tokens);

  void forward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, int64_t moe_layer, const float* x,
               MoeSaved& s, int64_t N) override;
  void backward(ComputeContext& ctx, const ModelConfig& c, const MoeWeights& w, const MoeWeights& gw, int64_t moe_layer,
                const MoeSaved& s, const float* d_rows, float* dx_rows, int64_t N) override;

  // The shard of routed experts a rank holds, and the rank holding an expert.
  static ExpertShard shard_of(const ModelConfig& c, int rank, int ranks);
  static int owner_of(const ModelConfig& c, int64_t expert, int ranks);
  // Rows each rank computed in the last forward of each MoE layer (this rank's view: rows it
  // received), for the per-rank load of metrics.jsonl.
  int64_t rows_received(int64_t moe_layer) const { return layers_[size_t(moe_layer)].received; }

 private:
  struct Layer {
    std::vector<int64_t> send_rows, recv_rows;  // per rank, rows of this pass
    std::vector<int64_t> recv_counts;           // (ranks, local experts): rows from each rank per expert
    std::vector<int32_t> offsets;               // (local experts + 1) padded per-expert layout
    std::vector<int32_t> recv_to_row;           // received row -> row of the padded layout
    int64_t received = 0;
    Buffer<float> x_rows, g, u, a;  // saved for backward, padded layout
  };
  Dist& dist_;
  int64_t local_experts_ = 0, first_expert_ = 0, row_align_ = 1, capacity_ = 0;
  std::vector<Layer> layers_;
  std::vector<int64_t> count_send_, count_recv_;  // (ranks * local experts) per-expert counts
  std::vector<int64_t> cursor_;
  Buffer<float> recv_, back_, y_rows_, ffn_scratch_;  // (capacity, D) / scratch, not saved
};

}  // namespace moe
