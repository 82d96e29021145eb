// The whole model's tensors moved between rank 0 and the ranks that hold them, one tensor at a time,
// so that saving and resuming never need a whole model (or whole Adam moments) on any rank: rank 0
// writes or reads the checkpoint files; a replicated tensor is its own copy when saving and is
// broadcast when resuming; a routed expert's tensor comes from, or goes to, the one rank whose
// expert block holds it. One process, or data parallelism, is the case where every tensor is
// replicated (nothing is sent when saving).
#pragma once
#include <cstdint>
#include <vector>

#include "core/arena.hpp"
#include "dist/dist.hpp"
#include "model/model.hpp"

namespace moe {

class TensorStream {
 public:
  // `model`: this rank's model, whole or (expert parallelism) its block of ExpertParallel::shard_of.
  TensorStream(Dist& dist, const Model& model);

  // The whole model's tensor list: the order of every call below, on every rank.
  const ParamLayout& whole() const { return whole_; }
  // Floats of the largest tensor: the staging buffer rank 0 holds for tensors it does not.
  int64_t staging_floats() const { return staging_.size(); }

  // Saving (collective). On rank 0, the values of whole tensor i in `arena` (an arena with this
  // rank's layout: the weights or an Adam moment): its own, or those of the rank holding it,
  // received into the staging buffer (valid until the next call). Elsewhere the holder sends its
  // values and every rank but 0 gets null.
  const float* to_root(size_t i, const float* arena);

  // Resuming, in two halves. slot(i, arena): where rank 0 puts whole tensor i's values — its own
  // place in `arena`, or the staging buffer when another rank holds the tensor; null elsewhere.
  // from_root(i, arena) (collective) then brings those values to every rank holding the tensor,
  // into its arena.
  float* slot(size_t i, float* arena);
  void from_root(size_t i, float* arena);

 private:
  Dist& dist_;
  ParamLayout whole_;
  std::vector<int> holder_;     // per whole tensor: -1 on every rank, else the one rank holding it
  std::vector<int64_t> local_;  // per whole tensor: its offset in this rank's arena, -1 when not here
  Buffer<float> staging_;       // rank 0 only: one tensor another rank holds
};

}  // namespace moe
