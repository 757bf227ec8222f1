// Device building blocks shared by the sliding chunk attention kernels: tensor-core fragments
// (mma.sync m16n8k16 with ldmatrix), cp.async copies, thread-block-cluster barriers and
// distributed shared memory stores, swizzled shared-memory tiles, views of the key window
// [prev ; current call], and the accurate RoPE angle.
//
// Conventions of every tensor-core kernel here:
//   * 256 threads (8 warps); "rows" are the 16-row slabs of an mma tile, "columns" the 64-wide
//     inner blocks (keys in the forward and the dQ pass, queries in the dK and dV passes).
//   * Shared-memory tiles are row-major with rows a multiple of 64 elements (128 bytes), and the
//     16-byte chunk c of row r stored at chunk (c ^ (r & 7)): ldmatrix reads of 8 consecutive rows
//     then hit 8 distinct bank groups, with no padding.
//   * Logits live in the log2 domain: s2 = <q, k> * scale * log2(e), p = exp2(s2 - m).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "gecko/core/mma.cuh"
#include "gecko/core/dtype.hpp"

namespace gecko::sliding_chunk_attention::kernels {

using i64 = std::int64_t;

constexpr int kThreads = 256;
constexpr int kRowTile = 128;    // rows of a CTA tile (of a whole cluster in the clustered kernels)
constexpr int kColBlock = 64;    // columns per inner step
constexpr int kMaxPairs = 128;   // dk / 2 for the largest head (dk = 256)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- views -------------------------------------------------------------------------------

// Rows of a [B, N, H, d] tensor with unit stride in d.
template <class T>
struct Rows {
  const T* p = nullptr;
  i64 sb = 0, sn = 0, sh = 0;
  __device__ __forceinline__ const T* at(int b, i64 n, int h) const { return p + b * sb + n * sn + h * sh; }
};

template <class T>
struct OutRows {
  T* p = nullptr;
  i64 sb = 0, sn = 0, sh = 0;
  __device__ __forceinline__ T* at(int b, i64 n, int h) const { return p + b * sb + n * sn + h * sh; }
};

// The key (or value) window of one call: row j < P is prev[j], row j >= P is cur[j - P], where
// cur is the pre-rotated copy for heads h < n_rope (keys only) and the caller's tensor otherwise.
template <class T>
struct Window {
  Rows<T> prev, cur, rot;
  int P = 0;
  int n_rope = 0;  // heads [0, n_rope) read `rot` instead of `cur`
  __device__ __forceinline__ const T* row(int b, int j, int h) const { return row(b, j, h, P); }
  // With the window's split given (decoding through a cursor reads it at run time).
  __device__ __forceinline__ const T* row(int b, int j, int h, int split) const {
    if (j < split) return prev.at(b, j, h);
    return (h < n_rope ? rot : cur).at(b, j - split, h);
  }
};

// Document ids: key j of the window has id prev_seg[j] (j < P) or seg[j - P]; query r has seg[r].
struct Segs {
  const i64* seg = nullptr;
  i64 sb = 0, sl = 0;
  const i64* pseg = nullptr;
  i64 psb = 0, psl = 0;
  int P = 0;
  __device__ __forceinline__ i64 key(int b, int j) const { return key(b, j, P); }
  __device__ __forceinline__ i64 key(int b, int j, int split) const {
    return j < split ? pseg[b * psb + j * psl] : seg[b * sb + (j - split) * sl];
  }
  __device__ __forceinline__ i64 query(int b, int r) const { return seg[b * sb + r * sl]; }
};

// The visibility rule of args.hpp in window positions, as an interval: the query at window
// position pos sees keys [lo, pos], lo = first_key(pos, chunk) (same-document check apart).
__device__ __forceinline__ int window_lo(int pos, i64 chunk) {
  const i64 c = pos / chunk;
  return static_cast<int>(c > 0 ? (c - 1) * chunk : 0);
}
// The last window position whose interval still contains key j.
__device__ __forceinline__ i64 last_query_pos(int j, i64 chunk) { return (j / chunk + 2) * chunk - 1; }

// ---- RoPE ---------------------------------------------------------------------------------

// cos and sin of pos * theta, taken accurately: the angle is formed in double (exact for
// pos < 2^29), reduced modulo 2*pi with a two-word 2*pi (Cody-Waite), and only the reduced
// angle, |r| <= pi, goes through fp32 sincosf. The fp32 product the authors use drifts by
// about 2^-24 * pos radians instead.
__device__ __forceinline__ void rope_cos_sin(i64 pos, float theta, float& c, float& s) {
  const double phi = static_cast<double>(pos) * static_cast<double>(theta);
  const double k = rint(phi * 0.15915494309189535);
  double r = fma(-k, 6.283185307179586, phi);
  r = fma(-k, 2.4492935982947064e-16, r);
  sincosf(static_cast<float>(r), &s, &c);
}

// ---- element packing ------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ std::uint32_t pack2(float a, float b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<std::uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<std::uint32_t*>(&v);
  }
}

template <class T>
__device__ __forceinline__ float2 unpack2(std::uint32_t u) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
  } else {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
  }
}

// ---- shared memory and copies ----------------------------------------------------------------

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of the 16-byte chunk c of row r in a swizzled tile of `cpr` chunks per row.
__device__ __forceinline__ std::uint32_t swz(int r, int c, int cpr) {
  return static_cast<std::uint32_t>((r * cpr + (c ^ (r & 7))) * 16);
}
// Byte offset of element (r, col) (col even) in a swizzled tile of 16-bit elements.
__device__ __forceinline__ std::uint32_t swz_elem(int r, int col, int cpr) {
  return swz(r, col >> 3, cpr) + static_cast<std::uint32_t>((col & 7) * 2);
}

