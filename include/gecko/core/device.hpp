// Cached device properties: kernels choose grids from the SM count and shared-memory limits,
// and querying cudaGetDeviceProperties on every launch costs microseconds.
#pragma once

#include <array>
#include <cuda_runtime_api.h>
#include <mutex>

#include "gecko/core/cuda_check.hpp"

namespace gecko {

struct DeviceInfo {
  int device = -1;
  int sm_count = 0;
  int major = 0;
  int minor = 0;
  int max_threads_per_sm = 0;
  std::size_t smem_per_block_optin = 0;
  std::size_t l2_bytes = 0;
  char name[256] = {};
};

inline constexpr int kMaxCachedDevices = 64;

// Properties of `device`, queried once per process and cached (thread-safe).
inline Status device_info(int device, const DeviceInfo** out) {
  static std::array<DeviceInfo, kMaxCachedDevices> cache;
  static std::array<std::once_flag, kMaxCachedDevices> once;
  static std::array<cudaError_t, kMaxCachedDevices> errors;
  if (device < 0 || device >= kMaxCachedDevices) return invalid_argument("device index out of range");
  std::call_once(once[device], [device] {
    cudaDeviceProp p{};
    errors[device] = cudaGetDeviceProperties(&p, device);
    if (errors[device] != cudaSuccess) return;
    DeviceInfo& d = cache[device];
    d.device = device;
    d.sm_count = p.multiProcessorCount;
    d.major = p.major;
    d.minor = p.minor;
    d.max_threads_per_sm = p.maxThreadsPerMultiProcessor;
    d.smem_per_block_optin = p.sharedMemPerBlockOptin;
    d.l2_bytes = static_cast<std::size_t>(p.l2CacheSize);
    for (int i = 0; i < 255 && p.name[i]; ++i) d.name[i] = p.name[i];
  });
  GECKO_RETURN_IF_ERROR(cuda_status(errors[device], "cudaGetDeviceProperties"));
  *out = &cache[device];
  return Status::success();
}

// Properties of the calling thread's current device.
inline Status current_device_info(const DeviceInfo** out) {
  int dev = 0;
  GECKO_CUDA_RETURN(cudaGetDevice(&dev));
  return device_info(dev, out);
}

// True when at least one CUDA device can be used by this process.
inline bool cuda_device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace gecko
