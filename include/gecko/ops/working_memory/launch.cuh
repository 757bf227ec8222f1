// Host launchers for CUDA adaptive working memory: validation, support checks, workspace layout,
// and the kernel sequence of the forward (full and tail paths) and the backward. Stream-ordered;
// never synchronizes or allocates.
//
// The recurrence is split so that only a small part is sequential (spec 2.4 rewritten with
// U = κ(V - K̂M̄) = W - G M̄, W = κᵀV, G = κᵀK̂):
//
//   1. feature rows   q̂ (masked), k̂, per-64-token column statistics       (memory bound, once)
//   2. stats          ℓ, resets, A' = logaddexp(ℓ, Ā), ρ; log_norm_out      (dk-sized recurrence)
//   3. kappa          κ = exp(ak - ℓ)                                       (memory bound)
//   4. GEMM           W_p = κ_pᵀ V_p, G_p = κ_pᵀ K̂_p for every absorbed chunk (parallel)
//   5. scan           M̄ = reset ? 0 : M, M' = M̄ + ρ ∘ (W - G M̄ - M̄): one CTA per (b, h, 64 dv
//                     columns), fp32 state on chip, dk x dk x 64 per step on the tensor cores
//   6. GEMM           O_j = Q̂_j M_j for every chunk (parallel)
//
// The backward (spec 2.7) recomputes 1-5, then: E_j = Q̂_jᵀ dO_j; a reverse scan for gM (with the
// row sums that give gρ and s); the dk-sized gA/gℓ recurrence; Y = gU M̄ᵀ; daq = softmax backward
// of dO M_jᵀ; dv = κ gU; dak = κ ∘ (V gUᵀ - K̂ Yᵀ - s + gℓ) + k̂ ∘ (gK̂ - <gK̂, k̂>), gK̂ = -κ Y.
// Every reduction has a fixed order and nothing uses atomics: results are bitwise reproducible.
//
// 16-bit T uses the tensor-core engine (bf16/fp16 operands, fp32 accumulation and state); float
// uses a SIMT fp32 engine with the same descriptors.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/device.hpp"
#include "gecko/ops/working_memory/args.hpp"
#include "gecko/ops/working_memory/kernel_decode.cuh"
#include "gecko/ops/working_memory/kernel_features.cuh"
#include "gecko/ops/working_memory/kernel_gemm_simt.cuh"
#include "gecko/ops/working_memory/kernel_gemm_tc.cuh"
#include "gecko/ops/working_memory/kernel_scan.cuh"

