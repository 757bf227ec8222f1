// CUDA kernels for the complex EMA (device code only; launch.cuh launches them).
//
// Per (batch row b, channel d, state n) the forward is the complex recurrence
//   h_t = a_t h_{t-1} + p x_t,  a_t = BOS(t) ? 0 : q,   y_t = sum_n Re(g h_t) (+ x_t)
// and the backward its adjoint in reverse time (spec 2.4). Both split time into tiles of
// kTileTokens tokens and channels into slabs of `dc` channels; one CTA owns one (tile, slab) of
// one batch row and keeps its inputs in shared memory, so x (and dy) are read from DRAM once:
//   1. load the tile (cp.async) and its BOS flags;
//   2. pass 1: run the recurrence over the tile from a zero state, giving the tile's aggregate:
//      state_out = A state_in + U, with A = q^Tt (0 when a BOS lies in the tile);
//   3. deterministic decoupled look-back over the tiles of the same (batch row, slab) chain
//      (core/lookback.cuh finds the nearest published inclusive state; the aggregates after it
//      are applied in order, so the result is bitwise the same whichever one is found);
//   4. pass 2: re-run the tile from the true entering state, producing y (dx) in shared memory
//      and, in the backward, the per-tile sums for the parameter gradients.
//
// Thread layout: a thread owns NS states of one channel (all of them when N <= NS, else `tpc`
// threads share a channel and sum their parts of y / dx with a short shuffle tree). The
// coefficients and the NS states live in registers, so one step costs only FMAs and the sum over
// n is a register sum (4 partial accumulators for instruction-level parallelism).
//
// Cost per (token, channel, state), in fp32 instructions:
//   forward  pass 1: 3 (two tokens per step: k <- q^2 k + (q x_r + x_{r+1}), 6 instructions)
//            pass 2: 6 (complex multiply-add with a real input, 3 FMA + 1 MUL, + 2 FMA for Re(g p k))
//   backward pass 1: 3 (the adjoint of dy alone, R below, two tokens per step)
//            pass 2: 14 (fast path) / 20 (with dh_out)
// (pass 1 runs one token per step, 4 instructions, in tiles that hold a BOS).
// which makes both passes bound by FMA issue, not by DRAM.
//
// Backward formulation (w = conj(q), c = conj(g), all per (b, d, n)). With
//   R_t = dy_t + conj(a_{t+1}) R_{t+1}         (adjoint of y alone, without g)
//   G_t = c dy_t + conj(a_{t+1}) G_{t+1}       (= dl/dh_t; G = c R when dh_out = 0)
//   Q_s = sum_{t>s, no BOS in (s,t]} w^{t-1-s} G_t   (restricted to the tile: Q^tl)
// the gradients are
//   dx_t = sum_n p Re G_t,   dp = sum_t x_t Re G_t,   dg = p sum_s x_s R_s + conj(h0) conj(a_0) R_0,
//   dq   = sum over tiles [ p sum_{s in tile} x_s Q^tl_s + conj(h_in) Q^tl_{s0-1} ],   dh0 = conj(a_0) G_0,
// where h_in is the forward state entering the tile, saved by the forward (one complex per tile
// and state). Everything runs in reverse time: the states h_t are never recomputed, and the only
// state carried across tiles is one complex number per (b, d, n): R (fast path, dh_out absent,
// G = c R) or G (general path).
//
// The parameter-gradient sums of a chain are accumulated across its tiles in tile order (each tile
// waits for its predecessor's turn, then adds), and over the batch in index order by a final
// kernel: no floating-point atomics, bitwise reproducible.
#pragma once

#include <cstdint>

#include "gecko/core/dtype.hpp"
#include "gecko/core/lookback.cuh"
#include "gecko/core/vector_io.cuh"

namespace gecko::cema::kernels {

// Tokens per time tile. 128 gives several thousand CTAs at the 7B shape (L = 16384, D = 4096:
// 128 tiles x 32 slabs) while the per-tile look-back data (2 complex per channel and state) stays
// ~2 bytes per (token, channel), below the 4 bytes of x and y themselves. Tiles are a fixed size
// so the forward's saved states line up with the backward's tiles.
inline constexpr int kTileTokens = 128;
inline constexpr int kMaxThreads = 128;  // per CTA: 4 warps

struct Tiling {
  int batch, length, channels, states;  // B, L, D, N
  int tpc;         // threads per channel (power of two)
  int dc;          // channels per CTA (slab width)
  int slabs;       // ceil(D / dc)
  int chains;      // B * slabs
  int time_tiles;  // ceil(L / kTileTokens)
  int vec;         // elements per vector access of the tile (1, or 16 bytes' worth)
};

// Coefficients, computed on the device from the raw parameters by coefficient_kernel, [D][N].
struct Coefficients {
  const float4* qg;  // {Re q, Im q, p Re g, p Im g}
  const float4* gp;  // {Re g, Im g, p, 0}
  const float2* pw;  // q^kTileTokens
};

struct ForwardParams {
  Tiling tl;
  long long x_sb, x_sl, y_sb, y_sl;  // batch and time strides, elements
  bool add_residual;
  const std::uint8_t* bos;  // [B, L] or null
  const float2* h0;         // [B, D, N] or null
  float2* h_out;            // [B, D, N] or null
  float2* states;           // [time_tiles, B, D, N]: state after each tile (inclusive; saved or workspace)
  float2* agg;              // [time_tiles, B, D, N]: each tile's U
  Coefficients cf;
  unsigned* ticket;
  unsigned* flags;   // [time_tiles, chains]
  unsigned* resets;  // [time_tiles, chains]: 1 when the tile holds a BOS (its A is 0)
};

struct BackwardParams {
  Tiling tl;
  long long x_sb, x_sl, dy_sb, dy_sl, dx_sb, dx_sl;
  bool add_residual;
  const std::uint8_t* bos;
  const float2* h0;      // [B, D, N] or null
  const float2* dh_out;  // [B, D, N] (general path) or null
  const float2* states;  // [time_tiles, B, D, N] saved by the forward
  float2* dh0;           // [B, D, N] or null
  float2* agg;           // [time_tiles, B, D, N] indexed by step (0 = last time tile)
  float2* incl;          // [time_tiles, B, D, N]
  float* slot;           // [B, 5, D, N]: dp, Re dg, Im dg, Re dq, Im dq summed over the tiles; or null
  Coefficients cf;
  unsigned* ticket;
  unsigned* flags;
  unsigned* resets;
  unsigned* turn;  // [chains]: how many tiles of the chain have added their gradient sums
};

// ---- small helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(fmaf(a.x, b.x, -a.y * b.y), fmaf(a.x, b.y, a.y * b.x));
}
__device__ __forceinline__ float2 conjf2(float2 a) { return make_float2(a.x, -a.y); }
__device__ __forceinline__ float2 cadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 cscale(float s, float2 a) { return make_float2(s * a.x, s * a.y); }

