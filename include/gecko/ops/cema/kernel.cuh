// CUDA kernels for the complex EMA (device code only; launch.cuh launches them).
//
// Per (batch row b, channel d, state n) the forward is the complex recurrence
//   h_t = a_t h_{t-1} + p x_t,  a_t = BOS(t) ? 0 : q,   y_t = sum_n Re(g h_t) (+ x_t)
// and the backward its adjoint in reverse time (spec 2.4). Time is split into tiles of
// kTileTokens tokens and channels into slabs of `dc` channels; a CTA owns one (tile, slab) of one
// batch row with its inputs staged in shared memory (cp.async). Each direction runs as
//   1. aggregate kernel: every tile runs the recurrence from a zero state (pass 1), giving its
//      aggregate: state_out = A state_in + U, A = q^Tt (0 when a BOS lies in the tile);
//   2. scan kernel: one thread per (b, d, n) applies the aggregates in tile order, giving the state
//      entering every tile (the forward keeps them: Saved::states);
//   3. output kernel: every tile re-runs from its true entering state (pass 2), producing y (dx)
//      and, in the backward, the tile's parameter-gradient contributions.
// No CTA ever waits for another. A first version ran all three steps in one kernel with a
// deterministic decoupled look-back across CTAs (core/lookback.cuh), reading x from DRAM once; on an
// H100 (bf16, B = 1, D = 4096, N = 16, L = 16384) it took 1.10 ms forward, against 0.74 ms for the
// same kernel with the look-back switched off: CTAs spent a third of their time spinning on flags
// or walking back over aggregates (ncu: 0.42 instructions issued per cycle and scheduler; 60% L2
// throughput, mostly polling), and the backward's in-order accumulation of the gradient sums cost
// another 0.5 ms. The split costs a second DRAM read of x (and dy) and ~4 bytes of aggregates and
// states per (token, channel); it measured 0.78 ms forward, 1.36 ms backward.
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
// (pass 1 runs one token per step, 4 instructions, in tiles that hold a BOS). Both passes are bound
// by instruction issue, not by DRAM; measured (ncu, H100) the pass-2 loop issues 0.64 instructions
// per cycle and scheduler (dispatch stalls and fixed-latency dependency waits), about 1/3 of the
// FMA peak: the remaining gap to the bandwidth floor is there.
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
// The parameter-gradient contributions are written per tile and summed over the tiles in time
// order, then over the batch in index order: no floating-point atomics, bitwise reproducible.
#pragma once

#include <cstdint>

#include "gecko/core/dtype.hpp"
#include "gecko/core/vector_io.cuh"

