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
  ChainState s{0.f, 0.f, 0};
  if (p.prev_mean) s = ChainState{p.prev_mean[b * tl.groups + g], p.prev_var[b * tl.groups + g], p.prev_count[b]};
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
    float mhat = 0.f, rstd = 0.f, ic1 = 0.f, ic2 = 0.f;
    if (!padded && s.count > 0) {
      const float c = static_cast<float>(s.count);
      ic1 = 1.f / -expm1f(c * p.d1.log_beta);
      ic2 = 1.f / -expm1f(c * p.d2.log_beta);
      mhat = s.m * ic1;
      rstd = rsqrtf(s.v * ic2 + p.eps);
    }
    T* yr = y + b * p.y_sb + r * p.y_sl + c0;
#pragma unroll
    for (int e = 0; e < kPer; ++e)
      if (e < per) yr[lane + 32 * e] = from_float<T>(padded ? 0.f : (xv[e] - mhat) * rstd * sc[e] + sh[e]);
    if (lane == 0) {
      if (p.saved_stats) p.saved_stats[t * tl.groups + g] = make_float2(mhat, rstd);
      if (p.saved_corr && g == 0) p.saved_corr[t] = make_float2(ic1, ic2);
    }
  }
  if (lane == 0 && p.mean_out) {
    p.mean_out[b * tl.groups + g] = s.m;
    p.var_out[b * tl.groups + g] = s.v;
    if (g == 0) p.count_out[b] = s.count;
  }
}

}  // namespace gecko::timestep_norm::kernels
