#include "infer/routing.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "infer/generate.hpp"
#include "moe/balance.hpp"

namespace moe {

RoutingTrace trace_routing(ComputeContext& ctx, const Model& model, std::string_view text, int64_t T,
                           const Tokenizer& tokenizer) {
  const ModelConfig& c = model.config;
  std::vector<int32_t> input = tokenizer.encode(text);
  check(!input.empty(), "routing analysis needs at least one token of text");
  for (int32_t id : input)
    check(id < c.vocab_size, "token " + std::to_string(id) + " is outside the model's vocabulary");
  // One token alone: route it by adding a dummy target (it is not scored).
  if (input.size() == 1) input.push_back(input.back());
  const int64_t n = int64_t(input.size()) - 1, K = c.num_experts_per_tok;
  RoutingTrace trace;
  trace.tokens.assign(input.begin(), input.end() - 1);
  for (int32_t id : trace.tokens) trace.text.push_back(tokenizer.bytes_of(id));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) trace.layers.push_back(l);
  trace.experts.assign(trace.layers.size(), std::vector<int32_t>(size_t(n * K)));
  trace.weights.assign(trace.layers.size(), std::vector<float>(size_t(n * K)));
  evaluate_tokens(ctx, model, input, T, tokenizer, nullptr, [&](const Workspace& ws, int64_t first, int64_t tokens) {
    for (size_t m = 0; m < trace.layers.size(); ++m) {
      const MoeSaved& saved = ws.layers[size_t(trace.layers[m])].moe;
      std::copy_n(saved.expert, tokens * K, trace.experts[m].begin() + first * K);
      std::copy_n(saved.weight, tokens * K, trace.weights[m].begin() + first * K);
    }
  });
  return trace;
}

const std::vector<std::string>& token_class_names() {
  static const std::vector<std::string> names = {"letter", "digit", "punctuation", "whitespace", "other"};
  return names;
}

std::vector<uint8_t> token_classes(const RoutingTrace& trace) {
  std::vector<uint8_t> out;
  for (const std::string& t : trace.text) {
    const unsigned char b = t.empty() ? 0 : static_cast<unsigned char>(t[0]);
    uint8_t cls = 4;
    if (t.empty())
      cls = 4;
    else if (std::isalpha(b) || b >= 0x80)
      cls = 0;
    else if (std::isdigit(b))
      cls = 1;
    else if (std::ispunct(b))
      cls = 2;
    else if (b == ' ' || b == '\n' || b == '\t' || b == '\r')
      cls = 3;
    out.push_back(cls);
  }
  return out;
}

double normalised_mutual_information(const std::vector<std::vector<int64_t>>& table) {
  double total = 0;
  std::vector<double> row_sum(table.size(), 0.0), col_sum;
  for (size_t d = 0; d < table.size(); ++d) {
    if (col_sum.size() < table[d].size()) col_sum.resize(table[d].size(), 0.0);
    for (size_t e = 0; e < table[d].size(); ++e) {
      row_sum[d] += double(table[d][e]);
      col_sum[e] += double(table[d][e]);
      total += double(table[d][e]);
    }
  }
  if (total <= 0) return 0.0;
  double h_d = 0, mi = 0;
  for (double r : row_sum)
    if (r > 0) h_d -= r / total * std::log(r / total);
  for (size_t d = 0; d < table.size(); ++d)
    for (size_t e = 0; e < table[d].size(); ++e) {
      const double p = double(table[d][e]) / total;
      if (p > 0) mi += p * std::log(p / (row_sum[d] / total * col_sum[e] / total));
    }
  return h_d > 0 ? std::max(0.0, mi / h_d) : 0.0;
}

std::vector<DomainRouting> aggregate_routing(const RoutingTrace& trace, const std::vector<uint8_t>& domain,
                                             int num_domains, int64_t E) {
  const int64_t n = int64_t(trace.tokens.size());
  std::vector<DomainRouting> out;
  for (size_t m = 0; m < trace.layers.size(); ++m) {
    DomainRouting r;
    r.layer = trace.layers[m];
    r.counts.assign(size_t(E), 0);
    if (!domain.empty()) r.by_domain.assign(size_t(num_domains), std::vector<int64_t>(size_t(E), 0));
    const int64_t K = n > 0 ? int64_t(trace.experts[m].size()) / n : 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = trace.experts[m][size_t(t * K + k)];
        ++r.counts[size_t(e)];
        if (!domain.empty()) ++r.by_domain[domain[size_t(t)]][size_t(e)];
      }
    if (!domain.empty()) r.specialisation = normalised_mutual_information(r.by_domain);
    out.push_back(std::move(r));
  }
  return out;
}

