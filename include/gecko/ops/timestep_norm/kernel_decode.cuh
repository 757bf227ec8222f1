// Timestep decay normalization of a few tokens (decoding: L <= kDecodeTokens) without the tile
// machinery. The tile kernel (kernel.cuh) is built for long calls: a flags buffer zeroed by a
// memset before it, tiles of 512 channels (8 CTAs at D = 4096) and a scan/look-back sequence of
// barriers, which for one token is a chain of latencies. Here one warp owns one (batch row, group):
// it walks the call's tokens in order from the carried state, with the same per-step arithmetic as
// the tile kernel (moments in fp32, m' = beta^1 m + (1 - beta) mu, corrections 1 / -expm1(c log beta)),
// and writes y, the saved statistics the backward reads and the state out.
#pragma once

#include "gecko/ops/timestep_norm/kernel.cuh"

namespace gecko::timestep_norm::kernels {

inline constexpr int kDecodeTokens = 8;     // longest call this path takes
inline constexpr int kDecodeMaxGroup = 256;  // group sizes: multiples of 32 up to this

// grid ceil(B * G / 8), 256 threads (one warp per (b, g)); group_size % 32 == 0, <= 256.
template <class T>
__global__ void __launch_bounds__(256) forward_decode_kernel(const __grid_constant__ ForwardParams p,
                                                             const T* __restrict__ x, const T* __restrict__ weight,
                                                             const T* __restrict__ bias, T* __restrict__ y) {
  constexpr int kPer = kDecodeMaxGroup / 32;  // channels per lane, at most
  const Tiling& tl = p.tl;
  const int lane = threadIdx.x & 31;
  const long long wid = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (wid >= static_cast<long long>(tl.batch) * tl.groups) return;  // whole warps
  const int b = static_cast<int>(wid / tl.groups), g = static_cast<int>(wid - static_cast<long long>(b) * tl.groups);
  const int K = tl.group_size, per = K / 32, c0 = g * K;
  float sc[kPer], sh[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) {
    sc[e] = 1.f;
    sh[e] = 0.f;
    if (e < per) {
      if (weight) sc[e] = to_float(weight[c0 + lane + 32 * e]) + 1.f;
      if (bias) sh[e] = to_float(bias[c0 + lane + 32 * e]);
    }
  }
  ChainState s = initial_state(p, b, g);
  for (int r = 0; r < tl.length; ++r) {
    const long long t = static_cast<long long>(b) * tl.length + r;
    const T* xr = x + b * p.x_sb + r * p.x_sl + c0;
    float xv[kPer];
    float sum = 0.f;
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      xv[e] = e < per ? to_float(xr[lane + 32 * e]) : 0.f;
      sum += xv[e];
    }
    const float mu = pair_sum(sum, 32) / K;
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < kPer; ++e)
      if (e < per) q += (xv[e] - mu) * (xv[e] - mu);
    const float var = pair_sum(q, 32) / K;
    const bool padded = mask_at(p.pad, t);
    if (!padded) {
      if (mask_at(p.bos, t)) {
        s = ChainState{p.d1.one_minus * mu, p.d2.one_minus * var, 1};
      } else {
        s = ChainState{fmaf(expf(p.d1.log_beta), s.m, p.d1.one_minus * mu),
                       fmaf(expf(p.d2.log_beta), s.v, p.d2.one_minus * var), s.count + 1};
      }
    }
    const Corrected cs = bias_correct(p, padded, s.count, s.m, s.v);
    const float mhat = cs.mhat, rstd = cs.rstd;
    T* yr = y + b * p.y_sb + r * p.y_sl + c0;
#pragma unroll
    for (int e = 0; e < kPer; ++e)
      if (e < per) yr[lane + 32 * e] = from_float<T>(padded ? 0.f : (xv[e] - mhat) * rstd * sc[e] + sh[e]);
    if (lane == 0) save_corrected(p, t, g, cs);
  }
  if (lane == 0) write_final_state(p, b, g, s);
}

}  // namespace gecko::timestep_norm::kernels
