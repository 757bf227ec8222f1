// Forward of sliding chunk attention on tensor cores: flash-style (online softmax, one 64-key
// block at a time), 128 query rows per thread-block cluster, the dv columns split over the
// cluster's CTAs with P shared through distributed shared memory (kernel_cluster.cuh explains
// the scheme). RoPE of q is applied as the query rows are loaded; k comes pre-rotated from
// kernel_prep.cuh (each key block is read by ~2C/128 query tiles, so rotating it once beats
// rotating it on every load). With splits > 1 the key range of a query tile is divided over
// grid.z (decoding: one query must still fill the GPU) and the partial (O, m, l) go to a
// workspace that combine_kernel (kernel_prep.cuh) merges.
#pragma once

#include <climits>

#include "gecko/ops/sliding_chunk_attention/kernel_cluster.cuh"

namespace gecko::sliding_chunk_attention::kernels {

template <class T>
struct FwdParams {
  int L = 0, H = 0, dk = 0, dv = 0, P = 0, keys = 0;
  i64 chunk = 0, start = 0;
  int n_rope = 0, segments = 0;
  float scale_log2 = 0.f;
  Rows<T> q;
  Window<T> kw, vw;
  Segs seg;
  OutRows<T> out;
  float* lse = nullptr;  // [B, H, L] or null
  i64 lse_sb = 0, lse_sh = 0, lse_sl = 0;
  float* part_o = nullptr;   // splits > 1: [splits, B*H, L, dv] unnormalised outputs
  float* part_ml = nullptr;  // [splits, B*H, L, 2]: running max (log2 domain) and sum
  int splits = 1;
  int n = 1, rows = kRowTile, width = 0;  // cluster size, own rows per CTA, dv columns per CTA
  float theta[kMaxPairs] = {};
};

// grid (n * query tiles, B * H, splits), clusters of (n, 1, 1), 256 threads.
template <class T>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(const __grid_constant__ FwdParams<T> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const ClusterLayout lay(p.rows, p.dk, p.width);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n = p.n, rank = static_cast<int>(cluster_rank());
  const int tile = blockIdx.x / n;
  const int bh = blockIdx.y, b = bh / p.H, h = bh - b * p.H;
  const int split = blockIdx.z;
  const int rows = p.rows, G = rows >> 4;
  const int r0 = tile * kRowTile;
  const int nvalid = min(kRowTile, p.L - r0);
  const int own0 = rank * rows;
  const int dk = p.dk, kcpr = dk >> 3, vcpr = p.width >> 3;
  const int c0 = rank * p.width, c_end = min(c0 + p.width, p.dv);

  // Key blocks of this query tile (and of this split).
  const int pos_first = p.P + r0, pos_last = p.P + r0 + nvalid - 1;
  const int kb_first = window_lo(pos_first, p.chunk) / kColBlock;
  const int kb_last = min(pos_last, p.keys - 1) / kColBlock;
  const int nb_all = kb_last - kb_first + 1;
  const int blk0 = kb_first + static_cast<int>(static_cast<i64>(nb_all) * split / p.splits);
  const int nb = kb_first + static_cast<int>(static_cast<i64>(nb_all) * (split + 1) / p.splits) - blk0;
  // A key block needs no mask when every valid row sees all of it.
  const int lo_max = window_lo(pos_last, p.chunk), hi_min = pos_first;

  const std::uint32_t sbase = smem_u32(smem);
  const std::uint32_t sq = sbase + lay.q, sk = sbase + lay.k, sv = sbase + lay.v, sp = sbase + lay.p;
  float* s_alpha = reinterpret_cast<float*>(smem + lay.alpha);
  float* s_linv = reinterpret_cast<float*>(smem + lay.linv);
  float* s_m = reinterpret_cast<float*>(smem + lay.m);
  float* s_l = reinterpret_cast<float*>(smem + lay.l);
  float* s_redmax = reinterpret_cast<float*>(smem + lay.red_max);
  float* s_redsum = reinterpret_cast<float*>(smem + lay.red_sum);
  int* s_rlo = reinterpret_cast<int*>(smem + lay.row_lo);
  int* s_rhi = reinterpret_cast<int*>(smem + lay.row_hi);
  i64* s_rseg = reinterpret_cast<i64*>(smem + lay.row_seg);
  i64* s_kseg = reinterpret_cast<i64*>(smem + lay.col_seg);

  const RowSrc<T> ksrc = window_src(p.kw, b, h, p.keys), vsrc = window_src(p.vw, b, h, p.keys);
  const Cursor kcur(kColBlock, log2_pow2(kcpr)), vcur(kColBlock, log2_pow2(vcpr));

  // ---- prologue: own-row state, K block 0, rotated Q rows ----
  for (int i = tid; i < rows; i += kThreads) {
    const int r = r0 + own0 + i, pos = p.P + r;
    s_m[kRowTile + i] = -INFINITY;  // parity 1 = "before block 0"
    s_l[i] = 0.f;
    s_rlo[i] = window_lo(pos, p.chunk);
    s_rhi[i] = pos;
    s_rseg[i] = (p.segments && r < p.L) ? p.seg.query(b, r) : 0;
  }
  if (nb > 0) {
    load_tile(sk, ksrc, blk0 * kColBlock, kcur, 0, dk);
    if (p.segments && tid < kColBlock) {
      const int j = blk0 * kColBlock + tid;
      s_kseg[tid] = j < p.keys ? p.seg.key(b, j) : LLONG_MIN;
    }
  }
  cp_async_commit();
  {
    const bool rot = h < p.n_rope;
    for (int idx = tid; idx < rows * kcpr; idx += kThreads) {
      const int i = idx / kcpr, c = idx - i * kcpr;
      const int r = r0 + own0 + i;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < p.L) {
        v = __ldg(reinterpret_cast<const uint4*>(p.q.at(b, r, h) + c * 8));
        if (rot) {
          std::uint32_t* w = reinterpret_cast<std::uint32_t*>(&v);
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const float2 x = unpack2<T>(w[u]);
            float cs, sn;
            rope_cos_sin(p.start + r, p.theta[c * 4 + u], cs, sn);
            w[u] = pack2<T>(x.x * cs - x.y * sn, x.x * sn + x.y * cs);
          }
        }
      }
      *reinterpret_cast<uint4*>(smem + lay.q + swz(i, c, kcpr)) = v;
    }
  }
  // Every CTA of the cluster has started (its shared memory may now be written by peers).
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
    const int kb = (blk0 + it) * kColBlock;
    cp_async_wait<0>();
    __syncthreads();  // K[it] and V[it-1] landed; every warp is done with block it-1
    if (it + 1 < nb) {
      load_tile(sk + ((it + 1) & 1) * lay.k_tile, ksrc, kb + kColBlock, kcur, 0, dk);
      if (p.segments && tid < kColBlock) {
        const int j = kb + kColBlock + tid;
        s_kseg[((it + 1) & 1) * kColBlock + tid] = j < p.keys ? p.seg.key(b, j) : LLONG_MIN;
      }
    }
    load_tile(sv + (it & 1) * lay.v_tile, vsrc, kb, vcur, c0, c_end);
    cp_async_commit();

    const bool need_mask = p.segments || kb < lo_max || kb + kColBlock - 1 > hi_min || kb + kColBlock > p.keys;
    const int pb = it % 3;
    const std::uint32_t p_tile = sp + pb * ClusterLayout::kPTile;
    const std::uint32_t k_cur = sk + (it & 1) * lay.k_tile;
    const float* m_old = s_m + ((it + 1) & 1) * kRowTile;
    float* m_new_buf = s_m + (it & 1) * kRowTile;
    float* alpha = s_alpha + pb * kRowTile;
    const i64* kseg = s_kseg + (it & 1) * kColBlock;

    // ---- S phase: own rows, 16 at a time ----
    for (int gi = 0; gi < G; ++gi) {
      float s[4];
      s_group<T>(s, sq, k_cur, gi, dk, lane, warp);
      const int lr0 = 16 * gi + g, lr1 = lr0 + 8;
#pragma unroll
      for (int e = 0; e < 4; ++e) s[e] *= p.scale_log2;
      if (need_mask) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int lr = e < 2 ? lr0 : lr1;
          const int col = 8 * warp + 2 * t + (e & 1);
          const int key = kb + col;
          bool vis = key >= s_rlo[lr] && key <= s_rhi[lr] && key < p.keys;
          if (p.segments) vis = vis && kseg[col] == s_rseg[lr];
          if (!vis) s[e] = -INFINITY;
        }
      }
      const float mx0 = quad_max(fmaxf(s[0], s[1])), mx1 = quad_max(fmaxf(s[2], s[3]));
      float* red = s_redmax + (gi * 8) * 16;
      if (t == 0) {
        red[warp * 16 + g] = mx0;
        red[warp * 16 + g + 8] = mx1;
      }
      __syncthreads();
      float mb0 = red[g], mb1 = red[g + 8];
