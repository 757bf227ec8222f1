// The complex EMA backward as small matrix products on the tensor cores (bf16 activations, at
// most 16 states per channel): one kernel that walks the sequence in reverse, x and dy read once,
// dx written once, the parameter gradients summed in registers.
//
// Why. The tile backward of kernel.cuh runs the adjoint state by state (14 to 20 fp32
// instructions per token, channel and state; 1.37 ms at B = 1, L = 16384, D = 4096, N = 16 on an
// H100). As in the chunked forward (kernel_chunked.cuh), a 256-token block of one channel is 16
// sub-chunks r of 16 tokens j, and everything below the sub-chunk level is a fixed linear map.
//
// Notation, per state n (q, p, g the coefficients, c = conj(g), Q = q^16; x, dy real):
//   H_r   the forward state entering sub-chunk r: H_0 = the saved state entering the block,
//         H_{r+1} = Q H_r + p P1_r
//   Gc_r  conj(a) G at the token after sub-chunk r (the adjoint arriving from the future):
//         Gc_15 = the carry from the next block (dh_out for the sequence's end),
//         Gc_{r-1} = conj(Q) Gc_r + conj(q g) conj(P3_r); the carry out of the block is Gc_{-1}
// with the four per-sub-chunk products (x reversed within each sub-chunk: A1, D' serve both sides)
//   P1_r = sum_j x_j q^(15-j)            = Xrev A1,  A1[k] = q^k
//   P2_r = sum_j (15-j) q^(14-j) x_j     = Xrev D',  D'[k] = k q^(k-1)
//   P3_r = sum_j q^j dy_j                = DY A1
//   P4_r = sum_j j q^(j-1) dy_j          = DY D'
// and the lag correlations of x and dy within sub-chunks, C(tau) = sum_{r,j} dy_{r,j} x_{r,j-tau},
// the diagonal sums of M = sum_blocks DY^T X (one mma per block with k = r). Expanding
// h_{r,j} = q^(j+1) H_r + p sum_{i<=j} q^(j-i) x_i and G_{r,j} = conj(q)^(15-j) Gc_r + c sum_{i>=j}
// conj(q)^(i-j) dy_i in the gradients of spec 2.4 and summing over j in closed form:
//   dx_{r,j} = sum_{i>=j} k(i-j) dy_i + sum_n p Re(conj(q)^(15-j) Gc_r)   (= DY Kdx + Gc F')
//   dg = conj(q) A_g + p Z0
//   dp = Re A_p + Re(c Z0)
//   dq = 16 conj(q)^15 A_1 + c (conj(q) A_4 + A_g) + p A_3 + p c Z1
// with A_g = sum_r conj(H_r P3_r), A_p = sum_r Gc_r conj(P1_r), A_1 = sum_r conj(H_r) Gc_r,
// A_3 = sum_r Gc_r conj(P2_r), A_4 = sum_r conj(H_r P4_r) (summed over every block of the
// sequence), Z0 = sum_tau conj(q)^tau C(tau), Z1 = sum_tau tau conj(q)^(tau-1) C(tau). So per
// block a warp runs 58 mma (x, dy, Gc against A1, D', Kdx, F', split bf16 hi + lo as in the
// forward), two 16-step scans in 16 lanes, and a few complex products per (sub-chunk, state); the
// states h_t and adjoints G_t of single tokens never exist.
//
// Blocks holding a BOS and the sequence's partial last block run token by token instead (the
// states of each sub-chunk recomputed forward from its entering state, then the adjoint in reverse),
// accumulating dp, dg, dq directly. The per-(batch row, channel) sums go to a [B, 5, D, N] slot
// that parameter_gradient_kernel reduces over the batch: deterministic, no atomics.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "gecko/core/async_copy.cuh"
#include "gecko/core/mma.cuh"
#include "gecko/ops/cema/kernel.cuh"
#include "gecko/ops/cema/kernel_chunked.cuh"

