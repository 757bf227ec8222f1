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
// Measured (H100, B = 1, L = 16384, D = 4096, N = 16): 0.27 ms against 0.81 ms for the tile kernels
// in the same process; 0.26 ms before the sub-chunk BOS path was compiled in, which took packed
// documents (a BOS every 2000 tokens) from 1.06 to 0.35 ms. One block per stage measured 0.27 ms,
// four blocks with a 3-deep ring or two with a 6-deep one 0.27 ms. The loop is latency-bound, not
// DRAM-bound (~0.33 of copy bandwidth): 16 warps per SM issue 0.46 instructions per cycle and
// scheduler, each warp's block a dependent chain of shared-memory round trips, the 16-step scan and
// mma accumulations (Nsight Compute stalls per instruction: wait 1.7, short scoreboard 1.2, MIO
// throttle 1.0, barrier 0.5).
//
// Layout. A CTA owns 16 channels (one warp each) of one batch row and walks the whole sequence,
// carrying the state in registers of the warp's first 16 lanes. (128 registers a thread allow one
// such CTA per SM; 8-channel CTAs, two per SM, measured slower on an H100, 0.37 against 0.28 ms at
// the 7B shape: their 16-byte row pieces raised DRAM reads by 42%.) Stages of kPair 256-token
// blocks arrive through a cp.async ring kStages stages deep (one 16-byte copy per thread and block)
// and are stored transposed, channel-major, into one of two buffers, so a lane's A fragment is
// four 32-bit shared loads; y overwrites x there and leaves as 16-byte stores while the next stage
// is transposed into the other buffer (two CTA barriers per stage). In a block holding a BOS only
// the 16-token sub-chunks that hold one run token by token (exact resets); the sequence's last
// partial block runs wholly token by token in the same 16 lanes (about 10x the instructions). The state after every kTileTokens tokens goes to Saved::states for the backward. Each
// warp forms its channel's coefficient matrices from the raw parameters while its CTA's first
// blocks are in flight (channel_constants), so the forward needs no workspace but the BOS bits.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "gecko/core/async_copy.cuh"
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
inline constexpr int kPair = 2;              // blocks per stage: staged, and computed, between two barriers
inline constexpr int kXStride = kPair * kBlock + 4;  // bf16 per channel row of the transposed stage
inline constexpr int kScanStride = 20;       // float2 per row of a warp's scan scratch (2-way banks)
inline constexpr int kStages = 4;            // stages in flight: cp.async ring of raw [token][16 channels]
// How far past the sequence's end the kernel's int token indices run (the ring's prefetch).
inline constexpr int kTokensPastEnd = (kStages + 1) * kPair * kBlock;
static_assert(kBlock == 2 * kTileTokens, "states are saved every kTileTokens tokens: after rows 8 and 16");
static_assert(kThreads == 2 * kBlock, "the staging maps a thread to one token and 8 channels");

// A warp's scratch while it forms its channel's constants (channel_constants).
struct ChannelScratch {
  float e[kSub][2 * kMaxStates];  // E[j][2n + part]
  float f[2 * kMaxStates][kSub];  // F[2n + part][i]
  float2 g[kMaxStates];           // g_n
};

// The forward kernel's dynamic shared memory.
struct Shared {
  uint4 ring[kStages][kPair][kThreads];           // raw stages in flight: [token][16 channels] per block
  uint4 bit_ring[kStages][kPair][2];              // their BOS bits (256 a block)
  uint4 bit_cur[2][kPair][2];                     // the bits of the stages in xs
  __nv_bfloat16 xs[2][kWarps][kXStride];          // two transposed stages, a row per channel
  float2 scan[kWarps][kRows][kScanStride];        // each warp's scan scratch
  ChannelScratch scratch[kWarps];                 // each warp's constants, in the prologue
};
inline constexpr std::size_t kSmemBytes = sizeof(Shared);

