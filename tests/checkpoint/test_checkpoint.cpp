// Checkpoints: a save/load round trip with identical bytes, the exact safetensors layout (parsed here
// independently of lib/), and every rejection of the reader, on files crafted byte by byte.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/checks.hpp"
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

static_assert(std::endian::native == std::endian::little, "these tests compare raw f32 bytes with the file");

namespace {

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a header text (used as is: no padding) and a data section.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::string f32_bytes(const std::vector<float>& values) {
  std::string s(values.size() * 4, '\0');
  std::memcpy(s.data(), values.data(), s.size());
  return s;
}

// A model with random weights and a non-zero routing bias (init sets it to 0; it must survive too).
std::unique_ptr<moe::Model> random_model(uint64_t seed) {
  auto model = std::make_unique<moe::Model>(small_config());
  model->init(seed);
  for (const moe::TensorSpec& spec : model->layout.tensors)
    if (spec.role == moe::TensorRole::router_bias)
      for (int64_t i = 0; i < spec.numel; ++i) model->params[spec.offset + i] = 0.01f * float(i + 1) - 0.025f;
  return model;
}

// One tensor of a crafted file.
struct RawTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<RawTensor> tensors_of(const moe::Model& model) {
  std::vector<RawTensor> out;
  for (const moe::TensorSpec& spec : model.layout.tensors)
    out.push_back(
        {spec.name, spec.shape,
         std::vector<float>(model.params.data() + spec.offset, model.params.data() + spec.offset + spec.numel)});
  return out;
}

// Our own writer, independent of lib/: tensors laid out contiguously in the given order.
std::string encode(const std::vector<RawTensor>& tensors) {
  json header = json::object();
  std::string data;
  for (const RawTensor& t : tensors) {
    const uint64_t begin = data.size();
    data += f32_bytes(t.values);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, uint64_t(data.size())}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return safetensors_bytes(text, data);
}

// A checkpoint directory with the model's config.json and a crafted model.safetensors.
std::string crafted_checkpoint(const TempDir& dir, const moe::Model& model, const std::vector<RawTensor>& tensors) {
  const std::string ckpt = dir / "ckpt";
  fs::create_directories(ckpt);
  write_bytes(ckpt + "/config.json", moe::to_json(model.config).dump(2));
  write_bytes(ckpt + "/model.safetensors", encode(tensors));
  return ckpt;
}

std::vector<RawTensor>::iterator find_tensor(std::vector<RawTensor>& tensors, const std::string& name) {
  auto it = std::find_if(tensors.begin(), tensors.end(), [&](const RawTensor& t) { return t.name == name; });
  REQUIRE(it != tensors.end());
  return it;
}

}  // namespace

TEST_CASE("checkpoint: save then load gives identical bytes for every tensor", "[checkpoint]") {
  TempDir dir("checkpoint_roundtrip");
  const auto model = random_model(42);
  const std::string ckpt = dir / "run";
  moe::save_checkpoint(ckpt, *model);
  REQUIRE(fs::is_regular_file(ckpt + "/config.json"));
  REQUIRE(fs::is_regular_file(ckpt + "/model.safetensors"));

  const auto loaded = moe::load_checkpoint(ckpt);
  REQUIRE(loaded->layout.total == model->layout.total);
  REQUIRE(loaded->layout.tensors.size() == model->layout.tensors.size());
  for (size_t i = 0; i < model->layout.tensors.size(); ++i) {
    const moe::TensorSpec& a = model->layout.tensors[i];
    const moe::TensorSpec& b = loaded->layout.tensors[i];
    INFO(a.name);
    REQUIRE(a.name == b.name);
    REQUIRE(a.shape == b.shape);
    CHECK(std::memcmp(model->params.data() + a.offset, loaded->params.data() + b.offset, size_t(a.numel) * 4) == 0);
  }
  // The config comes back exactly, and saving the loaded model reproduces the same file.
  CHECK(moe::to_json(loaded->config) == moe::to_json(model->config));
  moe::save_checkpoint(dir / "again", *loaded);
  CHECK(read_bytes(dir / "again/model.safetensors") == read_bytes(ckpt + "/model.safetensors"));
  // Saving over an existing checkpoint replaces it and leaves no temporary files behind.
  const auto other = random_model(43);
  moe::save_checkpoint(ckpt, *other);
  const auto reloaded = moe::load_checkpoint(ckpt);
  CHECK(std::memcmp(reloaded->params.data(), other->params.data(), size_t(other->layout.total) * 4) == 0);
  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(ckpt)) files.insert(entry.path().filename().string());
  CHECK(files == std::set<std::string>{"config.json", "model.safetensors"});
}