// A s + U: how an aggregate acts on a state. The publisher of an inclusive state and every tile
// that replays the aggregate call this same function on the same operands, so the results agree
// bitwise.
__device__ __forceinline__ float2 affine(float2 A, float2 s, float2 U) {
  return make_float2(fmaf(A.x, s.x, fmaf(-A.y, s.y, U.x)), fmaf(A.x, s.y, fmaf(A.y, s.x, U.y)));
}

// w^e by binary powering (only for a partial first tile of the general backward).
__device__ __forceinline__ float2 cpow(float2 w, int e) {
  float2 r = make_float2(1.f, 0.f);
  while (e) {
    if (e & 1) r = cmul(r, w);
    w = cmul(w, w);
    e >>= 1;
  }
  return r;
}

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\n" ::);
  asm volatile("cp.async.wait_group 0;\n" ::);
}

// Issues the copy of rows [t0, t0 + lt) x channels [c0, c0 + dc) of a [B, L, D] tensor into
// smem [lt][dc] (cp.async when vectorised; channels >= D are zero-filled). Complete with
// cp_async_wait_all() and a barrier.
template <class T>
__device__ __forceinline__ void load_tile(T* dst, const T* src, long long sb, long long sl, int b, int t0, int lt,
                                          int c0, int dc, int D, int vec) {
  if (vec > 1) {
    constexpr int V = kVec16<T>;
    const int words = dc / V;
    for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
      const int r = i / words, w = i - r * words;
      const int col = c0 + w * V;
      T* s = dst + r * dc + w * V;
      if (col < D) {
        cp_async16(s, src + b * sb + (t0 + r) * sl + col);
      } else {
        *reinterpret_cast<Packed<T, V>*>(s) = Packed<T, V>{};
      }
    }
  } else {
    for (int i = threadIdx.x; i < lt * dc; i += blockDim.x) {
      const int r = i / dc, cc = i - r * dc;
      dst[r * dc + cc] = c0 + cc < D ? src[b * sb + (t0 + r) * sl + c0 + cc] : from_float<T>(0.f);
    }
  }
}

template <class T>
__device__ __forceinline__ void store_tile(T* dst, const T* src, long long sb, long long sl, int b, int t0, int lt,
                                           int c0, int dc, int D, int vec) {
  if (vec > 1) {
    constexpr int V = kVec16<T>;
    const int words = dc / V;
    for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
      const int r = i / words, w = i - r * words;
      const int col = c0 + w * V;
      if (col < D)
        *reinterpret_cast<Packed<T, V>*>(dst + b * sb + (t0 + r) * sl + col) =
            *reinterpret_cast<const Packed<T, V>*>(src + r * dc + w * V);
    }
  } else {
    for (int i = threadIdx.x; i < lt * dc; i += blockDim.x) {
      const int r = i / dc, cc = i - r * dc;
      if (c0 + cc < D) dst[b * sb + (t0 + r) * sl + c0 + cc] = src[r * dc + cc];
    }
  }
}

// Copies the tile's BOS flags into smem; returns (to every thread) whether any is set. Also a
// CTA barrier.
__device__ __forceinline__ bool load_bos(unsigned char* dst, const std::uint8_t* bos, long long row, int lt) {
  int any = 0;
  for (int i = threadIdx.x; i < lt; i += blockDim.x) {
    const unsigned char f = bos && bos[row + i] != 0 ? 1 : 0;
    dst[i] = f;
    any |= f;
  }
  return __syncthreads_or(any) != 0;
}

