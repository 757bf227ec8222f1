// The complex EMA forward as small matrix products on the tensor cores (bf16 activations, at most
// 16 states per channel): one kernel, x read once, y written once.
//
// Why. The tile kernels of kernel.cuh run the recurrence state by state: 9 fp32 instructions per
// (token, channel, state) over two passes, bound by instruction issue (0.78 ms forward at B = 1,
// L = 16384, D = 4096, N = 16 on an H100, against ~0.09 ms for the bytes). The coefficients q, p, g
// do not depend on the input, so over a sub-chunk of 16 tokens the EMA of one channel is a fixed
// linear map. A block of 256 tokens is 16 sub-chunks r (the mma's rows) of 16 tokens j (its k):
//   S   = X E          what sub-chunk r adds to the state by its end:
//                      E[j][2n], E[j][2n+1] = Re, Im of p_n q_n^(15-j)
//   H_r = Q H_{r-1} + S_{r-1}, Q = q^16: the state entering sub-chunk r (16 lanes, one state each,
//                      fp32, sequential over the 16 rows)
//   Y   = X K^T + H F + x,  K^T[j][i] = k(i - j) for i >= j, k(t) = sum_n Re(g_n p_n q_n^t),
//                      F[2n][i], F[2n+1][i] = Re, -Im of g_n q_n^(i+1)
// x is exact in bf16; E, F, K are split into bf16 hi + lo parts and H likewise, with every product
// but lo x lo kept, so the products carry ~16 mantissa bits and accumulate in fp32: results agree
// with the fp32 recurrence to ~1e-5 (not bitwise: a different summation order).
//
// Layout. A CTA owns 16 channels (one warp each) of one batch row and walks the whole sequence,
// carrying the state in registers of the warp's first 16 lanes. Each 256-token block is staged
// through registers (one 16-byte load per thread, issued a block ahead) and stored transposed,
// channel-major, so a lane's A fragment is four 32-bit shared loads; y overwrites x there and
// leaves as 16-byte stores. Blocks holding a BOS, and the sequence's last partial block, run the
// recurrence token by token in the same 16 lanes instead (about 10x the instructions, exact
// resets). The state after every kTileTokens tokens goes to Saved::states for the backward.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "gecko/core/mma.cuh"
#include "gecko/ops/cema/kernel.cuh"

