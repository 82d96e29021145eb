// `moe train` and `moe data synth` end to end: the built binary on small real data, checked through
// what it leaves in the run directory (metrics.jsonl, checkpoint files, trainer_state.json).
// Every run uses --threads 2 (resume equivalence needs one thread count) and few steps.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/run_moe.hpp"
#include "../support/temp_dir.hpp"
#include "core/safetensors.hpp"
#include "model/checkpoint.hpp"
#include "model/model.hpp"
#include "train/run_dir.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace moe_test;

const std::string kTiny = MOE_SOURCE_DIR "/configs/tiny.json";
const std::string kShakespeare = MOE_SHARED_DATA "/tinyshakespeare.txt";

using Args = std::vector<std::string>;

Args concat(Args a, const Args& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A clean refusal: a non-zero exit status, not a crash.
bool refused(const RunResult& r) { return r.exited && r.code > 0 && r.code < 128; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Byte comparison that reports sizes, not the (binary) contents, when it fails.
bool same_bytes(const std::string& a, const std::string& b) {
  if (a == b) return true;
  size_t first = 0;
  while (first < std::min(a.size(), b.size()) && a[first] == b[first]) ++first;
  UNSCOPED_INFO("contents differ: sizes " << a.size() << " and " << b.size() << ", first difference at byte " << first);
  return false;
}
bool same_files(const std::string& a, const std::string& b) {
  UNSCOPED_INFO("comparing " << a << " with " << b);
  return same_bytes(read_bytes(a), read_bytes(b));
}

Args train_args(const std::string& out, const Args& extra) {
  return concat({"train", "--config", kTiny, "--data", kShakespeare, "--out", out, "--threads", "2"}, extra);
}

size_t count_lines(const std::string& text, const std::string& with) {
  std::istringstream in(text);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(with) != std::string::npos;
  return n;
}

Args resume_args(const std::string& out) { return {"train", "--out", out, "--resume", "--threads", "2"}; }

std::vector<json> read_metrics(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  REQUIRE(in);
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) {
    INFO(line);
    REQUIRE_NOTHROW(lines.push_back(json::parse(line)));
  }
  return lines;
}

std::vector<json> of_kind(const std::vector<json>& lines, const std::string& kind) {
  std::vector<json> out;
  for (const auto& j : lines)
    if (j.at("kind") == kind) out.push_back(j);
  return out;
}

json read_json(const std::string& path) {
  const std::string text = read_bytes(path);
  INFO(path);
  REQUIRE(!text.empty());
  return json::parse(text);
}

std::set<std::string> dir_entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// Mean over MoE layers of the mean train maxvio over the last `n` steps.
double mean_train_maxvio(const std::vector<json>& train, size_t n) {
  REQUIRE(train.size() >= n);
  double sum = 0.0;
  size_t layers = 0;
  for (size_t s = train.size() - n; s < train.size(); ++s)
    for (const auto& l : train[s].at("layers")) sum += l.at("maxvio").get<double>(), ++layers;
  return sum / double(layers);
}

double mean_eval_maxvio(const json& eval) {
  double sum = 0.0;
  for (const auto& l : eval.at("layers")) sum += l.at("maxvio").get<double>();
  return sum / double(eval.at("layers").size());
}

// Every tensor of two safetensors files, element by element: max |a - b| (0 when bitwise equal).
double max_tensor_diff(const std::string& a_path, const std::string& b_path) {
  const moe::SafetensorsFile a = moe::read_safetensors(a_path), b = moe::read_safetensors(b_path);
  REQUIRE(a.tensors.size() == b.tensors.size());
  double diff = 0.0;
  for (const auto& [name, entry] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name) == 1);
    REQUIRE(b.tensors.at(name).shape == entry.shape);
    const int64_t n = int64_t(entry.end - entry.begin) / 4;
    const float *pa = a.f32(name), *pb = b.f32(name);
    for (int64_t i = 0; i < n; ++i) diff = std::max(diff, double(std::abs(pa[i] - pb[i])));
  }
  return diff;
}

}  // namespace

TEST_CASE("moe train on tinyshakespeare lowers validation loss well below its start", "[train]") {
  TempDir tmp("train");
  const std::string out = tmp / "run";
  const RunResult r = run_moe(train_args(out, {"--steps", "100", "--eval-every", "50", "--eval-tokens", "4096"}));
  INFO(r.describe());
  REQUIRE(r.ok());
  const auto evals = of_kind(read_metrics(out), "eval");
  REQUIRE(evals.size() == 3);  // steps 0, 50, 100
  CHECK(evals.front().at("step") == 0);
  CHECK(evals.back().at("step") == 100);
  const double first = evals.front().at("val_loss").get<double>();
  const double last = evals.back().at("val_loss").get<double>();
  CAPTURE(first, last);
  // An untrained byte model is near uniform over 256 bytes: ln 256 = 5.545.
  CHECK(first > 5.0);
  CHECK(first < 6.0);
  // Measured 5.571 -> 2.640 (step 50) -> 2.445 (step 100).
  CHECK(last < first - 2.5);
  CHECK(last < 2.8);
  // The closing summary says how the run ended and where its checkpoint is.
  CHECK(r.out.find("finished all 100 steps in ") != std::string::npos);
  CHECK(r.out.find("  checkpoint " + out + " (step 100)") != std::string::npos);
}

