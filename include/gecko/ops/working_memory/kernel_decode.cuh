// Decoding read of adaptive working memory: a tail call of at most kDecodeRows tokens that absorbs
// nothing (every decode step but the one that completes a chunk) only reads the carried memory,
//   out_r = q̂_r M,   q̂_r = softmax over features of aq_r (zero when the output mask drops r).
// The chunk path would run the feature, statistics and scan kernels and a GEMM for it, the scan
// only to copy the fp32 state into the GEMM's T operand; here one kernel computes q̂ in shared
// memory and streams M once from its fp32 state. q̂ and M are rounded to T exactly as the chunk
// path's operands are, and products accumulate in fp32, so decoding agrees with prefill to
// summation order. When memory_out / log_norm_out are other buffers than memory / log_norm, the
// kernel copies the state there from the values it reads anyway.
#pragma once

#include <cmath>
#include <cstdint>

#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

inline constexpr int kDecodeRows = 4;     // tokens per call on this path
inline constexpr int kDecodeCols = 32;    // value columns per CTA: 8 threads x 4 columns (256 CTAs at 7B)
inline constexpr int kDecodeGroups = kThreads / (kDecodeCols / 4);  // 32 groups of feature rows

struct DecodeParams {
  int B = 0, H = 0, dk = 0, dv = 0, L = 0;
  const void* aq = nullptr;  // [B, L, H, dk]
  std::int64_t aq_sb = 0, aq_sh = 0, aq_st = 0;
  const float* mem = nullptr;  // [B, H, dk, dv]
  std::int64_t mi_sb = 0, mi_sh = 0, mi_ld = 0;
  float* mem_out = nullptr;  // a copy of mem, or null
  std::int64_t mo_sb = 0, mo_sh = 0, mo_ld = 0;
  const float* ln = nullptr;  // [B, H, dk]
  std::int64_t ln_sb = 0, ln_sh = 0;
  float* ln_out = nullptr;  // a copy of ln, or null
  std::int64_t lo_sb = 0, lo_sh = 0;
  void* out = nullptr;  // [B, L, H, dv]
  std::int64_t o_sb = 0, o_sh = 0, o_st = 0;
  Docs docs;
};

// grid (dv / 32, B * H), kThreads threads. dk <= 256 and a multiple of 32; dv a multiple of 64;
// mem (and mem_out) rows 16-byte aligned. kRows = p.L (1 .. kDecodeRows), a compile-time count so
// that no instruction is issued for absent rows.
template <class T, int kRows>
__global__ void __launch_bounds__(kThreads) decode_read_kernel(const __grid_constant__ DecodeParams p) {
  __shared__ float qs[kRows][256];
  __shared__ float part[kDecodeGroups][kRows][kDecodeCols];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int per_lane = p.dk / 32;

  // q̂ rows: warp r takes token r (lane holds features lane + 32 e).
  if (warp < kRows) {
    const T* src = static_cast<const T*>(p.aq) + b * p.aq_sb + h * p.aq_sh + warp * p.aq_st;
    float x[8];
    float m = -INFINITY;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      x[e] = e < per_lane ? to_float(src[lane + 32 * e]) : -INFINITY;
      m = fmaxf(m, x[e]);
    }
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      x[e] = e < per_lane ? expf(x[e] - m) : 0.f;
      s += x[e];
    }
    std::int64_t id;
    const bool masked = p.docs.last(b, -2, id) && p.docs.token(b, warp) != id;
    const float inv = masked ? 0.f : 1.f / warp_sum(s);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < per_lane) qs[warp][lane + 32 * e] = to_float(from_float<T>(x[e] * inv));  // q̂ as stored in T
  }
  __syncthreads();

  // Stream M: thread (g, q) takes columns c0 + 4q .. +3 of feature rows g, g + kDecodeGroups, ...
  const int g = tid / (kDecodeCols / 4), q = tid - g * (kDecodeCols / 4);
  const int c = blockIdx.x * kDecodeCols + 4 * q;
  const float* mrow = p.mem + b * p.mi_sb + h * p.mi_sh + c;
  float acc[kRows][4] = {};
  constexpr int kUnroll = 256 / kDecodeGroups;  // every row of a dk = 256 memory in flight
#pragma unroll
  for (int i0 = 0; i0 < 256; i0 += kDecodeGroups * kUnroll) {
    float4 mv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + g + u * kDecodeGroups;
      mv[u] = i < p.dk ? __ldg(reinterpret_cast<const float4*>(mrow + i * p.mi_ld)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + g + u * kDecodeGroups;
      if (i >= p.dk) continue;
      if (p.mem_out)
        *reinterpret_cast<float4*>(p.mem_out + b * p.mo_sb + h * p.mo_sh + i * p.mo_ld + c) = mv[u];
      // M as the chunk path's T operand holds it.
      const float m0 = to_float(from_float<T>(mv[u].x)), m1 = to_float(from_float<T>(mv[u].y));
      const float m2 = to_float(from_float<T>(mv[u].z)), m3 = to_float(from_float<T>(mv[u].w));
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float w = qs[r][i];
        acc[r][0] = fmaf(w, m0, acc[r][0]);
        acc[r][1] = fmaf(w, m1, acc[r][1]);
        acc[r][2] = fmaf(w, m2, acc[r][2]);
        acc[r][3] = fmaf(w, m3, acc[r][3]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int e = 0; e < 4; ++e) part[g][r][4 * q + e] = acc[r][e];
  __syncthreads();

  // Sum the groups in order: thread (r, column).
  if (tid < kRows * kDecodeCols) {
    const int r = tid / kDecodeCols, cc = tid - r * kDecodeCols;
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kDecodeGroups; ++k) sum += part[k][r][cc];
    T* dst = static_cast<T*>(p.out) + b * p.o_sb + r * p.o_st + h * p.o_sh + blockIdx.x * kDecodeCols + cc;
    *dst = from_float<T>(sum);
  }
  if (p.ln_out && blockIdx.x == 0)
    for (int i = tid; i < p.dk; i += blockDim.x) p.ln_out[b * p.lo_sb + h * p.lo_sh + i] = p.ln[b * p.ln_sb + h * p.ln_sh + i];
}

}  // namespace gecko::working_memory::kernels
