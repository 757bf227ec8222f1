// Decoding: a few queries (L <= kDecodeRows) against the cached window. The work is reading K and
// V once (2048-wide value rows at the 7B shape), so it is split by 64-key blocks across the grid:
// each CTA scores its block for every query (one warp per key, 16-byte loads), takes the block's
// softmax partials in the log2 domain and accumulates P V with each thread owning 8 value columns.
// combine_kernel (kernel_prep.cuh) merges the blocks in order, so the result is deterministic.
#pragma once

#include "gecko/ops/sliding_chunk_attention/kernel_prep.cuh"

namespace gecko::sliding_chunk_attention::kernels {

constexpr int kDecodeRows = 4;   // queries per call handled here
constexpr int kDecodeKeys = 64;  // keys per CTA

template <class T>
struct DecodeParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0, start = 0;
  int n_rope = 0, segments = 0;
  float scale_log2 = 0.f;
  int lo = 0;  // first key any query sees (key blocks start here)
  Rows<T> q;
  Window<T> kw, vw;
  Segs seg;
  float* part_o = nullptr;   // [splits, B*H, L, dv]
  float* part_ml = nullptr;  // [splits, B*H, L, 2]
  float theta[kMaxPairs] = {};
};

// grid (splits, B * H), kThreads threads; dk <= 256 and dv <= 2048, both multiples of 8, 16-byte
// aligned rows.
template <class T>
__global__ void __launch_bounds__(kThreads) decode_kernel(const __grid_constant__ DecodeParams<T> p) {
  __shared__ float qs[kDecodeRows][256];
  __shared__ float ps[kDecodeRows][kDecodeKeys];
  __shared__ float ms[kDecodeRows], ls[kDecodeRows];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int j0 = p.lo + split * kDecodeKeys;

  // Queries, rotated at their absolute positions.
  for (int idx = tid; idx < p.L * (p.dk / 2); idx += blockDim.x) {
    const int r = idx / (p.dk / 2), i = idx - r * (p.dk / 2);
    const T* src = p.q.at(b, r, h) + 2 * i;
    float x0 = to_float(src[0]), x1 = to_float(src[1]);
    if (h < p.n_rope) {
      float c, s;
      rope_cos_sin(p.start + r, p.theta[i], c, s);
      const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
      x0 = y0;
      x1 = y1;
    }
    qs[r][2 * i] = x0;
    qs[r][2 * i + 1] = x1;
  }
  __syncthreads();

  // Scores: warp w takes keys w, w + 8, ...; lanes split the head dim in 8-element pieces.
  for (int jj = warp; jj < kDecodeKeys; jj += kThreads / 32) {
    const int j = j0 + jj;
    float acc[kDecodeRows] = {};
    if (j < p.keys) {
      const T* k = p.kw.row(b, j, h);
      for (int d = lane * 8; d < p.dk; d += 256) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(k + d));
        const std::uint32_t* w = reinterpret_cast<const std::uint32_t*>(&raw);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float2 kv = unpack2<T>(w[u]);
#pragma unroll
          for (int r = 0; r < kDecodeRows; ++r)
            if (r < p.L) acc[r] += qs[r][d + 2 * u] * kv.x + qs[r][d + 2 * u + 1] * kv.y;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kDecodeRows; ++r) {
      float v = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && r < p.L) {
        const int pos = p.P + r;
        bool vis = j < p.keys && j <= pos && j >= window_lo(pos, p.chunk);
        if (vis && p.segments) vis = p.seg.key(b, j) == p.seg.query(b, r);
        ps[r][jj] = vis ? v * p.scale_log2 : -INFINITY;
      }
    }
  }
  __syncthreads();

  // Block softmax partials per query: warp r.
  if (warp < p.L) {
    const float a = ps[warp][lane], c = ps[warp][lane + 32];
    float m = fmaxf(a, c);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float mu = m == -INFINITY ? 0.f : m;
    const float ea = fast_exp2(a - mu), ec = fast_exp2(c - mu);
    ps[warp][lane] = ea;
    ps[warp][lane + 32] = ec;
    float l = ea + ec;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
      ms[warp] = m;
      ls[warp] = l;
    }
  }
  __syncthreads();

  // P V: thread t owns value columns [8t, 8t + 8).
  const int col = tid * 8;
  const i64 rows = static_cast<i64>(gridDim.y) * p.L;
  if (col < p.dv) {
    float acc[kDecodeRows][8] = {};
    const int nkeys = min(kDecodeKeys, p.keys - j0);
#pragma unroll 4
    for (int jj = 0; jj < nkeys; ++jj) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p.vw.row(b, j0 + jj, h) + col));
      const std::uint32_t* w = reinterpret_cast<const std::uint32_t*>(&raw);
      float v[8];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float2 f = unpack2<T>(w[u]);
        v[2 * u] = f.x;
        v[2 * u + 1] = f.y;
      }
#pragma unroll
      for (int r = 0; r < kDecodeRows; ++r) {
        if (r >= p.L) break;
        const float pr = ps[r][jj];
#pragma unroll
        for (int u = 0; u < 8; ++u) acc[r][u] += pr * v[u];
      }
    }
    for (int r = 0; r < p.L; ++r) {
      float* dst = p.part_o + ((split * rows) + static_cast<i64>(bh) * p.L + r) * p.dv + col;
      reinterpret_cast<float4*>(dst)[0] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
    }
  }
  if (tid < p.L) {
    float* ml = p.part_ml + ((split * rows) + static_cast<i64>(bh) * p.L + tid) * 2;
    ml[0] = ms[tid];
    ml[1] = ls[tid];
  }
}

// Merges decode_kernel's block partials like combine_kernel, but with one thread per value column
// (the decode has up to 2C / 64 blocks and few rows): grid (ceil(dv / 128), B * H * L), 128 threads.
template <class T>
__global__ void __launch_bounds__(128) decode_combine_kernel(const float* __restrict__ part_o,
                                                             const float* __restrict__ part_ml, int splits, int L,
                                                             int H, int dv, OutRows<T> out, float* lse, i64 lse_sb,
                                                             i64 lse_sh, i64 lse_sl) {
  const int row = blockIdx.y;  // bh * L + r
  const int bh = row / L, r = row - bh * L, b = bh / H, h = bh - b * H;
  const i64 stride = static_cast<i64>(gridDim.y);  // rows per split
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, part_ml[(s * stride + row) * 2]);
  const float Mu = M == -INFINITY ? 0.f : M;
  float den = 0.f;
  for (int s = 0; s < splits; ++s) den += fast_exp2(part_ml[(s * stride + row) * 2] - Mu) * part_ml[(s * stride + row) * 2 + 1];
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < dv) {
    float acc = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s)
      acc += fast_exp2(part_ml[(s * stride + row) * 2] - Mu) * part_o[(s * stride + row) * dv + c];
    out.at(b, r, h)[c] = from_float<T>(den > 0.f ? acc / den : 0.f);
  }
  if (lse && blockIdx.x == 0 && threadIdx.x == 0)
    lse[b * lse_sb + h * lse_sh + r * lse_sl] = den > 0.f ? (M + log2f(den)) * kLn2 : -INFINITY;
}

}  // namespace gecko::sliding_chunk_attention::kernels
