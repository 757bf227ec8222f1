// Parameters and gradients of the GPU layers on the device, addressed by the authors' names.
//
// DeviceParameters<T> uploads a host ParameterSet (layers/parameters.hpp): the CEMA parameters
// (names containing "cema.") in fp32, as the authors compute the coefficients, everything else in
// T. DeviceGradients holds one fp32 tensor per parameter. Both allocate device memory when the
// caller asks them to (upload / allocate) and free it on destruction: they are the owning
// convenience around the layer entry points, which themselves never allocate.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/core/cuda_check.hpp"
#include "gecko/layers/parameters.hpp"

namespace gecko::layers::cuda {

inline bool is_fp32_parameter(const std::string& name) { return name.find("cema.") != std::string::npos; }

namespace detail {

struct Entry {
  std::size_t offset = 0;
  std::vector<std::int64_t> shape;
  bool fp32 = false;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

template <class V>
TensorView<V> view_of(char* base, const Entry& e) {
  TensorView<V> v;
  v.data = reinterpret_cast<V*>(base + e.offset);
  v.rank = static_cast<int>(e.shape.size());
  v.memory = Memory::kDevice;
  std::int64_t s = 1;
  for (int k = v.rank - 1; k >= 0; --k) {
    v.shape[k] = e.shape[k];
    v.strides[k] = s;
    s *= e.shape[k];
  }
  return v;
}

}  // namespace detail

template <class T>
class DeviceParameters {
 public:
  // Copies every tensor of `host` to the device (allocating once).
  Status upload(const ParameterSet& host, cudaStream_t stream = nullptr) {
    entries_.clear();
    std::size_t total = 0;
    for (const auto& name : host.names()) {
      detail::Entry e;
      e.shape = host.find(name)->shape;
      e.fp32 = is_fp32_parameter(name);
      e.offset = total;
      total = (total + static_cast<std::size_t>(e.numel()) * (e.fp32 ? 4 : sizeof(T)) + 255) / 256 * 256;
      entries_[name] = e;
    }
    try {
      storage_.resize(total);
    } catch (const Error& err) {
      return Status(StatusCode::kCudaError, err.what());
    }
    std::vector<char> staging(total);
    for (const auto& name : host.names()) {
      const auto& e = entries_[name];
      const auto& src = host.find(name)->data;
      for (std::size_t i = 0; i < src.size(); ++i) {
        if (e.fp32)
          reinterpret_cast<float*>(staging.data() + e.offset)[i] = static_cast<float>(src[i]);
        else
          reinterpret_cast<T*>(staging.data() + e.offset)[i] = from_double<T>(src[i]);
      }
    }
    GECKO_CUDA_RETURN(cudaMemcpyAsync(storage_.data(), staging.data(), total, cudaMemcpyHostToDevice, stream));
    return cuda_status(cudaStreamSynchronize(stream), "parameter upload");
  }

  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  // The tensor `name` in T (empty view if absent or stored in fp32).
  TensorView<const T> t(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second.fp32) return {};
    return detail::view_of<const T>(storage_.data(), it->second);
  }
  // The fp32 tensor `name` (the CEMA parameters).
  TensorView<const float> f(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end() || !it->second.fp32) return {};
    return detail::view_of<const float>(storage_.data(), it->second);
  }

 private:
  std::map<std::string, detail::Entry> entries_;
  DeviceBuffer<char> storage_;
};

class DeviceGradients {
 public:
  Status allocate(const ParameterSet& like) {
    entries_.clear();
    names_ = like.names();
    std::size_t total = 0;
    for (const auto& name : names_) {
      detail::Entry e;
      e.shape = like.find(name)->shape;
      e.fp32 = true;
      e.offset = total;
      total = (total + static_cast<std::size_t>(e.numel()) * 4 + 255) / 256 * 256;
      entries_[name] = e;
    }
    try {
      storage_.resize(total);
      storage_.zero();
    } catch (const Error& err) {
      return Status(StatusCode::kCudaError, err.what());
    }
    return Status::success();
  }
  TensorView<float> g(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) return {};
    return detail::view_of<float>(storage_.data(), it->second);
  }
  // Copies every gradient into `host` (same names), synchronizing the stream.
  Status download(ParameterSet& host, cudaStream_t stream = nullptr) const {
    GECKO_CUDA_RETURN(cudaStreamSynchronize(stream));
    std::vector<float> buf;
    for (const auto& name : names_) {
      auto* h = host.find(name);
      if (!h) return invalid_argument("download: the host set has no tensor '" + name + "'");
      const auto& e = entries_.at(name);
      buf.resize(static_cast<std::size_t>(e.numel()));
      GECKO_CUDA_RETURN(cudaMemcpy(buf.data(), storage_.data() + e.offset, buf.size() * 4, cudaMemcpyDeviceToHost));
      h->data.assign(buf.begin(), buf.end());
    }
    return Status::success();
  }

 private:
  std::vector<std::string> names_;
  std::map<std::string, detail::Entry> entries_;
  DeviceBuffer<char> storage_;
};

}  // namespace gecko::layers::cuda
