// Decoding: a few queries (L <= kDecodeRows) against the cached window. The work is reading K and
// V once (2048-wide value rows at the 7B shape), so it is split by blocks of at most 64 keys across
// the grid, sized so that the CTAs fill the GPU in whole waves (launch.cuh plans it): each CTA
// scores its block for every query (one warp per key, every key's 16-byte load issued before any
// is used; the call's own keys rotated on the fly, so no RoPE pre-pass runs), takes the block's softmax partials in the log2 domain and accumulates P V with each
// thread owning 8 value columns and 8 value rows in flight. decode_combine_kernel merges the blocks
// in split order, so the result is deterministic.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

#include "gecko/core/decode_cursor.hpp"
#include "gecko/ops/sliding_chunk_attention/kernel_prep.cuh"

namespace gecko::sliding_chunk_attention::kernels {

constexpr int kDecodeRows = 4;   // queries per call handled here
constexpr int kDecodeKeys = 64;  // keys per CTA, at most
// CTAs per SM the key blocks are sized for (a one-query CTA takes 64 registers a thread: 4 fit).
constexpr int kDecodeCtasPerSm = 4;

template <class T>
struct DecodeParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0, start = 0;
  int n_rope = 0, segments = 0;
  float scale_log2 = 0.f;
  int lo = 0;            // first key any query sees (key blocks start here)
  int keys_per_cta = 0;  // keys of one block, <= kDecodeKeys
  Rows<T> q;
  Window<T> kw, vw;
  Segs seg;
  float* part_o = nullptr;   // [splits, B*H, L, dv]
  float* part_ml = nullptr;  // [splits, B*H, L, 2]
  const DecodeCursor* cursor = nullptr;  // or null: P, keys and start as above (args.hpp)
  float theta[kMaxPairs] = {};
};

// grid (splits, B * H), kThreads threads; keys_per_cta <= kDecodeKeys; dk <= 256 and dv <= 2048,
// both multiples of 8, 16-byte aligned rows.
// kRows = p.L, the queries of the call (1 .. kDecodeRows): a compile-time count, so that no
// instruction is issued for rows the call does not have.
// kCursor: the window's P and position come from p.cursor (graph replay); a separate instantiation,
// so that the launch-argument variant keeps them in the constant bank (the run-time values cost
// registers, and registers decide how many CTAs an SM holds: one query fits in 64 registers, 4
// CTAs; the cursor variant is held to that with a few spilled bytes, 0 leaves the others as ptxas
// chooses).
template <class T, int kRows, bool kCursor = false>
__global__ void __launch_bounds__(kThreads, kCursor && kRows == 1 ? kDecodeCtasPerSm : 0) decode_kernel(const __grid_constant__ DecodeParams<T> p) {
  constexpr int kWarps = kThreads / 32, kKeysPerWarp = kDecodeKeys / kWarps;
  __shared__ float qs[kRows][256];
  __shared__ float ps[kRows][kDecodeKeys];
  __shared__ float ms[kRows], ls[kRows];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  // The window: from the launch arguments, or (graph replay) from the cursor, in which case the
  // grid covers the largest window and the blocks past this call's keys write empty partials.
  // (The windows keep their launch-time split; P is passed to their row lookups instead: copies of
  // them would cost registers.)
  const int P = kCursor ? static_cast<int>(p.cursor->prev) : p.P;
  const i64 start = kCursor ? p.cursor->position : p.start;
  const int j0 = p.lo + split * p.keys_per_cta;
  const int nkeys = min(p.keys_per_cta, P + kRows - j0);

  // Queries, rotated at their absolute positions.
  for (int idx = tid; idx < kRows * (p.dk / 2); idx += blockDim.x) {
    const int r = idx / (p.dk / 2), i = idx - r * (p.dk / 2);
    const T* src = p.q.at(b, r, h) + 2 * i;
    float x0 = to_float(src[0]), x1 = to_float(src[1]);
    if (h < p.n_rope) {
      float c, s;
      rope_cos_sin(start + r, p.theta[i], c, s);
      const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
      x0 = y0;
      x1 = y1;
    }
    qs[r][2 * i] = x0;
    qs[r][2 * i + 1] = x1;
  }

  // Scores: warp w takes keys w, w + 8, ...; lane l holds elements [8l, 8l + 8) of each (dk <= 256).
  // Every load of the warp's keys is in flight before the first product.
  const int d = lane * 8;
  uint4 kraw[kKeysPerWarp];
#pragma unroll
  for (int t = 0; t < kKeysPerWarp; ++t) {
    const int jj = warp + t * kWarps;
    kraw[t] = make_uint4(0, 0, 0, 0);
    if (jj < nkeys && d < p.dk) kraw[t] = __ldg(reinterpret_cast<const uint4*>(p.kw.row(b, j0 + jj, h, P) + d));
  }
  __syncthreads();  // qs
  // The lane's 8 query elements of every row, in registers for all its keys.
  float qv[kRows][8];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int e = 0; e < 8; ++e) qv[r][e] = d < p.dk ? qs[r][d + e] : 0.f;
