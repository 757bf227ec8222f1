// Small memory-bound kernels around the attention passes: the RoPE pre-pass (rotated copies of
// k, and of q for the backward), the backward's D = rowsum(dO * O), and the merge of split-key
// partial results (decoding).
#pragma once

#include "gecko/ops/sliding_chunk_attention/kernel_common.cuh"

namespace gecko::sliding_chunk_attention::kernels {

struct Theta {
  float v[kMaxPairs];
};

// Rotation pair idx of the rows (b, l, h < n_rope), pairs of a row consecutive. I is the index
// type: int when the launch's pair count fits, which keeps the divisions 32-bit (64-bit integer
// division costs several times more than the rotation itself).
// Largest pair count the int instantiations take: the grid-stride loop (grids of at most 65536
// CTAs of 256 threads) must not overflow the index.
constexpr i64 kMaxInt32Pairs = 0x7fffffffLL - 65536LL * 256;

struct RopePair {
  int b, l, h, i;
  i64 row;  // (b * L + l) * n_rope + h
};
template <class I>
__device__ __forceinline__ RopePair rope_pair(I idx, int half, int n_rope, int L) {
  RopePair r;
  r.i = static_cast<int>(idx % half);
  const I row = idx / half;
  r.row = row;
  r.h = static_cast<int>(row % n_rope);
  const I bl = row / n_rope;
  r.l = static_cast<int>(bl % L);
  r.b = static_cast<int>(bl / L);
  return r;
}

// y[b, l, h, :] = rope(x[b, l, h, :]) at position start + l for heads h < n_rope, written densely
// as [B, L, n_rope, d]. One thread per rotation pair.
template <class T, class I>
__global__ void rope_rows_kernel(Rows<T> x, T* __restrict__ y, int L, int n_rope, int d, i64 start, I pairs,
                                 const __grid_constant__ Theta theta) {
  const int half = d / 2;
  for (I idx = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; idx < pairs;
       idx += static_cast<I>(gridDim.x) * blockDim.x) {
    const RopePair q = rope_pair(idx, half, n_rope, L);
    const int i = q.i, l = q.l;
    const i64 row = q.row;
    const T* src = x.at(q.b, l, q.h) + 2 * i;
    const float x0 = to_float(src[0]), x1 = to_float(src[1]);
    float c, s;
    rope_cos_sin(start + l, theta.v[i], c, s);
    T* dst = y + row * d + 2 * i;
    dst[0] = from_float<T>(x0 * c - x1 * s);
    dst[1] = from_float<T>(x0 * s + x1 * c);
  }
}

// D[b, h, r] = sum_c dout[b, r, h, c] * out[b, r, h, c] in fp32: one warp per (b, r, h). vec:
// 16-byte loads (16-bit T, dv % 8 == 0, aligned rows).
template <class T>
__global__ void row_dot_kernel(Rows<T> dout, Rows<T> out, float* __restrict__ D, int L, int H, int dv, i64 rows,
                               int vec) {
  const int lane = threadIdx.x & 31;
  const i64 row = blockIdx.x * static_cast<i64>(blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int h = static_cast<int>(row % H);
  const i64 bl = row / H;
  const int r = static_cast<int>(bl % L), b = static_cast<int>(bl / L);
  const T* a = dout.at(b, r, h);
  const T* o = out.at(b, r, h);
  float sum = 0.f;
  if constexpr (sizeof(T) == 2) {
    if (vec) {
      for (int c = lane * 8; c < dv; c += 256) {
        const uint4 x = __ldg(reinterpret_cast<const uint4*>(a + c)), y = __ldg(reinterpret_cast<const uint4*>(o + c));
        const std::uint32_t* xw = reinterpret_cast<const std::uint32_t*>(&x);
        const std::uint32_t* yw = reinterpret_cast<const std::uint32_t*>(&y);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float2 xf = unpack2<T>(xw[u]), yf = unpack2<T>(yw[u]);
          sum += xf.x * yf.x + xf.y * yf.y;
        }
      }
    } else {
      for (int c = lane; c < dv; c += 32) sum += to_float(a[c]) * to_float(o[c]);
    }
  } else {
    for (int c = lane; c < dv; c += 32) sum += to_float(a[c]) * to_float(o[c]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) D[(static_cast<i64>(b) * H + h) * L + r] = sum;
}

// Merges the split-key partials of forward_kernel: out = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s,
// lse = (M + log2 of the denominator) * ln 2. grid (L, B * H), splits summed in order.
template <class T>
__global__ void combine_kernel(const float* __restrict__ part_o, const float* __restrict__ part_ml, int splits, int L,
                               int H, int dv, OutRows<T> out, float* lse, i64 lse_sb, i64 lse_sh, i64 lse_sl) {
  const int r = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh - b * H;
  const i64 stride = static_cast<i64>(gridDim.y) * L;  // rows per split
  const i64 row = static_cast<i64>(bh) * L + r;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, part_ml[(s * stride + row) * 2]);
  const float Mu = M == -INFINITY ? 0.f : M;
  float den = 0.f;
  for (int s = 0; s < splits; ++s) den += fast_exp2(part_ml[(s * stride + row) * 2] - Mu) * part_ml[(s * stride + row) * 2 + 1];
  const float inv = den > 0.f ? 1.f / den : 0.f;
  T* dst = out.at(b, r, h);
  for (int c = threadIdx.x; c < dv; c += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s)
      acc += fast_exp2(part_ml[(s * stride + row) * 2] - Mu) * part_o[(s * stride + row) * dv + c];
    dst[c] = from_float<T>(acc * inv);
  }
  if (lse && threadIdx.x == 0) lse[b * lse_sb + h * lse_sh + r * lse_sl] = den > 0.f ? (M + log2f(den)) * kLn2 : -INFINITY;
}

}  // namespace gecko::sliding_chunk_attention::kernels
