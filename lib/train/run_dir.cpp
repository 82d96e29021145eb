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
#include <sstream>

#include "core/error.hpp"
#include "core/safetensors.hpp"
#include "model/checkpoint.hpp"

namespace moe {

namespace fs = std::filesystem;

namespace {
const char* kCheckpointFiles[] = {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"};
}

namespace {

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
                              const nlohmann::json& trainer_state) {
  const std::string pending = dir + "/.pending";
  const int64_t step = trainer_state.at("step").get<int64_t>();
  try {
    remove_tree(pending);
    make_directories(pending);
    save_checkpoint(pending, model, trainer_state.value(nlohmann::json::json_pointer("/config/train/seq"), int64_t(0)));
    std::vector<TensorRef> moments;
    for (const TensorSpec& spec : model.layout.tensors) {
      if (!spec.trainable) continue;
      moments.push_back({"exp_avg." + spec.name, spec.shape, adam.m.data() + spec.offset});
      moments.push_back({"exp_avg_sq." + spec.name, spec.shape, adam.v.data() + spec.offset});
    }
    write_safetensors(pending + "/optimizer.safetensors", moments,
                      {{"adam_step", std::to_string(adam.t)}, {"step", std::to_string(step)}});
    write_file_atomic(pending + "/trainer_state.json",
                      trainer_state.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    write_file_atomic(pending + "/COMPLETE", "");
  } catch (const Error& e) {
    // Nothing of the new checkpoint is in place yet: drop it (freeing the space it took).
    remove_tree(pending);
    fail(std::string(e.what()) + "; the checkpoint of step " + std::to_string(step) + " was not saved" +
         (path_exists(dir + "/trainer_state.json") ? "; the previous checkpoint in " + dir + " is intact" : ""));
  }
  recover_pending_checkpoint(dir);
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

void load_optimizer_state(const std::string& dir, const Model& model, AdamW& adam) {
  const SafetensorsFile file = read_safetensors(dir + "/optimizer.safetensors");
  for (const TensorSpec& spec : model.layout.tensors) {
    if (!spec.trainable) continue;
    for (const auto& [prefix, dest] : {std::pair{"exp_avg.", adam.m.data()}, std::pair{"exp_avg_sq.", adam.v.data()}}) {
      const std::string name = prefix + spec.name;
      auto it = file.tensors.find(name);
      if (it == file.tensors.end()) fail(file.path + ": missing tensor \"" + name + "\"");
      if (it->second.shape != spec.shape)
        fail(file.path + ": tensor \"" + name + "\" has the wrong shape for this model");
      const float* src = file.f32(name);
      std::copy_n(src, spec.numel, dest + spec.offset);
    }
  }
  auto it = file.metadata.find("adam_step");
  if (it == file.metadata.end()) fail(file.path + ": missing adam_step in __metadata__");
  try {
    adam.t = std::stoll(it->second);
  } catch (const std::exception&) {
    fail(file.path + ": adam_step is not an integer");
  }
}

}  // namespace moe