struct Params : CallParams {
  const std::uint32_t* bos_bits = nullptr;  // [B, blocks, 8]: the BOS mask, a bit per token (bits_kernel)
  float2* states = nullptr;                 // [ceil(L / kTileTokens), B, D, N] (Saved::states) or null
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

// ---- the per-channel constants ------------------------------------------------------------------

// Packs fr[4 q4 .. 4 q4 + 3] = (b0, b1 hi, b0, b1 lo) of B tile q4 for every q4 < kTiles, with
// value(q4, k, col) the B element at row k, column col (k, col < 16 / 8 within the tile).
template <int kTiles, class F>
__device__ __forceinline__ void pack_b_fragments(int lane, std::uint32_t* fr, F value) {
  const int g = lane >> 2, m = lane & 3;
#pragma unroll
  for (int q4 = 0; q4 < kTiles; ++q4) {
    float v[2][2];
#pragma unroll
    for (int bs = 0; bs < 2; ++bs)
#pragma unroll
      for (int e = 0; e < 2; ++e) v[bs][e] = value(q4, 2 * m + e + 8 * bs, g);
    split_bf16x2(v[0][0], v[0][1], fr[4 * q4], fr[4 * q4 + 2]);
    split_bf16x2(v[1][0], v[1][1], fr[4 * q4 + 1], fr[4 * q4 + 3]);
  }
}

// State n of channel d (zeros for n >= N): coefficients_at's float values, and q and p in double
// for the powers of q the chunked kernels' matrices are built from.
struct StateCoefficients {
  float4 qg, gp;
  double qr, qi, p;
};
__device__ __forceinline__ StateCoefficients state_coefficients(const CallParams& c, int d, int n) {
  StateCoefficients s{make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f), 0.0, 0.0, 0.0};
  if (n < c.N) {
    double rho = 0.0, phi = 0.0;
    coefficients_at(c.alpha, c.delta, c.theta, c.gamma, d, n, c.N, s.qg, s.gp, &phi, &rho, &s.p);
    double sn, cs;
    sincos(phi, &sn, &cs);
    s.qr = rho * cs;
    s.qi = rho * sn;
  }
  return s;
}

// The warp's channel d: lane n < 16 forms q_n^t (t = 0..16) by repeated products in double
// (relative error ~1e-15) and from them its state's column of E and row of F; k(t) is summed
// from E in float; then every lane assembles its 40 fragment registers (fr: E, F, K^T, each
// value rounded once to a bf16 hi part and once more to a lo part), and lanes < 16 get their
// state's {q, g} (cq) and {p, Q = q^16} (cp). Run by each warp of the forward kernel before its
// loop (a separate table kernel took 22 us at D = 4096 and a 20 MB round trip through memory).
__device__ __forceinline__ void channel_constants(const Params& p, int d, int lane, ChannelScratch& s,
                                                  std::uint32_t (&fr)[kFragWords], float4& cq, float4& cp) {
  if (lane < kMaxStates) {
    const int n = lane;
    const StateCoefficients c = state_coefficients(p, d, n);
    const float4 qg = c.qg, gp = c.gp;
    const double qr = c.qr, qi = c.qi, pp = c.p, gr = gp.x, gi = gp.y;
    double ar = 1.0, ai = 0.0;  // q^t
    for (int t = 0; t < kSub; ++t) {
      s.e[kSub - 1 - t][2 * n] = static_cast<float>(pp * ar);
      s.e[kSub - 1 - t][2 * n + 1] = static_cast<float>(pp * ai);
      const double nr = ar * qr - ai * qi;  // q^(t+1)
      ai = ar * qi + ai * qr;
      ar = nr;
      s.f[2 * n][t] = static_cast<float>(gr * ar - gi * ai);
      s.f[2 * n + 1][t] = static_cast<float>(-(gr * ai + gi * ar));
    }
    s.g[n] = make_float2(gp.x, gp.y);
    cq = make_float4(qg.x, qg.y, gp.x, gp.y);
    cp = make_float4(static_cast<float>(pp), static_cast<float>(ar), static_cast<float>(ai), 0.f);  // ar + i ai = q^16
  }
  __syncwarp();
  float kt = 0.f;  // k(lane) = sum_n Re(g_n p_n q_n^lane), lanes < 16
  if (lane < kSub) {
#pragma unroll 4
    for (int n = 0; n < kMaxStates; ++n)
      kt += s.g[n].x * s.e[kSub - 1 - lane][2 * n] - s.g[n].y * s.e[kSub - 1 - lane][2 * n + 1];
  }
  // Registers 4 q4 .. 4 q4 + 3 of tile q4: E (n-tiles 0-3), F ([k-step][n-tile] 0-3), K^T (n-tiles 0-1).
  pack_b_fragments<4>(lane, fr, [&](int q4, int kk, int col) { return s.e[kk][8 * q4 + col]; });
  pack_b_fragments<4>(lane, fr + 16,
                      [&](int q4, int kk, int col) { return s.f[16 * (q4 >> 1) + kk][8 * (q4 & 1) + col]; });
  pack_b_fragments<2>(lane, fr + 32, [&](int q4, int kk, int col) {  // K^T[j = kk][i = 8 q4 + col] = k(i - j)
    const int dt = 8 * q4 + col - kk;
    const float kv = __shfl_sync(0xffffffffu, kt, dt < 0 ? 0 : dt);
    return dt >= 0 ? kv : 0.f;
  });
}

