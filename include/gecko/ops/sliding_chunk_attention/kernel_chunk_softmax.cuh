// Row kernels of the GEMM-staged path (launch_gemm.cuh): the masked softmax of one query chunk's
// logits against its 2C-key window, and its gradient. One CTA per query row.
//
// The group buffer holds, per chunk, a C x 2C fp32 logit matrix, row i at i * 2C floats; column j
// is the key (c - 1) C + j of the call (negative: the carried prev chunk). Probabilities (and dS)
// are written back in T into the first half of the same row, so the T matrix has a leading
// dimension of 4C elements and needs no buffer of its own. Every thread loads its fp32 values
// into registers and the CTA synchronizes before the narrower writes land on other threads'
// words. With kept probabilities (ChunkRows::probs) the forward writes P there instead (T, ld 2C)
// and the gradient reads P from there instead of recomputing it from S and the lse.
#pragma once

#include "gecko/core/vector_io.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_prep.cuh"  // Theta, rope_cos_sin, Rows

namespace gecko::sliding_chunk_attention::kernels {

constexpr int kRowThreads = 256;
constexpr int kRowMaxVec = 8;  // float4 per thread: 2C <= 8 * 4 * 256 = 8192

struct ChunkRows {
  float* s = nullptr;   // group buffer: chunk g at s + g * chunk_stride
  i64 chunk_stride = 0; // floats
  int C = 0;
  int P = 0;            // carried keys: 0 or C
  int c0 = 0;           // chunk index of the group's first chunk
  int L = 0, H = 0, b = 0, h = 0;
  int segments = 0;
  Segs seg;             // window key j (0..P+L) -> document; query r -> document
  // forward: lse out (may be null); backward: lse in, dP buffer (same layout), D = rowsum(dO * O)
  float* lse = nullptr;
  const float* lse_in = nullptr;
  i64 lse_sb = 0, lse_sh = 0, lse_sl = 0;
  float* dp = nullptr;
  const float* D = nullptr;  // [B, H, L]
  // Kept probabilities (T, ld 2C, chunk g of the group at probs + g * probs_cs elements), or null.
  void* probs = nullptr;
  i64 probs_cs = 0;
};

// Column j of query row i of chunk c is visible (before the document check) iff
// lo <= j <= C + i, lo = C for the first chunk of a call without carried keys.
__device__ __forceinline__ bool chunk_col_visible(const ChunkRows& a, int c, int i, int j, i64 qseg) {
  if (j > a.C + i) return false;
  if (c == 0 && a.P == 0 && j < a.C) return false;
  if (!a.segments) return true;
  // window position of column j: P + (c - 1) C + j
  return a.seg.key(a.b, a.P + (c - 1) * a.C + j) == qseg;
}

// Columns of row i the GEMMs wrote and will read: the first half of a chunk's rows never sees the
// last C/2 columns (launch_gemm.cuh, "the causal quadrant"), so those are neither read nor written.
__device__ __forceinline__ int row_width(const ChunkRows& a, int i) { return i < a.C / 2 ? a.C + a.C / 2 : 2 * a.C; }

template <class Op>
__device__ __forceinline__ float block_reduce(float v, float* red, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kRowThreads / 32; ++w) r = op(r, red[w]);
  return r;
}

// P = softmax over the visible columns, written as T in place (or into the kept probabilities);
// lse (natural log) per row.
// grid (C, chunks in group), kRowThreads threads.
template <class T>
__global__ void __launch_bounds__(kRowThreads) chunk_softmax_kernel(ChunkRows a) {
  __shared__ float red[kRowThreads / 32];
  const int i = blockIdx.x, g = blockIdx.y, c = a.c0 + g;
  const int r = c * a.C + i;  // query row in the call
  float* row = a.s + g * a.chunk_stride + static_cast<i64>(i) * 2 * a.C;
  const i64 qseg = a.segments ? a.seg.query(a.b, r) : 0;
  const int width = row_width(a, i);
  float v[kRowMaxVec][4];
  float m = -INFINITY;
#pragma unroll
  for (int it = 0; it < kRowMaxVec; ++it) {
    const int j0 = (it * kRowThreads + threadIdx.x) * 4;
    if (j0 < width) {
      const float4 x = *reinterpret_cast<const float4*>(row + j0);
      const float xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        v[it][u] = chunk_col_visible(a, c, i, j0 + u, qseg) ? xs[u] : -INFINITY;
        m = fmaxf(m, v[it][u]);
      }
    }
  }
  m = block_reduce(m, red, [](float x, float y) { return fmaxf(x, y); });
  const float mu = m == -INFINITY ? 0.f : m;  // a row always sees itself; guard anyway
  float sum = 0.f;
