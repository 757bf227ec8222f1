// CUDA kernels for timestep decay normalization (device code only; launch.cuh launches them).
//
// One CTA processes a tile of Lt tokens x Dc channels (Gt = Dc / K whole groups) of one batch
// row, keeping the tile in shared memory so x (and dy) are read from DRAM exactly once:
//   1. load the tile; per-token group moments (forward) or gradient sums (backward);
//   2. a sequential scan over the tile's tokens per group, from a zero state, giving each token's
//      state as an affine function of the state entering the tile, and the tile's aggregate;
//   3. deterministic decoupled look-back over the tiles of the same (batch row, slab) chain
//      (core/lookback.cuh) gives the state entering the tile;
//   4. finish every token and write y (dx) from shared memory.
// The forward runs forward in time; the backward runs the adjoint recurrence backward in time.
#pragma once

#include <cstdint>

#include "gecko/core/async_copy.cuh"
#include "gecko/core/lookback.cuh"
#include "gecko/core/vector_io.cuh"

namespace gecko::timestep_norm::kernels {

// A decay rate with its derived constants, computed in double on the host.
struct Decay {
  float beta;       // float(beta)
  float one_minus;  // float(1 - beta), exact in double before rounding
  float log_beta;   // float(log(beta)): 1 - beta^c = -expm1(c * log_beta)
};

// How a tile maps the state entering it to the state leaving it, per group:
// m' = a1 m + b1, v' = a2 v + b2, count' = reset ? n : count + n.
struct Aggregate {
  float a1, b1, a2, b2;
  int n;
  int reset;
};

struct ChainState {
  float m, v;
  long long count;
};

__device__ __forceinline__ Aggregate lookback_load(const Aggregate* a) {
  return Aggregate{__ldcg(&a->a1), __ldcg(&a->b1), __ldcg(&a->a2), __ldcg(&a->b2), __ldcg(&a->n), __ldcg(&a->reset)};
}
__device__ __forceinline__ ChainState lookback_load(const ChainState* s) {
  return ChainState{__ldcg(&s->m), __ldcg(&s->v), __ldcg(&s->count)};
}
__device__ __forceinline__ ChainState apply(ChainState s, const Aggregate& a) {
  return ChainState{fmaf(a.a1, s.m, a.b1), fmaf(a.a2, s.v, a.b2), a.reset ? a.n : s.count + a.n};
}

inline constexpr int kWindow = 64;  // aggregates staged per look-back round

struct Tiling {
  int batch, length, channels, groups, group_size;
  int slab_channels;  // Dc
  int slab_groups;    // Gt
  int tile_tokens;    // Lt
  int slabs;          // D / Dc
  int time_tiles;     // ceil(L / Lt)
  int lanes_per_pair; // lanes that reduce one (token, group): a power of two <= 32
  // Word mapping (the fast path): thread i owns word (i % words) of rows i / words, i / words +
  // rows_per_pass, ...; a group is K / VEC consecutive threads (a power of two <= 32), so group
  // sums are a few shuffles and no loop divides. Set when blockDim % words == 0.
  int word_mapped;
};

// The word a thread owns under the word mapping, and the rows it visits.
struct WordMap {
  int words, word, row0, row_step, group_lanes;
  __device__ WordMap(const Tiling& tl, int vec) {
    words = tl.slab_channels / vec;
    word = threadIdx.x % words;
    row0 = threadIdx.x / words;
    row_step = blockDim.x / words;
    group_lanes = tl.group_size / vec;
  }
};

struct ForwardParams {
  Tiling tl;
  long long x_sb, x_sl, y_sb, y_sl;  // batch and time strides, elements
  Decay d1, d2;
  float eps;
  const std::uint8_t* bos;
  const std::uint8_t* pad;
  const long long* prev_count;
  const float* prev_mean;
  const float* prev_var;
  long long* count_out;
  float* mean_out;
  float* var_out;
  float2* saved_stats;  // [B, L, G] (mhat, rstd) or null
  float2* saved_corr;   // [B, L] (1/(1 - beta1^c), 1/(1 - beta2^c)) or null
  unsigned* ticket;
  unsigned* flags;      // [time_tiles, chains]
  Aggregate* agg;       // [time_tiles, chains, Gt]
  ChainState* incl;     // [time_tiles, chains, Gt]
};

__device__ __forceinline__ bool mask_at(const std::uint8_t* m, long long i) { return m && m[i] != 0; }

// The carried state entering batch row b's first token for group g (zero without one).
__device__ __forceinline__ ChainState initial_state(const ForwardParams& p, int b, int g) {
  if (!p.prev_mean) return ChainState{0.f, 0.f, 0};
  return ChainState{p.prev_mean[b * p.tl.groups + g], p.prev_var[b * p.tl.groups + g], p.prev_count[b]};
}

// The state after batch row b's last token for group g, where the caller asked for it.
__device__ __forceinline__ void write_final_state(const ForwardParams& p, int b, int g, const ChainState& s) {
  if (!p.mean_out) return;
  p.mean_out[b * p.tl.groups + g] = s.m;
  p.var_out[b * p.tl.groups + g] = s.v;
  if (g == 0) p.count_out[b] = s.count;
}

// A (token, group)'s bias-corrected mean and rstd from its raw state (m, v) after `count` steps,
// with the corrections 1 / (1 - beta^count): all zero on a padded token or before any step.
struct Corrected {
  float mhat, rstd, ic1, ic2;
};
__device__ __forceinline__ Corrected bias_correct(const ForwardParams& p, bool padded, long long count, float m,
                                                  float v) {
  Corrected c{0.f, 0.f, 0.f, 0.f};
  if (!padded && count > 0) {
    const float n = static_cast<float>(count);
    c.ic1 = 1.f / -expm1f(n * p.d1.log_beta);
    c.ic2 = 1.f / -expm1f(n * p.d2.log_beta);
    c.mhat = m * c.ic1;
    c.rstd = rsqrtf(v * c.ic2 + p.eps);
  }
  return c;
}

// Keeps them for the backward: token t (a row of all B * L), group g of all G.
__device__ __forceinline__ void save_corrected(const ForwardParams& p, long long t, int g, const Corrected& c) {
  if (p.saved_stats) p.saved_stats[t * p.tl.groups + g] = make_float2(c.mhat, c.rstd);
  if (p.saved_corr && g == 0) p.saved_corr[t] = make_float2(c.ic1, c.ic2);
}

// The affine scale (weight + 1) and shift of the VEC channels from `c` (1 and 0 without them).
template <class T, int VEC>
__device__ __forceinline__ void load_affine(const T* weight, const T* bias, int c, float (&sc)[VEC], float (&sh)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) sc[j] = 1.f, sh[j] = 0.f;
  if (weight) {
    load_as_float<T, VEC>(weight + c, sc);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sc[j] += 1.f;
  }
  if (bias) load_as_float<T, VEC>(bias + c, sh);
}