namespace gecko::working_memory::cuda {

namespace detail {

using kernels::Mat;
using kernels::MatAlt;

template <class T>
inline constexpr bool kTensorCores = !std::is_same_v<T, float>;

// Sizes of the run and the workspace layout (byte offsets).
struct Plan {
  Problem p;
  bool backward = false;
  int n = 0;        // readout chunks
  int nabs = 0;     // absorb steps
  int j0 = 0;       // first step with a state
  int j_first = 0;  // first readout whose memory may be nonzero
  int hs = 0;       // 1 with a carried state: absorbed chunk a is chunk a - hs
  std::int64_t lq = 0, q_row0 = 0, q_rows = 0;  // q̂ rows held / computed
  int slice = 0, nsl = 0;
  std::size_t qhat = 0, khat = 0, kappa = 0, kstat = 0, ell = 0, rho = 0, abar = 0, anew = 0, resets = 0, ghi = 0,
              glo = 0, w = 0, mt = 0, e = 0, gut = 0, yneg = 0, ynegt = 0, parts = 0, gell = 0, svec = 0;
  std::size_t bytes = 0;
  // split: the front's results (q̂ through A', what the backward reads) are laid out from offset 0
  // of a separate `saved` region of front_bytes, the backward's own scratch from offset 0 of the
  // workspace (bytes). Otherwise everything is in the workspace and front_bytes is 0.
  bool split = false;
  std::size_t front_bytes = 0;
};

template <class T>
Plan make_plan(const Problem& p, bool backward, bool split = false) {
  Plan pl;
  pl.p = p;
  pl.backward = backward || split;  // a saving forward keeps what the backward reads
  pl.split = split;
  const std::int64_t B = p.batch, H = p.heads, L = p.length, dk = p.dk, dv = p.dv, C = p.chunk;
  pl.hs = p.has_state ? 1 : 0;
  if (!p.tail) {
    pl.n = static_cast<int>(p.chunks);
    pl.j0 = 1 - pl.hs;
    pl.nabs = std::max(0, pl.n - pl.j0);
    pl.j_first = p.has_state ? 0 : 2;
    pl.lq = L;
    pl.q_row0 = std::min<std::int64_t>(pl.j_first * C, L);
    pl.q_rows = L - pl.q_row0;
  } else if (p.has_state) {
    pl.n = 1;
    pl.nabs = p.absorbs ? 1 : 0;
    pl.lq = L;
    pl.q_rows = L;
  }
  pl.slice = kTensorCores<T> ? kernels::kTcSlice : kernels::kSimtSlice;
  pl.nsl = static_cast<int>(dv / pl.slice);
  std::size_t off = 0, front = 0;
  auto take_in = [](std::size_t& at, std::int64_t count, std::size_t elem) {
    const std::size_t o = at;
    at += (static_cast<std::size_t>(count) * elem + 255) & ~static_cast<std::size_t>(255);
    return o;
  };
  auto take = [&](std::int64_t count, std::size_t elem) { return take_in(off, count, elem); };
  auto take_front = [&](std::int64_t count, std::size_t elem) { return take_in(split ? front : off, count, elem); };
  const std::int64_t na = pl.nabs, bh = B * H;
  pl.qhat = take_front(bh * pl.lq * dk, sizeof(T));
  pl.khat = take_front(bh * na * C * dk, sizeof(T));
  pl.kappa = take_front(bh * na * C * dk, sizeof(T));
  pl.kstat = take_front(bh * na * kernels::row_blocks(C) * dk, sizeof(float2));
  pl.ell = take_front(bh * na * dk, sizeof(float));
  pl.rho = take_front(bh * na * dk, sizeof(float));
  pl.resets = take_front(B * na, 1);
  if constexpr (kTensorCores<T>) {
    pl.ghi = take_front(bh * na * dk * dk, 2);
    pl.glo = take_front(bh * na * dk * dk, 2);
  } else {
    pl.ghi = take_front(bh * na * dk * dk, sizeof(float));
    pl.glo = pl.ghi;
  }
  pl.w = take_front(bh * na * dk * dv, sizeof(float));
  pl.mt = take_front(bh * pl.n * dk * dv, sizeof(T));
  if (pl.backward) {
    pl.abar = take_front(bh * na * dk, sizeof(float));
    pl.anew = take_front(bh * na * dk, sizeof(float));
  }
  if (backward) {  // the backward's own scratch
    pl.e = take(bh * pl.n * dk * dv, sizeof(float));
    pl.gut = take(bh * na * dv * dk, sizeof(T));
    pl.yneg = take(bh * na * dk * dk, sizeof(T));
    pl.ynegt = take(bh * na * dk * dk, sizeof(T));
    pl.parts = take(bh * na * 2 * pl.nsl * dk, sizeof(float));
    pl.gell = take(bh * na * dk, sizeof(float));
    pl.svec = take(bh * na * dk, sizeof(float));
  }
  pl.bytes = off;
  pl.front_bytes = front;
  return pl;
}

template <class V>
Status check_aligned16(const V& t, const char* name) {
  if (t.empty()) return Status::success();
  using E = std::remove_cv_t<std::remove_pointer_t<decltype(t.data)>>;
  constexpr std::int64_t vec = 16 / static_cast<std::int64_t>(sizeof(E));
  bool ok = reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0;
  for (int i = 0; i + 1 < t.rank; ++i)
    if (t.shape[i] > 1 && t.strides[i] % vec != 0) ok = false;
  if (!ok)
    return unsupported(std::string("working memory (CUDA): ") + name +
                       " must be 16-byte aligned, with outer strides that are multiples of 16 bytes");
  return Status::success();
}

template <class T, class A>
Status check_common(const A& a, const Problem& p) {
  if (p.dk % 64 != 0 || p.dk > 256)
    return unsupported("working memory (CUDA): dk must be 64, 128, 192 or 256, got " + std::to_string(p.dk));
  if (p.dv % 64 != 0)
    return unsupported("working memory (CUDA): dv must be a multiple of 64, got " + std::to_string(p.dv));
  // The tensor-core engine steps k (the chunk's tokens in W, G and E) by whole 64-token blocks; the
  // fp32 engine predicates k, rows and columns, so any chunk works there.
  if (kTensorCores<T> && p.chunk % 64 != 0)
    return unsupported("working memory (CUDA): with 16-bit types the chunk size must be a multiple of 64, got " +
                       std::to_string(p.chunk) + " (float takes any chunk)");
  if (p.batch * p.heads * (p.dv / 32) > 0x7fffffff || p.length > 0x3fffffff)
    return unsupported("working memory (CUDA): problem too large");
  GECKO_RETURN_IF_ERROR(check_aligned16(a.aq, "aq"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.ak, "ak"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.v, "v"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.memory, "memory"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.prev_k, "prev_k"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.prev_v, "prev_v"));
  return Status::success();
}

// The tensor-core path needs sm_80 or newer (bf16 mma.sync, cp.async).
template <class T>
Status check_device() {
  if constexpr (kTensorCores<T>) {
    const DeviceInfo* dev = nullptr;
    GECKO_RETURN_IF_ERROR(current_device_info(&dev));
    if (dev->major < 8) return unsupported("working memory (CUDA): 16-bit types need compute capability 8.0 or newer");
  }
  return Status::success();
}

template <class T>
Status check_supported(const ForwardArgs<T>& a, const Problem& p) {
  GECKO_RETURN_IF_ERROR(check_common<T>(a, p));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.out, "out"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.memory_out, "memory_out"));
  return Status::success();
}

template <class T>
Status check_supported(const BackwardArgs<T>& a, const Problem& p) {
  GECKO_RETURN_IF_ERROR(check_common<T>(a, p));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dout, "dout"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dmemory_out, "dmemory_out"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.daq, "daq"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dak, "dak"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dv, "dv"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dmemory, "dmemory"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dprev_k, "dprev_k"));
  GECKO_RETURN_IF_ERROR(check_aligned16(a.dprev_v, "dprev_v"));
  return Status::success();
}

// ---- descriptors ---------------------------------------------------------------------------------

// A token-major [B, L, H, d] tensor as per-chunk [C, d] matrices.
template <class V>
Mat token_mat(const V& t, std::int64_t C) {
  if (t.empty()) return Mat{};
  return Mat{t.data, t.stride(0), t.stride(2), C * t.stride(1), t.stride(1)};
}
// A dense workspace array [B, H, nb, rows, cols] as per-chunk [rows, cols] matrices.
inline Mat ws_mat(const void* p, std::int64_t H, std::int64_t nb, std::int64_t rows, std::int64_t cols) {
  const std::int64_t per = rows * cols;
  return Mat{p, H * nb * per, nb * per, per, cols};
}
// The q̂ / k̂ / κ workspace rows [B, H, rows, dk] as per-chunk [C, dk] matrices.
inline Mat row_mat(const void* p, std::int64_t H, std::int64_t rows, std::int64_t C, std::int64_t dk) {
  return Mat{p, H * rows * dk, rows * dk, C * dk, dk};
}
inline MatAlt alt(Mat m, Mat other = Mat{}, int off = 0) { return MatAlt{m, other, off}; }

