// Routing analysis of a checkpoint: which experts each token goes to (for a short text), and how
// routing spreads over a file, by domain when the domain of every byte is known (the synthetic
// corpus), with a specialisation score. Uses the same windows and forward as `moe eval`, so its
// counts are exactly eval's.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/compute.hpp"
#include "core/tokenizer.hpp"
#include "model/model.hpp"

namespace moe {

struct RoutingTrace {
  std::vector<int32_t> tokens;                // the routed input tokens (all but the last)
  std::vector<std::string> text;              // each token's bytes (the tokenizer's bytes_of)
  std::vector<int64_t> layers;                // MoE layer indices
  std::vector<std::vector<int32_t>> experts;  // per MoE layer: (tokens, K) chosen experts
  std::vector<std::vector<float>> weights;    // per MoE layer: (tokens, K) gate weights
};

// Routes every token of `text` (encoded with `tokenizer`) but the last, in eval windows of T. A
// text of one token is routed as itself (there is nothing to predict, but its routing is defined).
RoutingTrace trace_routing(ComputeContext& ctx, const Model& model, std::string_view text, int64_t T,
                           const Tokenizer& tokenizer);

// Token classes by the first byte of a token's text, for the specialisation analysis of a text
// without domain labels: letter (ASCII letters and any non-ASCII character), digit, punctuation,
// whitespace, other (control bytes, control tokens).
const std::vector<std::string>& token_class_names();
std::vector<uint8_t> token_classes(const RoutingTrace& trace);

struct DomainRouting {
  int64_t layer = 0;
  std::vector<int64_t> counts;                  // (E) all routed slots
  std::vector<std::vector<int64_t>> by_domain;  // (domains, E) routed slots of tokens of each domain
  double specialisation = 0;                    // I(domain; expert) / H(domain), in [0, 1]
};

// domain: one label per byte (same length as the traced bytes + 1, or empty for no domains).
std::vector<DomainRouting> aggregate_routing(const RoutingTrace& trace, const std::vector<uint8_t>& domain,
                                             int num_domains, int64_t num_experts);

// Normalised mutual information between the rows (domains) and columns (experts) of a table of
// counts: I(D; X) / H(D); 0 when H(D) = 0.
double normalised_mutual_information(const std::vector<std::vector<int64_t>>& table);

// Which experts are chosen together (OLMoE's co-activation), per MoE layer: pairs(i, j) = tokens
// whose top-K holds both i and j (pairs(i, i) = chosen(i)), and the lift against independence,
// lift(i, j) = tokens · pairs(i, j) / (chosen(i) · chosen(j)): 1 = as often as if the two were
// chosen independently with their own frequencies, above 1 = together more often, 0 = never.
// Undefined (NaN) on the diagonal and for an expert that is never chosen.
struct CoActivation {
  int64_t layer = 0, tokens = 0, E = 0;
  std::vector<int64_t> chosen;  // (E) tokens that chose each expert
  std::vector<int64_t> pairs;   // (E, E)
  double lift(int64_t i, int64_t j) const;
};
std::vector<CoActivation> co_activation(const RoutingTrace& trace, int64_t num_experts);
// Terminal: a heatmap of the lift (experts x experts, up to 64) and the most and least frequent pairs.
std::string format_co_activation(const std::vector<CoActivation>& layers, bool color);
nlohmann::json co_activation_json(const std::vector<CoActivation>& layers);

std::string format_routing_text(const RoutingTrace& trace, int64_t K);
std::string format_domain_routing(const std::vector<DomainRouting>& layers, const std::vector<std::string>& names,
                                  bool color);
nlohmann::json routing_trace_json(const RoutingTrace& trace, int64_t K);
nlohmann::json domain_routing_json(const std::vector<DomainRouting>& layers, const std::vector<std::string>& names);

}  // namespace moe
