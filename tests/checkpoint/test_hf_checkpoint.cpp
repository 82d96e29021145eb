// Hugging Face-layout checkpoints that moe did not write: BF16 and F16 tensors, and the sharded form
// (model.safetensors.index.json + shard files). Every file here is written by hand, with our own
// float -> BF16/F16 rounding (round to nearest even, written apart from lib/'s conversions), and
// every refusal must name the file and the tensor or shard.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/checks.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "config/model_config.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "model/checkpoint.hpp"
#include "model/model.hpp"

using Catch::Contains;
using moe_test::read_bytes;
using moe_test::small_config;
using moe_test::TempDir;
using moe_test::write_bytes;
using nlohmann::json;
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "these tests write little-endian bytes with memcpy");

namespace {

// --- our own conversions ------------------------------------------------------------------------

// float -> BF16, round to nearest even on the 16 dropped bits; NaN stays a (quiet) NaN.
uint16_t to_bf16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// float -> F16 by arithmetic, round to nearest even (std::nearbyint in the default rounding mode):
// scaling by a power of two is exact, so the only rounding is nearbyint's.
uint16_t to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0) return sign | 0x7c00;  // half-way between 65504 and 2^16 and above: infinity
  if (a < std::ldexp(1.0, -14))            // subnormal: units of 2^-24 (1024 units round up to 2^-14)
    return sign | uint16_t(std::nearbyint(std::ldexp(a, 24)));
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): a in [2^(e-1), 2^e)
  int exponent = e - 1;
  double mantissa = std::nearbyint(std::ldexp(a, 10 - exponent));  // [1024, 2048]
  if (mantissa == 2048) mantissa = 1024, ++exponent;
  return sign | uint16_t((exponent + 15) << 10) | uint16_t(mantissa - 1024);
}

// F16 bits -> value, from the definition (IEEE 754 binary16).
float from_f16_reference(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0)
    v = std::ldexp(double(mantissa), -24);
  else if (exponent == 31)
    v = mantissa == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  else
    v = std::ldexp(double(1024 + mantissa), exponent - 25);
  return float((h & 0x8000) ? -v : v);
}

float from_bf16_reference(uint16_t h) {
  float f;
  const uint32_t bits = uint32_t(h) << 16;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The value a float becomes once stored in `dtype` and read back.
float stored(float f, const std::string& dtype) {
  if (dtype == "BF16") return from_bf16_reference(to_bf16(f));
  if (dtype == "F16") return from_f16_reference(to_f16(f));
  return f;
}

bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

// --- our own safetensors writer -------------------------------------------------------------------

struct RawTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  std::string bytes;  // little-endian values
};

size_t element_size(const std::string& dtype) { return dtype == "F32" ? 4 : 2; }