TEST_CASE("balance loss-free ends a short run with clearly lower MaxVio than --balance none", "[train]") {
  TempDir tmp("train");
  const Args common = {"--steps", "80",          "--eval-every", "0",      "--eval-tokens",
                       "4096",    "--bias-rate", "0.01",         "--seed", "1234"};
  const RunResult none = run_moe(train_args(tmp / "none", concat(common, {"--balance", "none"})));
  INFO(none.describe());
  REQUIRE(none.ok());
  const RunResult free = run_moe(train_args(tmp / "free", concat(common, {"--balance", "loss-free"})));
  INFO(free.describe());
  REQUIRE(free.ok());

  const auto none_lines = read_metrics(tmp / "none"), free_lines = read_metrics(tmp / "free");
  const auto none_train = of_kind(none_lines, "train"), free_train = of_kind(free_lines, "train");
  const auto none_eval = of_kind(none_lines, "eval"), free_eval = of_kind(free_lines, "eval");
  REQUIRE(none_train.size() == 80);
  REQUIRE(free_train.size() == 80);
  REQUIRE(none_eval.size() == 2);
  REQUIRE(free_eval.size() == 2);
  // Same seed and data: identical start (the bias only acts after the first update).
  CHECK(none_eval.front().at("val_loss").get<double>() == free_eval.front().at("val_loss").get<double>());
  CHECK(none_train.front().at("loss").get<double>() == free_train.front().at("loss").get<double>());

  const double train_none = mean_train_maxvio(none_train, 20), train_free = mean_train_maxvio(free_train, 20);
  const double eval_none = mean_eval_maxvio(none_eval.back()), eval_free = mean_eval_maxvio(free_eval.back());
  CAPTURE(train_none, train_free, eval_none, eval_free);
  // Measured: train 1.34 (none) vs 0.40 (loss-free), final eval 1.47 vs 0.30.
  CHECK(train_free < 0.6 * train_none);
  CHECK(eval_free < 0.6 * eval_none);
  CHECK(train_none > 0.5);  // without balancing the router really is unbalanced

  // none never moves the bias; loss-free moves it by exactly ±u or 0 per step.
  for (const auto& l : none_train.back().at("layers"))
    for (double b : l.at("bias").get<std::vector<double>>()) CHECK(b == 0.0);
  double max_abs_bias = 0.0;
  for (const auto& l : free_train.back().at("layers"))
    for (double b : l.at("bias").get<std::vector<double>>()) max_abs_bias = std::max(max_abs_bias, std::abs(b));
  CHECK(max_abs_bias > 0.05);
  CHECK(max_abs_bias <= 80 * 0.01 + 1e-5);
  // Balancing must not cost much quality.
  CHECK(free_eval.back().at("val_loss").get<double>() < none_eval.back().at("val_loss").get<double>() + 0.1);
}

TEST_CASE("resume continues a run exactly: 10 + 10 steps equal 20 steps in one run", "[train]") {
  TempDir tmp("train");
  const std::string a = tmp / "a", b = tmp / "b";
  // Accumulation and a large bias rate make sure micro-batch sampling and the bias are covered.
  const Args common = {"--steps", "20", "--eval-every", "0", "--eval-tokens", "512",  "--batch",  "4",
                       "--seq",   "64", "--accum",      "2", "--bias-rate",   "0.01", "--warmup", "5"};
  const RunResult ra = run_moe(train_args(a, concat(common, {"--save-every", "0"})));
  INFO(ra.describe());
  REQUIRE(ra.ok());
  const RunResult rb1 = run_moe(train_args(b, concat(common, {"--save-every", "0", "--stop-at", "10"})));
  INFO(rb1.describe());
  REQUIRE(rb1.ok());
  CHECK(read_json(b + "/trainer_state.json").at("step") == 10);
  CHECK(of_kind(read_metrics(b), "train").size() == 10);
  CHECK(read_metrics(b).back().at("reason") == "stop-at");
  // The resumed run takes data, config and seed from the run directory.
  const RunResult rb2 = run_moe(resume_args(b));
  INFO(rb2.describe());
  REQUIRE(rb2.ok());

  const json state_a = read_json(a + "/trainer_state.json"), state_b = read_json(b + "/trainer_state.json");
  CHECK(state_a.at("step") == 20);
  CHECK(state_b.at("step") == 20);
  CHECK(state_a.at("rng") == state_b.at("rng"));
  CHECK(state_a.at("adam_step") == state_b.at("adam_step"));

  for (const char* file : {"model.safetensors", "optimizer.safetensors", "config.json"}) {
    CAPTURE(file);
    const std::string fa = read_bytes(a + "/" + file), fb = read_bytes(b + "/" + file);
    REQUIRE(!fa.empty());
    if (fa != fb && std::string(file) != "config.json") CHECK(max_tensor_diff(a + "/" + file, b + "/" + file) <= 1e-6);
    CHECK(same_bytes(fa, fb));  // bitwise: same thread count, same arithmetic
  }
  // The routing bias moved, and identically.
  const moe::SafetensorsFile ma = moe::read_safetensors(a + "/model.safetensors");
  const moe::SafetensorsFile mb = moe::read_safetensors(b + "/model.safetensors");
  int bias_tensors = 0;
  for (const auto& [name, entry] : ma.tensors) {
    if (name.find("e_score_correction_bias") == std::string::npos) continue;
    ++bias_tensors;
    const float *pa = ma.f32(name), *pb = mb.f32(name);
    float largest = 0.0f;
    for (int i = 0; i < 8; ++i) {
      CHECK(pa[i] == pb[i]);
      largest = std::max(largest, std::abs(pa[i]));
    }
    CHECK(largest > 0.0f);
  }
  CHECK(bias_tensors == 2);  // tiny: layers 1 and 2 are MoE

  // The resumed log reads as one run, line for line the same as the uninterrupted one, plus the
  // line that records the resume (nothing changed).
  const auto la = read_metrics(a);
  std::vector<json> lb;
  for (const json& line : read_metrics(b)) {
    if (line.at("kind") == "resume") {
      CHECK(line == json::parse(R"({"kind": "resume", "step": 10, "changed": {}})"));
      continue;
    }
    if (line.at("kind") == "eval" && line.at("step") == 10) continue;  // --stop-at 10 evaluates at its step
    lb.push_back(line);
  }
  REQUIRE(la.size() == lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    CAPTURE(i);
    CHECK(la[i].at("kind") == lb[i].at("kind"));
    CHECK(la[i].at("step") == lb[i].at("step"));
    if (la[i].at("kind") == "train") {
      CHECK(la[i].at("loss") == lb[i].at("loss"));
      CHECK(la[i].at("lr") == lb[i].at("lr"));
      CHECK(la[i].at("layers") == lb[i].at("layers"));
    } else if (la[i].at("kind") == "eval") {
      CHECK(la[i].at("val_loss") == lb[i].at("val_loss"));
      CHECK(la[i].at("layers") == lb[i].at("layers"));
    } else {
      // The one "end" line; the stop-at one was dropped on resume. Its memory is each process's own.
      json ea = la[i], eb = lb[i];
      ea.erase("memory"), eb.erase("memory");
      CHECK(ea == eb);
    }
  }
}

