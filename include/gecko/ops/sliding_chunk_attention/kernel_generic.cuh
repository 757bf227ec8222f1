// The simple path: one CTA per query (forward, dQ) or per key (dK, dV), fp32 arithmetic on CUDA
// cores, any element type and alignment. It serves fp32 tensors and inputs the tensor-core
// kernels cannot take (unaligned rows, pre-Hopper devices); it is correct, not fast.
#pragma once

#include "gecko/ops/sliding_chunk_attention/kernel_common.cuh"

namespace gecko::sliding_chunk_attention::kernels {

constexpr int kGenThreads = 128;
constexpr int kGenMaxDv = 2048;  // 16 output columns per thread

template <class T>
struct GenParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0, start = 0;
  int n_rope = 0, segments = 0;
  int accumulate_dv = 0;  // dv += instead of = (not dprev_v)
  float scale = 1.f;
  Rows<T> q, qrot, dout;
  Window<T> kw, vw;
  Segs seg;
  OutRows<T> out, gq, gk, gv, gprev_k, gprev_v;  // out; dq, dk, dv, dprev_k, dprev_v
  float* lse = nullptr;
  i64 lse_sb = 0, lse_sh = 0, lse_sl = 0;
  float* lse_ws = nullptr;  // [B, H, L] natural-log lse, written by the dQ kernel
  float* d_ws = nullptr;    // [B, H, L] D = sum_j p_j dP_j
  float theta[kMaxPairs] = {};
};

// Sum (is_max = false) or max over the block of v; every thread gets the result.
__device__ __forceinline__ float gen_block_reduce(float v, float* red, bool is_max) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  __syncthreads();  // red may still be read by a previous call
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < kGenThreads / 32; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

// Softmax of query r over its window into lg[0, nk) (probabilities), returning m and sum so that
// lse = m + log(sum). qf holds the rotated query in fp32.
template <class T>
__device__ void gen_softmax_row(const GenParams<T>& p, int b, int h, int r, int lo, int nk, const float* qf, float* lg,
                                float* red, float& m, float& sum) {
  const i64 sq = p.segments ? p.seg.query(b, r) : 0;
  float mx = -INFINITY;
  for (int jj = threadIdx.x; jj < nk; jj += kGenThreads) {
    const int j = lo + jj;
    const T* kr = p.kw.row(b, j, h);
    float dot = 0.f;
    for (int c = 0; c < p.dk; ++c) dot += qf[c] * to_float(kr[c]);
    float s = dot * p.scale;
    if (p.segments && p.seg.key(b, j) != sq) s = -INFINITY;
    lg[jj] = s;
    mx = fmaxf(mx, s);
  }
  m = gen_block_reduce(mx, red, true);
  const float mu = m == -INFINITY ? 0.f : m;
  float part = 0.f;
  for (int jj = threadIdx.x; jj < nk; jj += kGenThreads) {
    const float e = expf(lg[jj] - mu);
    lg[jj] = e;
    part += e;
  }
  sum = gen_block_reduce(part, red, false);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int jj = threadIdx.x; jj < nk; jj += kGenThreads) lg[jj] *= inv;
  __syncthreads();
}

// grid (L, B * H). Shared: dk + 2C + 32 floats.
template <class T>
__global__ void __launch_bounds__(kGenThreads) generic_forward_kernel(const __grid_constant__ GenParams<T> p) {
  extern __shared__ float gsm[];
  const int r = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int pos = p.P + r, lo = window_lo(pos, p.chunk), nk = pos - lo + 1;
  float* qf = gsm;
  float* red = qf + p.dk;
  float* lg = red + 32;
  const Rows<T> qsrc = h < p.n_rope ? p.qrot : p.q;
  for (int c = threadIdx.x; c < p.dk; c += kGenThreads) qf[c] = to_float(qsrc.at(b, r, h)[c]);
  __syncthreads();
  float m, sum;
  gen_softmax_row(p, b, h, r, lo, nk, qf, lg, red, m, sum);
  float acc[kGenMaxDv / kGenThreads];
#pragma unroll
  for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) acc[u] = 0.f;
  for (int jj = 0; jj < nk; ++jj) {
    const float w = lg[jj];
    if (w == 0.f) continue;
    const T* vr = p.vw.row(b, lo + jj, h);
#pragma unroll
    for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) {
      const int c = threadIdx.x + u * kGenThreads;
      if (c < p.dv) acc[u] += w * to_float(vr[c]);
    }
  }
  T* o = p.out.at(b, r, h);