std::string encode_values(const std::vector<float>& values, const std::string& dtype) {
  std::string out;
  for (float v : values) {
    if (dtype == "F32") {
      out.append(reinterpret_cast<const char*>(&v), 4);
    } else {
      const uint16_t h = dtype == "BF16" ? to_bf16(v) : to_f16(v);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

RawTensor raw(const std::string& name, std::vector<int64_t> shape, const std::string& dtype,
              const std::vector<float>& values) {
  return {name, std::move(shape), dtype, encode_values(values, dtype)};
}

RawTensor raw_halves(const std::string& name, const std::string& dtype, const std::vector<uint16_t>& halves) {
  std::string bytes(halves.size() * 2, '\0');
  std::memcpy(bytes.data(), halves.data(), bytes.size());
  return {name, {int64_t(halves.size())}, dtype, bytes};
}

// A safetensors file laid out as Hugging Face's writer does: tensors by falling element size (so
// each starts aligned), header padded with spaces to a multiple of 8.
std::string encode(std::vector<RawTensor> tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const RawTensor& a, const RawTensor& b) {
    return element_size(a.dtype) > element_size(b.dtype);
  });
  json header = {{"__metadata__", {{"format", "pt"}}}};
  std::string data;
  for (const RawTensor& t : tensors) {
    const uint64_t begin = data.size();
    data += t.bytes;
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, uint64_t(data.size())}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string length(8, '\0');
  for (int i = 0; i < 8; ++i) length[size_t(i)] = char((text.size() >> (8 * i)) & 0xff);
  return length + text + data;
}

// --- models and checkpoints -----------------------------------------------------------------------

std::unique_ptr<moe::Model> random_model(const moe::ModelConfig& config, uint64_t seed) {
  auto model = std::make_unique<moe::Model>(config, moe::ExpertShard{}, /*with_grads=*/false);
  model->init(seed);
  for (const moe::TensorSpec& spec : model->layout.tensors)
    if (spec.role == moe::TensorRole::router_bias)
      for (int64_t i = 0; i < spec.numel; ++i) model->params[spec.offset + i] = 0.01f * float(i + 1) - 0.025f;
  return model;
}

// Every tensor of the model in `dtype`, in layout order.
std::vector<RawTensor> tensors_of(const moe::Model& model, const std::string& dtype) {
  std::vector<RawTensor> out;
  for (const moe::TensorSpec& spec : model.layout.tensors) {
    const float* p = model.params.data() + spec.offset;
    out.push_back(raw(spec.name, spec.shape, dtype, std::vector<float>(p, p + spec.numel)));
  }
  return out;
}

// The arena a load must produce: every parameter as stored in `dtype`.
std::vector<float> expected_params(const moe::Model& model, const std::string& dtype) {
  std::vector<float> out(model.params.data(), model.params.data() + model.layout.total);
  for (float& v : out) v = stored(v, dtype);
  return out;
}

bool params_equal(const moe::Model& model, const std::vector<float>& expected) {
  return size_t(model.layout.total) == expected.size() &&
         std::memcmp(model.params.data(), expected.data(), expected.size() * 4) == 0;
}

RawTensor& find_tensor(std::vector<RawTensor>& tensors, const std::string& name) {
  auto it = std::find_if(tensors.begin(), tensors.end(), [&](const RawTensor& t) { return t.name == name; });
  REQUIRE(it != tensors.end());
  return *it;
}

std::string shard_name(size_t i, size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return name;
}

// A sharded checkpoint before it is written, so that a test can break any part of it.
struct Sharded {
  std::vector<std::string> files;              // shard file names
  std::vector<std::vector<RawTensor>> shards;  // the tensors of each file
  json index;                                  // {"metadata": {...}, "weight_map": {...}}
};

// `tensors` split into n contiguous runs, and the index that lists them.
Sharded split(const std::vector<RawTensor>& tensors, size_t n) {
  Sharded s;
  s.shards.resize(n);
  uint64_t total = 0;
  json weight_map = json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t k = i * n / tensors.size();
    s.shards[k].push_back(tensors[i]);
    weight_map[tensors[i].name] = shard_name(k, n);
    total += tensors[i].bytes.size();
  }
  for (size_t k = 0; k < n; ++k) s.files.push_back(shard_name(k, n));
  s.index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return s;
}

void write_config(const std::string& dir, const moe::ModelConfig& config) {
  fs::create_directories(dir);
  write_bytes(dir + "/config.json", moe::to_json(config).dump(2));
}

std::string write_single(const std::string& dir, const moe::ModelConfig& config,
                         const std::vector<RawTensor>& tensors) {
  write_config(dir, config);
  write_bytes(dir + "/model.safetensors", encode(tensors));
  return dir;
}

std::string write_sharded(const std::string& dir, const moe::ModelConfig& config, const Sharded& s) {
  write_config(dir, config);
  for (size_t k = 0; k < s.files.size(); ++k) write_bytes(dir + "/" + s.files[k], encode(s.shards[k]));
  write_bytes(dir + "/model.safetensors.index.json", s.index.dump(2));
  return dir;
}

}  // namespace

