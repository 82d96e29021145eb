#include "report/expert_table.hpp"

#include <cstdio>

#include "moe/balance.hpp"

namespace moe {

std::string format_expert_table(const ModelConfig& c, const std::vector<std::vector<int64_t>>& counts,
                                const std::string& title) {
  std::string out = title + " (tokens per expert; MaxVio = (max - mean) / mean)\n";
  char buf[64];
  size_t m = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const auto& row = counts[m++];
    std::snprintf(buf, sizeof buf, "  layer %-3lld MaxVio %6.3f |", (long long)l,
                  max_violation(row.data(), int64_t(row.size())));
    out += buf;
    for (int64_t v : row) {
      std::snprintf(buf, sizeof buf, " %lld", (long long)v);
      out += buf;
    }
    out += "\n";
  }
  return out;
}

}  // namespace moe
