// Host launchers for sliding chunk attention on CUDA: validation, path choice, workspace.
// Stream-ordered; never synchronizes or allocates.
//
// Paths.
//   tensor cores (bf16 / fp16, Hopper, 16-byte aligned rows):
//     forward   kernel_prep.cuh rope_rows (k only) -> kernel_forward.cuh (clustered, P shared in
//               distributed shared memory) [-> combine_kernel when the keys are split]
//     decoding  (L <= 4 queries) kernel_decode.cuh (key blocks across the grid, the call's keys
//               rotated inside) -> decode_combine_kernel
//     backward  rope_rows (q, k) -> [forward, when out/lse were not given] -> row_dot (D) ->
//               backward_ds (dQ, query-major) -> backward_ds (dK, key-major) -> backward_dv
//   generic (fp32, unaligned views, other devices): kernel_generic.cuh, one CTA per row.
//
// Where the backward time goes, and why dP is computed twice. dS_ij = P_ij (dO_i.V_j - D_i) needs
// the dv = 2048-wide contraction dP. dQ_i sums dS over keys, dK_j over queries; a kernel owning
// one of them must hand the other's partial sums to other CTAs. Storing dS (C x 2C per chunk) is
// ruled out, float atomics are not deterministic, so the dQ and dK passes each recompute dP.
//
// Supported: dk in {64, 128, 256}; dv a multiple of 64 in [64, 2048]; chunk <= 4096.
//
// Status (H100, B=1 H=4 dk=256 dv=2048 C=2048 bf16, L=16384): forward 7.5 ms, backward 30 ms, far
// from the 550 / 420 TFLOP/s targets; bench/results/2026-11-27_h100_sliding_chunk_attention_notes.md
// says where the time goes and what would close the gap.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/device.hpp"
#include "gecko/ops/rope/args.hpp"
#include "gecko/ops/sliding_chunk_attention/args.hpp"
#include "gecko/ops/sliding_chunk_attention/kernel_backward_ds.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_backward_dv.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_decode.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_forward.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_generic.cuh"
#include "gecko/ops/sliding_chunk_attention/kernel_prep.cuh"

