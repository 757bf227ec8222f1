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

inline constexpr int kWindow = 16;  // aggregates staged per look-back round

struct Tiling {
  int batch, length, channels, groups, group_size;
  int slab_channels;  // Dc
  int slab_groups;    // Gt
  int tile_tokens;    // Lt
  int slabs;          // D / Dc
  int time_tiles;     // ceil(L / Lt)
  int lanes_per_pair; // lanes that reduce one (token, group): a power of two <= 32
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

// Sum over the `lanes` lanes (a power of two) that share one (token, group) pair.
__device__ __forceinline__ float pair_sum(float v, int lanes) {
  for (int off = lanes >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Loads rows [t0, t0 + lt) x channels [c0, c0 + Dc) of a [B, L, D] tensor into smem [lt][Dc].
template <class T, int VEC>
__device__ __forceinline__ void load_tile(T* dst, const T* src, long long sb, long long sl, int b, int t0, int lt,
                                          int c0, int dc) {
  const int words = dc / VEC;
  for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
    const int r = i / words, w = i - r * words;
    const T* g = src + b * sb + (t0 + r) * sl + c0 + w * VEC;
    *reinterpret_cast<Packed<T, VEC>*>(dst + r * dc + w * VEC) = *reinterpret_cast<const Packed<T, VEC>*>(g);
  }
}

template <class T, int VEC>
__global__ void __launch_bounds__(256) forward_kernel(ForwardParams p, const T* __restrict__ x,
                                                      const T* __restrict__ weight, const T* __restrict__ bias,
                                                      T* __restrict__ y) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups, K = tl.group_size;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);                                       // [Lt][Dc]
  float* s_m = reinterpret_cast<float*>(smem + sizeof(T) * Lt * Dc);        // [Lt][Gt] mu, then local m, then mhat
  float* s_v = s_m + Lt * Gt;                                               // s, then local v, then rstd
  int* s_n = reinterpret_cast<int*>(s_v + Lt * Gt);                         // local count, negative after a BOS
  ChainState* s_prefix = reinterpret_cast<ChainState*>(s_n + Lt * Gt + (Lt * Gt & 1));  // [Gt]
  Aggregate* s_window = reinterpret_cast<Aggregate*>(s_prefix + Gt);        // [kWindow][Gt]
  __shared__ unsigned s_ticket;
  __shared__ int s_found;

  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const int chains = tl.batch * tl.slabs;
  const int tt = static_cast<int>(s_ticket) / chains, chain = static_cast<int>(s_ticket) % chains;
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * Lt, lt = min(Lt, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;

  load_tile<T, VEC>(xs, x, p.x_sb, p.x_sl, b, t0, lt, c0, Dc);
  __syncthreads();

  // Per (token, group) moments, two-pass: lanes_per_pair lanes per pair.
  {
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
      const float mu = pair_sum(s, lanes) / K;
      float q = 0.f;
      if (ok)
        for (int j = sub; j < K; j += lanes) {
          const float d = to_float(row[j]) - mu;
          q += d * d;
        }
      q = pair_sum(q, lanes) / K;
      if (ok && sub == 0) {
        s_m[pair] = mu;
        s_v[pair] = q;
      }
    }
  }
  __syncthreads();

  // Local scan from a zero state, one thread per group of the slab. The update is written as
  // m + (1 - beta)(mu - m) with the exact (1 - beta), so the decay it implies matches the exact
  // beta^n used for the entering state (float(beta) itself is 1.7e-4 off in 1 - beta at 0.9999).
  Aggregate own{};
  if (threadIdx.x < Gt) {
    const int gi = threadIdx.x;
    float m = 0.f, v = 0.f;
    int n = 0;
    bool reset = false;
    for (int r = 0; r < lt; ++r) {
      const long long t = row0 + t0 + r;
      const int i = r * Gt + gi;
      if (!mask_at(p.pad, t)) {
        const float mu = s_m[i], s = s_v[i];
        if (mask_at(p.bos, t)) {
          m = p.d1.one_minus * mu;
          v = p.d2.one_minus * s;
          n = 1;
          reset = true;
        } else {
          m = fmaf(p.d1.one_minus, mu - m, m);
          v = fmaf(p.d2.one_minus, s - v, v);
          ++n;
        }
      }
      s_m[i] = m;
      s_v[i] = v;
      s_n[i] = reset ? -n : n;
    }
    own = reset ? Aggregate{0.f, m, 0.f, v, n, 1}
                : Aggregate{expf(n * p.d1.log_beta), m, expf(n * p.d2.log_beta), v, n, 0};
  }