// Sum over the tpc threads (adjacent lanes) that share one channel.
__device__ __forceinline__ float channel_sum(float v, int tpc) {
  for (int off = 1; off < tpc; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Where one thread's NS states live.
struct Lane {
  int c;           // channel within the slab
  int part;        // which NS-block of the channel's states
  int d;           // global channel
  int nvalid;      // how many of the NS states exist (0 for channels >= D)
  long long coef;  // d * N + n0: index into the [D][N] coefficient arrays
  long long off;   // (b * D + d) * N + n0: index into [.., B, D, N] state arrays
};

template <int NS>
__device__ __forceinline__ Lane make_lane(const Tiling& tl, int b, int c0) {
  Lane l;
  l.c = static_cast<int>(threadIdx.x) / tl.tpc;
  l.part = static_cast<int>(threadIdx.x) - l.c * tl.tpc;
  l.d = c0 + l.c;
  const int n0 = l.part * NS;
  l.nvalid = l.d < tl.channels ? max(0, min(NS, tl.states - n0)) : 0;
  l.coef = static_cast<long long>(l.d) * tl.states + n0;
  l.off = (static_cast<long long>(b) * tl.channels + l.d) * tl.states + n0;
  return l;
}

// The state entering chain position `pos` (> 0): one warp finds the nearest inclusive state, then
// every thread applies the aggregates after it to its own NS states, in order. A (the aggregate's
// multiplier) is per state; tiles flagged in `resets` replace the state by their U.
template <int NS>
__device__ __forceinline__ void look_back(unsigned* flags, const unsigned* resets, const float2* aggs,
                                          const float2* incls, int chains, int chain, int pos, long long pos_stride,
                                          const Lane& l, const float2 (&A)[NS], float2 (&s)[NS], int* s_found) {
  if (threadIdx.x < 32) {
    const int k = lookback::warp_find_inclusive(flags + chain, chains, pos);
    if (threadIdx.x == 0) *s_found = k;
  }
  __syncthreads();
  const int k = *s_found;
#pragma unroll
  for (int j = 0; j < NS; ++j)
    s[j] = j < l.nvalid ? __ldcg(incls + k * pos_stride + l.off + j) : make_float2(0.f, 0.f);
  for (int i = k + 1; i < pos; ++i) {
    const unsigned reset = __ldcg(resets + static_cast<long long>(i) * chains + chain);
    float2 u[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) u[j] = j < l.nvalid ? __ldcg(aggs + i * pos_stride + l.off + j) : make_float2(0.f, 0.f);
#pragma unroll
    for (int j = 0; j < NS; ++j) s[j] = reset ? u[j] : affine(A[j], s[j], u[j]);
  }
}

// Publishes this tile's aggregate (U and whether it resets) and raises its flag.
template <int NS>
__device__ __forceinline__ void publish_aggregate(float2* aggs, unsigned* resets, unsigned* flags, int chains, int chain,
                                                  int pos, long long pos_stride, const Lane& l, const float2 (&U)[NS],
                                                  bool reset) {
#pragma unroll
  for (int j = 0; j < NS; ++j)
    if (j < l.nvalid) aggs[pos * pos_stride + l.off + j] = U[j];
  if (threadIdx.x == 0) resets[static_cast<long long>(pos) * chains + chain] = reset ? 1u : 0u;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) lookback::store_flag(flags + static_cast<long long>(pos) * chains + chain, lookback::kAggregate);
}

template <int NS>
__device__ __forceinline__ void publish_inclusive(float2* incls, unsigned* flags, int chains, int chain, int pos,
                                                  long long pos_stride, const Lane& l, const float2 (&S)[NS]) {
#pragma unroll
  for (int j = 0; j < NS; ++j)
    if (j < l.nvalid) incls[pos * pos_stride + l.off + j] = S[j];
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) lookback::store_flag(flags + static_cast<long long>(pos) * chains + chain, lookback::kInclusive);
}

// ---- coefficients -----------------------------------------------------------------------------

// p, q, g and q^kTileTokens per (d, n), from the raw parameters, in double then rounded once.
// p is clamped to >= 1e-30 so that the forward's scaled state h / p stays finite.
__global__ void coefficient_kernel(const float* __restrict__ alpha, const float* __restrict__ delta,
                                   const float* __restrict__ theta, const float* __restrict__ gamma, int D, int N,
                                   float4* __restrict__ qg, float4* __restrict__ gp, float2* __restrict__ pw) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(D) * N) return;
  const int d = static_cast<int>(i / N), n = static_cast<int>(i - static_cast<long long>(d) * N);
  const double kPi = 3.14159265358979323846;
  const double sa = 1.0 / (1.0 + exp(-static_cast<double>(alpha[i])));
  const double sd = 1.0 / (1.0 + exp(-static_cast<double>(delta[i])));
  const double st = 1.0 / (1.0 + exp(-static_cast<double>(theta[d])));
  const double phi = static_cast<double>(n + 1) * (2.0 * kPi / N) * st;
  const double rho = 1.0 - sa * sd;
  double sn, cs, sn_t, cs_t;
  sincos(phi, &sn, &cs);
  sincos(phi * kTileTokens, &sn_t, &cs_t);
  const double rho_t = pow(rho, static_cast<double>(kTileTokens));
  const float p = fmaxf(static_cast<float>(sa), 1e-30f);
  const float gr = gamma[2 * i], gi = gamma[2 * i + 1];
  qg[i] = make_float4(static_cast<float>(rho * cs), static_cast<float>(rho * sn), p * gr, p * gi);
  gp[i] = make_float4(gr, gi, p, 0.f);
  pw[i] = make_float2(static_cast<float>(rho_t * cs_t), static_cast<float>(rho_t * sn_t));
}

// ---- forward ----------------------------------------------------------------------------------