namespace gecko::sliding_chunk_attention::cuda {

namespace detail {

using kernels::i64;

inline std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

template <class T>
inline constexpr bool kTensorCoreType = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

inline Status check_supported(const Problem& p) {
  const auto s = [](std::int64_t v) { return std::to_string(v); };
  if (p.dk != 64 && p.dk != 128 && p.dk != 256)
    return unsupported("sliding chunk attention (CUDA): dk=" + s(p.dk) + " is not supported (dk in {64, 128, 256})");
  if (p.dv < 64 || p.dv > 2048 || p.dv % 64 != 0)
    return unsupported("sliding chunk attention (CUDA): dv=" + s(p.dv) +
                       " is not supported (a multiple of 64 in [64, 2048])");
  if (p.chunk > 4096) return unsupported("sliding chunk attention (CUDA): chunk=" + s(p.chunk) + " exceeds 4096");
  if (p.batch * p.heads > 65535)
    return unsupported("sliding chunk attention (CUDA): B*H=" + s(p.batch * p.heads) + " exceeds 65535");
  if (p.keys + 4 * p.chunk + 256 > 0x7fffffffLL)
    return unsupported("sliding chunk attention (CUDA): more than 2^31 window positions");
  return Status::success();
}

template <class T>
bool aligned16(const TensorView<T>& t) {
  if (t.empty()) return true;
  if (reinterpret_cast<std::uintptr_t>(t.data) % 16 != 0) return false;
  for (int i = 0; i + 1 < t.rank; ++i)
    if ((t.strides[i] * static_cast<std::int64_t>(sizeof(T))) % 16 != 0) return false;
  return true;
}

template <class A>
bool inputs_aligned(const A& a) {
  return aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.prev_k) && aligned16(a.prev_v);
}
template <class T>
bool forward_aligned(const ForwardArgs<T>& a) {
  return inputs_aligned(a) && aligned16(a.out);
}
template <class T>
bool backward_aligned(const BackwardArgs<T>& a) {
  return inputs_aligned(a) && aligned16(a.out) && aligned16(a.dout) && aligned16(a.dq) && aligned16(a.dk) &&
         aligned16(a.dv) && aligned16(a.dprev_k) && aligned16(a.dprev_v);
}

// A [B, H, L] log-sum-exp tensor as the kernels index it (null and zero strides when absent): F is
// const float where the kernels read it (the backwards), float where they write it (the forwards).
template <class F>
struct LseRows {
  F* p = nullptr;
  i64 sb = 0, sh = 0, sl = 0;
};
template <class F>
LseRows<F> lse_rows(const TensorView<F>& t) {
  if (t.empty()) return {};
  return LseRows<F>{t.data, t.strides[0], t.strides[1], t.strides[2]};
}

template <class T>
kernels::Rows<T> rows_of(const TensorView<const T>& t) {
  kernels::Rows<T> r;
  r.p = t.data;
  if (!t.empty()) {
    r.sb = t.strides[0];
    r.sn = t.strides[1];
    r.sh = t.strides[2];
  }
  return r;
}
template <class T>
kernels::OutRows<T> out_rows_of(const TensorView<T>& t) {
  kernels::OutRows<T> r;
  r.p = t.data;
  if (!t.empty()) {
    r.sb = t.strides[0];
    r.sn = t.strides[1];
    r.sh = t.strides[2];
  }
  return r;
}
// A dense [B, L, n_rope, d] workspace tensor.
template <class T>
kernels::Rows<T> dense_rows(const T* p, const Problem& pr) {
  kernels::Rows<T> r;
  r.p = p;
  r.sh = pr.dk;
  r.sn = static_cast<i64>(pr.n_rope_heads) * pr.dk;
  r.sb = pr.length * r.sn;
  return r;
}

struct ClusterShape {
  int n = 1, rows = 128, width = 64, smem = 0;
};

// Smallest cluster whose CTAs' dv slices (64, 128 or 256 columns) fit the 128 x 256 register
// accumulator and whose shared memory fits the device.
inline ClusterShape cluster_shape(const Problem& p, int smem_limit) {
  int n = 1;
  while (n < 8 && n * 256 < p.dv) n *= 2;
  for (;; n *= 2) {
    ClusterShape c;
    c.n = n;
    c.rows = kernels::kRowTile / n;
    int w = 1;  // 64-column groups per CTA, a power of two (tile loads want 2^k chunks per row)
    while (w * 64 * n < p.dv) w *= 2;
    c.width = 64 * w;
    c.smem = kernels::ClusterLayout(c.rows, static_cast<int>(p.dk), c.width).total;
    if (c.smem <= smem_limit || n == 8) return c;
  }
}

struct Plan {
  bool fast = false;
  bool decode = false;  // a few queries: decode_kernel over key blocks (kernel_decode.cuh)
  int decode_lo = 0, decode_keys = 0;  // first key, keys per block
  ClusterShape cl;
  int splits = 1;
  int ds_smem = 0;
  int sm_count = 0;
  // workspace offsets (bytes); `total` is the size
  std::size_t krot = 0, qrot = 0, part_o = 0, part_ml = 0, dbuf = 0, out_ws = 0, lse_ws = 0, total = 0;
  bool fwd_inside = false;  // the backward runs the forward itself
};

template <class T>
bool kernels_loadable() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernels::forward_kernel<T>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.binaryVersion >= 90;
}

