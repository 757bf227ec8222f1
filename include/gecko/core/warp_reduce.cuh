// Warp- and block-level sums with a fixed combination order, so results are bitwise
// reproducible run to run.
#pragma once

namespace gecko {

__device__ __forceinline__ float warp_allreduce_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sums N values per thread over "segments" of `seg_lanes` consecutive threads of the block,
// where seg_lanes is a power of two <= 32 or a multiple of 32, and every thread gets the sum of
// its own segment. `scratch` holds N * 32 floats. All threads of the block must call it.
template <int N>
__device__ __forceinline__ void segmented_allreduce_sum(float (&v)[N], int seg_lanes, float* scratch) {
  if (seg_lanes <= 32) {
    for (int off = seg_lanes >> 1; off > 0; off >>= 1) {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_allreduce_sum(v[i]);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // the previous call's readers are done with scratch
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[i * 32 + warp] = v[i];
  }
  __syncthreads();
  const int warps_per_seg = seg_lanes >> 5;
  const int first = (warp / warps_per_seg) * warps_per_seg;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float s = 0.f;
    for (int w = first; w < first + warps_per_seg; ++w) s += scratch[i * 32 + w];
    v[i] = s;
  }
}

}  // namespace gecko