// y for rows [0, lt) of a tile held in shared memory `pitch` elements apart, from each
// (row, group)'s bias-corrected mean and rstd ([row][Gt]): thread = one 16-byte word (the word
// mapping), whole rows per pass, so a warp's stores are contiguous. Padded tokens get 0.
template <class T, int VEC>
__device__ __forceinline__ void write_rows_by_word(const ForwardParams& p, const T* xs, int pitch, const float* s_mhat,
                                                   const float* s_rstd, int lt, int b, int t0, int c0,
                                                   const T* weight, const T* bias, T* y) {
  const Tiling& tl = p.tl;
  const WordMap wm(tl, VEC);
  const int Gt = tl.slab_groups, c = wm.word * VEC, gi = c / tl.group_size;
  const long long row0 = static_cast<long long>(b) * tl.length;
  float sc[VEC], sh[VEC];
  load_affine<T, VEC>(weight, bias, c0 + c, sc, sh);
  for (int r = wm.row0; r < lt; r += wm.row_step) {
    const Packed<T, VEC> pk = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * pitch + c);
    const float mh = s_mhat[r * Gt + gi], rs = s_rstd[r * Gt + gi];
    const bool padded = mask_at(p.pad, row0 + t0 + r);
    float out[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = padded ? 0.f : (to_float(pk.v[j]) - mh) * rs * sc[j] + sh[j];
    store_from_float<T, VEC>(y + b * p.y_sb + (t0 + r) * p.y_sl + c0 + c, out);
  }
}