namespace gecko::cema::kernels::chunked {

inline constexpr int kStagesB = 3;           // blocks in flight per input (x and dy)
inline constexpr int kXStrideB = kBlock + 8;  // bf16 per channel row: 16-byte aligned for ldmatrix
inline constexpr int kFragSmemWords = 24;    // B-fragment words per lane kept in shared memory: F' 16, Kdx 8

// A warp's tables while it forms its channel's constants (backward_constants).
struct BackwardScratch {
  float a[kSub][2 * kMaxStates];  // A1[k][2n + part]
  float b[kSub][2 * kMaxStates];  // D'[k][2n + part]
};

struct BackwardShared {
  uint4 ring_x[kStagesB][kThreads];
  uint4 ring_dy[kStagesB][kThreads];
  uint4 bit_ring[kStagesB][2];
  uint4 bit_cur[2][2];
  __nv_bfloat16 xs[2][kWarps][kXStrideB];  // x, transposed
  __nv_bfloat16 ds[2][kWarps][kXStrideB];  // dy, transposed; dx overwrites it
  uint4 frag[kWarps][kFragSmemWords / 4][32];  // each warp's F' and Kdx fragments, [word / 4][lane]
  union {
    float2 scan[kWarps][2][kRows][kScanStride];  // per warp: H_r (then M), P3_r then Gc_r
    BackwardScratch scratch[kWarps];              // the prologue's tables
  } u;
};
inline constexpr std::size_t kSmemBytesB = sizeof(BackwardShared);

struct BackwardParams : CallParams {
  long long dy_sb = 0, dy_sl = 0, dx_sb = 0, dx_sl = 0;  // (CallParams' x strides are x's; y's unused)
  const std::uint32_t* bos_bits = nullptr;  // [B, blocks, 8] or null
  const float2* states = nullptr;           // [ceil(L / kTileTokens), B, D, N]: Saved::states of the forward
  const float2* dh_out = nullptr;           // [B, D, N] or null (read before dh0 is written: may alias)
  float2* dh0 = nullptr;                    // [B, D, N] or null
  float* slot = nullptr;                    // [B, 5, D, N]: dp, Re dg, Im dg, Re dq, Im dq; or null
};

// A lane's state constants (lanes < 16, state n = lane; zeros for n >= N).
struct StateConstants {
  float2 q, g;
  float p;
  float2 Qc;  // conj(q^16)
  float2 cq;  // conj(q g)
};

// Sums a lane carries over the whole sequence (lanes < 16).
struct LaneSums {
  float2 Ag{0.f, 0.f}, A1{0.f, 0.f};
  float dp = 0.f;                                // token-by-token blocks: the gradients directly
  float2 dg{0.f, 0.f}, dq{0.f, 0.f};
};

__device__ __forceinline__ float2 ccmul(float2 a, float2 b) {  // conj(a) b
  return make_float2(fmaf(a.x, b.x, a.y * b.y), fmaf(a.x, b.y, -a.y * b.x));
}
__device__ __forceinline__ float2 cmulc(float2 a, float2 b) {  // a conj(b)
  return make_float2(fmaf(a.x, b.x, a.y * b.y), fmaf(a.y, b.x, -a.x * b.y));
}
__device__ __forceinline__ float2 conj_prod(float2 a, float2 b) {  // conj(a b)
  return make_float2(fmaf(a.x, b.x, -a.y * b.y), -fmaf(a.x, b.y, a.y * b.x));
}

// The warp's channel d: lane n < 16 forms q_n^k (k = 0..16) by repeated products in double, its
// columns of A1 and D' and its constants; k(t) is summed over the states; then every lane packs
// its fragment registers: fa (A1) and fd (D') stay in registers, F' ([ks][j-tile] tiles, from
// A1: F'[2n + part][j] = p_n A1[15 - j][2n + part]) and Kdx go to the warp's shared slots fs
// (read once per block; registers would spill).
__device__ __forceinline__ void backward_constants(const CallParams& p, int d, int lane, BackwardScratch& s,
                                                   std::uint32_t (&fa)[16], std::uint32_t (&fd)[16],
                                                   uint4* fs, StateConstants& sc) {
  float myp = 0.f, mgr = 0.f, mgi = 0.f;
  if (lane < kMaxStates) {
    const int n = lane;
    const StateCoefficients c = state_coefficients(p, d, n);
    const float4 qg = c.qg, gp = c.gp;
    const double qr = c.qr, qi = c.qi, pp = c.p;
    double ar = n < p.N ? 1.0 : 0.0, ai = 0.0;  // q^k (unused states: all-zero columns)
    s.b[0][2 * n] = s.b[0][2 * n + 1] = 0.f;
#pragma unroll 1
    for (int k = 0; k < kSub; ++k) {
      s.a[k][2 * n] = static_cast<float>(ar);
      s.a[k][2 * n + 1] = static_cast<float>(ai);
      if (k + 1 < kSub) {  // D'[k + 1] = (k + 1) q^k
        s.b[k + 1][2 * n] = static_cast<float>((k + 1) * ar);
        s.b[k + 1][2 * n + 1] = static_cast<float>((k + 1) * ai);
      }
      const double nr = ar * qr - ai * qi;
      ai = ar * qi + ai * qr;
      ar = nr;
    }
    myp = static_cast<float>(pp);
    mgr = gp.x;
    mgi = gp.y;
    sc.q = make_float2(qg.x, qg.y);
    sc.g = make_float2(gp.x, gp.y);
    sc.p = myp;
    sc.Qc = make_float2(static_cast<float>(ar), static_cast<float>(-ai));
    sc.cq = make_float2(static_cast<float>(qr * gp.x - qi * gp.y), static_cast<float>(-(qr * gp.y + qi * gp.x)));
  }
  __syncwarp();
  float kt = 0.f;  // k(lane) = sum_n p_n Re(g_n q_n^lane), lanes < 16
#pragma unroll 4
  for (int n = 0; n < kMaxStates; ++n) {
    const float pn = __shfl_sync(0xffffffffu, myp, n), grn = __shfl_sync(0xffffffffu, mgr, n),
                gin = __shfl_sync(0xffffffffu, mgi, n);
    if (lane < kSub) kt += pn * (grn * s.a[lane][2 * n] - gin * s.a[lane][2 * n + 1]);
  }
  pack_b_fragments<4>(lane, fa, [&](int q4, int k, int col) { return s.a[k][8 * q4 + col]; });
  pack_b_fragments<4>(lane, fd, [&](int q4, int k, int col) { return s.b[k][8 * q4 + col]; });
  std::uint32_t fr[kFragSmemWords];
  // F' tile q4 = 2 ks + j-tile: row k -> (n, part) = (8 ks + k / 2, k % 2), column j = 8 j-tile + col.
  pack_b_fragments<4>(lane, fr, [&](int q4, int k, int col) {
    const int n = 8 * (q4 >> 1) + (k >> 1), j = 8 * (q4 & 1) + col;
    return __shfl_sync(0xffffffffu, myp, n) * s.a[kSub - 1 - j][2 * n + (k & 1)];
  });
  // Kdx[i][j] = k(i - j) for i >= j: tile q4 = j-tile, row k = i.
  pack_b_fragments<2>(lane, fr + 16, [&](int q4, int k, int col) {
    const int dt = k - (8 * q4 + col);
    const float kv = __shfl_sync(0xffffffffu, kt, dt < 0 ? 0 : dt);
    return dt >= 0 ? kv : 0.f;
  });
#pragma unroll
  for (int i = 0; i < kFragSmemWords / 4; ++i)
    fs[i * 32 + lane] = make_uint4(fr[4 * i], fr[4 * i + 1], fr[4 * i + 2], fr[4 * i + 3]);
}

struct WarpB {
  int lane, g, m;
  std::uint32_t *xw, *dw;  // this channel's transposed x and dy (then dx) rows, as bf16 pairs
  __nv_bfloat16 *xe, *de;
  float2 *sa, *sb;          // [kRows][kScanStride] scratch: H_r, Gc_r
};

__device__ __forceinline__ std::uint32_t swap_halves(std::uint32_t v) { return __byte_perm(v, 0u, 0x1032u); }

// One full block without a BOS on the tensor cores. Returns the carry out (lanes < 16); adds to
// the lane sums, the fragment-layout sums ap / a3 / a4 ([n-tile][Re, Im]: state 4 nt + m, rows g
// and g + 8; P1 is recomputed there rather than kept through the scans, which would spill) and the
// lag-correlation accumulator mm (M, [i-tile][4]).
__device__ __forceinline__ float2 block_products_backward(const WarpB& w, const std::uint32_t (&fa)[16],
                                                          const std::uint32_t (&fd)[16], const uint4* fs,
                                                          const StateConstants& sc,
                                                          float2 h, float2 gc, bool residual, LaneSums& ls,
                                                          float (&ap)[4][2], float (&a3)[4][2], float (&a4)[4][2],
                                                          float (&mm)[2][4]) {
  const int g = w.g, m = w.m, lane = w.lane;
  // A fragments: x reversed within each sub-chunk (k = 15 - j), dy in order.
  const std::uint32_t ax[4] = {swap_halves(w.xw[8 * g + 7 - m]), swap_halves(w.xw[8 * g + 71 - m]),
                               swap_halves(w.xw[8 * g + 3 - m]), swap_halves(w.xw[8 * g + 67 - m])};
  const std::uint32_t ad[4] = {w.dw[8 * g + m], w.dw[8 * g + 64 + m], w.dw[8 * g + 4 + m], w.dw[8 * g + 68 + m]};
  {  // M += DY^T X (k = r): both operands stored [r][j], read transposed.
    std::uint32_t at[4], bt[4];
    ldmatrix_x4_trans(at, w.de + 16 * ((lane & 7) + ((lane >> 4) << 3)) + ((lane >> 3) & 1) * 8);
    ldmatrix_x4_trans(bt, w.xe + 16 * ((lane & 7) + ((lane >> 3) & 1) * 8) + (lane >> 4) * 8);
    mma16816<__nv_bfloat16>(mm[0], at, bt[0], bt[1]);
    mma16816<__nv_bfloat16>(mm[1], at, bt[2], bt[3]);
  }
  {
    float s1[4][4] = {}, s3[4][4] = {};
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      mma16816<__nv_bfloat16>(s1[nt], ax, fa[4 * nt], fa[4 * nt + 1]);
      mma16816<__nv_bfloat16>(s1[nt], ax, fa[4 * nt + 2], fa[4 * nt + 3]);
      mma16816<__nv_bfloat16>(s3[nt], ad, fa[4 * nt], fa[4 * nt + 1]);
      mma16816<__nv_bfloat16>(s3[nt], ad, fa[4 * nt + 2], fa[4 * nt + 3]);
    }
    __syncwarp();  // the previous block's readers of the scratch are done
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      w.sa[g * kScanStride + 4 * nt + m] = make_float2(s1[nt][0], s1[nt][1]);
      w.sa[(g + 8) * kScanStride + 4 * nt + m] = make_float2(s1[nt][2], s1[nt][3]);
      w.sb[g * kScanStride + 4 * nt + m] = make_float2(s3[nt][0], s3[nt][1]);
      w.sb[(g + 8) * kScanStride + 4 * nt + m] = make_float2(s3[nt][2], s3[nt][3]);
    }
  }
  __syncwarp();
  if (lane < kMaxStates) {
    float2 p1[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) p1[r] = w.sa[r * kScanStride + lane];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {  // H_r, in place of P1_r
      w.sa[r * kScanStride + lane] = h;
      const float2 Qh = make_float2(sc.Qc.x, -sc.Qc.y);
      h = affine(Qh, h, cscale(sc.p, p1[r]));
    }
#pragma unroll
    for (int r = kRows - 1; r >= 0; --r) {  // Gc_r, in place of P3_r
      const float2 p3 = w.sb[r * kScanStride + lane], hr = w.sa[r * kScanStride + lane];
      ls.Ag = cadd(ls.Ag, conj_prod(hr, p3));
      ls.A1 = cadd(ls.A1, ccmul(hr, gc));
      w.sb[r * kScanStride + lane] = gc;
      gc = affine(sc.Qc, gc, cmulc(sc.cq, make_float2(p3.x, p3.y)));  // cmulc(cq, p3) = cq conj(p3)
    }
  }
  __syncwarp();
  float yv[2][4] = {};  // dx: rows g, g + 8; tokens 8 nt + 2m (+1)
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const uint4 k4 = fs[(4 + nt) * 32 + lane];
    mma16816<__nv_bfloat16>(yv[nt], ad, k4.x, k4.y);
    mma16816<__nv_bfloat16>(yv[nt], ad, k4.z, k4.w);
  }
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    // Gc of states 8 ks + m (n-tile 2 ks) and 8 ks + m + 4 (n-tile 2 ks + 1), rows g and g + 8.
    const int s0 = 8 * ks + m, s1 = s0 + 4;
    const float2 G[2][2] = {{w.sb[g * kScanStride + s0], w.sb[(g + 8) * kScanStride + s0]},
                            {w.sb[g * kScanStride + s1], w.sb[(g + 8) * kScanStride + s1]}};
    std::uint32_t hh[4], hl[4];
    split_bf16x2(G[0][0].x, G[0][0].y, hh[0], hl[0]);
    split_bf16x2(G[0][1].x, G[0][1].y, hh[1], hl[1]);
    split_bf16x2(G[1][0].x, G[1][0].y, hh[2], hl[2]);
    split_bf16x2(G[1][1].x, G[1][1].y, hh[3], hl[3]);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const uint4 f4 = fs[(2 * ks + nt) * 32 + lane];
      mma16816<__nv_bfloat16>(yv[nt], hh, f4.x, f4.y);
      mma16816<__nv_bfloat16>(yv[nt], hl, f4.x, f4.y);
      mma16816<__nv_bfloat16>(yv[nt], hh, f4.z, f4.w);
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {  // A_p += Gc conj(P1), A_3 += Gc conj(P2) for n-tile 2 ks + e
      const int nt = 2 * ks + e;
      float s1[4] = {}, s2[4] = {};
      mma16816<__nv_bfloat16>(s1, ax, fa[4 * nt], fa[4 * nt + 1]);
      mma16816<__nv_bfloat16>(s1, ax, fa[4 * nt + 2], fa[4 * nt + 3]);
      mma16816<__nv_bfloat16>(s2, ax, fd[4 * nt], fd[4 * nt + 1]);
      mma16816<__nv_bfloat16>(s2, ax, fd[4 * nt + 2], fd[4 * nt + 3]);
      const float2 v1 = cadd(cmulc(G[e][0], make_float2(s1[0], s1[1])), cmulc(G[e][1], make_float2(s1[2], s1[3])));
      const float2 v2 = cadd(cmulc(G[e][0], make_float2(s2[0], s2[1])), cmulc(G[e][1], make_float2(s2[2], s2[3])));
      ap[nt][0] += v1.x;
      ap[nt][1] += v1.y;
      a3[nt][0] += v2.x;
      a3[nt][1] += v2.y;
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {  // A_4 += conj(H P4)
    float s4[4] = {};
    mma16816<__nv_bfloat16>(s4, ad, fd[4 * nt], fd[4 * nt + 1]);
    mma16816<__nv_bfloat16>(s4, ad, fd[4 * nt + 2], fd[4 * nt + 3]);
    const float2 h0 = w.sa[g * kScanStride + 4 * nt + m], h1 = w.sa[(g + 8) * kScanStride + 4 * nt + m];
    const float2 v = cadd(conj_prod(h0, make_float2(s4[0], s4[1])), conj_prod(h1, make_float2(s4[2], s4[3])));
    a4[nt][0] += v.x;
    a4[nt][1] += v.y;
  }
  store_block_rows(w.dw, g, m, ad, yv, residual);
  return gc;
}