namespace {

std::string show_byte(uint8_t b) {
  if (b == '\n') return "\\n";
  if (b == ' ') return "\xe2\x90\xa3";  // U+2423 OPEN BOX, so that a real underscore stays itself
  if (b == '\t') return "\\t";
  if (b < 32 || b >= 127) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%02x", b);
    return buf;
  }
  return std::string(1, char(b));
}

// A token's text for display: each byte as show_byte shows it, UTF-8 characters kept whole.
std::string show_text(const std::string& text) {
  if (text.empty()) return "\xe2\x88\x85";  // ∅: a token without text (a control token)
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char b = static_cast<unsigned char>(text[i]);
    if (b >= 0x80) {  // a UTF-8 sequence: keep its bytes together
      out += text[i];
      continue;
    }
    out += show_byte(b);
  }
  return out;
}

size_t display_columns(const std::string& text) {
  size_t columns = 0;
  for (unsigned char ch : text) columns += (ch & 0xC0) != 0x80;
  return columns;
}

// `text` padded on the left to `width` columns, counting UTF-8 characters, not bytes.
std::string right_aligned(const std::string& text, int width) {
  int columns = 0;
  for (unsigned char ch : text) columns += (ch & 0xC0) != 0x80;
  return std::string(size_t(std::max(0, width - columns)), ' ') + text;
}

}  // namespace

std::string format_routing_text(const RoutingTrace& trace, int64_t K) {
  std::string out;
  const int64_t n = int64_t(trace.tokens.size());
  // Columns as wide as the longest shown token (4 for bytes), as many as fit 100 columns.
  int width = 4;
  for (const std::string& t : trace.text) width = std::max(width, int(display_columns(show_text(t))) + 1);
  width = std::min(width, 16);
  const int64_t kPerBlock = std::max<int64_t>(1, 96 / width);
  char buf[32];
  out += "experts chosen for each token (best first; '\xe2\x90\xa3' is a space)\n";
  for (int64_t t0 = 0; t0 < n; t0 += kPerBlock) {
    const int64_t t1 = std::min(n, t0 + kPerBlock);
    out += "\n  token   ";
    for (int64_t t = t0; t < t1; ++t) out += right_aligned(show_text(trace.text[size_t(t)]), width);
    out += "\n";
    for (size_t m = 0; m < trace.layers.size(); ++m)
      for (int64_t k = 0; k < K; ++k) {
        if (k == 0)
          std::snprintf(buf, sizeof buf, "  L%-2lld #%lld  ", (long long)trace.layers[m], (long long)k + 1);
        else
          std::snprintf(buf, sizeof buf, "      #%lld  ", (long long)k + 1);
        out += buf;
        for (int64_t t = t0; t < t1; ++t)
          std::snprintf(buf, sizeof buf, "%*d", width, trace.experts[m][size_t(t * K + k)]), out += buf;
        out += "\n";
      }
  }
  return out;
}

