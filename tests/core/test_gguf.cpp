// GGUF v3 (ggml docs/gguf.md): the writer's bytes against a file spelled out by hand from the
// spec, the reader on it and on every truncation and corruption (an error naming the file, never a
// crash), and `moe inspect FILE.gguf`.
#include <algorithm>
#include <cmath>
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
#include "core/safetensors.hpp"

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

TEST_CASE("f16: float32 to IEEE half rounds to nearest even, known answers and every half back", "[gguf]") {
  using moe::float_to_f16;
  CHECK(float_to_f16(1.0f) == 0x3c00);
  CHECK(float_to_f16(-2.0f) == 0xc000);
  CHECK(float_to_f16(0.0f) == 0x0000);
  CHECK(float_to_f16(-0.0f) == 0x8000);
  CHECK(float_to_f16(1.0f / 3) == 0x3555);
  CHECK(float_to_f16(65504.0f) == 0x7bff);                    // the largest half
  CHECK(float_to_f16(65519.99f) == 0x7bff);                   // below the midpoint to infinity
  CHECK(float_to_f16(65520.0f) == 0x7c00);                    // the midpoint rounds to even: infinity
  CHECK(float_to_f16(1e9f) == 0x7c00);                        // overflow
  CHECK(float_to_f16(-INFINITY) == 0xfc00);                   //
  CHECK((float_to_f16(NAN) & 0x7c00) == 0x7c00);              // NaN stays NaN
  CHECK((float_to_f16(NAN) & 0x03ff) != 0);                   //
  CHECK(float_to_f16(1.0f + 0x1p-11f) == 0x3c00);             // a tie between 1 and 1 + 2^-10: even
  CHECK(float_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);         // a tie between odd and even: even
  CHECK(float_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);  // above the tie
  CHECK(float_to_f16(0x1p-24f) == 0x0001);                    // the smallest subnormal
  CHECK(float_to_f16(0x1p-25f) == 0x0000);                    // half of it: a tie, to even (zero)
  CHECK(float_to_f16(0x1.8p-24f) == 0x0002);                  // 1.5 units: a tie, to even (2)
  CHECK(float_to_f16(0x1p-14f - 0x1p-25f) == 0x0400);         // rounds up into the smallest normal
  CHECK(float_to_f16(1e-10f) == 0x0000);                      // underflow
  // Every half: to float and back is the identity (NaNs stay NaN).
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = moe::f16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    if (float_to_f16(f) != h) FAIL("half " << h << " -> " << f << " -> " << float_to_f16(f));
  }
  // Against a reference that rounds with double arithmetic: the nearest of the two neighbouring halves.
  for (float x = 1e-7f; x < 60000.0f; x *= 1.0009f) {
    const uint16_t h = float_to_f16(x);
    const double got = moe::f16_to_float(h), below = moe::f16_to_float(uint16_t(h - 1)),
                 above = moe::f16_to_float(uint16_t(h + 1));
    if (std::abs(got - x) > std::abs(below - x) || std::abs(got - x) > std::abs(above - x))
      FAIL("x " << x << " -> " << got << " (neighbours " << below << ", " << above << ")");
  }
}

