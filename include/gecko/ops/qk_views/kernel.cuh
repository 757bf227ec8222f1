// CUDA kernels of the MEGA query/key views (device code only; launch.cuh plans and launches).
//
// Grid (heads, row splits), 8 warps per CTA. Each warp owns one (row, head) at a time: lane l holds
// the 16-byte words l, l + 32, ... (ITEMS of them) of the head's dz channels, so z is read once,
// the head's RMS statistic is one warp reduction, and the four views are written from registers.
// The backward keeps its share of dgamma/dbeta (8 x ITEMS x VEC values per lane) in registers over
// all the rows of its split; at the end the CTA's 8 warps are summed in warp order through shared
// memory into one partial row per split, and a second kernel sums the splits in order
// (deterministic, no atomics).
#pragma once

#include <cstdint>

#include "gecko/core/vector_io.cuh"
#include "gecko/core/warp_reduce.cuh"

namespace gecko::qk_views::kernels {

inline constexpr int kWarps = 8;
inline constexpr int kThreads = kWarps * 32;
inline constexpr int kViews = 4;

struct Params {
  std::int64_t rows = 0;
  std::int64_t rows_per_split = 0;
  int channels = 0;   // Z
  int head_dim = 0;   // dz
  int head_words = 0;  // dz / VEC
  std::int64_t z_stride = 0, dz_stride = 0;
  std::int64_t view_stride[kViews] = {};
  float eps = 0.f;
  float inv_dz = 0.f;
  float inv_sqrt_dz = 0.f;
};

template <class T, int VEC, int ITEMS>
__device__ __forceinline__ float load_head(const T* row, int col0, int head_words, int lane, float (&v)[ITEMS][VEC]) {
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int w = j * 32 + lane;
    if (w < head_words) {
      load_as_float<T, VEC>(row + col0 + w * VEC, v[j]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[j][e] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) ss += v[j][e] * v[j][e];
  }
  return ss;
}

// Writes the four views of one (row, head) from its values v and statistic rstd.
template <class T, int VEC, int ITEMS>
__device__ __forceinline__ void store_views(const Params& p, T* const (&out)[kViews], std::int64_t r, int col0, int lane,
                                            const float (&v)[ITEMS][VEC], float rstd, const T* __restrict__ gamma,
                                            const T* __restrict__ beta) {
#pragma unroll
  for (int i = 0; i < kViews; ++i) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int w = j * 32 + lane;
      if (w >= p.head_words) continue;
      const int col = col0 + w * VEC;
      float g[VEC], b[VEC], o[VEC];
      load_as_float<T, VEC>(gamma + i * p.channels + col, g);
      load_as_float<T, VEC>(beta + i * p.channels + col, b);
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = (v[j][e] * rstd) * ((g[e] + 1.f) * p.inv_sqrt_dz) + b[e];
      store_from_float<T, VEC>(out[i] + r * p.view_stride[i] + col, o);
    }
  }
}

// Two rows per warp iteration (rows r and r + kWarps), so two loads per lane are in flight.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kThreads, 4) forward_kernel(Params p, const T* __restrict__ z, const T* __restrict__ gamma,
                                                           const T* __restrict__ beta, T* __restrict__ q, T* __restrict__ k,
                                                           T* __restrict__ aq, T* __restrict__ ak) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col0 = blockIdx.x * p.head_dim;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * p.rows_per_split;
  const std::int64_t r1 = r0 + p.rows_per_split < p.rows ? r0 + p.rows_per_split : p.rows;
  T* const out[kViews] = {q, k, aq, ak};
  for (std::int64_t ra = r0 + warp; ra < r1; ra += 2 * kWarps) {
    const std::int64_t rb = ra + kWarps;
    const bool second = rb < r1;  // uniform over the warp
    float va[ITEMS][VEC], vb[ITEMS][VEC];
    float ssa = load_head<T, VEC, ITEMS>(z + ra * p.z_stride, col0, p.head_words, lane, va);
    float ssb = 0.f;
    if (second) ssb = load_head<T, VEC, ITEMS>(z + rb * p.z_stride, col0, p.head_words, lane, vb);
    ssa = warp_allreduce_sum(ssa);
    ssb = warp_allreduce_sum(ssb);
    store_views<T, VEC, ITEMS>(p, out, ra, col0, lane, va, rsqrtf(ssa * p.inv_dz + p.eps), gamma, beta);
    if (second) store_views<T, VEC, ITEMS>(p, out, rb, col0, lane, vb, rsqrtf(ssb * p.inv_dz + p.eps), gamma, beta);
  }
}