// The BOS mask as bits, 256 per block (8 words), so that a block's flags travel with its data
// through the cp.async ring. Grid: (blocks, B) CTAs of kBlock threads, one per token.
template <int kUnused = 0>
__global__ void __launch_bounds__(kBlock) bits_kernel(const std::uint8_t* __restrict__ bos, int L,
                                                      std::uint32_t* __restrict__ bits) {
  const int blk = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y);
  const int t = blk * kBlock + static_cast<int>(threadIdx.x);
  const bool f = t < L && bos[static_cast<long long>(b) * L + t] != 0;
  const unsigned word = __ballot_sync(0xffffffffu, f);
  if ((threadIdx.x & 31) == 0)
    bits[(static_cast<long long>(b) * gridDim.x + blk) * (kBlock / 32) + (threadIdx.x >> 5)] = word;
}

// ---- the forward -------------------------------------------------------------------------------

struct Warp {
  int lane, g, m;
  std::uint32_t* xw;  // this channel's transposed block, as bf16 pairs
  __nv_bfloat16* xe;  // the same, element-wise
  float2* sc;         // [kRows][kScanStride] scan scratch
  float* yfix;        // [kRows][kSub]: y of the sub-chunks that hold a BOS (the prologue's scratch)
};

// The state of lanes < 16 across sub-chunk r of the block (x: the block's transposed row),
// token by token (it holds a BOS).
__device__ __forceinline__ float2 sub_chunk_steps(const __nv_bfloat16* x, const std::uint32_t* bits, int r, float2 q,
                                                  float pp, float2 h) {
#pragma unroll 1
  for (int j = 0; j < kSub; ++j) {
    const int t = kSub * r + j;
    const float2 in = make_float2(pp * __bfloat162float(x[t]), 0.f);
    h = (bits[t >> 5] >> (t & 31)) & 1u ? in : affine(q, h, in);
  }
  return h;
}

// Bit r set when sub-chunk r of the block holds a BOS (bits: the block's 256 BOS bits).
__device__ __forceinline__ unsigned dirty_sub_chunks(const std::uint32_t* bits) {
  unsigned dirty = 0;
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    if ((bits[r >> 1] >> (16 * (r & 1))) & 0xffffu) dirty |= 1u << r;
  return dirty;
}