template <class A>
kernels::Docs make_docs(const A& a, const Problem& p) {
  kernels::Docs d;
  d.chunk = p.chunk;
  d.on = p.segments;
  d.has_state = p.has_state;
  if (p.segments) {
    d.seg = a.segment_idx.data;
    d.seg_sb = a.segment_idx.stride(0);
    d.seg_st = a.segment_idx.stride(1);
    if (!a.prev_segment_idx.empty()) {
      d.pseg = a.prev_segment_idx.data;
      d.pseg_sb = a.prev_segment_idx.stride(0);
      d.pseg_st = a.prev_segment_idx.stride(1);
    }
    if (!a.prev_segment_count.empty()) {
      d.pcount = a.prev_segment_count.data;
      d.pcount_s = a.prev_segment_count.stride(0);
    }
  }
  return d;
}

inline Status sm_count(int& n) {
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  n = dev->sm_count;
  return Status::success();
}

// Tile counts of the engine that runs T (both engines use the same descriptors).
template <class T, int EPI>
void plan_tiles(kernels::GemmParams& gp) {
  constexpr bool tc = kTensorCores<T>;
  constexpr int BM = tc ? kernels::tc_gemm_bm<EPI>() : kernels::kSimtBM;
  constexpr int BN = tc ? kernels::kTcBN : kernels::kSimtBN;
  gp.total_tiles = 0;
  for (int i = 0; i < gp.nprob; ++i) {
    kernels::GemmProblem& q = gp.prob[i];
    q.mt = (q.M + BM - 1) / BM;
    q.ntl = (q.N + BN - 1) / BN;
    q.tiles = static_cast<std::int64_t>(gp.B) * gp.H * q.nb * q.mt * q.ntl;
    gp.total_tiles += q.tiles;
  }
  int k = 0;
  for (int s = 0; s < gp.prob[0].nseg; ++s) k += gp.prob[0].seg[s].k;
  gp.ksteps = k / kernels::kTcBK;
}

// Launches the kernels on a stream (the launcher's steps are written against this interface).
struct CudaExec {
  cudaStream_t stream = nullptr;

  // blocks: the query blocks (B * H * p.q_blocks) then the key blocks, one kernel each.
  template <class T>
  Status feature_rows(const kernels::FeatParams& p, std::int64_t blocks) const {
    const std::int64_t nq = std::min<std::int64_t>(blocks, static_cast<std::int64_t>(p.B) * p.H * p.q_blocks);
    if (nq > 0) {
      kernels::query_rows_kernel<T><<<static_cast<unsigned>(nq), kernels::kThreads, 0, stream>>>(p);
      GECKO_RETURN_IF_ERROR(last_launch_status("working_memory feature rows (queries)"));
    }
    if (blocks > nq) {
      kernels::key_rows_kernel<T><<<static_cast<unsigned>(blocks - nq), kernels::kThreads, 0, stream>>>(p);
      GECKO_RETURN_IF_ERROR(last_launch_status("working_memory feature rows (keys)"));
    }
    return Status::success();
  }
  Status stats(const kernels::StatsParams& p, std::int64_t blocks) const {
    if (p.nabs > 0) {
      kernels::stats_ell_kernel<><<<static_cast<unsigned>(blocks * p.nabs), kernels::kThreads, 0, stream>>>(p);
      GECKO_RETURN_IF_ERROR(last_launch_status("working_memory stats (ell)"));
    }
    kernels::stats_kernel<><<<static_cast<unsigned>(blocks), kernels::kThreads, 0, stream>>>(p);
    return last_launch_status("working_memory stats");
  }
  template <class T>
  Status kappa(const kernels::KappaParams& p, std::int64_t blocks) const {
    kernels::kappa_kernel<T><<<static_cast<unsigned>(blocks), kernels::kThreads, 0, stream>>>(p);
    return last_launch_status("working_memory kappa");
  }
  template <class T>
  Status decode_read(const kernels::DecodeParams& p) const {
    const dim3 grid(static_cast<unsigned>(p.dv / kernels::kDecodeCols), static_cast<unsigned>(p.B * p.H));
    switch (p.L) {
      case 1: kernels::decode_read_kernel<T, 1><<<grid, kernels::kThreads, 0, stream>>>(p); break;
      case 2: kernels::decode_read_kernel<T, 2><<<grid, kernels::kThreads, 0, stream>>>(p); break;
      case 3: kernels::decode_read_kernel<T, 3><<<grid, kernels::kThreads, 0, stream>>>(p); break;
      default: kernels::decode_read_kernel<T, 4><<<grid, kernels::kThreads, 0, stream>>>(p); break;
    }
    return last_launch_status("working_memory decode read");
  }
  Status grad_stats(const kernels::GradStatsParams& p, std::int64_t blocks) const {
    kernels::grad_stats_kernel<><<<static_cast<unsigned>(blocks), kernels::kThreads, 0, stream>>>(p);
    return last_launch_status("working_memory gradient stats");
  }