TEST_CASE("checkpoint: config.json is flat with model_type moe", "[checkpoint]") {
  TempDir dir("checkpoint_config_json");
  const auto model = random_model(1);
  moe::save_checkpoint(dir / "ckpt", *model);
  const json config = json::parse(read_bytes(dir / "ckpt/config.json"));
  CHECK(config.at("model_type") == "moe");
  CHECK(config.at("hidden_size") == 16);
  CHECK(config.at("head_dim") == 8);
  CHECK(config.at("n_routed_experts") == 4);
  CHECK(config.at("scoring_func") == "sigmoid");
  for (const auto& [key, value] : config.items()) {
    INFO(key);
    CHECK_FALSE(value.is_object());
  }
}

TEST_CASE("checkpoint: model.safetensors has the exact documented layout", "[checkpoint]") {
  TempDir dir("checkpoint_format");
  const auto model = random_model(7);
  moe::save_checkpoint(dir / "ckpt", *model);
  const std::string bytes = read_bytes(dir / "ckpt/model.safetensors");

  // 8-byte little-endian header length.
  REQUIRE(bytes.size() >= 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(bytes[size_t(i)]);
  REQUIRE(8 + header_len <= bytes.size());
  // JSON header, padded with spaces (and only spaces) to a multiple of 8.
  CHECK(header_len % 8 == 0);
  const std::string text = bytes.substr(8, header_len);
  CHECK(text.front() == '{');
  const size_t close = text.find_last_of('}');
  REQUIRE(close != std::string::npos);
  CHECK(text.size() - close - 1 < 8);
  CHECK(text.find_first_not_of(' ', close + 1) == std::string::npos);
  const json header = json::parse(text);
  REQUIRE(header.is_object());

  // Exactly the tensors of the layout, F32, with the shapes the config implies.
  std::set<std::string> names;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.items()) CHECK(v.is_string());
      continue;
    }
    INFO(name);
    names.insert(name);
    const moe::TensorSpec* spec = model->find(name);
    REQUIRE(spec != nullptr);
    CHECK(entry.at("dtype") == "F32");
    CHECK(entry.at("shape").get<std::vector<int64_t>>() == spec->shape);
    const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
    REQUIRE(offsets.size() == 2);
    REQUIRE(offsets[1] - offsets[0] == uint64_t(spec->numel) * 4);
    ranges.push_back({offsets[0], offsets[1]});
    // Little-endian F32 values, bit-identical to the parameters.
    REQUIRE(8 + header_len + offsets[1] <= bytes.size());
    CHECK(std::memcmp(bytes.data() + 8 + header_len + offsets[0], model->params.data() + spec->offset,
                      size_t(spec->numel) * 4) == 0);
  }
  CHECK(names.size() == model->layout.tensors.size());

  // Offsets are contiguous: no gap, no overlap, the data section ends exactly at the end of the file.
  std::sort(ranges.begin(), ranges.end());
  REQUIRE_FALSE(ranges.empty());
  CHECK(ranges.front().first == 0);
  for (size_t i = 1; i < ranges.size(); ++i) CHECK(ranges[i].first == ranges[i - 1].second);
  CHECK(8 + header_len + ranges.back().second == bytes.size());
}