TEST_CASE("checkpoint files are written atomically and an interrupted save is recovered", "[train]") {
  TempDir tmp("train");
  const Args common = {"--steps", "4", "--eval-every", "0",  "--eval-tokens", "256",
                       "--batch", "2", "--seq",        "32", "--save-every",  "0"};
  const std::string dir = tmp / "run";
  RunResult r = run_moe(train_args(dir, concat(common, {"--stop-at", "2"})));
  INFO(r.describe());
  REQUIRE(r.ok());
  const std::set<std::string> expected = {"config.json",
                                          "model.safetensors",
                                          "optimizer.safetensors",
                                          "trainer_state.json",
                                          "metrics.jsonl",
                                          "train_config.json",
                                          "routing"};  // routing/: the eval routing files
  CHECK(dir_entries(dir) == expected);                 // no *.tmp*, no .pending left behind

  // Reference: the same run straight to step 4, and a copy of it stopped at 3 (the "new" checkpoint).
  const std::string straight = tmp / "straight", newer = tmp / "newer";
  REQUIRE(run_moe(train_args(straight, common)).ok());
  REQUIRE(run_moe(train_args(newer, concat(common, {"--stop-at", "3"}))).ok());
  CHECK(dir_entries(straight) == expected);
  CHECK(read_json(newer + "/trainer_state.json").at("step") == 3);

  // Three copies of the step-2 run directory, one per scenario (plain blocks, not SECTIONs, so
  // the runs above happen once).
  const std::string crash = tmp / "crash", sealed = tmp / "sealed", moved = tmp / "moved";
  for (const auto& copy : {crash, sealed, moved}) fs::copy(dir, copy, fs::copy_options::recursive);
  const std::string old_model = read_bytes(dir + "/model.safetensors");

  {
    INFO("a save that crashed before COMPLETE is discarded; --resume uses the old checkpoint");
    fs::create_directory(crash + "/.pending");
    const std::string full = read_bytes(newer + "/model.safetensors");
    std::ofstream(crash + "/.pending/model.safetensors", std::ios::binary) << full.substr(0, full.size() / 2);
    fs::copy_file(newer + "/config.json", crash + "/.pending/config.json");
    r = run_moe(resume_args(crash));
    INFO(r.describe());
    REQUIRE(r.ok());
    CHECK(dir_entries(crash) == expected);  // .pending removed
    CHECK(read_json(crash + "/trainer_state.json").at("step") == 4);
    // From step 2 onward it matches the uninterrupted run bit for bit.
    CHECK(same_files(crash + "/model.safetensors", straight + "/model.safetensors"));
    const auto train = of_kind(read_metrics(crash), "train");
    REQUIRE(train.size() == 4);
    for (size_t i = 0; i < train.size(); ++i) CHECK(train[i].at("step") == int(i) + 1);
  }

  {
    INFO("a sealed save (COMPLETE present) is moved into place by recover_pending_checkpoint");
    fs::create_directory(sealed + "/.pending");
    for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
      fs::copy_file(newer + "/" + f, sealed + "/.pending/" + f);
    std::ofstream(sealed + "/.pending/COMPLETE").flush();
    moe::recover_pending_checkpoint(sealed);
    CHECK(dir_entries(sealed) == expected);
    for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"}) {
      CAPTURE(f);
      CHECK(same_files(sealed + "/" + f, newer + "/" + f));
    }
    CHECK(!same_bytes(read_bytes(sealed + "/model.safetensors"), old_model));
    // Safe to call again with nothing pending.
    moe::recover_pending_checkpoint(sealed);
    CHECK(dir_entries(sealed) == expected);
  }

  {
    INFO("--resume finishes a sealed save, even one whose recovery was itself interrupted");
    // Recovery had already moved config.json and model.safetensors when it stopped.
    fs::create_directory(moved + "/.pending");
    for (const char* f : {"optimizer.safetensors", "trainer_state.json"})
      fs::copy_file(newer + "/" + f, moved + "/.pending/" + f);
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(newer + "/" + f, moved + "/" + f, fs::copy_options::overwrite_existing);
    std::ofstream(moved + "/.pending/COMPLETE").flush();
    r = run_moe(resume_args(moved));
    INFO(r.describe());
    REQUIRE(r.ok());
    CHECK(dir_entries(moved) == expected);
    // It continued from the new checkpoint (step 3): the log has steps 1, 2 (old run) then 4 only.
    std::vector<int> steps;
    for (const auto& j : of_kind(read_metrics(moved), "train")) steps.push_back(j.at("step").get<int>());
    CHECK(steps == std::vector<int>{1, 2, 4});
    CHECK(same_files(moved + "/model.safetensors", straight + "/model.safetensors"));
  }
}

TEST_CASE("metrics.jsonl lines parse and carry the documented fields with consistent sizes", "[train]") {
  TempDir tmp("train");
  const int64_t batch = 2, seq = 32, K = 2, E = 8, eval_tokens = 1000;
  const double u = 0.01;
  for (int accum : {1, 2}) {
    CAPTURE(accum);
    const std::string dir = tmp / ("accum" + std::to_string(accum));
    const RunResult r =
        run_moe(train_args(dir, {"--steps", "6", "--eval-every", "3", "--eval-tokens", "1000", "--batch", "2", "--seq",
                                 "32", "--bias-rate", "0.01", "--accum", std::to_string(accum)}));
    INFO(r.describe());
    REQUIRE(r.ok());
    const auto lines = read_metrics(dir);
    const auto train = of_kind(lines, "train"), evals = of_kind(lines, "eval");
    // One "end" line closes the run; no other kinds.
    REQUIRE(!lines.empty());
    CHECK(lines.back().at("kind") == "end");
    CHECK(lines.back().at("step") == 6);
    CHECK(lines.back().at("reason") == "completed");
    // One process: one entry each; every arena byte was written (zeroed), so it was resident.
    const json& memory = lines.back().at("memory");
    REQUIRE(memory.at("peak_rss_kib").size() == 1);
    REQUIRE(memory.at("peak_arena_kib").size() == 1);
    CHECK(memory["peak_arena_kib"][0].get<int64_t>() > 0);
    CHECK(memory["peak_arena_kib"][0].get<int64_t>() <= memory["peak_rss_kib"][0].get<int64_t>());
    CHECK(train.size() + evals.size() + 1 == lines.size());
    REQUIRE(train.size() == 6);
    REQUIRE(evals.size() == 3);  // steps 0, 3, 6

    std::vector<double> prev_bias[2] = {std::vector<double>(E, 0.0), std::vector<double>(E, 0.0)};
    for (size_t s = 0; s < train.size(); ++s) {
      const json& j = train[s];
      CAPTURE(j.dump());
      CHECK(j.at("step") == int(s) + 1);  // steps increase by 1
      for (const char* key : {"loss", "lr", "grad_norm", "tokens_per_s"}) {
        CAPTURE(key);
        REQUIRE(j.at(key).is_number());
        CHECK(std::isfinite(j.at(key).get<double>()));
      }
      CHECK(j.at("loss").get<double>() > 0.0);
      CHECK(j.at("lr").get<double>() > 0.0);
      CHECK(j.at("tokens_per_s").get<double>() > 0.0);
      REQUIRE(j.at("layers").size() == 2);
      for (size_t m = 0; m < 2; ++m) {
        const json& l = j.at("layers")[m];
        CHECK(l.at("layer") == int(m) + 1);  // first_k_dense_replace = 1: layers 1 and 2 are MoE
        const auto counts = l.at("counts").get<std::vector<int64_t>>();
        const auto bias = l.at("bias").get<std::vector<double>>();
        REQUIRE(counts.size() == size_t(E));
        REQUIRE(bias.size() == size_t(E));
        // Every routed slot of every micro-batch of the step is counted.
        CHECK(std::accumulate(counts.begin(), counts.end(), int64_t(0)) == batch * seq * accum * K);
        const double mean = double(batch * seq * accum * K) / double(E);
        const double max = double(*std::max_element(counts.begin(), counts.end()));
        CHECK(l.at("maxvio").get<double>() == Approx((max - mean) / mean).margin(1e-9));
        // The bias moved by exactly u · sign(mean − c_i) from the whole step's counts.
        for (int64_t i = 0; i < E; ++i) {
          CAPTURE(m, i, counts[size_t(i)], mean);
          const double sign = (mean > double(counts[size_t(i)])) - (mean < double(counts[size_t(i)]));
          CHECK(bias[size_t(i)] == Approx(prev_bias[m][size_t(i)] + u * sign).margin(1e-6));
        }
        prev_bias[m] = bias;
      }
    }
    for (size_t e = 0; e < evals.size(); ++e) {
      const json& j = evals[e];
      CAPTURE(j.dump());
      CHECK(j.at("step") == int(3 * e));
      CHECK(std::isfinite(j.at("val_loss").get<double>()));
      const int64_t tokens = j.at("tokens").get<int64_t>();  // whole windows of seq covering eval_tokens
      CHECK(tokens >= eval_tokens);
      CHECK(tokens < eval_tokens + seq);
      REQUIRE(j.at("layers").size() == 2);
      for (size_t m = 0; m < 2; ++m) {
        const json& l = j.at("layers")[m];
        CHECK(l.at("layer") == int(m) + 1);
        const auto counts = l.at("counts").get<std::vector<int64_t>>();
        REQUIRE(counts.size() == size_t(E));
        CHECK(std::accumulate(counts.begin(), counts.end(), int64_t(0)) == tokens * K);
        const double mean = double(tokens * K) / double(E);
        const double max = double(*std::max_element(counts.begin(), counts.end()));
        CHECK(l.at("maxvio").get<double>() == Approx((max - mean) / mean).margin(1e-9));
      }
    }
    // Eval lines come in step order among the train lines: eval at step s follows train step s.
    for (size_t i = 1; i < lines.size(); ++i) CHECK(lines[i].at("step") >= lines[i - 1].at("step"));
  }
}