// backward = false: the forward's plan; true: the backward's (which may contain a forward).
template <class T>
Status make_plan(const Problem& p, bool aligned, bool backward, bool need_forward, Plan& pl) {
  pl = Plan{};
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  pl.sm_count = dev->sm_count;
  const int smem_limit = static_cast<int>(dev->smem_per_block_optin);
  if constexpr (kTensorCoreType<T>) {
    pl.fast = aligned && dev->major >= 9 && kernels_loadable<T>();
    if (pl.fast) {
      pl.cl = cluster_shape(p, smem_limit);
      pl.ds_smem = kernels::DsLayout(static_cast<int>(p.dk)).total;
      if (pl.cl.smem > smem_limit || (backward && pl.ds_smem > smem_limit)) pl.fast = false;
    }
  }
  const std::size_t esz = sizeof(T);
  const std::size_t BH = static_cast<std::size_t>(p.batch * p.heads);
  const std::size_t rot_bytes = static_cast<std::size_t>(p.batch * p.length * p.n_rope_heads * p.dk) * esz;
  std::size_t off = 0;
  auto take = [&off](std::size_t bytes) {
    const std::size_t at = off;
    off = align256(off + bytes);
    return at;
  };
  pl.decode = pl.fast && !backward && p.length <= kernels::kDecodeRows;
  if (p.n_rope_heads > 0 && !pl.decode) {  // the decode kernel rotates the call's keys itself
    pl.krot = take(rot_bytes);
    if (backward || !pl.fast) pl.qrot = take(rot_bytes);  // the tensor-core forward rotates q as it loads
  }
  const bool run_fwd = !backward || (pl.fast && need_forward);
  if (pl.decode) {
    // Keys [lo, P + L - 1] cover every query's window; CTAs take blocks of them.
    pl.decode_lo = static_cast<int>(first_key(p.prev, p.chunk));
    const std::int64_t hi = std::min(p.prev + p.length - 1, p.keys - 1), span = hi - pl.decode_lo + 1;
    // Blocks of at most 64 keys, as many as make whole waves of kDecodeCtasPerSm CTAs per SM (no
    // SM left with one block more than the others while the rest idle), fewer when the window is
    // short.
    const std::int64_t want =
        std::max<std::int64_t>(1, kernels::kDecodeCtasPerSm * pl.sm_count / static_cast<std::int64_t>(BH));
    std::int64_t per = std::max<std::int64_t>((span + want - 1) / want, 16);
    per = std::min<std::int64_t>(std::max(per, (span + kernels::kDecodeMaxSplits - 1) / kernels::kDecodeMaxSplits),
                                 kernels::kDecodeKeys);
    pl.decode_keys = static_cast<int>(per);
    pl.splits = static_cast<int>((span + per - 1) / per);
    if (pl.splits > kernels::kDecodeMaxSplits)
      return unsupported("sliding_chunk_attention decode: a window of " + std::to_string(span) + " keys (at most " +
                         std::to_string(kernels::kDecodeMaxSplits * kernels::kDecodeKeys) + ")");
    pl.part_o = take(static_cast<std::size_t>(pl.splits) * BH * p.length * p.dv * 4);
    pl.part_ml = take(static_cast<std::size_t>(pl.splits) * BH * p.length * 2 * 4);
  } else if (pl.fast && run_fwd) {
    const std::int64_t tiles = (p.length + 127) / 128;
    const std::int64_t ctas = tiles * pl.cl.n * p.batch * p.heads;
    if (ctas < pl.sm_count) {
      const std::int64_t nvalid = std::min<std::int64_t>(128, p.length);
      const std::int64_t lo = first_key(p.prev, p.chunk);
      const std::int64_t nb0 = (std::min(p.prev + nvalid - 1, p.keys - 1)) / 64 - lo / 64 + 1;
      pl.splits = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>({pl.sm_count / ctas, nb0, 64})));
    }
    if (pl.splits > 1) {
      pl.part_o = take(static_cast<std::size_t>(pl.splits) * BH * p.length * p.dv * 4);
      pl.part_ml = take(static_cast<std::size_t>(pl.splits) * BH * p.length * 2 * 4);
    }
  }
  if (backward) {
    pl.dbuf = take(BH * p.length * 4);
    if (!pl.fast) {
      pl.lse_ws = take(BH * p.length * 4);
    } else if (need_forward) {
      pl.fwd_inside = true;
      pl.out_ws = take(static_cast<std::size_t>(p.batch * p.length * p.heads * p.dv) * esz);
      pl.lse_ws = take(BH * p.length * 4);
    }
  }
  pl.total = off;
  return Status::success();
}

template <class Params>
Status launch_cluster(void (*kernel)(Params), dim3 grid, int n, int smem, cudaStream_t stream, const Params& prm,
                      const char* name) {
  GECKO_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kernels::kThreads);
  cfg.dynamicSmemBytes = static_cast<std::size_t>(smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(n);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  GECKO_CUDA_RETURN(cudaLaunchKernelEx(&cfg, kernel, prm));
  return last_launch_status(name);
}

template <class A>
void fill_theta(const A& a, const Problem& p, float* theta) {
  for (int i = 0; i < kernels::kMaxPairs; ++i)
    theta[i] = (a.rope.enabled() && i < p.dk / 2) ? rope::inv_freq(a.rope.base, p.dk, i) : 0.f;
}

