#include "train/run_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "dist/tensor_stream.hpp"
#include "model/checkpoint.hpp"

namespace moe {

namespace fs = std::filesystem;

namespace {

const char* kCheckpointFiles[] = {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"};

const char* kOptimizerFile = "optimizer.safetensors";

// optimizer.safetensors in file order: for every trainable tensor of the whole model, its first
// (exp_avg) then its second (exp_avg_sq) Adam moment.
struct MomentEntry {
  std::string name;
  size_t tensor;  // index in the whole layout
  bool second;
};
std::vector<MomentEntry> moment_entries(const ParamLayout& whole) {
  std::vector<MomentEntry> entries;
  for (size_t i = 0; i < whole.tensors.size(); ++i) {
    if (!whole.tensors[i].trainable) continue;
    entries.push_back({"exp_avg." + whole.tensors[i].name, i, false});
    entries.push_back({"exp_avg_sq." + whole.tensors[i].name, i, true});
  }
  return entries;
}

// Runs `step` on rank 0 unless an earlier one failed, keeping the first failure's message, so that
// rank 0 stays in step with the other ranks' sends and receives whatever happens to its files.
void on_root_keep_error(Dist& dist, std::string& error, const std::function<void()>& step) {
  if (!dist.root() || !error.empty()) return;
  try {
    step();
  } catch (const Error& e) {
    error = e.what();
  }
}

// The pid holding a flock on the file (dev, ino), from /proc/locks ("1: FLOCK  ADVISORY  WRITE 4242
// 08:01:1234 0 EOF": major and minor in hex, the inode in decimal); 0 when it cannot be told.
long flock_holder(dev_t dev, ino_t ino) {
  std::ifstream in("/proc/locks");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, kind, advisory, mode, device;
    long pid = 0;
    if (!(f >> id >> kind) || kind != "FLOCK") continue;
    if (!(f >> advisory >> mode >> pid >> device)) continue;
    unsigned major_no = 0, minor_no = 0;
    unsigned long inode = 0;
    if (std::sscanf(device.c_str(), "%x:%x:%lu", &major_no, &minor_no, &inode) != 3) continue;
    if (major_no == major(dev) && minor_no == minor(dev) && inode == ino) return pid;
  }
  return 0;
}

}  // namespace

RunDirLock::RunDirLock(const std::string& dir) {
  fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd_ < 0) fail(dir + ": cannot open the run directory (" + std::strerror(errno) + ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
  const int err = errno;
  struct stat st {};
  const long pid = err == EWOULDBLOCK && ::fstat(fd_, &st) == 0 ? flock_holder(st.st_dev, st.st_ino) : 0;
  ::close(fd_);
  fd_ = -1;
  if (err != EWOULDBLOCK) fail(dir + ": cannot lock the run directory (" + std::strerror(err) + ")");
  fail(dir + ": in use by moe train" + (pid > 0 ? " (pid " + std::to_string(pid) + ")" : std::string()) +
       "; wait for it to end or choose another --out");
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !is_directory(path))
    fail(path + ": cannot create directory (" + (ec ? ec.message() : "not a directory") + ")");
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

void save_training_checkpoint(const std::string& dir, const Model& model, const AdamW& adam,
                              const nlohmann::json& trainer_state, Dist& dist) {
  const std::string pending = dir + "/.pending";
  const int64_t step = trainer_state.at("step").get<int64_t>();
  TensorStream stream(dist, model);
  const ParamLayout& whole = stream.whole();
  std::string error;  // rank 0's first failure
  on_root_keep_error(dist, error, [&] {
    remove_tree(pending);
    make_directories(pending);
  });

  // Each file's header is known before any tensor arrives; rank 0 writes the tensors as they come.
  const std::vector<CheckpointEntry> weights = checkpoint_entries(model.config, whole);
  std::optional<SafetensorsWriter> out;
  on_root_keep_error(dist, error, [&] {
    std::vector<TensorRef> header;
    for (const CheckpointEntry& e : weights) header.push_back({e.name, e.shape, nullptr});
    out.emplace(pending + "/" + kModelFile, header, checkpoint_metadata());
  });
  for (const CheckpointEntry& e : weights) {
    const float* values = stream.to_root(e.source, model.params.data());
    if (out) out->write_next(values);
  }
  on_root_keep_error(dist, error, [&] { out->commit(); });

  const std::vector<MomentEntry> moments = moment_entries(whole);
  out.reset();
  on_root_keep_error(dist, error, [&] {
    std::vector<TensorRef> header;
    for (const MomentEntry& e : moments) header.push_back({e.name, whole.tensors[e.tensor].shape, nullptr});
    out.emplace(
        pending + "/" + kOptimizerFile, header,
        std::map<std::string, std::string>{{"adam_step", std::to_string(adam.t)}, {"step", std::to_string(step)}});
  });
  for (const MomentEntry& e : moments) {
    const float* values = stream.to_root(e.tensor, (e.second ? adam.v : adam.m).data());
    if (out) out->write_next(values);
  }
  on_root_keep_error(dist, error, [&] {
    out->commit();
    save_checkpoint_config(pending, model.config,
                           trainer_state.value(nlohmann::json::json_pointer("/config/train/seq"), int64_t(0)));
    write_file_atomic(pending + "/trainer_state.json",
                      trainer_state.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    write_file_atomic(pending + "/COMPLETE", "");
  });
  if (!error.empty()) {
    // Nothing of the new checkpoint is in place yet: drop it (freeing the space it took).
    out.reset();
    remove_tree(pending);
    error += "; the checkpoint of step " + std::to_string(step) + " was not saved" +
             (path_exists(dir + "/trainer_state.json") ? "; the previous checkpoint in " + dir + " is intact" : "");
  }
  dist.raise_root_error(error);
  dist.on_root([&] { recover_pending_checkpoint(dir); });
}

void load_training_checkpoint(const std::string& dir, Model& model, AdamW& adam, Dist& dist) {
  TensorStream stream(dist, model);
  const ParamLayout& whole = stream.whole();
  const std::vector<MomentEntry> moments = moment_entries(whole);
  std::optional<CheckpointTensors> weights;
  SafetensorsFile optimizer;
  uint64_t adam_step = 0;
  // Every name, shape and dtype before any value moves: a wrong file fails at once, on every rank.
  dist.on_root([&] {
    weights.emplace(CheckpointTensors::open(dir));
    check_checkpoint_tensors(*weights, model.config, whole);
    optimizer = open_safetensors(dir + "/" + kOptimizerFile);
    for (const MomentEntry& e : moments) {
      const auto it = optimizer.tensors.find(e.name);
      if (it == optimizer.tensors.end()) fail(optimizer.path + ": missing tensor \"" + e.name + "\"");
      if (it->second.shape != whole.tensors[e.tensor].shape)
        fail(optimizer.path + ": tensor \"" + e.name + "\" has the wrong shape for this model");
      if (it->second.dtype != "F32")
        fail(optimizer.path + ": tensor \"" + e.name + "\" is " + it->second.dtype + ", not F32");
    }
    const auto it = optimizer.metadata.find("adam_step");
    if (it == optimizer.metadata.end()) fail(optimizer.path + ": missing adam_step in __metadata__");
    try {
      const long long t = std::stoll(it->second);
      if (t < 0) throw std::out_of_range("negative");
      adam_step = uint64_t(t);
    } catch (const std::exception&) {
      fail(optimizer.path + ": adam_step is not an integer >= 0");
    }
  });
  // Then the values, one tensor at a time: rank 0 reads each into its own arena or the staging
  // buffer, and it goes to the ranks that hold it. A bad value is reported once all have moved.
  std::string error;
  for (size_t i = 0; i < whole.tensors.size(); ++i) {
    float* slot = stream.slot(i, model.params.data());
    on_root_keep_error(dist, error, [&] { read_checkpoint_tensor(*weights, whole.tensors[i], slot); });
    stream.from_root(i, model.params.data());
  }
  on_root_keep_error(dist, error, [&] { check_shared_copies(*weights, model, model.params.data()); });
  for (const MomentEntry& e : moments) {
    float* arena = (e.second ? adam.v : adam.m).data();
    float* slot = stream.slot(e.tensor, arena);
    on_root_keep_error(dist, error, [&] { optimizer.copy_f32(e.name, slot); });
    stream.from_root(e.tensor, arena);
  }
  dist.raise_root_error(error);
  dist.broadcast(&adam_step, 1);
  adam.t = int64_t(adam_step);
}

void recover_pending_checkpoint(const std::string& dir) {
  // Temporary files of atomic writes a killed run left behind ("metrics.jsonl.tmp1234"): the
  // files they were replacing are intact, so they are only clutter.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    for (const char* file : {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json",
                             "metrics.jsonl", "train_config.json"}) {
      const std::string prefix = std::string(file) + ".tmp";
      if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
          name.find_first_not_of("0123456789", prefix.size()) == std::string::npos)
        fs::remove(entry.path(), ec);
    }
  }
  const std::string pending = dir + "/.pending";
  if (!is_directory(pending)) return;
  if (!path_exists(pending + "/COMPLETE")) {
    remove_tree(pending);  // an interrupted save: the previous checkpoint in dir is intact
    return;
  }
  for (const char* name : kCheckpointFiles) {
    const std::string from = pending + "/" + name, to = dir + "/" + name;
    if (!path_exists(from)) continue;  // already moved by an earlier, interrupted recovery
    if (::rename(from.c_str(), to.c_str()) != 0)
      fail(to + ": cannot move the new checkpoint into place (" + std::strerror(errno) + ")");
  }
  remove_tree(pending);
}

}  // namespace moe
