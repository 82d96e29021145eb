// The training loop. One step: `accum` micro-batches of forward + backward (gradients and expert
// counts accumulate), global-norm clipping, AdamW, then the loss-free bias update from the whole
// step's counts; then the records, evaluation and checkpoints.
#include "train/trainer.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/memory.hpp"
#include "core/rng.hpp"
#include "core/safetensors.hpp"
#include "dist/dist.hpp"
#include "dist/expert_parallel.hpp"
#include "model/checkpoint.hpp"
#include "moe/balance.hpp"
#include "ops/embedding.hpp"
#include "train/data.hpp"
#include "train/eval_routing.hpp"
#include "train/optimizer.hpp"
#include "train/run_dir.hpp"
#include "train/signals.hpp"
#include "train/synth.hpp"

namespace moe {

using nlohmann::json;

namespace {

// Every rank evaluates its share of the windows (all ranks run the same number of forward passes:
// with expert parallelism each one is collective); sums are combined over ranks.
// `routing` receives the top-K sets of the first kEvalRoutingTokens evaluated tokens of every main
// MoE layer (the MTP layer's are left out: its inputs shift with the main model's).
EvalRecord evaluate(ComputeContext& ctx, const Model& model, Workspace& ws, const TextData& data, int64_t eval_tokens,
                    int64_t step, const Parallel& parallel, EvalRouting& routing) {
  const ModelConfig& c = model.config;
  const int64_t B = ws.B, T = ws.T, V = c.vocab_size, ranks = parallel.ranks(), rank = parallel.rank();
  const int64_t available = (data.val_size() - 1) / T;  // whole windows with their next-byte targets
  const int64_t windows = std::max<int64_t>(1, std::min(available, (eval_tokens + T - 1) / T));
  ExpertTally tally(c);
  std::vector<int32_t> inputs(size_t(B * T)), targets(size_t(B * T));
  const int64_t K = c.num_experts_per_tok;
  routing = EvalRouting{step, c.num_moe_layers(), std::min(windows * T, kEvalRoutingTokens), K, c.n_routed_experts, {}};
  // Expert id + 1 per slot, 0 where another rank evaluated the token: one sum over ranks combines them.
  std::vector<int64_t> chosen(size_t(routing.layers * routing.tokens * K), 0);
  double loss_sum = 0.0, mtp_sum = 0.0, text_bytes = 0.0;  // text_bytes: UTF-8 bytes of the targets
  // The module runs here trained or not (mtp_weight 0: the steps skip it, cleared run_mtp); an
  // untrained router's load is not logged with the balanced ones.
  const bool mtp_trained = ws.run_mtp;
  ws.run_mtp = true;
  for (int64_t g0 = 0; g0 < windows; g0 += B * ranks) {
    const int64_t w0 = g0 + rank * B;
    const int64_t rows = std::clamp<int64_t>(windows - w0, 0, B);
    for (int64_t b = 0; b < B; ++b) {
      // Rows past the last window repeat it; they are left out of the loss and the counts.
      const int64_t s = data.train_end + std::min(w0 + b, windows - 1) * T;
      data.copy(s, T, inputs.data() + b * T);
      data.copy(s + 1, T, targets.data() + b * T);
    }
    // With targets, a workspace built with the MTP module runs it too (its t_{i+2} predictions).
    model_forward(ctx, model, ws, inputs.data(), targets.data());
    if (rows == 0) continue;
    loss_sum += cross_entropy_forward_backward(ws.logits, targets.data(), nullptr, rows * T, V, 0.0f);
    for (int64_t i = 0; i < rows * T; ++i) text_bytes += double(data.tokenizer.bytes_of(targets[size_t(i)]).size());
    if (ws.mtp_ran)
      mtp_sum += cross_entropy_forward_backward(ws.mtp_logits, ws.mtp_targets, nullptr, rows * T, V, 0.0f);
    tally.add(c, ws, rows * T);
    int64_t m = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      if (!c.is_moe_layer(l)) continue;
      const int32_t* expert = ws.layers[size_t(l)].moe.expert;
      for (int64_t i = 0; i < rows * T && w0 * T + i < routing.tokens; ++i) {
        int64_t* set = chosen.data() + (m * routing.tokens + w0 * T + i) * K;
        for (int64_t k = 0; k < K; ++k) set[k] = expert[i * K + k] + 1;
        std::sort(set, set + K);
      }
      ++m;
    }
  }
  if (ranks > 1) {
    parallel.dist->allreduce_sum(chosen.data(), int64_t(chosen.size()));
    parallel.dist->allreduce_sum(&loss_sum, 1);
    parallel.dist->allreduce_sum(&text_bytes, 1);
    parallel.dist->allreduce_sum(&mtp_sum, 1);
    for (auto& layer : tally.counts) parallel.dist->allreduce_sum(layer.data(), int64_t(layer.size()));
  }
  routing.experts.resize(chosen.size());
  for (size_t i = 0; i < chosen.size(); ++i) routing.experts[i] = uint16_t(chosen[i] - 1);
  EvalRecord r;
  r.step = step;
  r.tokens = windows * T;
  r.val_loss = loss_sum / double(r.tokens);
  // Bits per byte: the same total cross-entropy in bits over the bytes of text it predicted, so
  // that models with different tokenizers compare (a byte model's is val_loss / ln 2).
  r.val_bpb = text_bytes > 0 ? loss_sum / std::log(2.0) / text_bytes : 0.0;
  if (ws.mtp_ran) r.mtp_val_loss = mtp_sum / double(windows * (T - 1));
  size_t m = 0;
  for (int64_t l = 0; l < c.num_hidden_layers + (ws.mtp_ran && mtp_trained ? 1 : 0); ++l) {
    if (!c.is_moe_layer(l)) continue;
    LayerLoad load;
    load.layer = l;
    load.counts = tally.counts[m++];
    load.maxvio = max_violation(load.counts.data(), c.n_routed_experts);
    r.layers.push_back(std::move(load));
  }
  ws.run_mtp = mtp_trained;
  return r;
}

// Bytes of memory this machine (or its cgroup) offers; 0 when unknown.
double machine_memory_bytes() {
  double bytes = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  for (const char* limit_file : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(limit_file);
    double limit = 0;
    if (in >> limit && limit > 0 && limit < bytes) bytes = limit;
  }
  return bytes > 0 ? bytes : 0;
}

// Refuses, before anything is allocated, a run that cannot fit in memory: parameters, gradients
// and the two Adam moments (4 floats per parameter) plus the activations of one micro-batch
// (the estimate of validate(TrainConfig)).
void check_fits_in_memory(const ModelConfig& m, const TrainConfig& t) {
  const double params = double(make_layout(m).total);
  const double need = 16.0 * params + activation_bytes_estimate(m, t.batch, t.seq), have = machine_memory_bytes();
  if (have > 0 && need > have) {
    char text[256];
    std::snprintf(text, sizeof text,
                  "the run needs about %.1f GiB of memory (%.0fM parameters x 16 bytes for weights, gradients "
                  "and Adam moments, plus activations of batch x seq), but this machine has %.1f GiB; use a smaller "
                  "model, --batch or --seq",
                  need / double(1ull << 30), params / 1e6, have / double(1ull << 30));
    fail(text);
  }
}

// Keeps the metrics lines up to `step` (inclusive), dropping what a killed run wrote past its
// last checkpoint, so a resumed run's log reads as one run.
void truncate_metrics(const std::string& path, int64_t step) {
  if (!path_exists(path)) return;
  std::istringstream in(read_file_bytes(path, "metrics file"));
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      const json j = json::parse(line);
      // "end" lines close a run; a resumed run is still going.
      if (j.at("step").get<int64_t>() <= step && j.value("kind", "") != "end") kept += line + "\n";
    } catch (const json::exception&) {
      // a torn last line from a kill: drop it
    }
  }
  write_file_atomic(path, kept);
}

