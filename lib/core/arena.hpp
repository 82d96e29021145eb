// Arenas: one aligned block per role (parameters, gradients, optimizer moments, activations).
// Sizes are planned once with a counting pass, so nothing is allocated inside a step.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace moe {

// Bytes held by all Buffers of this process now, and their high-water mark: the memory moe plans
// itself (parameters, gradients, Adam moments, activations, checkpoint staging), which `moe train`
// reports per rank beside the kernel's peak RSS. Exact where RSS is noisy, so tests can bound it.
// Buffers are sized outside the hot loop: the atomics cost nothing that matters.
struct ArenaBytes {
  static inline std::atomic<int64_t> held{0}, peak{0};
  static void add(int64_t bytes) {
    const int64_t now = held.fetch_add(bytes) + bytes;
    for (int64_t seen = peak.load(); now > seen && !peak.compare_exchange_weak(seen, now);) {
    }
  }
  // Starts a new high-water mark from what is held now (to measure one phase).
  static void reset_peak() { peak = held.load(); }
};

// An owning, 64-byte aligned, zero-initialised array of T.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) { resize(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr, o.size_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(data_, o.data_), std::swap(size_, o.size_);
    return *this;
  }
  ~Buffer() { release(); }

  void resize(int64_t n) {
    release();
    if (n == 0) return;
    const size_t bytes = (size_t(n) * sizeof(T) + 63) / 64 * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
    size_ = n;
    ArenaBytes::add(int64_t(bytes));
    std::memset(data_, 0, bytes);
  }
  void zero() {
    if (data_) std::memset(data_, 0, size_t(size_) * sizeof(T));
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return size_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }

 private:
  void release() {
    if (data_) ArenaBytes::add(-int64_t((size_t(size_) * sizeof(T) + 63) / 64 * 64));
    std::free(data_);
    data_ = nullptr, size_ = 0;
  }

  T* data_ = nullptr;
  int64_t size_ = 0;
};

// Two-pass bump allocation: pass 1 (no base) counts, pass 2 hands out pointers in the same order.
template <class T>
class Bump {
 public:
  explicit Bump(T* base = nullptr) : base_(base) {}
  T* take(int64_t n) {
    T* p = base_ ? base_ + used_ : nullptr;
    used_ += (n + 15) / 16 * 16;  // keep every block 64-byte aligned
    return p;
  }
  int64_t used() const { return used_; }

 private:
  T* base_;
  int64_t used_ = 0;
};

}  // namespace moe