TEST_CASE("checkpoint: tensor names follow Hugging Face DeepSeek-V3", "[checkpoint]") {
  const auto model = random_model(3);
  const int64_t D = 16, V = 256, E = 4, Im = 8, I = 24;
  std::map<std::string, std::vector<int64_t>> expected = {
      {"model.embed_tokens.weight", {V, D}},
      {"model.norm.weight", {D}},
      {"lm_head.weight", {V, D}},
      {"model.layers.0.mlp.gate_proj.weight", {I, D}},
      {"model.layers.0.mlp.up_proj.weight", {I, D}},
      {"model.layers.0.mlp.down_proj.weight", {D, I}},
      {"model.layers.1.mlp.gate.weight", {E, D}},
      {"model.layers.1.mlp.gate.e_score_correction_bias", {E}},
      {"model.layers.1.mlp.shared_experts.gate_proj.weight", {Im, D}},
      {"model.layers.1.mlp.shared_experts.up_proj.weight", {Im, D}},
      {"model.layers.1.mlp.shared_experts.down_proj.weight", {D, Im}},
  };
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expected[p + "input_layernorm.weight"] = {D};
    expected[p + "post_attention_layernorm.weight"] = {D};
    expected[p + "self_attn.q_proj.weight"] = {16, D};  // 2 heads x 8
    expected[p + "self_attn.k_proj.weight"] = {8, D};   // 1 kv head x 8
    expected[p + "self_attn.v_proj.weight"] = {8, D};
    expected[p + "self_attn.o_proj.weight"] = {D, 16};
  }
  for (int j = 0; j < E; ++j) {
    const std::string p = "model.layers.1.mlp.experts." + std::to_string(j) + ".";
    expected[p + "gate_proj.weight"] = {Im, D};
    expected[p + "up_proj.weight"] = {Im, D};
    expected[p + "down_proj.weight"] = {D, Im};
  }
  std::map<std::string, std::vector<int64_t>> actual;
  for (const moe::TensorSpec& spec : model->layout.tensors) actual[spec.name] = spec.shape;
  CHECK(actual == expected);
}

TEST_CASE("checkpoint: a crafted file from our own writer loads", "[checkpoint]") {
  // Guards the rejection tests below: the same writer with nothing broken must be accepted, also
  // with tensors in a different order than the layout.
  TempDir dir("checkpoint_crafted_ok");
  const auto model = random_model(5);
  auto tensors = tensors_of(*model);
  std::reverse(tensors.begin(), tensors.end());
  const auto loaded = moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors));
  CHECK(std::memcmp(loaded->params.data(), model->params.data(), size_t(model->layout.total) * 4) == 0);
}