TEST_CASE("hf checkpoint: our BF16 and F16 rounding helpers agree with the definitions", "[checkpoint]") {
  // Guards the helpers every other test relies on, checked against hand-computed bit patterns.
  CHECK(to_bf16(1.0f) == 0x3f80);
  CHECK(to_bf16(-2.5f) == 0xc020);
  CHECK(to_bf16(1.0f + 0x1p-8f) == 0x3f80);             // tie, to even (down)
  CHECK(to_bf16(1.0f + 0x1p-7f + 0x1p-8f) == 0x3f82);   // tie, to even (up)
  CHECK(to_bf16(1.0f + 0x1p-8f + 0x1p-12f) == 0x3f81);  // above the tie
  CHECK(to_f16(1.0f) == 0x3c00);
  CHECK(to_f16(-2.0f) == 0xc000);
  CHECK(to_f16(65504.0f) == 0x7bff);
  CHECK(to_f16(65520.0f) == 0x7c00);
  CHECK(to_f16(0x1p-14f) == 0x0400);
  CHECK(to_f16(0x1p-24f) == 0x0001);
  CHECK(to_f16(0x1p-25f) == 0x0000);  // tie between 0 and 2^-24: to even
  CHECK(to_f16(0x1.8p-25f) == 0x0001);
  CHECK(to_f16(-3 * 0x1p-24f) == 0x8003);
  CHECK(to_f16(1.0f + 0x1p-11f) == 0x3c00);             // tie, to even (down)
  CHECK(to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);         // tie, to even (up)
  CHECK(to_f16(1023 * 0x1p-24f + 0x1p-25f) == 0x0400);  // largest subnormal rounds up to a normal
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float v = from_f16_reference(uint16_t(h));
    if (!std::isnan(v)) REQUIRE(to_f16(v) == h);
    if (!std::isnan(from_bf16_reference(uint16_t(h)))) REQUIRE(to_bf16(from_bf16_reference(uint16_t(h))) == h);
  }
}

TEST_CASE("hf checkpoint: every BF16 and F16 bit pattern converts exactly", "[checkpoint]") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    INFO("bits 0x" << std::hex << h);
    const float f16 = moe::f16_to_float(uint16_t(h)), bf16 = moe::bf16_to_float(uint16_t(h));
    const float f16_expected = from_f16_reference(uint16_t(h)), bf16_expected = from_bf16_reference(uint16_t(h));
    REQUIRE(std::isnan(f16) == std::isnan(f16_expected));
    if (!std::isnan(f16)) REQUIRE(same_bits(f16, f16_expected));  // -0 included
    REQUIRE(std::isnan(bf16) == std::isnan(bf16_expected));
    if (!std::isnan(bf16)) REQUIRE(same_bits(bf16, bf16_expected));
  }
}

TEST_CASE("hf checkpoint: BF16 and F16 tensors read back as the exact float values", "[checkpoint]") {
  TempDir dir("hf_dtypes");
  const std::string path = dir / "t.safetensors";
  // Exactly representable in both, then BF16 rounding cases: a tie (to even, down), a value above a
  // tie (up), and a large value F16 cannot hold.
  const std::vector<float> bf16_in = {
      1.0f, -2.5f, 0.15625f, -0.0f, 1.0f + 0x1p-7f, 1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-12f, -3.0e38f};
  const std::vector<float> bf16_out = {1.0f, -2.5f, 0.15625f, -0.0f, 1.0078125f, 1.0f, 1.0078125f, -0x1.c4p+127f};
  // F16: exact values, the largest finite, the smallest normal, subnormals (positive and negative,
  // the smallest and the largest), rounding ties to even, and a value that rounds into subnormals.
  const std::vector<float> f16_in = {
      1.0f,     -2.0f,         0.333251953125f, 65504.0f,        -65504.0f,           0x1p-14f,
      0x1p-24f, -3 * 0x1p-24f, 1023 * 0x1p-24f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 0.1f,
      -1e-6f};
  const std::vector<float> f16_out = {1.0f,
                                      -2.0f,
                                      0.333251953125f,
                                      65504.0f,
                                      -65504.0f,
                                      6.103515625e-05f,
                                      5.9604644775390625e-08f,
                                      -1.78813934326171875e-07f,
                                      6.097555160522461e-05f,
                                      1.0f,
                                      1.001953125f,
                                      0.0999755859375f,
                                      -1.0132789611816406e-06f};
  REQUIRE(bf16_in.size() == bf16_out.size());
  REQUIRE(f16_in.size() == f16_out.size());
  write_bytes(path, encode({raw("w32", {2}, "F32", {0.1f, -7.25f}), raw("wb", {2, 4}, "BF16", bf16_in),
                            raw("wh", {13}, "F16", f16_in), raw("scalar", {}, "F16", {-0.5f}),
                            raw("empty", {0, 3}, "BF16", {})}));
  const moe::SafetensorsFile file = moe::read_safetensors(path);
  CHECK(file.tensors.at("wb").dtype == "BF16");
  CHECK(file.tensors.at("wb").shape == std::vector<int64_t>{2, 4});
  std::vector<float> got(bf16_out.size());
  file.copy_f32("wb", got.data());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("BF16 value " << i);
    CHECK(same_bits(got[i], bf16_out[i]));
  }
  got.assign(f16_out.size(), 0);
  file.copy_f32("wh", got.data());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("F16 value " << i);
    CHECK(same_bits(got[i], f16_out[i]));
  }
  float one = 0;
  file.copy_f32("scalar", &one);
  CHECK(one == -0.5f);
  file.copy_f32("empty", nullptr);  // nothing to copy
  // F32 through both ways; f32() is for F32 only.
  float two[2];
  file.copy_f32("w32", two);
  CHECK((two[0] == 0.1f && two[1] == -7.25f));
  CHECK(file.f32("w32")[1] == -7.25f);
  REQUIRE_MOE_ERROR(file.f32("wb"), Contains(path) && Contains("\"wb\" is BF16, not F32"));
  REQUIRE_MOE_ERROR(file.copy_f32("nope", two), Contains(path) && Contains("no tensor \"nope\""));

  SECTION("infinities and NaN convert as such") {
    write_bytes(path, encode({raw_halves("h", "F16", {0x7c00, 0xfc00, 0x7e00, 0x7c01}),
                              raw_halves("b", "BF16", {0x7f80, 0xff80, 0x7fc0, 0x7f81})}));
    const moe::SafetensorsFile specials = moe::read_safetensors(path);
    for (const char* name : {"h", "b"}) {
      INFO(name);
      float v[4];
      specials.copy_f32(name, v);
      CHECK(v[0] == std::numeric_limits<float>::infinity());
      CHECK(v[1] == -std::numeric_limits<float>::infinity());
      CHECK(std::isnan(v[2]));
      CHECK(std::isnan(v[3]));  // a signalling pattern stays a NaN, not an infinity
    }
  }
}

