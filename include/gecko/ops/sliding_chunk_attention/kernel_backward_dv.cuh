// Backward, value gradient: dV_j = sum_i P_ij dO_i over the queries i that see key j. It is the
// forward with the roles of keys and queries exchanged (rows = 128 keys per cluster, inner blocks
// = 64 queries, wide operand = dO) and with the softmax already known (P = exp2(s2 - lse2) from
// the saved log-sum-exp, so no running max and no rescaling). The dv columns are split over the
// cluster and each CTA computes P^T only for its own 128 / n key rows, shared through
// distributed shared memory exactly as in the forward (kernel_cluster.cuh). Rows j < P go to
// dprev_v (when asked for), the others to dv.
#pragma once

#include <climits>

#include "gecko/ops/sliding_chunk_attention/kernel_cluster.cuh"

namespace gecko::sliding_chunk_attention::kernels {

template <class T>
struct DvParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0;
  int n_rope = 0, segments = 0;
  float scale_log2 = 0.f;
  Window<T> kw;     // keys, pre-rotated
  Rows<T> q, qrot;  // queries: qrot (dense [B, L, n_rope, dk]) for heads < n_rope
  Rows<T> dout;
  Segs seg;
  const float* lse = nullptr;
  i64 lse_sb = 0, lse_sh = 0, lse_sl = 0;
  OutRows<T> grad_v, grad_prev_v;  // dv, dprev_v (may be null)
  int accumulate_v = 0;            // grad_v += instead of = (not grad_prev_v)
  int n = 1, rows = kRowTile, width = 0;
};