// The first lt tokens of a block one token at a time (a BOS in the block, or the sequence's
// partial last block): lane n < 16 carries state n. Pass 1 runs the states forward from h and keeps
// the one entering each sub-chunk in sa; pass 2 walks the sub-chunks in reverse, recomputes their
// 16 states from it into sb, then runs the adjoint back over them. Returns the carry out.
__device__ __forceinline__ float2 block_steps_backward(const WarpB& w, const std::uint32_t* bits, int lt,
                                                       const StateConstants& sc, float2 h, float2 gc, bool residual,
                                                       LaneSums& ls) {
  const bool mine = w.lane < kMaxStates;
  auto bos = [&](int t) { return ((bits[t >> 5] >> (t & 31)) & 1u) != 0u; };
  const int nr = (lt + kSub - 1) / kSub;
  __syncwarp();  // the previous block's readers of the scratch are done
#pragma unroll 1
  for (int r = 0; r < nr; ++r) {
    if (mine) w.sa[r * kScanStride + w.lane] = h;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const int t = kSub * r + j;
      if (t < lt) {
        const float2 in = make_float2(sc.p * __bfloat162float(w.xe[t]), 0.f);
        h = bos(t) ? in : affine(sc.q, h, in);
      }
    }
  }
  __syncwarp();
  const float2 qc = conjf2(sc.q), c = conjf2(sc.g);