TEST_CASE("hf checkpoint: BF16, F16 and mixed-dtype checkpoints load the stored values exactly", "[checkpoint]") {
  TempDir dir("hf_dtype_checkpoints");
  const moe::ModelConfig config = small_config();
  const auto model = random_model(config, 21);
  for (const std::string dtype : {"BF16", "F16"}) {
    INFO(dtype);
    const std::vector<float> expected = expected_params(*model, dtype);
    // The rounding is real: a BF16 or F16 checkpoint is not the F32 one.
    REQUIRE_FALSE(std::memcmp(expected.data(), model->params.data(), expected.size() * 4) == 0);
    const auto loaded =
        moe::load_checkpoint(write_single(dir / ("single_" + dtype), config, tensors_of(*model, dtype)));
    CHECK(params_equal(*loaded, expected));
    CHECK(moe::to_json(loaded->config) == moe::to_json(config));
  }
  // As released HF checkpoints do: BF16 weights, F32 norms and routing bias, and some F16.
  std::vector<RawTensor> mixed;
  std::vector<float> expected(model->layout.total);
  for (const moe::TensorSpec& spec : model->layout.tensors) {
    const std::string dtype = spec.role == moe::TensorRole::router_bias || spec.name.find("norm") != std::string::npos
                                  ? "F32"
                                  : (spec.name.find("experts.1.") != std::string::npos ? "F16" : "BF16");
    const float* p = model->params.data() + spec.offset;
    mixed.push_back(raw(spec.name, spec.shape, dtype, std::vector<float>(p, p + spec.numel)));
    for (int64_t i = 0; i < spec.numel; ++i) expected[size_t(spec.offset + i)] = stored(p[i], dtype);
  }
  const auto loaded = moe::load_checkpoint(write_single(dir / "mixed", config, mixed));
  CHECK(params_equal(*loaded, expected));
}

