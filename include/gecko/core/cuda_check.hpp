// Converting CUDA runtime and cuBLAS results into gecko::Status.
#pragma once

#include <cuda_runtime_api.h>
#include <string>

#include "gecko/core/status.hpp"

namespace gecko {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::success();
  return Status(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                            cudaGetErrorString(err) + ")");
}

// Checks the launch of the kernel just issued (configuration errors surface here).
inline Status last_launch_status(const char* kernel_name) { return cuda_status(cudaGetLastError(), kernel_name); }

}  // namespace gecko

#define GECKO_CUDA_RETURN(expr) GECKO_RETURN_IF_ERROR(::gecko::cuda_status((expr), #expr))
