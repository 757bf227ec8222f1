// Arena: carves typed buffers out of caller-owned memory, or measures how much a sequence of
// carvings needs. The GPU layers run the same code twice: once measuring (no memory, nothing
// launched) to answer the size queries, once for real, so the plan and the execution cannot
// drift apart.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "gecko/core/status.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::layers::cuda {

class Arena {
 public:
  // A measuring arena: take() hands out fake, well-aligned device addresses that validation
  // accepts and nothing dereferences.
  static Arena measure() { return Arena(nullptr, 0, true); }
  Arena(void* base, std::size_t capacity) : Arena(base, capacity, false) {}

  bool measuring() const { return measuring_; }
  // The current position (rewind() moves it back) and the high-water mark, which is what a
  // sequence of stages needs.
  std::size_t used() const { return used_; }
  std::size_t peak() const { return peak_; }
  Status status(const char* what) const {
    if (overflow_)
      return invalid_argument(std::string(what) + " memory too small: needs at least " + std::to_string(peak_) +
                              " bytes, got " + std::to_string(capacity_));
    return Status::success();
  }

  template <class U>
  U* take(std::size_t count) {
    const std::size_t offset = (used_ + 255) / 256 * 256;
    used_ = offset + count * sizeof(U);
    if (used_ > peak_) peak_ = used_;
    if (measuring_) return reinterpret_cast<U*>(kFakeBase + offset);
    if (used_ > capacity_) {
      overflow_ = true;
      return reinterpret_cast<U*>(kFakeBase + offset);  // never launched on: status() fails first
    }
    return reinterpret_cast<U*>(static_cast<char*>(base_) + offset);
  }
  template <class U>
  TensorView<U> tensor(std::initializer_list<std::int64_t> dims) {
    std::size_t n = 1;
    for (auto d : dims) n *= static_cast<std::size_t>(d);
    return TensorView<U>::contiguous(take<U>(n), dims, Memory::kDevice);
  }
  // Starts over (the scratch arena is reused by each stage).
  void rewind(std::size_t to) { used_ = to; }

 private:
  static constexpr std::uintptr_t kFakeBase = std::uintptr_t{1} << 40;
  Arena(void* base, std::size_t capacity, bool measuring) : base_(base), capacity_(capacity), measuring_(measuring) {}
  void* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  bool measuring_ = false;
  bool overflow_ = false;
};

}  // namespace gecko::layers::cuda