// grid (n * key tiles, B * H), clusters of (n, 1, 1), 256 threads.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) backward_dv_kernel(const __grid_constant__ DvParams<T> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const ClusterLayout lay(p.rows, p.dk, p.width);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n = p.n, rank = static_cast<int>(cluster_rank());
  const int tile = blockIdx.x / n;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int rows = p.rows, G = rows >> 4;
  const int j0 = tile * kRowTile;
  const int j_last = min(j0 + kRowTile, p.keys) - 1;
  const int own0 = rank * rows;
  const int dk = p.dk, kcpr = dk >> 3, vcpr = p.width >> 3;
  const int c0 = rank * p.width, c_end = min(c0 + p.width, p.dv);
  const Rows<T> qsrc = h < p.n_rope ? p.qrot : p.q;

  // Query blocks (64 rows of q each) that see any key of the tile.
  const int pos_lo = max(j0, p.P);
  const int pos_hi = static_cast<int>(min(last_query_pos(j_last, p.chunk), static_cast<i64>(p.P) + p.L - 1));
  const int qb_first = (pos_lo - p.P) / kColBlock, qb_last = (pos_hi - p.P) / kColBlock;
  const int nb = qb_last - qb_first + 1;

  const std::uint32_t sbase = smem_u32(smem);
  const std::uint32_t sq = sbase + lay.q, sk = sbase + lay.k, sv = sbase + lay.v, sp = sbase + lay.p;
  i64* s_rseg = reinterpret_cast<i64*>(smem + lay.row_seg);
  int* s_clo = reinterpret_cast<int*>(smem + lay.col_lo);
  int* s_chi = reinterpret_cast<int*>(smem + lay.col_hi);
  i64* s_cseg = reinterpret_cast<i64*>(smem + lay.col_seg);
  float* s_clse = reinterpret_cast<float*>(smem + lay.col_lse);

  // Per-query data of query block qb into buffer `buf`: interval, document, lse (log2 domain).
  auto load_cols = [&](int qb, int buf) {
    if (tid < kColBlock) {
      const int r = qb * kColBlock + tid;
      const bool ok = r < p.L;
      const int pos = p.P + r;
      s_clo[buf * kColBlock + tid] = ok ? window_lo(pos, p.chunk) : INT_MAX;
      s_chi[buf * kColBlock + tid] = ok ? pos : -1;
      s_cseg[buf * kColBlock + tid] = (ok && p.segments) ? p.seg.query(b, r) : LLONG_MIN;
      s_clse[buf * kColBlock + tid] = ok ? p.lse[b * p.lse_sb + h * p.lse_sh + r * p.lse_sl] * kLog2e : INFINITY;
    }
  };

  const RowSrc<T> ksrc = window_src(p.kw, b, h, p.keys), qsrc_r = rows_src(qsrc, b, h, p.L),
                  osrc = rows_src(p.dout, b, h, p.L);
  const Cursor own_cur(rows, log2_pow2(kcpr)), qcur(kColBlock, log2_pow2(kcpr)), vcur(kColBlock, log2_pow2(vcpr));

  // ---- prologue: own key rows, query block 0 ----
  for (int i = tid; i < rows; i += kThreads) {
    const int j = j0 + own0 + i;
    s_rseg[i] = (p.segments && j < p.keys) ? p.seg.key(b, j) : 0;
  }
  load_tile(sq, ksrc, j0 + own0, own_cur, 0, dk);
  load_tile(sk, qsrc_r, qb_first * kColBlock, qcur, 0, dk);
  load_cols(qb_first, 0);
  cp_async_commit();
  cluster_arrive();
  cluster_wait();

  const int wm = warp >> 2, wn = warp & 3;
  const bool pv_active = c0 + wn * 64 < c_end;
  float o[4][8][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;

  for (int it = 0; it < nb; ++it) {
    const int qb = qb_first + it, q0 = qb * kColBlock;
    cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < nb) {
      load_tile(sk + ((it + 1) & 1) * lay.k_tile, qsrc_r, q0 + kColBlock, qcur, 0, dk);
      load_cols(qb + 1, (it + 1) & 1);
    }
    load_tile(sv + (it & 1) * lay.v_tile, osrc, q0, vcur, c0, c_end);
    cp_async_commit();

    // Every (valid key, valid query) pair of the block visible: no mask (invalid queries carry
    // lse = +inf, so their P is exactly 0 either way).
    const int q_last = min(q0 + kColBlock, p.L) - 1;
    const bool need_mask = p.segments || window_lo(p.P + q_last, p.chunk) > j0 || j_last > p.P + q0;
    const int pb = it % 3, cb = it & 1;
    const std::uint32_t p_tile = sp + pb * ClusterLayout::kPTile;
    const std::uint32_t q_cur = sk + cb * lay.k_tile;
    const int* clo = s_clo + cb * kColBlock;
    const int* chi = s_chi + cb * kColBlock;
    const i64* cseg = s_cseg + cb * kColBlock;
    const float* clse = s_clse + cb * kColBlock;

    for (int gi = 0; gi < G; ++gi) {
      float s[4];
      s_group<T>(s, sq, q_cur, gi, dk, lane, warp);
      const int lr0 = 16 * gi + g, lr1 = lr0 + 8;
      const int col0 = 8 * warp + 2 * t;
      float pr[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = col0 + (e & 1);
        pr[e] = fast_exp2(s[e] * p.scale_log2 - clse[col]);
        if (need_mask) {
          const int lr = e < 2 ? lr0 : lr1;
          const int key = j0 + own0 + lr;
          bool vis = key >= clo[col] && key <= chi[col];
          if (p.segments) vis = vis && cseg[col] == s_rseg[lr];
          if (!vis) pr[e] = 0.f;
        }
      }
      sts32(p_tile + swz_elem(own0 + lr0, col0, 8), pack2<T>(pr[0], pr[1]));
      sts32(p_tile + swz_elem(own0 + lr1, col0, 8), pack2<T>(pr[2], pr[3]));
    }
    __syncthreads();
    broadcast_rows(p_tile, 0, own0, rows, n, rank, false);
    const std::uint32_t p_prev = sp + ((it + 2) % 3) * ClusterLayout::kPTile;
    const std::uint32_t v_prev = sv + ((it + 1) & 1) * lay.v_tile;
    if (it > 0 && pv_active) pv_step<T>(o, p_prev, v_prev, nullptr, vcpr, wm, wn, lane, 0, 2);
    cluster_arrive();
    if (it > 0 && pv_active) pv_step<T>(o, p_prev, v_prev, nullptr, vcpr, wm, wn, lane, 2, 4);
    cluster_wait();
  }
  cp_async_wait<0>();
  __syncthreads();
  if (pv_active)
    pv_step<T>(o, sp + ((nb - 1) % 3) * ClusterLayout::kPTile, sv + ((nb - 1) & 1) * lay.v_tile, nullptr, vcpr, wm, wn,
               lane);
  if (!pv_active) return;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int j = j0 + 64 * wm + 16 * mt + g + 8 * hf;
      T* dst = nullptr;
      bool add = false;
      if (j < p.P) {
        if (p.grad_prev_v.p) dst = p.grad_prev_v.at(b, j, h);
      } else if (j < p.keys) {
        dst = p.grad_v.at(b, j - p.P, h);
        add = p.accumulate_v;
      }
      if (!dst) continue;
      dst += c0 + 64 * wn + 2 * t;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        auto* d2 = reinterpret_cast<std::uint32_t*>(dst + 8 * nt);
        float v0 = o[mt][nt][2 * hf], v1 = o[mt][nt][2 * hf + 1];
        if (add) {
          const float2 old = unpack2<T>(*d2);
          v0 += old.x;
          v1 += old.y;
        }
        *d2 = pack2<T>(v0, v1);
      }
    }
}

}  // namespace gecko::sliding_chunk_attention::kernels
