// The timestep decay normalization backward with whole token rows per lane (sm_90; device code
// only, launch.cuh selects it). Same schedule as kernel.cuh's backward_kernel (one tile per CTA,
// tiles from the end of time in ticket order, deterministic decoupled look-back over the reverse
// chain); the phases of a tile are rebuilt as in the forward of kernel_rows.cuh.
//
// Why: backward_kernel holds 40 tokens x 512 channels of x and of dy (two CTAs per SM), reduces
// each (token, group) with shuffles over the lanes sharing it, scans each group with one warp
// stepping ceil(40 / 32) tokens per lane with an expf per composition, and looks back through a
// shared window with a CTA barrier per round. Here:
//   - a tile is 64 tokens x Dc channels (whole groups, rows of at most 512 bytes) of x and of dy,
//     loaded by bulk copies (one instruction per row), so three CTAs share an SM;
//   - warp w takes the half-groups (group, 32 tokens) w, w + 8, ...; lane r owns one token and
//     sums its group's K channels on its own, in channel order (no shuffles);
//   - the reverse scan of each half is one warp suffix scan with beta^n from a table (n <= 64
//     inside a tile); the lower half composes with the upper half's total when du is formed;
//   - the look-back applies the aggregates in registers (warp_chain_prefix of kernel_rows.cuh).
// dx and the tile's dweight / dbias partial sums are written as in backward_kernel
// (write_dx_by_word).
#pragma once

#include <cstdint>

#include "gecko/core/bulk_copy.cuh"
#include "gecko/core/lookback.cuh"
#include "gecko/core/vector_io.cuh"
#include "gecko/ops/timestep_norm/kernel.cuh"
#include "gecko/ops/timestep_norm/kernel_rows.cuh"

