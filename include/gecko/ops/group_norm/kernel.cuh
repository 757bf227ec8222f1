// CUDA kernels for group RMSNorm / LayerNorm (device code only; launch.cuh picks and launches).
//
// Fast path: one CTA per row (forward) or a persistent grid over rows (backward). Each thread
// holds ITEMS 16-byte words of the row in registers, so x is read once; group statistics are
// segmented reductions over the threads that hold a group. The backward also accumulates its
// share of dweight/dbias in registers and writes one partial row per CTA, which a second kernel
// sums in a fixed order (deterministic, no atomics).
// Generic path (any group size or alignment): one warp per (row, group), looping over channels.
#pragma once

#include <cstdint>

#include "gecko/core/vector_io.cuh"
#include "gecko/core/warp_reduce.cuh"

namespace gecko::group_norm::kernels {

struct RowParams {
  std::int64_t rows;
  int channels;
  int groups;
  int group_size;
  int lanes_per_group;  // fast path: threads holding one group within a sweep
  std::int64_t x_stride, y_stride, dy_stride, dx_stride, dadd_stride;
  float eps;
  const void* dadd;  // backward: T rows added to dx, or null
};

template <class T, int VEC>
__device__ __forceinline__ void load_scale(const T* w, int col, float (&out)[VEC]) {
  if (w) {
    load_as_float<T, VEC>(w + col, out);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] += 1.f;
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = 1.f;
  }
}

// Loads the ITEMS words of one row that this thread owns.
template <class T, int ITEMS>
__device__ __forceinline__ void load_row(const T* row, float (&v)[ITEMS][kVec16<T>]) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) load_as_float<T, kVec16<T>>(row + (i * blockDim.x + threadIdx.x) * kVec16<T>, v[i]);
}

// One CTA per row. (A persistent grid with the next row prefetched was measured slower on an H100:
// the doubled registers cost more occupancy than the prefetch hid.)
template <class T, int ITEMS, bool kLayer>
__global__ void __launch_bounds__(1024) forward_rows_kernel(RowParams p, const T* __restrict__ x,
                                                            const T* __restrict__ w, const T* __restrict__ b,
                                                            T* __restrict__ y) {
  constexpr int VEC = kVec16<T>;
  __shared__ float scratch[ITEMS * 32];
  const std::int64_t row = blockIdx.x;
  const T* xr = x + row * p.x_stride;
  T* yr = y + row * p.y_stride;
  const float inv_k = 1.f / p.group_size;

  float v[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) load_as_float<T, VEC>(xr + (i * blockDim.x + threadIdx.x) * VEC, v[i]);

  float mean[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    float s = 0.f;
    if (kLayer) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += v[i][j];
    }
    mean[i] = s;
  }
  if (kLayer) {
    segmented_allreduce_sum<ITEMS>(mean, p.lanes_per_group, scratch);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) mean[i] *= inv_k;
  }
  float rstd[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = v[i][j] - mean[i];
      s += d * d;
    }
    rstd[i] = s;
  }
  segmented_allreduce_sum<ITEMS>(rstd, p.lanes_per_group, scratch);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) rstd[i] = rsqrtf(rstd[i] * inv_k + p.eps);

#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int col = (i * blockDim.x + threadIdx.x) * VEC;
    float scale[VEC], out[VEC];
    load_scale<T, VEC>(w, col, scale);
    float shift[VEC] = {};
    if (b) load_as_float<T, VEC>(b + col, shift);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = (v[i][j] - mean[i]) * rstd[i] * scale[j] + shift[j];
    store_from_float<T, VEC>(yr + col, out);
  }
}