TEST_CASE("checkpoint: reader rejects malformed safetensors files", "[checkpoint]") {
  TempDir dir("checkpoint_reader");
  const std::string path = dir / "t.safetensors";
  const std::string four_floats = f32_bytes({1, 2, 3, 4});
  auto header_with = [](const json& entry) { return json{{"x", entry}}.dump(); };

  SECTION("missing file") {
    const std::string missing = dir / "missing.safetensors";
    REQUIRE_MOE_ERROR(moe::read_safetensors(missing), Contains(missing) && Contains("cannot open"));
  }
  SECTION("directory instead of a file") {
    const std::string sub = dir / "sub.safetensors";
    fs::create_directories(sub);
    REQUIRE_MOE_ERROR(moe::read_safetensors(sub), Contains(sub) && Contains("is a directory"));
  }
  SECTION("shorter than 8 bytes") {
    write_bytes(path, std::string("\x10\0\0", 3));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains(path) && Contains("truncated") && Contains("3 bytes"));
    write_bytes(path, "");
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("truncated"));
  }
  SECTION("header length past the end of the file") {
    write_bytes(path, le64(1000) + "{}      ");
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("header length 1000") && Contains("past the end"));
    write_bytes(path, le64(1));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("past the end"));
  }
  SECTION("absurd header length") {
    write_bytes(path, le64(~0ull) + "{}      ");
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("absurdly large"));
    write_bytes(path, le64(1ull << 40) + "{}      ");
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("absurdly large"));
  }
  SECTION("header not JSON") {
    write_bytes(path, safetensors_bytes("{\"x\": [1, 2,", four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains(path) && Contains("header is not valid JSON"));
    write_bytes(path, safetensors_bytes("[1, 2, 3]       ", four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("header is not a JSON object"));
  }
  SECTION("entry without its fields") {
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {4}}}), four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("tensor \"x\"") && Contains("data_offsets"));
  }
  SECTION("offsets out of range") {
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {4, 20}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("tensor \"x\"") &&
                                                       Contains("data_offsets [4, 20] out of range") &&
                                                       Contains("16 bytes"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {8, 4}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("out of range"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {-4, 12}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("data_offsets must be two non-negative integers"));
  }
  SECTION("overlapping offsets") {
    const json header = {{"a", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}}},
                         {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}}};
    write_bytes(path, safetensors_bytes(header.dump(), four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains(path) && Contains("overlap"));
  }
  SECTION("shape inconsistent with offsets") {
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path),
                      Contains("tensor \"x\"") && Contains("cover 16 bytes but shape needs 24"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {-4}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("negative dimension"));
    write_bytes(path,
                safetensors_bytes(
                    header_with({{"dtype", "F32"}, {"shape", {1ull << 30, 1ull << 30}}, {"data_offsets", {0, 16}}}),
                    four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("absurdly large"));
  }
  SECTION("dtype other than F32, BF16 and F16") {
    // Byte counts that would fit the dtype, so that only the dtype itself is wrong.
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "I8"}, {"shape", {16}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path),
                      Contains(path) && Contains("tensor \"x\" has dtype I8; moe reads F32, BF16 and F16"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("has dtype F64; moe reads F32, BF16 and F16"));
    write_bytes(
        path, safetensors_bytes(header_with({{"dtype", 16}, {"shape", {8}}, {"data_offsets", {0, 16}}}), four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("dtype is not a string"));
  }
  SECTION("byte counts are checked per dtype") {
    // 16 bytes: four F32 values, but eight BF16 or F16 ones.
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("cover 16 bytes but shape needs 8 (BF16)"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F16"}, {"shape", {16}}, {"data_offsets", {0, 16}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("cover 16 bytes but shape needs 32 (F16)"));
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F16"}, {"shape", {7}}, {"data_offsets", {2, 16}}}),
                                        four_floats));
    CHECK(moe::read_safetensors(path).tensors.at("x").shape == std::vector<int64_t>{7});  // 2-byte alignment is enough
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "BF16"}, {"shape", {7}}, {"data_offsets", {1, 15}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("data offset 1 is not 2-byte aligned (BF16)"));
  }
  SECTION("misaligned offsets") {
    write_bytes(path, safetensors_bytes(header_with({{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {2, 10}}}),
                                        four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("aligned"));
  }
  SECTION("metadata must map strings to strings") {
    const json header = {{"__metadata__", {{"format", 1}}},
                         {"x", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}};
    write_bytes(path, safetensors_bytes(header.dump(), four_floats));
    REQUIRE_MOE_ERROR(moe::read_safetensors(path), Contains("__metadata__.format"));
  }
  SECTION("a well-formed file is read") {
    const json header = {{"__metadata__", {{"format", "pt"}}},
                         {"x", {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}}};
    write_bytes(path, safetensors_bytes(header.dump(), four_floats));
    const moe::SafetensorsFile file = moe::read_safetensors(path);
    CHECK(file.metadata.at("format") == "pt");
    CHECK(file.tensors.at("x").shape == std::vector<int64_t>{2, 2});
    CHECK(file.f32("x")[3] == 4.0f);
  }
}