namespace gecko::timestep_norm::kernels {

// Dynamic shared memory of one backward CTA (the host sizes the launch with it): the x and dy
// tiles, then per (token, group) the saved statistics and four floats, the tokens' corrections,
// each half's scan total, the prefix, the affine scale and the beta^n tables.
template <class T>
GECKO_HOST_DEVICE constexpr std::size_t rows_backward_smem_bytes(int pitch, int gt, int dc) {
  return 2 * static_cast<std::size_t>(kRowsTile) * pitch * sizeof(T)          // x, dy
         + static_cast<std::size_t>(kRowsTile) * gt * sizeof(float2)         // saved (mhat, rstd)
         + static_cast<std::size_t>(kRowsTile) * sizeof(float2)              // saved corrections
         + static_cast<std::size_t>(kRowsTile) * gt * 4 * sizeof(float)      // mu, gm, gv, code
         + static_cast<std::size_t>(gt) * 2 * sizeof(AdjEl)                  // half totals
         + static_cast<std::size_t>(gt) * sizeof(AdjointState)               // prefix
         + static_cast<std::size_t>(dc) * sizeof(float)                      // weight + 1
         + 2 * (kRowsTile + 1) * sizeof(float);                              // beta^n tables
}

// `first` (later in time, applied first) then `second`, with beta^n from the tables.
__device__ __forceinline__ AdjEl then_table(const AdjEl& first, const AdjEl& second, const float* pw1,
                                            const float* pw2) {
  if (second.reset) return second;
  return AdjEl{first.n + second.n, first.reset, fmaf(pw1[second.n], first.cu, second.cu),
               fmaf(pw2[second.n], first.cw, second.cw)};
}

template <class T, int KV>
__global__ void __launch_bounds__(256, 3)
    backward_rows_kernel(BackwardParams p, RowsConfig cfg, const T* __restrict__ x, const T* __restrict__ weight,
                         const T* __restrict__ dy, T* __restrict__ dx) {
  using Word = Packed<T, kVec16<T>>;
  constexpr int VEC = kVec16<T>, K = KV * VEC;
  const Tiling& tl = p.tl;
  const int Dc = tl.slab_channels, Gt = tl.slab_groups, pitch = cfg.pitch;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int chains = tl.batch * tl.slabs;

  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);
  T* gs = xs + kRowsTile * pitch;
  float2* s_stats = reinterpret_cast<float2*>(gs + kRowsTile * pitch);  // [64][Gt]
  float2* s_corr = s_stats + kRowsTile * Gt;                             // [64]
  float* s_mu = reinterpret_cast<float*>(s_corr + kRowsTile);           // [64][Gt]
  float* s_gm = s_mu + kRowsTile * Gt;  // [64][Gt] run + local term, then du
  float* s_gv = s_gm + kRowsTile * Gt;  // [64][Gt] likewise, then dv
  int* s_code = reinterpret_cast<int*>(s_gv + kRowsTile * Gt);  // [64][Gt] run's n, -1 after a reset
  AdjEl* s_half = reinterpret_cast<AdjEl*>(s_code + kRowsTile * Gt);    // [Gt][2] each half's total
  AdjointState* s_prefix = reinterpret_cast<AdjointState*>(s_half + 2 * Gt);
  float* s_scale = reinterpret_cast<float*>(s_prefix + Gt);  // [Dc] weight + 1
  float* s_pw1 = s_scale + Dc;
  float* s_pw2 = s_pw1 + kRowsTile + 1;
  __shared__ std::uint64_t s_bar;
  const unsigned ticket = rows_prologue(cfg, p.ticket, &s_bar, s_pw1, s_pw2);
  const int step = static_cast<int>(ticket) / chains, chain = static_cast<int>(ticket) % chains;
  const int tt = tl.time_tiles - 1 - step;  // tiles are visited from the end of time
  const int b = chain / tl.slabs, slab = chain % tl.slabs;
  const int t0 = tt * kRowsTile, lt = min(kRowsTile, tl.length - t0), c0 = slab * Dc;
  const long long row0 = static_cast<long long>(b) * tl.length;
  if (warp == 0) {
    const unsigned row_bytes = static_cast<unsigned>(Dc * sizeof(T));
    if (lane == 0) bulk::arrive_expect_bytes(&s_bar, 2 * row_bytes * lt);
    __syncwarp();
    for (int r = lane; r < lt; r += 32) {
      bulk::load(xs + r * pitch, x + b * p.x_sb + (t0 + r) * p.x_sl + c0, row_bytes, &s_bar);
      bulk::load(gs + r * pitch, dy + b * p.dy_sb + (t0 + r) * p.dy_sl + c0, row_bytes, &s_bar);
    }
  }
  // The forward's statistics of the tile and the affine scale, while the rows are in flight.
  for (int i = threadIdx.x; i < lt * Gt; i += blockDim.x) {
    const int r = i / Gt, gi = i - r * Gt;
    s_stats[i] = p.saved_stats[(row0 + t0 + r) * tl.groups + slab * Gt + gi];
  }
  for (int r = threadIdx.x; r < lt; r += blockDim.x) s_corr[r] = p.saved_corr[row0 + t0 + r];
  for (int c = threadIdx.x; c < Dc; c += blockDim.x) s_scale[c] = weight ? to_float(weight[c0 + c]) + 1.f : 1.f;
  __syncthreads();
  bulk::wait_parity(&s_bar, 0);