namespace gecko::cema::kernels {

// Tokens per time tile. 128 gives several thousand CTAs at the 7B shape (L = 16384, D = 4096:
// 128 tiles x 32 slabs) while the per-tile aggregates and states (one complex per channel and state
// each) stay ~1 byte per (token, channel), below the 4 bytes of x and y themselves, and a tile
// (32 KB of bf16 x for 128 channels) lets 4 CTAs share an SM. Tiles are a fixed size so the
// forward's saved states line up with the backward's tiles.
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

// What the single-kernel forwards (decoding: kernel_decode.cuh; chunked: kernel_chunked.cuh) take
// of a call: sizes, strides, the raw parameters and the carried state (launch.cuh's call_params).
struct CallParams {
  int B = 0, L = 0, D = 0, N = 0;
  const float *alpha = nullptr, *delta = nullptr, *theta = nullptr, *gamma = nullptr;
  long long x_sb = 0, x_sl = 0, y_sb = 0, y_sl = 0;
  bool add_residual = false;
  const float2* h0 = nullptr;  // [B, D, N] or null (zeros); read before h_out is written (may alias)
  float2* h_out = nullptr;     // [B, D, N] or null
};

struct ForwardParams {
  Tiling tl;
  long long x_sb, x_sl, y_sb, y_sl;  // batch and time strides, elements
  bool add_residual;
  const std::uint8_t* bos;  // [B, L] or null
  const float2* h0;         // [B, D, N] or null (read by the scan only, so h_out may alias it)
  float2* h_out;            // [B, D, N] or null
  float2* states;           // [time_tiles, B, D, N]: the state after each tile (saved or workspace)
  float2* enter0;           // [B, D, N]: the state entering tile 0 (h0 or 0), copied by the scan
  float2* agg;              // [time_tiles, B, D, N]: each tile's U
  unsigned* resets;         // [time_tiles, chains]: 1 when the tile holds a BOS (its A is 0)
  Coefficients cf;
};

struct BackwardParams {
  Tiling tl;
  long long x_sb, x_sl, dy_sb, dy_sl, dx_sb, dx_sl;
  bool add_residual;
  const std::uint8_t* bos;
  const float2* h0;      // [B, D, N] or null
  const float2* dh_out;  // [B, D, N] (general path) or null (read by the scan only, so dh0 may alias it)
  const float2* states;  // [time_tiles, B, D, N] saved by the forward
  float2* dh0;           // [B, D, N] or null
  float2* agg;           // [time_tiles, B, D, N]: each tile's own aggregate (from a zero carry)
  float2* carry;         // [time_tiles, B, D, N]: the carried state entering each tile at its end
  float* partial;        // [time_tiles, B, 5, D, N]: per-tile dp, Re/Im dg, Re/Im dq; or null
  unsigned* resets;      // [time_tiles, chains]
  Coefficients cf;
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

// ---- coefficients -----------------------------------------------------------------------------

// q (qg.xy), p g (qg.zw), g (gp.xy) and p (gp.z) of state (d, n), from the raw parameters, in
// double then rounded once. p is clamped to >= 1e-30 so that the forward's scaled state h / p stays
// finite. Shared by coefficient_kernel and the decode kernel (kernel_decode.cuh), so both paths use
// bit-identical coefficients.
__device__ __forceinline__ void coefficients_at(const float* __restrict__ alpha, const float* __restrict__ delta,
                                                const float* __restrict__ theta, const float* __restrict__ gamma,
                                                int d, int n, int N, float4& qg, float4& gp, double* phi_out = nullptr,
                                                double* rho_out = nullptr, double* p_out = nullptr) {
  const long long i = static_cast<long long>(d) * N + n;
  const double kPi = 3.14159265358979323846;
  const double sa = 1.0 / (1.0 + exp(-static_cast<double>(alpha[i])));
  const double sd = 1.0 / (1.0 + exp(-static_cast<double>(delta[i])));
  const double st = 1.0 / (1.0 + exp(-static_cast<double>(theta[d])));
  const double phi = static_cast<double>(n + 1) * (2.0 * kPi / N) * st;
  const double rho = 1.0 - sa * sd;
  double sn, cs;
  sincos(phi, &sn, &cs);
  const float p = fmaxf(static_cast<float>(sa), 1e-30f);
  const float gr = gamma[2 * i], gi = gamma[2 * i + 1];
  qg = make_float4(static_cast<float>(rho * cs), static_cast<float>(rho * sn), p * gr, p * gi);
  gp = make_float4(gr, gi, p, 0.f);
  if (phi_out) *phi_out = phi;
  if (rho_out) *rho_out = rho;
  if (p_out) *p_out = fmax(sa, 1e-30);
}

// The coefficients of every (d, n) and q^kTileTokens (pw), for the tile kernels.
// A template only so that the definition may appear in several translation units.
template <int kUnused = 0>
__global__ void coefficient_kernel(const float* __restrict__ alpha, const float* __restrict__ delta,
                                   const float* __restrict__ theta, const float* __restrict__ gamma, int D, int N,
                                   float4* __restrict__ qg, float4* __restrict__ gp, float2* __restrict__ pw) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(D) * N) return;
  const int d = static_cast<int>(i / N), n = static_cast<int>(i - static_cast<long long>(d) * N);
  double phi = 0.0, rho = 0.0;
  float4 q, g;
  coefficients_at(alpha, delta, theta, gamma, d, n, N, q, g, &phi, &rho);
  qg[i] = q;
  gp[i] = g;
  double sn_t, cs_t;
  sincos(phi * kTileTokens, &sn_t, &cs_t);
  const double rho_t = pow(rho, static_cast<double>(kTileTokens));
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
    // The channel's other lanes read this element before the shuffle above; the barrier makes
    // that order explicit (compute-sanitizer's racecheck does not see shuffles as one).
    if (tpc > 1) __syncwarp();
    if (writer) xs[r * dc + c] = from_float<T>(yv);
  }
}