TEST_CASE("q8_0: ggml's reference quantizer, a known block, and the error bound", "[gguf]") {
  // A block x_i = i - 16: max |x| = 16, d = 16/127, q_i = round(x_i * 127/16), halves away from zero.
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = float(i - 16);
  char block[moe::kQ8BlockBytes];
  moe::quantize_q8_0(x, 32, block);
  uint16_t d16;
  std::memcpy(&d16, block, 2);
  CHECK(d16 == moe::float_to_f16(16.0f / 127));
  CHECK(int8_t(block[2 + 0]) == -127);  // x = -16
  CHECK(int8_t(block[2 + 17]) == 8);    // x = 1: 7.9375
  CHECK(int8_t(block[2 + 18]) == 16);   // x = 2: 15.875
  CHECK(int8_t(block[2 + 16]) == 0);    // x = 0
  CHECK(int8_t(block[2 + 31]) == 119);  // x = 15: 119.0625
  // A half-way value rounds away from zero: 0.5 / (127/127) with max 127.
  float y[32] = {};
  y[0] = 127.0f, y[1] = 2.5f, y[2] = -2.5f;
  moe::quantize_q8_0(y, 32, block);
  CHECK(int8_t(block[3]) == 3);
  CHECK(int8_t(block[4]) == -3);
  // An all-zero block: d = 0, every value 0, and it decodes to zeros.
  float zeros[32] = {}, back[32];
  moe::quantize_q8_0(zeros, 32, block);
  moe::dequantize_q8_0(block, 32, back);
  for (float v : back) CHECK(v == 0.0f);
  // Random values: each decodes to within half a step d/2, plus 127 times the F16 rounding of d
  // (relative 2^-11): |q·d16 − x| ≤ |q|·|d16 − d| + |q·d − x|.
  std::vector<float> r(32 * 8), decoded(r.size());
  uint32_t state = 12345;
  for (float& v : r) state = state * 1664525u + 1013904223u, v = float(int32_t(state >> 8) - (1 << 23)) * 1e-7f;
  std::string q(r.size() / 32 * moe::kQ8BlockBytes, '\0');
  moe::quantize_q8_0(r.data(), int64_t(r.size()), q.data());
  moe::dequantize_q8_0(q.data(), int64_t(r.size()), decoded.data());
  for (size_t b = 0; b < r.size(); b += 32) {
    float amax = 0;
    for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::abs(r[i]));
    for (size_t i = b; i < b + 32; ++i)
      CHECK(std::abs(decoded[i] - r[i]) <= amax / 127 * (0.5f + 127.0f / 2048 + 1e-4f));
  }
}

TEST_CASE("gguf: F16 and Q8_0 tensors are written with their type, size and data", "[gguf]") {
  moe_test::TempDir tmp("gguf_types");
  std::vector<float> m(2 * 64);
  for (size_t i = 0; i < m.size(); ++i) m[i] = float(i) * 0.25f - 3.0f;
  moe::GgufWriter w;
  w.add_tensor("h", {2, 64}, m.data(), moe::GgmlType::f16);
  w.add_tensor("q", {2, 64}, m.data(), moe::GgmlType::q8_0);
  w.add_tensor("f", {3}, m.data(), moe::GgmlType::f32);
  CHECK_THROWS_WITH(w.add_tensor("bad", {2, 48}, m.data(), moe::GgmlType::q8_0), Catch::Contains("multiple of 32"));
  const std::string path = tmp / "t.gguf";
  moe_test::write_bytes(path, w.bytes());
  const moe::GgufFile g = moe::read_gguf(path);
  REQUIRE(g.tensors.size() == 3);
  CHECK(g.tensors[0].type == 1);
  CHECK(g.tensors[0].bytes == 2 * 64 * 2);
  CHECK(g.tensors[1].type == 8);
  CHECK(g.tensors[1].bytes == 4 * 34);      // 4 blocks of 32
  CHECK(g.tensors[1].offset == 256);        // after the F16 tensor's 256 bytes (a multiple of 32)
  CHECK(g.tensors[2].offset == 256 + 160);  // 136 bytes of Q8_0 padded to 160
  const std::string bytes = w.bytes();
  for (size_t i = 0; i < m.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, bytes.data() + g.data_start + 2 * i, 2);
    CHECK(moe::f16_to_float(h) == m[i]);  // quarters up to 29: exact in F16
  }
  std::vector<float> decoded(m.size());
  moe::dequantize_q8_0(bytes.data() + g.data_start + g.tensors[1].offset, int64_t(m.size()), decoded.data());
  for (size_t i = 0; i < m.size(); ++i) CHECK(decoded[i] == Approx(m[i]).margin(29.0 / 127));
}
