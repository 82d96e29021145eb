// Writing and reading metrics.jsonl lines; the readers refuse a wrong type with a message naming
// the file, line and field.
#include "train/metrics_line.hpp"

#include <climits>
#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "moe/balance.hpp"

namespace moe {

using nlohmann::json;

namespace {

json layer_json(const LayerLoad& l, bool train_line) {
  json j = {{"layer", l.layer}, {"counts", l.counts}, {"maxvio", l.maxvio}};
  // The load statistics (README "Balance statistics"), for readers other than moe; moe's own
  // reports recompute them from the counts, so files written before they existed read the same.
  const LoadStats st = load_stats(l.counts.data(), int64_t(l.counts.size()));
  j["cv"] = st.cv, j["jain"] = st.jain, j["dead"] = st.dead;
  j["share_p5"] = st.share_p5, j["share_p50"] = st.share_p50, j["share_p95"] = st.share_p95;
  if (train_line) j["bias"] = l.bias, j["balance_loss"] = l.balance_loss;
  if (train_line && l.z_loss) j["z_loss"] = *l.z_loss;
  return j;
}

// JSON value -> T, refusing what nlohmann's get<T>() would convert silently: get<int64_t>() of
// 1e30 is undefined behaviour (float-to-integer overflow), of 2.5 truncates, of true gives 1, and
// get<double>() of true gives 1.0. An integer may be written as an integral float (64.0).
bool convert(const json& v, int64_t& out) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > uint64_t(INT64_MAX)) return false;
    out = int64_t(v.get<uint64_t>());
    return true;
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
    return true;
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!(std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)) return false;
    out = int64_t(d);
    return true;
  }
  return false;
}
bool convert(const json& v, double& out) {
  // The writer stores a non-finite number (a step whose loss or gradient overflowed) as null.
  if (v.is_null()) {
    out = std::nan("");
    return true;
  }
  if (!v.is_number()) return false;
  out = v.get<double>();
  return true;
}
template <class T>
bool convert(const json& v, std::vector<T>& out) {
  if (!v.is_array()) return false;
  out.clear();
  out.reserve(v.size());
  for (const json& e : v) {
    T x{};
    if (!convert(e, x)) return false;
    out.push_back(std::move(x));
  }
  return true;
}

template <class T>
constexpr const char* expected_type = "";
template <>
constexpr const char* expected_type<int64_t> = "an integer";
template <>
constexpr const char* expected_type<double> = "a number";
template <>
constexpr const char* expected_type<std::vector<int64_t>> = "an array of integers";
template <>
constexpr const char* expected_type<std::vector<double>> = "an array of numbers";

// The start of v as JSON, for a message: scalars, and the scalars of an array. Not v.dump() of a
// container: that recurses once per nesting level (a value of 20000 nested brackets overflowed
// the stack) and prints all of a huge value.
std::string preview(const json& v) {
  auto scalar = [](const json& e) {
    if (e.is_array()) return std::string(e.empty() ? "[]" : "[...]");
    if (e.is_object()) return std::string(e.empty() ? "{}" : "{...}");
    if (e.is_string() && e.get_ref<const std::string&>().size() > 40)
      return json(e.get_ref<const std::string&>().substr(0, 40)).dump(-1, ' ', false, json::error_handler_t::replace);
    return e.dump(-1, ' ', false, json::error_handler_t::replace);
  };
  if (!v.is_array()) return scalar(v);
  std::string s = "[";
  for (const json& e : v) {
    if (s.size() > 40) break;
    if (s.size() > 1) s += ",";
    s += scalar(e);
  }
  return s + "]";
}

template <class T>
T field(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) fail(where + ": missing field \"" + key + "\"");
  T value{};
  if (!convert(*it, value)) {
    std::string shown = preview(*it);
    if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
    fail(where + ": field \"" + key + "\" has the wrong type (expected " + expected_type<T> + ", got " + shown + ")");
  }
  return value;
}