  // Launches the GEMM (nothing when there are no tiles).
  template <class T, bool AR, bool BR, int EPI>
  Status gemm(kernels::GemmParams& gp, const char* what) const {
    plan_tiles<T, EPI>(gp);
    if (gp.total_tiles == 0) return Status::success();
    if (gp.total_tiles > 0x7fffffff) return unsupported(std::string(what) + ": more than 2^31 - 1 tiles");
    int sms = 0;
    GECKO_RETURN_IF_ERROR(sm_count(sms));
    if constexpr (kTensorCores<T>) {
      constexpr int BM = kernels::tc_gemm_bm<EPI>();
      constexpr int smem = kernels::tc_gemm_smem_bytes<BM>();
      auto fn = kernels::gemm_tc_kernel<T, AR, BR, BM, EPI>;
      GECKO_CUDA_RETURN(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      const int grid = static_cast<int>(std::min<std::int64_t>(gp.total_tiles, sms));
      fn<<<grid, kernels::kThreads, smem, stream>>>(gp);
    } else {
      const int grid = static_cast<int>(std::min<std::int64_t>(gp.total_tiles, static_cast<std::int64_t>(sms) * 8));
      kernels::gemm_simt_kernel<AR, BR, EPI><<<grid, kernels::kThreads, 0, stream>>>(gp);
    }
    return last_launch_status(what);
  }

  template <class T, bool kBwd>
  Status scan(const kernels::ScanParams& sp, std::int64_t grid) const {
    if constexpr (kTensorCores<T>) {
      const int smem = kernels::tc_scan_smem_bytes(sp.dk);
      auto fn = kernels::scan_tc_kernel<T, kBwd>;
      GECKO_CUDA_RETURN(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      fn<<<static_cast<unsigned>(grid), kernels::kThreads, smem, stream>>>(sp);
    } else {
      const int smem = sp.dk * kernels::kSimtSlice * 4;
      kernels::scan_simt_kernel<kBwd><<<static_cast<unsigned>(grid), kernels::kThreads, smem, stream>>>(sp);
    }
    return last_launch_status(kBwd ? "working_memory backward scan" : "working_memory scan");
  }

  template <class T>
  Status zero_rows(const TensorView<T>& t, std::int64_t r0, std::int64_t rows) const {
    if (t.empty() || rows <= 0) return Status::success();
    const std::int64_t n = t.size(0) * rows * t.size(2) * t.size(3);
    const unsigned grid = static_cast<unsigned>(std::min<std::int64_t>((n + 255) / 256, 4096));
    kernels::zero_rows_kernel<T><<<grid, 256, 0, stream>>>(t.data, t.stride(0), t.stride(1), t.stride(2),
                                                           static_cast<int>(t.size(0)), static_cast<int>(t.size(2)),
                                                           r0, rows, static_cast<int>(t.size(3)));
    return last_launch_status("working_memory zero rows");
  }
};

// Steps 1-5: features, statistics, κ, the chunk products and the forward scan. With `backward`,
// the scan keeps R and the statistics keep Ā, A'; otherwise it writes memory_out / log_norm_out.
template <class T, class A, class Exec>
Status run_front(const A& a, const Plan& pl, char* ws, char* fr, const TensorView<float>* memory_out,
                 const TensorView<float>* log_norm_out, const Exec& ex) {
  const Problem& p = pl.p;
  const std::int64_t B = p.batch, H = p.heads, dk = p.dk, dv = p.dv, C = p.chunk;
  const kernels::Docs docs = make_docs(a, p);
  const int kbn = static_cast<int>(kernels::row_blocks(C));

  // 1. feature rows.
  kernels::FeatParams fp;
  fp.B = static_cast<int>(B);
  fp.H = static_cast<int>(H);
  fp.dk = static_cast<int>(dk);
  fp.chunk = C;
  fp.aq = a.aq.data;
  fp.aq_sb = a.aq.stride(0);
  fp.aq_sh = a.aq.stride(2);
  fp.aq_st = a.aq.stride(1);
  fp.q_row0 = pl.q_row0;
  fp.q_rows = pl.q_rows;
  fp.q_blocks = static_cast<int>(kernels::row_blocks(pl.q_rows));
  fp.qhat = fr + pl.qhat;
  fp.qhat_bh = pl.lq * dk;
  fp.ak = a.ak.data;
  fp.ak_sb = a.ak.stride(0);
  fp.ak_sh = a.ak.stride(2);
  fp.ak_st = a.ak.stride(1);
  if (!a.prev_k.empty()) {
    fp.pk = a.prev_k.data;
    fp.pk_sb = a.prev_k.stride(0);
    fp.pk_sh = a.prev_k.stride(2);
    fp.pk_st = a.prev_k.stride(1);
  }
  fp.nabs = pl.nabs;
  fp.hs = pl.hs;
  fp.khat = fr + pl.khat;
  fp.kstat = reinterpret_cast<float2*>(fr + pl.kstat);
  fp.docs = docs;
  GECKO_RETURN_IF_ERROR(ex.template feature_rows<T>(fp, B * H * (fp.q_blocks + static_cast<std::int64_t>(pl.nabs) * kbn)));

  // 2. statistics and the log-normaliser recurrence.
  kernels::StatsParams sp;
  sp.B = static_cast<int>(B);
  sp.H = static_cast<int>(H);
  sp.dk = static_cast<int>(dk);
  sp.nabs = pl.nabs;
  sp.kbn = kbn;
  sp.j0 = pl.j0;
  sp.has_state = p.has_state;
  if (!a.log_norm.empty()) {
    sp.log_norm = a.log_norm.data;
    sp.ln_sb = a.log_norm.stride(0);
    sp.ln_sh = a.log_norm.stride(1);
  }
  if (log_norm_out && !log_norm_out->empty()) {
    sp.log_norm_out = log_norm_out->data;
    sp.lo_sb = log_norm_out->stride(0);
    sp.lo_sh = log_norm_out->stride(1);
  }
  sp.kstat = reinterpret_cast<const float2*>(fr + pl.kstat);
  sp.ell = reinterpret_cast<float*>(fr + pl.ell);
  sp.rho = reinterpret_cast<float*>(fr + pl.rho);
  if (pl.backward) {
    sp.abar = reinterpret_cast<float*>(fr + pl.abar);
    sp.anew = reinterpret_cast<float*>(fr + pl.anew);
  }
  sp.resets = reinterpret_cast<std::uint8_t*>(fr + pl.resets);
  sp.docs = docs;
  GECKO_RETURN_IF_ERROR(ex.stats(sp, B * H));

  if (pl.nabs > 0) {
    // 3. κ.
    kernels::KappaParams kp;
    kp.B = static_cast<int>(B);
    kp.H = static_cast<int>(H);
    kp.dk = static_cast<int>(dk);
    kp.nabs = pl.nabs;
    kp.hs = pl.hs;
    kp.chunk = C;
    kp.ak = fp.ak;
    kp.ak_sb = fp.ak_sb;
    kp.ak_sh = fp.ak_sh;
    kp.ak_st = fp.ak_st;
    kp.pk = fp.pk;
    kp.pk_sb = fp.pk_sb;
    kp.pk_sh = fp.pk_sh;
    kp.pk_st = fp.pk_st;
    kp.ell = sp.ell;
    kp.kappa = fr + pl.kappa;
    kp.docs = docs;
    GECKO_RETURN_IF_ERROR(ex.template kappa<T>(kp, B * H * pl.nabs * kbn));

    // 4. W = κᵀ V and G = κᵀ K̂ per absorbed chunk, in one grouped launch.
    kernels::GemmParams gp;
    gp.B = static_cast<int>(B);
    gp.H = static_cast<int>(H);
    gp.nprob = 2;
    const Mat kappa = row_mat(fr + pl.kappa, H, pl.nabs * C, C, dk);
    const Mat khat = row_mat(fr + pl.khat, H, pl.nabs * C, C, dk);
    kernels::GemmProblem& w = gp.prob[0];
    w.seg[0] = {alt(kappa), alt(token_mat(a.v, C), token_mat(a.prev_v, C), -pl.hs), static_cast<int>(C)};
    w.M = static_cast<int>(dk);
    w.N = static_cast<int>(dv);
    w.nb = pl.nabs;
    w.epi.mode = kernels::kStoreF32;
    w.epi.out = alt(ws_mat(fr + pl.w, H, pl.nabs, dk, dv));
    kernels::GemmProblem& g = gp.prob[1];
    g.seg[0] = {alt(kappa), alt(khat), static_cast<int>(C)};
    g.M = static_cast<int>(dk);
    g.N = static_cast<int>(dk);
    g.nb = pl.nabs;
    if constexpr (kTensorCores<T>) {
      g.epi.mode = kernels::kStoreHiLo;
      g.epi.out = alt(ws_mat(fr + pl.ghi, H, pl.nabs, dk, dk));
      g.epi.out2 = ws_mat(fr + pl.glo, H, pl.nabs, dk, dk);
    } else {
      g.epi.mode = kernels::kStoreF32;
      g.epi.out = alt(ws_mat(fr + pl.ghi, H, pl.nabs, dk, dk));
    }
    GECKO_RETURN_IF_ERROR((ex.template gemm<T, false, true, kernels::kStoreF32>(gp, "working_memory chunk products")));
  }

  // 5. the scan.
  kernels::ScanParams sc;
  sc.B = static_cast<int>(B);
  sc.H = static_cast<int>(H);
  sc.dk = static_cast<int>(dk);
  sc.dv = static_cast<int>(dv);
  sc.nabs = pl.nabs;
  sc.n = pl.n;
  sc.j0 = pl.j0;
  sc.j_first = pl.j_first;
  if (!a.memory.empty()) {
    sc.mem_in = a.memory.data;
    sc.mi_sb = a.memory.stride(0);
    sc.mi_sh = a.memory.stride(1);
    sc.mi_ld = a.memory.stride(2);
  }
  if (memory_out && !memory_out->empty()) {
    sc.mem_out = memory_out->data;
    sc.mo_sb = memory_out->stride(0);
    sc.mo_sh = memory_out->stride(1);
    sc.mo_ld = memory_out->stride(2);
  }
  sc.g_hi = fr + pl.ghi;
  sc.g_lo = fr + pl.glo;
  sc.w = reinterpret_cast<float*>(fr + pl.w);
  sc.write_r = pl.backward;
  sc.rho = sp.rho;
  sc.resets = sp.resets;
  sc.mt = fr + pl.mt;
  return ex.template scan<T, false>(sc, B * H * pl.nsl);
}

// The readout O_j = Q̂_j M_j (q̂ rows are already zero where the output mask drops a token).
template <class T, class Exec>
Status run_readout(const ForwardArgs<T>& a, const Plan& pl, char* fr, const Exec& ex) {
  const Problem& p = pl.p;
  const std::int64_t H = p.heads, dk = p.dk, dv = p.dv, C = p.chunk;
  kernels::GemmParams gp;
  gp.B = static_cast<int>(p.batch);
  gp.H = static_cast<int>(H);
  kernels::GemmProblem& q = gp.prob[0];
  q.seg[0] = {alt(row_mat(fr + pl.qhat, H, pl.lq, C, dk)), alt(ws_mat(fr + pl.mt, H, pl.n, dk, dv)),
              static_cast<int>(dk)};
  q.M = static_cast<int>(p.tail ? p.length : C);
  q.N = static_cast<int>(dv);
  q.nb = pl.n;
  q.zero_below = pl.j_first;
  q.epi.mode = kernels::kStoreT;
  q.epi.out = alt(token_mat(a.out, C));
  return ex.template gemm<T, true, true, kernels::kStoreT>(gp, "working_memory readout");
}

// Whether a forward is a decoding read (kernel_decode.cuh): a tail call of at most 4 tokens on a
// carried memory that absorbs nothing, with the fp32 state's rows 16-byte aligned.
template <class T>
bool decode_read_applies(const ForwardArgs<T>& a, const Plan& pl) {
  const Problem& p = pl.p;
  if (!p.tail || !p.has_state || pl.nabs != 0 || p.length > kernels::kDecodeRows) return false;
  const auto rows16 = [](const auto& t) {
    return reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0 && t.stride(0) % 4 == 0 && t.stride(1) % 4 == 0 &&
           t.stride(2) % 4 == 0;
  };
  return rows16(a.memory) && (!p.state_after || a.memory_out.empty() || rows16(a.memory_out));
}

template <class T, class Exec>
Status run_decode_read(const ForwardArgs<T>& a, const Plan& pl, const Exec& ex) {
  const Problem& p = pl.p;
  kernels::DecodeParams d;
  d.B = static_cast<int>(p.batch);
  d.H = static_cast<int>(p.heads);
  d.dk = static_cast<int>(p.dk);
  d.dv = static_cast<int>(p.dv);
  d.L = static_cast<int>(p.length);
  d.aq = a.aq.data;
  d.aq_sb = a.aq.stride(0);
  d.aq_st = a.aq.stride(1);
  d.aq_sh = a.aq.stride(2);
  d.mem = a.memory.data;
  d.mi_sb = a.memory.stride(0);
  d.mi_sh = a.memory.stride(1);
  d.mi_ld = a.memory.stride(2);
  d.ln = a.log_norm.data;
  d.ln_sb = a.log_norm.stride(0);
  d.ln_sh = a.log_norm.stride(1);
  if (p.state_after && !a.memory_out.empty() && a.memory_out.data != a.memory.data) {
    d.mem_out = a.memory_out.data;
    d.mo_sb = a.memory_out.stride(0);
    d.mo_sh = a.memory_out.stride(1);
    d.mo_ld = a.memory_out.stride(2);
  }
  if (p.state_after && !a.log_norm_out.empty() && a.log_norm_out.data != a.log_norm.data) {
    d.ln_out = a.log_norm_out.data;
    d.lo_sb = a.log_norm_out.stride(0);
    d.lo_sh = a.log_norm_out.stride(1);
  }
  d.out = a.out.data;
  d.o_sb = a.out.stride(0);
  d.o_st = a.out.stride(1);
  d.o_sh = a.out.stride(2);
  d.docs = make_docs(a, p);
  return ex.template decode_read<T>(d);
}

// The forward and backward against an executor (CudaExec launches the kernels): run_forward /
// run_backward validate, plan and check a call, the *_planned steps run a planned one.
// Validates a call and plans it, with a `saved` region (saved_bytes of it, from saved_bytes()) or
// without (null). what: "forward" or "backward", for the messages.
template <class T, class A>
Status plan_call(const A& a, bool backward, const void* saved, std::size_t saved_bytes, const char* what, Plan& pl) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(check_supported(a, p));
  if (saved && p.tail)
    return invalid_argument(std::string("working memory ") + what + ": `saved` is for the full path (L >= chunk)");
  pl = make_plan<T>(p, backward, saved != nullptr);
  if (saved && saved_bytes < pl.front_bytes)
    return invalid_argument(std::string("working memory ") + what + ": `saved` needs " +
                            std::to_string(pl.front_bytes) + " bytes, got " + std::to_string(saved_bytes));
  return Status::success();
}

inline Status check_plan_workspace(const Plan& pl, const void* workspace, std::size_t workspace_bytes,
                                   const char* what) {
  if (workspace_bytes < pl.bytes || (pl.bytes && !workspace))
    return invalid_argument(std::string("working memory ") + what + " needs " + std::to_string(pl.bytes) +
                            " bytes of workspace, got " + std::to_string(workspace_bytes));
  return Status::success();
}

// The forward of a planned call (plan_call; the workspace checked). With `saved`, the forward
// keeps there what the backward reads, and a backward given the same region skips recomputing it.
template <class T, class Exec>
Status run_forward_planned(const ForwardArgs<T>& a, const Plan& pl, char* ws, char* saved, const Exec& ex) {
  const Problem& p = pl.p;
  char* fr = saved ? saved : ws;
  const TensorView<float>* mo = p.state_after ? &a.memory_out : nullptr;
  const TensorView<float>* lo = p.state_after ? &a.log_norm_out : nullptr;
  if (p.tail && !p.has_state) {  // the first chunk of a stream: zeros, and maybe the empty state
    GECKO_RETURN_IF_ERROR(ex.zero_rows(a.out, 0, p.length));
    if (!p.creates) return Status::success();
  }
  if (!saved && decode_read_applies(a, pl)) return run_decode_read(a, pl, ex);
  GECKO_RETURN_IF_ERROR(run_front<T>(a, pl, ws, fr, mo, lo, ex));
  if (pl.n == 0) return Status::success();
  return run_readout(a, pl, fr, ex);
}

template <class T, class Exec>
Status run_forward(const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, const Exec& ex,
                   void* saved = nullptr, std::size_t saved_bytes = 0) {
  Plan pl;
  GECKO_RETURN_IF_ERROR(plan_call<T>(a, false, saved, saved_bytes, "forward", pl));
  GECKO_RETURN_IF_ERROR(check_plan_workspace(pl, workspace, workspace_bytes, "forward"));
  return run_forward_planned<T>(a, pl, static_cast<char*>(workspace), static_cast<char*>(saved), ex);
}

// The backward of a planned call. With `saved` (written by a saving forward of the same inputs),
// the front is not recomputed; it is only read (the reverse scan, the products and the epilogues
// write the workspace's regions and the caller's gradients).
template <class T, class Exec>
Status run_backward_planned(const BackwardArgs<T>& a, const Plan& pl, char* ws, const char* saved, const Exec& ex) {
  using namespace kernels;
  const Problem& p = pl.p;
  char* fr = saved ? const_cast<char*>(saved) : ws;
  const std::int64_t B = p.batch, H = p.heads, dk = p.dk, dv = p.dv, C = p.chunk, L = p.length;
  if (!saved) GECKO_RETURN_IF_ERROR(run_front<T>(a, pl, ws, fr, nullptr, nullptr, ex));

  const Mat qhat = row_mat(fr + pl.qhat, H, pl.lq, C, dk);
  const Mat kappa = row_mat(fr + pl.kappa, H, pl.nabs * C, C, dk);
  const Mat khat = row_mat(fr + pl.khat, H, pl.nabs * C, C, dk);
  const Mat mt = ws_mat(fr + pl.mt, H, pl.n, dk, dv);
  const Mat gut = ws_mat(ws + pl.gut, H, pl.nabs, dv, dk);
  const Mat yneg = ws_mat(ws + pl.yneg, H, pl.nabs, dk, dk);
  const Mat ynegt = ws_mat(ws + pl.ynegt, H, pl.nabs, dk, dk);
  auto gemm = [&]() {
    GemmParams gp;
    gp.B = static_cast<int>(B);
    gp.H = static_cast<int>(H);
    return gp;
  };

  // E_j = Q̂_jᵀ dO_j.
  {
    GemmParams gp = gemm();
    GemmProblem& q = gp.prob[0];
    q.seg[0] = {alt(qhat), alt(token_mat(a.dout, C)), static_cast<int>(C)};
    q.M = static_cast<int>(dk);
    q.N = static_cast<int>(dv);
    q.nb = pl.n;
    q.zero_below = pl.j_first;
    q.epi.mode = kStoreF32;
    q.epi.out = alt(ws_mat(ws + pl.e, H, pl.n, dk, dv));
    GECKO_RETURN_IF_ERROR((ex.template gemm<T, false, true, kStoreF32>(gp, "working_memory E")));
  }

  // The reverse scan.
  {
    ScanParams sc;
    sc.B = static_cast<int>(B);
    sc.H = static_cast<int>(H);
    sc.dk = static_cast<int>(dk);
    sc.dv = static_cast<int>(dv);
    sc.nabs = pl.nabs;
    sc.n = pl.n;
    sc.j0 = pl.j0;
    sc.j_first = pl.j_first;
    sc.g_hi = fr + pl.ghi;
    sc.g_lo = fr + pl.glo;
    sc.w = reinterpret_cast<float*>(fr + pl.w);
    sc.rho = reinterpret_cast<const float*>(fr + pl.rho);
    sc.resets = reinterpret_cast<const std::uint8_t*>(fr + pl.resets);
    sc.mt = fr + pl.mt;
    if (!a.dmemory_out.empty()) {
      sc.dmem_out = a.dmemory_out.data;
      sc.do_sb = a.dmemory_out.stride(0);
      sc.do_sh = a.dmemory_out.stride(1);
      sc.do_ld = a.dmemory_out.stride(2);
    }
    if (!a.dmemory.empty()) {
      sc.dmem = a.dmemory.data;
      sc.dm_sb = a.dmemory.stride(0);
      sc.dm_sh = a.dmemory.stride(1);
      sc.dm_ld = a.dmemory.stride(2);
    }
    sc.e = reinterpret_cast<const float*>(ws + pl.e);
    sc.gut = ws + pl.gut;
    sc.parts = reinterpret_cast<float*>(ws + pl.parts);
    GECKO_RETURN_IF_ERROR((ex.template scan<T, true>(sc, B * H * pl.nsl)));
  }

  // gρ, gA, gℓ and s.
  {
    GradStatsParams gs;
    gs.B = static_cast<int>(B);
    gs.H = static_cast<int>(H);
    gs.dk = static_cast<int>(dk);
    gs.nabs = pl.nabs;
    gs.nsl = pl.nsl;
    gs.parts = reinterpret_cast<const float*>(ws + pl.parts);
    gs.rho = reinterpret_cast<const float*>(fr + pl.rho);
    gs.abar = reinterpret_cast<const float*>(fr + pl.abar);
    gs.anew = reinterpret_cast<const float*>(fr + pl.anew);
    gs.resets = reinterpret_cast<const std::uint8_t*>(fr + pl.resets);
    if (!a.dlog_norm_out.empty()) {
      gs.dln_out = a.dlog_norm_out.data;
      gs.do_sb = a.dlog_norm_out.stride(0);
      gs.do_sh = a.dlog_norm_out.stride(1);
    }
    if (!a.dlog_norm.empty()) {
      gs.dln = a.dlog_norm.data;
      gs.dl_sb = a.dlog_norm.stride(0);
      gs.dl_sh = a.dlog_norm.stride(1);
    }
    gs.gell = reinterpret_cast<float*>(ws + pl.gell);
    gs.svec = reinterpret_cast<float*>(ws + pl.svec);
    GECKO_RETURN_IF_ERROR(ex.grad_stats(gs, B * H));
  }

  if (pl.nabs > 0) {
    // -Yᵀ and -Y, Y = gU M̄ᵀ (zero through a reset or an empty memory).
    GemmParams gp = gemm();
    GemmProblem& q = gp.prob[0];
    q.seg[0] = {alt(mt, Mat{}, pl.j0), alt(gut), static_cast<int>(dv)};
    q.M = static_cast<int>(dk);
    q.N = static_cast<int>(dk);
    q.nb = pl.nabs;
    q.zero_below = pl.j_first - pl.j0;
    q.zflag = reinterpret_cast<const std::uint8_t*>(fr + pl.resets);
    q.zflag_sb = pl.nabs;
    q.epi.mode = kStoreYneg;
    q.epi.out = alt(ynegt);
    q.epi.out2 = yneg;
    GECKO_RETURN_IF_ERROR((ex.template gemm<T, true, true, kStoreYneg>(gp, "working_memory Y")));
  }

  // daq: softmax-over-features backward of dO_j M_jᵀ.
  {
    GemmParams gp = gemm();
    GemmProblem& q = gp.prob[0];
    q.seg[0] = {alt(token_mat(a.dout, C)), alt(mt), static_cast<int>(dv)};
    q.M = static_cast<int>(C);
    q.N = static_cast<int>(dk);
    q.nb = pl.n;
    q.zero_below = pl.j_first;
    q.epi.mode = kDaq;
    q.epi.out = alt(token_mat(a.daq, C));
    q.epi.f1 = qhat;
    GECKO_RETURN_IF_ERROR((ex.template gemm<T, true, false, kDaq>(gp, "working_memory daq")));
  }

  if (pl.nabs > 0) {
    // dv (and dprev_v) = κ gU.
    {
      GemmParams gp = gemm();
      GemmProblem& q = gp.prob[0];
      q.seg[0] = {alt(kappa), alt(gut), static_cast<int>(dk)};
      q.M = static_cast<int>(C);
      q.N = static_cast<int>(dv);
      q.nb = pl.nabs;
      q.epi.mode = kStoreT;
      q.epi.out = alt(token_mat(a.dv, C), token_mat(a.dprev_v, C), -pl.hs);
      GECKO_RETURN_IF_ERROR((ex.template gemm<T, true, false, kStoreT>(gp, "working_memory dv")));
    }
    // dak (and dprev_k).
    {
      GemmParams gp = gemm();
      GemmProblem& q = gp.prob[0];
      q.seg[0] = {alt(kappa), alt(yneg), static_cast<int>(dk)};
      q.seg[1] = {alt(token_mat(a.v, C), token_mat(a.prev_v, C), -pl.hs), alt(gut), static_cast<int>(dv)};
      q.seg[2] = {alt(khat), alt(ynegt), static_cast<int>(dk)};
      q.nseg = 3;
      q.M = static_cast<int>(C);
      q.N = static_cast<int>(dk);
      q.nb = pl.nabs;
      q.epi.mode = kDak;
      q.epi.out = alt(token_mat(a.dak, C), token_mat(a.dprev_k, C), -pl.hs);
      q.epi.f1 = kappa;
      q.epi.f2 = khat;
      q.epi.v1 = ws_mat(ws + pl.svec, H, pl.nabs, 1, dk);
      q.epi.v2 = ws_mat(ws + pl.gell, H, pl.nabs, 1, dk);
      GECKO_RETURN_IF_ERROR((ex.template gemm<T, true, true, kDak>(gp, "working_memory dak")));
    }
  }
  // The last chunk is never absorbed in this call: its k and v get no gradient here.
  GECKO_RETURN_IF_ERROR(ex.zero_rows(a.dak, L - C, C));
  return ex.zero_rows(a.dv, L - C, C);
}

template <class T, class Exec>
Status run_backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, const Exec& ex,
                    const void* saved = nullptr, std::size_t saved_bytes = 0) {
  Plan pl;
  GECKO_RETURN_IF_ERROR(plan_call<T>(a, true, saved, saved_bytes, "backward", pl));
  GECKO_RETURN_IF_ERROR(check_plan_workspace(pl, workspace, workspace_bytes, "backward"));
  return run_backward_planned<T>(a, pl, static_cast<char*>(workspace), static_cast<const char*>(saved), ex);
}

}  // namespace detail

