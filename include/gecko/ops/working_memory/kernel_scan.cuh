// The sequential part of adaptive working memory: the recurrence over chunks, one CTA per
// (b, h, slice of dv columns). Given the chunk products W = κᵀV and G = κᵀK̂ (the memory's dv columns
// evolve independently once ρ is known), one absorb step is
//
//   M̄ = reset ? 0 : M        R = W - G M̄ - M̄ (= U - M̄)        M' = M̄ + ρ ∘ R
//
// (spec 2.4 with U = κ(V - K̂M̄) = W - G M̄), so a step costs dk x dk x slice instead of the
// 2 x C x dk x slice of the direct form. The slice of M stays in fp32 registers across all chunks;
// G M̄ runs on the tensor cores with both operands split into bf16 hi + lo (three products,
// hi·hi + hi·lo + lo·hi: about fp32 accuracy), G streamed through a double-buffered shared ring.
//
// Forward scan: writes M before each readout step (in T, for the readout GEMM), the final state,
// and (for the backward) R over W.
// Backward scan, steps in reverse: gU = ρ ∘ gM (written transposed, in T), the per-slice row sums
// Σ gM∘R and Σ gM∘M̄ (for gρ and s), and gM̄ = (1 - ρ) ∘ gM - Gᵀ gU (0 through a reset), then
// gM += E = Q̂ᵀ dO of the step's readout.
#pragma once

#include <cstdint>

#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

inline constexpr int kTcSlice = 64, kSimtSlice = 32;

struct ScanParams {
  int B = 0, H = 0, dk = 0, dv = 0;
  int nabs = 0;     // absorb steps a = 0 .. nabs-1 (step j = a + j0)
  int n = 0;        // readout chunks (Mt entries)
  int j0 = 0;       // first step with a state
  int j_first = 0;  // first readout whose memory may be nonzero
  const float* mem_in = nullptr;  // [B, H, dk, dv] or null (zeros)
  std::int64_t mi_sb = 0, mi_sh = 0, mi_ld = 0;
  float* mem_out = nullptr;       // or null
  std::int64_t mo_sb = 0, mo_sh = 0, mo_ld = 0;
  const void* g_hi = nullptr;     // tensor cores: bf16 [B, H, nabs, dk, dk] hi part; SIMT: fp32 G
  const void* g_lo = nullptr;     // tensor cores: the lo part
  float* w = nullptr;             // [B, H, nabs, dk, dv]: W; R written over it when write_r
  bool write_r = false;
  const float* rho = nullptr;     // [B, H, nabs, dk]
  const std::uint8_t* resets = nullptr;  // [B, nabs]
  void* mt = nullptr;             // T [B, H, n, dk, dv]: the memory each readout reads
  // backward
  const float* dmem_out = nullptr;  // or null (zeros)
  std::int64_t do_sb = 0, do_sh = 0, do_ld = 0;
  float* dmem = nullptr;            // or null
  std::int64_t dm_sb = 0, dm_sh = 0, dm_ld = 0;
  const float* e = nullptr;         // [B, H, n, dk, dv]: Q̂ᵀ dO per readout
  void* gut = nullptr;              // T [B, H, nabs, dv, dk]: gUᵀ
  float* parts = nullptr;           // [B, H, nabs, 2, nsl, dk]
};

inline int tc_scan_smem_bytes(int dk) { return 6 * dk * 128; }

