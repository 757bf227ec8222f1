// The clustered "P once, P.V in dv slices" machinery shared by the forward and the dV pass.
//
// Why clusters. With dv = 2048 the output tile of 128 rows is 128 x 2048 fp32 = 1 MiB: it fits
// no SM. Splitting dv over CTAs is forced, and the naive split recomputes the logits
// S = Q K^T once per slice (with 8 slices of 256 that adds 8 x 256 / 2048 = 100% to the P.V
// work). Here the n CTAs of one thread-block cluster (n = 8 for dv = 2048) own the same 128
// rows and one dv slice each (W = dv / n columns), and divide the logits instead of repeating
// them: CTA `rank` computes S and the softmax only for its 128 / n rows (16 at n = 8), and
// writes those rows of P (bf16/fp16) into the shared memory of every CTA of the cluster
// (distributed shared memory, 16-byte remote stores). After one cluster barrier each CTA holds
// the whole 128 x 64 P block and multiplies it by its own V slice (64 x W). So:
//   * Q K^T is computed exactly once (no recompute), P.V once, nothing of size C x 2C exists
//     anywhere (P lives one 128 x 64 block at a time, triple-buffered in shared memory);
//   * each CTA keeps a 128 x W <= 128 x 256 fp32 accumulator in registers (128 per thread);
//   * per 64-key block a CTA reads K (64 x dk) and its V slice (64 x W) from L2.
// The online-softmax state (running max m, sum l, rescale factor alpha) of a row lives in the
// CTA that owns the row; alpha travels with P so the other CTAs can rescale their accumulators.
//
// Pipeline of one block iteration `it` (all CTAs of a cluster walk the same blocks):
//   wait for K[it], V[it-1]; issue K[it+1], V[it] (cp.async, double-buffered)
//   S phase: own rows of S = Q K[it]^T, mask, softmax -> P[it], alpha[it] into buffer it % 3
//   copy own rows of P[it], alpha[it] to the other CTAs
//   first half of the P.V phase for block it-1 (its P arrived one barrier ago)
//   cluster arrive (release: by now the remote stores above have long completed, so the fence
//   behind the release costs little)
//   second half of the P.V phase                                        <- overlaps the barrier
//   cluster wait (acquire): P[it] of every CTA is now visible
// Triple-buffered P: a CTA writes buffer it % 3 of a peer only after the barrier of it-1, which
// that peer passed only after finishing the P.V of block it-3, the last reader of that buffer.
//
// Warp roles: in the S phase warp w owns key columns [8w, 8w+8) of all own rows (16-row groups);
// in the P.V phase warp w owns rows [64 (w / 4), +64) x columns [64 (w % 4), +64) of the slice.
#pragma once

#include "gecko/ops/sliding_chunk_attention/kernel_common.cuh"

namespace gecko::sliding_chunk_attention::kernels {

constexpr int kMaxGroups = 8;  // 16-row groups per CTA (n = 1)

// Shared-memory layout of one CTA of a clustered kernel (byte offsets; 16-byte aligned).
struct ClusterLayout {
  int q = 0, k = 0, v = 0, p = 0, alpha = 0, linv = 0, m = 0, l = 0, red_max = 0, red_sum = 0;
  int row_lo = 0, row_hi = 0, row_seg = 0, col_lo = 0, col_hi = 0, col_seg = 0, col_lse = 0;
  int k_tile = 0, v_tile = 0, total = 0;
  static constexpr int kPTile = kRowTile * kColBlock * 2;