class NullObserver : public TrainObserver {
 public:
  void on_start(const RunStart&) override {}
  void on_step(const StepRecord&, double) override {}
  void on_eval(const EvalRecord&) override {}
  void on_save(const std::string&, int64_t) override {}
  void on_end(const RunEnd&) override {}
};

// The parallel flags against this job: clear errors naming the flag before anything runs.
void check_parallel_options(const TrainOptions& o, const Dist& dist) {
  const ModelConfig& mc = o.config.model;
  const TrainConfig& tc = o.config.train;
  const int64_t ranks = dist.size();
  if ((o.expert_parallel || o.max_ranks_per_token > 0) && !Dist::built_with_mpi())
    fail("--expert-parallel: this moe was built without MPI (install libopenmpi-dev and rebuild)");
  if (o.expert_parallel && mc.mtp())
    fail(
        "--expert-parallel: not implemented for a model with the multi-token-prediction module "
        "(num_nextn_predict_layers: 1); train it data parallel (without --expert-parallel)");
  if (o.max_ranks_per_token > 0 && !o.expert_parallel)
    fail("--max-ranks-per-token: needs --expert-parallel (it limits the ranks a token's experts live on)");
  if (tc.batch % ranks != 0)
    fail("--batch: the global batch of " + std::to_string(tc.batch) + " sequences must be divisible by the " +
         std::to_string(ranks) + " ranks (each rank takes an equal share)");
  if (o.expert_parallel && mc.n_routed_experts % ranks != 0)
    fail("--expert-parallel: n_routed_experts (" + std::to_string(mc.n_routed_experts) +
         ") must be divisible by the number of ranks (" + std::to_string(ranks) + ")");
}

