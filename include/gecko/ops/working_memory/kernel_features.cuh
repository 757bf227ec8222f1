// The feature maps of adaptive working memory (spec 2.2) and the per-feature statistics, in
// memory-bound passes that do not depend on the dv columns (so they run once, not once per slice):
//
//   query_rows_kernel    q̂ = softmax over features of each query row (zero where the output mask
//                        drops the token);
//   key_rows_kernel      k̂ likewise for each key row of an absorbed chunk, and per 64-token block
//                        the column statistics (max, sum exp) over the block's unmasked tokens for
//                        each feature;
//   stats_kernel         ℓ = logsumexp over the chunk (combining the blocks in a fixed order), the
//                        resets, and the log-normaliser recurrence A' = logaddexp(ℓ, Ā), ρ = exp(ℓ - A');
//   kappa_kernel         κ = exp(ak - ℓ) (0 for key-masked tokens), token-major like k̂.
//
// grad_stats_kernel runs the backward of the log-normaliser recurrence (spec 2.7: gρ, gA⁺, gℓ, and
// s = Σ_t gκ κ for the softmax-over-time backward) from per-slice row sums, in a fixed order.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "gecko/core/vector_io.cuh"
#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

inline constexpr int kRowBlock = 64;  // tokens per block of the row kernels and the column statistics

// Blocks of kRowBlock tokens covering n tokens (a chunk's keys, the queries; the last one partial).
GECKO_HOST_DEVICE inline std::int64_t row_blocks(std::int64_t n) { return (n + kRowBlock - 1) / kRowBlock; }

struct FeatParams {
  int B = 0, H = 0, dk = 0;
  std::int64_t chunk = 0;
  // Queries: rows [q_row0, q_row0 + q_rows) of aq get a q̂ row (the others are never read).
  const void* aq = nullptr;
  std::int64_t aq_sb = 0, aq_sh = 0, aq_st = 0;
  std::int64_t q_row0 = 0, q_rows = 0;
  int q_blocks = 0;                   // per (b, h)
  void* qhat = nullptr;               // [B, H, Lq, dk]
  std::int64_t qhat_bh = 0;           // Lq * dk
  // Keys of the absorbed chunks a = 0 .. nabs-1 (source chunk a - hs; -1 = prev_k).
  const void* ak = nullptr;
  std::int64_t ak_sb = 0, ak_sh = 0, ak_st = 0;
  const void* pk = nullptr;
  std::int64_t pk_sb = 0, pk_sh = 0, pk_st = 0;
  int nabs = 0, hs = 0;
  void* khat = nullptr;               // [B, H, nabs * C, dk]
  float2* kstat = nullptr;            // [B, H, nabs, C / 64, dk] (max, sum exp(x - max))
  Docs docs;
};

template <class T>
__device__ __forceinline__ const T* key_row(const FeatParams& p, int b, int h, int pc, std::int64_t t) {
  if (pc >= 0)
    return static_cast<const T*>(p.ak) + b * p.ak_sb + h * p.ak_sh + (pc * p.chunk + t) * p.ak_st;
  return static_cast<const T*>(p.pk) + b * p.pk_sb + h * p.pk_sh + t * p.pk_st;
}

// One row of dk features as loaded: lane holds features [8 lane, 8 lane + 8) (lanes past dk / 8
// hold nothing), still packed, from one 16-byte load (two for fp32; the launchers require aq, ak
// and prev_k 16-byte aligned with 16-byte strides). The row kernels keep a warp's 8 rows in
// flight this way and widen one row at a time: holding all 8 as floats cost 112-119 registers,
// 2 CTAs an SM, and the kernels ran at a third of the copy bandwidth on latency. (Lanes used to
// hold pairs 64 apart, four 4-byte loads and stores a row: 420 instructions a row in all.)
template <class T>
struct RawRow {
  using Pair = std::conditional_t<std::is_same_v<T, float>, float2, std::uint32_t>;
  Pair w[4];
};

// CTAs per SM the 16-bit row kernels are compiled for (query rows 4: 64 registers; key rows 3: 80;
// κ 4: 64; each with a few spilled bytes); fp32 (tests) leaves the count to ptxas (0).
template <class T, int kCtas>
inline constexpr int kRowCtas = std::is_same_v<T, float> ? 0 : kCtas;

// Whether this lane holds features of a dk-wide row.
__device__ __forceinline__ bool lane_active(int lane, int dk) { return 8 * lane < dk; }

