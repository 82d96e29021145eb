// Arenas: one aligned block per role (parameters, gradients, optimizer moments, activations).
// Sizes are planned once with a counting pass, so nothing is allocated inside a step.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace moe {

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
  ~Buffer() { std::free(data_); }

  void resize(int64_t n) {
    std::free(data_);
    data_ = nullptr, size_ = n;
    if (n == 0) return;
    const size_t bytes = (size_t(n) * sizeof(T) + 63) / 64 * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
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