#pragma unroll
  for (int it = 0; it < kRowMaxVec; ++it) {
    const int j0 = (it * kRowThreads + threadIdx.x) * 4;
    if (j0 < width) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        v[it][u] = __expf(v[it][u] - mu);  // exp(-inf) = 0 for hidden columns
        sum += v[it][u];
      }
    }
  }
  sum = block_reduce(sum, red, [](float x, float y) { return x + y; });  // its barriers order the writes
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  T* prow = a.probs ? static_cast<T*>(a.probs) + g * a.probs_cs + static_cast<i64>(i) * 2 * a.C : reinterpret_cast<T*>(row);
#pragma unroll
  for (int it = 0; it < kRowMaxVec; ++it) {
    const int j0 = (it * kRowThreads + threadIdx.x) * 4;
    if (j0 < width) {
      float p[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) p[u] = v[it][u] * inv;
      store_from_float(prow + j0, p);
    }
  }
  if (a.lse && threadIdx.x == 0)
    a.lse[a.b * a.lse_sb + a.h * a.lse_sh + static_cast<i64>(r) * a.lse_sl] =
        sum > 0.f ? mu + logf(sum) : -INFINITY;
}

// From the recomputed logits S and dP = dO V^T: P = exp(S - lse) (written as T over S) and
// dS = P (dP - D) (written as T over dP); hidden columns get zeros. With kept probabilities P is
// read from them instead (S and the lse are not touched). grid (C, chunks in group).
template <class T>
__global__ void __launch_bounds__(kRowThreads) chunk_softmax_grad_kernel(ChunkRows a) {
  const int i = blockIdx.x, g = blockIdx.y, c = a.c0 + g;
  const int r = c * a.C + i;
  const i64 off = g * a.chunk_stride + static_cast<i64>(i) * 2 * a.C;
  float* srow = a.s + off;
  float* dprow = a.dp + off;
  const i64 qseg = a.segments ? a.seg.query(a.b, r) : 0;
  const T* kept = a.probs ? static_cast<const T*>(a.probs) + g * a.probs_cs + static_cast<i64>(i) * 2 * a.C : nullptr;
  const float lse = kept ? 0.f : a.lse_in[a.b * a.lse_sb + a.h * a.lse_sh + static_cast<i64>(r) * a.lse_sl];
  const float Dr = a.D[(static_cast<i64>(a.b) * a.H + a.h) * a.L + r];
  const int width = row_width(a, i);
  float p[kRowMaxVec][4], ds[kRowMaxVec][4];
#pragma unroll
  for (int it = 0; it < kRowMaxVec; ++it) {
    const int j0 = (it * kRowThreads + threadIdx.x) * 4;
    if (j0 < width) {
      float xs[4];
      if (kept) {
        load_as_float(kept + j0, xs);
      } else {
        const float4 x = *reinterpret_cast<const float4*>(srow + j0);
        xs[0] = __expf(x.x - lse);
        xs[1] = __expf(x.y - lse);
        xs[2] = __expf(x.z - lse);
        xs[3] = __expf(x.w - lse);
      }
      const float4 y = *reinterpret_cast<const float4*>(dprow + j0);
      const float ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const bool vis = chunk_col_visible(a, c, i, j0 + u, qseg);
        p[it][u] = vis ? xs[u] : 0.f;
        ds[it][u] = vis ? p[it][u] * (ys[u] - Dr) : 0.f;
      }
    }
  }
  __syncthreads();  // every fp32 word of the row is read before the T writes overwrite it
  T* prow = reinterpret_cast<T*>(srow);
  T* dsrow = reinterpret_cast<T*>(dprow);
#pragma unroll
  for (int it = 0; it < kRowMaxVec; ++it) {
    const int j0 = (it * kRowThreads + threadIdx.x) * 4;
    if (j0 < width) {
      if (!kept) store_from_float(prow + j0, p[it]);
      store_from_float(dsrow + j0, ds[it]);
    }
  }
}

// In-place transpose of RoPE on gradients: for heads h < n_rope, (g0, g1) at pair i of row
// (b, l, h) becomes (c g0 + s g1, -s g0 + c g1), the rotation at position start + l; done on g1
// and g2 (dq and dk) in one pass, so each (cos, sin) is computed once. One thread per pair; I as
// in rope_rows_kernel.
template <class T, class I>
__global__ void unrotate_rows_kernel(OutRows<T> g1, OutRows<T> g2, int L, int n_rope, int d, i64 start, I pairs,
                                     const __grid_constant__ Theta theta) {
  const int half = d / 2;
  for (I idx = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; idx < pairs;
       idx += static_cast<I>(gridDim.x) * blockDim.x) {
    const RopePair q = rope_pair(idx, half, n_rope, L);
    float c, s;
    rope_cos_sin(start + q.l, theta.v[q.i], c, s);
    const OutRows<T>* gs[2] = {&g1, &g2};
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      T* p = gs[k]->at(q.b, q.l, q.h) + 2 * q.i;
      const float x0 = to_float(p[0]), x1 = to_float(p[1]);
      p[0] = from_float<T>(c * x0 + s * x1);
      p[1] = from_float<T>(-s * x0 + c * x1);
    }
  }
}

}  // namespace gecko::sliding_chunk_attention::kernels
