// The batched GEMMs of adaptive working memory, described once for both GEMM engines (tensor-core
// for 16-bit T, SIMT fp32 for float): per (b, h, chunk) C[m, n] = sum over segments of A B, and an
// epilogue that turns a pair of adjacent accumulators into the op's outputs.
//
//   mode        what the epilogue writes at (row, col)
//   kStoreT     out = acc (T)                       readout O, value gradients dv
//   kStoreF32   out = acc (fp32)                    W = κᵀV, E = Q̂ᵀdO, fp32 G
//   kStoreHiLo  out, out2 = bf16 hi/lo of acc       G = κᵀK̂ for the tensor-core scan
//   kStoreYneg  out = -acc, out2ᵀ = -acc (T)        -Yᵀ and -Y, Y = gU M̄ᵀ
//   kDaq        q̂ ∘ (acc - <acc, q̂>_row)           softmax-over-features backward of the readout
//   kDak        κ ∘ (acc - s + gℓ) + hold           the key gradient; hold = k̂ ∘ (acc₀ - <acc₀, k̂>_row)
//                                                   from the first segment (two accumulators)
#pragma once

#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

enum EpiMode : int { kStoreT = 0, kStoreF32, kStoreHiLo, kStoreYneg, kDaq, kDak };

// A kernel instantiation is compiled for one epilogue (EPI, a mode above); kStoreF32 instantiations
// also take kStoreHiLo problems (chosen at run time per problem).
template <int EPI>
inline constexpr bool kEpiRowDot = EPI == kDaq;
template <int EPI>
inline constexpr bool kEpiTwoAcc = EPI == kDak;

struct Segment {
  MatAlt a, b;  // A [M, k] and B [k, N] of this segment (layouts fixed by the kernel)
  int k = 0;    // extent (a multiple of the engine's k-step)
};

struct Epilogue {
  int mode = kStoreT;
  MatAlt out;    // the main output, per (b, h, chunk)
  Mat out2;      // kStoreHiLo: the lo part (same layout); kStoreYneg: the transposed target
  Mat f1, f2;    // kDaq: f1 = q̂; kDak: f1 = κ, f2 = k̂ (indexed by the tile's row and column)
  Mat v1, v2;    // kDak: s and gℓ, per column
};

struct GemmProblem {
  Segment seg[3];
  int nseg = 1;
  int M = 0, N = 0;                     // M arbitrary (rows predicated), N a multiple of 64
  int nb = 0;                           // chunks per (b, h)
  int zero_below = 0;                   // chunks c < zero_below have a zero product
  const std::uint8_t* zflag = nullptr;  // [B, nb], nonzero: zero product (a reset)
  std::int64_t zflag_sb = 0;
  int mt = 0, ntl = 0;                  // tiles along M and N (engine tile sizes)
  std::int64_t tiles = 0;               // B * H * nb * mt * ntl
  Epilogue epi;
};

struct GemmParams {
  GemmProblem prob[2];
  int nprob = 1;
  int B = 0, H = 0;
  int ksteps = 0;  // tensor-core engine: k-steps per tile (the same for every problem)
  std::int64_t total_tiles = 0;
};

struct TileInfo {
  int prob, b, h, c, m0, n0;
  bool zero;
};

// Tiles run batch-major, then along M, then along N (consecutive tiles share A rows).
// Tiles run batch-major, then along M, then along N (consecutive tiles share A rows). Tile indices
// fit in 32 bits (checked on the host).
template <int BM, int BN>
GECKO_HOST_DEVICE __forceinline__ TileInfo decode_tile(const GemmParams& p, int t) {
  TileInfo ti;
  ti.prob = 0;
  if (p.nprob > 1 && t >= p.prob[0].tiles) {
    t -= static_cast<int>(p.prob[0].tiles);
    ti.prob = 1;
  }
  const GemmProblem& q = p.prob[ti.prob];
  const int per = q.mt * q.ntl;
  int z = t / per;
  const int r = t - z * per;
  ti.m0 = (r / q.ntl) * BM;
  ti.n0 = (r % q.ntl) * BN;
  ti.c = z % q.nb;
  z /= q.nb;
  ti.h = z % p.H;
  ti.b = z / p.H;
  ti.zero = ti.c < q.zero_below || (q.zflag != nullptr && q.zflag[ti.b * q.zflag_sb + ti.c] != 0);
  return ti;
}