__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint4 lds128(std::uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts32(std::uint32_t addr, std::uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v));
}

// ---- tensor cores ------------------------------------------------------------------------

__device__ __forceinline__ void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}


// ldmatrix lane addressing (lane l supplies one row address of one 8x8 matrix):
//   A 16x16 at (r0, c0) of a [row][k] tile:        row r0 + (l & 15),             col c0 + (l >> 4) * 8
//   B for 2 k-steps, 8 columns, from a [n][k] tile: row n0 + (l & 7),              col k0 + (l >> 3) * 8
//       -> regs {0,1} = (b0, b1) of k-step k0, {2,3} = of k-step k0 + 16
//   B for 1 k-step, 16 columns, from a [n][k] tile: row n0 + (l & 7) + (l >> 4) * 8, col k0 + ((l >> 3) & 1) * 8
//       -> regs {0,1} = columns n0..n0+7, {2,3} = n0+8..n0+15
//   B (.trans) for 1 k-step, 16 columns, from a [k][n] tile: row k0 + (l & 7) + ((l >> 3) & 1) * 8,
//       col n0 + (l >> 4) * 8 -> regs {0,1} = columns n0..n0+7, {2,3} = n0+8..n0+15

// ---- clusters ---------------------------------------------------------------------------------

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GECKO_SCA_CLUSTERS 1
#endif

__device__ __forceinline__ std::uint32_t cluster_rank() {
#ifdef GECKO_SCA_CLUSTERS
  std::uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
#else
  return 0;
#endif
}
// All threads of every CTA of the cluster arrive (release: their earlier shared-memory stores,
// local or remote, become visible to the threads that then pass cluster_wait).
__device__ __forceinline__ void cluster_arrive() {
#ifdef GECKO_SCA_CLUSTERS
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#else
  __syncthreads();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#ifdef GECKO_SCA_CLUSTERS
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// The shared::cluster address of `addr` (a shared::cta address) in CTA `rank` of the cluster.
__device__ __forceinline__ std::uint32_t map_rank(std::uint32_t addr, std::uint32_t rank) {
#ifdef GECKO_SCA_CLUSTERS
  std::uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
#else
  (void)rank;
  return addr;
#endif
}
__device__ __forceinline__ void st_cluster128(std::uint32_t addr, uint4 v) {
#ifdef GECKO_SCA_CLUSTERS
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
#else
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
#endif
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---- tile loads ---------------------------------------------------------------------------------
//
// A tile load is issued once per block and per thread, so its address arithmetic is kept to a
// compare, a select and one multiply per 16-byte copy: the (batch, head) bases are formed once per
// CTA (RowSrc) and every thread copies one fixed chunk column of rows r0, r0 + step, ... (Cursor;
// the swizzle of those rows is the same because step is a multiple of 8).

// Rows of one (batch, head): row j < split from a, the others from c[j - split]; rows >= end are
// absent (zero-filled).
template <class T>
struct RowSrc {
  const T* a = nullptr;
  i64 sa = 0;
  const T* c = nullptr;
  i64 sc = 0;
  int split = 0, end = 0;
  __device__ __forceinline__ const T* row(int j) const { return j < split ? a + j * sa : c + (j - split) * sc; }
};

template <class T>
__device__ __forceinline__ RowSrc<T> window_src(const Window<T>& w, int b, int h, int end) {
  RowSrc<T> s;
  const Rows<T>& cur = h < w.n_rope ? w.rot : w.cur;
  s.c = cur.at(b, 0, h);
  s.sc = cur.sn;
  s.split = w.P;
  s.a = w.P > 0 ? w.prev.at(b, 0, h) : s.c;
  s.sa = w.P > 0 ? w.prev.sn : s.sc;
  s.end = end;
  return s;
}

template <class T>
__device__ __forceinline__ RowSrc<T> rows_src(const Rows<T>& r, int b, int h, int end) {
  RowSrc<T> s;
  s.a = s.c = r.at(b, 0, h);
  s.sa = s.sc = r.sn;
  s.split = 0;
  s.end = end;
  return s;
}

// This thread's share of a tile of `rows` rows x 2^cpr_log2 chunks (cpr <= 32).
struct Cursor {
  int r0 = 0, step = 0, count = 0, col = 0;
  std::uint32_t dst0 = 0, dstep = 0;
  __device__ __forceinline__ Cursor(int rows, int cpr_log2) {
    const int cpr = 1 << cpr_log2;
    const int c = threadIdx.x & (cpr - 1);
    r0 = threadIdx.x >> cpr_log2;
    step = kThreads >> cpr_log2;
    count = r0 < rows ? (rows - r0 + step - 1) / step : 0;
    col = c * 8;
    dst0 = swz(r0, c, cpr);
    dstep = static_cast<std::uint32_t>(step * cpr * 16);
  }
};

// cp.async of rows [j0, j0 + rows) of `s`, columns [col0, col0 + 8 cpr), into a swizzled tile;
// chunks at or past col_end and absent rows are zero-filled.
template <class T>
__device__ __forceinline__ void load_tile(std::uint32_t dst, const RowSrc<T>& s, int j0, const Cursor& cu, int col0,
                                          int col_end) {
  const int col = col0 + cu.col;
  const bool col_ok = col < col_end;
  for (int i = 0; i < cu.count; ++i) {
    const int j = j0 + cu.r0 + i * cu.step;
    const bool ok = col_ok && j < s.end;
    cp_async16(dst + cu.dst0 + i * cu.dstep, ok ? s.row(j) + col : s.c, ok);
  }
}

__device__ __forceinline__ int log2_pow2(int v) { return 31 - __clz(v); }

}  // namespace gecko::sliding_chunk_attention::kernels
