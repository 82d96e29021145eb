// TempDir: the one scratch directory of the tests. Each instance is a fresh, uniquely named directory
// under the system temp dir (TMPDIR or /tmp), removed with everything in it when it goes out of scope.
#pragma once
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <catch2/catch.hpp>

namespace moe_test {

class TempDir {
 public:
  // `label` only makes the name readable (`moe_<label>_XXXXXX`) when a test leaves a failure behind.
  explicit TempDir(const std::string& label = "test") {
    // mkdtemp, not a name from the pid: tests of one process, and parallel ctest processes, never share.
    std::string pattern = (std::filesystem::temp_directory_path() / ("moe_" + label + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    // Tests chmod files and directories to provoke errors; give the owner access back first so that
    // a non-root run can still remove everything.
    std::error_code ec;
    restore_owner_access(path_, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // The path of `name` inside the directory (which need not exist yet).
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  // Writes `contents` to `name` inside the directory and returns its path.
  std::string write(const std::string& name, const std::string& contents) const {
    const std::string file = *this / name;
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << contents;
    REQUIRE(out.good());
    return file;
  }

 private:
  static void restore_owner_access(const std::filesystem::path& dir, std::error_code& ec) {
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
      if (entry.is_directory(ec) && !entry.is_symlink(ec)) restore_owner_access(entry.path(), ec);
  }

  std::string path_;
};

}  // namespace moe_test