TEST_CASE("each --balance mode records its balance loss and moves the bias only when bias-balanced", "[train]") {
  TempDir tmp("train");
  struct Mode {
    const char* name;
    double alpha;  // expected per-layer loss scale (0: no balance loss)
    bool bias_moves;
  };
  // Near-uniform routing at the start gives a per-layer loss close to α for both losses: classic
  // α·E·Σ f P with f, P ≈ 1/E, and sequence-wise α·Σ f P with Σ f = E, P ≈ 1/E.
  for (const Mode mode : {Mode{"none", 0.0, false}, Mode{"aux", 0.01, false}, Mode{"loss-free", 0.0, true},
                          Mode{"loss-free+seq", 1e-4, true}}) {
    CAPTURE(mode.name);
    const std::string dir = tmp / mode.name;
    const RunResult r = run_moe(train_args(dir, {"--steps", "2", "--eval-every", "0", "--eval-tokens", "128", "--batch",
                                                 "2", "--seq", "32", "--bias-rate", "0.01", "--balance", mode.name}));
    INFO(r.describe());
    REQUIRE(r.ok());
    const auto train = of_kind(read_metrics(dir), "train");
    REQUIRE(train.size() == 2);
    for (const auto& step : train) {
      double layer_sum = 0.0;
      for (const auto& l : step.at("layers")) {
        const double loss = l.value("balance_loss", 0.0);
        layer_sum += loss;
        if (mode.alpha == 0.0) {
          CHECK(loss == 0.0);
        } else {
          CHECK(loss > 0.8 * mode.alpha);
          CHECK(loss < 2.0 * mode.alpha);
        }
        double max_abs_bias = 0.0;
        for (double b : l.at("bias").get<std::vector<double>>()) max_abs_bias = std::max(max_abs_bias, std::abs(b));
        if (mode.bias_moves) {
          CHECK(max_abs_bias > 0.0);
          CHECK(max_abs_bias <= 0.01 * step.at("step").get<double>() + 1e-6);
        } else {
          CHECK(max_abs_bias == 0.0);
        }
      }
      CHECK(step.value("balance_loss", 0.0) == Approx(layer_sum).margin(1e-12));
    }
  }
}

TEST_CASE("moe train refuses bad run directories, data and flags with a clear message", "[train]") {
  TempDir tmp("train");
  const Args fast = {"--steps", "1", "--eval-tokens", "128", "--batch", "2", "--seq", "32", "--eval-every", "0"};

  SECTION("an existing non-empty directory needs --resume or --force") {
    const std::string dir = tmp / "busy";
    fs::create_directory(dir);
    std::ofstream(dir + "/notes.txt") << "keep me";
    const RunResult r = run_moe(train_args(dir, fast));
    INFO(r.describe());
    CHECK(refused(r));
    CHECK(r.output().find("--resume") != std::string::npos);
    CHECK(r.output().find(dir) != std::string::npos);
    CHECK(dir_entries(dir) == std::set<std::string>{"notes.txt"});  // nothing written
  }
  SECTION("--force overwrites a previous run") {
    const std::string dir = tmp / "prev";
    REQUIRE(run_moe(train_args(dir, {"--steps", "2", "--eval-tokens", "128", "--batch", "2", "--seq", "32",
                                     "--eval-every", "0"}))
                .ok());
    REQUIRE(of_kind(read_metrics(dir), "train").size() == 2);
    const RunResult again = run_moe(train_args(dir, fast));
    CHECK(refused(again));
    CHECK(again.output().find("--resume") != std::string::npos);
    const RunResult r = run_moe(train_args(dir, concat(fast, {"--force"})));
    INFO(r.describe());
    REQUIRE(r.ok());
    CHECK(read_json(dir + "/trainer_state.json").at("step") == 1);
    const auto train = of_kind(read_metrics(dir), "train");
    REQUIRE(train.size() == 1);  // the old log is gone
    CHECK(train[0].at("step") == 1);
  }
  SECTION("--resume of an empty or missing directory") {
    const std::string empty = tmp / "empty";
    fs::create_directory(empty);
    for (const std::string& dir : {empty, tmp / "missing"}) {
      const RunResult r = run_moe(resume_args(dir));
      INFO(r.describe());
      CHECK(refused(r));
      CHECK(r.output().find(dir) != std::string::npos);
      CHECK(r.output().find("nothing to resume") != std::string::npos);
    }
  }
  SECTION("--resume of a finished run without a larger --steps") {
    const std::string dir = tmp / "done";
    REQUIRE(run_moe(train_args(dir, fast)).ok());
    const RunResult r = run_moe(resume_args(dir));
    INFO(r.describe());
    CHECK(refused(r));
    CHECK(r.output().find("--steps") != std::string::npos);
  }
  SECTION("a missing --data file is named") {
    const std::string missing = tmp / "no_such_corpus.txt";
    const std::string dir = tmp / "nodata";
    const RunResult r = run_moe(concat({"train", "--config", kTiny, "--data", missing, "--out", dir}, fast));
    INFO(r.describe());
    CHECK(refused(r));
    CHECK(r.output().find(missing) != std::string::npos);
    CHECK(!fs::exists(dir));  // failed before creating the run directory
  }
  SECTION("bad numbers") {
    for (const Args& flag : {Args{"--steps", "-1"}, Args{"--steps", "0"}, Args{"--batch", "0"}, Args{"--lr", "-0.1"},
                             Args{"--balance", "sideways"}, Args{"--steps", "abc"}}) {
      CAPTURE(flag);
      const RunResult r = run_moe(train_args(tmp / "bad", concat({"--eval-tokens", "128"}, flag)));
      INFO(r.describe());
      CHECK(refused(r));
      CHECK(!fs::exists(tmp / "bad"));
    }
  }
}