// Persistent over rows: CTA c handles rows c, c + gridDim.x, ... and writes its
// dweight/dbias partial sums to partial[c * channels + col] and partial[(gridDim.x + c) * channels + col].
// Two reductions per row for LayerNorm ([sum x, sum g], then [sum xc^2, sum g xc]) and one for
// RMSNorm ([sum x^2, sum g x]), where g = dy * scale and xc = x - mean.
template <class T, int ITEMS, bool kLayer>
__global__ void __launch_bounds__(1024) backward_rows_kernel(RowParams p, const T* __restrict__ x,
                                                             const T* __restrict__ w, const T* __restrict__ dy,
                                                             T* __restrict__ dx, float* __restrict__ partial) {
  constexpr int VEC = kVec16<T>;
  __shared__ float scratch[2 * ITEMS * 32];
  const float inv_k = 1.f / p.group_size;

  float scale[ITEMS][VEC], acc_w[ITEMS][VEC], acc_b[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    load_scale<T, VEC>(w, (i * blockDim.x + threadIdx.x) * VEC, scale[i]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc_w[i][j] = acc_b[i][j] = 0.f;
  }
  for (std::int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float xv[ITEMS][VEC], gv[ITEMS][VEC];
    load_row<T, ITEMS>(x + row * p.x_stride, xv);
    load_row<T, ITEMS>(dy + row * p.dy_stride, gv);
    float mean[ITEMS], sums[2 * ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) mean[i] = 0.f;
    if (kLayer) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        float sx = 0.f, sg = 0.f;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          sx += xv[i][j];
          sg += gv[i][j] * scale[i][j];
        }
        sums[i] = sx;
        sums[ITEMS + i] = sg;
      }
      segmented_allreduce_sum<2 * ITEMS>(sums, p.lanes_per_group, scratch);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) mean[i] = sums[i] * inv_k;
    }
    float mean_g[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) mean_g[i] = kLayer ? sums[ITEMS + i] * inv_k : 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      float sq = 0.f, sgx = 0.f;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xc = xv[i][j] - mean[i];
        sq += xc * xc;
        sgx += gv[i][j] * scale[i][j] * xc;
      }
      sums[i] = sq;
      sums[ITEMS + i] = sgx;
    }
    segmented_allreduce_sum<2 * ITEMS>(sums, p.lanes_per_group, scratch);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const float rstd = rsqrtf(sums[i] * inv_k + p.eps);
      const float mean_gx = sums[ITEMS + i] * inv_k;
      const float r3 = rstd * rstd * rstd;
      float out[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float xc = xv[i][j] - mean[i];
        out[j] = rstd * (gv[i][j] * scale[i][j] - mean_g[i]) - r3 * mean_gx * xc;
        acc_w[i][j] += gv[i][j] * xc * rstd;
        acc_b[i][j] += gv[i][j];
      }
      if (p.dadd) {
        float add[VEC];
        load_as_float<T, VEC>(static_cast<const T*>(p.dadd) + row * p.dadd_stride + (i * blockDim.x + threadIdx.x) * VEC,
                              add);
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[j] += add[j];
      }
      store_from_float<T, VEC>(dx + row * p.dx_stride + (i * blockDim.x + threadIdx.x) * VEC, out);
    }
  }
  if (!partial) return;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int col = (i * blockDim.x + threadIdx.x) * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      partial[static_cast<std::int64_t>(blockIdx.x) * p.channels + col + j] = acc_w[i][j];
      partial[static_cast<std::int64_t>(gridDim.x + blockIdx.x) * p.channels + col + j] = acc_b[i][j];
    }
  }
}

// out[col] = sum over parts of partial[part * channels + col], in part order.
template <int kUnused = 0>  // a template: header-defined kernels must not clash at link time
__global__ void sum_partials_kernel(const float* __restrict__ partial, int parts, int channels,
                                    float* __restrict__ out) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= channels || !out) return;
  float s = 0.f;
  for (int k = 0; k < parts; ++k) s += partial[static_cast<std::int64_t>(k) * channels + col];
  out[col] = s;
}

// ---- generic path -----------------------------------------------------------------------------

