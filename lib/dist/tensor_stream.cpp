// Saving and resuming one tensor at a time across ranks: who holds each tensor, and the moves.
#include "dist/tensor_stream.hpp"

#include <algorithm>
#include <unordered_map>

#include "core/error.hpp"
#include "dist/expert_parallel.hpp"

namespace moe {

TensorStream::TensorStream(Dist& dist, const Model& model) : dist_(dist), whole_(make_layout(model.config)) {
  const ModelConfig& c = model.config;
  const bool sharded = !model.shard.whole(c);
  if (sharded) {
    const ExpertShard expected = ExpertParallel::shard_of(c, dist.rank(), dist.size());
    check(model.shard.first == expected.first && model.shard.size(c) == expected.size(c),
          "internal: this rank's experts are not its block of the job");
  }
  std::unordered_map<std::string, int64_t> offset_here;
  for (const TensorSpec& spec : model.layout.tensors) offset_here.emplace(spec.name, spec.offset);
  int64_t staging = 0;
  for (const TensorSpec& spec : whole_.tensors) {
    const bool routed = sharded && spec.role == TensorRole::routed_expert;
    const int holder = routed ? ExpertParallel::owner_of(c, spec.expert, dist.size()) : -1;
    const auto here = offset_here.find(spec.name);
    check((here != offset_here.end()) == (holder < 0 || holder == dist.rank()),
          "internal: tensor " + spec.name + " is not where its expert block says");
    holder_.push_back(holder);
    local_.push_back(here == offset_here.end() ? -1 : here->second);
    if (holder > 0) staging = std::max(staging, spec.numel);
  }
  if (dist.root()) staging_.resize(staging);
}

const float* TensorStream::to_root(size_t i, const float* arena) {
  const int holder = holder_[i];
  const int64_t n = whole_.tensors[i].numel;
  if (dist_.root()) {
    if (holder <= 0) return arena + local_[i];
    dist_.recv(staging_.data(), n, holder);
    return staging_.data();
  }
  if (holder == dist_.rank()) dist_.send(arena + local_[i], n, 0);
  return nullptr;
}

float* TensorStream::slot(size_t i, float* arena) {
  if (!dist_.root()) return nullptr;
  return holder_[i] <= 0 ? arena + local_[i] : staging_.data();
}

void TensorStream::from_root(size_t i, float* arena) {
  const int holder = holder_[i];
  const int64_t n = whole_.tensors[i].numel;
  if (holder < 0) {
    dist_.broadcast(arena + local_[i], n);  // a job of one: nothing to do
  } else if (holder > 0) {
    if (dist_.root()) dist_.send(staging_.data(), n, holder);
    if (holder == dist_.rank()) dist_.recv(arena + local_[i], n, 0);
  }
}

}  // namespace moe
