// The timestep decay normalization forward with whole token rows per lane (sm_90; device code
// only, launch.cuh selects it). Same schedule as kernel.cuh's forward_kernel (one tile per CTA,
// tickets in launch order, deterministic decoupled look-back); less time in each phase.
//
// Why: a %globaltimer trace of every tile of forward_kernel (7B shape, L = 16384, H100) showed a
// 20 us tile lifetime with 7.9 us in the group moments and the in-tile scan (a shuffle reduction
// per 16-byte word, then a sequential scan per lane with exp per step), 5.1 us in the look-back,
// 1.7 us publishing, 4.2 us writing y and 1.4 us loading. Here:
//   - a tile is 64 tokens x Dc channels (Gt whole groups, rows of at most 1 KiB), loaded by bulk
//     copies (one instruction per row);
//   - warp w takes groups w, w + warps, ...; lane r owns tokens r and r + 32 and sums each
//     token's K channels on its own, in channel order (no shuffles);
//   - the in-tile scan is two warp scans (tokens 0..31, then 32..63 after the first half's
//     total) with beta^n from a table instead of exp;
//   - the look-back applies the aggregates in registers, eight loads in flight per lane (no
//     shared-memory window, no CTA barrier per round);
//   - rows sit `pitch` elements apart in shared memory (the row plus 16 bytes), so the lanes'
//     16-byte reads of one column hit distinct banks.
// y is written as in forward_kernel (write_rows_by_word): one 16-byte word per thread, coalesced.
// Measured against forward_kernel in the same calls: bench/results/2026-11-28_h100_s19_tn_*.
// Tiles of 32 tokens (one per lane) were a wash, and persistent variants with a ring of stages
// were slower (held tickets delay the aggregates later tiles wait for):
// bench/results/2026-11-28_h100_s19_tn_stream_experiments.txt.
#pragma once

#include <cstdint>

#include "gecko/core/bulk_copy.cuh"
#include "gecko/core/lookback.cuh"
#include "gecko/core/vector_io.cuh"
#include "gecko/ops/timestep_norm/kernel.cuh"

namespace gecko::timestep_norm::kernels {

inline constexpr int kRowsTile = 64;  // tokens per tile: two per lane

// What the kernel needs beyond ForwardParams.
struct RowsConfig {
  int pitch;                                     // elements between tile rows in shared memory
  float pw1[kRowsTile + 1], pw2[kRowsTile + 1];  // beta^n, n = 0..64, rounded from double
};

// Dynamic shared memory of one CTA (the host sizes the launch with it).
template <class T>
GECKO_HOST_DEVICE constexpr std::size_t rows_smem_bytes(int pitch, int gt) {
  return static_cast<std::size_t>(kRowsTile) * pitch * sizeof(T)        // tile
         + static_cast<std::size_t>(gt) * sizeof(ChainState)           // prefix
         + static_cast<std::size_t>(gt) * sizeof(Aggregate)            // own
         + static_cast<std::size_t>(kRowsTile) * gt * 3 * sizeof(float)  // per (token, group)
         + 2 * (kRowsTile + 1) * sizeof(float);                        // beta^n tables
}

// a then b, with beta^n from the tables (n <= 64 inside a tile).
__device__ __forceinline__ ScanEl compose_table(const ScanEl& a, const ScanEl& b, const float* pw1, const float* pw2) {
  if (b.reset) return b;
  return ScanEl{a.n + b.n, a.reset, fmaf(pw1[b.n], a.bm, b.bm), fmaf(pw2[b.n], a.bv, b.bv)};
}

// Inclusive scan of one element per lane, in lane order.
__device__ __forceinline__ ScanEl warp_scan(ScanEl inc, const float* pw1, const float* pw2) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const ScanEl up = shfl_up(inc, d);
    if (lane >= d) inc = compose_table(up, inc, pw1, pw2);
  }
  return inc;
}

