// Bad input, table-driven, through the real binary: every row must be refused with a non-zero exit
// status (never a signal, never a hang: each runs with a 30 s limit), exactly one line on stderr
// that starts with "moe: " and names the file, field or flag, and no file written or changed
// anywhere in the test's directory (which holds every fixture and every output path).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "model/checkpoint.hpp"
#include "reliability_util.hpp"
#include "train/train_config.hpp"

using namespace moe_rel;
using namespace moe_test;

namespace {

struct Row {
  std::string name;
  std::vector<std::string> args;    // after `moe`
  std::vector<std::string> expect;  // substrings of the one error line
  std::string skip;                 // non-empty: why this row cannot run here
};

// Runs every row against a tree rooted at `root`; the tree must be byte-identical afterwards.
void check_refused(const std::vector<Row>& rows, const std::string& root) {
  for (const Row& row : rows) {
    INFO("row: " << row.name);
    if (!row.skip.empty()) {
      WARN("skipped row \"" << row.name << "\": " << row.skip);
      continue;
    }
    const auto before = snapshot(root);
    const RunResult r = run_moe(row.args, {.timeout_s = 30});
    INFO(r.describe());
    if (std::getenv("MOE_REL_VERBOSE")) std::fprintf(stderr, "[%s] %s", row.name.c_str(), r.err.c_str());
    CHECK_FALSE(r.timed_out);  // the command hung
    CHECK_FALSE(r.signaled);
    CHECK(r.exited);
    CHECK(r.code == 1);  // one exit status for every user error (moe --help)
    // Exactly one line, "moe: ...", naming what is wrong.
    CHECK(r.err.rfind("moe: ", 0) == 0);
    CHECK(count_substr(r.err, "\n") == 1);
    CHECK((!r.err.empty() && r.err.back() == '\n'));
    for (const auto& e : row.expect) {
      INFO("expected in the message: " << e);
      CHECK(r.err.find(e) != std::string::npos);
    }
    // Nothing created, removed or half-written.
    const auto after = snapshot(root);
    if (after != before) {
      for (const auto& [name, contents] : after)
        if (!before.count(name))
          UNSCOPED_INFO("new: " << name);
        else if (before.at(name) != contents)
          UNSCOPED_INFO("changed: " << name);
      for (const auto& [name, contents] : before)
        if (!after.count(name)) UNSCOPED_INFO("removed: " << name);
    }
    CHECK(after == before);
    CHECK(leftovers(root).empty());
  }
}

// --- safetensors surgery -------------------------------------------------------------------

struct Safetensors {
  json header;
  std::string data;
};

Safetensors parse_safetensors(const std::string& raw) {
  REQUIRE(raw.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(raw[size_t(i)]);
  REQUIRE(8 + n <= raw.size());
  return {json::parse(raw.substr(8, n)), raw.substr(8 + n)};
}

std::string length_prefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

std::string encode_safetensors(const json& header, const std::string& data) {
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return length_prefix(text.size()) + text + data;
}

std::string one_float(float v) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &v, 4);
  return s;
}

// --- fixtures ------------------------------------------------------------------------------

struct Fixtures {
  TempDir tmp{"reliability"};
  std::string config, data, eval_data, checkpoint;

  Fixtures() {
    config = write_json(tmp / "micro.json", micro_config());
    data = kShakespeare;
    eval_data = tmp / "eval.txt";
    write_bytes(eval_data, "to be or not to be, that is the question\n");
    // A checkpoint written by the library, the template of every corrupt one.
    checkpoint = tmp / "good_ckpt";
    fs::create_directories(checkpoint);
    moe::Model model(moe::model_config_from_json(micro_config()["model"], "micro", false));
    model.init(7);
    moe::save_checkpoint(checkpoint, model);
  }

  std::string config_with(const std::string& name, const std::function<void(json&)>& edit) {
    json c = micro_config();
    edit(c);
    return write_json(tmp / name, c);
  }
  // A copy of the good checkpoint, then `edit(dir)`.
  std::string checkpoint_with(const std::string& name, const std::function<void(const std::string&)>& edit) {
    const std::string dir = tmp / name;
    fs::copy(checkpoint, dir, fs::copy_options::recursive);
    edit(dir);
    return dir;
  }
  std::string model_with(const std::string& name, const std::function<std::string(Safetensors&)>& edit) {
    return checkpoint_with(name, [&](const std::string& dir) {
      Safetensors st = parse_safetensors(read_bytes(dir + "/model.safetensors"));
      write_bytes(dir + "/model.safetensors", edit(st));
    });
  }
  std::vector<std::string> train(const std::string& config_path, const std::string& out,
                                 std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"train", "--config", config_path, "--data", data, "--out", out, "--threads", "2"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::vector<std::string> eval(const std::string& model) {
    return {"eval", "--model", model, "--data", eval_data, "-t", "2"};
  }
};

double machine_memory_gib() {
  return double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE)) / double(1ull << 30);
}

}  // namespace