// Pass 1: the tile from a zero state, in the scaled state k = h / p (k_t = a_t k_{t-1} + x_t).
template <bool kBos, class T, int NS>
__device__ __forceinline__ void forward_pass1(const T* xs, const unsigned char* bs, int lt, int dc, int c,
                                              const float (&qr)[NS], const float (&qi)[NS], float (&kr)[NS],
                                              float (&ki)[NS]) {
#pragma unroll 2
  for (int r = 0; r < lt; ++r) {
    if (kBos && bs[r]) {
#pragma unroll
      for (int j = 0; j < NS; ++j) kr[j] = ki[j] = 0.f;
    }
    const float xv = to_float(xs[r * dc + c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float nr = fmaf(qr[j], kr[j], fmaf(-qi[j], ki[j], xv));
      const float ni = fmaf(qr[j], ki[j], qi[j] * kr[j]);
      kr[j] = nr;
      ki[j] = ni;
    }
  }
}

// Pass 1 without a BOS in the tile, two tokens per step: k <- q^2 k + (q x_r + x_{r+1}), 3 instead
// of 4 instructions per token and state (only the tile's end state is needed here).
template <class T, int NS>
__device__ __forceinline__ void forward_pass1_pairs(const T* xs, int lt, int dc, int c, const float (&qr)[NS],
                                                    const float (&qi)[NS], float (&kr)[NS], float (&ki)[NS]) {
  float q2r[NS], q2i[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    q2r[j] = fmaf(qr[j], qr[j], -qi[j] * qi[j]);
    q2i[j] = 2.f * qr[j] * qi[j];
  }
  int r = 0;
  if (lt & 1) {
    const float xv = to_float(xs[c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float nr = fmaf(qr[j], kr[j], fmaf(-qi[j], ki[j], xv));
      const float ni = fmaf(qr[j], ki[j], qi[j] * kr[j]);
      kr[j] = nr;
      ki[j] = ni;
    }
    r = 1;
  }
#pragma unroll 1
  for (; r < lt; r += 2) {
    const float x0 = to_float(xs[r * dc + c]), x1 = to_float(xs[(r + 1) * dc + c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float cr = fmaf(qr[j], x0, x1), ci = qi[j] * x0;
      const float nr = fmaf(q2r[j], kr[j], fmaf(-q2i[j], ki[j], cr));
      const float ni = fmaf(q2r[j], ki[j], fmaf(q2i[j], kr[j], ci));
      kr[j] = nr;
      ki[j] = ni;
    }
  }
}

// Pass 2: the tile from the true entering state; y_t = sum_n Re(g p k_t) (+ x_t) overwrites x_t
// in shared memory.
template <bool kBos, class T, int NS>
__device__ __forceinline__ void forward_pass2(T* xs, const unsigned char* bs, int lt, int dc, int c, int tpc,
                                              bool writer, bool residual, const float (&qr)[NS], const float (&qi)[NS],
                                              const float (&gr)[NS], const float (&gi)[NS], float (&kr)[NS],
                                              float (&ki)[NS]) {
#pragma unroll 1
  for (int r = 0; r < lt; ++r) {
    if (kBos && bs[r]) {
#pragma unroll
      for (int j = 0; j < NS; ++j) kr[j] = ki[j] = 0.f;
    }
    const float xv = to_float(xs[r * dc + c]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float nr = fmaf(qr[j], kr[j], fmaf(-qi[j], ki[j], xv));
      const float ni = fmaf(qr[j], ki[j], qi[j] * kr[j]);
      kr[j] = nr;
      ki[j] = ni;
      acc[j & 3] = fmaf(gr[j], nr, fmaf(-gi[j], ni, acc[j & 3]));
    }
    float yv = channel_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), tpc);
    if (residual) yv += xv;
    if (writer) xs[r * dc + c] = from_float<T>(yv);
  }
}

template <class T, int NS>
__global__ void __launch_bounds__(kMaxThreads, 4) forward_kernel(ForwardParams p, const T* __restrict__ x,
                                                                 T* __restrict__ y) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);                                                 // [Tt][dc]
  unsigned char* bs = smem + static_cast<std::size_t>(kTileTokens) * dc * sizeof(T);  // [Tt]
  __shared__ unsigned s_ticket;
  __shared__ int s_found;

  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const int chains = tl.chains;
  const int tt = static_cast<int>(s_ticket / chains), chain = static_cast<int>(s_ticket % chains);
  const int b = chain / tl.slabs, slab = chain - b * tl.slabs;
  const int t0 = tt * kTileTokens, lt = min(kTileTokens, tl.length - t0), c0 = slab * dc;
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(xs, x, p.x_sb, p.x_sl, b, t0, lt, c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(b) * tl.length + t0, lt);  // + barrier
  const Lane l = make_lane<NS>(tl, b, c0);

  // Pass 1 -> this tile's aggregate U = p k_local (h-form), A = q^Tt or 0. The last tile's
  // aggregate has no consumer, so it skips pass 1.
  const bool last = tt + 1 == tl.time_tiles;
  float2 own[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) own[j] = make_float2(0.f, 0.f);
  if (!last) {
    float qr[NS], qi[NS], kr[NS], ki[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      kr[j] = ki[j] = 0.f;
    }
    if (reset) {
      forward_pass1<true, T, NS>(xs, bs, lt, dc, l.c, qr, qi, kr, ki);
    } else {
      forward_pass1_pairs<T, NS>(xs, lt, dc, l.c, qr, qi, kr, ki);
    }
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float pp = j < l.nvalid ? __ldg(&p.cf.gp[l.coef + j].z) : 1.f;
      own[j] = make_float2(pp * kr[j], pp * ki[j]);
    }
  }

  // The state entering the tile (h-form).
  float2 s[NS];
  if (tt == 0) {
#pragma unroll
    for (int j = 0; j < NS; ++j) s[j] = p.h0 && j < l.nvalid ? p.h0[l.off + j] : make_float2(0.f, 0.f);
  } else {
    if (!last) publish_aggregate<NS>(p.agg, p.resets, p.flags, chains, chain, tt, pos_stride, l, own, reset);
    float2 A[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) A[j] = j < l.nvalid ? __ldg(p.cf.pw + l.coef + j) : make_float2(0.f, 0.f);
    look_back<NS>(p.flags, p.resets, p.agg, p.states, chains, chain, tt, pos_stride, l, A, s, &s_found);
    // Re-read U rather than keep it in registers through the look-back (it was written and fenced
    // by this thread above).
    if (!last) {
#pragma unroll
      for (int j = 0; j < NS; ++j)
        own[j] = j < l.nvalid ? __ldcg(p.agg + tt * pos_stride + l.off + j) : make_float2(0.f, 0.f);
    }
  }
  // Publish the state leaving the tile (every tile but the last is full, so A = q^Tt).
  if (!last) {
    float2 out[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float2 A = j < l.nvalid ? __ldg(p.cf.pw + l.coef + j) : make_float2(0.f, 0.f);
      out[j] = reset ? own[j] : affine(A, s[j], own[j]);
    }
    publish_inclusive<NS>(p.states, p.flags, chains, chain, tt, pos_stride, l, out);
  }

  // Pass 2 from the entering state.
  float kr[NS], ki[NS];
  {
    float qr[NS], qi[NS], gr[NS], gi[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      gr[j] = v.z;
      gi[j] = v.w;
      const float pp = j < l.nvalid ? __ldg(&p.cf.gp[l.coef + j].z) : 1.f;
      kr[j] = s[j].x / pp;
      ki[j] = s[j].y / pp;
    }
    const bool writer = l.part == 0;
    if (reset) {
      forward_pass2<true, T, NS>(xs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, gr, gi, kr, ki);
    } else {
      forward_pass2<false, T, NS>(xs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, gr, gi, kr, ki);
    }
  }
  __syncthreads();
  store_tile<T>(y, xs, p.y_sb, p.y_sl, b, t0, lt, c0, dc, tl.channels, tl.vec);

  if (tt + 1 == tl.time_tiles) {
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (j >= l.nvalid) continue;
      const float pp = __ldg(&p.cf.gp[l.coef + j].z);
      const float2 h = make_float2(pp * kr[j], pp * ki[j]);
      if (p.h_out) p.h_out[l.off + j] = h;
      p.states[tt * pos_stride + l.off + j] = h;
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------

// Pass 1: R over the tile in reverse time from zero (R_t = dy_t + w R~, R~ = 0 after a BOS at t).
template <bool kBos, class T, int NS>
__device__ __forceinline__ void backward_pass1(const T* gs, const unsigned char* bs, int lt, int dc, int c,
                                               const float (&qr)[NS], const float (&qi)[NS], float (&rr)[NS],
                                               float (&ri)[NS]) {
#pragma unroll 2
  for (int r = lt - 1; r >= 0; --r) {
    const float dyv = to_float(gs[r * dc + c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float nr = fmaf(qr[j], rr[j], fmaf(qi[j], ri[j], dyv));
      const float ni = fmaf(qr[j], ri[j], -qi[j] * rr[j]);
      rr[j] = nr;
      ri[j] = ni;
    }
    if (kBos && bs[r]) {
#pragma unroll
      for (int j = 0; j < NS; ++j) rr[j] = ri[j] = 0.f;
    }
  }
}

// Pass 1 without a BOS in the tile, two tokens per step: R <- w^2 R + (w dy_{r} + dy_{r-1}).
template <class T, int NS>
__device__ __forceinline__ void backward_pass1_pairs(const T* gs, int lt, int dc, int c, const float (&qr)[NS],
                                                     const float (&qi)[NS], float (&rr)[NS], float (&ri)[NS]) {
  float q2r[NS], q2i[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    q2r[j] = fmaf(qr[j], qr[j], -qi[j] * qi[j]);
    q2i[j] = 2.f * qr[j] * qi[j];
  }
  int r = lt - 1;
  if (lt & 1) {
    const float dyv = to_float(gs[r * dc + c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float nr = fmaf(qr[j], rr[j], fmaf(qi[j], ri[j], dyv));
      const float ni = fmaf(qr[j], ri[j], -qi[j] * rr[j]);
      rr[j] = nr;
      ri[j] = ni;
    }
    --r;
  }
#pragma unroll 1
  for (; r > 0; r -= 2) {
    const float d1 = to_float(gs[r * dc + c]), d0 = to_float(gs[(r - 1) * dc + c]);
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float cr = fmaf(qr[j], d1, d0), ci = -qi[j] * d1;
      const float nr = fmaf(q2r[j], rr[j], fmaf(q2i[j], ri[j], cr));
      const float ni = fmaf(q2r[j], ri[j], fmaf(-q2i[j], rr[j], ci));
      rr[j] = nr;
      ri[j] = ni;
    }
  }
}

// Fast pass 2 (dh_out absent, so G = c R): carries R (global) and P = Q / c (tile-local);
// dx_t = sum_n Re(p c R_t) overwrites dy_t in shared memory; sums x R and x P.
template <bool kBos, class T, int NS>
__device__ __forceinline__ void backward_pass2_fast(const T* xs, T* gs, const unsigned char* bs, int lt, int dc, int c,
                                                    int tpc, bool writer, bool residual, const float (&qr)[NS],
                                                    const float (&qi)[NS], const float (&pgr)[NS],
                                                    const float (&pgi)[NS], float (&rr)[NS], float (&ri)[NS],
                                                    float (&pr)[NS], float (&pi)[NS], float (&sgr)[NS],
                                                    float (&sgi)[NS], float (&sqr)[NS], float (&sqi)[NS]) {
#pragma unroll 1
  for (int r = lt - 1; r >= 0; --r) {
    const float dyv = to_float(gs[r * dc + c]);
    const float xv = to_float(xs[r * dc + c]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float Rr = fmaf(qr[j], rr[j], fmaf(qi[j], ri[j], dyv));
      const float Ri = fmaf(qr[j], ri[j], -qi[j] * rr[j]);
      sgr[j] = fmaf(xv, Rr, sgr[j]);
      sgi[j] = fmaf(xv, Ri, sgi[j]);
      sqr[j] = fmaf(xv, pr[j], sqr[j]);
      sqi[j] = fmaf(xv, pi[j], sqi[j]);
      acc[j & 3] = fmaf(pgr[j], Rr, fmaf(pgi[j], Ri, acc[j & 3]));
      const float npr = fmaf(qr[j], pr[j], fmaf(qi[j], pi[j], Rr));
      const float npi = fmaf(qr[j], pi[j], fmaf(-qi[j], pr[j], Ri));
      pr[j] = npr;
      pi[j] = npi;
      rr[j] = Rr;
      ri[j] = Ri;
    }
    if (kBos && bs[r]) {
#pragma unroll
      for (int j = 0; j < NS; ++j) rr[j] = ri[j] = pr[j] = pi[j] = 0.f;
    }
    float v = channel_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), tpc);
    if (residual) v += dyv;
    if (writer) gs[r * dc + c] = from_float<T>(v);
  }
}

