// Expert parallelism initialises, saves and resumes without a whole model on any rank: the ranks
// start from the one-process initialisation, checkpoints move between one process and expert
// parallelism in both directions, no rank's arenas grow past its block of the experts' state, and a
// failure only rank 0 sees (its run directory, the checkpoint it reads, a full disk while it writes)
// ends every rank with its message instead of leaving them waiting. Built only with MPI.
#ifdef MOE_WITH_MPI
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "core/safetensors.hpp"
#include "model/params.hpp"
#include "mpi_util.hpp"
#include "train/train_config.hpp"

using namespace moe_mpi;

namespace {

int64_t checkpoint_step(const std::string& dir) {
  return read_json(dir + "/trainer_state.json").at("step").get<int64_t>();
}

// Every tensor of two safetensors files with the same names and shapes: the largest |a - b| of a
// tensor relative to its largest |a|.
double max_relative_diff(const std::string& a_path, const std::string& b_path) {
  const moe::SafetensorsFile a = moe::read_safetensors(a_path), b = moe::read_safetensors(b_path);
  REQUIRE(a.tensors.size() == b.tensors.size());
  double worst = 0.0;
  for (const auto& [name, entry] : a.tensors) {
    INFO(name);
    REQUIRE(b.tensors.count(name) == 1);
    REQUIRE(b.tensors.at(name).shape == entry.shape);
    const int64_t n = int64_t(entry.end - entry.begin) / 4;
    const float *pa = a.f32(name), *pb = b.f32(name);
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      diff = std::max(diff, double(std::fabs(pa[i] - pb[i])));
      scale = std::max(scale, double(std::fabs(pa[i])));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

// The losses, per-expert counts and biases of two runs' train lines, step by step (the float sums of
// one process and of several ranks differ in order only: see the first [mpi] test).
void check_same_training(const std::vector<json>& a, const std::vector<json>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t s = 0; s < a.size(); ++s) {
    INFO("step " << s + 1);
    CHECK(std::fabs(a[s]["loss"].get<double>() - b[s]["loss"].get<double>()) < 1e-4);
    for (size_t l = 0; l < a[s]["layers"].size(); ++l) {
      CHECK(a[s]["layers"][l]["counts"] == b[s]["layers"][l]["counts"]);
      const auto ba = a[s]["layers"][l]["bias"].get<std::vector<double>>();
      const auto bb = b[s]["layers"][l]["bias"].get<std::vector<double>>();
      for (size_t e = 0; e < ba.size(); ++e) CHECK(std::fabs(ba[e] - bb[e]) < 1e-6);
    }
  }
}

json end_line(const std::string& dir) {
  const std::vector<json> ends = lines(dir + "/metrics.jsonl", "end");
  REQUIRE(ends.size() == 1);
  return ends[0];
}

}  // namespace

TEST_CASE("mpi: expert-parallel ranks start from the one-process model and checkpoints move both ways bit for bit",
          "[mpi]") {
  TempDir tmp("mpi");
  // lr 1e-30: every update is far below the float resolution of the weights, so the weights of any
  // checkpoint are the initial ones bit for bit, while the Adam moments and the step count move on.
  json c = mpi_config();
  c["train"]["lr"] = 1e-30;
  c["train"]["min_lr"] = 0.0;
  c["train"]["balance"] = "none";
  c["train"]["steps"] = 2;
  c["train"]["eval_every"] = 0;
  c["train"]["save_every"] = 0;
  const std::string config = write_json(tmp / "frozen.json", c);
  const Run one = train_run(tmp, "one", 0, {"--stop-at", "1"}, config);
  const std::string init = read_bytes(one.dir + "/model.safetensors");
  REQUIRE(!init.empty());
  // Each rank initialises only its block of experts, with the values it has in the whole model, and
  // the checkpoint streamed through rank 0 is the one-process file, byte for byte.
  for (int ranks : {2, 4}) {
    INFO(ranks << " ranks");
    const Run ep = train_run(tmp, "ep" + std::to_string(ranks), ranks, {"--expert-parallel", "--stop-at", "1"}, config);
    CHECK(read_bytes(ep.dir + "/model.safetensors") == init);
    CHECK(read_bytes(ep.dir + "/config.json") == read_bytes(one.dir + "/config.json"));
    CHECK(max_relative_diff(one.dir + "/optimizer.safetensors", ep.dir + "/optimizer.safetensors") < 1e-4);
  }
  // A one-process checkpoint resumed under expert parallelism, and an expert-parallel one on one
  // process: every tensor reaches the rank that holds it and comes back to its place in the file.
  fs::copy(one.dir, tmp / "one_then_ep", fs::copy_options::recursive);
  fs::copy(tmp / "ep2", tmp / "ep_then_one", fs::copy_options::recursive);
  resume_run(tmp / "one_then_ep", 2, {"--expert-parallel"});
  resume_run(tmp / "ep_then_one", 0, {});
  const Run straight = train_run(tmp, "straight", 0, {}, config);
  for (const std::string& dir : {tmp / "one_then_ep", tmp / "ep_then_one"}) {
    INFO(dir);
    CHECK(checkpoint_step(dir) == 2);
    CHECK(read_bytes(dir + "/model.safetensors") == init);
    // The moments went to their owners too: the second step moved them as in one process.
    CHECK(max_relative_diff(straight.dir + "/optimizer.safetensors", dir + "/optimizer.safetensors") < 1e-4);
    CHECK(moe::read_safetensors(dir + "/optimizer.safetensors").metadata.at("adam_step") == "2");
  }
}

TEST_CASE(
    "mpi: a one-process checkpoint continues under expert parallelism, and an expert-parallel one on one "
    "process, as the one-process run does",
    "[mpi]") {
  TempDir tmp("mpi");
  const Run one = train_run(tmp, "one", 0, {});
  REQUIRE(one.train.size() == 20);
  train_run(tmp, "one_then_ep", 0, {"--stop-at", "10"});
  check_same_training(one.train, resume_run(tmp / "one_then_ep", 2, {"--expert-parallel"}).train);
  train_run(tmp, "ep_then_one", 2, {"--expert-parallel", "--stop-at", "10"});
  check_same_training(one.train, resume_run(tmp / "ep_then_one", 0, {}).train);
}

TEST_CASE("mpi: no expert-parallel rank allocates more than its block of the experts' state (init, save, resume)",
          "[mpi]") {
  TempDir tmp("mpi");
  // Routed experts hold 85% of the parameters and the batch is tiny, so the arenas are the weights,
  // gradients and Adam moments; a whole model staged on a rank (to initialise, gather or load it)
  // shows up as 7 MB or more above the bound.
  json c = mpi_config();
  c["model"]["hidden_size"] = 64;
  c["model"]["num_hidden_layers"] = 3;
  c["model"]["moe_intermediate_size"] = 512;
  c["train"]["steps"] = 2;
  c["train"]["batch"] = 2;
  c["train"]["seq"] = 16;
  c["train"]["eval_every"] = 0;
  c["train"]["save_every"] = 1;
  const std::string config = write_json(tmp / "big_experts.json", c);
  const moe::ParamLayout whole = moe::make_layout(moe::load_config_file(config).model);
  int64_t routed = 0;
  for (const moe::TensorSpec& spec : whole.tensors)
    if (spec.role == moe::TensorRole::routed_expert) routed += spec.numel;
  REQUIRE(routed > whole.total * 8 / 10);
  const int ranks = 2;
  // Each phase in its own process: the first run initialises, trains a step and saves; the resumed
  // one loads, trains a step and saves.
  std::vector<json> one, ep;
  for (const auto& [ranks_here, name, out] : {std::tuple{0, "one", &one}, std::tuple{ranks, "ep", &ep}}) {
    const std::vector<std::string> flags =
        ranks_here > 0 ? std::vector<std::string>{"--expert-parallel"} : std::vector<std::string>{};
    std::vector<std::string> first = flags;
    first.insert(first.end(), {"--stop-at", "1"});
    train_run(tmp, name, ranks_here, first, config);
    out->push_back(end_line(tmp / name).at("memory"));
    resume_run(tmp / name, ranks_here, flags);
    out->push_back(end_line(tmp / name).at("memory"));
  }
  for (size_t phase = 0; phase < 2; ++phase) {
    INFO((phase == 0 ? "init, step, save" : "resume, step, save"));
    const int64_t one_kib = one[phase]["peak_arena_kib"][0].get<int64_t>();
    // One process holds weights, gradients and two Adam moments of every parameter (16 bytes each).
    CHECK(one_kib >= 16 * whole.total / 1024);
    REQUIRE(ep[phase]["peak_arena_kib"].size() == size_t(ranks));
    for (int r = 0; r < ranks; ++r) {
      INFO("rank " << r);
      const int64_t kib = ep[phase]["peak_arena_kib"][size_t(r)].get<int64_t>();
      // The rank's own state: every replicated parameter and 1/N of the routed experts' ...
      CHECK(kib >= 16 * (whole.total - routed + routed / ranks) / 1024);
      // ... and no more than one process's arenas minus the (1 - 1/N) of the experts it does not hold.
      CHECK(kib <= one_kib - 16 * (routed - routed / ranks) / 1024);
    }
  }
}

TEST_CASE("mpi: a failure only rank 0 sees (its run directory, the checkpoint it reads) ends every rank", "[mpi]") {
  TempDir tmp("mpi");
  const Run first = train_run(tmp, "run", 2, {"--expert-parallel", "--stop-at", "2"});
  auto expect_refusal = [&](const std::vector<std::string>& args, const std::string& message) {
    const auto before = snapshot(first.dir);
    const RunResult r = run_ranks(2, args, /*timeout_s=*/60);
    INFO(r.describe());
    CHECK(snapshot(first.dir) == before);  // refused before anything was written
    CHECK_FALSE(r.timed_out);              // the other rank did not wait for rank 0 forever
    CHECK(r.exited);
    CHECK(r.code != 0);
    CHECK(r.err.find("moe: " + message) != std::string::npos);          // rank 0
    CHECK(r.err.find("moe: rank 1: " + message) != std::string::npos);  // and the rank that waited
  };
  SECTION("an existing run directory") {
    expect_refusal(
        {"train", "--config", tmp / "mpi.json", "--data", kShakespeare, "--out", first.dir, "--expert-parallel"},
        first.dir + ": run directory already exists");
  }
  SECTION("an optimizer file without a tensor") {
    const std::string path = first.dir + "/optimizer.safetensors";
    std::string bytes = read_bytes(path);
    const size_t at = bytes.find("exp_avg.lm_head.weight");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 22, "exp_avg.lm_hxad.weight");
    write_bytes(path, bytes);
    expect_refusal({"train", "--out", first.dir, "--resume", "--expert-parallel"},
                   path + ": missing tensor \"exp_avg.lm_head.weight\"");
  }
  SECTION("a non-finite weight of an expert rank 1 holds") {
    const std::string path = first.dir + "/model.safetensors", name = "model.layers.1.mlp.experts.7.up_proj.weight";
    std::string bytes = read_bytes(path);
    uint64_t header = 0;
    std::memcpy(&header, bytes.data(), 8);  // the header's length, little-endian
    const float nan = std::nanf("");
    std::memcpy(bytes.data() + 8 + header + moe::read_safetensors(path).tensors.at(name).begin + 8, &nan, 4);
    write_bytes(path, bytes);
    expect_refusal({"train", "--out", first.dir, "--resume", "--expert-parallel"},
                   path + ": tensor \"" + name + "\" holds a non-finite value");
  }
}