template <class T>
__device__ __forceinline__ void load_raw(const T* row, int lane, int dk, RawRow<T>& r) {
  if (!lane_active(lane, dk)) return;
  const uint4* src = reinterpret_cast<const uint4*>(row + 8 * lane);
  uint4* dst = reinterpret_cast<uint4*>(r.w);
  dst[0] = src[0];
  if constexpr (sizeof(r.w) == 32) dst[1] = src[1];
}

// The row as floats; -inf on inactive lanes.
template <class T>
__device__ __forceinline__ void widen(const RawRow<T>& r, bool active, float (&x)[8]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 v = active ? load2<T>(reinterpret_cast<const T*>(&r.w[k])) : make_float2(-INFINITY, -INFINITY);
    x[2 * k] = v.x;
    x[2 * k + 1] = v.y;
  }
}

// e^(x - m) as exp_shift<T>(x, shift_of<T>(m)): for 16-bit T the hardware's base-2 exponential of
// x log2 e - m log2 e, one FMA and one MUFU (its ~2 ulp error and the FMA's rounding vanish in a
// 16-bit result; a quarter of expf's instructions); expf(x - m) for fp32.
inline constexpr float kLog2e = 1.4426950408889634f;
template <class T>
__device__ __forceinline__ float shift_of(float m) {
  return std::is_same_v<T, float> ? m : m * kLog2e;
}
template <class T>
__device__ __forceinline__ float exp_shift(float x, float shift) {
  if constexpr (std::is_same_v<T, float>) {
    return expf(x - shift);
  } else {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(fmaf(x, kLog2e, -shift)));
    return y;
  }
}

// Softmax of a row as widen() gives it; writes T to this lane's features of dst (zeros when masked)
// when `write`. Callers run it for every row of the warp, written or not: its shuffles inside a
// branch on the row made the compiler wrap each one in a divergence-safe sequence (WARPSYNC,
// BSSY / BSYNC), which cost more instructions than the arithmetic.
template <class T>
__device__ __forceinline__ void softmax_row(const float (&x)[8], bool active, bool zero, T* dst, bool write) {
  float m = -INFINITY;
#pragma unroll
  for (int e = 0; e < 8; ++e) m = fmaxf(m, x[e]);
  m = warp_max(m);
  const float shift = shift_of<T>(m);
  float y[8], s = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    y[e] = active ? exp_shift<T>(x[e], shift) : 0.f;
    s += y[e];
  }
  const float inv = zero ? 0.f : __frcp_rn(warp_sum(s));  // = 1 / sum, without the division's sequence
#pragma unroll
  for (int e = 0; e < 8; ++e) y[e] *= inv;
  if (write) store_from_float<T, 8>(dst, y);
}

// Query rows: blocks (b, h, 64-query block), B * H * q_blocks of them. The query and key rows are
// two kernels: the query rows need 64 registers and run 4 CTAs an SM, the key rows (with the
// column statistics) 80 and 3; as one kernel both ran at 3 (60 us against 24 + 32 at 16K).
template <class T>
__global__ void __launch_bounds__(kThreads, kRowCtas<T, 4>) query_rows_kernel(const __grid_constant__ FeatParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int dk = p.dk;
  const bool active = lane_active(lane, dk);
  const std::int64_t C = p.chunk;
  const std::int64_t blk = blockIdx.x;
  const int bh = static_cast<int>(blk / p.q_blocks), qb = static_cast<int>(blk % p.q_blocks);
  const int b = bh / p.H, h = bh % p.H;
  const std::int64_t end = p.q_row0 + p.q_rows;
  RawRow<T> raw[8];
  bool masked[8];
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const std::int64_t t = p.q_row0 + qb * kRowBlock + warp * 8 + rr;
    masked[rr] = false;
    raw[rr] = RawRow<T>{};
    if (t < end) {
      load_raw<T>(static_cast<const T*>(p.aq) + b * p.aq_sb + h * p.aq_sh + t * p.aq_st, lane, dk, raw[rr]);
      std::int64_t id;
      if (p.docs.last(b, t / C - 2, id)) masked[rr] = p.docs.token(b, t) != id;
    }
  }
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const std::int64_t t = p.q_row0 + qb * kRowBlock + warp * 8 + rr;
    float x[8];
    widen<T>(raw[rr], active, x);
    softmax_row<T>(x, active, masked[rr], static_cast<T*>(p.qhat) + bh * p.qhat_bh + t * dk + 8 * lane,
                   active && t < end);
  }
}