#pragma unroll
      for (int w = 1; w < 8; ++w) {
        mb0 = fmaxf(mb0, red[w * 16 + g]);
        mb1 = fmaxf(mb1, red[w * 16 + g + 8]);
      }
      const float mo0 = m_old[lr0], mo1 = m_old[lr1];
      const float mn0 = fmaxf(mo0, mb0), mn1 = fmaxf(mo1, mb1);
      const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
      const float p0 = fast_exp2(s[0] - mu0), p1 = fast_exp2(s[1] - mu0);
      const float p2 = fast_exp2(s[2] - mu1), p3 = fast_exp2(s[3] - mu1);
      const int R0 = own0 + lr0, R1 = own0 + lr1;
      sts32(p_tile + swz_elem(R0, 8 * warp + 2 * t, 8), pack2<T>(p0, p1));
      sts32(p_tile + swz_elem(R1, 8 * warp + 2 * t, 8), pack2<T>(p2, p3));
      const float rs0 = quad_sum(p0 + p1), rs1 = quad_sum(p2 + p3);
      float* rsum = s_redsum + (gi * 8) * 16;
      if (t == 0) {
        rsum[warp * 16 + g] = rs0;
        rsum[warp * 16 + g + 8] = rs1;
        if (warp == 0) {
          m_new_buf[lr0] = mn0;
          m_new_buf[lr1] = mn1;
          alpha[R0] = fast_exp2(mo0 - mu0);
          alpha[R1] = fast_exp2(mo1 - mu1);
        }
      }
    }
    __syncthreads();  // own rows of P[it], alpha[it] and the row sums are complete
    for (int i = tid; i < rows; i += kThreads) {
      const float* rsum = s_redsum + ((i >> 4) * 8) * 16 + (i & 15);
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) sum += rsum[w * 16];
      s_l[i] = s_l[i] * alpha[own0 + i] + sum;
    }
    broadcast_rows(p_tile, smem_u32(alpha + own0), own0, rows, n, rank, true);
    const std::uint32_t p_prev = sp + ((it + 2) % 3) * ClusterLayout::kPTile;  // P[it-1]
    const std::uint32_t v_prev = sv + ((it + 1) & 1) * lay.v_tile;             // V[it-1]
    if (it > 0 && pv_active)
      pv_step<T>(o, p_prev, v_prev, s_alpha + ((it + 2) % 3) * kRowTile, vcpr, wm, wn, lane, 0, 2);
    cluster_arrive();
    if (it > 0 && pv_active) pv_step<T>(o, p_prev, v_prev, nullptr, vcpr, wm, wn, lane, 2, 4);
    cluster_wait();
  }
  cp_async_wait<0>();
  __syncthreads();
  if (nb > 0 && pv_active)
    pv_step<T>(o, sp + ((nb - 1) % 3) * ClusterLayout::kPTile, sv + ((nb - 1) & 1) * lay.v_tile,
               s_alpha + ((nb - 1) % 3) * kRowTile, vcpr, wm, wn, lane);

  // ---- epilogue ----
  const float* m_fin = s_m + ((nb + 1) & 1) * kRowTile;  // parity of block nb-1
  if (p.splits == 1) {
    for (int i = tid; i < rows; i += kThreads) {
      const float l = s_l[i], m = m_fin[i];
      s_linv[own0 + i] = l > 0.f ? 1.f / l : 0.f;
      const int r = r0 + own0 + i;
      if (p.lse && r < p.L) p.lse[b * p.lse_sb + h * p.lse_sh + r * p.lse_sl] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
    }
    __syncthreads();
    if (n > 1) {
      const int per = rows / 4;
      for (int idx = tid; idx < (n - 1) * per; idx += kThreads) {
        const int d = idx / per, c = idx - d * per;
        const int dest = d < rank ? d : d + 1;
        const std::uint32_t addr = smem_u32(s_linv + own0) + c * 16;
        st_cluster128(map_rank(addr, static_cast<std::uint32_t>(dest)), lds128(addr));
      }
    }
    cluster_arrive();
    cluster_wait();
    if (!pv_active) return;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int R = 64 * wm + 16 * mt + g + 8 * hf, r = r0 + R;
        if (r >= p.L) continue;
        const float inv = s_linv[R];
        T* dst = p.out.at(b, r, h) + c0 + 64 * wn + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          *reinterpret_cast<std::uint32_t*>(dst + 8 * nt) = pack2<T>(o[mt][nt][2 * hf] * inv, o[mt][nt][2 * hf + 1] * inv);
      }
  } else {
    const i64 row_base = (static_cast<i64>(split) * gridDim.y + bh) * p.L;
    for (int i = tid; i < rows; i += kThreads) {
      const int r = r0 + own0 + i;
      if (r < p.L) {
        p.part_ml[(row_base + r) * 2] = m_fin[i];
        p.part_ml[(row_base + r) * 2 + 1] = s_l[i];
      }
    }
    if (!pv_active) return;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int R = 64 * wm + 16 * mt + g + 8 * hf, r = r0 + R;
        if (r >= p.L) continue;
        float* dst = p.part_o + (row_base + r) * p.dv + c0 + 64 * wn + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          *reinterpret_cast<float2*>(dst + 8 * nt) = make_float2(o[mt][nt][2 * hf], o[mt][nt][2 * hf + 1]);
      }
  }
}

}  // namespace gecko::sliding_chunk_attention::kernels