template <class A, class T>
kernels::Window<T> key_window(const A& a, const Problem& p, const T* krot) {
  kernels::Window<T> w;
  w.prev = rows_of(a.prev_k);
  w.cur = rows_of(a.k);
  w.rot = krot ? dense_rows(krot, p) : w.cur;
  w.P = static_cast<int>(p.prev);
  w.n_rope = krot ? p.n_rope_heads : 0;
  return w;
}
template <class A, class T>
kernels::Window<T> value_window(const A& a, const Problem& p) {
  kernels::Window<T> w;
  w.prev = rows_of(a.prev_v);
  w.cur = rows_of(a.v);
  w.rot = w.cur;
  w.P = static_cast<int>(p.prev);
  w.n_rope = 0;
  return w;
}
template <class A>
kernels::Segs segs_of(const A& a, const Problem& p) {
  kernels::Segs s;
  s.seg = a.segment_idx.data;
  if (!a.segment_idx.empty()) {
    s.sb = a.segment_idx.strides[0];
    s.sl = a.segment_idx.strides[1];
  }
  s.pseg = a.prev_segment_idx.data;
  if (!a.prev_segment_idx.empty()) {
    s.psb = a.prev_segment_idx.strides[0];
    s.psl = a.prev_segment_idx.strides[1];
  }
  s.P = static_cast<int>(p.prev);
  return s;
}

template <class T>
Status rope_rows(const TensorView<const T>& x, T* y, const Problem& p, const kernels::Theta& th, std::int64_t start,
                 cudaStream_t stream) {
  const i64 pairs = p.batch * p.length * p.n_rope_heads * (p.dk / 2);
  if (pairs == 0) return Status::success();
  const int grid = static_cast<int>(std::min<i64>((pairs + 255) / 256, 65536));
  if (pairs <= kernels::kMaxInt32Pairs)  // 32-bit index math (kernel_prep.cuh, rope_pair)
    kernels::rope_rows_kernel<T, int><<<grid, 256, 0, stream>>>(rows_of(x), y, static_cast<int>(p.length),
                                                                p.n_rope_heads, static_cast<int>(p.dk), start,
                                                                static_cast<int>(pairs), th);
  else
    kernels::rope_rows_kernel<T, i64><<<grid, 256, 0, stream>>>(rows_of(x), y, static_cast<int>(p.length),
                                                                p.n_rope_heads, static_cast<int>(p.dk), start, pairs, th);
  return last_launch_status("sliding_chunk_attention rope pre-pass");
}

// The sizes, positions and scale of a forward call, as the kernels' parameter blocks name them.
template <class Prm, class T>
void fill_call(Prm& f, const ForwardArgs<T>& a, const Problem& p) {
  f.L = static_cast<int>(p.length);
  f.H = static_cast<int>(p.heads);
  f.dk = static_cast<int>(p.dk);
  f.dv = static_cast<int>(p.dv);
  f.P = static_cast<int>(p.prev);
  f.keys = static_cast<int>(p.keys);
  f.chunk = p.chunk;
  f.start = a.rope.start;
  f.n_rope = p.n_rope_heads;
  f.segments = p.segments ? 1 : 0;
  f.scale_log2 = a.scale * kernels::kLog2e;
}