// What a training forward may keep for its backward, so that the backward does not recompute the
// features, statistics, chunk products and the forward scan (about 12 bytes per token and value
// column at the 7B shapes). Caller-owned device memory of saved_bytes(); full path only. A forward
// given it writes it, and a backward of the same inputs given it reads it (it may run any number
// of times). Without it (nullptr) each pass computes everything itself.
struct Saved {
  void* data = nullptr;
  std::size_t bytes = 0;
};

template <class T>
Status saved_bytes(const ForwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_supported(a, p));
  if (p.tail) return invalid_argument("working memory: `saved` is for the full path (L >= chunk)");
  bytes = detail::make_plan<T>(p, false, true).front_bytes;
  return Status::success();
}

// saved_bytes() of a call without a carried state or chunk (a training call) of these sizes.
template <class T>
std::size_t saved_bytes_for(std::int64_t B, std::int64_t L, std::int64_t H, std::int64_t dk, std::int64_t dv,
                            std::int64_t C) {
  Problem p;
  p.batch = B;
  p.length = L;
  p.heads = H;
  p.dk = dk;
  p.dv = dv;
  p.chunk = C;
  p.chunks = L / C;
  return detail::make_plan<T>(p, false, true).front_bytes;
}

// Bytes of workspace forward() needs for this problem (with_saved: when it is given a Saved).
template <class T>
Status forward_workspace_size(const ForwardArgs<T>& a, std::size_t& bytes, bool with_saved = false) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_supported(a, p));
  bytes = detail::make_plan<T>(p, false, with_saved && !p.tail).bytes;
  return Status::success();
}

// Bytes of workspace backward() needs for this problem (with_saved: when it is given a Saved).
template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes, bool with_saved = false) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_supported(a, p));
  bytes = detail::make_plan<T>(p, true, with_saved).bytes;
  return Status::success();
}

// Forward, full path (L >= C) or tail path (L < C), as cpu::forward. memory_out / log_norm_out may
// be the very views of memory / log_norm.
template <class T>
Status forward(const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream,
               const Saved* saved = nullptr) {
  static_assert(!std::is_same_v<T, double>, "the CUDA working memory takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(detail::check_device<T>());
  return detail::run_forward<T>(a, workspace, workspace_bytes, detail::CudaExec{stream}, saved ? saved->data : nullptr,
                                saved ? saved->bytes : 0);
}

// Backward of the full path, as cpu::backward.
template <class T>
Status backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream,
                const Saved* saved = nullptr) {
  static_assert(!std::is_same_v<T, double>, "the CUDA working memory takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(detail::check_device<T>());
  return detail::run_backward<T>(a, workspace, workspace_bytes, detail::CudaExec{stream}, saved ? saved->data : nullptr,
                                 saved ? saved->bytes : 0);
}

}  // namespace gecko::working_memory::cuda
