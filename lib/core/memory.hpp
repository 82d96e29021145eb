// What the kernel says this process's memory is: the resident set now and its peak (VmRSS and
// VmHWM of /proc/self/status), in KiB; 0 where /proc is not there. The peak counts everything a
// process ever touched at once (its arenas, file buffers, MPI's shared memory, libraries), so it is
// the number a user's machine feels; ArenaBytes (arena.hpp) is the exact share moe planned itself.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace moe {

inline int64_t proc_status_kib(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  return 0;
}

inline int64_t resident_kib() { return proc_status_kib("VmRSS"); }
inline int64_t peak_resident_kib() { return proc_status_kib("VmHWM"); }

}  // namespace moe