// Sum over the `lanes` lanes (a power of two) that share one (token, group) pair.
__device__ __forceinline__ float pair_sum(float v, int lanes) {
  for (int off = lanes >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Starts loading rows [t0, t0 + lt) x channels [c0, c0 + Dc) of a [B, L, D] tensor into smem
// [lt][Dc]: 16-byte cp.async copies (all in flight at once) on the vector path, plain loads on
// the scalar path. Callers commit, wait and __syncthreads before reading.
template <class T, int VEC>
__device__ __forceinline__ void load_tile(T* dst, const T* src, long long sb, long long sl, int b, int t0, int lt,
                                          int c0, int dc) {
  const int words = dc / VEC;
  // (row, word) of element i, stepped without a division per element.
  int r = static_cast<int>(threadIdx.x) / words, w = static_cast<int>(threadIdx.x) - r * words;
  const int step_r = static_cast<int>(blockDim.x) / words, step_w = static_cast<int>(blockDim.x) - step_r * words;
  for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
    const T* g = src + b * sb + (t0 + r) * sl + c0 + w * VEC;
    if constexpr (VEC * sizeof(T) == 16) {
      cp_async_16(dst + r * dc + w * VEC, g);
    } else {
      *reinterpret_cast<Packed<T, VEC>*>(dst + r * dc + w * VEC) = *reinterpret_cast<const Packed<T, VEC>*>(g);
    }
    r += step_r;
    w += step_w;
    if (w >= words) {
      w -= words;
      ++r;
    }
  }
}

// One element of the forward's in-tile scan (see the local scan in forward_kernel).
struct ScanEl {
  int n;
  int reset;
  float bm, bv;
  __device__ static ScanEl identity() { return ScanEl{0, 0, 0.f, 0.f}; }
};

// a then b.
__device__ __forceinline__ ScanEl compose(const ScanEl& a, const ScanEl& b, const Decay& d1, const Decay& d2) {
  if (b.reset) return b;
  return ScanEl{a.n + b.n, a.reset, fmaf(expf(b.n * d1.log_beta), a.bm, b.bm), fmaf(expf(b.n * d2.log_beta), a.bv, b.bv)};
}

__device__ __forceinline__ ScanEl shfl_up(const ScanEl& e, int d) {
  return ScanEl{__shfl_up_sync(0xffffffffu, e.n, d), __shfl_up_sync(0xffffffffu, e.reset, d),
                __shfl_up_sync(0xffffffffu, e.bm, d), __shfl_up_sync(0xffffffffu, e.bv, d)};
}
__device__ __forceinline__ ScanEl shfl_idx(const ScanEl& e, int lane) {
  return ScanEl{__shfl_sync(0xffffffffu, e.n, lane), __shfl_sync(0xffffffffu, e.reset, lane),
                __shfl_sync(0xffffffffu, e.bm, lane), __shfl_sync(0xffffffffu, e.bv, lane)};
}

// The step of token t (global row index) with group moments (mu, s).
__device__ __forceinline__ ScanEl token_el(const ForwardParams& p, long long t, float mu, float s) {
  if (mask_at(p.pad, t)) return ScanEl::identity();
  return ScanEl{1, mask_at(p.bos, t) ? 1 : 0, p.d1.one_minus * mu, p.d2.one_minus * s};
}

// Shared-memory arrays of one tile in flight (besides the tile data itself).
struct ForwardTileSmem {
  float* m;             // [Lt][Gt] mu, then local m, then mhat
  float* v;             // [Lt][Gt] s, then local v, then rstd
  int* n;               // [Lt][Gt] local count, negative after a BOS
  ChainState* prefix;   // [Gt]
  Aggregate* window;    // [kWindow][Gt]
  Aggregate* own;       // [Gt]
  int* found;
};

// Starts the cp.async loads of the tile of `ticket` (or nothing past the last ticket).
template <class T, int VEC>
__device__ __forceinline__ void start_forward_tile(const ForwardParams& p, const T* x, unsigned ticket, T* xs) {
  const Tiling& tl = p.tl;
  const int chains = tl.batch * tl.slabs;
  if (ticket >= static_cast<unsigned>(tl.time_tiles * chains)) return;
  const int tt = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * tl.tile_tokens;
  load_tile<T, VEC>(xs, x, p.x_sb, p.x_sl, b, t0, min(tl.tile_tokens, tl.length - t0), slab * tl.slab_channels,
                    tl.slab_channels);
}

// Everything after the tile's data is in shared memory: moments, local scan, look-back, y.
template <class T, int VEC>
__device__ void forward_tile(const ForwardParams& p, const T* __restrict__ weight, const T* __restrict__ bias,
                             T* __restrict__ y, unsigned ticket, const T* xs, const ForwardTileSmem& sm) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups, K = tl.group_size;
  float* s_m = sm.m;
  float* s_v = sm.v;
  int* s_n = sm.n;
  ChainState* s_prefix = sm.prefix;
  Aggregate* s_window = sm.window;
  Aggregate* s_own = sm.own;
  int& s_found = *sm.found;
  const int chains = tl.batch * tl.slabs;
  const int tt = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * Lt, lt = min(Lt, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;
  const float inv_k = 1.f / K;  // a multiply per mean instead of a division (exact for powers of 2)
  (void)Lt;

  // Per (token, group) moments, two-pass.
  if (tl.word_mapped) {
    const WordMap wm(tl, VEC);
    const int gi = wm.word * VEC / K;
    for (int r0 = 0; r0 < lt; r0 += wm.row_step) {  // uniform trip count: every lane shuffles
      const int r = r0 + wm.row0;
      float v[VEC];
      if (r < lt) {
        const Packed<T, VEC> pk = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * Dc + wm.word * VEC);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = to_float(pk.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = 0.f;
      }
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < VEC; ++j) s += v[j];
      const float mu = pair_sum(s, wm.group_lanes) * inv_k;
      float q = 0.f;
#pragma unroll
      for (int j = 0; j < VEC; ++j) q += (v[j] - mu) * (v[j] - mu);
      q = pair_sum(q, wm.group_lanes) * inv_k;
      if (r < lt && (wm.word & (wm.group_lanes - 1)) == 0) {
        s_m[r * Gt + gi] = mu;
        s_v[r * Gt + gi] = q;
      }
    }
  } else {
    const int lanes = tl.lanes_per_pair, per_warp = 32 / lanes, lane = threadIdx.x & 31;
    const int sub = lane & (lanes - 1);
    const int pairs = lt * Gt;
    for (int base = (threadIdx.x >> 5) * per_warp; base < pairs; base += (blockDim.x >> 5) * per_warp) {
      const int pair = base + lane / lanes;
      const bool ok = pair < pairs;
      const int r = ok ? pair / Gt : 0, gi = ok ? pair - r * Gt : 0;
      const T* row = xs + r * Dc + gi * K;
      float s = 0.f;
      if (ok)
        for (int j = sub; j < K; j += lanes) s += to_float(row[j]);
      const float mu = pair_sum(s, lanes) * inv_k;
      float q = 0.f;
      if (ok)
        for (int j = sub; j < K; j += lanes) {
          const float d = to_float(row[j]) - mu;
          q += d * d;
        }
      q = pair_sum(q, lanes) * inv_k;
      if (ok && sub == 0) {
        s_m[pair] = mu;
        s_v[pair] = q;
      }
    }
  }
  __syncthreads();

  // Local scan from a zero state: one warp per group, a parallel affine scan over the tile's
  // tokens (lane l owns tokens [l * per, (l + 1) * per)). Each token maps the state entering it as
  // m' = reset ? bm : beta1^n m + bm (same for v with beta2), count' = reset ? n : count + n.
  // Decays are beta^n with the exact beta, so a sequence of steps agrees with the exact model.
  Aggregate own{};
  {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const int per = (lt + 31) / 32;
    for (int gi = warp; gi < Gt; gi += nwarps) {
      ScanEl agg = ScanEl::identity();
      for (int r = lane * per; r < min(lt, (lane + 1) * per); ++r)
        agg = compose(agg, token_el(p, row0 + t0 + r, s_m[r * Gt + gi], s_v[r * Gt + gi]), p.d1, p.d2);
      // Inclusive scan of the lanes' aggregates, then the exclusive prefix of this lane.
      ScanEl inc = agg;
      for (int d = 1; d < 32; d <<= 1) {
        const ScanEl up = shfl_up(inc, d);
        if (lane >= d) inc = compose(up, inc, p.d1, p.d2);
      }
      ScanEl run = shfl_up(inc, 1);
      if (lane == 0) run = ScanEl::identity();
      for (int r = lane * per; r < min(lt, (lane + 1) * per); ++r) {
        const int i = r * Gt + gi;
        run = compose(run, token_el(p, row0 + t0 + r, s_m[i], s_v[i]), p.d1, p.d2);
        s_m[i] = run.bm;
        s_v[i] = run.bv;
        s_n[i] = run.reset ? -run.n : run.n;
      }
      const ScanEl last = shfl_idx(inc, 31);
      if (lane == 0) s_own[gi] = last.reset ? Aggregate{0.f, last.bm, 0.f, last.bv, last.n, 1}
                                            : Aggregate{expf(last.n * p.d1.log_beta), last.bm,
                                                        expf(last.n * p.d2.log_beta), last.bv, last.n, 0};
    }
    __syncthreads();
    if (threadIdx.x < Gt) own = s_own[threadIdx.x];
  }

  // The state entering this tile.
  const int flag_index = tt * chains + chain;
  if (tt == 0) {
    if (threadIdx.x < Gt) {
      s_prefix[threadIdx.x] = initial_state(p, b, slab * Gt + threadIdx.x);
    }
  } else {
    if (threadIdx.x < Gt) p.agg[static_cast<long long>(flag_index) * Gt + threadIdx.x] = own;
    if (threadIdx.x < Gt) __threadfence();  // only the aggregate's writers
    __syncthreads();
    if (threadIdx.x == 0) lookback::store_flag(p.flags + flag_index, lookback::kAggregate);
    const ChainState st = lookback::chain_prefix<kWindow>(p.flags, chains, chain, tt, p.agg, p.incl, Gt, s_window,
                                                          &s_found, [](ChainState s, const Aggregate& a) { return apply(s, a); });
    if (threadIdx.x < Gt) s_prefix[threadIdx.x] = st;
  }
  __syncthreads();
  // Publish this tile's inclusive state.
  if (threadIdx.x < Gt) {
    const ChainState out = apply(s_prefix[threadIdx.x], own);
    if (tt + 1 < tl.time_tiles) {
      p.incl[static_cast<long long>(flag_index) * Gt + threadIdx.x] = out;
    } else {
      write_final_state(p, b, slab * Gt + threadIdx.x, out);
    }
  }
  if (threadIdx.x < Gt) __threadfence();  // only the inclusive state's writers
  __syncthreads();
  if (threadIdx.x == 0 && tt + 1 < tl.time_tiles) lookback::store_flag(p.flags + flag_index, lookback::kInclusive);

  // Per (token, group): bias-corrected mean and rstd.
  for (int i = threadIdx.x; i < lt * Gt; i += blockDim.x) {
    const int r = i / Gt, gi = i - r * Gt;
    const long long t = row0 + t0 + r;
    const ChainState in = s_prefix[gi];
    const int code = s_n[i];
    const bool reset = code < 0;
    const long long count = reset ? -code : in.count + code;
    const float m = reset ? s_m[i] : fmaf(expf(code * p.d1.log_beta), in.m, s_m[i]);
    const float v = reset ? s_v[i] : fmaf(expf(code * p.d2.log_beta), in.v, s_v[i]);
    const Corrected cs = bias_correct(p, mask_at(p.pad, t), count, m, v);
    s_m[i] = cs.mhat;
    s_v[i] = cs.rstd;
    save_corrected(p, t, slab * Gt + gi, cs);
  }
  __syncthreads();

  // y from the tile in shared memory.
  if (tl.word_mapped) {
    write_rows_by_word<T, VEC>(p, xs, Dc, s_m, s_v, lt, b, t0, c0, weight, bias, y);
    return;
  }
  const int words = Dc / VEC;
  for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
    const int r = i / words, w = i - r * words;
    const int c = w * VEC, gi = c / K;
    const long long t = row0 + t0 + r;
    float xv[VEC], out[VEC], sc[VEC], sh[VEC];
    const Packed<T, VEC> pk = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * Dc + c);