TEST_CASE("checkpoint: loader rejects files that do not match the config", "[checkpoint]") {
  TempDir dir("checkpoint_loader");
  const auto model = random_model(11);
  auto tensors = tensors_of(*model);

  SECTION("missing tensor") {
    tensors.erase(find_tensor(tensors, "model.norm.weight"));
    REQUIRE_MOE_ERROR(moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
                      Contains("model.safetensors") && Contains("missing tensor \"model.norm.weight\""));
  }
  SECTION("missing expert") {
    tensors.erase(find_tensor(tensors, "model.layers.1.mlp.experts.3.down_proj.weight"));
    REQUIRE_MOE_ERROR(moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
                      Contains("missing tensor \"model.layers.1.mlp.experts.3.down_proj.weight\""));
  }
  SECTION("unknown extra tensor") {
    tensors.push_back({"model.layers.1.mlp.experts.4.gate_proj.weight", {8, 16}, std::vector<float>(128, 0.5f)});
    REQUIRE_MOE_ERROR(moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
                      Contains("unknown tensor \"model.layers.1.mlp.experts.4.gate_proj.weight\""));
  }
  SECTION("shape disagreeing with config.json") {
    auto it = find_tensor(tensors, "model.embed_tokens.weight");
    it->shape = {16, 256};  // transposed: same size, wrong shape
    REQUIRE_MOE_ERROR(
        moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
        Contains("\"model.embed_tokens.weight\" has shape [16, 256]") && Contains("config implies [256, 16]"));
  }
  SECTION("config.json of a different model") {
    const std::string ckpt = dir / "ckpt";
    moe::save_checkpoint(ckpt, *model);
    moe::ModelConfig other = model->config;
    other.moe_intermediate_size = 12;
    write_bytes(ckpt + "/config.json", moe::to_json(other).dump());
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("has shape [8, 16], config implies [12, 16]"));
  }
  SECTION("NaN weight") {
    find_tensor(tensors, "lm_head.weight")->values[17] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_MOE_ERROR(moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
                      Contains("\"lm_head.weight\"") && Contains("non-finite"));
  }
  SECTION("infinite routing bias") {
    find_tensor(tensors, "model.layers.1.mlp.gate.e_score_correction_bias")->values[0] =
        -std::numeric_limits<float>::infinity();
    REQUIRE_MOE_ERROR(moe::load_checkpoint(crafted_checkpoint(dir, *model, tensors)),
                      Contains("e_score_correction_bias") && Contains("non-finite"));
  }
  SECTION("wrong dtype inside a checkpoint") {
    const std::string ckpt = crafted_checkpoint(dir, *model, tensors);
    std::string bytes = read_bytes(ckpt + "/model.safetensors");
    const size_t at = bytes.find("\"F32\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 5, "\"F64\"");
    write_bytes(ckpt + "/model.safetensors", bytes);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("model.safetensors") && Contains("has dtype F64"));
    // F16 is read, but these bytes hold twice as many F16 values as the shape needs.
    bytes.replace(at, 5, "\"F16\"");
    write_bytes(ckpt + "/model.safetensors", bytes);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("but shape needs") && Contains("(F16)"));
  }
  SECTION("truncated data section") {
    const std::string ckpt = crafted_checkpoint(dir, *model, tensors);
    std::string bytes = read_bytes(ckpt + "/model.safetensors");
    bytes.resize(bytes.size() - 4);
    write_bytes(ckpt + "/model.safetensors", bytes);
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("out of range"));
  }
}

TEST_CASE("checkpoint: loader rejects bad directories and config.json", "[checkpoint]") {
  TempDir dir("checkpoint_loader_dirs");
  const auto model = random_model(13);
  SECTION("no such directory") {
    const std::string missing = dir / "nope";
    REQUIRE_MOE_ERROR(moe::load_checkpoint(missing), Contains(missing) && Contains("no such checkpoint directory"));
  }
  SECTION("a file instead of a directory") {
    const std::string file = dir / "file";
    write_bytes(file, "x");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(file), Contains(file) && Contains("expected a checkpoint directory"));
  }
  SECTION("model.safetensors missing") {
    const std::string ckpt = dir / "ckpt";
    moe::save_checkpoint(ckpt, *model);
    fs::remove(ckpt + "/model.safetensors");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(ckpt + "/model.safetensors") && Contains("cannot open"));
  }
  SECTION("config.json missing") {
    const std::string ckpt = dir / "ckpt";
    moe::save_checkpoint(ckpt, *model);
    fs::remove(ckpt + "/config.json");
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains(ckpt + "/config.json") && Contains("cannot open"));
  }
  SECTION("config.json of another model type") {
    const std::string ckpt = dir / "ckpt";
    moe::save_checkpoint(ckpt, *model);
    json config = moe::to_json(model->config);
    config["model_type"] = "llama";
    write_bytes(ckpt + "/config.json", config.dump());
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt),
                      Contains("model_type") && Contains("expected \"deepseek_v3\" or \"moe\""));
  }
  SECTION("config.json that breaks a rule") {
    const std::string ckpt = dir / "ckpt";
    moe::save_checkpoint(ckpt, *model);
    json config = moe::to_json(model->config);
    config["n_group"] = 3;
    write_bytes(ckpt + "/config.json", config.dump());
    REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("config.json") && Contains("n_group (3) must divide"));
  }
}