// The state entering tile `position` of a chain, for lane g < width of the calling warp: the
// nearest published inclusive state, then the aggregates after it in order, eight loads in
// flight per round trip. The same left-to-right updates whichever inclusive state is found, so
// the result is bitwise reproducible (core/lookback.cuh).
// State / Agg: the forward's ChainState / Aggregate or the backward's AdjointState / AdjointAggregate.
template <class State, class Agg>
__device__ __forceinline__ State warp_chain_prefix(unsigned* flags, int chains, int chain, int position,
                                                   const Agg* aggs, const State* incls, int width) {
  const int lane = threadIdx.x & 31;
  const int k = lookback::warp_find_inclusive(flags + chain, chains, position);
  State st{};
  if (lane < width) {
    st = lookback_load(incls + (static_cast<long long>(k) * chains + chain) * width + lane);
    int j = k + 1;
    for (; j + 8 <= position; j += 8) {
      Agg a[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) a[u] = lookback_load(aggs + (static_cast<long long>(j + u) * chains + chain) * width + lane);
#pragma unroll
      for (int u = 0; u < 8; ++u) st = apply(st, a[u]);
    }
    for (; j < position; ++j) st = apply(st, lookback_load(aggs + (static_cast<long long>(j) * chains + chain) * width + lane));
  }
  return st;
}

// The start of every rows kernel: the barrier the tile's bulk loads complete on, the CTA's ticket
// (launch order) and the beta^n tables in shared memory. Called by the whole CTA.
__device__ __forceinline__ unsigned rows_prologue(const RowsConfig& cfg, unsigned* ticket_counter, std::uint64_t* bar,
                                                  float* s_pw1, float* s_pw2) {
  __shared__ unsigned s_ticket;
  if (threadIdx.x == 0) {
    bulk::init_barrier(bar, 1);
    s_ticket = lookback::take_ticket(ticket_counter);
  }
  for (int i = threadIdx.x; i <= kRowsTile; i += blockDim.x) {
    s_pw1[i] = cfg.pw1[i];
    s_pw2[i] = cfg.pw2[i];
  }
  __syncthreads();
  return s_ticket;
}