#pragma unroll 1
  for (int r = nr - 1; r >= 0; --r) {
    const float2 enter = mine ? w.sa[r * kScanStride + w.lane] : make_float2(0.f, 0.f);
    h = enter;
    __syncwarp();  // the previous sub-chunk's readers of sb are done
#pragma unroll
    for (int j = 0; j < kSub; ++j) {  // the sub-chunk's states, into sb (row j)
      const int t = kSub * r + j;
      if (t < lt) {
        const float2 in = make_float2(sc.p * __bfloat162float(w.xe[t]), 0.f);
        h = bos(t) ? in : affine(sc.q, h, in);
      }
      if (mine) w.sb[j * kScanStride + w.lane] = h;
    }
#pragma unroll 4
    for (int j = kSub - 1; j >= 0; --j) {
      const int t = kSub * r + j;
      if (t < lt) {
        const float dyv = __bfloat162float(w.de[t]), xv = __bfloat162float(w.xe[t]);
        const float2 G = make_float2(fmaf(c.x, dyv, gc.x), fmaf(c.y, dyv, gc.y));
        float v = sc.p * G.x;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        const float2 ht = mine ? w.sb[j * kScanStride + w.lane] : make_float2(0.f, 0.f);
        const float2 hp = j == 0 ? enter : mine ? w.sb[(j - 1) * kScanStride + w.lane] : make_float2(0.f, 0.f);
        ls.dp = fmaf(xv, G.x, ls.dp);
        ls.dg = make_float2(fmaf(dyv, ht.x, ls.dg.x), fmaf(-dyv, ht.y, ls.dg.y));
        const bool b = bos(t);
        if (!b) ls.dq = cadd(ls.dq, ccmul(hp, G));
        gc = b ? make_float2(0.f, 0.f) : cmul(qc, G);
        __syncwarp();  // every lane has read dy_t before lane 0 overwrites it
        if (w.lane == 0) w.de[t] = __float2bfloat16_rn(residual ? v + dyv : v);
      }
    }
  }
  return gc;
}

