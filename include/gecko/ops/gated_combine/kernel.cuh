// Device functors of the MEGA gated combination (run by core/elementwise.cuh in one pass).
#pragma once

#include "gecko/core/elementwise.cuh"

namespace gecko::gated_combine::kernels {

// in = {sca, r[, awm]}, out = {attn}
template <bool kSilu, bool kAwm>
struct Forward {
  __device__ __forceinline__ void operator()(const float (&in)[kAwm ? 3 : 2], float (&out)[1]) const {
    const float r = kSilu ? elementwise::silu(in[1]) : in[1];
    float v = in[0] * r;
    if constexpr (kAwm) v += in[2];
    out[0] = v;
  }
};

// in = {dattn, sca, r}, out = {dsca, dr, dawm}
template <bool kSilu>
struct Backward {
  __device__ __forceinline__ void operator()(const float (&in)[3], float (&out)[3]) const {
    const float g = in[0], sca = in[1], rin = in[2];
    if constexpr (kSilu) {
      const float s = elementwise::sigmoid(rin);
      out[0] = g * (rin * s);
      out[1] = g * sca * (s * (1.f + rin * (1.f - s)));
    } else {
      out[0] = g * rin;
      out[1] = g * sca;
    }
    out[2] = g;
  }
};

}  // namespace gecko::gated_combine::kernels