// Where a CTA of a tile kernel sits: time tile tt, batch row b, channel slab.
struct TilePos {
  int tt, chain, b, slab, t0, lt, c0;
};

__device__ __forceinline__ TilePos tile_pos(const Tiling& tl, int tt, int chain, int dc) {
  TilePos t;
  t.tt = tt;
  t.chain = chain;
  t.b = chain / tl.slabs;
  t.slab = chain - t.b * tl.slabs;
  t.t0 = tt * kTileTokens;
  t.lt = min(kTileTokens, tl.length - t.t0);
  t.c0 = t.slab * dc;
  return t;
}

// Kernel 1 of the forward: every tile but the last runs pass 1 from a zero state and writes its
// aggregate U = p k_local (h-form; A = q^Tt, or 0 when the tile holds a BOS). Grid: (T - 1) x chains.
template <class T, int NS>
__global__ void __launch_bounds__(kMaxThreads, 4) forward_aggregate_kernel(ForwardParams p, const T* __restrict__ x) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);                                                 // [Tt][dc]
  unsigned char* bs = smem + static_cast<std::size_t>(kTileTokens) * dc * sizeof(T);  // [Tt]
  const TilePos tp = tile_pos(tl, static_cast<int>(blockIdx.x) / tl.chains, static_cast<int>(blockIdx.x) % tl.chains, dc);
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(xs, x, p.x_sb, p.x_sl, tp.b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(tp.b) * tl.length + tp.t0, tp.lt);  // + barrier
  const Lane l = make_lane<NS>(tl, tp.b, tp.c0);

  float qr[NS], qi[NS], kr[NS], ki[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
    qr[j] = v.x;
    qi[j] = v.y;
    kr[j] = ki[j] = 0.f;
  }
  if (reset) {
    forward_pass1<true, T, NS>(xs, bs, tp.lt, dc, l.c, qr, qi, kr, ki);
  } else {
    forward_pass1_pairs<T, NS>(xs, tp.lt, dc, l.c, qr, qi, kr, ki);
  }
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    if (j >= l.nvalid) continue;
    const float pp = __ldg(&p.cf.gp[l.coef + j].z);
    p.agg[tp.tt * pos_stride + l.off + j] = make_float2(pp * kr[j], pp * ki[j]);
  }
  if (threadIdx.x == 0) p.resets[static_cast<long long>(tp.tt) * tl.chains + tp.chain] = reset ? 1u : 0u;
}

// Kernel 2 of the forward: per (b, d, n), the states after tiles 0 .. T-2 by applying the
// aggregates in time order (state = A state + U, or U after a reset), starting from h0. One thread
// per state; loads are issued 8 tiles ahead. Also copies h0 to enter0, so that the output kernel
// never reads h0 (h_out may alias it).
// A template only so that the definition may appear in several translation units.
template <int kUnused = 0>
__global__ void __launch_bounds__(256) forward_scan_kernel(ForwardParams p) {
  const Tiling& tl = p.tl;
  const long long dn_count = static_cast<long long>(tl.channels) * tl.states;
  const long long bdn = tl.batch * dn_count;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= bdn) return;
  const int b = static_cast<int>(i / dn_count);
  const long long dn = i - b * dn_count;
  const int d = static_cast<int>(dn / tl.states);
  const int chain = b * tl.slabs + d / tl.dc;
  float2 s = p.h0 ? p.h0[i] : make_float2(0.f, 0.f);
  p.enter0[i] = s;
  const float2 A = __ldg(p.cf.pw + dn);
  const int steps = tl.time_tiles - 1;
  for (int t0 = 0; t0 < steps; t0 += 8) {
    float2 u[8];
    unsigned r[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (t0 + k < steps) {
        u[k] = __ldcs(p.agg + (t0 + k) * bdn + i);
        r[k] = __ldg(p.resets + static_cast<long long>(t0 + k) * tl.chains + chain);
      }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (t0 + k < steps) {
        s = r[k] ? u[k] : affine(A, s, u[k]);
        p.states[(t0 + k) * bdn + i] = s;
      }
    }
  }
}