  __host__ __device__ ClusterLayout(int rows, int dk, int width) {
    int off = 0;
    auto take = [&off](int bytes) {
      const int at = off;
      off += (bytes + 127) / 128 * 128;
      return at;
    };
    k_tile = kColBlock * dk * 2;
    v_tile = kColBlock * width * 2;
    q = take(rows * dk * 2);             // own rows of the small operand (Q, or K in the dV pass)
    k = take(2 * k_tile);                // column block of the small operand, double-buffered
    v = take(2 * v_tile);                // column block of the wide operand (V or dO slice)
    p = take(3 * kPTile);                // P blocks of the whole cluster tile, triple-buffered
    alpha = take(3 * kRowTile * 4);      // rescale factor per tile row and P buffer
    linv = take(kRowTile * 4);           // 1 / l per tile row (forward epilogue)
    m = take(2 * kRowTile * 4);          // running max of own rows, by block parity
    l = take(kRowTile * 4);              // running sum of own rows
    red_max = take(kMaxGroups * 8 * 16 * 4);
    red_sum = take(kMaxGroups * 8 * 16 * 4);
    row_lo = take(kRowTile * 4);
    row_hi = take(kRowTile * 4);
    row_seg = take(kRowTile * 8);
    col_lo = take(2 * kColBlock * 4);
    col_hi = take(2 * kColBlock * 4);
    col_seg = take(2 * kColBlock * 8);
    col_lse = take(2 * kColBlock * 4);
    total = off;
  }
};

// One 16-row group of the S phase: s (this thread's 2 rows x 2 columns of the warp's 8 columns)
// = rows [16 gi, 16 gi + 16) of the own-row tile times columns [8 warp, +8) of the column tile,
// both [row][dk] swizzled, contracted over dk.
template <class T>
__device__ __forceinline__ void s_group(float (&s)[4], std::uint32_t sq, std::uint32_t sk, int gi, int dk, int lane,
                                        int warp) {
  const int kcpr = dk >> 3;
  const int ar = 16 * gi + (lane & 15);
  const int br = 8 * warp + (lane & 7);
  float s2[4] = {0.f, 0.f, 0.f, 0.f};  // two accumulators: half the dependent mma chain
  s[0] = s[1] = s[2] = s[3] = 0.f;
#pragma unroll 2
  for (int kc = 0; kc < kcpr; kc += 4) {  // 32 columns of dk per step
    std::uint32_t a[4], a2[4], bb[4];
    ldsm_x4(sk + swz(br, kc + (lane >> 3), kcpr), bb);
    ldsm_x4(sq + swz(ar, kc + (lane >> 4), kcpr), a);
    ldsm_x4(sq + swz(ar, kc + 2 + (lane >> 4), kcpr), a2);
    mma16816<T>(s, a, bb[0], bb[1]);
    mma16816<T>(s2, a2, bb[2], bb[3]);
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) s[e] += s2[e];
}

// Copies this CTA's rows [own0, own0 + rows) of P buffer `pb` (and, when with_alpha, of the alpha
// buffer) to the same places in every other CTA of the cluster.
__device__ __forceinline__ void broadcast_rows(std::uint32_t p_tile, std::uint32_t alpha_row0, int own0, int rows,
                                               int n, int rank, bool with_alpha) {
  if (n == 1) return;
  const int p_chunks = rows * 8;
  const int per = p_chunks + (with_alpha ? rows / 4 : 0);
  for (int c = threadIdx.x; c < per; c += kThreads) {
    const std::uint32_t addr = c < p_chunks ? p_tile + swz(own0 + (c >> 3), c & 7, 8)
                                            : alpha_row0 + static_cast<std::uint32_t>((c - p_chunks) * 16);
    const uint4 v = lds128(addr);
    for (int d = 1; d < n; ++d) {
      const int dest = rank + d < n ? rank + d : rank + d - n;
      st_cluster128(map_rank(addr, static_cast<std::uint32_t>(dest)), v);
    }
  }
}

// The P.V step of one block, keys [16 kk0, 16 kk1) of it: o (this warp's 64 x 64 accumulator)
// = alpha * o + P[64 rows] V[:, 64 columns]. alpha == nullptr: no rescale (the dV pass, and the
// second part of a split step).
template <class T>
__device__ __forceinline__ void pv_step(float (&o)[4][8][4], std::uint32_t p_tile, std::uint32_t v_tile,
                                        const float* alpha, int vcpr, int wm, int wn, int lane, int kk0 = 0,
                                        int kk1 = 4) {
  const int g = lane >> 2;
  if (alpha) {
    float al[4][2];
    bool ones = true;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      al[mt][0] = alpha[64 * wm + 16 * mt + g];
      al[mt][1] = alpha[64 * wm + 16 * mt + g + 8];
      ones = ones && al[mt][0] == 1.f && al[mt][1] == 1.f;
    }
    if (!__all_sync(0xffffffffu, ones)) {  // once the running max settles, alpha is exactly 1
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          o[mt][nt][0] *= al[mt][0];
          o[mt][nt][1] *= al[mt][0];
          o[mt][nt][2] *= al[mt][1];
          o[mt][nt][3] *= al[mt][1];
        }
    }
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk < kk0 || kk >= kk1) continue;
    std::uint32_t a[4][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) ldsm_x4(p_tile + swz(64 * wm + 16 * mt + (lane & 15), 2 * kk + (lane >> 4), 8), a[mt]);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      std::uint32_t bb[4];
      ldsm_x4_t(v_tile + swz(16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, 8 * wn + 2 * np + (lane >> 4), vcpr), bb);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        mma16816<T>(o[mt][2 * np], a[mt], bb[0], bb[1]);
        mma16816<T>(o[mt][2 * np + 1], a[mt], bb[2], bb[3]);
      }
    }
  }
}

}  // namespace gecko::sliding_chunk_attention::kernels