template <class T>
GECKO_HOST_DEVICE __forceinline__ float2 feat2(const Mat& f, const TileInfo& ti, int row, int col) {
  return load2<T>(mat_at<T>(f, ti.b, ti.h, ti.c) + static_cast<std::int64_t>(row) * f.ld + col);
}

// Writes the epilogue of accumulators (v0, v1) at tile-local (row, col), (row, col + 1). rd is the
// row's dot product (kDaq), h0/h1 the held first-segment term (kDak).
template <class T, int EPI>
GECKO_HOST_DEVICE __forceinline__ void epi_store(const Epilogue& e, const TileInfo& ti, int row, int col, float v0,
                                                 float v1, float rd, float h0, float h1) {
  std::int64_t ld = 0;
  const std::int64_t r64 = row;
  if constexpr (EPI == kStoreT) {
    T* o = mat_at<T>(e.out, ti.b, ti.h, ti.c, ld);
    store2<T>(o + r64 * ld + col, v0, v1);
  } else if constexpr (EPI == kStoreF32) {
    if (e.mode == kStoreHiLo) {
      __nv_bfloat16* o = mat_at<__nv_bfloat16>(e.out, ti.b, ti.h, ti.c, ld);
      __nv_bfloat16* o2 = mat_at<__nv_bfloat16>(e.out2, ti.b, ti.h, ti.c);
      __nv_bfloat16 hi0, lo0, hi1, lo1;
      split_bf16(v0, hi0, lo0);
      split_bf16(v1, hi1, lo1);
      *reinterpret_cast<std::uint32_t*>(o + r64 * ld + col) = pack_bf16(hi0, hi1);
      *reinterpret_cast<std::uint32_t*>(o2 + r64 * e.out2.ld + col) = pack_bf16(lo0, lo1);
    } else {
      float* o = mat_at<float>(e.out, ti.b, ti.h, ti.c, ld);
      store2<float>(o + r64 * ld + col, v0, v1);
    }
  } else if constexpr (EPI == kStoreYneg) {
    T* o = mat_at<T>(e.out, ti.b, ti.h, ti.c, ld);
    store2<T>(o + r64 * ld + col, -v0, -v1);
    T* o2 = mat_at<T>(e.out2, ti.b, ti.h, ti.c);
    o2[static_cast<std::int64_t>(col) * e.out2.ld + row] = from_float<T>(-v0);
    o2[static_cast<std::int64_t>(col + 1) * e.out2.ld + row] = from_float<T>(-v1);
  } else if constexpr (EPI == kDaq) {
    T* o = mat_at<T>(e.out, ti.b, ti.h, ti.c, ld);
    if (ti.zero) {
      store2<T>(o + r64 * ld + col, 0.f, 0.f);
    } else {
      const float2 qv = feat2<T>(e.f1, ti, row, col);
      store2<T>(o + r64 * ld + col, qv.x * (v0 - rd), qv.y * (v1 - rd));
    }
  } else {  // kDak
    T* o = mat_at<T>(e.out, ti.b, ti.h, ti.c, ld);
    const float2 kv = feat2<T>(e.f1, ti, row, col);
    const float* s = mat_at<float>(e.v1, ti.b, ti.h, ti.c) + col;
    const float* gl = mat_at<float>(e.v2, ti.b, ti.h, ti.c) + col;
    store2<T>(o + r64 * ld + col, kv.x * (v0 - s[0] + gl[0]) + h0, kv.y * (v1 - s[1] + gl[1]) + h1);
  }
}

}  // namespace gecko::working_memory::kernels