TEST_CASE("mpi: a full disk during an expert-parallel save ends every rank and keeps the previous checkpoint",
          "[mpi]") {
  TempDir tmp("mpi");
  const std::vector<std::string> flags = {"--expert-parallel", "--save-every", "1", "--eval-every", "0"};
  std::vector<std::string> stop = flags;
  stop.insert(stop.end(), {"--stop-at", "1"});
  const Run first = train_run(tmp, "first", 2, stop);
  // Room for the run directory at step 1 plus half a checkpoint: the save of step 2 cannot fit.
  uint64_t checkpoint = 0;
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    checkpoint += pages(fs::file_size(first.dir + "/" + f));
  TmpfsMount disk(tmp / "disk", (tree_pages(first.dir) + checkpoint / 2) * 4096);
  if (!disk.mounted) {
    WARN("cannot mount a tmpfs here (" << disk.error << "); the one-process write-error tests cover failing saves");
    return;
  }
  const std::string dir = disk.dir + "/run";
  std::vector<std::string> args = {"train", "--config", tmp / "mpi.json", "--data", kShakespeare, "--out", dir};
  args.insert(args.end(), flags.begin(), flags.end());
  const RunResult r = run_ranks(2, args, /*timeout_s=*/60);
  INFO(r.describe());
  CHECK_FALSE(r.timed_out);
  CHECK(r.code != 0);
  for (const char* who : {"moe: ", "moe: rank 1: "}) {
    const size_t at = r.err.find(std::string(who) + dir);
    REQUIRE(at != std::string::npos);
    const std::string line = r.err.substr(at, r.err.find('\n', at) - at);
    CHECK(line.find("No space left on device") != std::string::npos);
    CHECK(line.find("step 2 was not saved; the previous checkpoint in " + dir + " is intact") != std::string::npos);
  }
  CHECK(checkpoint_step(dir) == 1);
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "config.json"}) {
    INFO(f);
    CHECK(read_bytes(dir + "/" + f) == read_bytes(first.dir + "/" + f));
  }
  CHECK(leftovers(dir).empty());
}

#endif  // MOE_WITH_MPI