template <int kUnused = 0>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(BackwardParams p, const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy,
                    __nv_bfloat16* __restrict__ dx) {
  extern __shared__ __align__(16) unsigned char smem[];
  BackwardShared& sh = *reinterpret_cast<BackwardShared*>(smem);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  WarpB w;
  w.lane = static_cast<int>(threadIdx.x) & 31;
  w.g = w.lane >> 2;
  w.m = w.lane & 3;
  w.sa = &sh.u.scan[warp][0][0][0];
  w.sb = &sh.u.scan[warp][1][0][0];
  const int b = static_cast<int>(blockIdx.y), c0 = static_cast<int>(blockIdx.x) * kWarps, d = c0 + warp;
  const bool active = d < p.D;
  const int blocks = (p.L + kBlock - 1) / kBlock;

  // Staging as in the forward, blocks in reverse order: step k holds block blocks - 1 - k.
  const int tok = static_cast<int>(threadIdx.x) >> 1, half = static_cast<int>(threadIdx.x) & 1;
  const bool half_ok = c0 + 8 * half < p.D;
  auto issue = [&](int k) {
    const int slot = k % kStagesB, bi = blocks - 1 - k;
    uint4* dx_dst = &sh.ring_x[slot][threadIdx.x];
    uint4* dd_dst = &sh.ring_dy[slot][threadIdx.x];
    const int t = bi * kBlock + tok;
    if (bi >= 0 && t < p.L && half_ok) {
      cp_async_16(dx_dst, x + b * p.x_sb + static_cast<long long>(t) * p.x_sl + c0 + 8 * half);
      cp_async_16(dd_dst, dy + b * p.dy_sb + static_cast<long long>(t) * p.dy_sl + c0 + 8 * half);
    } else {
      *dx_dst = make_uint4(0u, 0u, 0u, 0u);
      *dd_dst = make_uint4(0u, 0u, 0u, 0u);
    }
    if (threadIdx.x < 2) {
      uint4* bd = &sh.bit_ring[slot][threadIdx.x];
      if (p.bos_bits && bi >= 0) {
        cp_async_16(bd, p.bos_bits + (static_cast<long long>(b) * blocks + bi) * (kBlock / 32) + 4 * threadIdx.x);
      } else {
        *bd = make_uint4(0u, 0u, 0u, 0u);
      }
    }
    cp_async_commit();
  };
  auto transpose = [&](int k) {
    const int slot = k % kStagesB, buf = k & 1;
    const uint4 vx = sh.ring_x[slot][threadIdx.x], vd = sh.ring_dy[slot][threadIdx.x];
    const auto* ex = reinterpret_cast<const __nv_bfloat16*>(&vx);
    const auto* ed = reinterpret_cast<const __nv_bfloat16*>(&vd);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      sh.xs[buf][8 * half + e][tok] = ex[e];
      sh.ds[buf][8 * half + e][tok] = ed[e];
    }
    if (threadIdx.x < 2) sh.bit_cur[buf][threadIdx.x] = sh.bit_ring[slot][threadIdx.x];
  };
  auto write_out = [&](int k) {
    const int bi = blocks - 1 - k, t0 = bi * kBlock, lt = min(kBlock, p.L - t0), buf = k & 1;
    if (tok < lt && half_ok) {
      uint4 out;
      auto* o = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = sh.ds[buf][8 * half + e][tok];
      *reinterpret_cast<uint4*>(dx + b * p.dx_sb + static_cast<long long>(t0 + tok) * p.dx_sl + c0 + 8 * half) = out;
    }
  };
