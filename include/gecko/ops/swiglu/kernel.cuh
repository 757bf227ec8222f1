// Device functors of the SwiGLU gate (run by core/elementwise.cuh in one pass).
#pragma once

#include "gecko/core/elementwise.cuh"

namespace gecko::swiglu::kernels {

// in = {a, b}, out = {hidden}
struct Forward {
  __device__ __forceinline__ void operator()(const float (&in)[2], float (&out)[1]) const {
    out[0] = elementwise::silu(in[0]) * in[1];
  }
};

// in = {dhidden, a, b}, out = {da, db}
struct Backward {
  __device__ __forceinline__ void operator()(const float (&in)[3], float (&out)[2]) const {
    const float g = in[0], a = in[1], b = in[2];
    const float s = elementwise::sigmoid(a);
    out[0] = g * b * (s * (1.f + a * (1.f - s)));
    out[1] = g * (a * s);
  }
};

}  // namespace gecko::swiglu::kernels