// Kernel 3 of the forward: every tile runs pass 2 from its entering state, writing y; the last
// tile writes h_out (and its state). Grid: T x chains.
template <class T, int NS>
__global__ void __launch_bounds__(kMaxThreads, 4) forward_output_kernel(ForwardParams p, const T* __restrict__ x,
                                                                        T* __restrict__ y) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);                                                 // [Tt][dc]
  unsigned char* bs = smem + static_cast<std::size_t>(kTileTokens) * dc * sizeof(T);  // [Tt]
  const TilePos tp = tile_pos(tl, static_cast<int>(blockIdx.x) / tl.chains, static_cast<int>(blockIdx.x) % tl.chains, dc);
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(xs, x, p.x_sb, p.x_sl, tp.b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(tp.b) * tl.length + tp.t0, tp.lt);  // + barrier
  const Lane l = make_lane<NS>(tl, tp.b, tp.c0);

  float kr[NS], ki[NS];
  {
    const float2* enter = tp.tt == 0 ? p.enter0 : p.states + (tp.tt - 1) * pos_stride;
    float qr[NS], qi[NS], gr[NS], gi[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      gr[j] = v.z;
      gi[j] = v.w;
      const float pp = j < l.nvalid ? __ldg(&p.cf.gp[l.coef + j].z) : 1.f;
      const float2 s = j < l.nvalid ? enter[l.off + j] : make_float2(0.f, 0.f);
      kr[j] = s.x / pp;
      ki[j] = s.y / pp;
    }
    const bool writer = l.part == 0;
    if (reset) {
      forward_pass2<true, T, NS>(xs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, gr, gi, kr, ki);
    } else {
      forward_pass2<false, T, NS>(xs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, gr, gi, kr, ki);
    }
  }
  __syncthreads();
  store_tile<T>(y, xs, p.y_sb, p.y_sl, tp.b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);

  if (tp.tt + 1 == tl.time_tiles) {
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (j >= l.nvalid) continue;
      const float pp = __ldg(&p.cf.gp[l.coef + j].z);
      const float2 h = make_float2(pp * kr[j], pp * ki[j]);
      if (p.h_out) p.h_out[l.off + j] = h;
      p.states[tp.tt * pos_stride + l.off + j] = h;
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
    // The channel's other lanes read this element before the shuffle above; the barrier makes
    // that order explicit (compute-sanitizer's racecheck does not see shuffles as one).
    if (tpc > 1) __syncwarp();
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
    // The channel's other lanes read this element before the shuffle above; the barrier makes
    // that order explicit (compute-sanitizer's racecheck does not see shuffles as one).
    if (tpc > 1) __syncwarp();
    if (writer) gs[r * dc + c] = from_float<T>(v);
  }
}

// Kernel 1 of the backward: every tile but the first in time runs pass 1 (R from a zero carry, in
// reverse time) and writes its aggregate: R~ at the tile start (fast path) or c w R~ (general
// path, the carried G). Grid: (T - 1) x chains, tiles 1 .. T-1.
template <class T, int NS, bool kGeneral>
__global__ void __launch_bounds__(kMaxThreads, 4) backward_aggregate_kernel(BackwardParams p, const T* __restrict__ dy) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* gs = reinterpret_cast<T*>(smem);                                                 // [Tt][dc]
  unsigned char* bs = smem + static_cast<std::size_t>(kTileTokens) * dc * sizeof(T);  // [Tt]
  const TilePos tp =
      tile_pos(tl, 1 + static_cast<int>(blockIdx.x) / tl.chains, static_cast<int>(blockIdx.x) % tl.chains, dc);
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(gs, dy, p.dy_sb, p.dy_sl, tp.b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(tp.b) * tl.length + tp.t0, tp.lt);  // + barrier
  const Lane l = make_lane<NS>(tl, tp.b, tp.c0);

  float qr[NS], qi[NS], rr[NS], ri[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    const float4 v = j < l.nvalid ? __ldg(p.cf.qg + l.coef + j) : make_float4(0.f, 0.f, 0.f, 0.f);
    qr[j] = v.x;
    qi[j] = v.y;
    rr[j] = ri[j] = 0.f;
  }
  if (reset) {
    backward_pass1<true, T, NS>(gs, bs, tp.lt, dc, l.c, qr, qi, rr, ri);
  } else {
    backward_pass1_pairs<T, NS>(gs, tp.lt, dc, l.c, qr, qi, rr, ri);
  }
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    if (j >= l.nvalid) continue;
    float2 own = make_float2(rr[j], ri[j]);
    if (kGeneral) {
      const float4 g = __ldg(p.cf.gp + l.coef + j);
      own = cmul(conjf2(cmul(make_float2(g.x, g.y), make_float2(qr[j], qi[j]))), own);
    }
    p.agg[tp.tt * pos_stride + l.off + j] = own;
  }
  if (threadIdx.x == 0) p.resets[static_cast<long long>(tp.tt) * tl.chains + tp.chain] = reset ? 1u : 0u;
}