namespace gecko::cema::kernels::chunked {

inline constexpr int kSub = 16;               // tokens per sub-chunk (the mma's k)
inline constexpr int kRows = 16;              // sub-chunks per block (the mma's m)
inline constexpr int kBlock = kSub * kRows;   // tokens per block
inline constexpr int kWarps = 16;             // channels per CTA, one warp each
inline constexpr int kThreads = 32 * kWarps;  // one thread per (token, 8-channel half) of a block
inline constexpr int kMaxStates = 16;
inline constexpr int kFragWords = 40;        // B-fragment registers per lane and channel: E 16, F 16, K 8
inline constexpr int kXStride = kBlock + 4;  // bf16 per channel row of the transposed block
inline constexpr int kScanStride = 20;       // float2 per row of a warp's scan scratch (2-way banks)
static_assert(kBlock == 2 * kTileTokens, "states are saved every kTileTokens tokens: after rows 8 and 16");
static_assert(kThreads == 2 * kBlock, "the staging maps a thread to one token and 8 channels");

inline constexpr std::size_t kSmemBytes = static_cast<std::size_t>(kWarps) * kXStride * 2 +
                                          static_cast<std::size_t>(kWarps) * kRows * kScanStride * 8 + kBlock;

// Per-channel constants, computed from the raw parameters by table_kernel (in double).
struct Table {
  uint4* frag;   // [D][10][32]: lane l's 40 B-fragment registers (E, F, K; hi, lo) of channel d
  float4* coef;  // [D][16][2]: {Re q, Im q, Re g, Im g}, {p, Re q^16, Im q^16, 0}; zeros for n >= N
};

struct Params {
  int B = 0, L = 0, D = 0, N = 0;
  long long x_sb = 0, x_sl = 0, y_sb = 0, y_sl = 0;
  bool add_residual = false;
  const std::uint8_t* bos = nullptr;  // [B, L] or null
  const float2* h0 = nullptr;         // [B, D, N] or null; read before h_out is written (may alias)
  float2* h_out = nullptr;            // [B, D, N] or null
  float2* states = nullptr;           // [ceil(L / kTileTokens), B, D, N] (Saved::states) or null
  Table tab;
};

__device__ __forceinline__ std::uint32_t pack_bf16x2(float lo_elem, float hi_elem) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo_elem, hi_elem);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
__device__ __forceinline__ float2 unpack_bf16x2(std::uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// (v0, v1) = hi + lo with both parts packed bf16 pairs.
__device__ __forceinline__ void split_bf16x2(float v0, float v1, std::uint32_t& hi, std::uint32_t& lo) {
  hi = pack_bf16x2(v0, v1);
  const float2 h = unpack_bf16x2(hi);
  lo = pack_bf16x2(v0 - h.x, v1 - h.y);
}

// ---- the per-channel table ---------------------------------------------------------------------

// One CTA of 128 threads per channel. Powers q^t (t = 0..16) in double, then every lane's fragment
// values (see the header for E, F, K), each rounded once to hi and once more to lo.
template <int kUnused = 0>
__global__ void __launch_bounds__(128)
    table_kernel(const float* __restrict__ alpha, const float* __restrict__ delta, const float* __restrict__ theta,
                 const float* __restrict__ gamma, int D, int N, Table tab) {
  constexpr int kPowers = kSub + 1;
  __shared__ double s_qr[kMaxStates][kPowers], s_qi[kMaxStates][kPowers];
  __shared__ double s_rho[kMaxStates], s_phi[kMaxStates], s_p[kMaxStates], s_gr[kMaxStates], s_gi[kMaxStates];
  __shared__ double s_k[kSub];
  __shared__ float4 s_q[kMaxStates];
  const int d = blockIdx.x;
  if (threadIdx.x < kMaxStates) {
    const int n = threadIdx.x;
    double rho = 0.0, phi = 0.0, pp = 0.0;
    float4 qg = make_float4(0.f, 0.f, 0.f, 0.f), gp = qg;
    if (n < N) coefficients_at(alpha, delta, theta, gamma, d, n, N, qg, gp, &phi, &rho, &pp);
    s_rho[n] = rho;
    s_phi[n] = phi;
    s_p[n] = pp;
    s_gr[n] = gp.x;
    s_gi[n] = gp.y;
    s_q[n] = make_float4(qg.x, qg.y, gp.x, gp.y);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kMaxStates * kPowers; i += blockDim.x) {
    const int n = i / kPowers, t = i - n * kPowers;
    double sn = 0.0, cs = 0.0, mag = 0.0;
    if (n < N) {
      sincos(t * s_phi[n], &sn, &cs);
      mag = pow(s_rho[n], static_cast<double>(t));
    }
    s_qr[n][t] = mag * cs;
    s_qi[n][t] = mag * sn;
  }
  __syncthreads();
  if (threadIdx.x < kSub) {
    const int t = threadIdx.x;
    double k = 0.0;
    for (int n = 0; n < kMaxStates; ++n) k += s_p[n] * (s_gr[n] * s_qr[n][t] - s_gi[n] * s_qi[n][t]);
    s_k[t] = k;
  }
  __syncthreads();
  auto* frag = reinterpret_cast<std::uint32_t*>(tab.frag) + static_cast<long long>(d) * 10 * 32 * 4;
  for (int i = threadIdx.x; i < kFragWords * 32; i += blockDim.x) {
    const int r = i / 32, l = i - r * 32, g = l >> 2, m = l & 3;
    double v[2];
    bool lo;
    for (int e = 0; e < 2; ++e) {
      if (r < 16) {  // E: n-tile r / 4 of the 32 state columns; b0 / b1 rows j = 2m + e (+ 8)
        const int w = r & 3, j = 2 * m + e + 8 * (w & 1), c = 8 * (r >> 2) + g, n = c >> 1, t = kSub - 1 - j;
        lo = (w >> 1) != 0;
        v[e] = s_p[n] * ((c & 1) ? s_qi[n][t] : s_qr[n][t]);
      } else if (r < 32) {  // F: k-step ks covers state columns 16 ks .. 16 ks + 15; n-tile nt tokens
        const int rr = r - 16, ks = rr >> 3, nt = (rr >> 2) & 1, w = rr & 3;
        const int n = 8 * ks + m + 4 * (w & 1), i_tok = 8 * nt + g;
        lo = (w >> 1) != 0;
        const double zr = s_gr[n] * s_qr[n][i_tok + 1] - s_gi[n] * s_qi[n][i_tok + 1];
        const double zi = s_gr[n] * s_qi[n][i_tok + 1] + s_gi[n] * s_qr[n][i_tok + 1];
        v[e] = e == 0 ? zr : -zi;
      } else {  // K^T: rows j, columns i (n-tile nt)
        const int rr = r - 32, nt = rr >> 2, w = rr & 3;
        const int j = 2 * m + e + 8 * (w & 1), i_tok = 8 * nt + g;
        lo = (w >> 1) != 0;
        v[e] = i_tok >= j ? s_k[i_tok - j] : 0.0;
      }
    }
    const __nv_bfloat16 h0 = __float2bfloat16_rn(static_cast<float>(v[0])),
                        h1 = __float2bfloat16_rn(static_cast<float>(v[1]));
    std::uint32_t word;
    if (!lo) {
      word = pack_bf16x2(__bfloat162float(h0), __bfloat162float(h1));
    } else {
      word = pack_bf16x2(static_cast<float>(v[0] - static_cast<double>(__bfloat162float(h0))),
                         static_cast<float>(v[1] - static_cast<double>(__bfloat162float(h1))));
    }
    frag[((r >> 2) * 32 + l) * 4 + (r & 3)] = word;
  }
  if (threadIdx.x < kMaxStates) {
    const int n = threadIdx.x;
    float4* c = tab.coef + (static_cast<long long>(d) * kMaxStates + n) * 2;
    c[0] = s_q[n];
    c[1] = make_float4(static_cast<float>(s_p[n]) * (n < N ? 1.f : 0.f), static_cast<float>(s_qr[n][kSub]),
                       static_cast<float>(s_qi[n][kSub]), 0.f);
  }
}

// ---- the forward -------------------------------------------------------------------------------

struct Warp {
  int lane, g, m;
  std::uint32_t* xw;  // this channel's transposed block, as bf16 pairs
  __nv_bfloat16* xe;  // the same, element-wise
  float2* sc;         // [kRows][kScanStride] scan scratch
};

// One full block without a BOS on the tensor cores; returns the state after it (lanes < 16).
__device__ __forceinline__ float2 block_products(const Warp& w, const std::uint32_t (&fr)[kFragWords], float2 Q,
                                                 float2 h, bool residual, float2* st8, float2* st16) {
  const int g = w.g, m = w.m;
  const std::uint32_t a[4] = {w.xw[8 * g + m], w.xw[8 * g + 64 + m], w.xw[8 * g + 4 + m], w.xw[8 * g + 68 + m]};
  float s[4][4] = {};
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    mma16816<__nv_bfloat16>(s[nt], a, fr[4 * nt], fr[4 * nt + 1]);
    mma16816<__nv_bfloat16>(s[nt], a, fr[4 * nt + 2], fr[4 * nt + 3]);
  }
  __syncwarp();  // the previous block's readers of the scratch are done
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    w.sc[g * kScanStride + 4 * nt + m] = make_float2(s[nt][0], s[nt][1]);
    w.sc[(g + 8) * kScanStride + 4 * nt + m] = make_float2(s[nt][2], s[nt][3]);
  }
  __syncwarp();
  if (w.lane < kMaxStates) {  // H_r (exclusive) over the rows, in place
    float2 sv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) sv[r] = w.sc[r * kScanStride + w.lane];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      w.sc[r * kScanStride + w.lane] = h;
      h = affine(Q, h, sv[r]);
      if (r == kRows / 2 - 1 && st8) *st8 = h;
    }
    if (st16) *st16 = h;
  }
  __syncwarp();
  std::uint32_t hh[2][4], hl[2][4];
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    const int s0 = 8 * ks + m, s1 = s0 + 4;
    const float2 v0 = w.sc[g * kScanStride + s0], v1 = w.sc[(g + 8) * kScanStride + s0];
    const float2 v2 = w.sc[g * kScanStride + s1], v3 = w.sc[(g + 8) * kScanStride + s1];
    split_bf16x2(v0.x, v0.y, hh[ks][0], hl[ks][0]);
    split_bf16x2(v1.x, v1.y, hh[ks][1], hl[ks][1]);
    split_bf16x2(v2.x, v2.y, hh[ks][2], hl[ks][2]);
    split_bf16x2(v3.x, v3.y, hh[ks][3], hl[ks][3]);
  }
  float yv[2][4] = {};
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int kb = 32 + 4 * nt;
    mma16816<__nv_bfloat16>(yv[nt], a, fr[kb], fr[kb + 1]);
    mma16816<__nv_bfloat16>(yv[nt], a, fr[kb + 2], fr[kb + 3]);
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      const int fb = 16 + (2 * ks + nt) * 4;
      mma16816<__nv_bfloat16>(yv[nt], hh[ks], fr[fb], fr[fb + 1]);
      mma16816<__nv_bfloat16>(yv[nt], hl[ks], fr[fb], fr[fb + 1]);
      mma16816<__nv_bfloat16>(yv[nt], hh[ks], fr[fb + 2], fr[fb + 3]);
    }
  }
  // yv[nt] rows g / g + 8, tokens 8 nt + 2m (+1) of the sub-chunk: the words a[] came from.
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const float2 x0 = residual ? unpack_bf16x2(a[2 * nt]) : make_float2(0.f, 0.f);
    const float2 x1 = residual ? unpack_bf16x2(a[2 * nt + 1]) : make_float2(0.f, 0.f);
    w.xw[8 * g + 4 * nt + m] = pack_bf16x2(yv[nt][0] + x0.x, yv[nt][1] + x0.y);
    w.xw[8 * g + 64 + 4 * nt + m] = pack_bf16x2(yv[nt][2] + x1.x, yv[nt][3] + x1.y);
  }
  return h;
}

