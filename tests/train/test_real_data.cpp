// Real data (issue "real data"): the SentencePiece tokenizer, `moe data prepare`, training on the
// prepared token files, a BPE checkpoint in eval / infer / inspect, bits per byte, and bad inputs.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../reliability/reliability_util.hpp"
#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "core/error.hpp"
#include "core/tokenizer.hpp"
#include "train/token_file.hpp"

namespace {

using nlohmann::json;
using namespace moe_test;
using Args = std::vector<std::string>;
namespace fs = std::filesystem;

const std::string kShakespeare = MOE_SHARED_DATA "/tinyshakespeare.txt";

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

RunResult moe_ok(const Args& args) {
  const RunResult r = run_moe(args, {.timeout_s = 600});
  INFO(r.describe());
  REQUIRE(r.ok());
  return r;
}

// One line on stderr, exit 1, naming `what`.
void refused(const Args& args, const std::string& what) {
  const RunResult r = run_moe(args, {.timeout_s = 120});
  INFO(r.describe());
  CHECK(r.exited);
  CHECK(r.code == 1);
  CHECK(r.err.find(what) != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

// The reliability tests' micro model over a vocabulary of `vocab` tokens, 20 steps with evaluations.
std::string write_config(const TempDir& tmp, int64_t vocab) {
  json c = moe_rel::micro_config();
  c["model"]["vocab_size"] = vocab;
  c["model"]["max_position_embeddings"] = 128;
  c["train"].update({{"steps", 20},
                     {"batch", 4},
                     {"seq", 64},
                     {"eval_every", 10},
                     {"eval_tokens", 2048},
                     {"log_every", 10},
                     {"threads", 1}});
  return tmp.write("config-" + std::to_string(vocab) + ".json", c.dump());
}

// A BPE tokenizer of 512 tokens trained on the shared text, once per test case.
std::string trained_tokenizer(const TempDir& tmp) {
  const std::string dir = tmp / "tok";
  if (!fs::exists(dir + "/tokenizer.model"))
    moe_ok({"tokenizer", "train", "--data", kShakespeare, "--vocab", "512", "--out", dir, "-t", "1"});
  return dir;
}

}  // namespace

TEST_CASE("tokenizer: a BPE of 512 tokens round-trips the shared text and any bytes", "[data]") {
  TempDir tmp("tokenizer");
  const std::string dir = trained_tokenizer(tmp);
  const moe::Tokenizer tok = moe::Tokenizer::load(dir + "/tokenizer.model");
  CHECK(tok.vocab_size() == 512);
  CHECK_FALSE(tok.is_bytes());
  const std::string text = slurp(kShakespeare);
  const std::vector<int32_t> ids = tok.encode(text);
  CHECK(tok.decode(ids) == text);  // the whole 1.1 MB, byte for byte
  // BPE really merges: well under one token per byte (measured 1.83 bytes per token at 512).
  CHECK(double(text.size()) / double(ids.size()) > 1.5);
  std::string concatenated;
  for (int32_t id : ids) concatenated += tok.bytes_of(id);
  CHECK(concatenated == text);
  // Characters it never saw and control bytes: byte fallback keeps every byte of UTF-8 text.
  const std::string odd =
      std::string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x01\x02 tab\there\n\n  ") + std::string(1, '\0') + "end";
  CHECK(tok.decode(tok.encode(odd)) == odd);
  // Bytes that are not UTF-8 come back as U+FFFD (SentencePiece reads text as UTF-8).
  CHECK(tok.decode(tok.encode("a\xff b")) == "a\xef\xbf\xbd b");
  // The byte tokenizer is the identity.
  const moe::Tokenizer bytes;
  CHECK(bytes.encode("ab\n") == std::vector<int32_t>{'a', 'b', '\n'});
  CHECK(bytes.decode({'h', 'i'}) == "hi");
  // Bytes past 0x7f are ids 128..255 (a signed char made them negative), and decode back.
  CHECK(bytes.encode("caf\xc3\xa9\xff") == std::vector<int32_t>{'c', 'a', 'f', 0xc3, 0xa9, 0xff});
  CHECK(bytes.decode(bytes.encode(odd)) == odd);
  // A file that is not a model is refused naming it.
  const std::string junk = tmp.write("junk.model", "not a model");
  CHECK_THROWS_WITH(moe::Tokenizer::load(junk), Catch::Contains(junk) && Catch::Contains("not a SentencePiece model"));
}

TEST_CASE("prepare -> train -> eval on a BPE model: tokens, checkpoint tokenizer, bits per byte", "[data]") {
  TempDir tmp("real_data");
  const std::string tok = trained_tokenizer(tmp);
  // Validation text given apart, so that eval can read it both raw and prepared.
  const std::string text = slurp(kShakespeare);
  const std::string train_txt = tmp.write("train.txt", text.substr(0, 200000));
  const std::string val_txt = tmp.write("val.txt", text.substr(200000, 20000));
  const std::string prep = tmp / "prep";
  moe_ok({"data", "prepare", "--data", train_txt, "--val", val_txt, "--tokenizer", tok, "--out", prep, "-t", "2"});
  const json meta = json::parse(slurp(prep + "/meta.json"));
  const auto train_bin = moe::TokenFile::open(prep + "/train.bin");
  const auto val_bin = moe::TokenFile::open(prep + "/val.bin");
  CHECK(train_bin->info().width == 2);
  CHECK(train_bin->info().vocab == 512);
  CHECK(train_bin->info().text_bytes == 200000);
  CHECK(val_bin->info().text_bytes == 20000);
  CHECK(meta.at("train").at("tokens") == train_bin->size());
  CHECK(meta.at("tokenizer").at("vocab") == 512);
  CHECK(slurp(prep + "/tokenizer.model") == slurp(tok + "/tokenizer.model"));
  // The prepared tokens are the tokenizer's encoding of the text.
  const moe::Tokenizer t = moe::Tokenizer::load(tok + "/tokenizer.model");
  std::vector<int32_t> val_ids(size_t(val_bin->size()));
  val_bin->copy(0, val_bin->size(), val_ids.data());
  CHECK(val_ids == t.encode(text.substr(200000, 20000)));

  const std::string run = tmp / "run";
  moe_ok({"train", "--config", write_config(tmp, 512), "--data", prep, "--out", run});
  CHECK(slurp(run + "/tokenizer.model") == slurp(tok + "/tokenizer.model"));
  std::vector<json> evals;
  std::ifstream metrics(run + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (json j = json::parse(line); j.at("kind") == "eval") evals.push_back(j);
  REQUIRE(evals.size() == 3);
  for (const json& e : evals) {
    CHECK(e.at("val_bpb").get<double>() > 0.5);
    // Several bytes per token: bits per byte well below bits per token.
    CHECK(e.at("val_bpb").get<double>() < 0.6 * e.at("val_loss").get<double>() / std::log(2.0));
  }
  CHECK(evals.back().at("val_loss").get<double>() < evals.front().at("val_loss").get<double>());

  // eval on the raw validation text and on the prepared val.bin: the same tokens, the same numbers.
  const json raw = json::parse(moe_ok({"eval", "-m", run, "--data", val_txt, "--json"}).out);
  const json bin = json::parse(moe_ok({"eval", "-m", run, "--data", prep + "/val.bin", "--json"}).out);
  CHECK(raw.at("tokens") == bin.at("tokens"));
  CHECK(raw.at("tokens") == val_bin->size() - 1);
  CHECK(raw.at("loss").get<double>() == Approx(bin.at("loss").get<double>()).epsilon(1e-9));
  CHECK(raw.at("text_bytes").get<double>() == Approx(20000 - t.bytes_of(val_ids[0]).size()));
  CHECK(raw.at("bits_per_byte").get<double>() == Approx(raw.at("loss").get<double>() * raw.at("tokens").get<double>() /
                                                        std::log(2.0) / raw.at("text_bytes").get<double>()));

  // infer writes text, inspect shows pieces.
  const RunResult gen = moe_ok({"infer", "-m", run, "-p", "ROMEO:", "-n", "20", "--temp", "0"});
  CHECK(gen.out.rfind("ROMEO:", 0) == 0);
  const json trace = json::parse(moe_ok({"inspect", run, "--text", "ROMEO: the king", "--json"}).out);
  std::string joined;
  for (const json& piece : trace.at("tokens")) joined += piece.get<std::string>();
  CHECK(joined == "ROMEO: the king");
  CHECK(trace.at("tokens").size() < 15);  // pieces, not bytes
  const json by_class = json::parse(moe_ok({"inspect", run, "--data", val_txt, "--json"}).out);
  CHECK(by_class.at("grouped_by") == "token class");
  CHECK(by_class.at("layers")[0].at("by_domain").contains("letter"));

  // A byte model's bits per byte is its loss in bits.
  const std::string bytes_run = tmp / "bytes";
  moe_ok({"train", "--config", write_config(tmp, 256), "--data", train_txt, "--out", bytes_run, "--steps", "5",
          "--eval-every", "0"});
  std::ifstream bm(bytes_run + "/metrics.jsonl");
  for (std::string line; std::getline(bm, line);)
    if (json j = json::parse(line); j.at("kind") == "eval")
      CHECK(j.at("val_bpb").get<double>() == Approx(j.at("val_loss").get<double>() / std::log(2.0)));
}

TEST_CASE("real data: bad inputs are one-line errors and nothing is written", "[data]") {
  TempDir tmp("real_data_bad");
  const std::string tok = trained_tokenizer(tmp);
  const std::string prep = tmp / "prep";
  moe_ok({"data", "prepare", "--data", kShakespeare, "--tokenizer", tok, "--out", prep});

  // A vocabulary that does not fit the text, in moe's words (not SentencePiece's options).
  std::ofstream(tmp / "little.txt") << "hello world\n";
  refused({"tokenizer", "train", "--data", tmp / "little.txt", "--vocab", "300", "--out", tmp / "t1"},
          "--vocab 300: too large for this little text");
  CHECK_FALSE(fs::exists(tmp / "t1"));
  moe_ok({"data", "synth", "--out", tmp / "synth.txt", "--bytes", "200000"});
  refused({"tokenizer", "train", "--data", tmp / "synth.txt", "--vocab", "300", "--out", tmp / "t2"},
          "--vocab 300: too small for this text");
  // Model vocabulary against the tokenizer's.
  refused({"train", "--config", write_config(tmp, 256), "--data", prep, "--out", tmp / "r1"}, "vocab_size");
  CHECK_FALSE(fs::exists(tmp / "r1"));
  // A truncated token file.
  fs::create_directories(tmp / "cut");
  for (const char* f : {"/val.bin", "/meta.json", "/tokenizer.model"}) fs::copy_file(prep + f, tmp / "cut" + f);
  fs::copy_file(prep + "/train.bin", tmp / "cut/train.bin");
  fs::resize_file(tmp / "cut/train.bin", fs::file_size(prep + "/train.bin") - 3);
  refused({"train", "--config", write_config(tmp, 512), "--data", tmp / "cut", "--out", tmp / "r2"}, "truncated");
  CHECK_FALSE(fs::exists(tmp / "r2"));
  // A header from another tokenizer: the prepared directory's tokenizer.model swapped for another.
  const std::string other = tmp / "tok2";
  moe_ok({"tokenizer", "train", "--data", kShakespeare, "--vocab", "400", "--out", other, "-t", "1"});
  fs::create_directories(tmp / "swapped");
  for (const char* f : {"/train.bin", "/val.bin", "/meta.json"}) fs::copy_file(prep + f, tmp / "swapped" + f);
  fs::copy_file(other + "/tokenizer.model", tmp / "swapped/tokenizer.model");
  refused({"train", "--config", write_config(tmp, 400), "--data", tmp / "swapped", "--out", tmp / "r3"},
          "another tokenizer");
  refused({"eval", "-m", tmp / "nope", "--data", prep + "/val.bin"}, "nope");
  // Not a token file at all.
  fs::create_directories(tmp / "fake");
  tmp.write("fake/train.bin", std::string(100, 'x'));
  tmp.write("fake/val.bin", std::string(100, 'x'));
  refused({"train", "--config", write_config(tmp, 256), "--data", tmp / "fake", "--out", tmp / "r4"},
          "not a moe token file");

  // prepare: an empty directory, a JSONL line that is not JSON (file and line), a binary file.
  fs::create_directories(tmp / "empty");
  refused({"data", "prepare", "--data", tmp / "empty", "--out", tmp / "p1"}, "empty directory");
  const std::string jsonl = tmp.write("docs.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\nnot json\n");
  refused({"data", "prepare", "--data", jsonl, "--out", tmp / "p2"}, "docs.jsonl:3");
  const std::string wrong_field = tmp.write("field.jsonl", "{\"body\": \"one\"}\n");
  refused({"data", "prepare", "--data", wrong_field, "--out", tmp / "p3"}, "no field \"text\"");
  const std::string binary = tmp.write("blob.txt", std::string("ELF") + std::string(1, '\0') + "binary");
  refused({"data", "prepare", "--data", binary, "--out", tmp / "p4"}, "binary file");
  refused({"tokenizer", "train", "--data", binary, "--out", tmp / "t1"}, "binary file");
  for (const char* out : {"p1", "p2", "p3", "p4", "t1"}) CHECK_FALSE(fs::exists(tmp / out));
  // An existing prepared corpus is replaced only with --force.
  refused({"data", "prepare", "--data", kShakespeare, "--out", prep}, "--force");
  CHECK(fs::exists(prep + "/tokenizer.model"));

  // JSONL with the right field works, documents end with a line break.
  const std::string good = tmp.write("good.jsonl", "{\"text\": \"alpha beta\"}\n  \n{\"text\": \"gamma\\n\"}\n");
  moe_ok({"data", "prepare", "--data", good, "--out", tmp / "p5", "--val-fraction", "0.5"});
  const auto a = moe::TokenFile::open(tmp / "p5/train.bin"), b = moe::TokenFile::open(tmp / "p5/val.bin");
  std::string all(size_t(a->size() + b->size()), '\0');
  std::vector<int32_t> ids(all.size());
  a->copy(0, a->size(), ids.data());
  b->copy(0, b->size(), ids.data() + a->size());
  for (size_t i = 0; i < ids.size(); ++i) all[i] = char(ids[i]);
  CHECK(all == "alpha beta\ngamma\n");
}