TEST_CASE("moe data synth writes the deterministic four-domain corpus with its labels", "[train]") {
  TempDir tmp("train");
  auto synth = [&](const std::string& name, int seed) {
    const std::string path = tmp / name;
    const RunResult r = run_moe({"data", "synth", "--out", path, "--bytes", "5000", "--seed", std::to_string(seed)});
    INFO(r.describe());
    REQUIRE(r.ok());
    return std::pair{read_bytes(path), read_bytes(path + ".domains")};
  };
  const auto [text, domains] = synth("a.txt", 3);
  CHECK(text.size() == 5000);
  REQUIRE(domains.size() == 5000);
  int per_domain[4] = {0, 0, 0, 0};
  for (unsigned char d : domains) {
    REQUIRE(d < 4);
    ++per_domain[d];
  }
  for (int d = 0; d < 4; ++d) {
    CAPTURE(d);
    CHECK(per_domain[d] > 100);  // all four domains present in 5000 bytes
  }
  // Interleaved in spans: the label changes several times, but not at every byte.
  int changes = 0;
  for (size_t i = 1; i < domains.size(); ++i) changes += domains[i] != domains[i - 1];
  CHECK(changes >= 8);
  CHECK(changes < 1000);

  const auto [same_text, same_domains] = synth("b.txt", 3);
  CHECK(same_text == text);
  CHECK(same_domains == domains);
  const auto [other_text, other_domains] = synth("c.txt", 4);
  CHECK(other_text.size() == 5000);
  CHECK(other_text != text);
}

TEST_CASE("moe train without --data trains on the embedded synthetic corpus", "[train]") {
  TempDir tmp("train");
  const std::string dir = tmp / "default";
  // Default config (configs/tiny.json from the project root) and default data.
  const RunResult r = run_moe({"train", "--steps", "3", "--eval-tokens", "512", "--threads", "2", "--out", dir});
  INFO(r.describe());
  REQUIRE(r.ok());
  const json state = read_json(dir + "/trainer_state.json");
  CHECK(state.at("step") == 3);
  const std::string source = state.at("data").at("source").get<std::string>();
  CHECK(source.rfind("synthetic:", 0) == 0);
  CHECK(of_kind(read_metrics(dir), "train").size() == 3);

  // `moe data synth` with its defaults writes that same corpus.
  const std::string corpus = tmp / "corpus.txt";
  REQUIRE(run_moe({"data", "synth", "--out", corpus}).ok());
  const RunResult r2 = run_moe({"train", "--steps", "1", "--eval-tokens", "128", "--threads", "2", "--data", corpus,
                                "--out", tmp / "from_file"});
  INFO(r2.describe());
  REQUIRE(r2.ok());
  const json state2 = read_json(tmp / "from_file/trainer_state.json");
  CHECK(state2.at("data").at("bytes") == state.at("data").at("bytes"));
  CHECK(state2.at("data").at("fingerprint") == state.at("data").at("fingerprint"));
}

TEST_CASE("moe train --init-from fine-tunes a checkpoint's model with a fresh optimizer", "[train][cli]") {
  TempDir dir("init_from");
  const std::string base = dir / "base", tuned = dir / "tuned";
  const Args common = {"--threads", "2", "--batch", "4", "--seq", "64", "--eval-tokens", "2048"};
  RunResult r = run_moe(concat({"train", "--config", MOE_SOURCE_DIR "/configs/tiny-v3.json", "--out", base, "--steps",
                                "30", "--eval-every", "0"},
                               common));
  INFO(r.describe());
  REQUIRE(r.ok());
  r = run_moe(concat({"train", "--init-from", base, "--out", tuned, "--steps", "3", "--eval-every", "0"}, common));
  INFO(r.describe());
  REQUIRE(r.ok());
  auto evals = [](const std::string& run) {
    std::vector<json> lines;
    std::ifstream in(run + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);)
      if (json j = json::parse(line); j["kind"] == "eval") lines.push_back(j);
    return lines;
  };
  // The fine-tune's step-0 evaluation is the base model's last one: same weights, data and windows.
  const double base_last = evals(base).back()["val_loss"], tuned_first = evals(tuned).front()["val_loss"];
  CHECK(tuned_first == Approx(base_last).epsilon(1e-6));
  CHECK(tuned_first < 4.0);  // far from a fresh model's ln 256
  const json state = json::parse(read_bytes(tuned + "/trainer_state.json"));
  CHECK(state["adam_step"] == 3);  // a fresh optimizer: only this run's steps
  CHECK(state["init_from"] == base);
  CHECK(json::parse(read_bytes(tuned + "/config.json"))["model_type"] == "deepseek_v3");
  // Refusals: with --resume, and with a config file describing another model.
  r = run_moe({"train", "--init-from", base, "--out", tuned, "--resume"});
  CHECK(refused(r));
  r = run_moe({"train", "--init-from", base, "--config", kTiny, "--out", dir / "other"});
  CHECK(refused(r));
  CHECK(r.err.find("its model differs from the checkpoint") != std::string::npos);
  r = run_moe({"train", "--init-from", dir / "nothing", "--out", dir / "other2"});
  CHECK(refused(r));
  CHECK(r.err.find(dir / "nothing") != std::string::npos);
}