template <class T, bool kBwd>
__global__ void __launch_bounds__(kThreads, 1) scan_tc_kernel(const __grid_constant__ ScanParams p) {
  constexpr int S = kTcSlice;
  extern __shared__ __align__(128) unsigned char smem[];
  const int dk = p.dk, dv = p.dv;
  const std::uint32_t tile = static_cast<std::uint32_t>(dk) * 128u;  // dk x 64 bf16
  const std::uint32_t base = smem_u32(smem);
  const std::uint32_t sBhi = base, sBlo = base + tile;
  const int nsl = dv / S;
  const int sl = blockIdx.x % nsl, bh = blockIdx.x / nsl, b = bh / p.H, h = bh % p.H;
  const int col0 = sl * S;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q4 = lane & 3;
  const int wm = warp * 32;
  const bool wact = wm < dk;
  const int nkb = dk / 64, total = p.nabs * nkb;
  const std::int64_t dkdk = static_cast<std::int64_t>(dk) * dk, dkdv = static_cast<std::int64_t>(dk) * dv;
  const std::int64_t bh64 = bh;

  // Fragment element (mi, ni, e): row wm + mi*16 + g + 8*(e >> 1), column col0 + ni*8 + 2*q4 + (e & 1).
  float st[2][8][4], acc[2][8][4];
  {
    const float* src = kBwd ? p.dmem_out : p.mem_in;
    const std::int64_t sb = kBwd ? p.do_sb : p.mi_sb, sh = kBwd ? p.do_sh : p.mi_sh, ld = kBwd ? p.do_ld : p.mi_ld;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          float2 v = make_float2(0.f, 0.f);
          if (src && wact)
            v = *reinterpret_cast<const float2*>(src + b * sb + h * sh + (wm + mi * 16 + g + 8 * hf) * ld + col0 +
                                                 ni * 8 + 2 * q4);
          st[mi][ni][2 * hf] = v.x;
          st[mi][ni][2 * hf + 1] = v.y;
        }
  }

  auto a_of = [&](int ai) { return kBwd ? p.nabs - 1 - ai : ai; };
  auto load_g = [&](int it) {
    const int a = a_of(it / nkb), kb = it % nkb, stage = it & 1;
    const __nv_bfloat16* gh = static_cast<const __nv_bfloat16*>(p.g_hi) + (bh64 * p.nabs + a) * dkdk;
    const __nv_bfloat16* gl = static_cast<const __nv_bfloat16*>(p.g_lo) + (bh64 * p.nabs + a) * dkdk;
    const std::uint32_t dh = base + (2 + 2 * stage) * tile, dl = dh + tile;
    if constexpr (!kBwd) {  // A = G: [dk rows i][64 columns l of block kb]
      for (int i = tid; i < dk * 8; i += kThreads) {
        const int r = i >> 3, ch = i & 7;
        const std::int64_t off = static_cast<std::int64_t>(r) * dk + kb * 64 + ch * 8;
        cp_async16(dh + swz(r, ch, 8), gh + off, true);
        cp_async16(dl + swz(r, ch, 8), gl + off, true);
      }
    } else {  // A = Gᵀ, kept as G's rows i of block kb: [64 rows i][dk columns l]
      const int cpr = dk / 8;
      for (int i = tid; i < 64 * cpr; i += kThreads) {
        const int r = i / cpr, ch = i % cpr;
        const std::int64_t off = static_cast<std::int64_t>(kb * 64 + r) * dk + ch * 8;
        cp_async16(dh + swz(r, ch, cpr), gh + off, true);
        cp_async16(dl + swz(r, ch, cpr), gl + off, true);
      }
    }
    cp_async_commit();
  };

  // The B operand (row-scaled state) as bf16 hi/lo, [dk][64] row-major, this warp's rows.
  auto put_operand = [&](const float (&scale)[2][2]) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = wm + mi * 16 + g + 8 * hf;
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) {
          __nv_bfloat16 hi0, lo0, hi1, lo1;
          split_bf16(scale[mi][hf] * st[mi][ni][2 * hf], hi0, lo0);
          split_bf16(scale[mi][hf] * st[mi][ni][2 * hf + 1], hi1, lo1);
          const std::uint32_t off = swz(row, ni, 8) + q4 * 4;
          *reinterpret_cast<std::uint32_t*>(smem + off) = pack_bf16(hi0, hi1);
          *reinterpret_cast<std::uint32_t*>(smem + tile + off) = pack_bf16(lo0, lo1);
        }
      }
  };

  auto mma_block = [&](int stage, int kb) {
    const std::uint32_t gh = base + (2 + 2 * stage) * tile, gl = gh + tile;
#pragma unroll
    for (int kk = 0; kk < 64; kk += 16) {
      std::uint32_t ah[2][4], al[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        if constexpr (!kBwd) {
          ldsm_x4(ah[mi], a_frag_addr_row(gh, wm + mi * 16, kk, 8, lane));
          ldsm_x4(al[mi], a_frag_addr_row(gl, wm + mi * 16, kk, 8, lane));
        } else {
          ldsm_x4_t(ah[mi], a_frag_addr_col(gh, wm + mi * 16, kk, dk / 8, lane));
          ldsm_x4_t(al[mi], a_frag_addr_col(gl, wm + mi * 16, kk, dk / 8, lane));
        }
      }
#pragma unroll
      for (int nj = 0; nj < 4; ++nj) {
        std::uint32_t bh4[4], bl4[4];
        ldsm_x4_t(bh4, b_frag_addr_row(sBhi, kb * 64 + kk, nj * 16, 8, lane));
        ldsm_x4_t(bl4, b_frag_addr_row(sBlo, kb * 64 + kk, nj * 16, 8, lane));
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma16816<__nv_bfloat16>(acc[mi][2 * nj], al[mi], bh4[0], bh4[1]);
          mma16816<__nv_bfloat16>(acc[mi][2 * nj], ah[mi], bl4[0], bl4[1]);
          mma16816<__nv_bfloat16>(acc[mi][2 * nj], ah[mi], bh4[0], bh4[1]);
          mma16816<__nv_bfloat16>(acc[mi][2 * nj + 1], al[mi], bh4[2], bh4[3]);
          mma16816<__nv_bfloat16>(acc[mi][2 * nj + 1], ah[mi], bl4[2], bl4[3]);
          mma16816<__nv_bfloat16>(acc[mi][2 * nj + 1], ah[mi], bh4[2], bh4[3]);
        }
      }
    }
  };

  auto store_state = [&](T* dst, std::int64_t ld) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
          store2<T>(dst + (wm + mi * 16 + g + 8 * hf) * ld + col0 + ni * 8 + 2 * q4, st[mi][ni][2 * hf],
                    st[mi][ni][2 * hf + 1]);
  };
  auto store_f32 = [&](float* dst, std::int64_t ld) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
          store2<float>(dst + (wm + mi * 16 + g + 8 * hf) * ld + col0 + ni * 8 + 2 * q4, st[mi][ni][2 * hf],
                        st[mi][ni][2 * hf + 1]);
  };

  // L2 prefetch of this CTA's slice (dk rows x 64 columns) of a [dk, dv] array: the per-step
  // operands read from global memory after the tensor-core loop arrive from L2, not DRAM.
  auto prefetch_slice = [&](const void* arr, int elem_bytes) {
    const int lines = elem_bytes / 2;  // 128-byte lines per row of the slice: 2 (fp32) or 1 (16-bit)
    for (int i = tid; i < dk * lines; i += kThreads) {
      const char* ptr = static_cast<const char*>(arr) +
                        (static_cast<std::int64_t>(i / lines) * dv + col0) * elem_bytes + (i % lines) * 128;
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr));
    }
  };

  if (total > 0) load_g(0);
  for (int ai = 0; ai < p.nabs; ++ai) {
    const int a = a_of(ai), j = a + p.j0;
    const bool reset = p.resets[b * p.nabs + a] != 0;
    const float* rho_a = p.rho + (bh64 * p.nabs + a) * dk;
    float* w_a = p.w + (bh64 * p.nabs + a) * dkdv;
    if constexpr (!kBwd) {
      prefetch_slice(w_a, 4);  // read after this step's products
    } else {
      if (j >= p.j_first) prefetch_slice(p.e + (bh64 * p.n + j) * dkdv, 4);
      if (a > 0) {  // the next step's R and M
        prefetch_slice(w_a - dkdv, 4);
        if (j - 1 >= p.j_first) prefetch_slice(static_cast<const T*>(p.mt) + (bh64 * p.n + j - 1) * dkdv, sizeof(T));
      }
    }
    float rr[2][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) rr[mi][hf] = wact ? rho_a[wm + mi * 16 + g + 8 * hf] : 0.f;

    if constexpr (!kBwd) {
      if (wact) {
        if (j >= p.j_first) store_state(static_cast<T*>(p.mt) + (bh64 * p.n + j) * dkdv, dv);
        if (reset) {
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 8; ++ni)
#pragma unroll
              for (int e = 0; e < 4; ++e) st[mi][ni][e] = 0.f;
        }
        const float one[2][2] = {{1.f, 1.f}, {1.f, 1.f}};
        put_operand(one);
      }
    } else {
      if (wact) {
        const bool use_m = !reset && j >= p.j_first;
        const T* m_j = static_cast<const T*>(p.mt) + (bh64 * p.n + j) * dkdv;
        float* parts = p.parts + ((bh64 * p.nabs + a) * 2) * nsl * dk;
        T* gu = static_cast<T*>(p.gut) + (bh64 * p.nabs + a) * dkdv;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int row = wm + mi * 16 + g + 8 * hf;
            float pr = 0.f, pt = 0.f;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni) {
              const int col = col0 + ni * 8 + 2 * q4;
              const float s0 = st[mi][ni][2 * hf], s1 = st[mi][ni][2 * hf + 1];
              const float2 r = *reinterpret_cast<const float2*>(w_a + static_cast<std::int64_t>(row) * dv + col);
              pr += s0 * r.x + s1 * r.y;
              if (use_m) {
                const float2 m = load2<T>(m_j + static_cast<std::int64_t>(row) * dv + col);
                pt += s0 * m.x + s1 * m.y;
              }
              gu[static_cast<std::int64_t>(col) * dk + row] = from_float<T>(rr[mi][hf] * s0);
              gu[static_cast<std::int64_t>(col + 1) * dk + row] = from_float<T>(rr[mi][hf] * s1);
            }
            pr += __shfl_xor_sync(0xffffffffu, pr, 1);
            pr += __shfl_xor_sync(0xffffffffu, pr, 2);
            pt += __shfl_xor_sync(0xffffffffu, pt, 1);
            pt += __shfl_xor_sync(0xffffffffu, pt, 2);
            if (q4 == 0) {
              parts[static_cast<std::int64_t>(sl) * dk + row] = pr;
              parts[static_cast<std::int64_t>(nsl + sl) * dk + row] = pt;
            }
          }
        put_operand(rr);
      }
    }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    for (int kb = 0; kb < nkb; ++kb) {
      const int it = ai * nkb + kb;
      cp_async_wait<0>();
      __syncthreads();
      if (it + 1 < total) load_g(it + 1);
      if (wact) mma_block(it & 1, kb);
    }
    __syncthreads();
    if (wact) {
      if constexpr (!kBwd) {
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int row = wm + mi * 16 + g + 8 * hf;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni) {
              float* wp = w_a + static_cast<std::int64_t>(row) * dv + col0 + ni * 8 + 2 * q4;
              const float2 wv = *reinterpret_cast<const float2*>(wp);
              const float r0 = wv.x - acc[mi][ni][2 * hf] - st[mi][ni][2 * hf];
              const float r1 = wv.y - acc[mi][ni][2 * hf + 1] - st[mi][ni][2 * hf + 1];
              if (p.write_r) *reinterpret_cast<float2*>(wp) = make_float2(r0, r1);
              st[mi][ni][2 * hf] += rr[mi][hf] * r0;
              st[mi][ni][2 * hf + 1] += rr[mi][hf] * r1;
            }
          }
      } else {
        const bool add_e = j >= p.j_first;
        const float* e_j = p.e + (bh64 * p.n + j) * dkdv;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int row = wm + mi * 16 + g + 8 * hf;
#pragma unroll
            for (int ni = 0; ni < 8; ++ni) {
              float g0 = reset ? 0.f : (1.f - rr[mi][hf]) * st[mi][ni][2 * hf] - acc[mi][ni][2 * hf];
              float g1 = reset ? 0.f : (1.f - rr[mi][hf]) * st[mi][ni][2 * hf + 1] - acc[mi][ni][2 * hf + 1];
              if (add_e) {
                const float2 ev =
                    *reinterpret_cast<const float2*>(e_j + static_cast<std::int64_t>(row) * dv + col0 + ni * 8 + 2 * q4);
                g0 += ev.x;
                g1 += ev.y;
              }
              st[mi][ni][2 * hf] = g0;
              st[mi][ni][2 * hf + 1] = g1;
            }
          }
      }
    }
  }
  if (wact) {
    if constexpr (!kBwd) {
      const int j = p.nabs + p.j0;
      if (j < p.n && j >= p.j_first) store_state(static_cast<T*>(p.mt) + (bh64 * p.n + j) * dkdv, dv);
      if (p.mem_out) store_f32(p.mem_out + b * p.mo_sb + h * p.mo_sh, p.mo_ld);
    } else {
      if (p.dmem) store_f32(p.dmem + b * p.dm_sb + h * p.dm_sh, p.dm_ld);
    }
  }
}