// --max-ranks-per-token M on N ranks makes the model route over N blocks of experts, at most M per
// token: a property of the model from then on (config.json, trainer_state.json), so every later
// forward of it — eval, infer, a resumed run on any number of processes — routes the same way.
// A resumed run keeps the routing it was trained with.
void apply_rank_limit_flag(const TrainOptions& o, const Dist& dist, ModelConfig& model) {
  const int64_t limit = o.max_ranks_per_token, ranks = dist.size();
  if (limit == 0) return;
  if (o.resume) {
    if (limit == model.max_ranks_per_token && ranks == model.expert_ranks) return;
    const std::string stored = model.max_ranks_per_token == 0
                                   ? "without device-limited routing (no max_ranks_per_token in its config)"
                                   : "with max_ranks_per_token = " + std::to_string(model.max_ranks_per_token) +
                                         " over expert_ranks = " + std::to_string(model.expert_ranks);
    fail("--max-ranks-per-token: the run in " + o.out_dir + " was trained " + stored + ", not " +
         std::to_string(limit) + " over " + std::to_string(ranks) +
         " ranks; resume without the flag (the stored routing is used)");
  }
  model.max_ranks_per_token = limit;
  model.expert_ranks = ranks;
  validate(model, "--max-ranks-per-token");
}

// Replicated parameters must be bit-identical on every rank (they see the same averaged
// gradients); a difference means a reduction gave different results on different ranks.
void check_replicas_agree(Dist& dist, const Model& model, int64_t step) {
  uint64_t hash = kFnvOffset;
  for (const TensorSpec& spec : model.layout.tensors) {
    if (spec.role == TensorRole::routed_expert && !model.shard.whole(model.config)) continue;
    hash = fnv1a(model.params.data() + spec.offset, size_t(spec.numel) * sizeof(float), hash);
  }
  const int64_t h = int64_t(hash >> 1);
  if (dist.allreduce_min(h) != dist.allreduce_max(h))
    fail("the ranks' copies of the replicated parameters differ at step " + std::to_string(step) +
         " (an MPI reduction returned different sums on different ranks); the last checkpoint is intact");
}

// Every rank's peak memory so far (collective): each rank fills its own slot of a sum.
RankMemory rank_memory(Dist& dist) {
  const size_t ranks = size_t(dist.size()), rank = size_t(dist.rank());
  std::vector<int64_t> slots(2 * ranks, 0);
  slots[rank] = peak_resident_kib();
  slots[ranks + rank] = ArenaBytes::peak.load() / 1024;
  dist.allreduce_sum(slots.data(), int64_t(slots.size()));
  return {{slots.begin(), slots.begin() + ptrdiff_t(ranks)}, {slots.begin() + ptrdiff_t(ranks), slots.end()}};
}

// The run directory holds a checkpoint to continue from (a save interrupted by a kill is finished first).
void require_resumable(const std::string& dir) {
  recover_pending_checkpoint(dir);
  if (!path_exists(dir + "/trainer_state.json"))
    fail(dir +
         ": nothing to resume (no checkpoint yet: trainer_state.json is missing); start over without --resume "
         "(add --force if the directory is not empty)");
}

}  // namespace