#pragma unroll
    for (int j = 0; j < VEC; ++j) xv[j] = to_float(pk.v[j]);
    if (weight) {
      load_as_float<T, VEC>(weight + c0 + c, sc);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sc[j] = 0.f;
    }
    if (bias) {
      load_as_float<T, VEC>(bias + c0 + c, sh);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sh[j] = 0.f;
    }
    const bool padded = mask_at(p.pad, t);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // A group may be narrower than a vector only when VEC == 1, so gi is per vector.
      const float mh = s_m[r * Gt + gi], rs = s_v[r * Gt + gi];
      out[j] = padded ? 0.f : (xv[j] - mh) * rs * (sc[j] + 1.f) + sh[j];
    }
    store_from_float<T, VEC>(y + b * p.y_sb + (t0 + r) * p.y_sl + c0 + c, out);
  }
}

// One tile per CTA, CTAs started in ticket order. Tiles are small so that many CTAs share an SM:
// while some wait in look-back (a few L2 round trips), others load and store. A persistent,
// double-buffered variant was measured slower: a ticket held while its CTA still works on an
// earlier tile publishes nothing, and every later tile of its chain waits for it.
template <class T, int VEC>
__global__ void __launch_bounds__(256) forward_kernel(ForwardParams p, const T* __restrict__ x,
                                                      const T* __restrict__ weight, const T* __restrict__ bias,
                                                      T* __restrict__ y) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);
  ForwardTileSmem sm;
  sm.m = reinterpret_cast<float*>(xs + Lt * Dc);
  sm.v = sm.m + Lt * Gt;
  sm.n = reinterpret_cast<int*>(sm.v + Lt * Gt);
  sm.prefix = reinterpret_cast<ChainState*>(sm.n + Lt * Gt + (Lt * Gt & 1));
  sm.window = reinterpret_cast<Aggregate*>(sm.prefix + Gt);
  sm.own = sm.window + kWindow * Gt;
  __shared__ int s_found;
  __shared__ unsigned s_ticket;
  sm.found = &s_found;
  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const unsigned ticket = s_ticket;
  start_forward_tile<T, VEC>(p, x, ticket, xs);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  forward_tile<T, VEC>(p, weight, bias, y, ticket, xs, sm);
}

// ---- backward ---------------------------------------------------------------------------------

// The reverse chain's per-group state: adjoints of the raw m and v entering a step from the future.
struct AdjointState {
  float u, w;
};

struct AdjointAggregate {
  float a1, b1, a2, b2;
};