TEST_CASE("hf checkpoint: 2 and 3 shards give the parameters of the single file", "[checkpoint]") {
  TempDir dir("hf_sharded");
  const moe::ModelConfig config = small_config();
  const auto model = random_model(config, 22);
  for (const std::string dtype : {"F32", "BF16"}) {
    INFO(dtype);
    const std::vector<RawTensor> tensors = tensors_of(*model, dtype);
    const auto single = moe::load_checkpoint(write_single(dir / ("single_" + dtype), config, tensors));
    const std::vector<float> expected = expected_params(*model, dtype);
    REQUIRE(params_equal(*single, expected));
    if (dtype == "F32")
      REQUIRE(
          params_equal(*single, std::vector<float>(model->params.data(), model->params.data() + model->layout.total)));
    for (size_t n : {2, 3}) {
      INFO(n << " shards");
      const Sharded s = split(tensors, n);
      for (const auto& shard : s.shards) REQUIRE_FALSE(shard.empty());
      const std::string ckpt = write_sharded(dir / (dtype + "_" + std::to_string(n)), config, s);
      const auto loaded = moe::load_checkpoint(ckpt);
      CHECK(std::memcmp(loaded->params.data(), single->params.data(), size_t(model->layout.total) * 4) == 0);
      CHECK(moe::to_json(loaded->config) == moe::to_json(config));

      // The abstraction itself: names, shapes, dtypes and the file each tensor came from.
      const moe::CheckpointTensors t = moe::CheckpointTensors::open(ckpt);
      CHECK(t.source() == ckpt + "/model.safetensors.index.json");
      CHECK(t.size() == model->layout.tensors.size());
      CHECK(t.names().size() == t.size());
      CHECK(t.shape("model.embed_tokens.weight") == std::vector<int64_t>{256, 16});
      CHECK(t.dtype("lm_head.weight") == dtype);
      CHECK(t.file_of("model.embed_tokens.weight") == ckpt + "/" + s.files.front());
      CHECK(t.file_of("lm_head.weight") == ckpt + "/" + s.files.back());
      REQUIRE_MOE_ERROR(t.shape("nope"), Contains("model.safetensors.index.json") && Contains("no tensor \"nope\""));
    }
  }
  // Shards in another order than the layout, with tensors interleaved: the index decides, not the order.
  std::vector<RawTensor> tensors = tensors_of(*model, "F32");
  Sharded s;
  s.files = {"b.safetensors", "a.safetensors", "c.safetensors"};
  s.shards.resize(3);
  json weight_map = json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    s.shards[i % 3].push_back(tensors[i]);
    weight_map[tensors[i].name] = s.files[i % 3];
  }
  s.index = {{"weight_map", weight_map}};  // no metadata: it is optional
  const auto loaded = moe::load_checkpoint(write_sharded(dir / "interleaved", config, s));
  CHECK(std::memcmp(loaded->params.data(), model->params.data(), size_t(model->layout.total) * 4) == 0);
}