// Writes a block's output (y, or dx in the backward) over its input in the transposed rows:
// out[nt] holds rows g / g + 8, tokens 8 nt + 2m (+1) of the sub-chunk, the very words the A
// fragment a[] was loaded from, so the residual is a[] itself.
__device__ __forceinline__ void store_block_rows(std::uint32_t* rows, int g, int m, const std::uint32_t (&a)[4],
                                                 const float (&out)[2][4], bool residual) {
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const float2 r0 = residual ? unpack_bf16x2(a[2 * nt]) : make_float2(0.f, 0.f);
    const float2 r1 = residual ? unpack_bf16x2(a[2 * nt + 1]) : make_float2(0.f, 0.f);
    rows[8 * g + 4 * nt + m] = pack_bf16x2(out[nt][0] + r0.x, out[nt][1] + r0.y);
    rows[8 * g + 64 + 4 * nt + m] = pack_bf16x2(out[nt][2] + r1.x, out[nt][3] + r1.y);
  }
}

// One full block on the tensor cores; returns the state after it (lanes < 16). Sub-chunks that
// hold a BOS (bit r of dirty) are exact token by token instead: the scan steps over them one token
// at a time, and their y, recomputed the same way from the state entering them, replaces the
// products' before the store (the products assume no reset inside a sub-chunk). kBos = false (no
// BOS in the block) compiles none of that: with it the no-BOS blocks measured 3-6% slower.
template <bool kBos>
__device__ __forceinline__ float2 block_products(const Warp& w, const std::uint32_t (&fr)[kFragWords], float2 Q,
                                                 float2 h, bool residual, float2* st8, float2* st16,
                                                 const std::uint32_t* bits, unsigned dirty, float4 cq, float pp) {
  const int g = w.g, m = w.m;
  const std::uint32_t a[4] = {w.xw[8 * g + m], w.xw[8 * g + 64 + m], w.xw[8 * g + 4 + m], w.xw[8 * g + 68 + m]};
  float s[4][4] = {};
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    mma16816<__nv_bfloat16>(s[nt], a, fr[4 * nt], fr[4 * nt + 1]);
    mma16816<__nv_bfloat16>(s[nt], a, fr[4 * nt + 2], fr[4 * nt + 3]);
  }
  // X K^T needs no state: issued before the scan so that its latency hides behind it.
  float yv[2][4] = {};
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    mma16816<__nv_bfloat16>(yv[nt], a, fr[32 + 4 * nt], fr[33 + 4 * nt]);
    mma16816<__nv_bfloat16>(yv[nt], a, fr[34 + 4 * nt], fr[35 + 4 * nt]);
  }
  __syncwarp();  // the previous block's readers of the scratch are done
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    w.sc[g * kScanStride + 4 * nt + m] = make_float2(s[nt][0], s[nt][1]);
    w.sc[(g + 8) * kScanStride + 4 * nt + m] = make_float2(s[nt][2], s[nt][3]);
  }
  __syncwarp();
  if (w.lane < kMaxStates && !kBos) {  // H_r (exclusive) over the rows, in place
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
  } else if (w.lane < kMaxStates && kBos) {  // the same with the BOS sub-chunks stepped token by token
#pragma unroll 1
    for (int r = 0; r < kRows; ++r) {
      const float2 sv = w.sc[r * kScanStride + w.lane];
      w.sc[r * kScanStride + w.lane] = h;
      h = (dirty >> r) & 1u ? sub_chunk_steps(w.xe, bits, r, make_float2(cq.x, cq.y), pp, h) : affine(Q, h, sv);
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
  // H F in four independent accumulators (chains of 3 products instead of one of 6).
  float yf[2][2][4] = {};
#pragma unroll
  for (int ks = 0; ks < 2; ++ks)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int fb = 16 + (2 * ks + nt) * 4;
      mma16816<__nv_bfloat16>(yf[nt][ks], hh[ks], fr[fb], fr[fb + 1]);
      mma16816<__nv_bfloat16>(yf[nt][ks], hl[ks], fr[fb], fr[fb + 1]);
      mma16816<__nv_bfloat16>(yf[nt][ks], hh[ks], fr[fb + 2], fr[fb + 3]);
    }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) yv[nt][i] += yf[nt][0][i] + yf[nt][1][i];
  if constexpr (kBos) {
    // y of each BOS sub-chunk from the state entering it (sc), one token at a time (warp sums).
    for (unsigned dm = dirty; dm != 0u; dm &= dm - 1u) {
      const int r = __ffs(dm) - 1;
      float2 hs = w.lane < kMaxStates ? w.sc[r * kScanStride + w.lane] : make_float2(0.f, 0.f);
#pragma unroll 1
      for (int j = 0; j < kSub; ++j) {
        const int t = kSub * r + j;
        const float2 in = make_float2(pp * __bfloat162float(w.xe[t]), 0.f);
        hs = (bits[t >> 5] >> (t & 31)) & 1u ? in : affine(make_float2(cq.x, cq.y), hs, in);
        float v = cq.z * hs.x - cq.w * hs.y;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (w.lane == 0) w.yfix[r * kSub + j] = v;
      }
    }
    __syncwarp();
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1);
        if ((dirty >> row) & 1u) yv[nt][i] = w.yfix[row * kSub + 8 * nt + 2 * m + (i & 1)];
      }
    __syncwarp();  // the fixes are read before the next block's BOS sub-chunks write theirs
  }
  store_block_rows(w.xw, g, m, a, yv, residual);
  return h;
}