TEST_CASE("a checkpoint records its training window; eval defaults to it and infer warns past it", "[train]") {
  TempDir tmp("train_seq");
  const std::string dir = tmp / "run";
  REQUIRE(run_moe(train_args(dir, {"--steps", "2", "--eval-every", "0", "--batch", "2", "--seq", "64"})).ok());
  const json config = json::parse(read_bytes(dir + "/config.json"));
  CHECK(config.at("moe_train_seq") == 64);
  CHECK(config.at("max_position_embeddings") == 256);  // the model's own limit is unchanged
  const std::string text = tmp / "eval.txt";
  std::ofstream(text) << std::string(read_bytes(kShakespeare), 0, 3000);
  const RunResult e = run_moe({"eval", "--model", dir, "--data", text, "--json", "-t", "2"});
  REQUIRE(e.ok());
  CHECK(json::parse(e.out).at("ctx") == 64);
  const RunResult e2 = run_moe({"eval", "--model", dir, "--data", text, "--json", "-t", "2", "--ctx", "200"});
  CHECK(json::parse(e2.out).at("ctx") == 200);
  // "hello" (5) + 59 reaches position 64: inside; + 60 goes past once.
  const RunResult inside = run_moe({"infer", "-m", dir, "-p", "hello", "-n", "59", "--temp", "0", "-t", "2"});
  REQUIRE(inside.ok());
  CHECK(inside.err.find("warning") == std::string::npos);
  const RunResult past = run_moe({"infer", "-m", dir, "-p", "hello", "-n", "60", "--temp", "0", "-t", "2"});
  REQUIRE(past.ok());
  CHECK(past.err.find("moe: warning: generation reaches position 65, past the 64 positions") != std::string::npos);
  CHECK(count_lines(past.err, "warning") == 1);
  // A bad value is refused naming the file and key.
  json bad = config;
  bad["moe_train_seq"] = 1000;
  std::ofstream(dir + "/config.json") << bad.dump();
  const RunResult refused_eval = run_moe({"eval", "--model", dir, "--data", text, "-t", "2"});
  CHECK(refused_eval.code == 1);
  CHECK(
      refused_eval.err.find(dir + "/config.json: moe_train_seq: expected an integer in [1, max_position_embeddings") !=
      std::string::npos);
}

TEST_CASE("with --accum the bias moves once per step, from the counts of all its micro-batches", "[train]") {
  // One sign update per optimizer step: each bias moves by exactly -u, 0 or +u, the sign of
  // mean - count over the step's summed counts (logged per layer). Updating after each of the 4
  // micro-batches would move it by up to 4u, in directions the step's total does not give.
  TempDir tmp("accum_bias");
  const std::string dir = tmp / "run";
  const float u = 0.125f;  // a power of two: every bias value stays exact in float
  REQUIRE(run_moe(train_args(dir, {"--steps", "4", "--accum", "4", "--batch", "2", "--seq", "32", "--eval-every", "0",
                                   "--log-every", "1", "--bias-rate", "0.125", "--balance", "loss-free"}))
              .ok());
  std::map<int64_t, std::vector<double>> previous;  // layer -> bias after the last step
  int64_t steps = 0, moved = 0;
  for (const json& line : read_metrics(dir)) {
    if (line.at("kind") != "train") continue;
    ++steps;
    for (const json& layer : line.at("layers")) {
      const auto counts = layer.at("counts").get<std::vector<int64_t>>();
      const auto bias = layer.at("bias").get<std::vector<double>>();
      std::vector<double>& before = previous[layer.at("layer").get<int64_t>()];
      if (before.empty()) before.assign(bias.size(), 0.0);
      int64_t total = 0;
      for (int64_t n : counts) total += n;
      CHECK(total == 4 * 2 * 32 * 2);  // every slot of the 4 micro-batches (top-2 of tiny)
      const double mean = double(total) / double(counts.size());
      for (size_t e = 0; e < counts.size(); ++e) {
        const double sign = counts[e] < mean ? 1.0 : counts[e] > mean ? -1.0 : 0.0;
        CHECK(bias[e] == before[e] + u * sign);
        moved += sign != 0.0;
      }
      before = bias;
    }
  }
  CHECK(steps == 4);
  CHECK(moved > 0);
}

TEST_CASE("non-finite steps are skipped and logged; --max-bad-steps consecutive ones stop the run", "[train]") {
  // lr 1e30 without clipping: step 1 is finite and throws the weights to ~1e30, so every later
  // step's loss or gradient is not finite.
  TempDir tmp("bad_steps");
  const Args common = {"--steps", "50",       "--batch", "2",    "--seq", "32",          "--eval-every",
                       "0",       "--warmup", "1",       "--lr", "1e30",  "--grad-clip", "0"};
  const std::string first = tmp / "first";
  REQUIRE(run_moe(train_args(first, concat(common, {"--stop-at", "1"}))).ok());
  for (const int64_t max_bad : {int64_t(3), int64_t(5)}) {
    CAPTURE(max_bad);
    const std::string dir = tmp / ("run" + std::to_string(max_bad));
    const RunResult r =
        run_moe(train_args(dir, concat(common, {"--save-every", "1", "--max-bad-steps", std::to_string(max_bad)})));
    INFO(r.describe());
    CHECK(r.code == 1);
    // Steps 2 .. max_bad were skipped and saved (unchanged weights); step max_bad + 1 stopped it.
    CHECK(r.err.find("moe: training stopped: " + std::to_string(max_bad) +
                     " consecutive steps had a non-finite loss or gradient; the last good checkpoint (step " +
                     std::to_string(max_bad) + ") is in " + dir) != std::string::npos);
    std::vector<json> train;
    std::string end_reason;
    for (const json& line : read_metrics(dir)) {
      if (line.at("kind") == "train") train.push_back(line);
      if (line.at("kind") == "end") end_reason = line.at("reason");
    }
    CHECK(end_reason == "non-finite");
    REQUIRE(int64_t(train.size()) == 1 + max_bad);
    CHECK(train[0].value("skipped", false) == false);
    for (int64_t i = 1; i <= max_bad; ++i) {
      CHECK(train[size_t(i)].value("skipped", false) == true);
      // A skipped step changes nothing: no bias update, no optimizer step.
      for (size_t l = 0; l < train[0].at("layers").size(); ++l)
        CHECK(train[size_t(i)]["layers"][l].at("bias") == train[0]["layers"][l].at("bias"));
    }
    CHECK(json::parse(read_bytes(dir + "/trainer_state.json")).at("step") == max_bad);
    CHECK(same_files(dir + "/model.safetensors", first + "/model.safetensors"));
    // The optimizer took one step only (its header records Adam's step count).
    CHECK(read_bytes(dir + "/optimizer.safetensors").find("\"adam_step\":\"1\"") != std::string::npos);
    // The skipped steps' non-finite numbers are null in metrics.jsonl; inspect reads them as such.
    const RunResult report = run_moe({"inspect", dir});
    INFO(report.describe());
    CHECK(report.code == 0);
    CHECK(report.out.find("(non-finite)") != std::string::npos);
    CHECK(run_moe({"inspect", dir, "--json"}).code == 0);
  }
  // Without any checkpoint the message says so instead of pointing at one.
  const RunResult none =
      run_moe(train_args(tmp / "none", concat(common, {"--save-every", "0", "--max-bad-steps", "2"})));
  CHECK(none.code == 1);
  CHECK(none.err.find("no checkpoint had been saved yet") != std::string::npos);
}