TEST_CASE("checkpoint: a failed write leaves no partial file", "[checkpoint]") {
  TempDir dir("checkpoint_failed_write");
  const std::vector<float> values = {1, 2, 3, 4};
  const std::vector<moe::TensorRef> refs = {{"x", {4}, values.data()}};
  auto listing = [](const fs::path& p) {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(p)) names.insert(entry.path().filename().string());
    return names;
  };

  SECTION("into a directory that does not exist") {
    const std::string path = dir / "no_such_dir/model.safetensors";
    REQUIRE_MOE_ERROR(moe::write_safetensors(path, refs), Contains(path) && Contains("cannot create"));
    CHECK_FALSE(fs::exists(dir / "no_such_dir"));
    CHECK(listing(dir.path()).empty());
  }
  SECTION("rename onto a directory fails after the data was written") {
    // The temporary file is created and filled, then the rename fails: it must be removed.
    const std::string path = dir / "taken";
    fs::create_directories(path);
    write_bytes(path + "/keep", "keep");
    REQUIRE_MOE_ERROR(moe::write_safetensors(path, refs), Contains(path) && Contains("rename failed"));
    CHECK(listing(dir.path()) == std::set<std::string>{"taken"});
    CHECK(listing(path) == std::set<std::string>{"keep"});
    REQUIRE_MOE_ERROR(moe::write_file_atomic(path, "{}"), Contains("rename failed"));
    CHECK(listing(dir.path()) == std::set<std::string>{"taken"});
  }
  SECTION("save_checkpoint under a missing parent") {
    const auto model = random_model(17);
    const std::string ckpt = dir / "missing_parent/ckpt";
    REQUIRE_THROWS_AS(moe::save_checkpoint(ckpt, *model), moe::Error);
    CHECK(listing(dir.path()).empty());
  }
  SECTION("a successful write replaces the old file whole") {
    const std::string path = dir / "w.safetensors";
    write_bytes(path, "old contents");
    moe::write_safetensors(path, refs, {{"format", "pt"}});
    const moe::SafetensorsFile file = moe::read_safetensors(path);
    CHECK(file.f32("x")[2] == 3.0f);
    CHECK(file.metadata.at("format") == "pt");
    CHECK(listing(dir.path()) == std::set<std::string>{"w.safetensors"});
  }
}

