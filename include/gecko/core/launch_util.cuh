// Small host-side helpers shared by the CUDA launchers.
#pragma once

#include <cstddef>
#include <cuda_runtime.h>

#include "gecko/core/cuda_check.hpp"

namespace gecko {

// v rounded up to a multiple of a.
inline constexpr std::size_t align_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// Lets `kernel` use more than the default 48 KB of dynamic shared memory when it needs to.
template <class Kernel>
Status allow_dynamic_smem(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    GECKO_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  return Status::success();
}

}  // namespace gecko