// General pass 2 (dh_out given): carries G (global, as conj(a_{t+1}) G_{t+1}), R and Q (tile-local).
template <bool kBos, class T, int NS>
__device__ __forceinline__ void backward_pass2_general(const T* xs, T* gs, const unsigned char* bs, int lt, int dc,
                                                       int c, int tpc, bool writer, bool residual,
                                                       const float (&qr)[NS], const float (&qi)[NS],
                                                       const float (&gr)[NS], const float (&gi)[NS],
                                                       const float (&pp)[NS], float (&rr)[NS], float (&ri)[NS],
                                                       float (&cgr)[NS], float (&cgi)[NS], float (&Qr)[NS],
                                                       float (&Qi)[NS], float (&spr)[NS], float (&sgr)[NS],
                                                       float (&sgi)[NS], float (&sqr)[NS], float (&sqi)[NS]) {
#pragma unroll 1
  for (int r = lt - 1; r >= 0; --r) {
    const float dyv = to_float(gs[r * dc + c]);
    const float xv = to_float(xs[r * dc + c]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float Rr = fmaf(qr[j], rr[j], fmaf(qi[j], ri[j], dyv));
      const float Ri = fmaf(qr[j], ri[j], -qi[j] * rr[j]);
      const float Gr = fmaf(gr[j], dyv, cgr[j]);
      const float Gi = fmaf(-gi[j], dyv, cgi[j]);
      acc[j & 3] = fmaf(pp[j], Gr, acc[j & 3]);
      spr[j] = fmaf(xv, Gr, spr[j]);
      sgr[j] = fmaf(xv, Rr, sgr[j]);
      sgi[j] = fmaf(xv, Ri, sgi[j]);
      sqr[j] = fmaf(xv, Qr[j], sqr[j]);
      sqi[j] = fmaf(xv, Qi[j], sqi[j]);
      const float nqr = fmaf(qr[j], Qr[j], fmaf(qi[j], Qi[j], Gr));
      const float nqi = fmaf(qr[j], Qi[j], fmaf(-qi[j], Qr[j], Gi));
      Qr[j] = nqr;
      Qi[j] = nqi;
      cgr[j] = fmaf(qr[j], Gr, qi[j] * Gi);
      cgi[j] = fmaf(qr[j], Gi, -qi[j] * Gr);
      rr[j] = Rr;
      ri[j] = Ri;
    }
    if (kBos && bs[r]) {
#pragma unroll
      for (int j = 0; j < NS; ++j) rr[j] = ri[j] = cgr[j] = cgi[j] = Qr[j] = Qi[j] = 0.f;
    }
    float v = channel_sum((acc[0] + acc[1]) + (acc[2] + acc[3]), tpc);
    if (residual) v += dyv;
    if (writer) gs[r * dc + c] = from_float<T>(v);
  }
}