template <class T, int KV>
__global__ void __launch_bounds__(256, 3) forward_rows_kernel(ForwardParams p, RowsConfig cfg, const T* __restrict__ x,
                                                              const T* __restrict__ weight, const T* __restrict__ bias,
                                                              T* __restrict__ y) {
  using Word = Packed<T, kVec16<T>>;
  constexpr int VEC = kVec16<T>, K = KV * VEC;
  const Tiling& tl = p.tl;
  const int Dc = tl.slab_channels, Gt = tl.slab_groups, pitch = cfg.pitch;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int chains = tl.batch * tl.slabs;

  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);
  ChainState* s_prefix = reinterpret_cast<ChainState*>(xs + kRowsTile * pitch);
  Aggregate* s_own = reinterpret_cast<Aggregate*>(s_prefix + Gt);
  float* s_m = reinterpret_cast<float*>(s_own + Gt);        // [64][Gt] scan, then mhat
  float* s_v = s_m + kRowsTile * Gt;                         // [64][Gt] scan, then rstd
  int* s_n = reinterpret_cast<int*>(s_v + kRowsTile * Gt);  // count, negative after a reset
  float* s_pw1 = reinterpret_cast<float*>(s_n + kRowsTile * Gt);
  float* s_pw2 = s_pw1 + kRowsTile + 1;
  __shared__ std::uint64_t s_bar;
  const unsigned ticket = rows_prologue(cfg, p.ticket, &s_bar, s_pw1, s_pw2);
  const int tt = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * kRowsTile, lt = min(kRowsTile, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;
  if (warp == 0) {
    const unsigned row_bytes = static_cast<unsigned>(Dc * sizeof(T));
    if (lane == 0) bulk::arrive_expect_bytes(&s_bar, row_bytes * lt);
    __syncwarp();
    for (int r = lane; r < lt; r += 32)
      bulk::load(xs + r * pitch, x + b * p.x_sb + (t0 + r) * p.x_sl + c0, row_bytes, &s_bar);
  }
  bulk::wait_parity(&s_bar, 0);

  // Per (token, group) moments, two-pass over each of the lane's tokens' K channels, then the
  // two halves' warp scans.
  const float inv_k = 1.f / K;
  auto moments = [&](int r, int gi) {
    if (r >= lt) return ScanEl::identity();
    const Word* row = reinterpret_cast<const Word*>(xs + r * pitch) + gi * KV;
    float sum = 0.f;
#pragma unroll
    for (int v = 0; v < KV; ++v) {
      const Word w = row[v];
#pragma unroll
      for (int e = 0; e < VEC; ++e) sum += to_float(w.v[e]);
    }
    const float mu = sum * inv_k;
    float q = 0.f;
#pragma unroll
    for (int v = 0; v < KV; ++v) {
      const Word w = row[v];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float d = to_float(w.v[e]) - mu;
        q = fmaf(d, d, q);
      }
    }
    return token_el(p, row0 + t0 + r, mu, q * inv_k);
  };
  auto keep = [&](int r, int gi, const ScanEl& inc) {
    s_m[r * Gt + gi] = inc.bm;
    s_v[r * Gt + gi] = inc.bv;
    s_n[r * Gt + gi] = inc.reset ? -inc.n : inc.n;
  };
  for (int gi = warp; gi < Gt; gi += nwarps) {
    const ScanEl lo = warp_scan(moments(lane, gi), s_pw1, s_pw2);
    const ScanEl hi = warp_scan(moments(lane + 32, gi), s_pw1, s_pw2);
    const ScanEl first = shfl_idx(lo, 31);
    keep(lane, gi, lo);
    const ScanEl inc = compose_table(first, hi, s_pw1, s_pw2);
    keep(lane + 32, gi, inc);
    if (lane == 31)
      s_own[gi] = inc.reset ? Aggregate{0.f, inc.bm, 0.f, inc.bv, inc.n, 1}
                            : Aggregate{s_pw1[inc.n], inc.bm, s_pw2[inc.n], inc.bv, inc.n, 0};
  }
  __syncthreads();

  // The state entering this tile; then this tile's inclusive state (warp 0).
  const int flag_index = tt * chains + chain;
  if (warp == 0) {
    Aggregate own{};
    if (lane < Gt) own = s_own[lane];
    ChainState in{0.f, 0.f, 0};
    if (tt == 0) {
      if (lane < Gt) in = initial_state(p, b, slab * Gt + lane);
    } else {
      if (lane < Gt) {
        p.agg[static_cast<long long>(flag_index) * Gt + lane] = own;
        __threadfence();  // only the aggregate's writers
      }
      __syncwarp();
      if (lane == 0) lookback::store_flag(p.flags + flag_index, lookback::kAggregate);
      in = warp_chain_prefix(p.flags, chains, chain, tt, p.agg, p.incl, Gt);
    }
    if (lane < Gt) {
      s_prefix[lane] = in;
      const ChainState out = apply(in, own);
      if (tt + 1 < tl.time_tiles) {
        p.incl[static_cast<long long>(flag_index) * Gt + lane] = out;
        __threadfence();  // only the inclusive state's writers
      } else {
        write_final_state(p, b, slab * Gt + lane, out);
      }
    }
    __syncwarp();
    if (lane == 0 && tt + 1 < tl.time_tiles) lookback::store_flag(p.flags + flag_index, lookback::kInclusive);
  }
  __syncthreads();

  // Per (token, group): bias-corrected mean and rstd (lane = token, as the scan left them).
  for (int gi = warp; gi < Gt; gi += nwarps)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lane + 32 * h;
      if (r >= lt) continue;
      const long long t = row0 + t0 + r;
      const int i = r * Gt + gi;
      const ChainState in = s_prefix[gi];
      const int code = s_n[i];
      const bool reset = code < 0;
      const long long count = reset ? -code : in.count + code;
      const float m = reset ? s_m[i] : fmaf(s_pw1[code], in.m, s_m[i]);
      const float v = reset ? s_v[i] : fmaf(s_pw2[code], in.v, s_v[i]);
      const Corrected cs = bias_correct(p, mask_at(p.pad, t), count, m, v);
      s_m[i] = cs.mhat;
      s_v[i] = cs.rstd;
      save_corrected(p, t, slab * Gt + gi, cs);
    }
  __syncthreads();

  // y: the word mapping (the plan guarantees blockDim % words == 0), as forward_kernel.
  write_rows_by_word<T, VEC>(p, xs, pitch, s_m, s_v, lt, b, t0, c0, weight, bias, y);
}

}  // namespace gecko::timestep_norm::kernels