#pragma unroll 1
  for (int k = 0; k < kStagesB; ++k) issue(k);

  std::uint32_t fa[16], fd[16];
  uint4* fs = &sh.frag[warp][0][0];
  StateConstants sc{};
  if (active) {
    backward_constants(p, d, w.lane, sh.u.scratch[warp], fa, fd, fs, sc);
  } else {
#pragma unroll
    for (int i = 0; i < 16; ++i) fa[i] = fd[i] = 0u;
  }
  const bool owns = active && w.lane < p.N;
  const long long sidx = (static_cast<long long>(b) * p.D + d) * p.N + w.lane;
  const long long tile_stride = static_cast<long long>(p.B) * p.D * p.N;
  // The forward state entering block bi: the saved state after tile 2 bi - 1, or h0.
  auto entering = [&](int bi) {
    if (!owns) return make_float2(0.f, 0.f);
    if (bi == 0) return p.h0 ? p.h0[sidx] : make_float2(0.f, 0.f);
    return p.states[(2LL * bi - 1) * tile_stride + sidx];
  };
  float2 gc = owns && p.dh_out ? p.dh_out[sidx] : make_float2(0.f, 0.f);
  float2 h_next = entering(blocks - 1);
  LaneSums ls;
  float ap[4][2] = {}, a3[4][2] = {}, a4[4][2] = {}, mm[2][4] = {};
  cp_async_wait<kStagesB - 1>();
  __syncthreads();  // the prologue's tables are dead before the scratch is reused
  transpose(0);
  issue(kStagesB);
  __syncthreads();