__device__ __forceinline__ AdjointAggregate lookback_load(const AdjointAggregate* a) {
  return AdjointAggregate{__ldcg(&a->a1), __ldcg(&a->b1), __ldcg(&a->a2), __ldcg(&a->b2)};
}
__device__ __forceinline__ AdjointState lookback_load(const AdjointState* s) {
  return AdjointState{__ldcg(&s->u), __ldcg(&s->w)};
}
__device__ __forceinline__ AdjointState apply(AdjointState s, const AdjointAggregate& a) {
  return AdjointState{fmaf(a.a1, s.u, a.b1), fmaf(a.a2, s.w, a.b2)};
}

struct BackwardParams {
  Tiling tl;
  long long x_sb, x_sl, dy_sb, dy_sl, dx_sb, dx_sl;
  Decay d1, d2;
  const std::uint8_t* bos;
  const std::uint8_t* pad;
  const float2* saved_stats;  // [B, L, G] (mhat, rstd)
  const float2* saved_corr;   // [B, L]
  const float* dmean;         // [B, G] or null
  const float* dvar;
  float* dprev_mean;          // [B, G] or null
  float* dprev_var;
  float* partial;             // [2][time_tiles * B][D]: dweight and dbias per tile row block, or null
  unsigned* ticket;
  unsigned* flags;
  AdjointAggregate* agg;
  AdjointState* incl;
};

// One element of the backward's in-tile reverse scan.
struct AdjEl {
  int n;
  int reset;
  float cu, cw;
  __device__ static AdjEl identity() { return AdjEl{0, 0, 0.f, 0.f}; }
};

// `first` (later in time, applied first) then `second`.
__device__ __forceinline__ AdjEl then(const AdjEl& first, const AdjEl& second, const Decay& d1, const Decay& d2) {
  if (second.reset) return second;
  return AdjEl{first.n + second.n, first.reset, fmaf(expf(second.n * d1.log_beta), first.cu, second.cu),
               fmaf(expf(second.n * d2.log_beta), first.cw, second.cw)};
}

__device__ __forceinline__ AdjEl shfl_down(const AdjEl& e, int d) {
  return AdjEl{__shfl_down_sync(0xffffffffu, e.n, d), __shfl_down_sync(0xffffffffu, e.reset, d),
               __shfl_down_sync(0xffffffffu, e.cu, d), __shfl_down_sync(0xffffffffu, e.cw, d)};
}
__device__ __forceinline__ AdjEl shfl_idx(const AdjEl& e, int lane) {
  return AdjEl{__shfl_sync(0xffffffffu, e.n, lane), __shfl_sync(0xffffffffu, e.reset, lane),
               __shfl_sync(0xffffffffu, e.cu, lane), __shfl_sync(0xffffffffu, e.cw, lane)};
}

// The map of token t on the adjoints: local terms lm, lv (already 0 on padded steps).
__device__ __forceinline__ AdjEl adj_el(const BackwardParams& p, long long t, float lm, float lv) {
  if (mask_at(p.pad, t)) return AdjEl::identity();
  if (mask_at(p.bos, t)) return AdjEl{0, 1, 0.f, 0.f};
  return AdjEl{1, 0, fmaf(-p.d1.one_minus, lm, lm), fmaf(-p.d2.one_minus, lv, lv)};
}

struct BackwardTileSmem {
  float *mu, *gm, *gv, *e1;
  float2* stats;  // [Lt][Gt] the forward's (mhat, rstd) of this tile
  float2* corr;   // [Lt] the forward's bias corrections
  AdjointState* prefix;
  AdjointAggregate* window;
  AdjointAggregate* own;
  int* found;
};

template <class T, int VEC>
__device__ __forceinline__ void start_backward_tile(const BackwardParams& p, const T* x, const T* dy, unsigned ticket,
                                                    T* xs) {
  const Tiling& tl = p.tl;
  const int chains = tl.batch * tl.slabs;
  if (ticket >= static_cast<unsigned>(tl.time_tiles * chains)) return;
  const int step = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int tt = tl.time_tiles - 1 - step;
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * tl.tile_tokens, lt = min(tl.tile_tokens, tl.length - t0), c0 = slab * tl.slab_channels;
  load_tile<T, VEC>(xs, x, p.x_sb, p.x_sl, b, t0, lt, c0, tl.slab_channels);
  load_tile<T, VEC>(xs + tl.tile_tokens * tl.slab_channels, dy, p.dy_sb, p.dy_sl, b, t0, lt, c0, tl.slab_channels);
}

// dx for rows [0, lt) of a backward tile (x and dy rows `pitch` elements apart in shared memory)
// from each (row, group)'s saved (mhat, rstd), mu, du and dv ([row][Gt]), by the word mapping; then
// the tile's share of dweight / dbias into p.partial: each thread sums its word's rows, and the
// threads sharing a word (one per row of a pass) add their sums in a fixed order through `red`
// (2 * row_step * Dc floats; it may alias the tiles, which are dead by then).
template <class T, int VEC>
__device__ __forceinline__ void write_dx_by_word(const BackwardParams& p, const T* xs, const T* gs, int pitch,
                                                 const float2* stats, const float* s_mu, const float* s_du,
                                                 const float* s_dv, int lt, int b, int t0, int c0, int tt,
                                                 const T* weight, T* dx, float* red) {
  const Tiling& tl = p.tl;
  const WordMap wm(tl, VEC);
  const int Dc = tl.slab_channels, Gt = tl.slab_groups, c = wm.word * VEC, gi = c / tl.group_size;
  const long long row0 = static_cast<long long>(b) * tl.length;
  const float inv_k = 1.f / tl.group_size;
  float sc[VEC], acc_w[VEC], acc_b[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) sc[j] = 1.f, acc_w[j] = 0.f, acc_b[j] = 0.f;
  if (weight) {
    load_as_float<T, VEC>(weight + c0 + c, sc);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sc[j] += 1.f;
  }
  for (int r = wm.row0; r < lt; r += wm.row_step) {
    const int pi = r * Gt + gi;
    const float2 st = stats[pi];
    const bool padded = mask_at(p.pad, row0 + t0 + r);
    const Packed<T, VEC> px = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * pitch + c);
    const Packed<T, VEC> pg = *reinterpret_cast<const Packed<T, VEC>*>(gs + r * pitch + c);
    const float du = s_du[pi], dv = s_dv[pi], mu = s_mu[pi];
    float out[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float xv = to_float(px.v[j]), g = to_float(pg.v[j]);
      out[j] = padded ? 0.f : g * sc[j] * st.y + (du + 2.f * dv * (xv - mu)) * inv_k;
      if (!padded) {
        acc_w[j] += g * (xv - st.x) * st.y;
        acc_b[j] += g;
      }
    }
    store_from_float<T, VEC>(dx + b * p.dx_sb + (t0 + r) * p.dx_sl + c0 + c, out);
  }
  if (!p.partial) return;
  __syncthreads();  // every thread is done reading the tiles `red` may alias
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    red[(wm.row0 * 2) * Dc + c + j] = acc_w[j];
    red[(wm.row0 * 2 + 1) * Dc + c + j] = acc_b[j];
  }
  __syncthreads();
  const long long part = static_cast<long long>(tt) * tl.batch + b;
  const long long parts = static_cast<long long>(tl.time_tiles) * tl.batch;
  for (int col = threadIdx.x; col < Dc; col += blockDim.x) {
    float sw = 0.f, sb = 0.f;
    for (int k = 0; k < wm.row_step; ++k) {
      sw += red[(2 * k) * Dc + col];
      sb += red[(2 * k + 1) * Dc + col];
    }
    p.partial[part * tl.channels + c0 + col] = sw;
    p.partial[(parts + part) * tl.channels + c0 + col] = sb;
  }
}