TEST_CASE("hf checkpoint: a sharded checkpoint whose index and shards disagree is refused", "[checkpoint]") {
  TempDir dir("hf_sharded_errors");
  const moe::ModelConfig config = small_config();
  const auto model = random_model(config, 23);
  Sharded s = split(tensors_of(*model, "BF16"), 3);
  const std::string ckpt = dir / "ckpt";
  const std::string index = ckpt + "/model.safetensors.index.json";
  const std::string first = ckpt + "/" + s.files[0], second = ckpt + "/" + s.files[1];
  const std::string moved = s.shards[1].front().name;  // a tensor of the second shard
  auto load = [&] { return moe::load_checkpoint(write_sharded(ckpt, config, s)); };
  REQUIRE(load()->layout.total == model->layout.total);  // the unbroken checkpoint loads
  fs::remove_all(ckpt);

  SECTION("a listed tensor missing from its shard") {
    s.shards[1].erase(s.shards[1].begin());
    REQUIRE_MOE_ERROR(load(), Contains(second) && Contains("tensor \"" + moved + "\" is missing") &&
                                  Contains("model.safetensors.index.json maps it to this shard"));
  }
  SECTION("a listed shard that does not exist") {
    write_sharded(ckpt, config, s);
    fs::remove(second);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt),
                      Contains(second) && Contains("does not exist") && Contains("model.safetensors.index.json"));
  }
  SECTION("a listed shard that cannot be read") {
    write_sharded(ckpt, config, s);
    write_bytes(second, "abcd");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(second) && Contains("truncated"));
    fs::remove(second);
    fs::create_directory(second);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(second) && Contains("is a directory"));
  }
  SECTION("every check of the single-file reader runs on every shard") {
    write_sharded(ckpt, config, s);
    std::string bytes = read_bytes(second);
    write_bytes(second, bytes.substr(0, bytes.size() - 2));
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(second) && Contains("out of range"));
    write_bytes(second, bytes);
    const std::string third = ckpt + "/" + s.files[2];
    bytes = read_bytes(third);
    bytes.replace(bytes.find("\"BF16\""), 6, "\"I16\" ");
    write_bytes(third, bytes);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt),
                      Contains(third) && Contains("has dtype I16; moe reads F32, BF16 and F16"));
  }
  SECTION("a shard holding a tensor the index does not list") {
    s.shards[0].push_back(raw("model.layers.0.extra.weight", {2}, "BF16", {1.0f, 2.0f}));
    REQUIRE_MOE_ERROR(load(), Contains(first) && Contains("holds tensor \"model.layers.0.extra.weight\"") &&
                                  Contains("model.safetensors.index.json does not list"));
  }
  SECTION("a shard holding a tensor the index puts in another shard") {
    s.shards[0].push_back(s.shards[1].front());
    s.shards[1].erase(s.shards[1].begin());
    REQUIRE_MOE_ERROR(load(), Contains(first) && Contains("holds tensor \"" + moved + "\"") &&
                                  Contains("maps to shard " + s.files[1]));
  }
  SECTION("a tensor present in two shards") {
    s.shards[2].push_back(s.shards[1].front());
    REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("tensor \"" + moved + "\" is present in two shards") &&
                                  Contains(second) && Contains(ckpt + "/" + s.files[2]));
  }
  SECTION("a .safetensors file the index does not list") {
    write_sharded(ckpt, config, s);
    const std::string stray = ckpt + "/model-00004-of-00004.safetensors";
    fs::copy_file(second, stray);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt),
                      Contains(stray) && Contains("shard not listed in") && Contains("model.safetensors.index.json"));
    fs::remove(stray);
    // Files of other kinds are none of the index's business.
    write_bytes(ckpt + "/README.md", "hello");
    write_bytes(ckpt + "/model.safetensors.bak", "x");
    CHECK(moe::load_checkpoint(ckpt)->layout.total == model->layout.total);
  }
  SECTION("both model.safetensors and an index") {
    write_sharded(ckpt, config, s);
    write_bytes(ckpt + "/model.safetensors", encode(tensors_of(*model, "F32")));
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(ckpt) &&
                                                      Contains("holds both model.safetensors and "
                                                               "model.safetensors.index.json") &&
                                                      Contains("ambiguous"));
  }
  SECTION("weight_map that is not an object of file names") {
    s.index["weight_map"] = json::array({s.files[0]});
    REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("weight_map is not an object"));
    fs::remove_all(ckpt);
    s.index.erase("weight_map");
    REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("no \"weight_map\""));
    fs::remove_all(ckpt);
    s = split(tensors_of(*model, "BF16"), 3);
    s.index["weight_map"][moved] = 2;
    REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("weight_map[\"" + moved + "\"] is not a string"));
  }
  SECTION("a shard path that leaves the directory") {
    for (const std::string& bad :
         std::vector<std::string>{"../" + s.files[1], "sub/" + s.files[1], "/etc/passwd", "..", ""}) {
      INFO(bad);
      fs::remove_all(ckpt);
      s.index["weight_map"][moved] = bad;
      REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("weight_map[\"" + moved + "\"] = \"" + bad + "\"") &&
                                    Contains("not a file name inside the checkpoint directory"));
    }
  }
  SECTION("an index that is not JSON, or not an object") {
    write_sharded(ckpt, config, s);
    write_bytes(index, "{\"weight_map\": {");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(index));
    write_bytes(index, "[]");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(index) && Contains("expected a JSON object"));
  }
  SECTION("the config's checks run across the shards") {
    SECTION("a tensor in no shard and not in the index") {
      s.shards[1].erase(s.shards[1].begin());
      s.index["weight_map"].erase(moved);
      REQUIRE_MOE_ERROR(load(), Contains(index) && Contains("missing tensor \"" + moved + "\""));
    }
    SECTION("an unknown tensor, listed") {
      s.shards[2].push_back(
          raw("model.layers.1.mlp.experts.4.gate_proj.weight", {8, 16}, "BF16", std::vector<float>(128, 0.5f)));
      s.index["weight_map"]["model.layers.1.mlp.experts.4.gate_proj.weight"] = s.files[2];
      REQUIRE_MOE_ERROR(load(), Contains(ckpt + "/" + s.files[2]) &&
                                    Contains("unknown tensor \"model.layers.1.mlp.experts.4.gate_proj.weight\""));
    }
    SECTION("a shape the config does not imply") {
      find_tensor(s.shards[0], "model.embed_tokens.weight").shape = {16, 256};
      REQUIRE_MOE_ERROR(load(), Contains(first) && Contains("\"model.embed_tokens.weight\" has shape [16, 256]") &&
                                    Contains("config implies [256, 16]"));
    }
  }
}

