// The Linear forward for a few rows (decoding: M <= kGemvMaxRows): y = ep(x W^T + bias) [+ residual]
// as one streaming pass over the weight, with the whole epilogue (bias, SiLU with its
// pre-activation, residual) fused.
//
// At M = 1 a GEMM is a matrix-vector product bound by reading W once; cuBLASLt's kernels for it
// reach ~2.3 TB/s and need a separate SiLU pass. Here kSplit warps own one output column n (one
// contiguous row of W): each lane issues kUnroll 16-byte weight loads before using any of them
// (the bytes in flight that hide DRAM latency), marked no-allocate in L1 so that the x rows,
// which every warp rereads, stay cached there. fp32 accumulation, a fixed reduction order:
// deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gecko/core/elementwise.cuh"
#include "gecko/core/vector_io.cuh"

namespace gecko::linear::kernels {

constexpr int kGemvMaxRows = 4;    // rows of x handled by the matrix-vector path
constexpr int kGemvWarps = 8;      // warps per CTA
// Measured on an H100 at the 7B MEGA shapes, one row (bench/bench_linear_rows.cu, bench/results
// 2026-11-27_h100_s13_*): 2 loads in flight per lane with all 8 warps of a CTA on one column was
// the fastest of (4, 1), (8, 1), (4, 2), (4, 4), (2, 8), (4, 8) on every shape (2.3-2.4 TB/s on the
// large weights, against 2.1-2.25 for one warp per column and 1.8 for cuBLASLt).
constexpr int kGemvUnroll = 2;     // 16-byte weight loads in flight per lane
constexpr int kGemvSplit = 8;      // warps sharing one output column

// The rows M are the kernel's kRows template argument.
template <class T>
struct GemvParams {
  const T* x = nullptr;      // [M, K], row stride ldx
  const T* w = nullptr;      // [N, K], row stride ldw
  const T* bias = nullptr;   // [N] or null
  const T* residual = nullptr;  // [M, N], row stride ldres, or null; may be y
  T* y = nullptr;            // [M, N], row stride ldy
  T* pre = nullptr;          // [M, N], row stride ldpre, or null (SiLU only)
  std::int64_t N = 0, K = 0, ldx = 0, ldw = 0, ldy = 0, ldpre = 0, ldres = 0;
  bool silu = false;
};

// 16 bytes of weight, read once: bypass L1 so the reused x rows keep it.
__device__ __forceinline__ uint4 load_stream16(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

template <class T>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&out)[kVec16<T>]) {
  const Packed<T, kVec16<T>> pk = *reinterpret_cast<const Packed<T, kVec16<T>>*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec16<T>; ++i) out[i] = to_float(pk.v[i]);
}

// y[r, n] from the finished dot product v = (x_r . W_n) (all of it, in fp32).
template <class T>
__device__ __forceinline__ void gemv_epilogue(const GemvParams<T>& p, int r, std::int64_t n, float v) {
  if (p.bias) v += to_float(p.bias[n]);
  if (p.residual) v += to_float(p.residual[r * p.ldres + n]);
  if (p.silu) {
    const T rounded = from_float<T>(v);
    if (p.pre) p.pre[r * p.ldpre + n] = rounded;
    // SiLU of the pre-activation as stored (what the GEMM path's separate pass reads).
    v = elementwise::silu(to_float(rounded));
  }
  p.y[r * p.ldy + n] = from_float<T>(v);
}

// kSplit warps share one output column (each takes every kSplit-th 16-byte word of the row), so a
// CTA finishes 8 / kSplit columns per step and a weight of few rows still spreads over many CTAs
// (and many CTAs mean the last wave is a small share of the launch). Their partial sums meet in
// shared memory and are added in warp order: deterministic.
// grid: ceil(N / (kGemvWarps / kSplit)) CTAs (a grid-stride loop covers any N), kGemvWarps * 32
// threads. Requires K % kVec16<T> == 0, ldx and ldw multiples of kVec16<T>, x and w 16-byte aligned.
template <class T, int kRows, int kUnroll = kGemvUnroll, int kSplit = 1>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const __grid_constant__ GemvParams<T> p) {
  static_assert(kGemvWarps % kSplit == 0, "kSplit divides the CTA's warps");
  constexpr int V = kVec16<T>;
  constexpr int kSlots = kGemvWarps / kSplit;                // columns per CTA and step
  constexpr int kStride = 32 * V * kSplit;                    // elements between a lane's words
  __shared__ float partial[kSplit > 1 ? kGemvWarps : 1][kRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slot = warp / kSplit, part = warp - slot * kSplit;
  for (std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * kSlots; n0 < p.N;
       n0 += static_cast<std::int64_t>(gridDim.x) * kSlots) {  // uniform per CTA (barriers below)
    const std::int64_t n = n0 + slot;
    float acc[kRows] = {};
    if (n < p.N) {
      const T* w = p.w + n * p.ldw;
      for (std::int64_t k0 = static_cast<std::int64_t>(part * 32 + lane) * V; k0 < p.K;
           k0 += static_cast<std::int64_t>(kStride) * kUnroll) {
        uint4 wv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const std::int64_t k = k0 + static_cast<std::int64_t>(u) * kStride;
          wv[u] = k < p.K ? load_stream16(w + k) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const std::int64_t k = k0 + static_cast<std::int64_t>(u) * kStride;
          if (k < p.K) {
            float wf[V];
            unpack16<T>(wv[u], wf);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              float xf[V];
              load_as_float<T, V>(p.x + r * p.ldx + k, xf);
#pragma unroll
              for (int i = 0; i < V; ++i) acc[r] = fmaf(wf[i], xf[i], acc[r]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    }
    if constexpr (kSplit == 1) {
      // Lane r finishes row r (every lane holds every sum after the butterfly).
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (lane == r && n < p.N) gemv_epilogue(p, r, n, acc[r]);
    } else {
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) partial[warp][r] = acc[r];
      }
      __syncthreads();
      if (part == 0 && lane < kRows && n < p.N) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < kSplit; ++j) v += partial[slot * kSplit + j][lane];
        gemv_epilogue(p, lane, n, v);
      }
      __syncthreads();  // partial is rewritten by the next step
    }
  }
}

}  // namespace gecko::linear::kernels