TEST_CASE("resume refuses settings that change the run's math and records the ones it may change", "[train]") {
  TempDir tmp("resume_changes");
  const std::string dir = tmp / "run";
  const Args common = {"--steps", "100", "--batch", "2", "--seq", "32", "--eval-every", "0", "--save-every", "10"};
  REQUIRE(run_moe(train_args(dir, concat(common, {"--stop-at", "20"}))).ok());
  const std::string before = read_bytes(dir + "/train_config.json");
  auto resume = [&](const Args& flags) { return run_moe(concat({"train", "--out", dir, "--resume"}, flags)); };
  struct Refused {
    Args flags;
    std::string message;
  };
  for (const Refused& r : std::vector<Refused>{
           {{"--balance", "none"}, "--balance: the run in " + dir + " was trained with balance = \"loss-free\""},
           {{"--lr", "0.01"}, "--lr: the run in " + dir + " was trained with lr = "},
           {{"--seed", "7"}, "--seed: the run in " + dir + " was trained with seed = 1234"},
           {{"--batch", "4"}, "--batch: the run in " + dir + " was trained with batch = 2"},
           {{"--steps", "50"}, "--steps 50: the run in " + dir + " is planned for 100 steps"},
           {{"--stop-at", "20"}, "--stop-at 20: the run in " + dir + " is already at step 20"},
           {{"--stop-at", "5"}, "--stop-at 5: the run in " + dir + " is already at step 20"},
       }) {
    CAPTURE(r.flags);
    const RunResult out = resume(r.flags);
    CHECK(out.code == 1);
    CHECK(out.err.find(r.message) != std::string::npos);
    CHECK(read_bytes(dir + "/train_config.json") == before);  // nothing was changed or continued
    CHECK(json::parse(read_bytes(dir + "/trainer_state.json")).at("step") == 20);
  }
  // Allowed: intervals, threads (with a note) and a longer schedule, recorded in a resume line.
  const RunResult ok = resume({"--stop-at", "30", "--steps", "150", "--log-every", "5", "--threads", "1"});
  INFO(ok.describe());
  REQUIRE(ok.ok());
  CHECK(ok.err.find("moe: note: --threads 1 differs from the run's 2") != std::string::npos);
  std::vector<json> resumes;
  for (const json& line : read_metrics(dir))
    if (line.at("kind") == "resume") resumes.push_back(line);
  REQUIRE(resumes.size() == 1);
  CHECK(resumes[0].at("step") == 20);
  CHECK(resumes[0].at("changed") ==
        json::parse(R"({"steps": {"from": 100, "to": 150}, "log_every": {"from": 50, "to": 5},
                                                    "threads": {"from": 2, "to": 1}})"));
  CHECK(json::parse(read_bytes(dir + "/train_config.json")).at("train").at("steps") == 150);
  // The reports read the resume line and mark it on the step charts.
  const std::string html = tmp / "report.html";
  REQUIRE(run_moe({"inspect", dir, "--html", html}).ok());
  CHECK(read_bytes(html).find("<line class=\"step-marker\"") != std::string::npos);
  CHECK(read_bytes(html).find("resumed at step 20 (") != std::string::npos);
}

TEST_CASE("shipped configs by name and a relative --data work from any directory, resume too", "[train]") {
  TempDir tmp("anywhere");
  fs::create_directories(tmp / "a"), fs::create_directories(tmp / "b");
  std::ofstream(tmp / "a/text.txt") << std::string(read_bytes(kShakespeare), 0, 20000);
  const Args small = {"--batch", "2", "--seq", "32", "--eval-every", "0", "--threads", "2"};
  // Outside the repository: configs/ is not there, the built-in tiny is.
  const RunResult first = run_moe(
      concat({"train", "--config", "tiny", "--data", "text.txt", "--out", "run", "--steps", "4", "--stop-at", "2"},
             small),
      {.cwd = tmp / "a"});
  INFO(first.describe());
  REQUIRE(first.ok());
  const json state = read_json(tmp / "a/run/trainer_state.json");
  CHECK(state.at("data").at("source") == (tmp / "a/text.txt"));  // stored absolute
  const json tiny = json::parse(read_bytes(kTiny));              // a named value: items() would outlive a temporary
  for (const auto& [key, value] : tiny.at("model").items()) CHECK(state.at("config").at("model").at(key) == value);
  // --resume from another directory finds the data.
  const RunResult again = run_moe({"train", "--out", tmp / "a/run", "--resume"}, {.cwd = tmp / "b"});
  INFO(again.describe());
  CHECK(again.ok());
  CHECK(read_json(tmp / "a/run/trainer_state.json").at("step") == 4);
  // The default config is the built-in tiny; an unknown name lists the shipped ones.
  const RunResult bad = run_moe({"train", "--config", "tinny", "--out", "x"}, {.cwd = tmp / "b"});
  CHECK(bad.code == 1);
  CHECK(bad.err.find("tinny: no such file, and not a built-in config (") != std::string::npos);
  CHECK(bad.err.find("tiny-v3") != std::string::npos);
  const RunResult summary = run_moe({"inspect", "small-v3"}, {.cwd = tmp / "b"});
  CHECK(summary.ok());
  CHECK(summary.out.find("MLA") != std::string::npos);
}

