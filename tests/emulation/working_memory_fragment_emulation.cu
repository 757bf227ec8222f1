// Host emulation of the tensor-core tiles of the CUDA adaptive working memory (no GPU needed):
// ldmatrix (.x4, with and without .trans) and mma.m16n8k16 modelled per the PTX fragment layouts,
// driven by the kernels' own swizzle and fragment-address helpers (kernel_common.cuh), with the
// GEMM tile loader, the accumulator -> (row, col) epilogue mapping and the scan's bf16 hi/lo operand
// writes replicated from kernel_gemm_tc.cuh / kernel_scan.cuh. Checks every layout (A and B row- or
// column-major), both row tiles, M/N overhang, and the scan's G M̄ / Gᵀ gU products. Not built by CMake:
//   nvcc -std=c++17 -O2 -arch=sm_90a --expt-relaxed-constexpr -Iinclude
//        tests/emulation/working_memory_fragment_emulation.cu -o /tmp/awm_frag && /tmp/awm_frag
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "gecko/ops/working_memory/kernel_common.cuh"

using namespace gecko::working_memory::kernels;
using u16 = unsigned short;
using u32 = std::uint32_t;

static float bf(u16 v) {
  u32 x = u32(v) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
static u16 tobf(float f) {
  __nv_bfloat16 b = __float2bfloat16_rn(f);
  return __bfloat16_as_ushort(b);
}

struct Smem {
  std::vector<unsigned char> b;
  explicit Smem(size_t n) : b(n, 0xCD) {}
  u16 h(u32 off) const { u16 v; std::memcpy(&v, &b[off], 2); return v; }
};

// ldmatrix x4: lanes give addresses; returns regs[lane][4] as pairs of u16 (lo = first element).
static void ldsm(const Smem& s, const u32 (&addr)[32], bool trans, u32 (&out)[32][4]) {
  for (int mat = 0; mat < 4; ++mat) {
    u16 M[8][8];
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) M[r][c] = s.h(addr[mat * 8 + r] + 2 * c);
    for (int t = 0; t < 32; ++t) {
      const int g = t / 4, q = t % 4;
      u16 lo, hi;
      if (!trans) { lo = M[g][2 * q]; hi = M[g][2 * q + 1]; }
      else { lo = M[2 * q][g]; hi = M[2 * q + 1][g]; }
      out[t][mat] = u32(lo) | (u32(hi) << 16);
    }
  }
}

// mma m16n8k16 (bf16): d[lane][4] += A(16x16 from a[lane][4]) * B(16x8 from b0,b1)
static void mma(float (&d)[32][4], const u32 (&a)[32][4], const u32 (&b0)[32], const u32 (&b1)[32]) {
  float A[16][16], B[16][8];
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    auto lo = [](u32 x) { return bf(u16(x & 0xffff)); };
    auto hi = [](u32 x) { return bf(u16(x >> 16)); };
    A[g][2 * q] = lo(a[t][0]); A[g][2 * q + 1] = hi(a[t][0]);
    A[g + 8][2 * q] = lo(a[t][1]); A[g + 8][2 * q + 1] = hi(a[t][1]);
    A[g][2 * q + 8] = lo(a[t][2]); A[g][2 * q + 9] = hi(a[t][2]);
    A[g + 8][2 * q + 8] = lo(a[t][3]); A[g + 8][2 * q + 9] = hi(a[t][3]);
    B[2 * q][g] = lo(b0[t]); B[2 * q + 1][g] = hi(b0[t]);
    B[2 * q + 8][g] = lo(b1[t]); B[2 * q + 9][g] = hi(b1[t]);
  }
  for (int t = 0; t < 32; ++t) {
    const int g = t / 4, q = t % 4;
    for (int e = 0; e < 4; ++e) {
      const int r = g + 8 * (e >> 1), c = 2 * q + (e & 1);
      double s = 0;
      for (int k = 0; k < 16; ++k) s += double(A[r][k]) * B[k][c];
      d[t][e] += float(s);
    }
  }
}