// partial[(split * 8 + a) * Z + col]: a = 0..3 dgamma of view a, 4..7 dbeta of view a - 4.
// Dynamic shared memory: kWarps * head_dim floats.
template <class T, int VEC, int ITEMS>
__global__ void __launch_bounds__(kThreads, 2)
    backward_kernel(Params p, const T* __restrict__ z, const T* __restrict__ gamma, const T* __restrict__ dq,
                    const T* __restrict__ dk, const T* __restrict__ daq, const T* __restrict__ dak, T* __restrict__ dz,
                    float* __restrict__ partial) {
  extern __shared__ float red[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col0 = blockIdx.x * p.head_dim;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * p.rows_per_split;
  const std::int64_t r1 = r0 + p.rows_per_split < p.rows ? r0 + p.rows_per_split : p.rows;
  const T* grads[kViews] = {dq, dk, daq, dak};
  float acc[2 * kViews][ITEMS][VEC];
#pragma unroll
  for (int a = 0; a < 2 * kViews; ++a) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[a][j][e] = 0.f;
    }
  }
  for (std::int64_t r = r0 + warp; r < r1; r += kWarps) {
    float zn[ITEMS][VEC], dzn[ITEMS][VEC];
    const float ss = warp_allreduce_sum(load_head<T, VEC, ITEMS>(z + r * p.z_stride, col0, p.head_words, lane, zn));
    const float rstd = rsqrtf(ss * p.inv_dz + p.eps);
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        zn[j][e] *= rstd;
        dzn[j][e] = 0.f;
      }
    }
#pragma unroll
    for (int i = 0; i < kViews; ++i) {
#pragma unroll
      for (int j = 0; j < ITEMS; ++j) {
        const int w = j * 32 + lane;
        if (w >= p.head_words) continue;
        const int col = col0 + w * VEC;
        float d[VEC], g[VEC];
        load_as_float<T, VEC>(grads[i] + r * p.view_stride[i] + col, d);
        load_as_float<T, VEC>(gamma + i * p.channels + col, g);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          dzn[j][e] += d[e] * ((g[e] + 1.f) * p.inv_sqrt_dz);
          acc[i][j][e] += d[e] * zn[j][e];
          acc[kViews + i][j][e] += d[e];
        }
      }
    }
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) dot += dzn[j][e] * zn[j][e];
    }
    const float mean = warp_allreduce_sum(dot) * p.inv_dz;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int w = j * 32 + lane;
      if (w >= p.head_words) continue;
      float o[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) o[e] = rstd * (dzn[j][e] - zn[j][e] * mean);
      store_from_float<T, VEC>(dz + r * p.dz_stride + col0 + w * VEC, o);
    }
  }
  if (!partial) return;
  // Sum the 8 warps' accumulators in warp order, one of the 8 arrays at a time (unrolled, so acc
  // stays in registers).
#pragma unroll
  for (int a = 0; a < 2 * kViews; ++a) {
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const int w = j * 32 + lane;
      if (w >= p.head_words) continue;
#pragma unroll
      for (int e = 0; e < VEC; ++e) red[warp * p.head_dim + w * VEC + e] = acc[a][j][e];
    }
    __syncthreads();
    const float scale = a < kViews ? p.inv_sqrt_dz : 1.f;
    float* dst = partial + (static_cast<std::int64_t>(blockIdx.y) * 2 * kViews + a) * p.channels + col0;
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w * p.head_dim + c];
      dst[c] = s * scale;
    }
    __syncthreads();
  }
}

// dgamma[a * Z + c] (a < 4) / dbeta[(a - 4) * Z + c] = (accumulate ? old : 0) + sum_s partial[(s * 8 + a) * Z + c].
// (A template only so that the header can be included by several translation units.)
template <int kUnused = 0>
__global__ void sum_partials_kernel(const float* __restrict__ partial, int splits, int channels, bool accumulate,
                                    float* __restrict__ dgamma, float* __restrict__ dbeta) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(2 * kViews) * channels) return;
  const int a = static_cast<int>(idx / channels), c = static_cast<int>(idx % channels);
  float s = 0.f;
  for (int k = 0; k < splits; ++k) s += partial[(static_cast<std::int64_t>(k) * 2 * kViews + a) * channels + c];
  float* dst = a < kViews ? dgamma + a * channels + c : dbeta + (a - kViews) * channels + c;
  *dst = accumulate ? *dst + s : s;
}

}  // namespace gecko::qk_views::kernels