// Kernel 2 of the backward: per (b, d, n), the carried state entering each tile at its end, from
// the last tile back to the first: carry[T-1] = dh_out (general) or 0, then
// carry[t-1] = reset_t ? own_t : W_t carry[t] + own_t with W_t = w^(tokens of tile t).
template <bool kGeneral>
__global__ void __launch_bounds__(256) backward_scan_kernel(BackwardParams p) {
  const Tiling& tl = p.tl;
  const long long dn_count = static_cast<long long>(tl.channels) * tl.states;
  const long long bdn = tl.batch * dn_count;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= bdn) return;
  const int b = static_cast<int>(i / dn_count);
  const long long dn = i - b * dn_count;
  const int d = static_cast<int>(dn / tl.states);
  const int chain = b * tl.slabs + d / tl.dc;
  const int T = tl.time_tiles;
  float2 c = kGeneral && p.dh_out ? p.dh_out[i] : make_float2(0.f, 0.f);
  p.carry[(T - 1) * bdn + i] = c;
  const float2 W = conjf2(__ldg(p.cf.pw + dn));
  float2 W_last = W;  // the last tile may be partial
  const int lt_last = tl.length - (T - 1) * kTileTokens;
  if (lt_last != kTileTokens) {
    const float4 v = __ldg(p.cf.qg + dn);
    W_last = cpow(make_float2(v.x, -v.y), lt_last);
  }
  for (int t0 = T - 1; t0 >= 1; t0 -= 8) {
    float2 u[8];
    unsigned r[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (t0 - k >= 1) {
        u[k] = __ldcs(p.agg + (t0 - k) * bdn + i);
        r[k] = __ldg(p.resets + static_cast<long long>(t0 - k) * tl.chains + chain);
      }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int t = t0 - k;
      if (t >= 1) {
        c = r[k] ? u[k] : affine(t == T - 1 ? W_last : W, c, u[k]);
        p.carry[(t - 1) * bdn + i] = c;
      }
    }
  }
}