ResumePlan plan_resume(const std::string& dir, const std::string& config_file, const std::string& data_path) {
  const std::string state_path = dir + "/trainer_state.json";
  Dist& dist = Dist::world();
  std::string state_text;
  RunDirLock lock;  // while the state is read (a save interrupted by a kill may be finished here)
  dist.on_root([&] {
    if (is_directory(dir)) lock = RunDirLock(dir);
    require_resumable(dir);
    state_text = read_json_file(state_path).dump();
  });
  dist.broadcast(state_text);
  const json state = json::parse(state_text);
  if (!state.is_object() || !state.contains("config")) fail(state_path + ": missing the config section");
  ResumePlan plan{config_from_json(state["config"], state_path + ": config"), data_path};
  if (!config_file.empty()) {
    const Config file = load_config_file(config_file);
    if (const std::string diff = model_difference(file.model, plan.config.model); !diff.empty())
      fail(config_file + ": its model differs from the one the run in " + dir + " was trained with (model." + diff +
           " in the run)");
  }
  if (data_path.empty() && state.contains("data") && state["data"].is_object()) {
    const auto it = state["data"].find("source");
    const std::string source = it != state["data"].end() && it->is_string() ? it->get<std::string>() : "";
    if (source.rfind("synthetic:", 0) != 0) plan.data_path = source;
  }
  return plan;
}

std::vector<ResumeRecord::Change> resume_changes(const TrainConfig& stored, const TrainConfig& now,
                                                 const std::string& dir) {
  static const char* const kFree[] = {"log_every",  "eval_every", "eval_tokens",
                                      "save_every", "threads",    "max_bad_steps"};
  const json before = to_json(stored), after = to_json(now);
  std::vector<ResumeRecord::Change> changes;
  for (const auto& [key, value] : after.items()) {
    const json old = before.contains(key) ? before[key] : json();
    if (old == value) continue;
    const bool free = std::find(std::begin(kFree), std::end(kFree), key) != std::end(kFree);
    const Field<TrainConfig>* field = find_field(train_fields(), key);
    const std::string flag = field && field->flag ? field->flag : "train." + key;
    if (key == "steps" && value.get<int64_t>() < old.get<int64_t>())
      fail(flag + " " + value.dump() + ": the run in " + dir + " is planned for " + old.dump() +
           " steps; --resume may extend it, not shorten it (--stop-at N stops earlier with a checkpoint)");
    if (!free && key != "steps")
      fail(flag + ": the run in " + dir + " was trained with " + key + " = " + old.dump() +
           "; --resume continues it with the same settings (to train on with other settings, start a new run from "
           "its weights: moe train --init-from " +
           dir + " --out NEW_DIR)");
    changes.push_back({key, old.dump(), value.dump()});
  }
  return changes;
}

Config init_from_config(const std::string& dir, const std::string& config_file, bool given) {
  Config config;
  config.model = load_checkpoint_config(dir);
  if (given) {
    const Config stated = load_config_file(config_file);
    if (const std::string diff = model_difference(stated.model, config.model); !diff.empty())
      fail(config_file + ": its model differs from the checkpoint " + dir + " (--init-from; model." + diff +
           " in the checkpoint); leave --config out to train the checkpoint's model with the default settings, or give "
           "a config with the same model section");
    config.train = stated.train;
  } else {
    // The built-in train settings (TrainConfig's defaults, flags override them); their seq may not
    // fit a checkpoint with a shorter context.
    config.train.seq = std::min(config.train.seq, config.model.max_position_embeddings);
  }
  validate(config.train, config.model, given ? config_file : "--init-from " + dir);
  return config;
}

std::string default_run_dir(const std::string& config_path) {
  std::string name =
      config_path.substr(config_path.find_last_of('/') == std::string::npos ? 0 : config_path.find_last_of('/') + 1);
  if (name.size() > 5 && name.substr(name.size() - 5) == ".json") name.resize(name.size() - 5);
  return "runs/" + name;
}

