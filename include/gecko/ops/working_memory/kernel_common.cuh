// Device helpers shared by the adaptive working memory kernels: batched matrix descriptors,
// documents (spec 2.3), fp32 <-> T conversion, and the Ampere-style tensor-core primitives
// (cp.async, ldmatrix, mma.sync m16n8k16) with a 16-byte-chunk XOR swizzle for shared tiles.
#pragma once

#include <cstdint>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gecko/core/mma.cuh"
#include "gecko/core/config.hpp"
#include "gecko/core/dtype.hpp"

namespace gecko::working_memory::kernels {

inline constexpr int kThreads = 256;  // every kernel here runs 8 warps per CTA

// ---- batched matrices -------------------------------------------------------------------------

// A matrix per (batch row b, head h, chunk c): element (r, x) at p + b*sb + h*sh + c*sc + r*ld + x.
struct Mat {
  const void* p = nullptr;
  std::int64_t sb = 0, sh = 0, sc = 0, ld = 0;
};

// A chunk-indexed matrix whose chunk index is c + off; a negative index selects alt, the carried
// chunk (prev_k / prev_v and their gradients), at its index 0.
struct MatAlt {
  Mat m, alt;
  int off = 0;
};

template <class T>
GECKO_HOST_DEVICE __forceinline__ T* mat_at(const Mat& m, int b, int h, std::int64_t c) {
  return const_cast<T*>(static_cast<const T*>(m.p)) + b * m.sb + h * m.sh + c * m.sc;
}

template <class T>
GECKO_HOST_DEVICE __forceinline__ T* mat_at(const MatAlt& m, int b, int h, int c, std::int64_t& ld) {
  const int ci = c + m.off;
  if (ci < 0) {
    ld = m.alt.ld;
    return mat_at<T>(m.alt, b, h, 0);
  }
  ld = m.m.ld;
  return mat_at<T>(m.m, b, h, ci);
}

// ---- documents ----------------------------------------------------------------------------------

// s(p), the doc id of the last token of chunk p (p = -1, -2 from the carried ids), and the doc ids
// of single tokens. Unknown ids (no segments, or no carried state) never mask or reset.
struct Docs {
  const std::int64_t* seg = nullptr;     // [B, L]
  std::int64_t seg_sb = 0, seg_st = 0;
  const std::int64_t* pseg = nullptr;    // [B, P]
  std::int64_t pseg_sb = 0, pseg_st = 0;
  const std::int64_t* pcount = nullptr;  // [B]
  std::int64_t pcount_s = 0;
  std::int64_t chunk = 0;
  bool on = false;         // segment_idx given
  bool has_state = false;  // memory given (then the carried ids exist when on)

  GECKO_HOST_DEVICE bool last(int b, std::int64_t p, std::int64_t& id) const {
    if (!on) return false;
    if (p >= 0) {
      id = seg[b * seg_sb + (p * chunk + chunk - 1) * seg_st];
      return true;
    }
    if (!has_state) return false;
    id = p == -1 ? pseg[b * pseg_sb + (chunk - 1) * pseg_st] : pcount[b * pcount_s];
    return true;
  }
  // Doc of token t of the call, of carried token t.
  GECKO_HOST_DEVICE std::int64_t token(int b, std::int64_t t) const { return seg[b * seg_sb + t * seg_st]; }
  GECKO_HOST_DEVICE std::int64_t carried(int b, std::int64_t t) const {
    return pseg[b * pseg_sb + t * pseg_st];
  }
  // Doc of token t of chunk p (p = -1: the carried chunk).
  GECKO_HOST_DEVICE std::int64_t chunk_token(int b, std::int64_t p, std::int64_t t) const {
    return p >= 0 ? token(b, p * chunk + t) : carried(b, t);
  }
};

// ---- conversions ----------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ float to_f(T v) {
  return to_float(v);
}