template <class T, int NS, bool kGeneral>
__global__ void __launch_bounds__(kMaxThreads, kGeneral ? 2 : 4)
    backward_kernel(BackwardParams p, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);  // [Tt][dc]
  T* gs = xs + kTileTokens * dc;       // [Tt][dc] dy, then dx
  unsigned char* bs = reinterpret_cast<unsigned char*>(gs + kTileTokens * dc);
  __shared__ unsigned s_ticket;
  __shared__ int s_found;

  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const int chains = tl.chains;
  const int step = static_cast<int>(s_ticket / chains), chain = static_cast<int>(s_ticket % chains);
  const int tt = tl.time_tiles - 1 - step;  // tiles are visited from the end of time
  const int b = chain / tl.slabs, slab = chain - b * tl.slabs;
  const int t0 = tt * kTileTokens, lt = min(kTileTokens, tl.length - t0), c0 = slab * dc;
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(xs, x, p.x_sb, p.x_sl, b, t0, lt, c0, dc, tl.channels, tl.vec);
  load_tile<T>(gs, dy, p.dy_sb, p.dy_sl, b, t0, lt, c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(b) * tl.length + t0, lt);  // + barrier
  const Lane l = make_lane<NS>(tl, b, c0);

  // Pass 1 -> aggregate of the carried quantity: R~ (fast) or conj(a_{s0}) G_{s0} = c w R~ (general).
  // The chain's last tile (the first in time) has no consumer for it.
  const bool last = tt == 0;
  float2 own[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) own[j] = make_float2(0.f, 0.f);
  if (!last) {
    float qr[NS], qi[NS], rr[NS], ri[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      rr[j] = ri[j] = 0.f;
    }
    if (reset) {
      backward_pass1<true, T, NS>(gs, bs, lt, dc, l.c, qr, qi, rr, ri);
    } else {
      backward_pass1_pairs<T, NS>(gs, lt, dc, l.c, qr, qi, rr, ri);
    }
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      own[j] = make_float2(rr[j], ri[j]);
      if (kGeneral && j < l.nvalid) {
        const float4 g = __ldg(p.cf.gp + l.coef + j);
        own[j] = cmul(conjf2(cmul(make_float2(g.x, g.y), make_float2(qr[j], qi[j]))), own[j]);
      }
    }
  }

  float2 s[NS];
  if (step == 0) {
#pragma unroll
    for (int j = 0; j < NS; ++j)
      s[j] = kGeneral && p.dh_out && j < l.nvalid ? p.dh_out[l.off + j] : make_float2(0.f, 0.f);
  } else {
    if (!last) publish_aggregate<NS>(p.agg, p.resets, p.flags, chains, chain, step, pos_stride, l, own, reset);
    float2 W[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) W[j] = j < l.nvalid ? conjf2(__ldg(p.cf.pw + l.coef + j)) : make_float2(0.f, 0.f);
    look_back<NS>(p.flags, p.resets, p.agg, p.incl, chains, chain, step, pos_stride, l, W, s, &s_found);
  }
  if (!last) {
    float2 out[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (reset || (!kGeneral && step == 0)) {
        out[j] = own[j];  // a reset, or a zero state entering the chain
      } else {
        float2 W = make_float2(0.f, 0.f);
        if (j < l.nvalid) {
          W = conjf2(__ldg(p.cf.pw + l.coef + j));
          if (lt != kTileTokens) {  // only the chain's first (partial) tile, general path
            const float4 v = __ldg(p.cf.qg + l.coef + j);
            W = cpow(make_float2(v.x, -v.y), lt);
          }
        }
        out[j] = affine(W, s[j], own[j]);
      }
    }
    publish_inclusive<NS>(p.incl, p.flags, chains, chain, step, pos_stride, l, out);
  }

  // Pass 2 from the carried state entering the tile (at its end).
  float sgr[NS], sgi[NS], sqr[NS], sqi[NS], spr[NS];
  float rr[NS], ri[NS], cr[NS], ci[NS];  // R~ ; P (fast) or Q (general) at the end
  float cgr[NS], cgi[NS];                // general: conj(a_{s0}) G_{s0} at the end
  {
    float qr[NS], qi[NS], ar[NS], ai[NS], pp[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 g = j < l.nvalid ? __ldg(p.cf.gp + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      if (kGeneral) {
        ar[j] = g.x;
        ai[j] = g.y;
        pp[j] = g.z;
        rr[j] = ri[j] = 0.f;
        cgr[j] = s[j].x;
        cgi[j] = s[j].y;
      } else {
        ar[j] = v.z;
        ai[j] = v.w;
        pp[j] = 0.f;
        rr[j] = s[j].x;
        ri[j] = s[j].y;
        cgr[j] = cgi[j] = 0.f;
      }
      cr[j] = ci[j] = 0.f;
      sgr[j] = sgi[j] = sqr[j] = sqi[j] = spr[j] = 0.f;
    }
    const bool writer = l.part == 0;
    if constexpr (kGeneral) {
      if (reset) {
        backward_pass2_general<true, T, NS>(xs, gs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar, ai,
                                            pp, rr, ri, cgr, cgi, cr, ci, spr, sgr, sgi, sqr, sqi);
      } else {
        backward_pass2_general<false, T, NS>(xs, gs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar,
                                             ai, pp, rr, ri, cgr, cgi, cr, ci, spr, sgr, sgi, sqr, sqi);
      }
    } else {
      if (reset) {
        backward_pass2_fast<true, T, NS>(xs, gs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar, ai, rr,
                                         ri, cr, ci, sgr, sgi, sqr, sqi);
      } else {
        backward_pass2_fast<false, T, NS>(xs, gs, bs, lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar, ai,
                                          rr, ri, cr, ci, sgr, sgi, sqr, sqi);
      }
    }
  }
  __syncthreads();
  store_tile<T>(dx, gs, p.dx_sb, p.dx_sl, b, t0, lt, c0, dc, tl.channels, tl.vec);

  // This tile's parameter-gradient contributions and, for the first tile in time, dh0.
  const bool need_h_in = p.slot != nullptr;
  if (need_h_in || (tt == 0 && p.dh0)) {
    float2 contrib[NS][3];  // dp (x only), dg, dq
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      contrib[j][0] = contrib[j][1] = contrib[j][2] = make_float2(0.f, 0.f);
      if (j >= l.nvalid) continue;
      const float4 v = __ldg(p.cf.qg + l.coef + j);
      const float4 g = __ldg(p.cf.gp + l.coef + j);
      const float2 w = make_float2(v.x, -v.y), c = make_float2(g.x, -g.y);
      const float pj = g.z;
      float2 h_in = make_float2(0.f, 0.f);
      if (tt > 0) {
        h_in = p.states[(tt - 1) * pos_stride + l.off + j];
      } else if (p.h0) {
        h_in = p.h0[l.off + j];
      }
      const float2 hc = conjf2(h_in);
      const float2 Rt = make_float2(rr[j], ri[j]), Ct = make_float2(cr[j], ci[j]);
      const float2 Sg = make_float2(sgr[j], sgi[j]), Sq = make_float2(sqr[j], sqi[j]);
      if constexpr (kGeneral) {
        contrib[j][0] = make_float2(spr[j], 0.f);
        contrib[j][1] = cadd(cscale(pj, Sg), cmul(hc, cmul(w, Rt)));
        contrib[j][2] = cadd(cscale(pj, Sq), cmul(hc, Ct));
        if (tt == 0 && p.dh0) p.dh0[l.off + j] = make_float2(cgr[j], cgi[j]);
      } else {
        contrib[j][0] = make_float2(fmaf(g.x, Sg.x, g.y * Sg.y), 0.f);  // Re(c sum x R)
        contrib[j][1] = cscale(pj, Sg);
        if (tt == 0) contrib[j][1] = cadd(contrib[j][1], cmul(hc, cmul(w, Rt)));
        contrib[j][2] = cmul(c, cadd(cscale(pj, Sq), cmul(hc, Ct)));
        if (tt == 0 && p.dh0) p.dh0[l.off + j] = cmul(c, cmul(w, Rt));
      }
    }
    if (p.slot) {
      // Add to the chain's running sums in tile order.
      if (threadIdx.x == 0) {
        while (lookback::load_flag(p.turn + chain) != static_cast<unsigned>(step)) __nanosleep(64);
      }
      __syncthreads();
      const long long plane = static_cast<long long>(tl.channels) * tl.states;
      const long long base = (static_cast<long long>(b) * 5 * tl.channels + l.d) * tl.states + l.part * NS;
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        if (j >= l.nvalid) continue;
        const float add[5] = {contrib[j][0].x, contrib[j][1].x, contrib[j][1].y, contrib[j][2].x, contrib[j][2].y};
#pragma unroll
        for (int k = 0; k < 5; ++k) {
          float* q = p.slot + base + k * plane + j;
          const float prev = step == 0 ? 0.f : __ldcg(q);
          __stcg(q, prev + add[k]);
        }
      }
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) lookback::store_flag(p.turn + chain, static_cast<unsigned>(step + 1));
    }
  }
}