// ---- the tensor-core GEMM tile: replicated loader + compute + epilogue mapping -----------------
template <bool AR, bool BR, int BM>
double gemm_tile_test(int M, int N, int K, int m0, int n0, std::uint64_t seed) {
  constexpr int BN = 256, BK = 64, kThreadsL = 256;
  constexpr int WM = BM / 2, MI = WM / 16, NI = 8;
  constexpr int A_BYTES = BM * BK * 2;
  constexpr int A_CPR = AR ? BK / 8 : BM / 8;
  constexpr int B_CPR = BR ? BN / 8 : BK / 8;
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  const long lda = (AR ? K : M) + 8, ldb = (BR ? N : K) + 8;
  std::vector<u16> Ag((AR ? M : K) * lda), Bg((BR ? K : N) * ldb);
  for (auto& x : Ag) x = tobf(dist(gen));
  for (auto& x : Bg) x = tobf(dist(gen));
  auto Aat = [&](int m, int k) { return bf(AR ? Ag[m * lda + k] : Ag[k * lda + m]); };
  auto Bat = [&](int k, int n) { return bf(BR ? Bg[k * ldb + n] : Bg[n * ldb + k]); };
  std::vector<float> acc_all(8 * 32 * MI * NI * 4, 0.f);
  Smem sm(A_BYTES + BK * BN * 2);
  for (int k0 = 0; k0 < K; k0 += BK) {
    std::fill(sm.b.begin(), sm.b.end(), 0xCD);
    const u32 sA = 0, sB = A_BYTES;
    for (int tid = 0; tid < kThreadsL; ++tid) {
      auto cp = [&](u32 dst, const u16* src, bool ok) {
        for (int e = 0; e < 8; ++e) { u16 v = ok ? src[e] : 0; std::memcpy(&sm.b[dst + 2 * e], &v, 2); }
      };
      if (AR) {
        const u16* A = Ag.data() + k0;
        for (int x = 0; x < BM * 8 / kThreadsL; ++x) {
          const int i = tid + x * kThreadsL, r = i >> 3, ch = i & 7;
          const int m = m0 + r; const bool ok = m < M;
          cp(sA + swz(r, ch, A_CPR), ok ? A + m * lda + ch * 8 : A, ok);
        }
      } else {
        const u16* A = Ag.data() + k0 * lda + m0;
        for (int x = 0; x < BK * A_CPR / kThreadsL; ++x) {
          const int i = tid + x * kThreadsL, r = i / A_CPR, ch = i % A_CPR;
          const bool ok = m0 + ch * 8 < M;
          cp(sA + swz(r, ch, A_CPR), ok ? A + r * lda + ch * 8 : A, ok);
        }
      }
      if (BR) {
        const u16* Bm = Bg.data() + k0 * ldb + n0;
        for (int x = 0; x < BK * B_CPR / kThreadsL; ++x) {
          const int i = tid + x * kThreadsL, r = i / B_CPR, ch = i % B_CPR;
          const bool ok = n0 + ch * 8 < N;
          cp(sB + swz(r, ch, B_CPR), ok ? Bm + r * ldb + ch * 8 : Bm, ok);
        }
      } else {
        const u16* Bm = Bg.data() + k0;
        for (int x = 0; x < BN * B_CPR / kThreadsL; ++x) {
          const int i = tid + x * kThreadsL, r = i / B_CPR, ch = i % B_CPR;
          const int n = n0 + r; const bool ok = n < N;
          cp(sB + swz(r, ch, B_CPR), ok ? Bm + n * ldb + ch * 8 : Bm, ok);
        }
      }
    }
    for (int warp = 0; warp < 8; ++warp) {
      const int wm = (warp >> 2) * WM, wn = (warp & 3) * 64;
      if (!(m0 + wm < M && n0 + wn < N)) continue;
      for (int kk = 0; kk < BK; kk += 16) {
        u32 af[MI][32][4];
        for (int mi = 0; mi < MI; ++mi) {
          u32 addr[32];
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = AR ? a_frag_addr_row(sA, wm + mi * 16, kk, A_CPR, lane) : a_frag_addr_col(sA, wm + mi * 16, kk, A_CPR, lane);
          ldsm(sm, addr, !AR, af[mi]);
        }
        for (int nj = 0; nj < NI / 2; ++nj) {
          u32 addr[32], bfr[32][4];
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = BR ? b_frag_addr_row(sB, kk, wn + nj * 16, B_CPR, lane) : b_frag_addr_col(sB, kk, wn + nj * 16, B_CPR, lane);
          ldsm(sm, addr, BR, bfr);
          u32 b0[32], b1[32], b2[32], b3[32];
          for (int l = 0; l < 32; ++l) { b0[l] = bfr[l][0]; b1[l] = bfr[l][1]; b2[l] = bfr[l][2]; b3[l] = bfr[l][3]; }
          for (int mi = 0; mi < MI; ++mi) {
            float d0[32][4], d1[32][4];
            for (int l = 0; l < 32; ++l)
              for (int e = 0; e < 4; ++e) {
                d0[l][e] = acc_all[(((warp * 32 + l) * MI + mi) * NI + 2 * nj) * 4 + e];
                d1[l][e] = acc_all[(((warp * 32 + l) * MI + mi) * NI + 2 * nj + 1) * 4 + e];
              }
            mma(d0, af[mi], b0, b1);
            mma(d1, af[mi], b2, b3);
            for (int l = 0; l < 32; ++l)
              for (int e = 0; e < 4; ++e) {
                acc_all[(((warp * 32 + l) * MI + mi) * NI + 2 * nj) * 4 + e] = d0[l][e];
                acc_all[(((warp * 32 + l) * MI + mi) * NI + 2 * nj + 1) * 4 + e] = d1[l][e];
              }
          }
        }
      }
    }
  }
  // epilogue mapping
  double err = 0, ref = 0;
  int covered = 0;
  std::vector<int> seen(BM * BN, 0);
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = (warp >> 2) * WM, wn = (warp & 3) * 64;
    if (!(m0 + wm < M && n0 + wn < N)) continue;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, q4 = lane & 3;
      for (int mi = 0; mi < MI; ++mi)
        for (int hf = 0; hf < 2; ++hf) {
          const int row = m0 + wm + mi * 16 + g + 8 * hf;
          if (row >= M) continue;
          for (int ni = 0; ni < NI; ++ni)
            for (int e = 0; e < 2; ++e) {
              const int col = n0 + wn + ni * 8 + 2 * q4 + e;
              double want = 0;
              for (int k = 0; k < K; ++k) want += double(Aat(row, k)) * Bat(k, col);
              const double got = acc_all[(((warp * 32 + lane) * MI + mi) * NI + ni) * 4 + 2 * hf + e];
              err = std::max(err, std::fabs(got - want));
              ref = std::max(ref, std::fabs(want));
              seen[(row - m0) * BN + col - n0]++;
              ++covered;
            }
        }
    }
  }
  int expect = 0, dup = 0;
  for (int r = 0; r < BM; ++r)
    for (int c = 0; c < BN; ++c)
      if (m0 + r < M && n0 + c < N) { ++expect; if (seen[r * BN + c] != 1) ++dup; }
  printf("gemm AR%d BR%d BM%d M%d N%d K%d m0 %d n0 %d: max err %.3g (ref %.3g), covered %d/%d, bad %d\n", AR, BR, BM, M, N, K, m0, n0,
         err, ref, covered, expect, dup);
  return err / ref;
}