std::string format_domain_routing(const std::vector<DomainRouting>& layers, const std::vector<std::string>& names,
                                  bool color) {
  std::string out;
  char buf[64];
  for (const auto& r : layers) {
    const int64_t E = int64_t(r.counts.size());
    std::snprintf(buf, sizeof buf, "layer %lld  MaxVio_global %.3f", (long long)r.layer,
                  max_violation(r.counts.data(), E));
    out += buf;
    if (!r.by_domain.empty()) {
      std::snprintf(buf, sizeof buf, "  specialisation %.3f (0 none, 1 each group its own experts)", r.specialisation);
      out += buf;
    }
    out += "\n  share of each row's routed tokens per expert (%)\n  " + std::string(12, ' ');
    for (int64_t e = 0; e < E; ++e) std::snprintf(buf, sizeof buf, "%5lld", (long long)e), out += buf;
    out += "\n";
    auto row = [&](const std::string& label, const std::vector<int64_t>& counts) {
      double total = 0;
      for (int64_t v : counts) total += double(v);
      std::snprintf(buf, sizeof buf, "  %-12s", label.c_str());
      out += buf;
      for (int64_t v : counts) {
        const double share = total > 0 ? 100.0 * double(v) / total : 0.0;
        const double uniform = 100.0 / double(E);
        // Bold where an expert takes over twice its uniform share: a specialist.
        const bool strong = color && share >= 2 * uniform;
        std::snprintf(buf, sizeof buf, "%s%5.1f%s", strong ? "\033[1;33m" : "", share, strong ? "\033[0m" : "");
        out += buf;
      }
      out += "\n";
    };
    for (size_t d = 0; d < r.by_domain.size(); ++d)
      row(d < names.size() ? names[d] : std::to_string(d), r.by_domain[d]);
    row("all", r.counts);
    out += "\n";
  }
  return out;
}

nlohmann::json routing_trace_json(const RoutingTrace& trace, int64_t K) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const std::string& t : trace.text) tokens.push_back(t);
  nlohmann::json layers = nlohmann::json::array();
  const int64_t n = int64_t(trace.tokens.size());
  for (size_t m = 0; m < trace.layers.size(); ++m) {
    nlohmann::json experts = nlohmann::json::array(), weights = nlohmann::json::array();
    for (int64_t t = 0; t < n; ++t) {
      experts.push_back(std::vector<int32_t>(trace.experts[m].begin() + t * K, trace.experts[m].begin() + (t + 1) * K));
      weights.push_back(std::vector<float>(trace.weights[m].begin() + t * K, trace.weights[m].begin() + (t + 1) * K));
    }
    layers.push_back({{"layer", trace.layers[m]}, {"experts", experts}, {"weights", weights}});
  }
  nlohmann::json token_bytes = nlohmann::json::array();  // each token's bytes as numbers (text may not be UTF-8)
  for (const std::string& t : trace.text) token_bytes.push_back(std::vector<uint8_t>(t.begin(), t.end()));
  return {{"token_ids", trace.tokens}, {"token_bytes", token_bytes}, {"tokens", tokens}, {"layers", layers}};
}

nlohmann::json domain_routing_json(const std::vector<DomainRouting>& layers, const std::vector<std::string>& names) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : layers) {
    nlohmann::json j = {
        {"layer", r.layer}, {"counts", r.counts}, {"maxvio", max_violation(r.counts.data(), int64_t(r.counts.size()))}};
    if (!r.by_domain.empty()) {
      nlohmann::json domains = nlohmann::json::object();
      for (size_t d = 0; d < r.by_domain.size(); ++d)
        domains[d < names.size() ? names[d] : std::to_string(d)] = r.by_domain[d];
      j["by_domain"] = domains;
      j["specialisation"] = r.specialisation;
    }
    out.push_back(j);
  }
  return out;
}

double CoActivation::lift(int64_t i, int64_t j) const {
  const double ci = double(chosen[size_t(i)]), cj = double(chosen[size_t(j)]);
  if (i == j || ci == 0 || cj == 0) return std::nan("");
  return double(tokens) * double(pairs[size_t(i * E + j)]) / (ci * cj);
}

std::vector<CoActivation> co_activation(const RoutingTrace& trace, int64_t E) {
  std::vector<CoActivation> out;
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    CoActivation c;
    c.layer = trace.layers[l], c.E = E;
    const std::vector<int32_t>& ex = trace.experts[l];
    const int64_t K = trace.tokens.empty() ? 0 : int64_t(ex.size() / trace.tokens.size());
    c.tokens = int64_t(trace.tokens.size());
    c.chosen.assign(size_t(E), 0);
    c.pairs.assign(size_t(E * E), 0);
    for (int64_t t = 0; t < c.tokens; ++t)
      for (int64_t a = 0; a < K; ++a) {
        const int64_t i = ex[size_t(t * K + a)];
        ++c.chosen[size_t(i)];
        for (int64_t b = 0; b < K; ++b) ++c.pairs[size_t(i * E + ex[size_t(t * K + b)])];
      }
    out.push_back(std::move(c));
  }
  return out;
}

