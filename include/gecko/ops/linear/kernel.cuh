// Device functors of the Linear layer's fused element-wise passes (run by core/elementwise.cuh):
// the SiLU after the GEMM, and the SiLU backward, whose output's column sums are the bias gradient.
#pragma once

#include "gecko/core/elementwise.cuh"

namespace gecko::linear::kernels {

// y = silu(pre)
struct SiluForward {
  __device__ __forceinline__ void operator()(const float (&in)[1], float (&out)[1]) const {
    out[0] = elementwise::silu(in[0]);
  }
};

// dpre = dy * silu'(pre); in = {dy, pre}
struct SiluBackward {
  __device__ __forceinline__ void operator()(const float (&in)[2], float (&out)[1]) const {
    out[0] = in[0] * elementwise::silu_grad(in[1]);
  }
};

// Identity, for the bias gradient without SiLU (its output is not stored, only summed).
struct Pass {
  __device__ __forceinline__ void operator()(const float (&in)[1], float (&out)[1]) const { out[0] = in[0]; }
};

}  // namespace gecko::linear::kernels