TEST_CASE("reliability: bad configs are refused naming the file and field", "[reliability]") {
  Fixtures fx;
  const std::string out = fx.tmp / "out";
  auto row = [&](const std::string& name, const std::string& file, const std::function<void(json&)>& edit,
                 std::vector<std::string> expect) {
    const std::string path = fx.config_with(file, edit);
    expect.insert(expect.begin(), path);
    return Row{name, fx.train(path, out), expect, ""};
  };
  std::vector<Row> rows;
  {
    const std::string p = fx.tmp / "truncated.json";
    write_bytes(p, "{\"model\": {\"hidden_size\": ");
    rows.push_back({"config not JSON", fx.train(p, out), {p, "not valid JSON"}, ""});
    const std::string e = fx.tmp / "empty.json";
    write_bytes(e, "");
    rows.push_back({"config empty", fx.train(e, out), {e, "not valid JSON"}, ""});
    const std::string a = fx.tmp / "array.json";
    write_bytes(a, "[1, 2, 3]\n");
    rows.push_back({"config an array", fx.train(a, out), {a, "expected a JSON object"}, ""});
    const std::string d = fx.tmp / "dir.json";
    fs::create_directory(d);
    rows.push_back({"config a directory", fx.train(d, out), {d, "directory"}, ""});
    const std::string m = fx.tmp / "no_such_config.json";
    rows.push_back({"config missing", fx.train(m, out), {m, "cannot open"}, ""});
  }
  rows.push_back(row("no model section", "nomodel.json", [](json& c) { c.erase("model"); }, {"\"model\""}));
  rows.push_back(
      row("unknown top-level key", "toplevel.json", [](json& c) { c["modle"] = json::object(); }, {"\"modle\""}));
  rows.push_back(row("model field of the wrong type (string)", "type_string.json",
                     [](json& c) { c["model"]["hidden_size"] = "32"; }, {"hidden_size", "expected an integer"}));
  rows.push_back(row("model field of the wrong type (fraction)", "type_fraction.json",
                     [](json& c) { c["model"]["num_hidden_layers"] = 2.5; }, {"num_hidden_layers", "integer"}));
  rows.push_back(row("model field of the wrong type (bool)", "type_bool.json",
                     [](json& c) { c["model"]["norm_topk_prob"] = 1; }, {"norm_topk_prob", "true or false"}));
  rows.push_back(row("train field of the wrong type", "type_train.json", [](json& c) { c["train"]["lr"] = "fast"; },
                     {"train.lr", "expected a number"}));
  rows.push_back(row("train section not an object", "train_array.json", [](json& c) { c["train"] = json::array(); },
                     {"train", "expected a JSON object"}));
  rows.push_back(row("integer too large", "huge_int.json",
                     [](json& c) { c["model"]["vocab_size"] = std::numeric_limits<uint64_t>::max(); }, {"vocab_size"}));
  rows.push_back(row("unknown model key with suggestion", "typo_model.json",
                     [](json& c) {
                       c["model"]["hiden_size"] = c["model"]["hidden_size"];
                       c["model"].erase("hidden_size");
                     },
                     {"unknown key \"hiden_size\"", "did you mean \"hidden_size\""}));
  rows.push_back(row("unknown train key with suggestion", "typo_train.json", [](json& c) { c["train"]["stpes"] = 3; },
                     {"stpes", "did you mean \"steps\""}));
  rows.push_back(row("vocab_size below 256", "vocab.json", [](json& c) { c["model"]["vocab_size"] = 100; },
                     {"vocab_size", "256"}));
  rows.push_back(row("unknown scoring_func", "scoring.json", [](json& c) { c["model"]["scoring_func"] = "relu"; },
                     {"scoring_func", "relu"}));
  rows.push_back(
      row("negative rms_norm_eps", "eps.json", [](json& c) { c["model"]["rms_norm_eps"] = -1e-6; }, {"rms_norm_eps"}));
  rows.push_back(row("zero routed_scaling_factor", "scaling.json",
                     [](json& c) { c["model"]["routed_scaling_factor"] = 0; }, {"routed_scaling_factor"}));
  rows.push_back(row("unknown balance mode", "balance.json", [](json& c) { c["train"]["balance"] = "sideways"; },
                     {"train.balance", "sideways"}));
  rows.push_back(row("min_lr above lr", "minlr.json", [](json& c) { c["train"]["min_lr"] = 1.0; }, {"min_lr"}));
  rows.push_back(row("negative seed", "seed.json", [](json& c) { c["train"]["seed"] = -5; }, {"train.seed"}));
  rows.push_back(row("zero steps", "steps.json", [](json& c) { c["train"]["steps"] = 0; }, {"train.steps"}));
  rows.push_back(row("kv heads not dividing heads", "kv.json", [](json& c) { c["model"]["num_key_value_heads"] = 3; },
                     {"num_key_value_heads"}));
  rows.push_back(row("heads not dividing hidden_size", "heads.json",
                     [](json& c) { c["model"]["num_attention_heads"] = 3; }, {"num_attention_heads", "hidden_size"}));
  rows.push_back(row("odd head_dim", "head_dim.json", [](json& c) { c["model"]["head_dim"] = 15; }, {"head_dim"}));
  rows.push_back(row("more experts per token than experts", "topk.json",
                     [](json& c) { c["model"]["num_experts_per_tok"] = 5; },
                     {"num_experts_per_tok", "n_routed_experts"}));
  rows.push_back(
      row("n_group not dividing experts", "groups.json", [](json& c) { c["model"]["n_group"] = 3; }, {"n_group"}));
  rows.push_back(row("kept groups hold fewer than K experts", "topk_group.json",
                     [](json& c) {
                       c["model"]["n_group"] = 4;
                       c["model"]["topk_group"] = 1;
                     },
                     {"topk_group", "num_experts_per_tok"}));
  // (first_k_dense_replace past the last layer is valid: every layer dense, HF's rule.)
  rows.push_back(row("seq longer than the context", "seq.json", [](json& c) { c["train"]["seq"] = 65; },
                     {"train.seq", "max_position_embeddings"}));
  rows.push_back(row("absurd model size", "absurd_model.json",
                     [](json& c) {
                       c["model"]["hidden_size"] = 65536;
                       c["model"]["num_hidden_layers"] = 64;
                     },
                     {"parameters", "GiB"}));
  rows.push_back(row("absurd activations", "absurd_batch.json", [](json& c) { c["train"]["batch"] = 10000000; },
                     {"train.batch", "GiB"}));
  {
    // Within the per-field limits (875M parameters, 15 GiB of activations), but ~28 GiB in all:
    // refused with the estimate before anything is allocated, on any machine with less memory.
    Row r = row("more memory than the machine has", "big.json",
                [](json& c) {
                  c["model"].update({{"hidden_size", 4096},
                                     {"num_hidden_layers", 4},
                                     {"num_attention_heads", 32},
                                     {"num_key_value_heads", 32},
                                     {"intermediate_size", 12288},
                                     {"first_k_dense_replace", 4},
                                     {"max_position_embeddings", 256}});
                  c["train"].update({{"batch", 48}, {"seq", 256}});
                },
                {"GiB", "this machine has"});
    r.expect.erase(r.expect.begin());  // trainer-level message: names the flags to change instead of the file
    r.expect.push_back("--batch");
    if (machine_memory_gib() > 27.0) r.skip = "this machine has enough memory for the run";
    rows.push_back(r);
  }
  REQUIRE(rows.size() >= 30);
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: bad flags are refused naming the flag", "[reliability]") {
  Fixtures fx;
  const std::string out = fx.tmp / "out";
  auto train = [&](std::vector<std::string> flags) { return fx.train(fx.config, out, flags); };
  auto infer = [&](std::vector<std::string> flags) {
    std::vector<std::string> a = {"infer", "--model", fx.checkpoint, "-p", "hello", "-n", "4", "-t", "2"};
    a.insert(a.end(), flags.begin(), flags.end());
    return a;
  };
  const std::vector<Row> rows = {
      {"unknown flag", train({"--bogus"}), {"--bogus"}, ""},
      {"unknown command", {"trian", "--steps", "3"}, {"trian"}, ""},
      {"option before the command", {"--steps", "3"}, {"--steps"}, ""},
      {"negative --steps", train({"--steps", "-1"}), {"--steps", "-1"}, ""},
      {"zero --steps", train({"--steps", "0"}), {"--steps"}, ""},
      {"non-numeric --steps", train({"--steps", "abc"}), {"--steps", "abc"}, ""},
      {"fractional --steps", train({"--steps", "1.5"}), {"--steps"}, ""},
      {"negative --threads (0 means all cores)", train({"--threads", "-1"}), {"--threads"}, ""},
      {"absurd --threads",
       {"train", "--config", fx.config, "--out", out, "--threads", "5000"},
       {"threads", "1024"},
       ""},
      {"--threads given twice", train({"--threads", "3"}), {"--threads"}, ""},
      {"zero --batch", train({"--batch", "0"}), {"--batch"}, ""},
      {"NaN --lr", train({"--lr", "nan"}), {"--lr"}, ""},
      {"--seq past the context", train({"--seq", "1000"}), {"seq", "max_position_embeddings"}, ""},
      {"unknown --balance", train({"--balance", "sideways"}), {"--balance"}, ""},
      {"zero --stop-at", train({"--stop-at", "0"}), {"--stop-at"}, ""},
      {"--temp below 0", infer({"--temp", "-1"}), {"--temp"}, ""},
      {"--top-p 0", infer({"--top-p", "0"}), {"--top-p"}, ""},
      {"--top-p above 1", infer({"--top-p", "1.5"}), {"--top-p", "1.5"}, ""},
      {"--min-p above 1", infer({"--min-p", "2"}), {"--min-p"}, ""},
      {"zero --repeat-penalty", infer({"--repeat-penalty", "0"}), {"--repeat-penalty"}, ""},
      {"negative -n", infer({"-n", "-3"}), {"--n-predict"}, ""},
      {"infer without a prompt", {"infer", "--model", fx.checkpoint}, {"-p"}, ""},
      {"-p and -f together", infer({"-f", fx.eval_data}), {"-f"}, ""},
      {"eval without --data", {"eval", "--model", fx.checkpoint}, {"--data"}, ""},
      {"eval --ctx past the context",
       {"eval", "--model", fx.checkpoint, "--data", fx.eval_data, "--ctx", "1000"},
       {"--ctx", "max_position_embeddings"},
       ""},
      {"inspect without a path", {"inspect"}, {"paths"}, ""},
      // Thread counts: one check in every subcommand (100000 threads crashed infer and eval).
      {"infer --threads 100000",
       {"infer", "--model", fx.checkpoint, "-p", "hi", "-n", "4", "-t", "100000"},
       {"--threads", "1024", "100000"},
       ""},
      {"eval --threads 100000",
       {"eval", "--model", fx.checkpoint, "--data", fx.eval_data, "-t", "100000"},
       {"--threads", "1024"},
       ""},
      {"inspect --threads 2000", {"inspect", fx.checkpoint, "-t", "2000"}, {"--threads", "1024"}, ""},
      {"bench --threads 0", {"bench", "--config", fx.config, "-t", "0"}, {"--threads"}, ""},
      {"data synth --bytes 0", {"data", "synth", "--out", fx.tmp / "corpus.txt", "--bytes", "0"}, {"--bytes"}, ""},
  };
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: bad data files are refused naming the file", "[reliability]") {
  Fixtures fx;
  const std::string out = fx.tmp / "out";
  const std::string missing = fx.tmp / "missing.txt", dir = fx.tmp / "a_dir", empty = fx.tmp / "empty.txt",
                    shorter = fx.tmp / "short.txt", no_val = fx.tmp / "no_validation.txt",
                    unreadable = fx.tmp / "unreadable.txt";
  fs::create_directory(dir);
  write_bytes(empty, "");
  write_bytes(shorter, "hello world");                           // 9 training bytes < seq + 1 = 33
  write_bytes(no_val, read_bytes(kShakespeare).substr(0, 300));  // validation part: 30 bytes < 33
  write_bytes(unreadable, "some text that cannot be read\n");
  ::chmod(unreadable.c_str(), 0);
  auto train = [&](const std::string& data) {
    return std::vector<std::string>{"train", "--config", fx.config, "--data", data, "--out", out, "--threads", "2"};
  };
  std::vector<Row> rows = {
      {"missing data file", train(missing), {missing, "No such file"}, ""},
      {"data is a directory", train(dir), {dir, "directory"}, ""},
      {"empty data file", train(empty), {empty, "empty"}, ""},
      {"data shorter than one window", train(shorter), {shorter, "seq+1"}, ""},
      {"validation part shorter than one window", train(no_val), {no_val, "validation"}, ""},
      // Root reads any file whatever its mode, so this row only means something for other users.
      {"unreadable data file", train(unreadable), {unreadable}, ::geteuid() == 0 ? "running as root" : ""},
      {"eval on a missing file", {"eval", "--model", fx.checkpoint, "--data", missing}, {missing}, ""},
      {"eval on a directory", {"eval", "--model", fx.checkpoint, "--data", dir}, {dir, "directory"}, ""},
      {"eval on an empty file", {"eval", "--model", fx.checkpoint, "--data", empty}, {empty}, ""},
      {"infer -f missing prompt file", {"infer", "--model", fx.checkpoint, "-f", missing}, {missing}, ""},
      {"infer --prompts-file empty", {"infer", "--model", fx.checkpoint, "--prompts-file", empty}, {empty}, ""},
      {"inspect --data missing", {"inspect", fx.checkpoint, "--data", missing}, {missing}, ""},
  };
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: corrupt checkpoints are refused by eval and infer naming the file", "[reliability]") {
  Fixtures fx;
  std::vector<Row> rows;
  auto add = [&](const std::string& name, const std::string& dir, std::vector<std::string> expect) {
    rows.push_back({name + " (eval)", fx.eval(dir), expect, ""});
    rows.push_back({name + " (infer)", {"infer", "--model", dir, "-p", "hi", "-n", "2", "-t", "2"}, expect, ""});
  };
  const std::string missing = fx.tmp / "no_such_ckpt";
  add("missing checkpoint directory", missing, {missing});
  add("checkpoint path is a file", fx.eval_data, {fx.eval_data, "checkpoint directory"});
  std::string d = fx.checkpoint_with("no_model", [](const std::string& p) { fs::remove(p + "/model.safetensors"); });
  add("missing model.safetensors", d, {d + "/model.safetensors"});
  d = fx.checkpoint_with("no_config", [](const std::string& p) { fs::remove(p + "/config.json"); });
  add("missing config.json", d, {d + "/config.json"});
  d = fx.checkpoint_with("config_not_json",
                         [](const std::string& p) { write_bytes(p + "/config.json", "{\"hidden_size\": "); });
  add("config.json not JSON", d, {d + "/config.json", "not valid JSON"});
  d = fx.checkpoint_with("config_typo", [](const std::string& p) {
    json c = read_json(p + "/config.json");
    c["num_hiden_layers"] = c["num_hidden_layers"];
    c.erase("num_hidden_layers");
    write_json(p + "/config.json", c);
  });
  add("config.json with an unknown key", d, {d + "/config.json", "did you mean \"num_hidden_layers\""});
  d = fx.checkpoint_with("model_dir", [](const std::string& p) {
    fs::remove(p + "/model.safetensors");
    fs::create_directory(p + "/model.safetensors");
  });
  add("model.safetensors is a directory", d, {d + "/model.safetensors", "directory"});
  d = fx.checkpoint_with("truncated", [](const std::string& p) {
    const std::string raw = read_bytes(p + "/model.safetensors");
    write_bytes(p + "/model.safetensors", raw.substr(0, raw.size() / 2));
  });
  add("truncated model.safetensors", d, {d + "/model.safetensors", "out of range"});
  d = fx.checkpoint_with("four_bytes", [](const std::string& p) { write_bytes(p + "/model.safetensors", "abcd"); });
  add("model.safetensors of 4 bytes", d, {d + "/model.safetensors", "truncated"});
  d = fx.checkpoint_with("empty_model", [](const std::string& p) { write_bytes(p + "/model.safetensors", ""); });
  add("empty model.safetensors", d, {d + "/model.safetensors", "truncated"});
  d = fx.checkpoint_with("header_past_end", [](const std::string& p) {
    const std::string raw = read_bytes(p + "/model.safetensors");
    write_bytes(p + "/model.safetensors", length_prefix(raw.size()) + raw.substr(8));
  });
  add("header length past the end", d, {d + "/model.safetensors", "past the end"});
  d = fx.checkpoint_with("header_absurd", [](const std::string& p) {
    const std::string raw = read_bytes(p + "/model.safetensors");
    write_bytes(p + "/model.safetensors", length_prefix(uint64_t(1) << 62) + raw.substr(8));
  });
  add("absurd header length", d, {d + "/model.safetensors", "absurdly large"});
  d = fx.checkpoint_with("header_not_json", [](const std::string& p) {
    write_bytes(p + "/model.safetensors", length_prefix(16) + "{\"a\": [1, 2, 3 " + std::string(64, '\0'));
  });
  add("header not JSON", d, {d + "/model.safetensors", "not valid JSON"});
  d = fx.model_with("offsets_out_of_range", [](Safetensors& st) {
    st.header["model.norm.weight"]["data_offsets"][1] = st.data.size() + 4096;
    return encode_safetensors(st.header, st.data);
  });
  add("offsets out of range", d, {d + "/model.safetensors", "model.norm.weight", "out of range"});
  d = fx.model_with("offsets_overlap", [](Safetensors& st) {
    // Two [D] norms share one range: sizes agree, so only the overlap check catches it.
    st.header["model.norm.weight"]["data_offsets"] = st.header["model.layers.0.input_layernorm.weight"]["data_offsets"];
    return encode_safetensors(st.header, st.data);
  });
  add("overlapping offsets", d, {d + "/model.safetensors", "overlap"});
  d = fx.model_with("offsets_size", [](Safetensors& st) {
    auto& off = st.header["model.norm.weight"]["data_offsets"];
    off[1] = off[1].get<uint64_t>() - 4;
    return encode_safetensors(st.header, st.data);
  });
  add("offsets disagreeing with the shape", d, {d + "/model.safetensors", "model.norm.weight", "shape needs"});
  d = fx.model_with("bad_dtype", [](Safetensors& st) {
    st.header["model.embed_tokens.weight"]["dtype"] = "Q7";
    return encode_safetensors(st.header, st.data);
  });
  add("unknown dtype", d, {d + "/model.safetensors", "model.embed_tokens.weight", "Q7"});
  d = fx.model_with("negative_dim", [](Safetensors& st) {
    st.header["model.norm.weight"]["shape"] = json::array({-32});
    return encode_safetensors(st.header, st.data);
  });
  add("negative dimension", d, {d + "/model.safetensors", "model.norm.weight"});
  d = fx.model_with("nan_weight", [](Safetensors& st) {
    const uint64_t at = st.header["model.norm.weight"]["data_offsets"][0].get<uint64_t>() + 8;
    st.data.replace(at, 4, one_float(std::numeric_limits<float>::quiet_NaN()));
    return encode_safetensors(st.header, st.data);
  });
  add("NaN weight", d, {d + "/model.safetensors", "model.norm.weight", "non-finite"});
  d = fx.model_with("inf_weight", [](Safetensors& st) {
    const uint64_t at = st.header["lm_head.weight"]["data_offsets"][0].get<uint64_t>();
    st.data.replace(at, 4, one_float(-std::numeric_limits<float>::infinity()));
    return encode_safetensors(st.header, st.data);
  });
  add("infinite weight", d, {d + "/model.safetensors", "lm_head.weight", "non-finite"});
  d = fx.model_with("missing_tensor", [](Safetensors& st) {
    st.header.erase("model.norm.weight");
    return encode_safetensors(st.header, st.data);
  });
  add("missing tensor", d, {d + "/model.safetensors", "missing tensor \"model.norm.weight\""});
  d = fx.model_with("extra_tensor", [](Safetensors& st) {
    st.header["model.layers.9.mlp.gate.weight"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {0, 0}}};
    return encode_safetensors(st.header, st.data);
  });
  add("unknown tensor", d, {d + "/model.safetensors", "model.layers.9.mlp.gate.weight"});
  d = fx.checkpoint_with("shape_mismatch", [](const std::string& p) {
    json c = read_json(p + "/config.json");
    c["n_routed_experts"] = 8;
    write_json(p + "/config.json", c);
  });
  add("shapes disagreeing with config.json", d, {d + "/model.safetensors", "config implies"});
  REQUIRE(rows.size() >= 40);
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: resume refuses a run directory it cannot continue exactly", "[reliability]") {
  Fixtures fx;
  // Two real runs: the micro model, and one of a different width.
  const std::string run = fx.tmp / "run", other_run = fx.tmp / "other_run";
  const std::string other_config = fx.config_with("other.json", [](json& c) { c["model"]["hidden_size"] = 48; });
  for (const auto& [config, dir] : {std::pair{fx.config, run}, std::pair{other_config, other_run}}) {
    const RunResult r = run_moe(fx.train(config, dir, {"--steps", "2"}), {.timeout_s = 60});
    INFO(r.describe());
    REQUIRE(r.exited);
    REQUIRE(r.code == 0);
  }
  auto copy_run = [&](const std::string& name, const std::function<void(const std::string&)>& edit) {
    const std::string dir = fx.tmp / name;
    fs::copy(run, dir, fs::copy_options::recursive);
    edit(dir);
    return dir;
  };
  auto resume = [&](const std::string& dir, std::vector<std::string> extra) {
    std::vector<std::string> a = {"train", "--out", dir, "--resume", "--threads", "2"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  auto edit_state = [&](const std::string& name, const std::function<void(json&)>& edit) {
    return copy_run(name, [&](const std::string& dir) {
      json s = read_json(dir + "/trainer_state.json");
      edit(s);
      write_json(dir + "/trainer_state.json", s);
    });
  };
  const std::string foreign = copy_run("foreign_state", [&](const std::string& dir) {
    fs::copy_file(other_run + "/trainer_state.json", dir + "/trainer_state.json", fs::copy_options::overwrite_existing);
  });
  const std::string not_json = copy_run(
      "state_not_json", [](const std::string& dir) { write_bytes(dir + "/trainer_state.json", "{\"step\": 2, "); });
  const std::string state_array =
      copy_run("state_array", [](const std::string& dir) { write_bytes(dir + "/trainer_state.json", "[]\n"); });
  const std::string step_type = edit_state("step_type", [](json& s) { s["step"] = "two"; });
  const std::string no_rng = edit_state("no_rng", [](json& s) { s.erase("rng"); });
  const std::string no_optimizer =
      copy_run("no_optimizer", [](const std::string& dir) { fs::remove(dir + "/optimizer.safetensors"); });
  const std::string bad_optimizer = copy_run("bad_optimizer", [](const std::string& dir) {
    const std::string raw = read_bytes(dir + "/optimizer.safetensors");
    write_bytes(dir + "/optimizer.safetensors", raw.substr(0, raw.size() - 100));
  });
  const std::string nan_model = copy_run("nan_model", [](const std::string& dir) {
    Safetensors st = parse_safetensors(read_bytes(dir + "/model.safetensors"));
    const uint64_t at = st.header["model.norm.weight"]["data_offsets"][0].get<uint64_t>();
    st.data.replace(at, 4, one_float(std::numeric_limits<float>::quiet_NaN()));
    write_bytes(dir + "/model.safetensors", encode_safetensors(st.header, st.data));
  });
  const std::string other_data = fx.tmp / "other_data.txt";
  write_bytes(other_data, read_bytes(kShakespeare).substr(0, 20000));
  const std::string empty = fx.tmp / "empty_dir";
  fs::create_directory(empty);
  const std::string missing = fx.tmp / "missing_dir";

  const std::vector<Row> rows = {
      {"--resume with --config of a different model",
       resume(run, {"--config", other_config, "--steps", "4"}),
       {other_config, "differs", run},
       ""},
      {"trainer_state.json of another run",
       resume(foreign, {"--steps", "4"}),
       {foreign + "/trainer_state.json", foreign + "/config.json"},
       ""},
      {"trainer_state.json not JSON",
       resume(not_json, {"--steps", "4"}),
       {not_json + "/trainer_state.json", "not valid JSON"},
       ""},
      {"trainer_state.json not an object",
       resume(state_array, {"--steps", "4"}),
       {state_array + "/trainer_state.json"},
       ""},
      {"trainer_state.json step of the wrong type",
       resume(step_type, {"--steps", "4"}),
       {step_type + "/trainer_state.json", "\"step\""},
       ""},
      {"trainer_state.json without rng", resume(no_rng, {"--steps", "4"}), {no_rng + "/trainer_state.json", "rng"}, ""},
      {"missing optimizer.safetensors",
       resume(no_optimizer, {"--steps", "4"}),
       {no_optimizer + "/optimizer.safetensors"},
       ""},
      {"truncated optimizer.safetensors",
       resume(bad_optimizer, {"--steps", "4"}),
       {bad_optimizer + "/optimizer.safetensors"},
       ""},
      {"NaN in the run's model.safetensors",
       resume(nan_model, {"--steps", "4"}),
       {nan_model + "/model.safetensors", "non-finite"},
       ""},
      {"resume on other data", resume(run, {"--data", other_data, "--steps", "4"}), {"different data", "--data"}, ""},
      {"resume an empty directory", resume(empty, {"--steps", "4"}), {empty, "nothing to resume"}, ""},
      {"resume a missing directory", resume(missing, {"--steps", "4"}), {missing, "nothing to resume"}, ""},
      {"resume a finished run", resume(run, {}), {run, "--steps"}, ""},
  };
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: inspect refuses bad metrics files naming the file and line", "[reliability]") {
  Fixtures fx;
  const std::string good =
      R"({"kind":"train","step":1,"loss":3.5,"lr":0.001,"layers":[{"layer":1,"counts":[10,20,30,4],"maxvio":0.875,"bias":[0,0,0,0]}]})";
  auto metrics = [&](const std::string& name, const std::string& text) {
    const std::string path = fx.tmp / (name + ".jsonl");
    write_bytes(path, text);
    return path;
  };
  std::vector<Row> rows;
  auto add = [&](const std::string& name, const std::string& text, std::vector<std::string> expect) {
    const std::string path = metrics(name, text);
    expect.insert(expect.begin(), path);
    rows.push_back({name, {"inspect", path}, expect, ""});
  };
  add("garbage line", good + "\nthis is not json\n" + good + "\n", {":2", "not valid JSON"});
  add("binary garbage", std::string("\x01\x02\xff\xfe garbage\x00\n", 15) + good + "\n", {":1", "not valid JSON"});
  add("step of the wrong type", good + "\n" + R"({"kind":"train","step":"two","loss":1,"layers":[]})" + "\n",
      {":2", "\"step\""});
  add("loss of the wrong type",
      R"({"kind":"train","step":1,"loss":"low","layers":[]})"
      "\n",
      {":1", "\"loss\""});
  add("counts of the wrong type",
      R"({"kind":"train","step":1,"loss":1,"layers":[{"layer":1,"counts":"many","maxvio":0}]})"
      "\n",
      {":1", "\"counts\""});
  // (null is not wrong: training writes a non-finite loss as null.)
  add("val_loss of the wrong type",
      R"({"kind":"eval","step":0,"val_loss":"low","layers":[]})"
      "\n",
      {":1", "\"val_loss\""});
  add("line not an object", "[1, 2, 3]\n", {":1", "JSON object"});
  add("missing kind",
      R"({"step":1,"loss":1})"
      "\n",
      {":1", "\"kind\""});
  add("unknown kind",
      R"({"kind":"banana","step":1})"
      "\n",
      {":1", "banana"});
  add("layers not an array",
      R"({"kind":"train","step":1,"loss":1,"layers":{}})"
      "\n",
      {":1", "\"layers\""});
  add("negative expert count",
      R"({"kind":"train","step":1,"loss":1,"layers":[{"layer":1,"counts":[-1,2],"maxvio":0}]})"
      "\n",
      {":1", "negative"});
  add("bias of the wrong length",
      R"({"kind":"train","step":1,"loss":1,"layers":[{"layer":1,"counts":[1,2],"maxvio":0,"bias":[0]}]})"
      "\n",
      {":1", "bias"});
  add("experts changing between steps",
      good + "\n" + R"({"kind":"train","step":2,"loss":1,"layers":[{"layer":1,"counts":[1,2],"maxvio":0}]})" + "\n",
      {"different number"});
  {
    const std::string dir = fx.tmp / "run_with_garbage";
    fs::create_directory(dir);
    write_bytes(dir + "/metrics.jsonl", good + "\n{\"kind\": \n" + good + "\n");
    rows.push_back(
        {"run directory with a torn middle line", {"inspect", dir}, {dir + "/metrics.jsonl:2", "not valid JSON"}, ""});
    const std::string plain = fx.tmp / "plain_dir";
    fs::create_directory(plain);
    rows.push_back({"directory that is not a run", {"inspect", plain}, {plain, "not a run"}, ""});
    const std::string missing = fx.tmp / "no_such_run";
    rows.push_back({"missing path", {"inspect", missing}, {missing}, ""});
    const std::string ok = metrics("good", good + "\n");
    rows.push_back({"--layer that does not exist", {"inspect", ok, "--layer", "7"}, {"--layer 7"}, ""});
    const std::string blocker = fx.tmp / "regular_file";
    write_bytes(blocker, "x");
    rows.push_back({"--html under a regular file",
                    {"inspect", ok, "--html", blocker + "/report.html"},
                    {blocker + "/report.html"},
                    ""});
  }
  check_refused(rows, fx.tmp.path());
}

TEST_CASE("reliability: unwritable and existing run directories are refused before training", "[reliability]") {
  Fixtures fx;
  const std::string blocker = fx.tmp / "regular_file";
  write_bytes(blocker, "not a directory\n");
  // A finished run: refusing to train into it again must leave every byte as it was.
  const std::string run = fx.tmp / "finished";
  {
    const RunResult r = run_moe(fx.train(fx.config, run, {"--steps", "2"}), {.timeout_s = 60});
    INFO(r.describe());
    REQUIRE(r.exited);
    REQUIRE(r.code == 0);
  }
  // Permission bits only stop other users: these rows run when the tests are not run as root.
  const std::string read_only = fx.tmp / "read_only", read_only_run = fx.tmp / "read_only_run";
  fs::create_directory(read_only);
  fs::create_directory(read_only_run);
  ::chmod(read_only.c_str(), 0555);
  ::chmod(read_only_run.c_str(), 0555);
  const std::string as_root = ::geteuid() == 0 ? "running as root" : "";
  const std::string notes = fx.tmp / "notes";
  fs::create_directory(notes);
  write_bytes(notes + "/keep.txt", "keep me\n");
  const std::vector<Row> rows = {
      // As root no permission bits stop a write, so the unwritable places are a path under a
      // regular file and /proc, where nobody can create directories.
      {"--out under a regular file",
       fx.train(fx.config, blocker + "/run"),
       {blocker + "/run", "cannot create directory"},
       ""},
      {"--out deeper under a regular file", fx.train(fx.config, blocker + "/a/b/c"), {blocker + "/a/b/c"}, ""},
      {"--out in /proc", fx.train(fx.config, "/proc/moe_reliability_run"), {"/proc/moe_reliability_run"}, ""},
      {"--out is a regular file", fx.train(fx.config, blocker), {blocker, "not a directory"}, ""},
      {"--out inside a read-only directory", fx.train(fx.config, read_only + "/run"), {read_only + "/run"}, as_root},
      {"--out a read-only empty directory",
       fx.train(fx.config, read_only_run),
       {read_only_run, "not writable"},
       as_root},
      {"existing run without --resume", fx.train(fx.config, run), {run, "--resume", "--force"}, ""},
      {"existing run without --resume (other flags)",
       fx.train(fx.config, run, {"--steps", "9", "--seed", "3"}),
       {run, "--resume", "--force"},
       ""},
      {"existing non-empty directory", fx.train(fx.config, notes), {notes, "--resume", "--force"}, ""},
      {"data synth --out under a regular file",
       {"data", "synth", "--out", blocker + "/corpus.txt", "--bytes", "1000"},
       {blocker + "/corpus.txt"},
       ""},
      // Files the user has are replaced only with --force.
      {"data synth --out an existing file",
       {"data", "synth", "--out", notes + "/keep.txt", "--bytes", "1000"},
       {notes + "/keep.txt", "exists", "--force"},
       ""},
      {"inspect --html an existing file",
       {"inspect", run, "--html", notes + "/keep.txt"},
       {notes + "/keep.txt", "exists", "--force"},
       ""},
      {"inspect --html a directory", {"inspect", run, "--html", notes}, {notes, "is a directory"}, ""},
  };
  check_refused(rows, fx.tmp.path());
  // With --force they are replaced, atomically, and say so.
  const RunResult synth = run_moe({"data", "synth", "--out", notes + "/keep.txt", "--bytes", "1000", "--force"});
  CHECK(synth.code == 0);
  CHECK(synth.out.rfind("replaced " + notes + "/keep.txt", 0) == 0);
  CHECK(read_bytes(notes + "/keep.txt").size() == 1000);
  const RunResult html = run_moe({"inspect", run, "--html", notes + "/keep.txt", "--force"});
  CHECK(html.code == 0);
  CHECK(html.err.find("replaced " + notes + "/keep.txt") != std::string::npos);
  CHECK(read_bytes(notes + "/keep.txt").rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(leftovers(fx.tmp.path()).empty());
}
