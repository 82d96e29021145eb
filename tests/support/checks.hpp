// Shared Catch2 helpers: an expression must throw moe::Error with a message matching `matcher`, whole
// files read and written as bytes, and the small model configuration the checkpoint tests build on.
#pragma once
#include <fstream>
#include <iterator>
#include <string>

#include <catch2/catch.hpp>

#include "config/model_config.hpp"
#include "core/error.hpp"

#define REQUIRE_MOE_ERROR(expr, matcher) \
  do {                                   \
    REQUIRE_THROWS_AS(expr, moe::Error); \
    REQUIRE_THROWS_WITH(expr, matcher);  \
  } while (false)

namespace moe_test {

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

// A small model with every kind of tensor: a dense layer, an MoE layer with groups, a shared
// expert, grouped-query attention.
inline moe::ModelConfig small_config() {
  moe::ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.intermediate_size = 24;
  c.moe_intermediate_size = 8;
  c.first_k_dense_replace = 1;
  c.n_shared_experts = 1;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.max_position_embeddings = 16;
  moe::validate(c, "small_config");
  return c;
}

// small_config with three layers (two MoE) and 8 ungrouped experts, larger initial weights: the
// expert-parallel tests split its experts over up to 4 ranks.
inline moe::ModelConfig expert_parallel_config() {
  moe::ModelConfig c = small_config();
  c.num_hidden_layers = 3;
  c.n_routed_experts = 8;
  c.n_group = 1;
  c.max_position_embeddings = 32;
  c.initializer_range = 0.2;
  moe::validate(c, "expert_parallel_config");
  return c;
}

}  // namespace moe_test