namespace {

// One `moe train` job, set up by the constructor (checks, data, run directory, model, resume) and
// driven by run(): the steps with their evaluations, checkpoints and metrics lines.
class TrainRun {
 public:
  TrainRun(const TrainOptions& options, TrainObserver& observer)
      : options_(options),
        config_(options.config),
        mc_(config_.model),
        tc_(config_.train),
        dir_(options.out_dir),
        dist_(Dist::world()),
        ranks_(dist_.size()) {
    check_parallel_options(options_, dist_);
    apply_rank_limit_flag(options_, dist_, config_.model);
    validate(mc_, "config");
    validate(tc_, mc_, "config");
    check_fits_in_memory(mc_, tc_);
    // Ranks sharing a machine share its cores.
    threads_ = tc_.threads > 0 ? int(tc_.threads)
                               : int(std::max(1u, std::thread::hardware_concurrency() / unsigned(dist_.local_size())));
    omp_set_num_threads(threads_);
    load_data();  // first: a bad --data fails before anything is written
    dist_.on_root([&] {
      prepare_run_dir();
      // The run (and every checkpoint in it) carries the tokenizer its ids mean: infer, eval and
      // inspect read it from there.
      if (!data_.tokenizer.is_bytes()) {
        const Tokenizer stored = Tokenizer::from_dir(dir_);
        if (options_.resume && stored.hash() != data_.tokenizer.hash())
          fail(dir_ + "/" + kTokenizerFile + ": another tokenizer than the data's (" + data_.source + ")");
        if (stored.hash() != data_.tokenizer.hash())
          write_file_atomic(dir_ + "/" + kTokenizerFile, data_.tokenizer.model_bytes());
      }
    });
    const ExpertShard shard =
        options_.expert_parallel ? ExpertParallel::shard_of(mc_, dist_.rank(), dist_.size()) : ExpertShard{};
    model_.emplace(mc_, shard);
    adam_.emplace(model_->layout);
    rng_ = Rng(tc_.seed);
    if (options_.expert_parallel) experts_.emplace(dist_, mc_, tc_.batch / ranks_ * tc_.seq);
    parallel_ = Parallel{&dist_, experts_ ? &*experts_ : nullptr};
    if (options_.resume) {
      resume();
      check_resume_reaches_further();
    } else if (!options_.init_from.empty())
      load_initial_weights();
    else
      model_->init(tc_.seed);
    open_metrics();
    observer_ = dist_.root() ? &observer : &silent_;
  }

  TrainResult run();

 private:
  void load_data();
  void prepare_run_dir();
  void resume();
  void check_resume_reaches_further() const;
  void load_initial_weights();
  void read_trainer_state();
  void open_metrics();
  void append_metrics(const json& line);
  json state_json(int64_t step) const;
  void save(int64_t step);
  void run_eval(int64_t step);
  void end(const char* reason, int64_t step);
  // Evaluation reuses the training workspace.
  Workspace& workspace() { return step_->workspace(); }