#pragma unroll
  for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) {
    const int c = threadIdx.x + u * kGenThreads;
    if (c < p.dv) o[c] = from_float<T>(acc[u]);
  }
  if (p.lse && threadIdx.x == 0)
    p.lse[b * p.lse_sb + h * p.lse_sh + r * p.lse_sl] = sum > 0.f ? m + logf(sum) : -INFINITY;
}

// grid (L, B * H). Shared: dk + dv + 4C + 32 floats. Writes dq and the per-query lse and D the
// key kernel needs.
template <class T>
__global__ void __launch_bounds__(kGenThreads) generic_dq_kernel(const __grid_constant__ GenParams<T> p) {
  extern __shared__ float gsm[];
  const int r = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int pos = p.P + r, lo = window_lo(pos, p.chunk), nk = pos - lo + 1;
  float* qf = gsm;
  float* go = qf + p.dk;
  float* red = go + p.dv;
  float* lg = red + 32;
  float* ds = lg + 2 * p.chunk;
  const Rows<T> qsrc = h < p.n_rope ? p.qrot : p.q;
  for (int c = threadIdx.x; c < p.dk; c += kGenThreads) qf[c] = to_float(qsrc.at(b, r, h)[c]);
  for (int c = threadIdx.x; c < p.dv; c += kGenThreads) go[c] = to_float(p.dout.at(b, r, h)[c]);
  __syncthreads();
  float m, sum;
  gen_softmax_row(p, b, h, r, lo, nk, qf, lg, red, m, sum);
  float part = 0.f;
  for (int jj = threadIdx.x; jj < nk; jj += kGenThreads) {
    float d = 0.f;
    if (lg[jj] != 0.f) {
      const T* vr = p.vw.row(b, lo + jj, h);
      for (int c = 0; c < p.dv; ++c) d += go[c] * to_float(vr[c]);
    }
    ds[jj] = d;
    part += lg[jj] * d;
  }
  const float D = gen_block_reduce(part, red, false);
  for (int jj = threadIdx.x; jj < nk; jj += kGenThreads) ds[jj] = p.scale * lg[jj] * (ds[jj] - D);
  __syncthreads();
  const int i = threadIdx.x;  // rotation pair (2i, 2i + 1)
  if (2 * i < p.dk) {
    float y0 = 0.f, y1 = 0.f;
    for (int jj = 0; jj < nk; ++jj) {
      const float w = ds[jj];
      if (w == 0.f) continue;
      const T* kr = p.kw.row(b, lo + jj, h);
      y0 += w * to_float(kr[2 * i]);
      y1 += w * to_float(kr[2 * i + 1]);
    }
    if (h < p.n_rope) {
      float cs, sn;
      rope_cos_sin(p.start + r, p.theta[i], cs, sn);
      const float x0 = y0;
      y0 = x0 * cs + y1 * sn;
      y1 = -x0 * sn + y1 * cs;
    }
    T* dst = p.gq.at(b, r, h);
    dst[2 * i] = from_float<T>(y0);
    dst[2 * i + 1] = from_float<T>(y1);
  }
  if (threadIdx.x == 0) {
    p.lse_ws[static_cast<i64>(bh) * p.L + r] = sum > 0.f ? m + logf(sum) : INFINITY;
    p.d_ws[static_cast<i64>(bh) * p.L + r] = D;
  }
}

