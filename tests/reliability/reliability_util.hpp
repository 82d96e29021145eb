// Helpers of the reliability tests: file contents, directory snapshots and a micro model config that
// trains in milliseconds. Temporary directories and running `moe` come from tests/support/.
#pragma once
#include <sys/mount.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace moe_rel {

namespace fs = std::filesystem;
using nlohmann::json;

inline const std::string kShakespeare = MOE_SHARED_DATA "/tinyshakespeare.txt";

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out << bytes;
  REQUIRE(out);
}

// Every file and directory below `dir` (relative path -> contents; directories map to "<dir>").
inline std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = fs::relative(it->path(), dir).string();
    if (it->is_directory() && !it->is_symlink())
      files[rel] = "<dir>";
    else
      files[rel] = read_bytes(it->path().string());
  }
  return files;
}

// Names of temporary or half-written files (`*.tmp<pid>` of atomic writes, `.pending` saves).
inline std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp") != std::string::npos || name == ".pending") found.push_back(e.path().string());
  }
  return found;
}

// Pages a file of `bytes` bytes takes, and those of every file below `dir`.
inline uint64_t pages(uint64_t bytes) { return (bytes + 4095) / 4096; }

inline uint64_t tree_pages(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += pages(e.file_size());
  return n;
}

// A tmpfs of `bytes` bytes mounted at `where` (as root; `mounted` false with the reason otherwise):
// a disk that fills up when the test wants it to.
struct TmpfsMount {
  std::string dir;
  bool mounted = false;
  std::string error;
  TmpfsMount(const std::string& where, uint64_t bytes) : dir(where) {
    fs::create_directories(dir);
    const std::string options = "size=" + std::to_string(bytes);
    mounted = ::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0;
    if (!mounted) error = std::strerror(errno);
  }
  bool resize(uint64_t bytes) {
    const std::string options = "size=" + std::to_string(bytes);
    return ::mount("tmpfs", dir.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, options.c_str()) == 0;
  }
  ~TmpfsMount() {
    if (mounted) ::umount2(dir.c_str(), MNT_DETACH);
  }
};

// A model small enough that a training step takes milliseconds and a checkpoint ~450 KB.
inline json micro_config() {
  return json{{"model",
               {{"vocab_size", 256},
                {"hidden_size", 32},
                {"num_hidden_layers", 2},
                {"num_attention_heads", 2},
                {"num_key_value_heads", 1},
                {"intermediate_size", 64},
                {"moe_intermediate_size", 16},
                {"first_k_dense_replace", 1},
                {"n_shared_experts", 1},
                {"n_routed_experts", 4},
                {"num_experts_per_tok", 2},
                {"n_group", 1},
                {"topk_group", 1},
                {"max_position_embeddings", 64}}},
              {"train",
               {{"steps", 4},
                {"batch", 2},
                {"seq", 32},
                {"eval_every", 0},
                {"eval_tokens", 64},
                {"save_every", 0},
                {"log_every", 1},
                {"warmup", 1},
                {"threads", 2}}}};
}

inline std::string write_json(const std::string& path, const json& j) {
  write_bytes(path, j.dump(2) + "\n");
  return path;
}

inline size_t count_substr(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

inline json read_json(const std::string& path) {
  const std::string text = read_bytes(path);
  INFO(path);
  REQUIRE(!text.empty());
  return json::parse(text);
}

}  // namespace moe_rel