TEST_CASE("checkpoint: an MTP model writes the shared embedding and head at layer L; they must match on load",
          "[checkpoint]") {
  moe::ModelConfig c = small_config();
  c.num_key_value_heads = c.num_attention_heads;
  c.kv_lora_rank = 8, c.qk_nope_head_dim = 4, c.qk_rope_head_dim = 4, c.v_head_dim = 6, c.head_dim = 4;
  c.num_nextn_predict_layers = 1;
  moe::validate(c, "test");
  moe::Model model(c, {}, false);
  model.init(3);
  TempDir dir("checkpoint_mtp");
  const std::string ckpt = dir / "run";
  moe::save_checkpoint(ckpt, model);
  const std::string L = std::to_string(c.num_hidden_layers);
  const moe::SafetensorsFile file = moe::read_safetensors(ckpt + "/model.safetensors");
  // DeepSeek-V3's MTP names, the module's own tensors and the two copies of the shared ones.
  for (const char* name :
       {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "embed_tokens.weight",
        "shared_head.head.weight", "self_attn.kv_a_proj_with_mqa.weight", "mlp.gate.e_score_correction_bias"})
    CHECK(file.tensors.count("model.layers." + L + "." + name) == 1);
  auto same = [&](const std::string& copy, const std::string& main) {
    const auto& a = file.tensors.at(copy);
    const auto& b = file.tensors.at(main);
    return a.shape == b.shape && std::memcmp(file.f32(copy), file.f32(main), size_t(a.end - a.begin)) == 0;
  };
  CHECK(same("model.layers." + L + ".embed_tokens.weight", "model.embed_tokens.weight"));
  CHECK(same("model.layers." + L + ".shared_head.head.weight", "lm_head.weight"));
  CHECK(json::parse(read_bytes(ckpt + "/config.json"))["num_nextn_predict_layers"] == 1);
  const auto loaded = moe::load_checkpoint(ckpt);
  CHECK(std::memcmp(loaded->params.data(), model.params.data(), size_t(model.layout.total) * 4) == 0);

  // A copy that differs from the main tensor is refused naming it; a missing one is the main tensor
  // (a writer that ties them stores them once).
  std::vector<moe::TensorRef> refs;
  std::vector<std::vector<float>> keep;
  for (const auto& [name, entry] : file.tensors) {
    keep.emplace_back(file.f32(name), file.f32(name) + (entry.end - entry.begin) / 4);
    if (name == "model.layers." + L + ".shared_head.head.weight") keep.back()[5] += 1.0f;
    refs.push_back({name, entry.shape, keep.back().data()});
  }
  moe::write_safetensors(ckpt + "/model.safetensors", refs);
  REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt),
                    Contains("shared_head.head.weight") && Contains("differs from") && Contains("lm_head.weight"));
  std::vector<moe::TensorRef> without;
  for (const auto& ref : refs)
    if (ref.name != "model.layers." + L + ".embed_tokens.weight") without.push_back(ref);
  moe::write_safetensors(ckpt + "/model.safetensors", without);
  REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("shared_head.head.weight") && Contains("differs from"));
  without.clear();
  for (const auto& [name, entry] : file.tensors)
    if (name.rfind("model.layers." + L + ".embed_tokens", 0) != 0 &&
        name.rfind("model.layers." + L + ".shared_head.head", 0) != 0)
      without.push_back({name, entry.shape, file.f32(name)});
  REQUIRE(without.size() + 2 == file.tensors.size());
  moe::write_safetensors(ckpt + "/model.safetensors", without);
  const auto untied = moe::load_checkpoint(ckpt);
  CHECK(std::memcmp(untied->params.data(), model.params.data(), size_t(model.layout.total) * 4) == 0);
  // One copy left out and an unknown tensor in its place: the unknown one is still refused.
  std::vector<moe::TensorRef> swapped = without;
  swapped.push_back({"model.layers." + L + ".embed_tokens.weight", file.tensors.at("model.embed_tokens.weight").shape,
                     file.f32("model.embed_tokens.weight")});
  swapped.push_back({"model.layers." + L + ".extra.weight", {2}, file.f32("model.embed_tokens.weight")});
  moe::write_safetensors(ckpt + "/model.safetensors", swapped);
  REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("unknown tensor") && Contains("extra.weight"));
  // A main tensor missing is still refused.
  without.erase(
      std::find_if(without.begin(), without.end(), [](const moe::TensorRef& r) { return r.name == "lm_head.weight"; }));
  moe::write_safetensors(ckpt + "/model.safetensors", without);
  REQUIRE_MOE_ERROR(moe::load_checkpoint(ckpt), Contains("missing tensor") && Contains("lm_head.weight"));
}

