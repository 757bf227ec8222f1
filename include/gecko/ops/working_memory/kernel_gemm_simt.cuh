// SIMT fp32 engine for the batched GEMMs (T = float, the simple path): 32 x 256 tiles, one warp per
// 4 rows and each lane 8 columns of them, operands staged through shared memory 16 k at a time.
// Rows, columns and k are predicated, so any shape works; the same descriptors and epilogues as the
// tensor-core engine, so both paths compute the same thing.
#pragma once

#include "gecko/ops/working_memory/kernel_gemm_params.cuh"

namespace gecko::working_memory::kernels {

inline constexpr int kSimtBM = 32, kSimtBN = 256, kSimtBK = 16;

template <bool AR, bool BR, int EPI>
__global__ void __launch_bounds__(kThreads) gemm_simt_kernel(const __grid_constant__ GemmParams p) {
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  constexpr int HM = kEpiTwoAcc<EPI> ? 4 : 1;
  __shared__ float sA[BK][BM];
  __shared__ float2 sB[BK][BN / 2];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Row dot products of this warp's 4 rows over the tile's columns (warp-wide, fixed order).
  auto rowdot = [&](const TileInfo& ti, const GemmProblem& q, const float (&acc)[4][8], const Mat& f,
                    float (&rd)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = ti.m0 + warp * 4 + i;
      float s = 0.f;
#pragma unroll
      for (int kq = 0; kq < 4; ++kq) {
        const int col = ti.n0 + 2 * lane + 64 * kq;
        if (!ti.zero && row < q.M && col < q.N) {
          const float2 fv = feat2<float>(f, ti, row, col);
          s += acc[i][2 * kq] * fv.x + acc[i][2 * kq + 1] * fv.y;
        }
      }
      rd[i] = warp_sum(s);
    }
  };

  for (int t = blockIdx.x; t < p.total_tiles; t += gridDim.x) {
    const TileInfo ti = decode_tile<BM, BN>(p, t);
    const GemmProblem& q = p.prob[ti.prob];
    float acc[4][8];
    [[maybe_unused]] float hold[HM][8];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        acc[i][c] = 0.f;
        if constexpr (kEpiTwoAcc<EPI>) hold[i][c] = 0.f;
      }
    if (!ti.zero) {
      for (int s = 0; s < q.nseg; ++s) {
        std::int64_t lda = 0, ldb = 0;
        const float* A = mat_at<float>(q.seg[s].a, ti.b, ti.h, ti.c, lda);
        const float* Bm = mat_at<float>(q.seg[s].b, ti.b, ti.h, ti.c, ldb);
        for (int k0 = 0; k0 < q.seg[s].k; k0 += BK) {
          for (int i = tid; i < BM * BK; i += kThreads) {
            const int m = AR ? i / BK : i % BM, k = AR ? i % BK : i / BM;
            const int gm = ti.m0 + m, gk = k0 + k;
            float v = 0.f;
            if (gm < q.M && gk < q.seg[s].k) v = AR ? A[gm * lda + gk] : A[gk * lda + gm];
            sA[k][m] = v;
          }
          for (int i = tid; i < BK * BN; i += kThreads) {
            const int n = BR ? i % BN : i / BK, k = BR ? i / BN : i % BK;
            const int gn = ti.n0 + n, gk = k0 + k;
            float v = 0.f;
            if (gn < q.N && gk < q.seg[s].k) v = BR ? Bm[gk * ldb + gn] : Bm[gn * ldb + gk];
            reinterpret_cast<float*>(&sB[k][0])[n] = v;
          }
          __syncthreads();
#pragma unroll
          for (int k = 0; k < BK; ++k) {
            float a[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = sA[k][warp * 4 + i];
#pragma unroll
            for (int kq = 0; kq < 4; ++kq) {
              const float2 bv = sB[k][lane + 32 * kq];
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                acc[i][2 * kq] = fmaf(a[i], bv.x, acc[i][2 * kq]);
                acc[i][2 * kq + 1] = fmaf(a[i], bv.y, acc[i][2 * kq + 1]);
              }
            }
          }
          __syncthreads();
        }
        if constexpr (kEpiTwoAcc<EPI>) {
          if (s == 0) {
            float rd[4];
            rowdot(ti, q, acc, q.epi.f2, rd);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int row = ti.m0 + warp * 4 + i;
#pragma unroll
              for (int kq = 0; kq < 4; ++kq) {
                const int col = ti.n0 + 2 * lane + 64 * kq;
                float h0 = 0.f, h1 = 0.f;
                if (row < q.M && col < q.N) {
                  const float2 kv = feat2<float>(q.epi.f2, ti, row, col);
                  h0 = kv.x * (acc[i][2 * kq] - rd[i]);
                  h1 = kv.y * (acc[i][2 * kq + 1] - rd[i]);
                }
                hold[i][2 * kq] = h0;
                hold[i][2 * kq + 1] = h1;
                acc[i][2 * kq] = acc[i][2 * kq + 1] = 0.f;
              }
            }
          }
        }
      }
    }
    float rd[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (kEpiRowDot<EPI>) rowdot(ti, q, acc, q.epi.f1, rd);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = ti.m0 + warp * 4 + i;
#pragma unroll
      for (int kq = 0; kq < 4; ++kq) {
        const int col = ti.n0 + 2 * lane + 64 * kq;
        if (row < q.M && col < q.N) {
          float h0 = 0.f, h1 = 0.f;
          if constexpr (kEpiTwoAcc<EPI>) {
            h0 = hold[i][2 * kq];
            h1 = hold[i][2 * kq + 1];
          }
          epi_store<float, EPI>(q.epi, ti, row, col, acc[i][2 * kq], acc[i][2 * kq + 1], rd[i], h0, h1);
        }
      }
    }
  }
}

}  // namespace gecko::working_memory::kernels
