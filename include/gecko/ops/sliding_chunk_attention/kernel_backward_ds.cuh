// Backward, query and key gradients through dS = scale * P o (dP - D):
//   query-major pass (dQ): rows = 128 queries, inner blocks = 64 keys,   acc = sum_j dS_ij K_j
//   key-major pass   (dK): rows = 128 keys,    inner blocks = 64 queries, acc = sum_i dS_ij Q_i
// One CTA per row tile; each output row is accumulated by exactly one CTA in a fixed order, so
// both passes are deterministic without atomics. Per inner block:
//   S  = A_row B_col^T over dk (A_row resident, B_col double-buffered)  -> P = exp2(s2 - lse2)
//   dP = X_row X_col^T over dv, streamed in 64-column pieces through a 3-stage cp.async ring
//        (X = dO for queries, V for keys; 64 x 2048 operands cannot stay on chip)
//   dS = scale P (dP - D) -> bf16/fp16 in shared memory -> acc += dS B_col
// The dv contraction dP is what costs here (2 x 64 x 128 x dv per block pair against 2 x 64 x
// 128 x dk for each of S and acc), and the two passes both compute it: the price of keeping dQ
// deterministic without a C x 2C dS buffer (see launch.cuh for the alternatives).
// Epilogue: the inverse RoPE rotation of the rows that were rotated, then dq / dk / dprev_k.
#pragma once

#include <climits>

#include "gecko/ops/sliding_chunk_attention/kernel_common.cuh"

namespace gecko::sliding_chunk_attention::kernels {

template <class T>
struct DsParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0, start = 0;
  int n_rope = 0, segments = 0;
  int key_major = 0;
  float scale = 1.f, scale_log2 = 0.f;
  Window<T> kw, vw;
  Rows<T> q, qrot, dout;
  Segs seg;
  const float* lse = nullptr;
  i64 lse_sb = 0, lse_sh = 0, lse_sl = 0;
  const float* D = nullptr;  // [B, H, L]
  OutRows<T> grad;           // dq (query-major) or dk (key-major, rows >= P)
  OutRows<T> grad_prev;      // dprev_k (key-major, rows < P), may be null
  float theta[kMaxPairs] = {};
};

struct DsLayout {
  int a = 0, b = 0, ring = 0, ds = 0, row_lo = 0, row_hi = 0, row_seg = 0, row_lse = 0, row_d = 0;
  int col_lo = 0, col_hi = 0, col_seg = 0, col_lse = 0, col_d = 0;
  int b_tile = 0, total = 0;
  static constexpr int kRowPiece = kRowTile * 64 * 2, kColPiece = kColBlock * 64 * 2;
  static constexpr int kStage = kRowPiece + kColPiece;

  __host__ __device__ explicit DsLayout(int dk) {
    int off = 0;
    auto take = [&off](int bytes) {
      const int at = off;
      off += (bytes + 127) / 128 * 128;
      return at;
    };
    b_tile = kColBlock * dk * 2;
    a = take(kRowTile * dk * 2);
    b = take(2 * b_tile);
    ring = take(3 * kStage);
    ds = take(kRowTile * kColBlock * 2);
    row_lo = take(kRowTile * 4);
    row_hi = take(kRowTile * 4);
    row_seg = take(kRowTile * 8);
    row_lse = take(kRowTile * 4);
    row_d = take(kRowTile * 4);
    col_lo = take(2 * kColBlock * 4);
    col_hi = take(2 * kColBlock * 4);
    col_seg = take(2 * kColBlock * 8);
    col_lse = take(2 * kColBlock * 4);
    col_d = take(2 * kColBlock * 4);
    total = off;
  }
};