std::vector<LayerLoad> parse_layers(const json& j, const std::string& where, bool with_bias) {
  if (!j.contains("layers") || !j["layers"].is_array()) fail(where + ": missing array field \"layers\"");
  std::vector<LayerLoad> layers;
  for (const json& l : j["layers"]) {
    if (!l.is_object()) fail(where + ": a \"layers\" entry is not an object");
    LayerLoad p;
    p.layer = field<int64_t>(l, "layer", where);
    p.counts = field<std::vector<int64_t>>(l, "counts", where);
    p.maxvio = field<double>(l, "maxvio", where);
    if (with_bias && l.contains("bias")) p.bias = field<std::vector<double>>(l, "bias", where);
    if (with_bias && l.contains("balance_loss")) p.balance_loss = field<double>(l, "balance_loss", where);
    if (with_bias && l.contains("z_loss")) p.z_loss = field<double>(l, "z_loss", where);
    for (int64_t c : p.counts)
      if (c < 0) fail(where + ": negative expert count");
    if (!p.bias.empty() && p.bias.size() != p.counts.size())
      fail(where + ": layer " + std::to_string(p.layer) + " has " + std::to_string(p.bias.size()) +
           " bias values for " + std::to_string(p.counts.size()) + " experts");
    // Each MoE layer once, in increasing order (as the trainer writes them): a repeated layer would
    // be counted twice by every report.
    if (!layers.empty() && p.layer <= layers.back().layer)
      fail(where + ": \"layers\" lists layer " + std::to_string(p.layer) + " after layer " +
           std::to_string(layers.back().layer) + " (expected each layer once, in increasing order)");
    layers.push_back(std::move(p));
  }
  return layers;
}

// The "ranks" object of a train line: rows per rank and their MaxVio for each MoE layer, in the
// order of "layers".
void parse_ranks(const json& r, StepRecord& p, const std::string& where) {
  if (!r.is_object()) fail(where + ": field \"ranks\" is not an object");
  p.ranks = field<int64_t>(r, "n", where);
  p.comm_seconds = field<double>(r, "comm_seconds", where);
  if (r.contains("alltoall_seconds")) p.alltoall_seconds = field<double>(r, "alltoall_seconds", where);
  if (p.ranks < 1) fail(where + ": field \"ranks.n\" must be >= 1");
  if (!r.contains("layers") || !r["layers"].is_array()) fail(where + ": missing array field \"ranks.layers\"");
  if (r["layers"].size() > p.layers.size()) fail(where + ": \"ranks.layers\" has more entries than \"layers\"");
  size_t i = 0;
  for (const json& l : r["layers"]) {
    if (!l.is_object()) fail(where + ": a \"ranks.layers\" entry is not an object");
    p.layers[i].rank_rows = field<std::vector<int64_t>>(l, "rows", where);
    p.layers[i++].rank_maxvio = field<double>(l, "maxvio", where);
  }
}

}  // namespace