// The first lt tokens of a block one by one (a BOS in the block, or the sequence's tail): lane
// n < 16 carries state n; y is the warp's sum. Writes the state at every kTileTokens boundary and
// at the sequence's end (where `states` is given).
__device__ __forceinline__ float2 block_steps(const Warp& w, const std::uint32_t* bits, int lt, float4 cq, float pp,
                                              float2 h, bool residual, int t0, int L, float2* states,
                                              long long tile_stride) {
  const float2 q = make_float2(cq.x, cq.y);
#pragma unroll 1
  for (int r = 0; r < lt; ++r) {
    const float xv = __bfloat162float(w.xe[r]);
    const float2 in = make_float2(pp * xv, 0.f);
    h = (bits[r >> 5] >> (r & 31)) & 1u ? in : affine(q, h, in);
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
  Shared& sh = *reinterpret_cast<Shared*>(smem);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  Warp w;
  w.lane = static_cast<int>(threadIdx.x) & 31;
  w.g = w.lane >> 2;
  w.m = w.lane & 3;
  w.sc = &sh.scan[warp][0][0];
  w.yfix = &sh.scratch[warp].e[0][0];
  const int b = static_cast<int>(blockIdx.y), c0 = static_cast<int>(blockIdx.x) * kWarps, d = c0 + warp;
  const bool active = d < p.D;

  std::uint32_t fr[kFragWords];
  float4 cq = make_float4(0.f, 0.f, 0.f, 0.f), cp = cq;

  // Staging: a stage is kPair blocks; thread -> token tok of each block, channels c0 + 8 half ..
  // + 7 (D % 8 == 0), one 16-byte cp.async per block into a ring of kStages stages (kStages - 1
  // in flight while one is used); threads 0-3 also copy the blocks' 32 bytes of BOS bits each.
  const int tok = static_cast<int>(threadIdx.x) >> 1, half = static_cast<int>(threadIdx.x) & 1;
  const bool half_ok = c0 + 8 * half < p.D;
  const int blocks = (p.L + kBlock - 1) / kBlock, stages = (blocks + kPair - 1) / kPair;
  auto issue = [&](int si) {
    const int slot = si % kStages;
#pragma unroll
    for (int part = 0; part < kPair; ++part) {
      const int bi = si * kPair + part;
      uint4* dst = &sh.ring[slot][part][threadIdx.x];
      const int t = bi * kBlock + tok;
      if (bi < blocks && t < p.L && half_ok) {
        cp_async_16(dst, x + b * p.x_sb + static_cast<long long>(t) * p.x_sl + c0 + 8 * half);
      } else {
        *dst = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    if (threadIdx.x < 2 * kPair) {
      const int part = threadIdx.x >> 1, word = threadIdx.x & 1, bi = si * kPair + part;
      uint4* bd = &sh.bit_ring[slot][part][word];
      if (p.bos_bits && bi < blocks) {
        cp_async_16(bd, p.bos_bits + (static_cast<long long>(b) * blocks + bi) * (kBlock / 32) + 4 * word);
      } else {
        *bd = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    cp_async_commit();
  };
  // The stage in xs[si & 1]: each thread moves its own ring elements (so refilling them needs no
  // barrier, only program order) and threads 0-3 the bits.
  auto transpose = [&](int si) {
    const int slot = si % kStages;
    __nv_bfloat16* dst = &sh.xs[si & 1][0][0];
#pragma unroll
    for (int part = 0; part < kPair; ++part) {
      const uint4 v4 = sh.ring[slot][part][threadIdx.x];
      const auto* v = reinterpret_cast<const __nv_bfloat16*>(&v4);
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[(8 * half + e) * kXStride + part * kBlock + tok] = v[e];
    }
    if (threadIdx.x < 2 * kPair)
      sh.bit_cur[si & 1][threadIdx.x >> 1][threadIdx.x & 1] = sh.bit_ring[slot][threadIdx.x >> 1][threadIdx.x & 1];
  };
  auto write_out = [&](int si) {
    const __nv_bfloat16* src = &sh.xs[si & 1][0][0];
#pragma unroll
    for (int part = 0; part < kPair; ++part) {
      const int t0 = (si * kPair + part) * kBlock;
      if (tok < p.L - t0 && half_ok) {
        uint4 out;
        auto* o = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = src[(8 * half + e) * kXStride + part * kBlock + tok];
        *reinterpret_cast<uint4*>(y + b * p.y_sb + static_cast<long long>(t0 + tok) * p.y_sl + c0 + 8 * half) = out;
      }
    }
  };
#pragma unroll 1
  for (int si = 0; si < kStages; ++si) issue(si);
  // The channel's constants while the first stages are in flight.
  if (active) {
    channel_constants(p, d, w.lane, sh.scratch[warp], fr, cq, cp);
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
  cp_async_wait<kStages - 1>();
  transpose(0);
  issue(kStages);
  __syncthreads();
  // Per stage: compute its blocks | barrier | write-out of this stage, transpose of the next,
  // refill | barrier.
#pragma unroll 1
  for (int si = 0; si < stages; ++si) {
    if (active) {
#pragma unroll
      for (int part = 0; part < kPair; ++part) {
        const int blk = si * kPair + part, t0 = blk * kBlock, lt = min(kBlock, p.L - t0);
        if (lt > 0) {
          w.xe = &sh.xs[si & 1][warp][part * kBlock];
          w.xw = reinterpret_cast<std::uint32_t*>(w.xe);
          const uint4* bc = &sh.bit_cur[si & 1][part][0];
          const uint4 b0 = bc[0], b1 = bc[1];
          const bool any_bos = ((b0.x | b0.y | b0.z | b0.w) | (b1.x | b1.y | b1.z | b1.w)) != 0u;
          if (lt == kBlock) {
            const int tt = t0 / kTileTokens;
            const auto* bw = reinterpret_cast<const std::uint32_t*>(bc);
            float2* s8 = states ? states + tt * tile_stride : nullptr;
            float2* s16 = states ? states + (tt + 1) * tile_stride : nullptr;
            h = any_bos ? block_products<true>(w, fr, Q, h, p.add_residual, s8, s16, bw, dirty_sub_chunks(bw), cq, cp.x)
                        : block_products<false>(w, fr, Q, h, p.add_residual, s8, s16, bw, 0u, cq, cp.x);
          } else {
            h = block_steps(w, reinterpret_cast<const std::uint32_t*>(bc), lt, cq, cp.x, h, p.add_residual, t0,
                            p.L, states, tile_stride);
          }
        }
      }
    }
    cp_async_wait<kStages - 1>();  // this thread's copies of stage si + 1 have landed
    __syncthreads();
    write_out(si);
    transpose(si + 1);
    issue(si + 1 + kStages);
    __syncthreads();
  }
  cp_async_wait<0>();  // no copy outlives the CTA (the ring's tail holds empty groups or zeros)
  if (owns && p.h_out) p.h_out[sidx] = h;
}

}  // namespace gecko::cema::kernels::chunked