template <class T, bool kLayer>
__device__ __forceinline__ void warp_group_stats(const T* xg, int k, float eps, float& mean, float& rstd) {
  const int lane = threadIdx.x & 31;
  float s = 0.f;
  if (kLayer) {
    for (int c = lane; c < k; c += 32) s += to_float(xg[c]);
    s = warp_allreduce_sum(s);
  }
  mean = s / k;
  float sq = 0.f;
  for (int c = lane; c < k; c += 32) {
    const float d = to_float(xg[c]) - mean;
    sq += d * d;
  }
  rstd = rsqrtf(warp_allreduce_sum(sq) / k + eps);
}

template <class T, bool kLayer>
__global__ void forward_generic_kernel(RowParams p, const T* __restrict__ x, const T* __restrict__ w,
                                       const T* __restrict__ b, T* __restrict__ y) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (item >= p.rows * p.groups) return;
  const std::int64_t row = item / p.groups;
  const int c0 = static_cast<int>(item % p.groups) * p.group_size;
  const T* xg = x + row * p.x_stride + c0;
  float mean, rstd;
  warp_group_stats<T, kLayer>(xg, p.group_size, p.eps, mean, rstd);
  for (int c = threadIdx.x & 31; c < p.group_size; c += 32) {
    float v = (to_float(xg[c]) - mean) * rstd * (w ? to_float(w[c0 + c]) + 1.f : 1.f);
    if (b) v += to_float(b[c0 + c]);
    y[row * p.y_stride + c0 + c] = from_float<T>(v);
  }
}

// Writes dx and saves (mean, rstd) per (row, group) into stats for the column kernel.
template <class T, bool kLayer>
__global__ void backward_generic_kernel(RowParams p, const T* __restrict__ x, const T* __restrict__ w,
                                        const T* __restrict__ dy, T* __restrict__ dx, float2* __restrict__ stats) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (item >= p.rows * p.groups) return;
  const int lane = threadIdx.x & 31;
  const std::int64_t row = item / p.groups;
  const int c0 = static_cast<int>(item % p.groups) * p.group_size;
  const T* xg = x + row * p.x_stride + c0;
  const T* gg = dy + row * p.dy_stride + c0;
  float mean, rstd;
  warp_group_stats<T, kLayer>(xg, p.group_size, p.eps, mean, rstd);
  float sdxc = 0.f, sdy = 0.f;
  for (int c = lane; c < p.group_size; c += 32) {
    const float g = to_float(gg[c]) * (w ? to_float(w[c0 + c]) + 1.f : 1.f);
    sdxc += g * (to_float(xg[c]) - mean);
    sdy += g;
  }
  const float mean_dxc = warp_allreduce_sum(sdxc) / p.group_size;
  const float mean_dyw = kLayer ? warp_allreduce_sum(sdy) / p.group_size : 0.f;
  const float r3 = rstd * rstd * rstd;
  for (int c = lane; c < p.group_size; c += 32) {
    const float g = to_float(gg[c]) * (w ? to_float(w[c0 + c]) + 1.f : 1.f);
    const float xc = to_float(xg[c]) - mean;
    const float add = p.dadd ? to_float(static_cast<const T*>(p.dadd)[row * p.dadd_stride + c0 + c]) : 0.f;
    dx[row * p.dx_stride + c0 + c] = from_float<T>(rstd * (g - mean_dyw) - r3 * mean_dxc * xc + add);
  }
  if (stats && lane == 0) stats[item] = make_float2(mean, rstd);
}

// dweight[col] = sum_rows dy * (x - mean) * rstd, dbias[col] = sum_rows dy; one thread per column.
template <class T>
__global__ void param_grad_columns_kernel(RowParams p, const T* __restrict__ x, const T* __restrict__ dy,
                                          const float2* __restrict__ stats, float* __restrict__ dweight,
                                          float* __restrict__ dbias) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= p.channels) return;
  const int g = col / p.group_size;
  float sw = 0.f, sb = 0.f;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float2 st = stats[r * p.groups + g];
    const float d = to_float(dy[r * p.dy_stride + col]);
    sw += d * (to_float(x[r * p.x_stride + col]) - st.x) * st.y;
    sb += d;
  }
  if (dweight) dweight[col] = sw;
  if (dbias) dbias[col] = sb;
}

}  // namespace gecko::group_norm::kernels