// The 64-token key block a CTA of the key-row kernels owns (blockIdx over (b, h, absorb step a,
// block kb)), and the chunk its keys come from (pc = -1: the carried prev_k).
struct KeyBlock {
  int kbn, kb, a, bh, b, h, pc;
};
__device__ __forceinline__ KeyBlock key_block(std::int64_t blk, std::int64_t C, int nabs, int H, int hs) {
  KeyBlock k;
  k.kbn = static_cast<int>(row_blocks(C));
  k.kb = static_cast<int>(blk % k.kbn);
  k.a = static_cast<int>((blk / k.kbn) % nabs);
  k.bh = static_cast<int>(blk / (static_cast<std::int64_t>(k.kbn) * nabs));
  k.b = k.bh / H;
  k.h = k.bh % H;
  k.pc = k.a - hs;
  return k;
}

// A warp's 8 rows of the block, loaded raw (16 bytes a lane); masked: past the chunk's end (a
// partial last block: neither read nor written) or outside the chunk's last document.
template <class T>
__device__ __forceinline__ void load_key_rows(const FeatParams& p, const KeyBlock& k, int warp, int lane,
                                              RawRow<T> (&raw)[8], bool (&masked)[8]) {
  std::int64_t doc = 0;
  const bool docs = p.docs.last(k.b, k.pc, doc);
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const std::int64_t t = k.kb * kRowBlock + warp * 8 + rr;
    masked[rr] = t >= p.chunk;
    raw[rr] = RawRow<T>{};
    if (t < p.chunk) {
      load_raw<T>(key_row<T>(p, k.b, k.h, k.pc, t), lane, p.dk, raw[rr]);
      masked[rr] = docs && p.docs.chunk_token(k.b, k.pc, t) != doc;
    }
  }
}

// Key rows: blocks (b, h, a, 64-token block): k̂ and the block's column statistics.
template <class T>
__global__ void __launch_bounds__(kThreads, kRowCtas<T, 3>) key_rows_kernel(const __grid_constant__ FeatParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int dk = p.dk;
  const bool active = lane_active(lane, dk);
  const std::int64_t C = p.chunk;
  __shared__ float sm_m[8][256], sm_s[8][256];
  const KeyBlock k = key_block(blockIdx.x, C, p.nabs, p.H, p.hs);
  const int kbn = k.kbn, kb = k.kb, a = k.a, bh = k.bh;
  RawRow<T> raw[8];
  bool masked[8];
  load_key_rows<T>(p, k, warp, lane, raw, masked);
  T* khat = static_cast<T*>(p.khat) + ((static_cast<std::int64_t>(bh) * p.nabs + a) * C) * dk;
  float cm[8], cs[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    cm[e] = -INFINITY;
    cs[e] = 0.f;
  }
  // The warp's column statistics in two passes over its rows (max, then the sum of exponentials):
  // an online max-and-rescale per element diverged within the warp and ran two exponentials an
  // element.
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const std::int64_t t = kb * kRowBlock + warp * 8 + rr;
    float x[8];
    widen<T>(raw[rr], active, x);
    softmax_row<T>(x, active, false, khat + t * dk + 8 * lane, active && t < C);
    if (!masked[rr]) {
#pragma unroll
      for (int e = 0; e < 8; ++e) cm[e] = fmaxf(cm[e], x[e]);
    }
  }
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    if (masked[rr]) continue;
    float x[8];
    widen<T>(raw[rr], active, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) cs[e] += cm[e] == -INFINITY ? 0.f : exp_shift<T>(x[e], shift_of<T>(cm[e]));
  }
  if (active) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      sm_m[warp][8 * lane + e] = cm[e];
      sm_s[warp][8 * lane + e] = cs[e];
    }
  }
  __syncthreads();
  for (int f = threadIdx.x; f < dk; f += kThreads) {
    float m = -INFINITY;
    for (int w = 0; w < 8; ++w) m = fmaxf(m, sm_m[w][f]);
    float s = 0.f;
    if (m != -INFINITY)
      for (int w = 0; w < 8; ++w)
        if (sm_m[w][f] != -INFINITY) s += sm_s[w][f] * expf(sm_m[w][f] - m);
    p.kstat[((static_cast<std::int64_t>(bh) * p.nabs + a) * kbn + kb) * dk + f] = make_float2(m, s);
  }
}