// ---- the scan: G M̄ (fwd) / Gᵀ gU (bwd) with hi/lo operands ------------------------------------
template <bool kBwd>
void scan_test(int dk, std::uint64_t seed) {
  const int S = 64;
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> G(dk * dk), Mst(dk * S);
  for (auto& x : G) x = dist(gen);
  for (auto& x : Mst) x = dist(gen) * 3.f;
  std::vector<u16> ghi(dk * dk), glo(dk * dk);
  for (int i = 0; i < dk * dk; ++i) { ghi[i] = tobf(G[i]); glo[i] = tobf(G[i] - bf(ghi[i])); }
  const u32 tile = dk * 128;
  Smem sm(6 * tile);
  const u32 base = 0, sBhi = base, sBlo = base + tile;
  // put_operand per warp (state in fragment layout, scale 1)
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = warp * 32;
    if (wm >= dk) continue;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, q4 = lane & 3;
      for (int mi = 0; mi < 2; ++mi)
        for (int hf = 0; hf < 2; ++hf) {
          const int row = wm + mi * 16 + g + 8 * hf;
          for (int ni = 0; ni < 8; ++ni) {
            const float v0 = Mst[row * S + ni * 8 + 2 * q4], v1 = Mst[row * S + ni * 8 + 2 * q4 + 1];
            __nv_bfloat16 hi0, lo0, hi1, lo1;
            split_bf16(v0, hi0, lo0);
            split_bf16(v1, hi1, lo1);
            const u32 off = swz(row, ni, 8) + q4 * 4;
            u32 h = pack_bf16(hi0, hi1), l = pack_bf16(lo0, lo1);
            std::memcpy(&sm.b[off], &h, 4);
            std::memcpy(&sm.b[tile + off], &l, 4);
          }
        }
    }
  }
  std::vector<float> acc(8 * 32 * 2 * 8 * 4, 0.f);
  const int nkb = dk / 64;
  for (int kb = 0; kb < nkb; ++kb) {
    const int stage = kb & 1;
    const u32 dh = base + (2 + 2 * stage) * tile, dl = dh + tile;
    for (int tid = 0; tid < 256; ++tid) {
      if (!kBwd) {
        for (int i = tid; i < dk * 8; i += 256) {
          const int r = i >> 3, ch = i & 7;
          const long off = long(r) * dk + kb * 64 + ch * 8;
          std::memcpy(&sm.b[dh + swz(r, ch, 8)], &ghi[off], 16);
          std::memcpy(&sm.b[dl + swz(r, ch, 8)], &glo[off], 16);
        }
      } else {
        const int cpr = dk / 8;
        for (int i = tid; i < 64 * cpr; i += 256) {
          const int r = i / cpr, ch = i % cpr;
          const long off = long(kb * 64 + r) * dk + ch * 8;
          std::memcpy(&sm.b[dh + swz(r, ch, cpr)], &ghi[off], 16);
          std::memcpy(&sm.b[dl + swz(r, ch, cpr)], &glo[off], 16);
        }
      }
    }
    for (int warp = 0; warp < 8; ++warp) {
      const int wm = warp * 32;
      if (wm >= dk) continue;
      for (int kk = 0; kk < 64; kk += 16) {
        u32 ah[2][32][4], al[2][32][4];
        for (int mi = 0; mi < 2; ++mi) {
          u32 a1[32], a2[32];
          for (int lane = 0; lane < 32; ++lane) {
            a1[lane] = !kBwd ? a_frag_addr_row(dh, wm + mi * 16, kk, 8, lane) : a_frag_addr_col(dh, wm + mi * 16, kk, dk / 8, lane);
            a2[lane] = !kBwd ? a_frag_addr_row(dl, wm + mi * 16, kk, 8, lane) : a_frag_addr_col(dl, wm + mi * 16, kk, dk / 8, lane);
          }
          ldsm(sm, a1, kBwd, ah[mi]);
          ldsm(sm, a2, kBwd, al[mi]);
        }
        for (int nj = 0; nj < 4; ++nj) {
          u32 ad1[32], ad2[32], bh4[32][4], bl4[32][4];
          for (int lane = 0; lane < 32; ++lane) {
            ad1[lane] = b_frag_addr_row(sBhi, kb * 64 + kk, nj * 16, 8, lane);
            ad2[lane] = b_frag_addr_row(sBlo, kb * 64 + kk, nj * 16, 8, lane);
          }
          ldsm(sm, ad1, true, bh4);
          ldsm(sm, ad2, true, bl4);
          u32 h0[32], h1[32], h2[32], h3[32], l0[32], l1[32], l2[32], l3[32];
          for (int l = 0; l < 32; ++l) {
            h0[l] = bh4[l][0]; h1[l] = bh4[l][1]; h2[l] = bh4[l][2]; h3[l] = bh4[l][3];
            l0[l] = bl4[l][0]; l1[l] = bl4[l][1]; l2[l] = bl4[l][2]; l3[l] = bl4[l][3];
          }
          for (int mi = 0; mi < 2; ++mi)
            for (int half = 0; half < 2; ++half) {
              const int ni = 2 * nj + half;
              float d[32][4];
              for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) d[l][e] = acc[(((warp * 32 + l) * 2 + mi) * 8 + ni) * 4 + e];
              if (!half) { mma(d, al[mi], h0, h1); mma(d, ah[mi], l0, l1); mma(d, ah[mi], h0, h1); }
              else { mma(d, al[mi], h2, h3); mma(d, ah[mi], l2, l3); mma(d, ah[mi], h2, h3); }
              for (int l = 0; l < 32; ++l)
                for (int e = 0; e < 4; ++e) acc[(((warp * 32 + l) * 2 + mi) * 8 + ni) * 4 + e] = d[l][e];
            }
        }
      }
    }
  }
  double err = 0, ref = 0;
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = warp * 32;
    if (wm >= dk) continue;
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, q4 = lane & 3;
      for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < 8; ++ni)
          for (int e = 0; e < 4; ++e) {
            const int row = wm + mi * 16 + g + 8 * (e >> 1), col = ni * 8 + 2 * q4 + (e & 1);
            double want = 0;
            for (int l = 0; l < dk; ++l) want += double(kBwd ? G[l * dk + row] : G[row * dk + l]) * Mst[l * S + col];
            const double got = acc[(((warp * 32 + lane) * 2 + mi) * 8 + ni) * 4 + e];
            err = std::max(err, std::fabs(got - want));
            ref = std::max(ref, std::fabs(want));
          }
    }
  }
  printf("scan %s dk%d: max err %.3g (ref %.3g) rel %.3g\n", kBwd ? "bwd" : "fwd", dk, err, ref, err / ref);
}

int main() {
  gemm_tile_test<true, true, 128>(300, 512, 128, 256, 256, 1);
  gemm_tile_test<true, true, 128>(128, 256, 64, 0, 0, 2);
  gemm_tile_test<false, true, 128>(192, 256, 128, 128, 0, 3);  // M overhang at 64 granularity
  gemm_tile_test<false, true, 128>(256, 320, 64, 0, 256, 4);   // N overhang
  gemm_tile_test<true, false, 128>(200, 256, 128, 128, 0, 5);
  gemm_tile_test<true, false, 64>(64, 192, 128, 0, 0, 6);
  gemm_tile_test<true, true, 64>(100, 256, 64, 64, 0, 7);
  for (int dk : {64, 192, 256}) {
    scan_test<false>(dk, 10 + dk);
    scan_test<true>(dk, 20 + dk);
  }
}
