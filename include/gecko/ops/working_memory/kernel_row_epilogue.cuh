// The row epilogues of the daq and dak products when those run on cuBLASLt (launch_cublas.cuh):
// the GEMMs leave fp32 accumulators per chunk, and one warp per row applies what the engine's
// kDaq / kDak epilogues do (kernel_gemm_params.cuh), including the row dot products over dk.
//
//   daq   out = q̂ ∘ (x0 - <x0, q̂>)                        (zero for chunks below zero_below)
//   dak   out = κ ∘ (x1 - s + gℓ) + k̂ ∘ (x0 - <x0, k̂>)    x0 = κ(-Y), x1 = V gUᵀ + k̂(-Yᵀ)
#pragma once

#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

enum RowEpiMode : int { kRowDaq = 0, kRowDak = 1 };

struct RowEpiParams {
  int B = 0, H = 0, nb = 0, rows = 0, dk = 0;
  int zero_below = 0;   // daq: chunks below it get zeros
  Mat x0, x1;           // fp32 accumulators [rows, dk] per chunk (x1: dak only)
  Mat f1, f2;           // daq: f1 = q̂; dak: f1 = κ, f2 = k̂ (T)
  Mat v1, v2;           // dak: s and gℓ, [1, dk] per chunk (fp32)
  MatAlt out;           // T
};

// grid: ceil(B * H * nb * rows / 8) CTAs of kThreads; one warp per row; dk <= 256.
template <class T, int MODE>
__global__ void __launch_bounds__(kThreads) row_epilogue_kernel(const __grid_constant__ RowEpiParams p) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  const std::int64_t per_bh = static_cast<std::int64_t>(p.nb) * p.rows;
  if (item >= static_cast<std::int64_t>(p.B) * p.H * per_bh) return;
  const int bh = static_cast<int>(item / per_bh), b = bh / p.H, h = bh - b * p.H;
  const int c = static_cast<int>((item - bh * per_bh) / p.rows), row = static_cast<int>(item % p.rows);
  std::int64_t ldo = 0;
  T* o = mat_at<T>(p.out, b, h, c, ldo) + static_cast<std::int64_t>(row) * ldo;
  if (MODE == kRowDaq && c < p.zero_below) {
    for (int col = 2 * lane; col < p.dk; col += 64) store2<T>(o + col, 0.f, 0.f);
    return;
  }
  const float* x0 = mat_at<float>(p.x0, b, h, c) + static_cast<std::int64_t>(row) * p.x0.ld;
  const T* f = mat_at<T>(MODE == kRowDaq ? p.f1 : p.f2, b, h, c) +
               static_cast<std::int64_t>(row) * (MODE == kRowDaq ? p.f1.ld : p.f2.ld);
  // lane holds column pairs 2 lane + 64 i, i < 4 (dk <= 256)
  float2 xv[4] = {}, fv[4] = {};
  float dot = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int col = 2 * lane + 64 * i;
    if (col < p.dk) {
      xv[i] = *reinterpret_cast<const float2*>(x0 + col);
      fv[i] = load2<T>(f + col);
      dot += xv[i].x * fv[i].x + xv[i].y * fv[i].y;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if constexpr (MODE == kRowDaq) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = 2 * lane + 64 * i;
      if (col < p.dk) store2<T>(o + col, fv[i].x * (xv[i].x - dot), fv[i].y * (xv[i].y - dot));
    }
  } else {
    const float* x1 = mat_at<float>(p.x1, b, h, c) + static_cast<std::int64_t>(row) * p.x1.ld;
    const T* kap = mat_at<T>(p.f1, b, h, c) + static_cast<std::int64_t>(row) * p.f1.ld;
    const float* s = mat_at<float>(p.v1, b, h, c);
    const float* gl = mat_at<float>(p.v2, b, h, c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int col = 2 * lane + 64 * i;
      if (col < p.dk) {
        const float2 a = *reinterpret_cast<const float2*>(x1 + col);
        const float2 kv = load2<T>(kap + col);
        const float h0 = fv[i].x * (xv[i].x - dot), h1 = fv[i].y * (xv[i].y - dot);
        store2<T>(o + col, kv.x * (a.x - s[col] + gl[col]) + h0, kv.y * (a.y - s[col + 1] + gl[col + 1]) + h1);
      }
    }
  }
}

}  // namespace gecko::working_memory::kernels

namespace gecko::working_memory::kernels {

// G = κᵀK̂ as the tensor-core scan reads it: the fp32 product g (dense, as out2's layout) split into
// bf16 hi and lo parts (the engine's kStoreHiLo epilogue). One thread per pair of elements.
// (A template so that the header-only library defines it once per program.)
template <int kUnused = 0>
__global__ void __launch_bounds__(kThreads) split_hilo_kernel(const float* __restrict__ g, __nv_bfloat16* __restrict__ hi,
                                                              __nv_bfloat16* __restrict__ lo, std::int64_t pairs) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float2 v = reinterpret_cast<const float2*>(g)[i];
    __nv_bfloat16 h0, l0, h1, l1;
    split_bf16(v.x, h0, l0);
    split_bf16(v.y, h1, l1);
    reinterpret_cast<std::uint32_t*>(hi)[i] = pack_bf16(h0, h1);
    reinterpret_cast<std::uint32_t*>(lo)[i] = pack_bf16(l0, l1);
  }
}

}  // namespace gecko::working_memory::kernels