struct StatsParams {
  int B = 0, H = 0, dk = 0, nabs = 0, kbn = 0, j0 = 0;
  bool has_state = false;
  const float* log_norm = nullptr;  // [B, H, dk] or null (no state: -inf)
  std::int64_t ln_sb = 0, ln_sh = 0;
  float* log_norm_out = nullptr;    // or null
  std::int64_t lo_sb = 0, lo_sh = 0;
  const float2* kstat = nullptr;
  float* ell = nullptr;             // [B, H, nabs, dk]
  float* rho = nullptr;
  float* abar = nullptr;            // backward only: Ā and A' per step
  float* anew = nullptr;
  std::uint8_t* resets = nullptr;   // [B, nabs]
  Docs docs;
};

// The statistics run as two kernels: stats_ell_kernel reduces every absorb step's column
// statistics to ℓ in parallel (one CTA per (b, h, step), one thread per feature), then
// stats_kernel runs only the dk-sized recurrence over the steps (reading ℓ). A single kernel doing
// both, one CTA per (b, h), left all but B * H CTAs of the GPU idle while each thread walked
// nabs * C / 64 column statistics in sequence.
template <int kUnused = 0>
__global__ void __launch_bounds__(kThreads) stats_ell_kernel(const __grid_constant__ StatsParams p) {
  const int a = blockIdx.x % p.nabs, bh = blockIdx.x / p.nabs, b = bh / p.H, h = bh % p.H, i = threadIdx.x;
  if (h == 0 && i == 0) {
    const int j = a + p.j0;
    std::int64_t s2 = 0, s1 = 0;
    const bool reset = p.docs.last(b, j - 2, s2) && p.docs.last(b, j - 1, s1) && s2 != s1;
    p.resets[b * p.nabs + a] = reset ? 1 : 0;
  }
  if (i >= p.dk) return;
  const float2* ks = p.kstat + (static_cast<std::int64_t>(bh) * p.nabs + a) * p.kbn * p.dk + i;
  float m = -INFINITY;
  for (int k = 0; k < p.kbn; ++k) m = fmaxf(m, ks[k * p.dk].x);
  float s = 0.f;
  for (int k = 0; k < p.kbn; ++k) {
    const float2 v = ks[k * p.dk];
    if (v.x != -INFINITY) s += v.y * expf(v.x - m);
  }
  p.ell[(static_cast<std::int64_t>(bh) * p.nabs + a) * p.dk + i] = m + logf(s);  // finite: the chunk's
                                                                                 // last token is never masked
}

// One CTA per (b, h), one thread per feature: absorb step a (step j = a + j0, chunk j - 1), from
// the ℓ and resets of stats_ell_kernel.
template <int kUnused = 0>  // a template: header-defined kernels must not clash at link time
__global__ void __launch_bounds__(kThreads) stats_kernel(const __grid_constant__ StatsParams p) {
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H, i = threadIdx.x;
  if (i >= p.dk) return;
  float A = p.log_norm ? p.log_norm[b * p.ln_sb + h * p.ln_sh + i] : -INFINITY;
  for (int a = 0; a < p.nabs; ++a) {
    const bool reset = p.resets[b * p.nabs + a] != 0;
    const std::int64_t row = (static_cast<std::int64_t>(bh) * p.nabs + a) * p.dk + i;
    const float ell = p.ell[row];
    if (reset) A = -INFINITY;
    const float hi = fmaxf(ell, A), lo = fminf(ell, A);
    const float a_new = hi + log1pf(expf(lo - hi));
    p.rho[row] = expf(ell - a_new);
    if (p.abar) {
      p.abar[row] = A;
      p.anew[row] = a_new;
    }
    A = a_new;
  }
  if (p.log_norm_out) p.log_norm_out[b * p.lo_sb + h * p.lo_sh + i] = A;
}

struct KappaParams {
  int B = 0, H = 0, dk = 0, nabs = 0, hs = 0;
  std::int64_t chunk = 0;
  const void* ak = nullptr;
  std::int64_t ak_sb = 0, ak_sh = 0, ak_st = 0;
  const void* pk = nullptr;
  std::int64_t pk_sb = 0, pk_sh = 0, pk_st = 0;
  const float* ell = nullptr;  // [B, H, nabs, dk]
  void* kappa = nullptr;       // [B, H, nabs * C, dk]
  Docs docs;
};

