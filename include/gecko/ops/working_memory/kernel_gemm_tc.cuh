// Tensor-core engine for the batched GEMMs (16-bit T): mma.sync m16n8k16 with fp32 accumulation.
//
// A persistent CTA takes a contiguous range of output tiles (BM x 256, 8 warps as 2 x 4, each warp
// BM/2 x 64) and runs one flat software pipeline over (tile, 64-wide k-step) pairs: cp.async fills a
// 4-stage ring of swizzled shared tiles, ldmatrix (with .trans for the transposed layouts) feeds the
// tensor cores, and the epilogue of a tile runs from registers while the next tile's loads are
// already in flight. This keeps short-K products (K = dk) as busy as long ones (K = C).
//
// Layouts (compile time): A row-major [M][K] or column-major [K][M]; B row-major [K][N] or
// column-major [N][K]; each with a unit inner stride and a free row stride.
#pragma once

#include "gecko/ops/working_memory/kernel_gemm_params.cuh"

namespace gecko::working_memory::kernels {

inline constexpr int kTcBN = 256, kTcBK = 64, kTcStages = 4;

// Row tiles of 128 (warp tiles 64 x 64); 64 for the epilogues that also hold feature rows or a
// second accumulator (register budget), and for Y = gU M̄ᵀ (dk x dk per chunk: few tiles).
template <int EPI>
constexpr int tc_gemm_bm() {
  return EPI == kDaq || EPI == kDak || EPI == kStoreYneg ? 64 : 128;
}

template <int BM>
constexpr int tc_gemm_smem_bytes() {
  return kTcStages * (BM * kTcBK * 2 + kTcBK * kTcBN * 2) + BM * 4 * 4;
}

template <class T, bool AR, bool BR, int BM, int EPI>
__global__ void __launch_bounds__(kThreads, 1) gemm_tc_kernel(const __grid_constant__ GemmParams p) {
  constexpr int BN = kTcBN, BK = kTcBK, STAGES = kTcStages;
  constexpr int WM = BM / 2, MI = WM / 16, NI = 8;
  constexpr int A_BYTES = BM * BK * 2, STAGE_BYTES = A_BYTES + BK * BN * 2;
  constexpr int A_CPR = AR ? BK / 8 : BM / 8;
  constexpr int B_CPR = BR ? BN / 8 : BK / 8;
  constexpr int HM = kEpiTwoAcc<EPI> ? MI : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  float* red = reinterpret_cast<float*>(smem + STAGES * STAGE_BYTES);  // [BM][4] row partials
  const std::uint32_t sbase = smem_u32(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = (warp >> 2) * WM, warp_n = warp & 3, wn = warp_n * 64;
  const int g = lane >> 2, q4 = lane & 3;

  const int t_begin = static_cast<int>(p.total_tiles * blockIdx.x / gridDim.x);
  const int t_end = static_cast<int>(p.total_tiles * (blockIdx.x + 1) / gridDim.x);
  const int ks_n = p.ksteps;
  const int iters = (t_end - t_begin) * ks_n;

  // Loads k-step ks of tile t into a stage.
  auto load = [&](int t, int ks, int stage) {
    const TileInfo ti = decode_tile<BM, BN>(p, t);
    if (ti.zero) return;
    const GemmProblem& q = p.prob[ti.prob];
    int s = 0, k0 = ks * BK;
    while (s + 1 < q.nseg && k0 >= q.seg[s].k) {
      k0 -= q.seg[s].k;
      ++s;
    }
    std::int64_t lda = 0, ldb = 0;
    const T* A = mat_at<T>(q.seg[s].a, ti.b, ti.h, ti.c, lda);
    const T* Bm = mat_at<T>(q.seg[s].b, ti.b, ti.h, ti.c, ldb);
    const std::uint32_t sA = sbase + static_cast<std::uint32_t>(stage) * STAGE_BYTES, sB = sA + A_BYTES;
    if constexpr (AR) {
      A += k0;
#pragma unroll
      for (int x = 0; x < BM * 8 / kThreads; ++x) {
        const int i = tid + x * kThreads, r = i >> 3, ch = i & 7;
        const int m = ti.m0 + r;
        const bool ok = m < q.M;
        cp_async16(sA + swz(r, ch, A_CPR), ok ? A + m * lda + ch * 8 : A, ok);
      }
    } else {
      A += k0 * lda + ti.m0;
#pragma unroll
      for (int x = 0; x < BK * A_CPR / kThreads; ++x) {
        const int i = tid + x * kThreads, r = i / A_CPR, ch = i % A_CPR;
        const bool ok = ti.m0 + ch * 8 < q.M;
        cp_async16(sA + swz(r, ch, A_CPR), ok ? A + r * lda + ch * 8 : A, ok);
      }
    }
    if constexpr (BR) {
      Bm += k0 * ldb + ti.n0;
#pragma unroll
      for (int x = 0; x < BK * B_CPR / kThreads; ++x) {
        const int i = tid + x * kThreads, r = i / B_CPR, ch = i % B_CPR;
        const bool ok = ti.n0 + ch * 8 < q.N;
        cp_async16(sB + swz(r, ch, B_CPR), ok ? Bm + r * ldb + ch * 8 : Bm, ok);
      }
    } else {
      Bm += k0;
#pragma unroll
      for (int x = 0; x < BN * B_CPR / kThreads; ++x) {
        const int i = tid + x * kThreads, r = i / B_CPR, ch = i % B_CPR;
        const int n = ti.n0 + r;
        const bool ok = n < q.N;
        cp_async16(sB + swz(r, ch, B_CPR), ok ? Bm + n * ldb + ch * 8 : Bm, ok);
      }
    }
  };
  // The next load in (tile, k-step) order, one commit group per k-step (empty past the end).
  int ld_it = 0, ld_t = t_begin, ld_ks = 0;
  auto load_next = [&]() {
    if (ld_it < iters) {
      load(ld_t, ld_ks, ld_it % STAGES);
      if (++ld_ks == ks_n) {
        ld_ks = 0;
        ++ld_t;
      }
    }
    cp_async_commit();
    ++ld_it;
  };

  float acc[MI][NI][4];
  [[maybe_unused]] float hold[HM][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  // One 64-wide k-step from a stage: per k16 step, the warp's A fragments, then B two n8 blocks at
  // a time, each feeding MI x 2 mma.
  auto compute = [&](int stage) {
    const std::uint32_t sA = sbase + static_cast<std::uint32_t>(stage) * STAGE_BYTES, sB = sA + A_BYTES;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      std::uint32_t af[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        if constexpr (AR)
          ldsm_x4(af[mi], a_frag_addr_row(sA, wm + mi * 16, kk, A_CPR, lane));
        else
          ldsm_x4_t(af[mi], a_frag_addr_col(sA, wm + mi * 16, kk, A_CPR, lane));
      }
#pragma unroll
      for (int nj = 0; nj < NI / 2; ++nj) {
        std::uint32_t bfr[4];
        if constexpr (BR)
          ldsm_x4_t(bfr, b_frag_addr_row(sB, kk, wn + nj * 16, B_CPR, lane));
        else
          ldsm_x4(bfr, b_frag_addr_col(sB, kk, wn + nj * 16, B_CPR, lane));
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          mma16816<T>(acc[mi][2 * nj], af[mi], bfr[0], bfr[1]);
          mma16816<T>(acc[mi][2 * nj + 1], af[mi], bfr[2], bfr[3]);
        }
      }
    }
  };

  // Row dot products <acc, f>_row over the tile's N columns (the whole feature row: N <= 256),
  // reduced over the 4 lanes of a row, then over the 4 warps along N in a fixed order.
  auto rowdot = [&](const TileInfo& ti, const GemmProblem& q, bool active, const Mat& f, float (&rd)[MI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int rl = wm + mi * 16 + g + 8 * hf, row = ti.m0 + rl;
        float s = 0.f;
        if (active && row < q.M) {
#pragma unroll
          for (int ni = 0; ni < NI; ++ni) {
            const float2 fv = feat2<T>(f, ti, row, ti.n0 + wn + ni * 8 + 2 * q4);
            s += acc[mi][ni][2 * hf] * fv.x + acc[mi][ni][2 * hf + 1] * fv.y;
          }
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (q4 == 0) red[rl * 4 + warp_n] = s;
      }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float* rr = red + (wm + mi * 16 + g + 8 * hf) * 4;
        rd[mi][hf] = (rr[0] + rr[1]) + (rr[2] + rr[3]);
      }
    __syncthreads();
  };

  for (int s = 0; s < STAGES - 1; ++s) load_next();

  TileInfo cur{};
  int ks = ks_n - 1, tcur = t_begin - 1;
  for (int it = 0; it < iters; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    load_next();
    if (++ks == ks_n) {
      ks = 0;
      cur = decode_tile<BM, BN>(p, ++tcur);
    }
    const GemmProblem& q = p.prob[cur.prob];
    const bool inrange = cur.m0 + wm < q.M && cur.n0 + wn < q.N;
    const bool active = inrange && !cur.zero;
    if (active) compute(it % STAGES);

    if constexpr (kEpiTwoAcc<EPI>) {
      if (ks == q.seg[0].k / BK - 1) {  // first segment done: hold k̂ ∘ (acc - <acc, k̂>), restart
        float rd[MI][2];
        rowdot(cur, q, active, q.epi.f2, rd);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int row = cur.m0 + wm + mi * 16 + g + 8 * hf;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
              float h0 = 0.f, h1 = 0.f;
              if (active && row < q.M) {
                const float2 kv = feat2<T>(q.epi.f2, cur, row, cur.n0 + wn + ni * 8 + 2 * q4);
                h0 = kv.x * (acc[mi][ni][2 * hf] - rd[mi][hf]);
                h1 = kv.y * (acc[mi][ni][2 * hf + 1] - rd[mi][hf]);
              }
              hold[mi][ni][2 * hf] = h0;
              hold[mi][ni][2 * hf + 1] = h1;
              acc[mi][ni][2 * hf] = 0.f;
              acc[mi][ni][2 * hf + 1] = 0.f;
            }
          }
      }
    }

    if (ks == ks_n - 1) {
      float rd[MI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) rd[mi][0] = rd[mi][1] = 0.f;
      if constexpr (kEpiRowDot<EPI>) rowdot(cur, q, active, q.epi.f1, rd);
      if (inrange) {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int row = cur.m0 + wm + mi * 16 + g + 8 * hf;
            if (row < q.M) {
#pragma unroll
              for (int ni = 0; ni < NI; ++ni) {
                float h0 = 0.f, h1 = 0.f;
                if constexpr (kEpiTwoAcc<EPI>) {
                  h0 = hold[mi][ni][2 * hf];
                  h1 = hold[mi][ni][2 * hf + 1];
                }
                epi_store<T, EPI>(q.epi, cur, row, cur.n0 + wn + ni * 8 + 2 * q4, acc[mi][ni][2 * hf],
                             acc[mi][ni][2 * hf + 1], rd[mi][hf], h0, h1);
              }
            }
          }
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    }
  }
  cp_async_wait<0>();
}

}  // namespace gecko::working_memory::kernels