TEST_CASE("checkpoint: an opened file reads each tensor from disk, as a file read whole does", "[checkpoint]") {
  TempDir dir("checkpoint_open");
  // Halves past the reader's chunk of 65536 values, a float tensor, and a tensor of no values.
  const int64_t n = 70001;
  std::string bf16_halves(static_cast<size_t>(2 * n), '\0'), f16_halves = bf16_halves;
  std::vector<float> expected_bf16, expected_f16;
  for (int64_t i = 0; i < n; ++i) {
    // Within [1, 2): BF16 steps of 2^-7, F16 steps of 2^-10.
    const uint16_t bf16 = uint16_t(0x3f80 + i % 128), f16 = uint16_t(0x3c00 + i % 300);
    std::memcpy(bf16_halves.data() + 2 * i, &bf16, 2);
    std::memcpy(f16_halves.data() + 2 * i, &f16, 2);
    expected_bf16.push_back(1.0f + float(i % 128) / 128.0f);
    expected_f16.push_back(1.0f + float(i % 300) / 1024.0f);
  }
  const std::string floats = f32_bytes({1.5f, -2.0f, 3.25f});
  const uint64_t a = 2 * uint64_t(n), b = 2 * a, c = b + 12;
  const json header = {{"h", {{"dtype", "BF16"}, {"shape", {n}}, {"data_offsets", {0, a}}}},
                       {"g", {{"dtype", "F16"}, {"shape", {n}}, {"data_offsets", {a, b}}}},
                       {"f", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {b, c}}}},
                       {"e", {{"dtype", "F32"}, {"shape", {0, 4}}, {"data_offsets", {c, c}}}}};
  const std::string path = dir / "mixed.safetensors";
  write_bytes(path, safetensors_bytes(header.dump(), bf16_halves + f16_halves + floats));
  const moe::SafetensorsFile opened = moe::open_safetensors(path), whole = moe::read_safetensors(path);
  CHECK(opened.data.empty());
  CHECK(whole.data.size() == c);
  for (const moe::SafetensorsFile* file : {&opened, &whole}) {
    std::vector<float> values(static_cast<size_t>(n));
    file->copy_f32("h", values.data());
    CHECK(values == expected_bf16);
    file->copy_f32("g", values.data());
    CHECK(values == expected_f16);
    file->copy_f32("f", values.data());
    CHECK(std::vector<float>(values.begin(), values.begin() + 3) == std::vector<float>{1.5f, -2.0f, 3.25f});
    file->copy_f32("e", nullptr);
  }
  // In place only for a file read whole.
  CHECK(whole.f32("f")[2] == 3.25f);
  REQUIRE_MOE_ERROR(opened.f32("f"), Contains("opened without its data"));
  // The opened file keeps reading the file it opened, and notices one cut short since.
  fs::resize_file(path, 8 + header.dump().size() + a + 10);
  std::vector<float> values(static_cast<size_t>(n));
  REQUIRE_MOE_ERROR(opened.copy_f32("g", values.data()), Contains(path) && Contains("truncated data section"));
}

TEST_CASE("checkpoint: the streaming writer writes tensors as they come and reports a failure at commit",
          "[checkpoint]") {
  TempDir dir("checkpoint_writer");
  const std::vector<float> x = {1, 2, 3, 4}, y = {5, 6};
  const std::vector<moe::TensorRef> header = {{"x", {2, 2}, nullptr}, {"y", {2}, nullptr}};
  SECTION("the same bytes as write_safetensors") {
    moe::SafetensorsWriter out(dir / "streamed.safetensors", header, {{"format", "pt"}});
    CHECK_FALSE(fs::exists(dir / "streamed.safetensors"));  // nothing in place before commit
    out.write_next(x.data());
    out.write_next(y.data());
    out.commit();
    moe::write_safetensors(dir / "whole.safetensors", {{"x", {2, 2}, x.data()}, {"y", {2}, y.data()}},
                           {{"format", "pt"}});
    CHECK(read_bytes(dir / "streamed.safetensors") == read_bytes(dir / "whole.safetensors"));
  }
  SECTION("a file that cannot be created: the writes go nowhere, commit throws") {
    const std::string path = dir / "no_such_dir/model.safetensors";
    moe::SafetensorsWriter out(path, header);
    out.write_next(x.data());
    out.write_next(y.data());
    REQUIRE_MOE_ERROR(out.commit(), Contains(path) && Contains("cannot create"));
  }
  SECTION("fewer tensors than the header lists") {
    moe::SafetensorsWriter out(dir / "short.safetensors", header);
    out.write_next(x.data());
    REQUIRE_MOE_ERROR(out.commit(), Contains("1 of 2 tensors written"));
  }
}