template <class T, int VEC>
__device__ void backward_tile(const BackwardParams& p, const T* __restrict__ weight, T* __restrict__ dx,
                              unsigned ticket, T* xs, const BackwardTileSmem& sm) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups, K = tl.group_size;
  T* gs = xs + Lt * Dc;
  float* s_mu = sm.mu;
  float* s_gm = sm.gm;
  float* s_gv = sm.gv;
  float* s_e1 = sm.e1;
  AdjointState* s_prefix = sm.prefix;
  AdjointAggregate* s_window = sm.window;
  AdjointAggregate* s_own = sm.own;
  int& s_found = *sm.found;
  const int chains = tl.batch * tl.slabs;
  const int step = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int tt = tl.time_tiles - 1 - step;  // tiles are visited from the end of time
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * Lt, lt = min(Lt, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;

  // Per (token, group): mu, and the local adjoint terms -r db / c1 and -r^3 ds / (2 c2).
  if (tl.word_mapped) {
    const WordMap wm(tl, VEC);
    const int c = wm.word * VEC, gi = c / K;
    float sc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) sc[j] = 1.f;
    if (weight) {
      load_as_float<T, VEC>(weight + c0 + c, sc);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sc[j] += 1.f;
    }
    for (int r0 = 0; r0 < lt; r0 += wm.row_step) {
      const int r = r0 + wm.row0;
      const bool ok = r < lt;
      const long long t = row0 + t0 + (ok ? r : 0);
      const float2 st = ok ? sm.stats[(ok ? r : 0) * Gt + gi] : make_float2(0.f, 0.f);
      float sx = 0.f, sdb = 0.f, sds = 0.f;
      if (ok) {
        const Packed<T, VEC> px = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * Dc + c);
        const Packed<T, VEC> pg = *reinterpret_cast<const Packed<T, VEC>*>(gs + r * Dc + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float xv = to_float(px.v[j]), g = to_float(pg.v[j]) * sc[j];
          sx += xv;
          sdb += g;
          sds += g * (xv - st.x);
        }
      }
      sx = pair_sum(sx, wm.group_lanes);
      sdb = pair_sum(sdb, wm.group_lanes);
      sds = pair_sum(sds, wm.group_lanes);
      if (ok && (wm.word & (wm.group_lanes - 1)) == 0) {
        const float2 corr = sm.corr[r];
        const bool padded = mask_at(p.pad, t);
        const int pair = r * Gt + gi;
        s_mu[pair] = sx / K;
        s_gm[pair] = padded ? 0.f : -st.y * sdb * corr.x;
        s_gv[pair] = padded ? 0.f : -0.5f * st.y * st.y * st.y * sds * corr.y;
      }
    }
  } else {
    const int lanes = tl.lanes_per_pair, per_warp = 32 / lanes, lane = threadIdx.x & 31;
    const int sub = lane & (lanes - 1);
    const int pairs = lt * Gt;
    for (int base = (threadIdx.x >> 5) * per_warp; base < pairs; base += (blockDim.x >> 5) * per_warp) {
      const int pair = base + lane / lanes;
      const bool ok = pair < pairs;
      const int r = ok ? pair / Gt : 0, gi = ok ? pair - r * Gt : 0;
      const long long t = row0 + t0 + r;
      const float2 st = ok ? sm.stats[(ok ? r : 0) * Gt + gi] : make_float2(0.f, 0.f);
      const T* xr = xs + r * Dc + gi * K;
      const T* gr = gs + r * Dc + gi * K;
      float sx = 0.f, sdb = 0.f, sds = 0.f;
      if (ok)
        for (int j = sub; j < K; j += lanes) {
          const float xv = to_float(xr[j]);
          const float g = to_float(gr[j]) * (weight ? to_float(weight[c0 + gi * K + j]) + 1.f : 1.f);
          sx += xv;
          sdb += g;
          sds += g * (xv - st.x);
        }
      sx = pair_sum(sx, lanes);
      sdb = pair_sum(sdb, lanes);
      sds = pair_sum(sds, lanes);
      if (ok && sub == 0) {
        const float2 corr = sm.corr[r];
        const bool padded = mask_at(p.pad, t);
        s_mu[pair] = sx / K;
        s_gm[pair] = padded ? 0.f : -st.y * sdb * corr.x;
        s_gv[pair] = padded ? 0.f : -0.5f * st.y * st.y * st.y * sds * corr.y;
      }
    }
  }
  __syncthreads();

  // Local reverse scan from a zero adjoint at the tile's end: one warp per group, a parallel
  // suffix scan (lane l owns tokens [l * per, (l + 1) * per)). Token t maps the adjoint arriving
  // from t + 1 to the one it passes to t - 1: u' = beta1 (u + lm_t) on a valid step, 0 at a
  // document start, unchanged on a padded step (w likewise with beta2 and lv_t). A composition
  // is u -> reset ? c : beta^n u + c. Each token stores the map of the adjoint arriving at it
  // (n, or -1 after a reset, in s_e1) and gm = c + lm_t, gv = c + lv_t.
  AdjointAggregate own{};
  {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const int per = (lt + 31) / 32;
    const int lo = lane * per, hi = min(lt, (lane + 1) * per);
    for (int gi = warp; gi < Gt; gi += nwarps) {
      AdjEl agg = AdjEl::identity();  // this lane's tokens, last to first
      for (int r = hi - 1; r >= lo; --r) {
        const int i = r * Gt + gi;
        agg = then(agg, adj_el(p, row0 + t0 + r, s_gm[i], s_gv[i]), p.d1, p.d2);
      }
      AdjEl inc = agg;  // inclusive suffix: lanes l .. 31
      for (int d = 1; d < 32; d <<= 1) {
        const AdjEl down = shfl_down(inc, d);
        if (lane + d < 32) inc = then(down, inc, p.d1, p.d2);
      }
      AdjEl run = shfl_down(inc, 1);
      if (lane == 31) run = AdjEl::identity();
      for (int r = hi - 1; r >= lo; --r) {
        const int i = r * Gt + gi;
        const float lm = s_gm[i], lv = s_gv[i];
        s_e1[i] = run.reset ? -1.f : static_cast<float>(run.n);
        s_gm[i] = run.cu + lm;
        s_gv[i] = run.cw + lv;
        run = then(run, adj_el(p, row0 + t0 + r, lm, lv), p.d1, p.d2);
      }
      const AdjEl first = shfl_idx(inc, 0);
      if (lane == 0)
        s_own[gi] = first.reset ? AdjointAggregate{0.f, first.cu, 0.f, first.cw}
                                : AdjointAggregate{expf(first.n * p.d1.log_beta), first.cu,
                                                   expf(first.n * p.d2.log_beta), first.cw};
    }
    __syncthreads();
    if (threadIdx.x < Gt) own = s_own[threadIdx.x];
  }

  const int flag_index = step * chains + chain;
  if (step == 0) {
    if (threadIdx.x < Gt) {
      const int g = slab * Gt + threadIdx.x;
      s_prefix[threadIdx.x] = p.dmean ? AdjointState{p.dmean[b * tl.groups + g], p.dvar[b * tl.groups + g]}
                                      : AdjointState{0.f, 0.f};
    }
  } else {
    if (threadIdx.x < Gt) p.agg[static_cast<long long>(flag_index) * Gt + threadIdx.x] = own;
    if (threadIdx.x < Gt) __threadfence();  // only the aggregate's writers
    __syncthreads();
    if (threadIdx.x == 0) lookback::store_flag(p.flags + flag_index, lookback::kAggregate);
    const AdjointState st = lookback::chain_prefix<kWindow>(
        p.flags, chains, chain, step, p.agg, p.incl, Gt, s_window, &s_found,
        [](AdjointState s, const AdjointAggregate& a) { return apply(s, a); });
    if (threadIdx.x < Gt) s_prefix[threadIdx.x] = st;
  }
  __syncthreads();
  if (threadIdx.x < Gt) {
    const AdjointState out = apply(s_prefix[threadIdx.x], own);
    if (tt > 0) {
      p.incl[static_cast<long long>(flag_index) * Gt + threadIdx.x] = out;
    } else if (p.dprev_mean) {
      const int g = slab * Gt + threadIdx.x;
      p.dprev_mean[b * tl.groups + g] = out.u;
      p.dprev_var[b * tl.groups + g] = out.w;
    }
  }
  if (threadIdx.x < Gt) __threadfence();  // only the inclusive state's writers
  __syncthreads();
  if (threadIdx.x == 0 && tt > 0) lookback::store_flag(p.flags + flag_index, lookback::kInclusive);

  // du, dv per (token, group).
  for (int i = threadIdx.x; i < lt * Gt; i += blockDim.x) {
    const int r = i / Gt, gi = i - r * Gt;
    const long long t = row0 + t0 + r;
    const AdjointState in = s_prefix[gi];
    const bool padded = mask_at(p.pad, t);
    const float n = s_e1[i];
    const float e1 = n < 0.f ? 0.f : expf(n * p.d1.log_beta), e2 = n < 0.f ? 0.f : expf(n * p.d2.log_beta);
    s_gm[i] = padded ? 0.f : p.d1.one_minus * fmaf(e1, in.u, s_gm[i]);
    s_gv[i] = padded ? 0.f : p.d2.one_minus * fmaf(e2, in.w, s_gv[i]);
  }
  __syncthreads();

  // dx, and this tile's share of dweight / dbias (one column per thread, summed over the tokens).
  if (tl.word_mapped) {
    write_dx_by_word<T, VEC>(p, xs, gs, Dc, sm.stats, s_mu, s_gm, s_gv, lt, b, t0, c0, tt, weight, dx,
                             reinterpret_cast<float*>(xs));
    return;
  }
  const float inv_k = 1.f / K;
  const int words = Dc / VEC;
  for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
    const int r = i / words, w = i - r * words;
    const int c = w * VEC, gi = c / K;
    const long long t = row0 + t0 + r;
    const int pi = r * Gt + gi;
    const float2 st = sm.stats[r * Gt + gi];
    const bool padded = mask_at(p.pad, t);
    float xv[VEC], gv[VEC], sc[VEC], out[VEC];
    {
      const Packed<T, VEC> px = *reinterpret_cast<const Packed<T, VEC>*>(xs + r * Dc + c);
      const Packed<T, VEC> pg = *reinterpret_cast<const Packed<T, VEC>*>(gs + r * Dc + c);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xv[j] = to_float(px.v[j]);
        gv[j] = to_float(pg.v[j]);
      }
    }
    if (weight) {
      load_as_float<T, VEC>(weight + c0 + c, sc);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sc[j] = 0.f;
    }
    const float du = s_gm[pi], dv = s_gv[pi], mu = s_mu[pi];
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      out[j] = padded ? 0.f : gv[j] * (sc[j] + 1.f) * st.y + (du + 2.f * dv * (xv[j] - mu)) * inv_k;
    store_from_float<T, VEC>(dx + b * p.dx_sb + (t0 + r) * p.dx_sl + c0 + c, out);
  }
  if (p.partial) {
    const long long part = static_cast<long long>(tt) * tl.batch + b;
    const long long parts = static_cast<long long>(tl.time_tiles) * tl.batch;
    for (int c = threadIdx.x; c < Dc; c += blockDim.x) {
      const int gi = c / K;
      float sw = 0.f, sb = 0.f;
      for (int r = 0; r < lt; ++r) {
        const long long t = row0 + t0 + r;
        if (mask_at(p.pad, t)) continue;
        const float2 st = sm.stats[r * Gt + gi];
        const float g = to_float(gs[r * Dc + c]);
        sw += g * (to_float(xs[r * Dc + c]) - st.x) * st.y;
        sb += g;
      }
      p.partial[part * tl.channels + c0 + c] = sw;
      p.partial[(parts + part) * tl.channels + c0 + c] = sb;
    }
  }
}