  const TrainOptions& options_;
  Config config_;  // the effective config: options.config with --max-ranks-per-token applied
  const ModelConfig& mc_;
  const TrainConfig& tc_;
  const std::string& dir_;
  Dist& dist_;
  const int64_t ranks_;
  int threads_ = 1;
  RunDirLock lock_;  // rank 0: held for the whole run
  TextData data_;
  ComputeContext ctx_;
  std::optional<Model> model_;
  std::optional<AdamW> adam_;
  Rng rng_;
  std::optional<ExpertParallel> experts_;
  Parallel parallel_;
  int64_t start_step_ = 0;
  int64_t saved_step_ = -1;  // the step of the checkpoint in dir_ (-1: none yet)
  std::optional<EvalRecord> first_eval_, last_eval_;
  std::string metrics_path_;
  std::ofstream metrics_;
  NullObserver silent_;
  TrainObserver* observer_ = nullptr;
  StepRecord last_;
  double total_seconds_ = 0.0;
  int64_t total_tokens_ = 0;
  TrainStep* step_ = nullptr;  // while run() runs
};

void TrainRun::load_data() {
  data_ = options_.data_path.empty() ? synthetic_text(kDefaultSynthBytes, kDefaultSynthSeed)
                                     : load_training_data(options_.data_path);
  check_data_fits(data_, tc_.seq);
  const std::string unit = data_.unit();
  if (data_.val_size() < tc_.seq + 1)
    fail(data_.source + ": validation part (" + (data_.prepared() ? "val.bin, " : "last 10%, ") +
         std::to_string(data_.val_size()) + " " + unit + ") is shorter than one window of seq+1 = " +
         std::to_string(tc_.seq + 1) + " " + unit + "; use more data or a smaller --seq");
  // The model reads the tokenizer's ids: its vocabulary must be exactly the tokenizer's (byte
  // tokens fit any vocabulary of at least 256).
  const int64_t V = config_.model.vocab_size, tok = data_.tokenizer.vocab_size();
  if (data_.tokenizer.is_bytes() ? V < tok : V != tok)
    fail(data_.source + ": its tokenizer (" + data_.tokenizer.describe() + ") does not match the model's vocab_size " +
         std::to_string(V) + "; set \"vocab_size\": " + std::to_string(tok) + " in the config's model section");
  if (ranks_ > 1) {
    // Every rank reads its own copy of the data: they must agree, byte for byte.
    uint64_t root_print = fingerprint(data_);
    dist_.broadcast(&root_print, 1);
    if (dist_.allreduce_max(root_print != fingerprint(data_) ? 1 : 0) != 0)
      fail(data_.source +
           ": the ranks read different data (the file differs between machines); give every rank the same file");
  }
}

// Rank 0's business (the other ranks never touch the run directory): refuse to overwrite a
// previous run by accident.
void TrainRun::prepare_run_dir() {
  if (options_.resume) {
    lock_ = RunDirLock(dir_);
    require_resumable(dir_);
  } else {
    if (path_exists(dir_) && !is_directory(dir_)) fail(dir_ + ": exists and is not a directory");
    // Locked before anything is looked at or removed: a second trainer, even with --force, must
    // not delete the files of a run in progress.
    const bool existed = is_directory(dir_);
    if (!existed) make_directories(dir_);
    lock_ = RunDirLock(dir_);
    if (existed && !std::filesystem::is_empty(dir_) && !options_.force)
      fail(dir_ + ": run directory already exists; use --resume to continue it or --force to overwrite it");
    if (options_.force && is_directory(dir_))
      for (const char* f : {"metrics.jsonl", "trainer_state.json", "optimizer.safetensors", "model.safetensors",
                            "config.json", kTokenizerFile})
        std::remove((dir_ + "/" + f).c_str());
    if (options_.force && is_directory(dir_ + "/routing")) {
      // The old run's eval routing files (and the folder, when nothing else is in it).
      for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/routing"))
        if (entry.path().filename().string().rfind("eval_", 0) == 0 && entry.path().extension() == ".bin")
          std::filesystem::remove(entry.path());
      std::error_code ignored;
      std::filesystem::remove(dir_ + "/routing", ignored);
    }
  }
  if (::access(dir_.c_str(), W_OK) != 0) fail(dir_ + ": run directory is not writable");
}

// Rank 0 reads the trainer state and the checkpoint (always a whole model), one tensor at a time,
// and every rank receives only the tensors it holds: no rank stages a whole model.
void TrainRun::resume() {
  dist_.on_root([&] { read_trainer_state(); });
  if (ranks_ > 1) {
    const auto r = rng_.state();
    std::array<uint64_t, 5> head{uint64_t(start_step_), r[0], r[1], r[2], r[3]};
    dist_.broadcast(head.data(), int64_t(head.size()));
    start_step_ = int64_t(head[0]);
    rng_.set_state({head[1], head[2], head[3], head[4]});
  }
  load_training_checkpoint(dir_, *model_, *adam_, dist_);
}

// A resume that would train no step is a mistake on the command line: say which, before anything
// is written.
void TrainRun::check_resume_reaches_further() const {
  if (start_step_ >= tc_.steps)
    fail("--resume: the run in " + dir_ + " has completed its " + std::to_string(tc_.steps) +
         " steps; give a larger --steps to extend it");
  if (options_.stop_at > 0 && options_.stop_at <= start_step_)
    fail("--stop-at " + std::to_string(options_.stop_at) + ": the run in " + dir_ + " is already at step " +
         std::to_string(start_step_) + "; give a later step");
}

// --init-from: the checkpoint's weights (every rank reads the directory: it is read-only input,
// like the data), each rank only the tensors it holds.
void TrainRun::load_initial_weights() {
  const std::string& from = options_.init_from;
  ModelConfig stored = load_checkpoint_config(from);
  if (options_.max_ranks_per_token > 0) {
    // Fine-tuning may change how tokens are routed over ranks (--max-ranks-per-token); the weights
    // do not depend on it.
    stored.max_ranks_per_token = mc_.max_ranks_per_token;
    stored.expert_ranks = mc_.expert_ranks;
  }
  if (to_json(stored) != to_json(mc_))
    fail("--init-from " + from + ": the run's model differs from the checkpoint's config.json");
  load_tensors_into(CheckpointTensors::open(from), *model_, model_->params.data());
}

void TrainRun::read_trainer_state() {
  const std::string state_path = dir_ + "/trainer_state.json";
  const json state = read_json_file(state_path);
  std::string field = "config";  // what is being read, for the error message
  try {
    const Config stored = config_from_json(state.at("config"), state_path + ": config");
    if (to_json(stored.model) != to_json(mc_))
      fail(state_path + ": the run was trained with a different model config; resume with the same one");
    field = "data.fingerprint";
    if (state.at("data").at("fingerprint").get<uint64_t>() != fingerprint(data_))
      fail(state_path + ": the run was trained on different data (" + state.at("data").value("source", "?") +
           "); pass the same --data to resume");
    field = "step";
    start_step_ = state.at("step").get<int64_t>();
    if (start_step_ < 0) fail(state_path + ": step: expected an integer >= 0, got " + std::to_string(start_step_));
    field = "rng";
    rng_.set_state(state.at("rng").get<std::array<uint64_t, 4>>());
    field = "first_eval";
    if (state.contains("first_eval")) first_eval_ = eval_from_json(state.at("first_eval"), state_path + ": first_eval");
  } catch (const json::exception& e) {
    std::string what = e.what();  // "[json.exception.type_error.302] type must be number, but is string"
    if (what.find("] ") != std::string::npos) what = what.substr(what.find("] ") + 2);
    fail(state_path + ": malformed trainer state: field \"" + field + "\" (" + what + ")");
  }
  if (to_json(load_checkpoint_config(dir_)) != to_json(mc_))
    fail(state_path + ": its model config differs from the checkpoint's " + dir_ +
         "/config.json; the run directory mixes files of two runs");
  if (start_step_ >= tc_.steps)
    fail(dir_ + ": already trained " + std::to_string(start_step_) + " of " + std::to_string(tc_.steps) +
         " steps; pass a larger --steps to continue");
}

// Rank 0 writes metrics.jsonl and the checkpoints; the other ranks are silent.
void TrainRun::open_metrics() {
  metrics_path_ = dir_ + "/metrics.jsonl";
  if (!dist_.root()) return;
  if (options_.resume)
    truncate_metrics(metrics_path_, start_step_);
  else
    write_file_atomic(metrics_path_, "");
  metrics_.open(metrics_path_, std::ios::app);
  if (!metrics_) fail(metrics_path_ + ": cannot open for writing");
  if (options_.resume) append_metrics(to_json(ResumeRecord{start_step_, options_.resume_changes}));
  write_file_atomic(dir_ + "/train_config.json", config_file_json(config_).dump(2) + "\n");
}

void TrainRun::append_metrics(const json& line) {
  if (!dist_.root()) return;
  errno = 0;
  metrics_ << line.dump() << "\n" << std::flush;
  if (!metrics_)
    fail(metrics_path_ + ": write failed (" + (errno != 0 ? std::strerror(errno) : "disk full?") +
         "); the last checkpoint in " + dir_ + " is intact");
}

json TrainRun::state_json(int64_t step) const {
  json s = {{"format", 1},
            {"step", step},
            {"rng", rng_.state()},
            {"adam_step", adam_->t},
            {"threads", threads_},
            {"ranks", ranks_},
            {"expert_parallel", options_.expert_parallel},
            {"init_from", options_.init_from},
            {"data", {{"source", data_.source}, {"bytes", data_.size()}, {"fingerprint", fingerprint(data_)}}},
            {"config", config_file_json(config_)}};
  if (first_eval_) s["first_eval"] = to_json(*first_eval_);
  return s;
}

void TrainRun::save(int64_t step) {
  if (ranks_ > 1) check_replicas_agree(dist_, *model_, step);
  // One checkpoint directory, as a one-process run writes it, streamed through rank 0.
  save_training_checkpoint(dir_, *model_, *adam_, state_json(step), dist_);
  saved_step_ = step;
  observer_->on_save(dir_, step);
}

void TrainRun::run_eval(int64_t step) {
  EvalRouting routing;
  EvalRecord r = evaluate(ctx_, *model_, workspace(), data_, tc_.eval_tokens, step, parallel_, routing);
  if (dist_.root()) {
    // Before the eval line: a line in metrics.jsonl means its routing file is complete.
    make_directories(dir_ + "/routing");
    write_eval_routing(eval_routing_path(dir_, step), routing);
  }
  append_metrics(to_json(r));
  if (!first_eval_) first_eval_ = r;
  last_eval_ = r;
  observer_->on_eval(r);
}

void TrainRun::end(const char* reason, int64_t step) {
  append_metrics(end_json(step, reason, rank_memory(dist_)));
  if (metrics_.is_open()) metrics_.close();
  RunEnd e;
  e.reason = reason, e.out_dir = dir_, e.step = step, e.planned_steps = tc_.steps;
  e.saved_step = options_.resume ? std::max(saved_step_, start_step_) : saved_step_;
  e.first_eval = first_eval_ ? &*first_eval_ : nullptr, e.last_eval = last_eval_ ? &*last_eval_ : nullptr;
  e.last_step = last_.step > 0 ? &last_ : nullptr;
  e.seconds = total_seconds_;
  e.mean_tokens_per_s = total_seconds_ > 0 ? double(total_tokens_) / total_seconds_ : 0.0;
  observer_->on_end(e);
}

TrainResult TrainRun::run() {
  const int64_t B = tc_.batch, T = tc_.seq;
  TrainStep trainer_step(tc_, *model_, parallel_);
  step_ = &trainer_step;
  const int64_t end_step = options_.stop_at > 0 ? std::min(options_.stop_at, tc_.steps) : tc_.steps;
  RunStart start;
  start.config = &config_, start.out_dir = dir_, start.data_source = data_.source;
  start.train_bytes = data_.train_end, start.val_bytes = data_.val_size();
  start.start_step = start_step_, start.threads = threads_, start.ranks = int(ranks_);
  observer_->on_start(start);
  StopSignals signals;
  if (start_step_ == 0) run_eval(0);
  int64_t bad_steps = 0, step = start_step_;
  while (step < end_step) {
    const auto t0 = std::chrono::steady_clock::now();
    bool finite = true;
    StepRecord r = trainer_step.run(ctx_, *model_, *adam_, data_, rng_, step, finite);
    ++step;
    bad_steps = finite ? 0 : bad_steps + 1;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.tokens_per_s = double(B * T * tc_.accum) / r.seconds;
    total_seconds_ += r.seconds;
    total_tokens_ += B * T * tc_.accum;
    r.skipped = !finite;
    append_metrics(to_json(r));
    last_ = r;
    observer_->on_step(r, last_eval_ ? last_eval_->val_loss : NAN);
    if (bad_steps >= tc_.max_bad_steps) {
      append_metrics(end_json(step, "non-finite", rank_memory(dist_)));
      const int64_t saved = options_.resume ? std::max(saved_step_, start_step_) : saved_step_;
      fail("training stopped: " + std::to_string(bad_steps) + " consecutive steps had a non-finite loss or gradient; " +
           (saved >= 0 ? "the last good checkpoint (step " + std::to_string(saved) + ") is in " + dir_
                       : std::string("no checkpoint had been saved yet (see --save-every)")) +
           " (try a smaller --lr)");
    }
    // Every rank stops at the same step: a signal seen by any of them counts for all. A closed
    // stdout (`moe train | head`) stops the run the same way, quietly.
    int stop_signal = signals.received();
    if (stop_signal == 0 && observer_->output_closed()) stop_signal = SIGPIPE;
    if (ranks_ > 1) stop_signal = int(dist_.allreduce_max(stop_signal));
    // --stop-at evaluates at its step too, so the stopped run reports where it stands.
    if ((tc_.eval_every > 0 && step % tc_.eval_every == 0) || step == tc_.steps || (step == end_step && !stop_signal))
      run_eval(step);
    if ((tc_.save_every > 0 && step % tc_.save_every == 0) || step == end_step || stop_signal) save(step);
    if (stop_signal) {
      end(stop_signal == SIGPIPE ? "output-closed" : "signal", step);
      return {step, stop_signal};
    }
  }
  end(step == tc_.steps ? "completed" : "stop-at", step);
  return {step, 0};
}

}  // namespace

TrainResult train(const TrainOptions& options, TrainObserver& observer) { return TrainRun(options, observer).run(); }

}  // namespace moe