  // The state entering this tile.
  const int flag_index = tt * chains + chain;
  if (tt == 0) {
    if (threadIdx.x < Gt) {
      const int g = slab * Gt + threadIdx.x;
      ChainState st{0.f, 0.f, 0};
      if (p.prev_mean) st = ChainState{p.prev_mean[b * tl.groups + g], p.prev_var[b * tl.groups + g], p.prev_count[b]};
      s_prefix[threadIdx.x] = st;
    }
  } else {
    if (threadIdx.x < Gt) p.agg[static_cast<long long>(flag_index) * Gt + threadIdx.x] = own;
    __threadfence();
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
    } else if (p.mean_out) {
      const int g = slab * Gt + threadIdx.x;
      p.mean_out[b * tl.groups + g] = out.m;
      p.var_out[b * tl.groups + g] = out.v;
      if (g == 0) p.count_out[b] = out.count;
    }
  }
  __threadfence();
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
    float mhat = 0.f, rstd = 0.f, ic1 = 0.f, ic2 = 0.f;
    if (!mask_at(p.pad, t) && count > 0) {
      const float c = static_cast<float>(count);
      ic1 = 1.f / -expm1f(c * p.d1.log_beta);
      ic2 = 1.f / -expm1f(c * p.d2.log_beta);
      mhat = m * ic1;
      rstd = rsqrtf(v * ic2 + p.eps);
    }
    s_m[i] = mhat;
    s_v[i] = rstd;
    if (p.saved_stats) p.saved_stats[t * tl.groups + slab * Gt + gi] = make_float2(mhat, rstd);
    if (p.saved_corr && slab == 0 && gi == 0) p.saved_corr[t] = make_float2(ic1, ic2);
  }
  __syncthreads();

  // y from the tile in shared memory.
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

