// GGUF v3 (ggml docs/gguf.md): the writer's bytes against a file spelled out by hand from the
// spec, the reader on it and on every truncation and corruption (an error naming the file, never a
// crash), and `moe inspect FILE.gguf`.
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/checks.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "core/error.hpp"
#include "core/gguf.hpp"

namespace {

// Little-endian bytes, written out one field at a time as the spec lists them.
struct Bytes {
  std::string s;
  Bytes& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) s += char((v >> (8 * i)) & 0xff);
    return *this;
  }
  Bytes& u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) s += char((v >> (8 * i)) & 0xff);
    return *this;
  }
  Bytes& str(const std::string& v) {
    u64(v.size());
    s += v;
    return *this;
  }
  Bytes& f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    return u32(bits);
  }
  Bytes& pad(size_t to) {
    s.resize((s.size() + to - 1) / to * to, '\0');
    return *this;
  }
};

}  // namespace

TEST_CASE("gguf: the writer's bytes are the spec's, field for field", "[gguf]") {
  moe::GgufWriter w;
  w.add_u32("a", 7);
  const float values[2] = {1.0f, 2.0f};
  w.add_tensor_f32("t", {2}, values);
  Bytes expected;
  expected.s = "GGUF";
  expected.u32(3).u64(1).u64(1);                  // version, tensor count, metadata count
  expected.str("a").u32(4).u32(7);                // key, type u32, value
  expected.str("t").u32(1).u64(2).u32(0).u64(0);  // name, 1 dim, ne[0] = 2, F32, offset 0
  expected.pad(32).f32(1.0f).f32(2.0f).pad(32);
  CHECK(w.bytes() == expected.s);
  CHECK(expected.s.size() == 128);
}

TEST_CASE("gguf: the reader reads back every kind of value and refuses every damaged file", "[gguf]") {
  moe_test::TempDir tmp("gguf");
  moe::GgufWriter w;
  w.add_string("general.architecture", "deepseek2");
  w.add_u32("deepseek2.block_count", 3);
  w.add_f32("deepseek2.rope.freq_base", 10000.0f);
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_string_array("tokenizer.ggml.tokens", {"\\x00", "a", "b"});
  w.add_i32_array("tokenizer.ggml.token_type", {6, 1, 1});
  std::vector<float> m(6);
  for (int i = 0; i < 6; ++i) m[size_t(i)] = float(i);
  w.add_tensor_f32("blk.0.w", {2, 3}, m.data());  // PyTorch [2, 3] -> ne {3, 2}
  w.add_tensor_f32("v", {5}, m.data());
  const std::string bytes = w.bytes();
  const std::string path = tmp / "x.gguf";
  moe_test::write_bytes(path, bytes);
  const moe::GgufFile g = moe::read_gguf(path);
  CHECK(g.version == 3);
  REQUIRE(g.kvs.size() == 6);
  CHECK(g.find("general.architecture")->text == "deepseek2");
  CHECK(g.find("deepseek2.block_count")->text == "3");
  CHECK(g.find("deepseek2.rope.freq_base")->text == "10000");
  CHECK(g.find("tokenizer.ggml.add_bos_token")->text == "false");
  CHECK(g.find("tokenizer.ggml.tokens")->count == 3);
  CHECK(g.find("tokenizer.ggml.tokens")->text == "[\"\\x00\", \"a\", \"b\"]");
  CHECK(g.find("tokenizer.ggml.token_type")->text == "[6, 1, 1]");
  REQUIRE(g.tensors.size() == 2);
  CHECK(g.tensors[0].ne == std::vector<uint64_t>{3, 2});
  CHECK(g.tensors[0].bytes == 24);
  CHECK(g.tensors[1].offset == 32);  // 24 bytes, padded to 32
  CHECK(g.data_start % 32 == 0);
  float first = 0;
  std::memcpy(&first, bytes.data() + g.data_start + g.tensors[1].offset + 4, 4);
  CHECK(first == 1.0f);
  // Every truncation is refused with the file's name.
  for (size_t n = 0; n < bytes.size() - 31; ++n) {
    CAPTURE(n);
    moe_test::write_bytes(path, bytes.substr(0, n));
    REQUIRE_MOE_ERROR(moe::read_gguf(path), Catch::Contains(path));
  }
  // A corrupt count, a bad magic, an unknown type.
  std::string huge = bytes;
  huge[16] = char(0xff), huge[23] = char(0x7f);  // metadata count ~ 2^63
  moe_test::write_bytes(path, huge);
  REQUIRE_MOE_ERROR(moe::read_gguf(path), Catch::Contains("cannot fit"));
  std::string magic = bytes;
  magic[0] = 'X';
  moe_test::write_bytes(path, magic);
  REQUIRE_MOE_ERROR(moe::read_gguf(path), Catch::Contains("not a GGUF file"));
  std::string type = bytes;
  const size_t at = type.find("general.architecture") + std::strlen("general.architecture");
  type[at] = char(99);
  moe_test::write_bytes(path, type);
  REQUIRE_MOE_ERROR(moe::read_gguf(path), Catch::Contains("unknown value type 99"));
}

TEST_CASE("inspect FILE.gguf lists its metadata and tensors", "[gguf][cli]") {
  moe_test::TempDir tmp("gguf_cli");
  moe::GgufWriter w;
  w.add_string("general.architecture", "deepseek2");
  w.add_u32("deepseek2.block_count", 3);
  const float v[4] = {1, 2, 3, 4};
  w.add_tensor_f32("token_embd.weight", {2, 2}, v);
  const std::string path = tmp / "m.gguf";
  moe_test::write_bytes(path, w.bytes());
  const auto r = moe_test::run_moe({"inspect", path});
  REQUIRE(r.code == 0);
  CHECK(r.out.find("GGUF v3 " + path + ": 2 metadata keys, 1 tensors") != std::string::npos);
  CHECK(r.out.find("general.architecture") != std::string::npos);
  CHECK(r.out.find("deepseek2") != std::string::npos);
  CHECK(r.out.find("token_embd.weight") != std::string::npos);
  const auto j = nlohmann::json::parse(moe_test::run_moe({"inspect", path, "--json"}).out);
  CHECK(j.at("tensors").at(0).at("type") == "F32");
  CHECK(j.at("metadata").at(1).at("value") == "3");
  moe_test::write_bytes(path, "GGUF");
  const auto bad = moe_test::run_moe({"inspect", path});
  CHECK(bad.code == 1);
  CHECK(bad.err.find(path + ": truncated") != std::string::npos);
}