// Kernel 3 of the backward: every tile runs pass 2 from the carry entering it, writing dx and its
// parameter-gradient contributions (and dh0 for the first tile). Grid: T x chains.
template <class T, int NS, bool kGeneral>
__global__ void __launch_bounds__(kMaxThreads, kGeneral ? 2 : 4)
    backward_output_kernel(BackwardParams p, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx) {
  const Tiling& tl = p.tl;
  const int dc = tl.dc;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);  // [Tt][dc]
  T* gs = xs + kTileTokens * dc;       // [Tt][dc] dy, then dx
  unsigned char* bs = reinterpret_cast<unsigned char*>(gs + kTileTokens * dc);
  const TilePos tp = tile_pos(tl, static_cast<int>(blockIdx.x) / tl.chains, static_cast<int>(blockIdx.x) % tl.chains, dc);
  const int tt = tp.tt, b = tp.b;
  const long long pos_stride = static_cast<long long>(tl.batch) * tl.channels * tl.states;

  load_tile<T>(xs, x, p.x_sb, p.x_sl, b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);
  load_tile<T>(gs, dy, p.dy_sb, p.dy_sl, b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);
  if (tl.vec > 1) cp_async_wait_all();
  const bool reset = load_bos(bs, p.bos, static_cast<long long>(b) * tl.length + tp.t0, tp.lt);  // + barrier
  const Lane l = make_lane<NS>(tl, b, tp.c0);

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
      const float2 s = j < l.nvalid ? p.carry[tt * pos_stride + l.off + j] : make_float2(0.f, 0.f);
      qr[j] = v.x;
      qi[j] = v.y;
      if (kGeneral) {
        ar[j] = g.x;
        ai[j] = g.y;
        pp[j] = g.z;
        rr[j] = ri[j] = 0.f;
        cgr[j] = s.x;
        cgi[j] = s.y;
      } else {
        ar[j] = v.z;
        ai[j] = v.w;
        pp[j] = 0.f;
        rr[j] = s.x;
        ri[j] = s.y;
        cgr[j] = cgi[j] = 0.f;
      }
      cr[j] = ci[j] = 0.f;
      sgr[j] = sgi[j] = sqr[j] = sqi[j] = spr[j] = 0.f;
    }
    const bool writer = l.part == 0;
    if constexpr (kGeneral) {
      if (reset) {
        backward_pass2_general<true, T, NS>(xs, gs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar,
                                            ai, pp, rr, ri, cgr, cgi, cr, ci, spr, sgr, sgi, sqr, sqi);
      } else {
        backward_pass2_general<false, T, NS>(xs, gs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar,
                                             ai, pp, rr, ri, cgr, cgi, cr, ci, spr, sgr, sgi, sqr, sqi);
      }
    } else {
      if (reset) {
        backward_pass2_fast<true, T, NS>(xs, gs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar, ai,
                                         rr, ri, cr, ci, sgr, sgi, sqr, sqi);
      } else {
        backward_pass2_fast<false, T, NS>(xs, gs, bs, tp.lt, dc, l.c, tl.tpc, writer, p.add_residual, qr, qi, ar,
                                          ai, rr, ri, cr, ci, sgr, sgi, sqr, sqi);
      }
    }
  }
  __syncthreads();
  store_tile<T>(dx, gs, p.dx_sb, p.dx_sl, b, tp.t0, tp.lt, tp.c0, dc, tl.channels, tl.vec);

  // This tile's parameter-gradient contributions and, for the first tile in time, dh0.
  if (p.partial || (tt == 0 && p.dh0)) {
    const long long dn_count = static_cast<long long>(tl.channels) * tl.states;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
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
      float dp;
      float2 dg, dq;
      if constexpr (kGeneral) {
        dp = spr[j];
        dg = cadd(cscale(pj, Sg), cmul(hc, cmul(w, Rt)));
        dq = cadd(cscale(pj, Sq), cmul(hc, Ct));
        if (tt == 0 && p.dh0) p.dh0[l.off + j] = make_float2(cgr[j], cgi[j]);
      } else {
        dp = fmaf(g.x, Sg.x, g.y * Sg.y);  // Re(c sum x R)
        dg = cscale(pj, Sg);
        if (tt == 0) dg = cadd(dg, cmul(hc, cmul(w, Rt)));
        dq = cmul(c, cadd(cscale(pj, Sq), cmul(hc, Ct)));
        if (tt == 0 && p.dh0) p.dh0[l.off + j] = cmul(c, cmul(w, Rt));
      }
      if (p.partial) {
        float* q = p.partial + ((static_cast<long long>(tt) * tl.batch + b) * 5) * dn_count + l.coef + j;
        __stcs(q, dp);
        __stcs(q + dn_count, dg.x);
        __stcs(q + 2 * dn_count, dg.y);
        __stcs(q + 3 * dn_count, dq.x);
        __stcs(q + 4 * dn_count, dq.y);
      }
    }
  }
}

// The per-tile contributions summed over the tiles in time order: slot[b, k, d, n] for each of the
// 5 quantities. One thread per (b, k, d, n); loads issued 8 tiles ahead.
// A template only so that the definition may appear in several translation units.
template <int kUnused = 0>
__global__ void __launch_bounds__(256) reduce_partials_kernel(const float* __restrict__ partial, int T, int B,
                                                               long long dn_count, float* __restrict__ slot) {
  const long long n = static_cast<long long>(B) * 5 * dn_count;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float s = 0.f;
  for (int t0 = 0; t0 < T; t0 += 8) {
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = t0 + k < T ? __ldcs(partial + (t0 + k) * n + i) : 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (t0 + k < T) s += v[k];
  }
  slot[i] = s;
}

// Parameter gradients from the summed slot, one thread per channel: the sum over the batch in
// index order, then the chain rule to the raw parameters (in double).
// A template only so that the definition may appear in several translation units.
template <int kUnused = 0>
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