std::string format_co_activation(const std::vector<CoActivation>& layers, bool color) {
  std::string out;
  char buf[160];
  // Lift buckets: symbol and 256-colour background (blue: apart, white: independent, red: together).
  struct Bucket {
    double below;
    const char* symbol;
    int colour;
  };
  static const Bucket buckets[] = {{0.25, "  ", 25}, {0.5, " .", 75},  {0.8, " -", 153},     {1.25, " o", 255},
                                   {2.0, " +", 217}, {4.0, " *", 203}, {INFINITY, " #", 160}};
  for (const CoActivation& c : layers) {
    std::snprintf(buf, sizeof buf, "layer %lld co-activation over %lld tokens (lift = together / independent)\n",
                  (long long)c.layer, (long long)c.tokens);
    out += buf;
    if (c.E <= 64) {
      out += "     ";
      for (int64_t j = 0; j < c.E; ++j) {
        std::snprintf(buf, sizeof buf, "%2lld", (long long)(j % 100));
        out += buf;
      }
      out += "\n";
      for (int64_t i = 0; i < c.E; ++i) {
        std::snprintf(buf, sizeof buf, "  %2lld ", (long long)i);
        out += buf;
        for (int64_t j = 0; j < c.E; ++j) {
          const double v = c.lift(i, j);
          if (!std::isfinite(v)) {
            out += i == j ? " \\" : " ?";
            continue;
          }
          const Bucket* b = buckets;
          while (v >= b->below) ++b;
          if (color)
            out += "\033[48;5;" + std::to_string(b->colour) + "m" + b->symbol + "\033[0m";
          else
            out += b->symbol;
        }
        out += "\n";
      }
      out += "  lift: ' ' <0.25  . <0.5  - <0.8  o 0.8-1.25  + <2  * <4  # >=4   (\\ itself, ? never chosen)\n";
    }
    // The strongest and weakest pairs among experts chosen often enough to say.
    struct Pair {
      int64_t i, j;
      double lift;
    };
    std::vector<Pair> ranked;
    for (int64_t i = 0; i < c.E; ++i)
      for (int64_t j = i + 1; j < c.E; ++j)
        // At least 20 tokens expected under independence: rarer pairs' lifts are mostly noise.
        if (std::isfinite(c.lift(i, j)) &&
            double(c.chosen[size_t(i)]) * double(c.chosen[size_t(j)]) >= 20.0 * double(c.tokens))
          ranked.push_back({i, j, c.lift(i, j)});
    std::sort(ranked.begin(), ranked.end(), [](const Pair& a, const Pair& b) { return a.lift > b.lift; });
    auto list = [&](const char* title, auto first, auto last) {
      out += title;
      for (int n = 0; first != last && n < 5; ++first, ++n) {
        std::snprintf(buf, sizeof buf, "  %lld+%lld %.2fx (%lld tokens)", (long long)first->i, (long long)first->j,
                      first->lift, (long long)c.pairs[size_t(first->i * c.E + first->j)]);
        out += buf;
      }
      out += "\n";
    };
    if (!ranked.empty()) {
      list("  most together:", ranked.begin(), ranked.end());
      list("  most apart:   ", ranked.rbegin(), ranked.rend());
      out += "  (pairs expected at least 20 times if independent)\n";
    }
    out += "\n";
  }
  return out;
}

nlohmann::json co_activation_json(const std::vector<CoActivation>& layers) {
  nlohmann::json out = nlohmann::json::array();
  for (const CoActivation& c : layers) {
    nlohmann::json lift = nlohmann::json::array();
    for (int64_t i = 0; i < c.E; ++i) {
      nlohmann::json row = nlohmann::json::array();
      for (int64_t j = 0; j < c.E; ++j) {
        const double v = c.lift(i, j);
        row.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr));
      }
      lift.push_back(row);
    }
    nlohmann::json pairs = nlohmann::json::array();
    for (int64_t i = 0; i < c.E; ++i)
      pairs.push_back(std::vector<int64_t>(c.pairs.begin() + i * c.E, c.pairs.begin() + (i + 1) * c.E));
    out.push_back({{"layer", c.layer}, {"tokens", c.tokens}, {"chosen", c.chosen}, {"pairs", pairs}, {"lift", lift}});
  }
  return out;
}

}  // namespace moe