// Parameter gradients from the summed slot, one thread per channel: the sum over the batch in
// index order, then the chain rule to the raw parameters (in double).
__global__ void parameter_gradient_kernel(const float* __restrict__ slot, int B, int D, int N,
                                          const float* __restrict__ alpha, const float* __restrict__ delta,
                                          const float* __restrict__ theta, float* __restrict__ dalpha,
                                          float* __restrict__ ddelta, float* __restrict__ dtheta,
                                          float* __restrict__ dgamma) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const double kPi = 3.14159265358979323846;
  const long long plane = static_cast<long long>(D) * N;
  const double st = 1.0 / (1.0 + exp(-static_cast<double>(theta[d])));
  double dphi_sum = 0.0;
  for (int n = 0; n < N; ++n) {
    const long long i = static_cast<long long>(d) * N + n;
    float acc[5] = {0.f, 0.f, 0.f, 0.f, 0.f};
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < 5; ++k) acc[k] += slot[(static_cast<long long>(b) * 5 + k) * plane + i];
    const double sa = 1.0 / (1.0 + exp(-static_cast<double>(alpha[i])));
    const double sd = 1.0 / (1.0 + exp(-static_cast<double>(delta[i])));
    const double rho = 1.0 - sa * sd;
    const double phi = static_cast<double>(n + 1) * (2.0 * kPi / N) * st;
    double sn, cs;
    sincos(phi, &sn, &cs);
    const double dqr = acc[3], dqi = acc[4];
    const double drho = dqr * cs + dqi * sn;
    const double dphi = rho * (dqi * cs - dqr * sn);
    if (dalpha) dalpha[i] = static_cast<float>((acc[0] - sd * drho) * sa * (1.0 - sa));
    if (ddelta) ddelta[i] = static_cast<float>(-sa * drho * sd * (1.0 - sd));
    if (dgamma) {
      dgamma[2 * i] = acc[1];
      dgamma[2 * i + 1] = acc[2];
    }
    dphi_sum += static_cast<double>(n + 1) * dphi;
  }
  if (dtheta) dtheta[d] = static_cast<float>(st * (1.0 - st) * (2.0 * kPi / N) * dphi_sum);
}

}  // namespace gecko::cema::kernels