template <class T, int VEC>
__global__ void __launch_bounds__(256) backward_kernel(BackwardParams p, const T* __restrict__ x,
                                                       const T* __restrict__ weight, const T* __restrict__ dy,
                                                       T* __restrict__ dx) {
  const Tiling& tl = p.tl;
  const int Lt = tl.tile_tokens, Dc = tl.slab_channels, Gt = tl.slab_groups, K = tl.group_size;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);                                       // [Lt][Dc]
  T* gs = xs + Lt * Dc;                                                     // [Lt][Dc] dy
  float* s_mu = reinterpret_cast<float*>(gs + Lt * Dc);                     // [Lt][Gt]
  float* s_gm = s_mu + Lt * Gt;   // local adjoint of m at the step, then du
  float* s_gv = s_gm + Lt * Gt;   // local adjoint of v at the step, then dv
  float* s_e1 = s_gv + Lt * Gt;   // decay from the adjoint entering the tile (at its end) to the step
  float* s_e2 = s_e1 + Lt * Gt;
  AdjointState* s_prefix = reinterpret_cast<AdjointState*>(s_e2 + Lt * Gt);  // [Gt]
  AdjointAggregate* s_window = reinterpret_cast<AdjointAggregate*>(s_prefix + Gt);  // [kWindow][Gt]
  __shared__ unsigned s_ticket;
  __shared__ int s_found;

  if (threadIdx.x == 0) s_ticket = lookback::take_ticket(p.ticket);
  __syncthreads();
  const int chains = tl.batch * tl.slabs;
  const int step = static_cast<int>(s_ticket) / chains, chain = static_cast<int>(s_ticket) % chains;
  const int tt = tl.time_tiles - 1 - step;  // tiles are visited from the end of time
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * Lt, lt = min(Lt, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;

  load_tile<T, VEC>(xs, x, p.x_sb, p.x_sl, b, t0, lt, c0, Dc);
  load_tile<T, VEC>(gs, dy, p.dy_sb, p.dy_sl, b, t0, lt, c0, Dc);
  __syncthreads();

  // Per (token, group): mu, and the local adjoint terms -r db / c1 and -r^3 ds / (2 c2).
  {
    const int lanes = tl.lanes_per_pair, per_warp = 32 / lanes, lane = threadIdx.x & 31;
    const int sub = lane & (lanes - 1);
    const int pairs = lt * Gt;
    for (int base = (threadIdx.x >> 5) * per_warp; base < pairs; base += (blockDim.x >> 5) * per_warp) {
      const int pair = base + lane / lanes;
      const bool ok = pair < pairs;
      const int r = ok ? pair / Gt : 0, gi = ok ? pair - r * Gt : 0;
      const long long t = row0 + t0 + r;
      const float2 st = ok ? p.saved_stats[t * tl.groups + slab * Gt + gi] : make_float2(0.f, 0.f);
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
        const float2 corr = p.saved_corr[t];
        const bool padded = mask_at(p.pad, t);
        s_mu[pair] = sx / K;
        s_gm[pair] = padded ? 0.f : -st.y * sdb * corr.x;
        s_gv[pair] = padded ? 0.f : -0.5f * st.y * st.y * st.y * sds * corr.y;
      }
    }
  }
  __syncthreads();

  // Local reverse scan from a zero adjoint at the tile's end. As in the forward, beta * g is
  // written g - (1 - beta) g with the exact (1 - beta), and decays over n steps are beta^n.
  AdjointAggregate own{};
  if (threadIdx.x < Gt) {
    const int gi = threadIdx.x;
    float u = 0.f, w = 0.f;
    int n = 0;  // valid steps after this one in the tile; -1 once a document start was passed
    for (int r = lt - 1; r >= 0; --r) {
      const long long t = row0 + t0 + r;
      const int i = r * Gt + gi;
      const float gm = u + s_gm[i], gv = w + s_gv[i];
      s_gm[i] = gm;
      s_gv[i] = gv;
      s_e1[i] = n < 0 ? 0.f : expf(n * p.d1.log_beta);
      s_e2[i] = n < 0 ? 0.f : expf(n * p.d2.log_beta);
      if (mask_at(p.pad, t)) continue;  // the adjoint passes a padded step unchanged
      if (mask_at(p.bos, t)) {          // nothing before a document start sees what follows
        u = w = 0.f;
        n = -1;
      } else {
        u = fmaf(-p.d1.one_minus, gm, gm);
        w = fmaf(-p.d2.one_minus, gv, gv);
        if (n >= 0) ++n;
      }
    }
    own = n < 0 ? AdjointAggregate{0.f, u, 0.f, w}
                : AdjointAggregate{expf(n * p.d1.log_beta), u, expf(n * p.d2.log_beta), w};
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
    __threadfence();
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
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && tt > 0) lookback::store_flag(p.flags + flag_index, lookback::kInclusive);

  // du, dv per (token, group).
  for (int i = threadIdx.x; i < lt * Gt; i += blockDim.x) {
    const int r = i / Gt, gi = i - r * Gt;
    const long long t = row0 + t0 + r;
    const AdjointState in = s_prefix[gi];
    const bool padded = mask_at(p.pad, t);
    s_gm[i] = padded ? 0.f : p.d1.one_minus * fmaf(s_e1[i], in.u, s_gm[i]);
    s_gv[i] = padded ? 0.f : p.d2.one_minus * fmaf(s_e2[i], in.w, s_gv[i]);
  }
  __syncthreads();

  // dx, and this tile's share of dweight / dbias (one column per thread, summed over the tokens).
  const float inv_k = 1.f / K;
  const int words = Dc / VEC;
  for (int i = threadIdx.x; i < lt * words; i += blockDim.x) {
    const int r = i / words, w = i - r * words;
    const int c = w * VEC, gi = c / K;
    const long long t = row0 + t0 + r;
    const int pi = r * Gt + gi;
    const float2 st = p.saved_stats[t * tl.groups + slab * Gt + gi];
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
        const float2 st = p.saved_stats[t * tl.groups + slab * Gt + gi];
        const float g = to_float(gs[r * Dc + c]);
        sw += g * (to_float(xs[r * Dc + c]) - st.x) * st.y;
        sb += g;
      }
      p.partial[part * tl.channels + c0 + c] = sw;
      p.partial[(parts + part) * tl.channels + c0 + c] = sb;
    }
  }
}

// out[c] = sum over parts of partial[part * channels + c], in part order (deterministic).
__global__ void sum_parts_kernel(const float* __restrict__ partial, long long parts, int channels,
                                 float* __restrict__ out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  float s = 0.f;
  for (long long k = 0; k < parts; ++k) s += partial[k * channels + c];
  out[c] = s;
}

}  // namespace gecko::timestep_norm::kernels
