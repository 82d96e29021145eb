// The bodies of the fuzz harnesses, shared by the libFuzzer targets (tests/fuzz/targets/, built
// with -DMOE_FUZZ=ON by scripts/fuzz) and by the [fuzz] Catch2 test that replays the seed corpus
// and every saved crash under ctest (tests/fuzz/test_fuzz_regressions.cpp).
//
// Contract: each run_* function feeds one input to the real reader the way `moe` does (through a
// file) and returns whether it was accepted or rejected. Rejection must be a moe::Error (one clear
// line for the user); anything else escaping, a failed invariant (thrown as std::logic_error) or a
// sanitizer report is a bug. Accepted inputs are exercised further (every tensor byte read, the
// config written back and re-read, the load report built and rendered) so that a reader that
// accepts something inconsistent is caught here rather than later in training or inference.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "report/load_console.hpp"
#include "report/metrics.hpp"
#include "train/train_config.hpp"

namespace moe::fuzz {

enum class Outcome { accepted, rejected };

inline void expect(bool condition, const std::string& what) {
  if (!condition) throw std::logic_error("fuzz invariant violated: " + what);
}

// Writes the input to a per-process scratch file (in /dev/shm when there is one, to keep libFuzzer
// fast) and returns its path; the file is reused by every run of the same harness.
inline std::string write_scratch(const char* tag, const uint8_t* data, size_t size) {
  const char* dir = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  const std::string path = std::string(dir) + "/moe-fuzz-" + std::to_string(::getpid()) + "-" + tag;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create scratch file " + path);
  size_t done = 0;
  while (done < size) {
    const ssize_t w = ::write(fd, data + done, size - done);
    if (w <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot write scratch file " + path);
    }
    done += size_t(w);
  }
  ::close(fd);
  return path;
}

// Removes the scratch file when the harness returns or throws.
struct ScratchFile {
  std::string path;
  ScratchFile(const char* tag, const uint8_t* data, size_t size) : path(write_scratch(tag, data, size)) {}
  ~ScratchFile() { ::unlink(path.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
};

// moe::read_safetensors on the input; an accepted file must describe tensors of a dtype moe reads
// (F32, BF16, F16) that lie inside its data section, and every value of every tensor is converted
// to float32 (ASan checks each access) and checked against the raw bits it came from.
inline Outcome run_safetensors(const uint8_t* data, size_t size) {
  const ScratchFile file("model.safetensors", data, size);
  SafetensorsFile st;
  try {
    st = read_safetensors(file.path);
  } catch (const Error&) {
    return Outcome::rejected;
  }
  expect(size >= 8 + st.data.size(), "data section larger than the file");
  volatile float sink = 0;
  std::vector<float> values;
  for (const auto& [name, e] : st.tensors) {
    const uint64_t element_size = safetensors_dtype_size(e.dtype);
    expect(element_size != 0, name + ": accepted dtype " + e.dtype);
    uint64_t numel = 1, span = 1;
    for (int64_t d : e.shape) {
      expect(d >= 0 && d <= (int64_t(1) << 40), name + ": dimension out of range");
      numel *= uint64_t(d);
      span *= uint64_t(std::max<int64_t>(d, 1));
      expect(span <= (uint64_t(1) << 40), name + ": product of the dimensions out of range");
    }
    expect(e.begin <= e.end && e.end <= st.data.size(), name + ": offsets outside the data section");
    expect(e.begin % element_size == 0, name + ": misaligned tensor");
    expect(e.end - e.begin == element_size * numel, name + ": byte range does not match the shape and dtype");
    values.assign(numel, 0.0f);
    st.copy_f32(name, values.data());
    const char* raw = st.data.data() + e.begin;
    float sum = 0;
    for (uint64_t i = 0; i < numel; ++i) {
      const float v = values[i];
      sum += v;
      if (e.dtype == "F32") {
        expect(std::memcmp(&v, raw + 4 * i, 4) == 0, name + ": F32 value changed by the copy");
        continue;
      }
      uint16_t half;
      std::memcpy(&half, raw + 2 * i, 2);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      expect((bits >> 31) == uint32_t(half >> 15), name + ": sign lost in the conversion");
      if (e.dtype == "BF16") {
        // NaN payloads and all: BF16 is the upper half of the float32.
        expect(bits == uint32_t(half) << 16, name + ": BF16 value converted inexactly");
        continue;
      }
      const bool all_ones = (half & 0x7c00u) == 0x7c00u, payload = (half & 0x3ffu) != 0;
      expect(std::isnan(v) == (all_ones && payload), name + ": F16 NaN not converted to NaN, or made up");
      expect(std::isinf(v) == (all_ones && !payload), name + ": F16 infinity not converted to infinity, or made up");
      if (!all_ones) {  // a finite half, from the definition: subnormal m * 2^-24, normal (1024 + m) * 2^(e - 25)
        const int exponent = (half >> 10) & 0x1f, mantissa = half & 0x3ff;
        const double magnitude =
            exponent == 0 ? std::ldexp(double(mantissa), -24) : std::ldexp(double(1024 + mantissa), exponent - 25);
        expect(double(std::fabs(v)) == magnitude, name + ": F16 value converted inexactly");
      }
    }
    sink = sink + sum;
    if (e.dtype == "F32") {
      expect(numel == 0 || std::memcmp(st.f32(name), values.data(), 4 * numel) == 0,
             name + ": f32() and copy_f32 differ");
    } else {
      bool refused = false;
      try {
        (void)st.f32(name);
      } catch (const Error&) {
        refused = true;
      }
      expect(refused, name + ": f32() handed out a " + e.dtype + " tensor as floats");
    }
  }
  return Outcome::accepted;
}

// The input as a config file (moe::read_json_file -> config_from_json, as `moe train --config`),
// and as the flat config.json of a checkpoint (model_config_from_json(..., true), as `moe infer`).
// An accepted config must survive being written back and re-read unchanged.
inline Outcome run_config(const uint8_t* data, size_t size) {
  const ScratchFile file("config.json", data, size);
  nlohmann::json j;
  try {
    j = read_json_file(file.path);
  } catch (const Error&) {
    return Outcome::rejected;
  }
  Outcome outcome = Outcome::rejected;
  try {
    const Config c = config_from_json(j, file.path);
    outcome = Outcome::accepted;
    const nlohmann::json written = config_file_json(c);
    const Config back = config_from_json(nlohmann::json::parse(written.dump(2)), "round trip");
    expect(config_file_json(back) == written, "config_file_json does not round-trip: " + written.dump());
  } catch (const Error&) {
  }
  auto as_checkpoint = [&](const nlohmann::json& flat, bool counts) {
    try {
      const ModelConfig m = model_config_from_json(flat, file.path, true);
      if (counts) outcome = Outcome::accepted;
      const nlohmann::json written = to_json(m);
      const ModelConfig back = model_config_from_json(nlohmann::json::parse(written.dump()), "round trip", true);
      expect(to_json(back) == written, "to_json(ModelConfig) does not round-trip: " + written.dump());
    } catch (const Error&) {
    }
  };
  as_checkpoint(j, true);
  // The model section of a config file doubles as a flat checkpoint config: more coverage of the
  // reader, but the input is a config file, so whether it is accepted was decided above.
  if (j.is_object() && j.contains("model")) as_checkpoint(j["model"], false);
  return outcome;
}

// moe::read_metrics -> build_load_report -> load_report_json (as `moe inspect --json`) and the
// console rendering (as `moe inspect`), for the automatic window and a few explicit ones.
inline Outcome run_metrics(const uint8_t* data, size_t size) {
  const ScratchFile file("metrics.jsonl", data, size);
  try {
    RunMetrics run = read_metrics(file.path);
    run.name = "fuzz";
    for (int64_t window : {int64_t(0), int64_t(1), int64_t(3), int64_t(-7), int64_t(1) << 40}) {
      const LoadReport report = build_load_report(run, window);
      expect(report.window >= 1, "window below 1");
      const std::string text = load_report_json(run, report).dump();
      expect(!text.empty(), "empty JSON report");
      (void)format_load_report(run, report, window == 0);
    }
  } catch (const Error&) {
    return Outcome::rejected;
  }
  return Outcome::accepted;
}

}  // namespace moe::fuzz
