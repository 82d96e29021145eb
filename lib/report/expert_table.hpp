// Compact per-layer expert load tables (tokens per expert, share, MaxVio) for the terminal.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.hpp"

namespace moe {

// counts: (MoE layers, E), in layer order.
std::string format_expert_table(const ModelConfig& c, const std::vector<std::vector<int64_t>>& counts,
                                const std::string& title);

}  // namespace moe