  // Per (token, group): mu and the local adjoint terms lm = -r db c1, lv = -r^3 ds c2 / 2 (db, ds
  // the sums of dy * scale and of dy * scale * (x - mhat)); then each half's reverse scan from a
  // zero adjoint at the half's end. Token t maps the adjoint arriving from t + 1 to the one it
  // passes to t - 1 (adj_el); each token keeps the map of what arrives at it from later tokens of
  // its half (the exclusive suffix `run`): its count (or -1 after a reset) and run + local term.
  const float inv_k = 1.f / K;
  for (int hg = warp; hg < 2 * Gt; hg += nwarps) {
    const int gi = hg >> 1, r = 32 * (hg & 1) + lane;
    AdjEl el = AdjEl::identity();
    float lm = 0.f, lv = 0.f;
    if (r < lt) {
      const float2 st = s_stats[r * Gt + gi];
      const Word* xr = reinterpret_cast<const Word*>(xs + r * pitch) + gi * KV;
      const Word* gr = reinterpret_cast<const Word*>(gs + r * pitch) + gi * KV;
      const float* sc = s_scale + gi * K;
      float sx = 0.f, sdb = 0.f, sds = 0.f;
#pragma unroll
      for (int v = 0; v < KV; ++v) {
        const Word xw = xr[v], gw = gr[v];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float xv = to_float(xw.v[e]), g = to_float(gw.v[e]) * sc[v * VEC + e];
          sx += xv;
          sdb += g;
          sds = fmaf(g, xv - st.x, sds);
        }
      }
      const long long t = row0 + t0 + r;
      const bool padded = mask_at(p.pad, t);
      const float2 corr = s_corr[r];
      s_mu[r * Gt + gi] = sx * inv_k;
      lm = padded ? 0.f : -st.y * sdb * corr.x;
      lv = padded ? 0.f : -0.5f * st.y * st.y * st.y * sds * corr.y;
      el = adj_el(p, t, lm, lv);
    }
    AdjEl inc = el;  // tokens r .. 31 of the half, the later applied first
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const AdjEl down = shfl_down(inc, d);
      if (lane + d < 32) inc = then_table(down, inc, s_pw1, s_pw2);
    }
    AdjEl run = shfl_down(inc, 1);
    if (lane == 31) run = AdjEl::identity();
    if (r < lt) {
      const int i = r * Gt + gi;
      s_code[i] = run.reset ? -1 : run.n;
      s_gm[i] = run.cu + lm;
      s_gv[i] = run.cw + lv;
    }
    if (lane == 0) s_half[hg] = inc;
  }
  __syncthreads();

  // The adjoint state arriving at this tile's end (warp 0, lane = group); then the one leaving it.
  const int flag_index = step * chains + chain;
  if (warp == 0) {
    AdjointAggregate own{};
    if (lane < Gt) {
      const AdjEl all = then_table(s_half[2 * lane + 1], s_half[2 * lane], s_pw1, s_pw2);
      own = all.reset ? AdjointAggregate{0.f, all.cu, 0.f, all.cw}
                      : AdjointAggregate{s_pw1[all.n], all.cu, s_pw2[all.n], all.cw};
    }
    AdjointState in{0.f, 0.f};
    if (step == 0) {
      if (lane < Gt && p.dmean) {
        const int g = slab * Gt + lane;
        in = AdjointState{p.dmean[b * tl.groups + g], p.dvar[b * tl.groups + g]};
      }
    } else {
      if (lane < Gt) {
        p.agg[static_cast<long long>(flag_index) * Gt + lane] = own;
        __threadfence();  // only the aggregate's writers
      }
      __syncwarp();
      if (lane == 0) lookback::store_flag(p.flags + flag_index, lookback::kAggregate);
      in = warp_chain_prefix(p.flags, chains, chain, step, p.agg, p.incl, Gt);
    }
    if (lane < Gt) {
      s_prefix[lane] = in;
      const AdjointState out = apply(in, own);
      if (tt > 0) {
        p.incl[static_cast<long long>(flag_index) * Gt + lane] = out;
        __threadfence();  // only the inclusive state's writers
      } else if (p.dprev_mean) {
        const int g = slab * Gt + lane;
        p.dprev_mean[b * tl.groups + g] = out.u;
        p.dprev_var[b * tl.groups + g] = out.w;
      }
    }
    __syncwarp();
    if (lane == 0 && tt > 0) lookback::store_flag(p.flags + flag_index, lookback::kInclusive);
  }
  __syncthreads();

  // du, dv per (token, group): a lower-half token's run continues through the upper half's total
  // (at most 63 steps), then the prefix arriving at the tile's end.
  for (int hg = warp; hg < 2 * Gt; hg += nwarps) {
    const int gi = hg >> 1, r = 32 * (hg & 1) + lane;
    if (r >= lt) continue;
    const int i = r * Gt + gi;
    int code = s_code[i];
    float gm = s_gm[i], gv = s_gv[i];
    if ((hg & 1) == 0 && code >= 0) {
      const AdjEl up = s_half[2 * gi + 1];
      gm = fmaf(s_pw1[code], up.cu, gm);
      gv = fmaf(s_pw2[code], up.cw, gv);
      code = up.reset ? -1 : code + up.n;
    }
    const AdjointState in = s_prefix[gi];
    const bool padded = mask_at(p.pad, row0 + t0 + r);
    const float e1 = code < 0 ? 0.f : s_pw1[code], e2 = code < 0 ? 0.f : s_pw2[code];
    s_gm[i] = padded ? 0.f : p.d1.one_minus * fmaf(e1, in.u, gm);
    s_gv[i] = padded ? 0.f : p.d2.one_minus * fmaf(e2, in.w, gv);
  }
  __syncthreads();

  write_dx_by_word<T, VEC>(p, xs, gs, pitch, s_stats, s_mu, s_gm, s_gv, lt, b, t0, c0, tt, weight, dx,
                           reinterpret_cast<float*>(xs));
}

}  // namespace gecko::timestep_norm::kernels