template <class T, int VEC>
__global__ void __launch_bounds__(256) backward_kernel(BackwardParams p, const T* __restrict__ x,
                                                       const T* __restrict__ weight, const T* __restrict__ dy,
                                                       T* __restrict__ dx) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);  // x then dy
  BackwardTileSmem sm;
  sm.mu = reinterpret_cast<float*>(xs + 2 * Lt * Dc);
  sm.gm = sm.mu + Lt * Gt;
  sm.gv = sm.gm + Lt * Gt;
  sm.e1 = sm.gv + Lt * Gt;
  sm.stats = reinterpret_cast<float2*>((reinterpret_cast<std::uintptr_t>(sm.e1 + Lt * Gt) + 15) & ~std::uintptr_t{15});
  sm.corr = sm.stats + Lt * Gt;
  sm.prefix = reinterpret_cast<AdjointState*>(sm.corr + Lt);
  sm.window = reinterpret_cast<AdjointAggregate*>(sm.prefix + Gt);
  sm.own = sm.window + kWindow * Gt;
  __shared__ int s_found;
  __shared__ unsigned s_ticket;
  sm.found = &s_found;
  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const unsigned ticket = s_ticket;
  start_backward_tile<T, VEC>(p, x, dy, ticket, xs);
  cp_async_commit();
  {
    // The forward's per-step statistics of this tile, staged in shared memory while the tile
    // loads: read inside the token loops straight from global memory they cost one L2 round
    // trip per token (measured: most of the backward's time).
    const int chains = tl.batch * tl.slabs;
    const int step = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
    const int tt = tl.time_tiles - 1 - step, b = chain / tl.slabs, slab = chain % tl.slabs;
    const int t0 = tt * Lt, lt = min(Lt, tl.length - t0);
    const long long row = static_cast<long long>(b) * tl.length + t0;
    for (int i = threadIdx.x; i < lt * Gt; i += blockDim.x) {
      const int r = i / Gt, gi = i - r * Gt;
      sm.stats[i] = p.saved_stats[(row + r) * tl.groups + slab * Gt + gi];
    }
    for (int r = threadIdx.x; r < lt; r += blockDim.x) sm.corr[r] = p.saved_corr[row + r];
  }
  cp_async_wait<0>();
  __syncthreads();
  backward_tile<T, VEC>(p, weight, dx, ticket, xs, sm);
}