// fp32 path: the same recurrence with plain FMAs; slices of 32 columns, lane = column, warp w owns
// rows w, w + 8, ...
template <bool kBwd>
__global__ void __launch_bounds__(kThreads) scan_simt_kernel(const __grid_constant__ ScanParams p) {
  extern __shared__ float sop[];  // [dk][32] the operand
  const int dk = p.dk, dv = p.dv, nsl = dv / kSimtSlice;
  const int sl = blockIdx.x % nsl, bh = blockIdx.x / nsl, b = bh / p.H, h = bh % p.H;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col = sl * kSimtSlice + lane, R = dk / 8;
  const std::int64_t dkdk = static_cast<std::int64_t>(dk) * dk, dkdv = static_cast<std::int64_t>(dk) * dv;
  const std::int64_t bh64 = bh;
  float st[32], acc[32];
  {
    const float* src = kBwd ? p.dmem_out : p.mem_in;
    const std::int64_t sb = kBwd ? p.do_sb : p.mi_sb, sh = kBwd ? p.do_sh : p.mi_sh, ld = kBwd ? p.do_ld : p.mi_ld;
#pragma unroll
    for (int r = 0; r < 32; ++r)
      st[r] = (r < R && src) ? src[b * sb + h * sh + (warp + 8 * r) * ld + col] : 0.f;
  }
  for (int ai = 0; ai < p.nabs; ++ai) {
    const int a = kBwd ? p.nabs - 1 - ai : ai, j = a + p.j0;
    const bool reset = p.resets[b * p.nabs + a] != 0;
    const float* rho_a = p.rho + (bh64 * p.nabs + a) * dk;
    float* w_a = p.w + (bh64 * p.nabs + a) * dkdv;
    float* mt_j = static_cast<float*>(p.mt) + (bh64 * p.n + j) * dkdv;
    if constexpr (!kBwd) {
#pragma unroll
      for (int r = 0; r < 32; ++r)
        if (r < R) {
          const int row = warp + 8 * r;
          if (j >= p.j_first) mt_j[static_cast<std::int64_t>(row) * dv + col] = st[r];
          if (reset) st[r] = 0.f;
          sop[row * 32 + lane] = st[r];
        }
    } else {
      const bool use_m = !reset && j >= p.j_first;
      float* parts = p.parts + ((bh64 * p.nabs + a) * 2) * nsl * dk;
      float* gu = static_cast<float*>(p.gut) + (bh64 * p.nabs + a) * dkdv;
#pragma unroll
      for (int r = 0; r < 32; ++r)
        if (r < R) {
          const int row = warp + 8 * r;
          const std::int64_t x = static_cast<std::int64_t>(row) * dv + col;
          const float pr = warp_sum(st[r] * w_a[x]);
          const float pt = warp_sum(use_m ? st[r] * mt_j[x] : 0.f);
          if (lane == 0) {
            parts[static_cast<std::int64_t>(sl) * dk + row] = pr;
            parts[static_cast<std::int64_t>(nsl + sl) * dk + row] = pt;
          }
          const float u = rho_a[row] * st[r];
          gu[static_cast<std::int64_t>(col) * dk + row] = u;
          sop[row * 32 + lane] = u;
        }
    }
    __syncthreads();
    const float* G = static_cast<const float*>(p.g_hi) + (bh64 * p.nabs + a) * dkdk;
#pragma unroll
    for (int r = 0; r < 32; ++r) acc[r] = 0.f;
    for (int l = 0; l < dk; ++l) {
      const float bv = sop[l * 32 + lane];
#pragma unroll
      for (int r = 0; r < 32; ++r)
        if (r < R) {
          const int row = warp + 8 * r;
          const float gv = kBwd ? G[static_cast<std::int64_t>(l) * dk + row] : G[static_cast<std::int64_t>(row) * dk + l];
          acc[r] = fmaf(gv, bv, acc[r]);
        }
    }
    __syncthreads();
    const float* e_j = p.e ? p.e + (bh64 * p.n + j) * dkdv : nullptr;
#pragma unroll
    for (int r = 0; r < 32; ++r)
      if (r < R) {
        const int row = warp + 8 * r;
        const std::int64_t x = static_cast<std::int64_t>(row) * dv + col;
        const float rho = rho_a[row];
        if constexpr (!kBwd) {
          const float rv = w_a[x] - acc[r] - st[r];
          if (p.write_r) w_a[x] = rv;
          st[r] += rho * rv;
        } else {
          float gm = reset ? 0.f : (1.f - rho) * st[r] - acc[r];
          if (j >= p.j_first) gm += e_j[x];
          st[r] = gm;
        }
      }
  }
  if constexpr (!kBwd) {
    const int j = p.nabs + p.j0;
    float* mt_j = static_cast<float*>(p.mt) + (bh64 * p.n + j) * dkdv;
#pragma unroll
    for (int r = 0; r < 32; ++r)
      if (r < R) {
        const int row = warp + 8 * r;
        if (j < p.n && j >= p.j_first) mt_j[static_cast<std::int64_t>(row) * dv + col] = st[r];
        if (p.mem_out) p.mem_out[b * p.mo_sb + h * p.mo_sh + row * p.mo_ld + col] = st[r];
      }
  } else {
#pragma unroll
    for (int r = 0; r < 32; ++r)
      if (r < R && p.dmem) p.dmem[b * p.dm_sb + h * p.dm_sh + (warp + 8 * r) * p.dm_ld + col] = st[r];
  }
}

}  // namespace gecko::working_memory::kernels