// Two adjacent values of T packed in 32 bits (lower address first).
template <class T>
GECKO_HOST_DEVICE __forceinline__ std::uint32_t pack2(float a, float b);
template <>
GECKO_HOST_DEVICE __forceinline__ std::uint32_t pack2<__nv_bfloat16>(float a, float b) {
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
         (static_cast<std::uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
}
template <>
GECKO_HOST_DEVICE __forceinline__ std::uint32_t pack2<__half>(float a, float b) {
  return static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(a))) |
         (static_cast<std::uint32_t>(__half_as_ushort(__float2half_rn(b))) << 16);
}

// Stores (a, b) at p[0], p[1] (p aligned to two elements).
template <class T>
GECKO_HOST_DEVICE __forceinline__ void store2(T* p, float a, float b) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    *reinterpret_cast<std::uint32_t*>(p) = pack2<T>(a, b);
  }
}

template <class T>
GECKO_HOST_DEVICE __forceinline__ float2 load2(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *reinterpret_cast<const float2*>(p);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
  }
}

// x = hi + lo with hi, lo in bf16 (hi carries 8 mantissa bits, lo the next 8).
GECKO_HOST_DEVICE __forceinline__ void split_bf16(float x, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(x);
  lo = __float2bfloat16_rn(x - __bfloat162float(hi));
}

GECKO_HOST_DEVICE __forceinline__ std::uint32_t pack_bf16(__nv_bfloat16 a, __nv_bfloat16 b) {
  return static_cast<std::uint32_t>(__bfloat16_as_ushort(a)) | (static_cast<std::uint32_t>(__bfloat16_as_ushort(b)) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- tensor-core primitives ---------------------------------------------------------------------

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of `cpr` chunks per row (cpr a
// multiple of 8): chunks are XOR-swizzled by the row's low 3 bits, so the 8 rows an ldmatrix
// reads (or 8 rows written at one column) hit 8 different bank groups.
GECKO_HOST_DEVICE __forceinline__ std::uint32_t swz(int row, int chunk, int cpr) {
  return static_cast<std::uint32_t>((row * cpr + (chunk ^ (row & 7))) * 16);
}

// 16-byte global -> shared copy; zero-fills when pred is false (nothing is read then).
__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}


// Fragment addresses for a 16x16 A block (rows m0.., k0..) held in a swizzled shared tile.
// Row-major tile: [m][k], cpr chunks per row. Column-major tile: [k][m] (loaded with .trans).
GECKO_HOST_DEVICE __forceinline__ std::uint32_t a_frag_addr_row(std::uint32_t base, int m0, int k0, int cpr, int lane) {
  return base + swz(m0 + (lane & 15), (k0 >> 3) + (lane >> 4), cpr);
}
GECKO_HOST_DEVICE __forceinline__ std::uint32_t a_frag_addr_col(std::uint32_t base, int m0, int k0, int cpr, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  return base + swz(k0 + (mat >> 1) * 8 + r, (m0 >> 3) + (mat & 1), cpr);
}
// Two 16x8 B blocks (k0.., n0.. and n0+8..) -> {b0, b1} of block n0 then of block n0+8.
// Row-major tile: [k][n] (loaded with .trans). Column-major tile: [n][k].
GECKO_HOST_DEVICE __forceinline__ std::uint32_t b_frag_addr_row(std::uint32_t base, int k0, int n0, int cpr, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  return base + swz(k0 + (mat & 1) * 8 + r, (n0 >> 3) + (mat >> 1), cpr);
}
GECKO_HOST_DEVICE __forceinline__ std::uint32_t b_frag_addr_col(std::uint32_t base, int k0, int n0, int cpr, int lane) {
  const int mat = lane >> 3, r = lane & 7;
  return base + swz(n0 + (mat >> 1) * 8 + r, (k0 >> 3) + (mat & 1), cpr);
}

}  // namespace gecko::working_memory::kernels