// out_y[c] = sum over parts of partial[(y * parts + part) * channels + c] for y = 0, 1 (dweight,
// dbias; a null out skips its half). Thread (c, j) of a CTA sums parts j, j + 8, j + 16, ... into
// four accumulators, then the 8 x 4 sums are added in a fixed order: deterministic. One thread per
// channel walking all parts serially (the previous form) took 48 us per array at L = 16384 (256
// parts, 4096 channels: 16 CTAs, latency-bound), a fifth of the backward.
template <int kUnused = 0>  // a template: header-defined kernels must not clash at link time
__global__ void __launch_bounds__(256) sum_parts_kernel(const float* __restrict__ partial, long long parts, int channels,
                                                        float* __restrict__ out0, float* __restrict__ out1) {
  constexpr int kSplit = 8;
  __shared__ float s[kSplit][4][33];
  float* out = blockIdx.y == 0 ? out0 : out1;
  if (!out) return;  // uniform over the CTA
  const int cl = static_cast<int>(threadIdx.x) & 31, j = static_cast<int>(threadIdx.x) >> 5;
  const int c = static_cast<int>(blockIdx.x) * 32 + cl;
  const float* src = partial + static_cast<long long>(blockIdx.y) * parts * channels + c;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (c < channels) {
    long long k = j;
    for (; k + 3 * kSplit < parts; k += 4 * kSplit) {
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += src[(k + u * kSplit) * channels];
    }
    for (; k < parts; k += kSplit) acc[0] += src[k * channels];
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) s[j][u][cl] = acc[u];
  __syncthreads();
  if (j == 0 && c < channels) {
    float t = 0.f;
    for (int q = 0; q < kSplit; ++q)
#pragma unroll
      for (int u = 0; u < 4; ++u) t += s[q][u][cl];
    out[c] = t;
  }
}

}  // namespace gecko::timestep_norm::kernels