// The forward on a planned workspace (krot already written when RoPE is on, except for decoding).
template <class T>
Status run_forward(const ForwardArgs<T>& a, const Problem& p, const Plan& pl, char* ws, cudaStream_t stream) {
  const T* krot = p.n_rope_heads > 0 && !pl.decode ? reinterpret_cast<const T*>(ws + pl.krot) : nullptr;
  const LseRows<float> lse = lse_rows(a.lse);
  const int BH = static_cast<int>(p.batch * p.heads);
  if constexpr (kTensorCoreType<T>) {
   if (pl.decode) {
    kernels::DecodeParams<T> f;
    fill_call(f, a, p);
    f.lo = pl.decode_lo;
    f.keys_per_cta = pl.decode_keys;
    f.q = rows_of(a.q);
    f.kw = key_window(a, p, krot);  // null: the call's keys unrotated, decode_kernel rotates them
    f.vw = value_window<ForwardArgs<T>, T>(a, p);
    f.seg = segs_of(a, p);
    f.part_o = reinterpret_cast<float*>(ws + pl.part_o);
    f.part_ml = reinterpret_cast<float*>(ws + pl.part_ml);
    f.cursor = a.cursor;
    fill_theta(a, p, f.theta);
    const dim3 grid(static_cast<unsigned>(pl.splits), BH);
    const auto launch = [&](auto cursor) {
      constexpr bool kCursor = decltype(cursor)::value;
      switch (f.L) {
        case 1: kernels::decode_kernel<T, 1, kCursor><<<grid, kernels::kThreads, 0, stream>>>(f); break;
        case 2: kernels::decode_kernel<T, 2, kCursor><<<grid, kernels::kThreads, 0, stream>>>(f); break;
        case 3: kernels::decode_kernel<T, 3, kCursor><<<grid, kernels::kThreads, 0, stream>>>(f); break;
        default: kernels::decode_kernel<T, 4, kCursor><<<grid, kernels::kThreads, 0, stream>>>(f); break;
      }
    };
    if (f.cursor) launch(std::true_type{});
    else launch(std::false_type{});
    GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention decode"));
    kernels::decode_combine_kernel<T><<<dim3(static_cast<unsigned>((p.dv + kernels::kCombineCols - 1) /
                                                                    kernels::kCombineCols),
                                             static_cast<unsigned>(BH * p.length)),
                                        kernels::kCombineThreads, 0, stream>>>(
            f.part_o, f.part_ml, pl.splits, f.L, f.H, f.dv, out_rows_of(a.out), lse.p, lse.sb, lse.sh, lse.sl);
    return last_launch_status("sliding_chunk_attention decode combine");
   }
   if (pl.fast) {
    kernels::FwdParams<T> f;
    fill_call(f, a, p);
    f.q = rows_of(a.q);
    f.kw = key_window(a, p, krot);
    f.vw = value_window<ForwardArgs<T>, T>(a, p);
    f.seg = segs_of(a, p);
    f.out = out_rows_of(a.out);
    f.lse = lse.p;
    f.lse_sb = lse.sb;
    f.lse_sh = lse.sh;
    f.lse_sl = lse.sl;
    f.splits = pl.splits;
    if (pl.splits > 1) {
      f.part_o = reinterpret_cast<float*>(ws + pl.part_o);
      f.part_ml = reinterpret_cast<float*>(ws + pl.part_ml);
    }
    f.n = pl.cl.n;
    f.rows = pl.cl.rows;
    f.width = pl.cl.width;
    fill_theta(a, p, f.theta);
    const unsigned tiles = static_cast<unsigned>((p.length + 127) / 128);
    GECKO_RETURN_IF_ERROR(launch_cluster(kernels::forward_kernel<T>, dim3(tiles * pl.cl.n, BH, pl.splits), pl.cl.n,
                                         pl.cl.smem, stream, f, "sliding_chunk_attention forward"));
    if (pl.splits > 1) {
      kernels::combine_kernel<T><<<dim3(static_cast<unsigned>(p.length), BH), 256, 0, stream>>>(
          f.part_o, f.part_ml, pl.splits, f.L, f.H, f.dv, f.out, f.lse, f.lse_sb, f.lse_sh, f.lse_sl);
      GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention combine"));
    }
    return Status::success();
   }
  }
  kernels::GenParams<T> g;
  g.L = static_cast<int>(p.length);
  g.H = static_cast<int>(p.heads);
  g.dk = static_cast<int>(p.dk);
  g.dv = static_cast<int>(p.dv);
  g.P = static_cast<int>(p.prev);
  g.keys = static_cast<int>(p.keys);
  g.chunk = p.chunk;
  g.start = a.rope.start;
  g.n_rope = p.n_rope_heads;
  g.segments = p.segments ? 1 : 0;
  g.scale = a.scale;
  g.q = rows_of(a.q);
  g.qrot = g.q;
  g.kw = key_window(a, p, krot);
  g.vw = value_window<ForwardArgs<T>, T>(a, p);
  g.seg = segs_of(a, p);
  g.out = out_rows_of(a.out);
  g.lse = lse.p;
  g.lse_sb = lse.sb;
  g.lse_sh = lse.sh;
  g.lse_sl = lse.sl;
  fill_theta(a, p, g.theta);
  if (p.n_rope_heads > 0) g.qrot = dense_rows(reinterpret_cast<const T*>(ws + pl.qrot), p);
  const int smem = static_cast<int>((p.dk + 32 + 2 * p.chunk) * 4);
  GECKO_CUDA_RETURN(cudaFuncSetAttribute(kernels::generic_forward_kernel<T>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernels::generic_forward_kernel<T><<<dim3(static_cast<unsigned>(p.length), BH), kernels::kGenThreads, smem, stream>>>(g);
  return last_launch_status("sliding_chunk_attention generic forward");
}

template <class T>
Status backward_fast(const BackwardArgs<T>& a, const Problem& p, const Plan& pl, char* ws, cudaStream_t stream,
                     const kernels::Window<T>& kw, const kernels::Window<T>& vw, const kernels::Segs& segs,
                     const kernels::Rows<T>& qrows, const kernels::Rows<T>& qrot_rows, float* dbuf);

}  // namespace detail

namespace detail {

// What a call that asks the flash kernels for probs hears.
inline constexpr const char* kFlashNoProbs =
    "sliding chunk attention (CUDA): probs are kept only by the GEMM-staged path (launch_gemm.cuh: the "
    "linear::cuda::Context entry points, a whole number of chunks, C a multiple of 64 up to 4096, 16-byte aligned "
    "rows)";

// Validation, support check and plan of one call: what the size queries and the launches share.

template <class T>
Status plan_forward(const ForwardArgs<T>& a, Problem& p, Plan& pl) {
  static_assert(!std::is_same_v<T, double>, "the CUDA sliding chunk attention takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (!a.probs.empty()) return unsupported(kFlashNoProbs);
  GECKO_RETURN_IF_ERROR(check_supported(p));
  GECKO_RETURN_IF_ERROR(make_plan<T>(p, forward_aligned(a), false, false, pl));
  if (a.cursor && !pl.decode)
    return unsupported("sliding chunk attention (CUDA): a decode cursor needs a decoding call (16-bit T, L <= " +
                       std::to_string(kernels::kDecodeRows) + ", 16-byte aligned rows), got L = " +
                       std::to_string(p.length));
  return Status::success();
}
template <class T>
Status plan_backward(const BackwardArgs<T>& a, Problem& p, Plan& pl) {
  static_assert(!std::is_same_v<T, double>, "the CUDA sliding chunk attention takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (!a.probs.empty()) return unsupported(kFlashNoProbs);
  GECKO_RETURN_IF_ERROR(check_supported(p));
  return make_plan<T>(p, backward_aligned(a), true, a.out.empty() || a.lse.empty(), pl);
}

inline Status check_workspace(const void* ws, std::size_t bytes, std::size_t need, const char* what) {
  if (bytes < need || (need && !ws))
    return invalid_argument(std::string("sliding chunk attention ") + what + " needs " + std::to_string(need) +
                            " bytes of workspace, got " + std::to_string(bytes));
  return Status::success();
}

}  // namespace detail

// Bytes of workspace forward() needs for this problem on the current device.
template <class T>
Status forward_workspace_size(const ForwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  detail::Plan pl;
  GECKO_RETURN_IF_ERROR(detail::plan_forward(a, p, pl));
  bytes = pl.total;
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  Problem p;
  detail::Plan pl;
  GECKO_RETURN_IF_ERROR(detail::plan_forward(a, p, pl));
  GECKO_RETURN_IF_ERROR(detail::check_workspace(workspace, workspace_bytes, pl.total, "forward"));
  char* ws = static_cast<char*>(workspace);
  if (p.n_rope_heads > 0 && !pl.decode) {
    kernels::Theta th;
    detail::fill_theta(a, p, th.v);
    GECKO_RETURN_IF_ERROR(detail::rope_rows(a.k, reinterpret_cast<T*>(ws + pl.krot), p, th, a.rope.start, stream));
    if (!pl.fast)
      GECKO_RETURN_IF_ERROR(detail::rope_rows(a.q, reinterpret_cast<T*>(ws + pl.qrot), p, th, a.rope.start, stream));
  }
  return detail::run_forward(a, p, pl, ws, stream);
}

// Bytes of workspace backward() needs for this problem on the current device (more when out or
// lse is not given: the backward then runs the forward itself).
template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  detail::Plan pl;
  GECKO_RETURN_IF_ERROR(detail::plan_backward(a, p, pl));
  bytes = pl.total;
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  Problem p;
  detail::Plan pl;
  GECKO_RETURN_IF_ERROR(detail::plan_backward(a, p, pl));
  GECKO_RETURN_IF_ERROR(detail::check_workspace(workspace, workspace_bytes, pl.total, "backward"));
  char* ws = static_cast<char*>(workspace);
  const int BH = static_cast<int>(p.batch * p.heads);
  kernels::Theta th;
  detail::fill_theta(a, p, th.v);
  const T* krot = nullptr;
  const T* qrot = nullptr;
  if (p.n_rope_heads > 0) {
    GECKO_RETURN_IF_ERROR(detail::rope_rows(a.q, reinterpret_cast<T*>(ws + pl.qrot), p, th, a.rope.start, stream));
    GECKO_RETURN_IF_ERROR(detail::rope_rows(a.k, reinterpret_cast<T*>(ws + pl.krot), p, th, a.rope.start, stream));
    krot = reinterpret_cast<const T*>(ws + pl.krot);
    qrot = reinterpret_cast<const T*>(ws + pl.qrot);
  }
  const auto kw = detail::key_window(a, p, krot);
  const auto vw = detail::value_window<BackwardArgs<T>, T>(a, p);
  const auto segs = detail::segs_of(a, p);
  const kernels::Rows<T> qrows = detail::rows_of(a.q);
  const kernels::Rows<T> qrot_rows = qrot ? detail::dense_rows(qrot, p) : qrows;
  float* dbuf = reinterpret_cast<float*>(ws + pl.dbuf);

  if (!pl.fast) {
    kernels::GenParams<T> g;
    g.L = static_cast<int>(p.length);
    g.H = static_cast<int>(p.heads);
    g.dk = static_cast<int>(p.dk);
    g.dv = static_cast<int>(p.dv);
    g.P = static_cast<int>(p.prev);
    g.keys = static_cast<int>(p.keys);
    g.chunk = p.chunk;
    g.start = a.rope.start;
    g.n_rope = p.n_rope_heads;
    g.segments = p.segments ? 1 : 0;
    g.scale = a.scale;
    g.q = qrows;
    g.qrot = qrot_rows;
    g.dout = detail::rows_of(a.dout);
    g.kw = kw;
    g.vw = vw;
    g.seg = segs;
    g.gq = detail::out_rows_of(a.dq);
    g.gk = detail::out_rows_of(a.dk);
    g.gv = detail::out_rows_of(a.dv);
    g.accumulate_dv = a.accumulate_dv ? 1 : 0;
    g.gprev_k = detail::out_rows_of(a.dprev_k);
    g.gprev_v = detail::out_rows_of(a.dprev_v);
    g.lse_ws = reinterpret_cast<float*>(ws + pl.lse_ws);
    g.d_ws = dbuf;
    detail::fill_theta(a, p, g.theta);
    const int smem_q = static_cast<int>((p.dk + p.dv + 32 + 4 * p.chunk) * 4);
    GECKO_CUDA_RETURN(cudaFuncSetAttribute(kernels::generic_dq_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           smem_q));
    kernels::generic_dq_kernel<T><<<dim3(static_cast<unsigned>(p.length), BH), kernels::kGenThreads, smem_q, stream>>>(g);
    GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention generic dq"));
    const int smem_k = static_cast<int>((p.dk + p.dv + 32) * 4);
    kernels::generic_dkdv_kernel<T><<<dim3(static_cast<unsigned>(p.keys), BH), kernels::kGenThreads, smem_k, stream>>>(g);
    return last_launch_status("sliding_chunk_attention generic dk/dv");
  }

  if constexpr (detail::kTensorCoreType<T>) {
    return detail::backward_fast(a, p, pl, ws, stream, kw, vw, segs, qrows, qrot_rows, dbuf);
  } else {
    return internal_error("sliding chunk attention: the tensor-core backward takes half or bfloat16");
  }
}

namespace detail {

template <class T>
Status backward_fast(const BackwardArgs<T>& a, const Problem& p, const Plan& pl, char* ws, cudaStream_t stream,
                     const kernels::Window<T>& kw, const kernels::Window<T>& vw, const kernels::Segs& segs,
                     const kernels::Rows<T>& qrows, const kernels::Rows<T>& qrot_rows, float* dbuf) {
  const int BH = static_cast<int>(p.batch * p.heads);
  // Saved forward results, or a forward of our own.
  kernels::Rows<T> out_rows = detail::rows_of(a.out);
  detail::LseRows<const float> lse = detail::lse_rows(a.lse);
  if (pl.fwd_inside) {
    ForwardArgs<T> f = forward_inputs_of(a);
    T* out_ws = reinterpret_cast<T*>(ws + pl.out_ws);
    float* lse_ws = reinterpret_cast<float*>(ws + pl.lse_ws);
    f.out = TensorView<T>::device(out_ws, {p.batch, p.length, p.heads, p.dv});
    f.lse = TensorView<float>::device(lse_ws, {p.batch, p.heads, p.length});
    GECKO_RETURN_IF_ERROR(detail::run_forward(f, p, pl, ws, stream));
    out_rows = detail::rows_of(TensorView<const T>(f.out));
    lse = detail::lse_rows(TensorView<const float>(f.lse));
  }
  {
    const i64 rows = p.batch * p.length * p.heads;
    const int vec = detail::aligned16(a.dout) && (out_rows.p == a.out.data ? detail::aligned16(a.out) : true);
    kernels::row_dot_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(
        detail::rows_of(a.dout), out_rows, dbuf, static_cast<int>(p.length), static_cast<int>(p.heads),
        static_cast<int>(p.dv), rows, vec);
    GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention D = rowsum(dO * O)"));
  }
  kernels::DsParams<T> d;
  d.L = static_cast<int>(p.length);
  d.H = static_cast<int>(p.heads);
  d.dk = static_cast<int>(p.dk);
  d.dv = static_cast<int>(p.dv);
  d.P = static_cast<int>(p.prev);
  d.keys = static_cast<int>(p.keys);
  d.chunk = p.chunk;
  d.start = a.rope.start;
  d.n_rope = p.n_rope_heads;
  d.segments = p.segments ? 1 : 0;
  d.scale = a.scale;
  d.scale_log2 = a.scale * kernels::kLog2e;
  d.kw = kw;
  d.vw = vw;
  d.q = qrows;
  d.qrot = qrot_rows;
  d.dout = detail::rows_of(a.dout);
  d.seg = segs;
  d.lse = lse.p;
  d.lse_sb = lse.sb;
  d.lse_sh = lse.sh;
  d.lse_sl = lse.sl;
  d.D = dbuf;
  detail::fill_theta(a, p, d.theta);
  GECKO_CUDA_RETURN(cudaFuncSetAttribute(kernels::backward_ds_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         pl.ds_smem));
  d.key_major = 0;
  d.grad = detail::out_rows_of(a.dq);
  kernels::backward_ds_kernel<T>
      <<<dim3(static_cast<unsigned>((p.length + 127) / 128), BH), kernels::kThreads, pl.ds_smem, stream>>>(d);
  GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention backward dq"));
  d.key_major = 1;
  d.grad = detail::out_rows_of(a.dk);
  d.grad_prev = detail::out_rows_of(a.dprev_k);
  kernels::backward_ds_kernel<T>
      <<<dim3(static_cast<unsigned>((p.keys + 127) / 128), BH), kernels::kThreads, pl.ds_smem, stream>>>(d);
  GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention backward dk"));

  kernels::DvParams<T> v;
  v.L = d.L;
  v.H = d.H;
  v.dk = d.dk;
  v.dv = d.dv;
  v.P = d.P;
  v.keys = d.keys;
  v.chunk = p.chunk;
  v.n_rope = p.n_rope_heads;
  v.segments = d.segments;
  v.scale_log2 = d.scale_log2;
  v.kw = kw;
  v.q = qrows;
  v.qrot = qrot_rows;
  v.dout = d.dout;
  v.seg = segs;
  v.lse = lse.p;
  v.lse_sb = lse.sb;
  v.lse_sh = lse.sh;
  v.lse_sl = lse.sl;
  v.grad_v = detail::out_rows_of(a.dv);
  v.accumulate_v = a.accumulate_dv ? 1 : 0;
  v.grad_prev_v = detail::out_rows_of(a.dprev_v);
  v.n = pl.cl.n;
  v.rows = pl.cl.rows;
  v.width = pl.cl.width;
  const unsigned ktiles = static_cast<unsigned>((p.keys + 127) / 128);
  return launch_cluster(kernels::backward_dv_kernel<T>, dim3(ktiles * pl.cl.n, BH), pl.cl.n, pl.cl.smem, stream, v,
                        "sliding_chunk_attention backward dv");
}

}  // namespace detail

}  // namespace gecko::sliding_chunk_attention::cuda