#pragma unroll 1
  for (int k = 0; k < blocks; ++k) {
    const int bi = blocks - 1 - k, t0 = bi * kBlock, lt = min(kBlock, p.L - t0), buf = k & 1;
    const float2 h_in = h_next;
    if (bi > 0) h_next = entering(bi - 1);
    w.xe = &sh.xs[buf][warp][0];
    w.de = &sh.ds[buf][warp][0];
    w.xw = reinterpret_cast<std::uint32_t*>(w.xe);
    w.dw = reinterpret_cast<std::uint32_t*>(w.de);
    const auto* bits = reinterpret_cast<const std::uint32_t*>(&sh.bit_cur[buf][0]);
    const uint4 b0 = sh.bit_cur[buf][0], b1 = sh.bit_cur[buf][1];
    const bool any_bos = ((b0.x | b0.y | b0.z | b0.w) | (b1.x | b1.y | b1.z | b1.w)) != 0u;
    if (active) {
      if (!any_bos && lt == kBlock) {
        gc = block_products_backward(w, fa, fd, fs, sc, h_in, gc, p.add_residual, ls, ap, a3, a4, mm);
      } else {
        gc = block_steps_backward(w, bits, lt, sc, h_in, gc, p.add_residual, ls);
      }
    }
    cp_async_wait<kStagesB - 1>();
    __syncthreads();
    write_out(k);
    transpose(k + 1);
    issue(k + 1 + kStagesB);
    __syncthreads();
  }
  cp_async_wait<0>();
  if (!active) return;
  if (owns && p.dh0) p.dh0[sidx] = gc;
  if (!p.slot) return;

  // A_p, A_3, A_4: summed over the rows (lanes of equal m), then moved to lane n = 4 nt + m.
  auto to_lanes = [&](float (&a)[4][2]) {
    float2 out = make_float2(0.f, 0.f);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c)
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) a[nt][c] += __shfl_xor_sync(0xffffffffu, a[nt][c], off);
      const float2 v = make_float2(__shfl_sync(0xffffffffu, a[nt][0], w.lane & 3),
                                   __shfl_sync(0xffffffffu, a[nt][1], w.lane & 3));
      if ((w.lane >> 2) == nt) out = v;
    }
    return out;
  };
  const float2 Ap = to_lanes(ap), A3 = to_lanes(a3), A4 = to_lanes(a4);
  // C(tau) = sum_j M[j][j - tau] (M: rows j = dy's token, columns i = x's token).
  float* msh = reinterpret_cast<float*>(w.sa);  // [16][17]
  __syncwarp();
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int i = 8 * it + 2 * w.m;
    msh[w.g * 17 + i] = mm[it][0];
    msh[w.g * 17 + i + 1] = mm[it][1];
    msh[(w.g + 8) * 17 + i] = mm[it][2];
    msh[(w.g + 8) * 17 + i + 1] = mm[it][3];
  }
  __syncwarp();
  float ct = 0.f;
  if (w.lane < kSub)
    for (int j = w.lane; j < kSub; ++j) ct += msh[j * 17 + j - w.lane];
  // Z0 = sum_tau conj(q)^tau C(tau), Z1 = sum_tau tau conj(q)^(tau - 1) C(tau), in double.
  double z0r = 0.0, z0i = 0.0, z1r = 0.0, z1i = 0.0, pr = 1.0, pi = 0.0, q15r = 1.0, q15i = 0.0;
  const double qr = sc.q.x, qi = -static_cast<double>(sc.q.y);  // conj(q)