// Blocks (b, h, a, 64-token block); each warp writes 8 rows of κ.
template <class T>
__global__ void __launch_bounds__(kThreads, kRowCtas<T, 4>) kappa_kernel(const __grid_constant__ KappaParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int dk = p.dk;
  const bool active = lane_active(lane, dk);
  const std::int64_t C = p.chunk;
  const KeyBlock k = key_block(blockIdx.x, C, p.nabs, p.H, p.hs);
  const int kb = k.kb, a = k.a, bh = k.bh;
  const float* ell = p.ell + (static_cast<std::int64_t>(bh) * p.nabs + a) * dk;
  float l[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) l[e] = active ? shift_of<T>(ell[8 * lane + e]) : 0.f;
  FeatParams fp;  // load_key_rows' view of the sources
  fp.dk = dk;
  fp.chunk = C;
  fp.ak = p.ak;
  fp.ak_sb = p.ak_sb;
  fp.ak_sh = p.ak_sh;
  fp.ak_st = p.ak_st;
  fp.pk = p.pk;
  fp.pk_sb = p.pk_sb;
  fp.pk_sh = p.pk_sh;
  fp.pk_st = p.pk_st;
  fp.docs = p.docs;
  RawRow<T> raw[8];
  bool masked[8];
  load_key_rows<T>(fp, k, warp, lane, raw, masked);
  T* kappa = static_cast<T*>(p.kappa) + ((static_cast<std::int64_t>(bh) * p.nabs + a) * C) * dk;
#pragma unroll
  for (int rr = 0; rr < 8; ++rr) {
    const std::int64_t t = kb * kRowBlock + warp * 8 + rr;
    if (t >= C) continue;  // past a partial last block
    if (!active) continue;
    float x[8], y[8];
    widen<T>(raw[rr], true, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = masked[rr] ? 0.f : exp_shift<T>(x[e], l[e]);
    store_from_float<T, 8>(kappa + t * dk + 8 * lane, y);
  }
}

struct GradStatsParams {
  int B = 0, H = 0, dk = 0, nabs = 0, nsl = 0;
  const float* parts = nullptr;         // [B, H, nabs, 2, nsl, dk]: Σ gM∘R and Σ gM∘M̄ per slice
  const float* rho = nullptr;           // [B, H, nabs, dk]
  const float* abar = nullptr;
  const float* anew = nullptr;
  const std::uint8_t* resets = nullptr; // [B, nabs]
  const float* dln_out = nullptr;       // [B, H, dk] or null (= 0)
  std::int64_t do_sb = 0, do_sh = 0;
  float* dln = nullptr;                 // [B, H, dk] or null (no carried state)
  std::int64_t dl_sb = 0, dl_sh = 0;
  float* gell = nullptr;                // [B, H, nabs, dk]
  float* svec = nullptr;                // [B, H, nabs, dk]
};

template <int kUnused = 0>
__global__ void __launch_bounds__(kThreads) grad_stats_kernel(const __grid_constant__ GradStatsParams p) {
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H, i = threadIdx.x;
  if (i >= p.dk) return;
  float ga = p.dln_out ? p.dln_out[b * p.do_sb + h * p.do_sh + i] : 0.f;
  for (int a = p.nabs - 1; a >= 0; --a) {
    const std::int64_t row = (static_cast<std::int64_t>(bh) * p.nabs + a) * p.dk + i;
    const float* pr = p.parts + (static_cast<std::int64_t>(bh) * p.nabs + a) * 2 * p.nsl * p.dk + i;
    float g_rho = 0.f, t = 0.f;
    for (int s = 0; s < p.nsl; ++s) g_rho += pr[s * p.dk];
    for (int s = 0; s < p.nsl; ++s) t += pr[(p.nsl + s) * p.dk];
    const float rho = p.rho[row];
    const float g_plus = ga - g_rho * rho;
    p.gell[row] = rho * (g_plus + g_rho);
    p.svec[row] = rho * (g_rho + t);  // Σ_t gκ κ = Σ_c gU ∘ U, U = R + M̄, gU = ρ gM
    ga = p.resets[b * p.nabs + a] ? 0.f : g_plus * expf(p.abar[row] - p.anew[row]);
  }
  if (p.dln) p.dln[b * p.dl_sb + h * p.dl_sh + i] = ga;
}

// Zeroes rows [r0, r0 + rows) of a token-major [B, *, H, d] tensor.
template <class T>
__global__ void zero_rows_kernel(T* x, std::int64_t sb, std::int64_t st, std::int64_t sh, int B, int H,
                                 std::int64_t r0, std::int64_t rows, int d) {
  const std::int64_t n = static_cast<std::int64_t>(B) * rows * H * d;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(e % d);
    std::int64_t z = e / d;
    const int h = static_cast<int>(z % H);
    z /= H;
    const std::int64_t r = z % rows;
    const int b = static_cast<int>(z / rows);
    x[b * sb + (r0 + r) * st + h * sh + c] = from_float<T>(0.f);
  }
}

}  // namespace gecko::working_memory::kernels