// The first lt tokens of a block one by one (a BOS in the block, or the sequence's tail): lane
// n < 16 carries state n; y is the warp's sum. Writes the state at every kTileTokens boundary and
// at the sequence's end (where `states` is given).
__device__ __forceinline__ float2 block_steps(const Warp& w, const unsigned char* bs, int lt, float4 cq, float pp,
                                              float2 h, bool residual, int t0, int L, float2* states,
                                              long long tile_stride) {
  const float2 q = make_float2(cq.x, cq.y);
#pragma unroll 1
  for (int r = 0; r < lt; ++r) {
    const float xv = __bfloat162float(w.xe[r]);
    const float2 in = make_float2(pp * xv, 0.f);
    h = bs[r] ? in : affine(q, h, in);
    float yv = cq.z * h.x - cq.w * h.y;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) yv += __shfl_xor_sync(0xffffffffu, yv, off);
    if (residual) yv += xv;
    __syncwarp();  // every lane has read x_r before lane 0 overwrites it
    if (w.lane == 0) w.xe[r] = __float2bfloat16_rn(yv);
    const int t = t0 + r;
    if (states && ((t + 1) % kTileTokens == 0 || t + 1 == L)) states[(t / kTileTokens) * tile_stride] = h;
  }
  return h;
}

template <int kUnused = 0>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(Params p, const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr std::size_t kXBytes = static_cast<std::size_t>(kWarps) * kXStride * 2;
  auto* xs = reinterpret_cast<__nv_bfloat16*>(smem);                                 // [kWarps][kXStride]
  auto* scan = reinterpret_cast<float2*>(smem + kXBytes);                            // [kWarps][kRows][kScanStride]
  auto* bs = reinterpret_cast<unsigned char*>(scan + kWarps * kRows * kScanStride);  // [kBlock]
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  Warp w;
  w.lane = static_cast<int>(threadIdx.x) & 31;
  w.g = w.lane >> 2;
  w.m = w.lane & 3;
  w.xe = xs + warp * kXStride;
  w.xw = reinterpret_cast<std::uint32_t*>(w.xe);
  w.sc = scan + warp * kRows * kScanStride;
  const int b = static_cast<int>(blockIdx.y), c0 = static_cast<int>(blockIdx.x) * kWarps, d = c0 + warp;
  const bool active = d < p.D;

  std::uint32_t fr[kFragWords];
  float4 cq = make_float4(0.f, 0.f, 0.f, 0.f), cp = cq;
  if (active) {
    const uint4* t = p.tab.frag + static_cast<long long>(d) * 10 * 32 + w.lane;
#pragma unroll
    for (int i = 0; i < 10; ++i) {
      const uint4 v = __ldg(t + i * 32);
      fr[4 * i] = v.x;
      fr[4 * i + 1] = v.y;
      fr[4 * i + 2] = v.z;
      fr[4 * i + 3] = v.w;
    }
    if (w.lane < kMaxStates) {
      cq = __ldg(p.tab.coef + (static_cast<long long>(d) * kMaxStates + w.lane) * 2);
      cp = __ldg(p.tab.coef + (static_cast<long long>(d) * kMaxStates + w.lane) * 2 + 1);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kFragWords; ++i) fr[i] = 0u;
  }
  const bool owns = active && w.lane < p.N;
  const long long sidx = (static_cast<long long>(b) * p.D + d) * p.N + w.lane;
  const long long tile_stride = static_cast<long long>(p.B) * p.D * p.N;
  float2 h = make_float2(0.f, 0.f);
  if (owns && p.h0) h = p.h0[sidx];
  float2* states = owns ? p.states : nullptr;
  if (states) states += sidx;
  const float2 Q = make_float2(cp.y, cp.z);

  // Staging: thread -> token tok of the block, channels c0 + 8 half .. + 7 (D % 8 == 0).
  const int tok = static_cast<int>(threadIdx.x) >> 1, half = static_cast<int>(threadIdx.x) & 1;
  const bool half_ok = c0 + 8 * half < p.D;
  uint4 stage = make_uint4(0u, 0u, 0u, 0u);
  unsigned char flag = 0;
  auto fetch = [&](int t0) {
    stage = make_uint4(0u, 0u, 0u, 0u);
    flag = 0;
    if (t0 + tok < p.L) {
      if (half_ok) stage = __ldg(reinterpret_cast<const uint4*>(x + b * p.x_sb + (t0 + tok) * p.x_sl + c0 + 8 * half));
      if (p.bos && half == 0) flag = p.bos[static_cast<long long>(b) * p.L + t0 + tok] != 0 ? 1 : 0;
    }
  };
  const int blocks = (p.L + kBlock - 1) / kBlock;
  fetch(0);
#pragma unroll 1
  for (int blk = 0; blk < blocks; ++blk) {
    const int t0 = blk * kBlock, lt = min(kBlock, p.L - t0);
    __syncthreads();  // the previous block's write-out is done with xs
    {
      const auto* v = reinterpret_cast<const __nv_bfloat16*>(&stage);
#pragma unroll
      for (int e = 0; e < 8; ++e) xs[(8 * half + e) * kXStride + tok] = v[e];
      if (half == 0) bs[tok] = flag;
    }
    const bool any_bos = __syncthreads_or(flag) != 0;
    if (blk + 1 < blocks) fetch(t0 + kBlock);
    if (active) {
      if (!any_bos && lt == kBlock) {
        const int tt = t0 / kTileTokens;
        h = block_products(w, fr, Q, h, p.add_residual, states ? states + tt * tile_stride : nullptr,
                           states ? states + (tt + 1) * tile_stride : nullptr);
      } else {
        h = block_steps(w, bs, lt, cq, cp.x, h, p.add_residual, t0, p.L, states, tile_stride);
      }
    }
    __syncthreads();
    if (tok < lt && half_ok) {
      uint4 out;
      auto* o = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = xs[(8 * half + e) * kXStride + tok];
      *reinterpret_cast<uint4*>(y + b * p.y_sb + (t0 + tok) * p.y_sl + c0 + 8 * half) = out;
    }
  }
  if (owns && p.h_out) p.h_out[sidx] = h;
}

}  // namespace gecko::cema::kernels::chunked