#pragma unroll 1
  for (int tau = 0; tau < kSub; ++tau) {
    const double cv = __shfl_sync(0xffffffffu, ct, tau);
    if (tau > 0) {  // pr + i pi = conj(q)^(tau - 1) here
      z1r += tau * cv * pr;
      z1i += tau * cv * pi;
      const double nr = pr * qr - pi * qi;
      pi = pr * qi + pi * qr;
      pr = nr;
    }
    z0r += cv * pr;
    z0i += cv * pi;
    if (tau == kSub - 1) {
      q15r = pr;
      q15i = pi;
    }
  }
  if (!owns) return;
  const float2 qc = conjf2(sc.q), c = conjf2(sc.g);
  const float2 Z0 = make_float2(static_cast<float>(z0r), static_cast<float>(z0i));
  const float2 Z1 = make_float2(static_cast<float>(z1r), static_cast<float>(z1i));
  const float2 q15 = make_float2(static_cast<float>(q15r), static_cast<float>(q15i));
  const float2 dg = cadd(ls.dg, cadd(cmul(qc, ls.Ag), cscale(sc.p, Z0)));
  const float dp = ls.dp + Ap.x + cmul(c, Z0).x;
  float2 dq = cadd(ls.dq, cscale(16.f, cmul(q15, ls.A1)));
  dq = cadd(dq, cmul(c, cadd(cmul(qc, A4), ls.Ag)));
  dq = cadd(dq, cscale(sc.p, cadd(A3, cmul(c, Z1))));
  const long long plane = static_cast<long long>(p.D) * p.N;
  float* s = p.slot + static_cast<long long>(b) * 5 * plane + static_cast<long long>(d) * p.N + w.lane;
  s[0] = dp;
  s[plane] = dg.x;
  s[2 * plane] = dg.y;
  s[3 * plane] = dq.x;
  s[4 * plane] = dq.y;
}

}  // namespace gecko::cema::kernels::chunked
