// Parameter accounting: total parameters versus parameters activated per token, by role.
// The gap between the two is the whole point of a sparse MoE.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "config/model_config.hpp"

namespace moe {

struct ParamSummaryRow {
  std::string role;
  int64_t total = 0;
  int64_t activated = 0;  // used for one token: all of it, except routed experts (K of E)
};

struct ParamSummary {
  std::vector<ParamSummaryRow> rows;  // embedding, attention, norms, dense FFN, shared, routed, router, head
  int64_t total = 0, activated = 0;
  int64_t state = 0;  // routing-bias entries: model state, not parameters
};

ParamSummary summarize_params(const ModelConfig& config);
std::string format_model_summary(const ModelConfig& config, const std::string& source);
nlohmann::json summary_json(const ModelConfig& config);

}  // namespace moe
