#include "train/eval_routing.hpp"

#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "core/safetensors.hpp"

namespace moe {

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'R', 'O', 'U', 'T', 'E'};
constexpr size_t kHeader = 8 + 5 * 4 + 8;

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const std::string& in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(in[at + size_t(i)])) << (8 * i);
  return v;
}

}  // namespace

std::string eval_routing_path(const std::string& run_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "eval_%06lld.bin", (long long)step);
  return run_dir + "/routing/" + name;
}

void write_eval_routing(const std::string& path, const EvalRouting& r) {
  check(int64_t(r.experts.size()) == r.layers * r.tokens * r.K, "internal: eval routing of the wrong size");
  std::string out(kMagic, sizeof kMagic);
  put_u32(out, 1);
  for (int64_t v : {r.layers, r.tokens, r.K, r.E}) put_u32(out, uint32_t(v));
  for (int i = 0; i < 8; ++i) out.push_back(char((uint64_t(r.step) >> (8 * i)) & 0xff));
  for (uint16_t e : r.experts) out.push_back(char(e & 0xff)), out.push_back(char(e >> 8));
  write_file_atomic(path, out);
}

EvalRouting read_eval_routing(const std::string& path) {
  const std::string bytes = read_file_bytes(path, "eval routing file");
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    fail(path + ": not an eval routing file (expected the MOEROUTE header)");
  if (get_le(bytes, 8, 4) != 1)
    fail(path + ": unsupported eval routing version " + std::to_string(get_le(bytes, 8, 4)));
  EvalRouting r;
  r.layers = int64_t(get_le(bytes, 12, 4)), r.tokens = int64_t(get_le(bytes, 16, 4));
  r.K = int64_t(get_le(bytes, 20, 4)), r.E = int64_t(get_le(bytes, 24, 4));
  r.step = int64_t(get_le(bytes, 28, 8));
  const uint64_t n = uint64_t(r.layers) * uint64_t(r.tokens) * uint64_t(r.K);
  if (r.K < 1 || r.E < r.K || r.E > 65536 || bytes.size() != kHeader + 2 * n)
    fail(path + ": truncated or inconsistent eval routing file (" + std::to_string(bytes.size()) + " bytes for " +
         std::to_string(r.layers) + " layers x " + std::to_string(r.tokens) + " tokens x top-" + std::to_string(r.K) +
         ")");
  r.experts.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    r.experts[i] = uint16_t(get_le(bytes, kHeader + 2 * i, 2));
    if (r.experts[i] >= r.E) fail(path + ": expert id " + std::to_string(r.experts[i]) + " out of range");
  }
  return r;
}

std::vector<double> same_set_share(const EvalRouting& a, const EvalRouting& b) {
  check(a.layers == b.layers && a.tokens == b.tokens && a.K == b.K, "internal: eval routings of different shapes");
  std::vector<double> share(size_t(a.layers), 0.0);
  if (a.tokens == 0) return share;
  for (int64_t l = 0; l < a.layers; ++l) {
    int64_t same = 0;
    for (int64_t t = 0; t < a.tokens; ++t) same += std::memcmp(a.set(l, t), b.set(l, t), sizeof(uint16_t) * a.K) == 0;
    share[size_t(l)] = double(same) / double(a.tokens);
  }
  return share;
}

}  // namespace moe