#pragma unroll
  for (int t = 0; t < kKeysPerWarp; ++t) {
    const int jj = warp + t * kWarps, j = j0 + jj;
    // The call's own keys arrive unrotated (the cache holds rotated ones): rotate them here, rounded
    // to T as the cache stores them.
    const bool rotate = jj < nkeys && j >= P && h < p.n_rope;
    float acc[kRows] = {};
    if (d < p.dk) {
      const std::uint32_t w[4] = {kraw[t].x, kraw[t].y, kraw[t].z, kraw[t].w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float2 kv = unpack2<T>(w[u]);
        if (rotate) {
          float c, s;
          rope_cos_sin(start + (j - P), p.theta[d / 2 + u], c, s);
          kv = make_float2(to_float(from_float<T>(kv.x * c - kv.y * s)), to_float(from_float<T>(kv.x * s + kv.y * c)));
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += qv[r][2 * u] * kv.x + qv[r][2 * u + 1] * kv.y;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float v = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) {
        const int pos = P + r;
        bool vis = jj < nkeys && j <= pos && j >= window_lo(pos, p.chunk);
        if (vis && p.segments) vis = p.seg.key(b, j, P) == p.seg.query(b, r);
        ps[r][jj] = vis ? v * p.scale_log2 : -INFINITY;
      }
    }
  }
  __syncthreads();

  // Block softmax partials per query: warp r.
  if (warp < kRows) {
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

  // P V: thread t owns value columns [8t, 8t + 8); kUnrollV rows of V in flight.
  constexpr int kUnrollV = 8;
  const int col = tid * 8;
  const i64 rows = static_cast<i64>(gridDim.y) * kRows;
  if (col < p.dv) {
    float acc[kRows][8] = {};
    for (int jb = 0; jb < nkeys; jb += kUnrollV) {
      uint4 raw[kUnrollV];
#pragma unroll
      for (int u = 0; u < kUnrollV; ++u)
        raw[u] = jb + u < nkeys ? __ldg(reinterpret_cast<const uint4*>(p.vw.row(b, j0 + jb + u, h, P) + col))
                                : make_uint4(0, 0, 0, 0);
    // Every loop over u and r is fully unrolled with guards instead of breaks, so raw and acc stay
    // in registers (a runtime index would put them in local memory).
#pragma unroll
      for (int u = 0; u < kUnrollV; ++u) {
        const std::uint32_t w[4] = {raw[u].x, raw[u].y, raw[u].z, raw[u].w};
        float v[8];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = unpack2<T>(w[e]);
          v[2 * e] = f.x;
          v[2 * e + 1] = f.y;
        }
        // Past the block's last key raw is zero and ps is 0 (exp2 of -inf): nothing to guard.
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float pr = ps[r][min(jb + u, kDecodeKeys - 1)];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(pr, v[e], acc[r][e]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float* dst = p.part_o + ((split * rows) + static_cast<i64>(bh) * kRows + r) * p.dv + col;
      reinterpret_cast<float4*>(dst)[0] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
    }
  }
  if (tid < kRows) {
    float* ml = p.part_ml + ((split * rows) + static_cast<i64>(bh) * kRows + tid) * 2;
    ml[0] = ms[tid];
    ml[1] = ls[tid];
  }
}

constexpr int kDecodeMaxSplits = 1024;   // key blocks per (b, h) the combine takes
constexpr int kCombineThreads = 256;     // decode_combine_kernel: kCombineGroups x kCombineCols
constexpr int kCombineCols = 64;
constexpr int kCombineGroups = kCombineThreads / kCombineCols;

// Merges decode_kernel's block partials of one query row: grid (ceil(dv / 64), B * H * L), 256
// threads. The CTA first turns the splits' (max, sum) pairs into weights 2^(m_s - M) in shared
// memory and the denominator (CUB block reductions, a fixed order); then 4 groups of 64 threads
// each sum every 4th split's partial rows for 64 columns, and group 0 adds the 4 sums in order.
// splits <= kDecodeMaxSplits.
template <class T>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(const float* __restrict__ part_o,
                                                                         const float* __restrict__ part_ml, int splits,
                                                                         int L, int H, int dv, OutRows<T> out,
                                                                         float* lse, i64 lse_sb, i64 lse_sh,
                                                                         i64 lse_sl) {
  using Reduce = cub::BlockReduce<float, kCombineThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float weight[kDecodeMaxSplits];
  __shared__ float group_sum[kCombineGroups][kCombineCols];
  __shared__ float M_s, den_s;
  const int tid = threadIdx.x;
  const int row = blockIdx.y;  // bh * L + r
  const int bh = row / L, r = row - bh * L, b = bh / H, h = bh - b * H;
  const i64 stride = static_cast<i64>(gridDim.y);  // rows per split

  float m = -INFINITY;
  for (int s = tid; s < splits; s += kCombineThreads) m = fmaxf(m, part_ml[(s * stride + row) * 2]);
  m = Reduce(tmp).Reduce(m, ::cuda::maximum<>{});
  if (tid == 0) M_s = m;
  __syncthreads();
  const float M = M_s, Mu = M == -INFINITY ? 0.f : M;
  float den = 0.f;
  for (int s = tid; s < splits; s += kCombineThreads) {
    const float w = fast_exp2(part_ml[(s * stride + row) * 2] - Mu);
    weight[s] = w;
    den += w * part_ml[(s * stride + row) * 2 + 1];
  }
  den = Reduce(tmp).Sum(den);
  if (tid == 0) den_s = den;
  __syncthreads();

  const int g = tid / kCombineCols, cc = tid - g * kCombineCols, c = blockIdx.x * kCombineCols + cc;
  float acc = 0.f;
  if (c < dv) {
#pragma unroll 4
    for (int s = g; s < splits; s += kCombineGroups) acc += weight[s] * part_o[(s * stride + row) * dv + c];
  }
  group_sum[g][cc] = acc;
  __syncthreads();
  if (g == 0 && c < dv) {
    float total = 0.f;
#pragma unroll
    for (int k = 0; k < kCombineGroups; ++k) total += group_sum[k][cc];
    out.at(b, r, h)[c] = from_float<T>(den_s > 0.f ? total / den_s : 0.f);
  }
  if (lse && blockIdx.x == 0 && tid == 0)
    lse[b * lse_sb + h * lse_sh + r * lse_sl] = den_s > 0.f ? (M + log2f(den_s)) * kLn2 : -INFINITY;
}

}  // namespace gecko::sliding_chunk_attention::kernels
