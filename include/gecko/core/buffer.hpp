// Owning host and device buffers for tests, benchmarks and examples. The library itself never
// allocates: its entry points take caller-owned memory. These helpers throw gecko::Error on
// failure because they serve programs, not the library.
#pragma once

#include <cstddef>
#include <cuda_runtime_api.h>
#include <stdexcept>
#include <string>
#include <vector>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws gecko::Error when a Status is not ok (for programs and tests only).
inline void throw_if_error(const Status& s) {
  if (!s.ok()) throw Error(s.to_string());
}

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) { resize(count); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; o.count_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_;
      count_ = o.count_;
      o.ptr_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }

  void resize(std::size_t count) {
    release();
    if (count == 0) return;
    throw_if_error(cuda_status(cudaMalloc(&ptr_, count * sizeof(T)), "cudaMalloc"));
    count_ = count;
  }
  void zero() {
    if (count_) throw_if_error(cuda_status(cudaMemset(ptr_, 0, count_ * sizeof(T)), "cudaMemset"));
  }
  void upload(const std::vector<T>& host) {
    if (host.size() != count_) resize(host.size());
    if (count_)
      throw_if_error(cuda_status(cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), "upload"));
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_)
      throw_if_error(cuda_status(cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost), "download"));
    return host;
  }

  T* data() const { return ptr_; }
  std::size_t size() const { return count_; }
  TensorView<T> view(std::initializer_list<std::int64_t> dims) const {
    return TensorView<T>::contiguous(ptr_, dims, Memory::kDevice);
  }

 private:
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

// Host tensors are plain std::vector; this makes a view of one.
template <class T>
TensorView<T> host_view(std::vector<T>& v, std::initializer_list<std::int64_t> dims) {
  return TensorView<T>::contiguous(v.data(), dims, Memory::kHost);
}
template <class T>
TensorView<const T> host_view(const std::vector<T>& v, std::initializer_list<std::int64_t> dims) {
  return TensorView<const T>::contiguous(v.data(), dims, Memory::kHost);
}

}  // namespace gecko