json to_json(const StepRecord& r) {
  json layers = json::array();
  for (const auto& l : r.layers) layers.push_back(layer_json(l, true));
  json j = {{"kind", "train"},          {"step", r.step},
            {"loss", r.loss},           {"lr", r.lr},
            {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
            {"seconds", r.seconds},     {"balance_loss", r.balance_loss},
            {"layers", layers}};
  if (r.skipped) j["skipped"] = true;
  if (r.mtp_loss) j["mtp_loss"] = *r.mtp_loss;
  if (r.z_loss) j["z_loss"] = *r.z_loss;
  if (r.ranks > 1) {
    json per_layer = json::array();
    for (const auto& l : r.layers)
      per_layer.push_back({{"layer", l.layer}, {"rows", l.rank_rows}, {"maxvio", l.rank_maxvio}});
    j["ranks"] = {{"n", r.ranks},
                  {"comm_seconds", r.comm_seconds},
                  {"alltoall_seconds", r.alltoall_seconds},
                  {"layers", per_layer}};
  }
  return j;
}

json to_json(const EvalRecord& r) {
  json layers = json::array();
  for (const auto& l : r.layers) layers.push_back(layer_json(l, false));
  json j = {{"kind", "eval"}, {"step", r.step}, {"val_loss", r.val_loss}, {"tokens", r.tokens}, {"layers", layers}};
  if (r.mtp_val_loss) j["mtp_val_loss"] = *r.mtp_val_loss;
  j["val_bpb"] = r.val_bpb;
  return j;
}

json to_json(const ResumeRecord& r) {
  json changed = json::object();
  for (const auto& c : r.changed) changed[c.setting] = {{"from", json::parse(c.from)}, {"to", json::parse(c.to)}};
  return {{"kind", "resume"}, {"step", r.step}, {"changed", changed}};
}

std::string ResumeRecord::describe() const {
  std::string text = "resumed at step " + std::to_string(step);
  for (size_t i = 0; i < changed.size(); ++i)
    text += (i ? ", " : " (") + changed[i].setting + " " + changed[i].from + " -> " + changed[i].to;
  return text + (changed.empty() ? "" : ")");
}

ResumeRecord resume_from_json(const json& j, const std::string& where) {
  ResumeRecord r;
  r.step = field<int64_t>(j, "step", where);
  if (!j.contains("changed") || !j["changed"].is_object()) fail(where + ": missing object field \"changed\"");
  for (const auto& [setting, change] : j["changed"].items()) {
    if (!change.is_object() || !change.contains("from") || !change.contains("to"))
      fail(where + ": \"changed." + setting + "\" must be {\"from\": ..., \"to\": ...}");
    r.changed.push_back({setting, change["from"].dump(), change["to"].dump()});
  }
  return r;
}

json end_json(int64_t step, const std::string& reason, const RankMemory& memory) {
  json j = {{"kind", "end"}, {"step", step}, {"reason", reason}};
  if (!memory.peak_rss_kib.empty())
    j["memory"] = {{"peak_rss_kib", memory.peak_rss_kib}, {"peak_arena_kib", memory.peak_arena_kib}};
  return j;
}

StepRecord step_from_json(const json& j, const std::string& where) {
  StepRecord p;
  if (j.contains("seconds")) p.seconds = field<double>(j, "seconds", where);
  p.step = field<int64_t>(j, "step", where);
  p.loss = field<double>(j, "loss", where);
  p.lr = j.contains("lr") ? field<double>(j, "lr", where) : 0.0;
  p.grad_norm = j.contains("grad_norm") ? field<double>(j, "grad_norm", where) : 0.0;
  p.tokens_per_s = j.contains("tokens_per_s") ? field<double>(j, "tokens_per_s", where) : 0.0;
  p.balance_loss = j.contains("balance_loss") ? field<double>(j, "balance_loss", where) : 0.0;
  p.skipped = j.contains("skipped") && j["skipped"].is_boolean() && j["skipped"].get<bool>();
  if (j.contains("mtp_loss")) p.mtp_loss = field<double>(j, "mtp_loss", where);
  if (j.contains("z_loss")) p.z_loss = field<double>(j, "z_loss", where);
  p.layers = parse_layers(j, where, true);
  if (j.contains("ranks")) parse_ranks(j["ranks"], p, where);
  return p;
}

EvalRecord eval_from_json(const json& j, const std::string& where) {
  EvalRecord p;
  p.step = field<int64_t>(j, "step", where);
  p.val_loss = field<double>(j, "val_loss", where);
  p.tokens = j.contains("tokens") ? field<int64_t>(j, "tokens", where) : 0;
  if (j.contains("mtp_val_loss")) p.mtp_val_loss = field<double>(j, "mtp_val_loss", where);
  if (j.contains("val_bpb")) p.val_bpb = field<double>(j, "val_bpb", where);
  p.layers = parse_layers(j, where, false);
  return p;
}

}  // namespace moe