TEST_CASE("reports say how a run ended, with its settings and the step of its last evaluation", "[train][report]") {
  TempDir tmp("report_status");
  const std::string a = tmp / "a", b = tmp / "b";
  REQUIRE(run_moe(train_args(a, {"--steps", "10", "--stop-at", "3", "--batch", "2", "--seq", "32", "--eval-every", "0",
                                 "--eval-tokens", "256", "--balance", "aux"}))
              .ok());
  // b: only the step-0 evaluation, other data.
  std::ofstream(tmp / "other.txt") << std::string(read_bytes(kShakespeare), 0, 30000);
  REQUIRE(run_moe(concat({"train", "--config", kTiny, "--data", tmp / "other.txt", "--out", b, "--threads", "2"},
                         {"--steps", "2", "--batch", "2", "--seq", "32", "--eval-every", "0", "--eval-tokens", "256"}))
              .ok());
  // b's last evaluation is its final step (every run evaluates at its last step); cut it away to
  // leave the step-0 one alone.
  {
    std::istringstream in(read_bytes(b + "/metrics.jsonl"));
    std::string kept;
    for (std::string line; std::getline(in, line);)
      if (!(json::parse(line).at("kind") == "eval" && json::parse(line).at("step") != 0)) kept += line + "\n";
    std::ofstream(b + "/metrics.jsonl") << kept;
  }
  const RunResult ra = run_moe({"inspect", a});
  REQUIRE(ra.ok());
  CHECK(ra.out.find("stopped at step 3 of 10 (stop-at)") != std::string::npos);
  CHECK(ra.out.find("settings: balance aux (alpha 0.01), lr 0.003 -> 0.0003, batch x seq x accum 2 x 32 x 1, data " +
                    fs::path(kShakespeare).lexically_normal().string()) != std::string::npos);
  CHECK(ra.out.find("final validation loss: ") != std::string::npos);
  CHECK(ra.out.find("(step 3)") != std::string::npos);  // --stop-at evaluates at its step
  const RunResult rb = run_moe({"inspect", b});
  CHECK(rb.out.find("finished all 2 steps") != std::string::npos);
  CHECK(rb.out.find("(step 0, the only evaluation: before training)") != std::string::npos);
  CHECK(rb.out.find("1 evaluation,") != std::string::npos);
  const RunResult both = run_moe({"inspect", a, b});
  CHECK(both.out.find("note: the runs have different numbers of steps") != std::string::npos);
  CHECK(both.out.find("note: the runs trained on different data") != std::string::npos);
  CHECK(both.out.find("3/10") != std::string::npos);
  const json j = json::parse(run_moe({"inspect", a, "--json"}).out).at("load");
  CHECK(j.at("status") == "stopped at step 3 of 10 (stop-at)");
  CHECK(j.at("settings").at("balance") == "aux");
  CHECK(j.at("settings").at("planned_steps") == 10);
  CHECK(j.at("final_val").at("step") == 3);
  const std::string html = tmp / "r.html";
  REQUIRE(run_moe({"inspect", a, b, "--html", html}).ok());
  const std::string page = read_bytes(html);
  CHECK(page.find("stopped at step 3 of 10 (stop-at)") != std::string::npos);
  CHECK(page.find("<th>balancing</th>") != std::string::npos);
  CHECK(page.find("aux (alpha 0.01)") != std::string::npos);
  CHECK(page.find("Note: the runs trained on different data: ") != std::string::npos);
}

TEST_CASE("mtp_weight 0: the MTP module is not trained, yet evaluated (mtp_val_loss), and keeps its weights",
          "[train]") {
  // tiny-v3 (MTP layer 3) with --mtp-weight 0: train lines have no mtp_loss; eval lines have
  // mtp_val_loss; neither logs layer 3's load (an untrained router's); the module's tensors are
  // bit-identical to their initial ones (same seed), the main model's are not (it trained).
  TempDir tmp("train_mtp0");
  const RunResult r =
      run_moe({"train", "--config", "tiny-v3", "--steps", "3", "--seq", "16", "--batch", "4", "--eval-every", "3",
               "--eval-tokens", "64", "--mtp-weight", "0", "--out", tmp / "run", "-t", "1"});
  INFO(r.describe());
  REQUIRE(r.ok());
  CHECK(r.out.find("evaluations still run it (mtp_val_loss)") != std::string::npos);
  std::ifstream in(tmp / "run/metrics.jsonl");
  int train_lines = 0, eval_lines = 0;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    std::set<int64_t> layers;
    if (j.contains("layers"))
      for (const auto& l : j.at("layers")) layers.insert(l.at("layer").get<int64_t>());
    if (j.value("kind", "") == "train") {
      ++train_lines;
      CHECK_FALSE(j.contains("mtp_loss"));
      CHECK(layers == std::set<int64_t>{1, 2});
    } else if (j.value("kind", "") == "eval") {
      ++eval_lines;
      REQUIRE(j.contains("mtp_val_loss"));
      CHECK(j.at("mtp_val_loss").get<double>() > 4.0);  // untrained: about ln 256 = 5.5 nats
      CHECK(layers == std::set<int64_t>{1, 2});
    }
  }
  CHECK(train_lines == 3);
  CHECK(eval_lines >= 1);
  // The module's weights after 3 steps are its initial ones: the same config and seed (tiny-v3's 1234).
  const auto trained = moe::load_checkpoint(tmp / "run");
  moe::Model initial(trained->config);
  initial.init(1234);
  int mtp_tensors = 0, main_changed = 0;
  for (const moe::TensorSpec& spec : trained->layout.tensors) {
    const float* a = trained->params.data() + spec.offset;
    const float* b = initial.params.data() + spec.offset;
    const bool same = std::equal(a, a + spec.numel, b);
    if (spec.mtp) {
      ++mtp_tensors;
      CHECK(same);
    } else {
      main_changed += !same;
    }
  }
  CHECK(mtp_tensors > 5);
  CHECK(main_changed > 5);
  // inspect says the module's loss is an untrained one.
  const RunResult report = run_moe({"inspect", tmp / "run"});
  CHECK(report.out.find("untrained: mtp_weight 0") != std::string::npos);
}

TEST_CASE("windows of one token: the MTP module has nothing to predict, so no mtp_loss and no load of its layer",
          "[train]") {
  // tiny-v3: MoE layers 1 and 2, the module's layer 3. With --seq 1 it never runs.
  TempDir tmp("train_seq1");
  const RunResult r = run_moe({"train", "--config", "tiny-v3", "--steps", "2", "--seq", "1", "--batch", "4",
                               "--eval-every", "0", "--out", tmp / "run", "-t", "1"});
  INFO(r.describe());
  REQUIRE(r.ok());
  std::ifstream in(tmp / "run/metrics.jsonl");
  int train_lines = 0;
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.value("kind", "") != "train") continue;
    ++train_lines;
    CHECK_FALSE(j.contains("mtp_loss"));
    std::set<int64_t> layers;
    for (const auto& l : j.at("layers")) layers.insert(l.at("layer").get<int64_t>());
    CHECK(layers == std::set<int64_t>{1, 2});
  }
  CHECK(train_lines == 2);
}