TEST_CASE("hf checkpoint: a non-finite BF16 or F16 value is refused", "[checkpoint]") {
  TempDir dir("hf_non_finite");
  const moe::ModelConfig config = small_config();
  const auto model = random_model(config, 24);
  struct Case {
    std::string dtype;
    uint16_t bits;
  };
  for (const Case& c :
       {Case{"BF16", 0x7f80}, Case{"BF16", 0xffc0}, Case{"BF16", 0x7f81}, Case{"F16", 0xfc00}, Case{"F16", 0x7e00}}) {
    INFO(c.dtype << " 0x" << std::hex << c.bits);
    std::vector<RawTensor> tensors = tensors_of(*model, c.dtype);
    RawTensor& t = find_tensor(tensors, "model.layers.1.mlp.experts.2.up_proj.weight");
    std::memcpy(t.bytes.data() + 2 * 37, &c.bits, 2);
    const std::string single = write_single(dir / "single", config, tensors);
    REQUIRE_MOE_ERROR(
        moe::load_checkpoint(single),
        Contains(single + "/model.safetensors") &&
            Contains("\"model.layers.1.mlp.experts.2.up_proj.weight\" holds a non-finite value (" + c.dtype + ")"));
    fs::remove_all(single);
    const Sharded s = split(tensors, 3);
    size_t holder = 0;
    while (std::none_of(s.shards[holder].begin(), s.shards[holder].end(),
                        [&](const RawTensor& r) { return r.name == t.name; }))
      ++holder;
    const std::string sharded = write_sharded(dir / "sharded", config, s);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(sharded), Contains(sharded + "/" + s.files[holder]) &&
                                                         Contains("model.layers.1.mlp.experts.2.up_proj.weight") &&
                                                         Contains("non-finite"));
    fs::remove_all(sharded);
  }
}

TEST_CASE("hf checkpoint: moe eval on sharded BF16 equals the F32 checkpoint of the same values", "[checkpoint][cli]") {
  TempDir dir("hf_eval");
  moe::ModelConfig c;
  c.hidden_size = 32, c.num_hidden_layers = 2, c.num_attention_heads = 2, c.num_key_value_heads = 1;
  c.head_dim = 16, c.intermediate_size = 48, c.moe_intermediate_size = 16, c.first_k_dense_replace = 1;
  c.n_routed_experts = 4, c.num_experts_per_tok = 2, c.max_position_embeddings = 64, c.initializer_range = 0.2;
  moe::validate(c, "hf_eval");
  auto model = random_model(c, 25);
  // The BF16 checkpoint by hand, in 3 shards; the F32 one by moe from the same, BF16-rounded values.
  const std::string bf16 = write_sharded(dir / "bf16", c, split(tensors_of(*model, "BF16"), 3));
  const std::vector<float> rounded = expected_params(*model, "BF16");
  std::copy(rounded.begin(), rounded.end(), model->params.data());
  const std::string f32 = dir / "f32";
  moe::save_checkpoint(f32, *model);

  const std::string data = dir / "text.txt";
  write_bytes(data, "The quick brown fox jumps over the lazy dog; " + std::string(120, 'x') + " and the end.");
  auto eval = [&](const std::string& ckpt) {
    const moe_test::RunResult r =
        moe_test::run_moe({"eval", "-m", ckpt, "--data", data, "--ctx", "32", "--json", "-t", "1"});
    INFO(r.describe());
    REQUIRE(r.ok());
    return json::parse(r.out);
  };
  const json a = eval(bf16), b = eval(f32);
  CHECK(a.at("tokens") == b.at("tokens"));
  CHECK(a.at("loss").get<double>() == b.at("loss").get<double>());  // exactly: the same floats in the arena
  CHECK(a.at("layers") == b.at("layers"));
  // And the loss is not that of the unrounded F32 model (the comparison above could not pass by chance).
  const auto original = random_model(c, 25);
  const std::string unrounded = dir / "unrounded";
  moe::save_checkpoint(unrounded, *original);
  CHECK(eval(unrounded).at("loss").get<double>() != a.at("loss").get<double>());
}
