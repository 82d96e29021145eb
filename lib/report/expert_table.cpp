#include "report/expert_table.hpp"

#include <cstdio>

#include "moe/balance.hpp"

namespace moe {

std::string format_expert_table(const ModelConfig& c, const std::vector<std::vector<int64_t>>& counts,
                                const std::string& title) {
  if (counts.empty()) return title + ": none (every layer of this model is dense)\n";
  std::string out = title + " (tokens per expert; MaxVio = (max - mean) / mean)\n";
  char buf[64];
  // One row per MoE layer counted (the MTP module's layer L last, when it ran).
  for (size_t m = 0; m < counts.size(); ++m) {
    const auto& row = counts[m];
    const int64_t l = c.first_k_dense_replace + int64_t(m);
    std::snprintf(buf, sizeof buf, "  layer %-3lld%s MaxVio %6.3f |", (long long)l,
                  l == c.num_hidden_layers ? " (MTP)" : "", max_violation(row.data(), int64_t(row.size())));
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