// grid (row tiles, B * H), 256 threads. Warps: 4 (rows) x 2 (columns); in the S and dP phases a
// warp owns a 32 x 32 block of the 128 x 64 tile, in the accumulation a 32 x dk/2 block.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) backward_ds_kernel(const __grid_constant__ DsParams<T> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const DsLayout lay(p.dk);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = warp >> 1, wn = warp & 1;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const bool km = p.key_major != 0;
  const int dk = p.dk, kcpr = dk >> 3;
  const int npieces = p.dv / 64;
  const Rows<T> qsrc = h < p.n_rope ? p.qrot : p.q;
  const int row0 = blockIdx.x * kRowTile;  // first query row (query-major) or window key (key-major)
  const int row_end = km ? p.keys : p.L;
  const int row_last = min(row0 + kRowTile, row_end) - 1;

  // Inner blocks: keys [64 c, +64) of the window (query-major) or queries [64 c, +64) (key-major).
  int cb_first, cb_last;
  if (!km) {
    cb_first = window_lo(p.P + row0, p.chunk) / kColBlock;
    cb_last = min(p.P + row_last, p.keys - 1) / kColBlock;
  } else {
    const int pos_lo = max(row0, p.P);
    const int pos_hi = static_cast<int>(min(last_query_pos(row_last, p.chunk), static_cast<i64>(p.P) + p.L - 1));
    cb_first = (pos_lo - p.P) / kColBlock;
    cb_last = (pos_hi - p.P) / kColBlock;
  }
  const int nb = cb_last - cb_first + 1;

  const std::uint32_t sbase = smem_u32(smem);
  const std::uint32_t sa = sbase + lay.a, sbt = sbase + lay.b, sring = sbase + lay.ring, sds = sbase + lay.ds;
  int* s_rlo = reinterpret_cast<int*>(smem + lay.row_lo);
  int* s_rhi = reinterpret_cast<int*>(smem + lay.row_hi);
  i64* s_rseg = reinterpret_cast<i64*>(smem + lay.row_seg);
  float* s_rlse = reinterpret_cast<float*>(smem + lay.row_lse);
  float* s_rd = reinterpret_cast<float*>(smem + lay.row_d);
  int* s_clo = reinterpret_cast<int*>(smem + lay.col_lo);
  int* s_chi = reinterpret_cast<int*>(smem + lay.col_hi);
  i64* s_cseg = reinterpret_cast<i64*>(smem + lay.col_seg);
  float* s_clse = reinterpret_cast<float*>(smem + lay.col_lse);
  float* s_cd = reinterpret_cast<float*>(smem + lay.col_d);
  const float* Dh = p.D + static_cast<i64>(bh) * p.L;

  // Query-side data (interval, document, lse2, D) or key-side data (document) of one index.
  auto query_meta = [&](int r, int& lo, int& hi, i64& sg, float& l2, float& d) {
    if (r < p.L) {
      const int pos = p.P + r;
      lo = window_lo(pos, p.chunk);
      hi = pos;
      sg = p.segments ? p.seg.query(b, r) : 0;
      l2 = p.lse[b * p.lse_sb + h * p.lse_sh + r * p.lse_sl] * kLog2e;
      d = Dh[r];
    } else {  // padding: sees nothing, P = 0
      lo = INT_MAX;
      hi = -1;
      sg = LLONG_MIN;
      l2 = INFINITY;
      d = 0.f;
    }
  };
  auto load_cols = [&](int cb, int buf) {
    if (tid < kColBlock) {
      const int x = cb * kColBlock + tid, at = buf * kColBlock + tid;
      if (!km) {
        s_cseg[at] = (p.segments && x < p.keys) ? p.seg.key(b, x) : LLONG_MIN;
      } else {
        query_meta(x, s_clo[at], s_chi[at], s_cseg[at], s_clse[at], s_cd[at]);
      }
    }
  };
  // Row sources of this (batch, head): queries (q / rotated q, dO) and the key / value window.
  const RowSrc<T> src_q = rows_src(qsrc, b, h, p.L), src_o = rows_src(p.dout, b, h, p.L);
  const RowSrc<T> src_k = window_src(p.kw, b, h, p.keys), src_v = window_src(p.vw, b, h, p.keys);
  // Kept in shared memory: four sources in registers would cost ~40 of them in the hot loop.
  __shared__ RowSrc<T> s_src[4];
  if (tid == 0) {
    s_src[0] = km ? src_k : src_q;  // A rows (S phase)
    s_src[1] = km ? src_q : src_k;  // B columns (S phase, accumulation)
    s_src[2] = km ? src_v : src_o;  // dP rows
    s_src[3] = km ? src_o : src_v;  // dP columns
  }
  __syncthreads();
  const RowSrc<T>& a_src = s_src[0];
  const RowSrc<T>& b_src = s_src[1];
  const RowSrc<T>& xr_src = s_src[2];
  const RowSrc<T>& xc_src = s_src[3];
  const Cursor a_cur(kRowTile, log2_pow2(kcpr)), b_cur(kColBlock, log2_pow2(kcpr));
  const Cursor xr_cur(kRowTile, 3), xc_cur(kColBlock, 3);
  // Piece gp = (inner block gp / npieces, dv columns 64 (gp % npieces) ..).
  auto load_piece = [&](int gp) {
    const int cb = cb_first + gp / npieces, col = (gp % npieces) * 64;
    const std::uint32_t st = sring + (gp % 3) * DsLayout::kStage;
    load_tile(st, xr_src, row0, xr_cur, col, p.dv);
    load_tile(st + DsLayout::kRowPiece, xc_src, cb * kColBlock, xc_cur, col, p.dv);
  };
  auto load_bcol = [&](int cb, int buf) { load_tile(sbt + buf * lay.b_tile, b_src, cb * kColBlock, b_cur, 0, dk); };

  // ---- prologue ----
  for (int i = tid; i < kRowTile; i += kThreads) {
    const int x = row0 + i;
    if (!km) {
      query_meta(x, s_rlo[i], s_rhi[i], s_rseg[i], s_rlse[i], s_rd[i]);
    } else {
      s_rseg[i] = (p.segments && x < p.keys) ? p.seg.key(b, x) : LLONG_MIN;
    }
  }
  load_tile(sa, a_src, row0, a_cur, 0, dk);
  load_bcol(cb_first, 0);
  load_cols(cb_first, 0);
  const int total_pieces = nb * npieces;
  load_piece(0);
  cp_async_commit();  // group 0: A rows, B block 0, piece 0
  if (total_pieces > 1) load_piece(1);
  cp_async_commit();  // group 1: piece 1

  const int nt_acc = dk / 16;  // accumulator n-tiles per warp (dk / 2 columns)
  float acc[2][16][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;

  for (int c = 0; c < nb; ++c) {
    const int cb = cb_first + c, cbuf = c & 1;
    const int col0 = cb * kColBlock;
    if (npieces == 1)
      cp_async_wait<0>();
    else
      cp_async_wait<1>();
    __syncthreads();  // B block c and its column data are in place

    // ---- S and P ----
    const std::uint32_t bt = sbt + cbuf * lay.b_tile;
    float pr[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) pr[mt][nt][0] = pr[mt][nt][1] = pr[mt][nt][2] = pr[mt][nt][3] = 0.f;
#pragma unroll 2
    for (int kc = 0; kc < kcpr; kc += 2) {
      std::uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) ldsm_x4(sa + swz(32 * wm + 16 * mt + (lane & 15), kc + (lane >> 4), kcpr), a[mt]);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        std::uint32_t bb[4];
        ldsm_x4(bt + swz(32 * wn + 16 * np + (lane & 7) + (lane >> 4) * 8, kc + ((lane >> 3) & 1), kcpr), bb);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<T>(pr[mt][2 * np], a[mt], bb[0], bb[1]);
          mma16816<T>(pr[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
    bool need_mask;
    if (!km) {
      need_mask = p.segments || col0 < window_lo(p.P + row_last, p.chunk) || col0 + kColBlock - 1 > p.P + row0 ||
                  col0 + kColBlock > p.keys;
    } else {
      const int q_last = min(col0 + kColBlock, p.L) - 1;
      need_mask = p.segments || window_lo(p.P + q_last, p.chunk) > row0 || row_last > p.P + col0;
    }
    const float* clse = s_clse + cbuf * kColBlock;
    const int* clo = s_clo + cbuf * kColBlock;
    const int* chi = s_chi + cbuf * kColBlock;
    const i64* cseg = s_cseg + cbuf * kColBlock;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int lr = 32 * wm + 16 * mt + g + (e >> 1) * 8;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int lc = 32 * wn + 8 * nt + 2 * t + (e & 1);
          float v = pr[mt][nt][e] * p.scale_log2 - (km ? clse[lc] : s_rlse[lr]);
          if (need_mask) {
            bool vis;
            if (!km) {
              const int key = col0 + lc;
              vis = key >= s_rlo[lr] && key <= s_rhi[lr] && key < p.keys;
              if (p.segments) vis = vis && cseg[lc] == s_rseg[lr];
            } else {
              const int key = row0 + lr;
              vis = key >= clo[lc] && key <= chi[lc];
              if (p.segments) vis = vis && cseg[lc] == s_rseg[lr];
            }
            if (!vis) v = -INFINITY;
          }
          pr[mt][nt][e] = fast_exp2(v);
        }
      }

    // ---- dP over dv, piece by piece ----
    float dp[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) dp[mt][nt][0] = dp[mt][nt][1] = dp[mt][nt][2] = dp[mt][nt][3] = 0.f;
    for (int pc = 0; pc < npieces; ++pc) {
      const int gp = c * npieces + pc;
      cp_async_wait<1>();
      __syncthreads();  // piece gp landed; every warp is done with piece gp - 1
      if (gp + 2 < total_pieces) load_piece(gp + 2);
      if (pc == 0 && c + 1 < nb) {
        load_bcol(cb + 1, cbuf ^ 1);
        load_cols(cb + 1, cbuf ^ 1);
      }
      cp_async_commit();
      const std::uint32_t xr = sring + (gp % 3) * DsLayout::kStage, xc = xr + DsLayout::kRowPiece;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        std::uint32_t a[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) ldsm_x4(xr + swz(32 * wm + 16 * mt + (lane & 15), 2 * kk + (lane >> 4), 8), a[mt]);
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          std::uint32_t bb[4];
          ldsm_x4(xc + swz(32 * wn + 16 * np + (lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1), 8), bb);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma16816<T>(dp[mt][2 * np], a[mt], bb[0], bb[1]);
            mma16816<T>(dp[mt][2 * np + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
    }

    // ---- dS into shared memory ----
    const float* cd = s_cd + cbuf * kColBlock;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int lr = 32 * wm + 16 * mt + g + 8 * hf;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int lc = 32 * wn + 8 * nt + 2 * t;
          const float d0 = km ? cd[lc] : s_rd[lr], d1 = km ? cd[lc + 1] : s_rd[lr];
          const float v0 = p.scale * pr[mt][nt][2 * hf] * (dp[mt][nt][2 * hf] - d0);
          const float v1 = p.scale * pr[mt][nt][2 * hf + 1] * (dp[mt][nt][2 * hf + 1] - d1);
          sts32(sds + swz_elem(lr, lc, 8), pack2<T>(v0, v1));
        }
      }
    __syncthreads();

    // ---- acc += dS B_col ----
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      std::uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) ldsm_x4(sds + swz(32 * wm + 16 * mt + (lane & 15), 2 * kk + (lane >> 4), 8), a[mt]);
#pragma unroll
      for (int np = 0; np < 8; ++np) {
        if (2 * np < nt_acc) {
          std::uint32_t bb[4];
          ldsm_x4_t(bt + swz(16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, wn * (kcpr >> 1) + 2 * np + (lane >> 4), kcpr),
                    bb);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma16816<T>(acc[mt][2 * np], a[mt], bb[0], bb[1]);
            mma16816<T>(acc[mt][2 * np + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
    }
  }

  // ---- epilogue: inverse RoPE, store ----
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int x = row0 + 32 * wm + 16 * mt + g + 8 * hf;
      T* dst = nullptr;
      bool rotate = h < p.n_rope;
      i64 pos = 0;
      if (!km) {
        if (x < p.L) dst = p.grad.at(b, x, h);
        pos = p.start + x;
      } else if (x < p.P) {
        if (p.grad_prev.p) dst = p.grad_prev.at(b, x, h);
        rotate = false;  // prev keys arrive rotated: their gradient is w.r.t. the rotated keys
      } else if (x < p.keys) {
        dst = p.grad.at(b, x - p.P, h);
        pos = p.start + (x - p.P);
      }
      if (!dst) continue;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        if (nt < nt_acc) {
          const int col = wn * (dk >> 1) + 8 * nt + 2 * t;
          float y0 = acc[mt][nt][2 * hf], y1 = acc[mt][nt][2 * hf + 1];
          if (rotate) {
            float cs, sn;
            rope_cos_sin(pos, p.theta[col >> 1], cs, sn);
            const float x0 = y0;
            y0 = x0 * cs + y1 * sn;
            y1 = -x0 * sn + y1 * cs;
          }
          *reinterpret_cast<std::uint32_t*>(dst + col) = pack2<T>(y0, y1);
        }
      }
    }
}

}  // namespace gecko::sliding_chunk_attention::kernels