// grid (P + L, B * H). Shared: dk + dv + 32 floats. Walks the queries that see key j in order.
template <class T>
__global__ void __launch_bounds__(kGenThreads) generic_dkdv_kernel(const __grid_constant__ GenParams<T> p) {
  extern __shared__ float gsm[];
  const int j = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  float* kf = gsm;
  float* vf = kf + p.dk;
  float* red = vf + p.dv;
  const T* kr = p.kw.row(b, j, h);
  const T* vr = p.vw.row(b, j, h);
  for (int c = threadIdx.x; c < p.dk; c += kGenThreads) kf[c] = to_float(kr[c]);
  for (int c = threadIdx.x; c < p.dv; c += kGenThreads) vf[c] = to_float(vr[c]);
  __syncthreads();
  const Rows<T> qsrc = h < p.n_rope ? p.qrot : p.q;
  const i64 sk = p.segments ? p.seg.key(b, j) : 0;
  const int pos_lo = max(j, p.P);
  const int pos_hi = static_cast<int>(min(last_query_pos(j, p.chunk), static_cast<i64>(p.P) + p.L - 1));
  const int i = threadIdx.x;
  float gv[kGenMaxDv / kGenThreads], gk0 = 0.f, gk1 = 0.f;
#pragma unroll
  for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) gv[u] = 0.f;
  for (int pos = pos_lo; pos <= pos_hi; ++pos) {
    const int r = pos - p.P;
    if (p.segments && p.seg.query(b, r) != sk) continue;
    const T* qr = qsrc.at(b, r, h);
    const T* gr = p.dout.at(b, r, h);
    float sp = 0.f, dpp = 0.f;
    for (int c = threadIdx.x; c < p.dk; c += kGenThreads) sp += to_float(qr[c]) * kf[c];
    for (int c = threadIdx.x; c < p.dv; c += kGenThreads) dpp += to_float(gr[c]) * vf[c];
    const float s = gen_block_reduce(sp, red, false) * p.scale;
    const float dp = gen_block_reduce(dpp, red, false);
    const i64 row = static_cast<i64>(bh) * p.L + r;
    const float pr = expf(s - p.lse_ws[row]);
    const float dsv = p.scale * pr * (dp - p.d_ws[row]);
#pragma unroll
    for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) {
      const int c = threadIdx.x + u * kGenThreads;
      if (c < p.dv) gv[u] += pr * to_float(gr[c]);
    }
    if (2 * i < p.dk) {
      gk0 += dsv * to_float(qr[2 * i]);
      gk1 += dsv * to_float(qr[2 * i + 1]);
    }
  }
  T* dkr = nullptr;
  T* dvr = nullptr;
  bool rotate = false, add_v = false;
  if (j < p.P) {
    if (p.gprev_k.p) dkr = p.gprev_k.at(b, j, h);
    if (p.gprev_v.p) dvr = p.gprev_v.at(b, j, h);
  } else {
    dkr = p.gk.at(b, j - p.P, h);
    dvr = p.gv.at(b, j - p.P, h);
    rotate = h < p.n_rope;
    add_v = p.accumulate_dv;
  }
  if (dkr && 2 * i < p.dk) {
    if (rotate) {
      float cs, sn;
      rope_cos_sin(p.start + (j - p.P), p.theta[i], cs, sn);
      const float x0 = gk0;
      gk0 = x0 * cs + gk1 * sn;
      gk1 = -x0 * sn + gk1 * cs;
    }
    dkr[2 * i] = from_float<T>(gk0);
    dkr[2 * i + 1] = from_float<T>(gk1);
  }
  if (dvr) {
#pragma unroll
    for (int u = 0; u < kGenMaxDv / kGenThreads; ++u) {
      const int c = threadIdx.x + u * kGenThreads;
      if (c < p.dv) dvr[c] = from_float<T>(add_v ? gv[u] + to_float(dvr[c]) : gv[u]);
    }
  }
}

}  // namespace gecko::sliding_chunk_attention::kernels
