// Adaptive working memory with its per-chunk products on cuBLASLt: the entry points that take a
// linear::cuda::Context (forward / backward / *_workspace_size overloads below).
//
// Why. At the 7B shapes (dk = 256, dv = 2048, C = 2048) almost all of the op's FLOPs are in
// per-chunk products: W = κᵀV, the readout O = Q̂M, E = Q̂ᵀdO, dv = κ gU, and the products under the
// daq / dak epilogues (each 2 dk dv C per chunk). The engine of kernel_gemm_tc.cuh (mma.sync) runs
// them at ~140 TFLOP/s on an H100; cuBLASLt's strided-batch GEMMs several times faster.
//
// CublasExec is the executor of launch.cuh's steps with `gemm` redirected, per problem:
//   plain stores (kStoreT / kStoreF32)  one pointer-array GEMM over every (b, h) and chunk
//                                       (kernel_gemm_pointers.cuh writes the arrays; a single
//                                       (b, h): one strided batch over the chunks); chunks whose
//                                       operand or output is the carried chunk, and chunks with a
//                                       zero product, one by one
//   G's hi / lo split (kStoreHiLo)      the fp32 product, then split_hilo_kernel
//   daq / dak (row epilogues)           the products into fp32 accumulators, then
//                                       row_epilogue_kernel (kernel_row_epilogue.cuh)
//   anything else (Y, run-time zero flags, and decode-sized problems: CublasOptions) the engine.
// Features, statistics and the scans are unchanged, so results differ from launch.cuh's only in
// the summation order of the products. fp32 keeps the engine throughout.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "gecko/ops/linear/context.hpp"
#include "gecko/ops/linear/launch.cuh"  // cuda_data_type<T>, detail::check_workspace
#include "gecko/ops/working_memory/kernel_gemm_pointers.cuh"
#include "gecko/ops/working_memory/kernel_row_epilogue.cuh"
#include "gecko/ops/working_memory/launch.cuh"

namespace gecko::working_memory::cuda {

struct CublasOptions {
  // Products under this many FLOPs stay on the engine: at decode sizes one engine launch beats
  // B * H cuBLASLt calls. (Tests set 0 to send every product to cuBLASLt.)
  double min_gemm_flops = 1e8;
};

namespace detail {

struct CublasExec : CudaExec {
  linear::cuda::Context* ctx = nullptr;
  void* gemm_ws = nullptr;     // ctx->gemm_workspace_bytes(), 256-byte aligned
  float* acc0 = nullptr;       // backward: two fp32 [chunks, C, dk] accumulator sets for daq / dak
  float* acc1 = nullptr;
  std::int64_t acc_chunks = 0;  // chunks each set holds per (b, h)
  float* g32 = nullptr;         // fp32 G before its hi / lo split (16-bit T)
  std::size_t g32_floats = 0;
  const void** ptrs = nullptr;  // pointer-array batches: 3 arrays of up to ptr_slots pointers
  std::int64_t ptr_slots = 0;
  double min_flops = CublasOptions{}.min_gemm_flops;

  static double flops(const kernels::GemmParams& gp, const kernels::GemmProblem& q) {
    int k = 0;
    for (int s = 0; s < q.nseg; ++s) k += q.seg[s].k;
    return 2.0 * gp.B * gp.H * q.nb * static_cast<double>(q.M) * q.N * k;
  }

  template <class T, bool AR, bool BR, int EPI>
  Status gemm(kernels::GemmParams& gp, const char* what) const {
    constexpr bool plain = EPI == kernels::kStoreT || EPI == kernels::kStoreF32;
    constexpr bool row_epi = EPI == kernels::kDaq || EPI == kernels::kDak;
    if constexpr (!kTensorCores<T> || !(plain || row_epi)) {
      return CudaExec::gemm<T, AR, BR, EPI>(gp, what);
    } else {
      kernels::GemmParams rest = gp;
      rest.nprob = 0;
      for (int i = 0; i < gp.nprob; ++i) {
        const kernels::GemmProblem& q = gp.prob[i];
        if (flops(gp, q) < min_flops) {  // decode-sized: one engine launch beats B * H GEMM calls
          rest.prob[rest.nprob++] = q;
          continue;
        }
        if (plain && q.epi.mode == kernels::kStoreHiLo && q.nseg == 1 && !q.zflag && g32 &&
            static_cast<std::size_t>(gp.B) * gp.H * q.nb * q.M * q.N <= g32_floats) {
          GECKO_RETURN_IF_ERROR((hilo<T, AR, BR>(gp, q)));
          continue;
        }
        const bool ours = !q.zflag && q.epi.mode == EPI &&
                          (plain ? q.nseg == 1 : acc0 && q.nb <= acc_chunks && q.N <= 256);
        if (!ours) {
          rest.prob[rest.nprob++] = q;
          continue;
        }
        if constexpr (plain) {
          using Out = std::conditional_t<EPI == kernels::kStoreT, T, float>;
          GECKO_RETURN_IF_ERROR((products<T, AR, BR, Out>(gp, q, q.seg[0], q.epi.out, 0.f, true)));
        } else {
          GECKO_RETURN_IF_ERROR((row_epilogue<T, AR, BR, EPI>(gp, q)));
        }
      }
      if (rest.nprob == 0) return Status::success();
      return CudaExec::gemm<T, AR, BR, EPI>(rest, what);
    }
  }

 private:
  // out (per chunk, M x N) [+]= A B over segment s for every chunk of q: row-major A[M, K] stored
  // [M][K] (AR) or [K][M], B[K, N] stored [K][N] (BR) or [N][K]; as column-major cuBLASLt sees it,
  // outᵀ (N x M) = Bᵀ Aᵀ. Chunks below q.zero_below get zeros (zero_fill) or nothing; chunks whose
  // operand or output index is negative (the carried chunk) run one by one, the rest as one
  // pointer-array batch over every (b, h) (or, for a single (b, h) or without pointer slots, one
  // strided batch per (b, h)).
  template <class T, bool AR, bool BR, class Out>
  Status products(const kernels::GemmParams& gp, const kernels::GemmProblem& q, const kernels::Segment& s,
                  const kernels::MatAlt& out, float beta, bool zero_fill) const {
    int regular = 0;
    for (const kernels::MatAlt* m : {&s.a, &s.b, &out}) regular = std::max(regular, -m->off);
    const int zero_end = std::min(q.zero_below, q.nb);
    const int c_batch = std::max(zero_end, regular);
    const std::int64_t table = static_cast<std::int64_t>(gp.B) * gp.H * (q.nb - c_batch);
    const bool one_call = gp.B * gp.H > 1 && c_batch < q.nb && ptrs && table <= ptr_slots;
    // The zero chunks of every head as one rectangle per batch row when they tile the output
    // densely (heads side by side in a row, chunks one after another: a token-major output), as
    // the readout's are: one memset instead of one per (head, chunk).
    const kernels::Mat& om = out.m;
    const bool zero_block = zero_fill && zero_end > 0 && out.off >= 0 && om.sh == q.N && om.sc == q.M * om.ld &&
                            static_cast<std::int64_t>(gp.H) * q.N <= om.ld;
    for (int b = 0; zero_block && b < gp.B; ++b)
      GECKO_CUDA_RETURN(cudaMemset2DAsync(kernels::mat_at<Out>(om, b, 0, out.off), static_cast<std::size_t>(om.ld) * sizeof(Out),
                                          0, static_cast<std::size_t>(gp.H) * q.N * sizeof(Out),
                                          static_cast<std::size_t>(zero_end) * q.M, stream));
    for (int b = 0; b < gp.B; ++b)
      for (int h = 0; h < gp.H; ++h) {
        for (int c = 0; zero_fill && !zero_block && c < zero_end; ++c) {
          std::int64_t ld = 0;
          Out* o = kernels::mat_at<Out>(out, b, h, c, ld);
          GECKO_CUDA_RETURN(cudaMemset2DAsync(o, static_cast<std::size_t>(ld) * sizeof(Out), 0,
                                              static_cast<std::size_t>(q.N) * sizeof(Out), q.M, stream));
        }
        const int c_one = std::max(zero_end, 0);
        for (int c = c_one; c < std::min(regular, q.nb); ++c)
          GECKO_RETURN_IF_ERROR((run<T, AR, BR, Out>(q, s, out, beta, b, h, c, 1)));
        if (c_batch < q.nb && !one_call)
          GECKO_RETURN_IF_ERROR((run<T, AR, BR, Out>(q, s, out, beta, b, h, c_batch, q.nb - c_batch)));
      }
    if (one_call) return run_all<T, AR, BR, Out>(gp, q, s, out, beta, c_batch);
    return Status::success();
  }

  // Chunks c0 .. q.nb - 1 (regular: no carried operand) of every (b, h) as one pointer-array GEMM.
  template <class T, bool AR, bool BR, class Out>
  Status run_all(const kernels::GemmParams& gp, const kernels::GemmProblem& q, const kernels::Segment& s,
                 const kernels::MatAlt& out, float beta, int c0) const {
    kernels::PointerTable t;
    t.H = gp.H;
    t.chunks = q.nb - c0;
    t.total = gp.B * gp.H * t.chunks;
    t.out = ptrs;
    // cuBLASLt's A, B, D: our B, A and out (see products()).
    const kernels::MatAlt* mats[3] = {&s.b, &s.a, &out};
    const std::int64_t bytes[3] = {sizeof(T), sizeof(T), sizeof(Out)};
    using linear::cuda::pow2_alignment;
    std::int64_t al = 256;
    for (int w = 0; w < 3; ++w) {
      const kernels::Mat& m = mats[w]->m;
      kernels::BytePlacement& bp = t.m[w];
      bp.p = static_cast<const char*>(m.p) + (c0 + mats[w]->off) * m.sc * bytes[w];
      bp.sb = m.sb * bytes[w];
      bp.sh = m.sh * bytes[w];
      bp.sc = m.sc * bytes[w];
      al = std::min({al, pow2_alignment(reinterpret_cast<std::uintptr_t>(bp.p)),
                     gp.B > 1 ? pow2_alignment(static_cast<std::uint64_t>(bp.sb)) : al,
                     pow2_alignment(static_cast<std::uint64_t>(bp.sh)),
                     t.chunks > 1 ? pow2_alignment(static_cast<std::uint64_t>(bp.sc)) : al});
    }
    kernels::gemm_pointer_table_kernel<><<<static_cast<unsigned>((t.total + kernels::kThreads - 1) / kernels::kThreads),
                                          kernels::kThreads, 0, stream>>>(t);
    GECKO_RETURN_IF_ERROR(last_launch_status("working_memory GEMM pointer table"));
    linear::cuda::Gemm g = chunk_gemm<T, AR, BR, Out>(q, s, beta);
    g.a = ptrs;
    g.lda = s.b.m.ld;
    g.b = ptrs + t.total;
    g.ldb = s.a.m.ld;
    g.d = ptrs + 2 * t.total;
    g.ldd = out.m.ld;
    g.batch = t.total;
    g.pointer_array = true;
    g.matrix_alignment = al;
    return ctx->matmul(g, gemm_ws, stream);
  }

  // The GEMM of one chunk's product as cuBLASLt sees it (outᵀ = Bᵀ Aᵀ): types, sizes, transposes
  // and beta; callers add the operands.
  template <class T, bool AR, bool BR, class Out>
  static linear::cuda::Gemm chunk_gemm(const kernels::GemmProblem& q, const kernels::Segment& s, float beta) {
    linear::cuda::Gemm g;
    g.ab_type = linear::cuda::cuda_data_type<T>();
    g.cd_type = linear::cuda::cuda_data_type<Out>();
    g.m = q.N;
    g.n = q.M;
    g.k = s.k;
    g.trans_a = !BR;
    g.trans_b = !AR;
    g.beta = beta;
    return g;
  }

  template <class T, bool AR, bool BR, class Out>
  Status run(const kernels::GemmProblem& q, const kernels::Segment& s, const kernels::MatAlt& out, float beta, int b,
             int h, int c, int count) const {
    std::int64_t lda = 0, ldb = 0, ldo = 0;
    const T* A = kernels::mat_at<T>(s.a, b, h, c, lda);
    const T* Bm = kernels::mat_at<T>(s.b, b, h, c, ldb);
    Out* O = kernels::mat_at<Out>(out, b, h, c, ldo);
    linear::cuda::Gemm g = chunk_gemm<T, AR, BR, Out>(q, s, beta);
    g.a = Bm;
    g.lda = ldb;
    g.b = A;
    g.ldb = lda;
    g.d = O;
    g.ldd = ldo;
    g.batch = count;
    if (count > 1) {  // regular chunks only: the chunk strides of the main matrices
      g.stride_a = s.b.m.sc;
      g.stride_b = s.a.m.sc;
      g.stride_d = out.m.sc;
    }
    return ctx->matmul(g, gemm_ws, stream);
  }

  // G's hi / lo problem: the product into g32 (dense [B, H, nb, M, N], the layout of out2), then
  // the split into the problem's outputs (dense with that layout too: ws_mat regions).
  template <class T, bool AR, bool BR>
  Status hilo(const kernels::GemmParams& gp, const kernels::GemmProblem& q) const {
    const kernels::MatAlt g = alt(ws_mat(g32, gp.H, q.nb, q.M, q.N));
    GECKO_RETURN_IF_ERROR((products<T, AR, BR, float>(gp, q, q.seg[0], g, 0.f, true)));
    const std::int64_t pairs = static_cast<std::int64_t>(gp.B) * gp.H * q.nb * q.M * q.N / 2;
    if (pairs == 0) return Status::success();
    const unsigned grid = static_cast<unsigned>(std::min<std::int64_t>((pairs + kernels::kThreads - 1) / kernels::kThreads, 4096));
    kernels::split_hilo_kernel<><<<grid, kernels::kThreads, 0, stream>>>(
        g32, static_cast<__nv_bfloat16*>(const_cast<void*>(q.epi.out.m.p)),
        static_cast<__nv_bfloat16*>(const_cast<void*>(q.epi.out2.p)), pairs);
    return last_launch_status("working_memory G hi/lo split");
  }

  // daq / dak: the products into fp32 accumulators (acc0, acc1), then the row epilogue kernel.
  template <class T, bool AR, bool BR, int EPI>
  Status row_epilogue(const kernels::GemmParams& gp, const kernels::GemmProblem& q) const {
    const kernels::MatAlt x0 = alt(ws_mat(acc0, gp.H, acc_chunks, q.M, q.N));
    const kernels::MatAlt x1 = alt(ws_mat(acc1, gp.H, acc_chunks, q.M, q.N));
    kernels::RowEpiParams rp;
    rp.B = gp.B;
    rp.H = gp.H;
    rp.nb = q.nb;
    rp.rows = q.M;
    rp.dk = q.N;
    rp.x0 = x0.m;
    rp.x1 = x1.m;
    rp.out = q.epi.out;
    if constexpr (EPI == kernels::kDaq) {
      GECKO_RETURN_IF_ERROR((products<T, AR, BR, float>(gp, q, q.seg[0], x0, 0.f, false)));
      rp.zero_below = q.zero_below;
      rp.f1 = q.epi.f1;
    } else {  // x0 = first segment; x1 = the others, accumulated
      if (q.nseg < 2) return internal_error("working memory: the dak product has two or more segments");
      GECKO_RETURN_IF_ERROR((products<T, AR, BR, float>(gp, q, q.seg[0], x0, 0.f, false)));
      for (int i = 1; i < q.nseg; ++i)
        GECKO_RETURN_IF_ERROR((products<T, AR, BR, float>(gp, q, q.seg[i], x1, i == 1 ? 0.f : 1.f, false)));
      rp.f1 = q.epi.f1;
      rp.f2 = q.epi.f2;
      rp.v1 = q.epi.v1;
      rp.v2 = q.epi.v2;
    }
    const std::int64_t rows = static_cast<std::int64_t>(gp.B) * gp.H * q.nb * q.M;
    if (rows == 0) return Status::success();
    constexpr int mode = EPI == kernels::kDaq ? kernels::kRowDaq : kernels::kRowDak;
    kernels::row_epilogue_kernel<T, mode>
        <<<static_cast<unsigned>((rows + 7) / 8), kernels::kThreads, 0, stream>>>(rp);
    return last_launch_status(EPI == kernels::kDaq ? "working_memory daq epilogue" : "working_memory dak epilogue");
  }
};

inline std::size_t round_up_256(std::size_t b) { return (b + 255) / 256 * 256; }

// The Context path's workspace: launch.cuh's plan, then (backward, 16-bit T) the two fp32
// accumulator sets of daq / dak, (16-bit T) fp32 G before its split and the three pointer arrays
// of the pointer-array batches, then the GEMM workspace.
struct CublasLayout {
  std::size_t acc0 = 0, acc1 = 0, g32 = 0, ptrs = 0, gemm = 0, total = 0;
  std::int64_t acc_chunks = 0;
  std::size_t g32_floats = 0;
  std::int64_t ptr_slots = 0;
};

template <class T>
CublasLayout cublas_layout(const linear::cuda::Context& ctx, const Plan& pl, bool backward) {
  const Problem& p = pl.p;
  CublasLayout l;
  std::size_t off = round_up_256(pl.bytes);
  if (backward && kTensorCores<T>) {
    l.acc_chunks = std::max(pl.n, pl.nabs);
    const std::size_t set = static_cast<std::size_t>(p.batch * p.heads * l.acc_chunks * p.chunk * p.dk) * sizeof(float);
    l.acc0 = off;
    off = round_up_256(off + set);
    l.acc1 = off;
    off = round_up_256(off + set);
  }
  if (kTensorCores<T> && !(backward && pl.split)) {  // a pass that runs the front
    l.g32_floats = static_cast<std::size_t>(p.batch * p.heads * pl.nabs * p.dk * p.dk);
    l.g32 = off;
    off = round_up_256(off + l.g32_floats * sizeof(float));
  }
  if (kTensorCores<T>) {  // the pointer arrays: every product covers at most max(n, nabs) chunks
    l.ptr_slots = p.batch * p.heads * std::max<std::int64_t>({pl.n, pl.nabs, 1});
    l.ptrs = off;
    off = round_up_256(off + 3 * static_cast<std::size_t>(l.ptr_slots) * sizeof(void*));
  }
  l.gemm = off;
  l.total = off + ctx.gemm_workspace_bytes();
  return l;
}

// The layout a call would have (for the size queries: no `saved` region to check yet).
template <class T, class A>
Status cublas_plan(const linear::cuda::Context& ctx, const A& a, bool backward, bool with_saved, CublasLayout& l) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(check_supported(a, p));
  l = cublas_layout<T>(ctx, make_plan<T>(p, backward, with_saved && !p.tail), backward);
  return Status::success();
}

inline CublasExec make_exec(linear::cuda::Context& ctx, const CublasLayout& l, void* workspace, cudaStream_t stream,
                            const CublasOptions& o) {
  char* ws = static_cast<char*>(workspace);
  CublasExec ex;
  ex.min_flops = o.min_gemm_flops;
  ex.stream = stream;
  ex.ctx = &ctx;
  ex.gemm_ws = ws + l.gemm;
  if (l.acc_chunks > 0) {
    ex.acc0 = reinterpret_cast<float*>(ws + l.acc0);
    ex.acc1 = reinterpret_cast<float*>(ws + l.acc1);
    ex.acc_chunks = l.acc_chunks;
  }
  if (l.g32_floats > 0) {
    ex.g32 = reinterpret_cast<float*>(ws + l.g32);
    ex.g32_floats = l.g32_floats;
  }
  if (l.ptr_slots > 0) {
    ex.ptrs = reinterpret_cast<const void**>(ws + l.ptrs);
    ex.ptr_slots = l.ptr_slots;
  }
  return ex;
}

}  // namespace detail

// Bytes of workspace the Context-taking forward() / backward() need (with_saved: when given a
// Saved, launch.cuh).
template <class T>
Status forward_workspace_size(const linear::cuda::Context& ctx, const ForwardArgs<T>& a, std::size_t& bytes,
                              bool with_saved = false) {
  detail::CublasLayout l;
  GECKO_RETURN_IF_ERROR(detail::cublas_plan<T>(ctx, a, false, with_saved, l));
  bytes = l.total;
  return Status::success();
}

template <class T>
Status backward_workspace_size(const linear::cuda::Context& ctx, const BackwardArgs<T>& a, std::size_t& bytes,
                               bool with_saved = false) {
  detail::CublasLayout l;
  GECKO_RETURN_IF_ERROR(detail::cublas_plan<T>(ctx, a, true, with_saved, l));
  bytes = l.total;
  return Status::success();
}

// As forward(a, ...) of launch.cuh, with the large products on cuBLASLt.
template <class T>
Status forward(linear::cuda::Context& ctx, const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes,
               cudaStream_t stream, const Saved* saved = nullptr, const CublasOptions& o = {}) {
  static_assert(!std::is_same_v<T, double>, "the CUDA working memory takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(detail::check_device<T>());
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  detail::Plan pl;  // validated and planned once
  GECKO_RETURN_IF_ERROR(
      detail::plan_call<T>(a, false, saved ? saved->data : nullptr, saved ? saved->bytes : 0, "forward", pl));
  const detail::CublasLayout l = detail::cublas_layout<T>(ctx, pl, false);
  GECKO_RETURN_IF_ERROR(
      linear::cuda::detail::check_workspace(workspace, workspace_bytes, l.total, "working memory forward"));
  return detail::run_forward_planned<T>(a, pl, static_cast<char*>(workspace),
                                        saved ? static_cast<char*>(saved->data) : nullptr,
                                        detail::make_exec(ctx, l, workspace, stream, o));
}

// As backward(a, ...) of launch.cuh, with the large products on cuBLASLt.
template <class T>
Status backward(linear::cuda::Context& ctx, const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream, const Saved* saved = nullptr, const CublasOptions& o = {}) {
  static_assert(!std::is_same_v<T, double>, "the CUDA working memory takes float, half or bfloat16");
  GECKO_RETURN_IF_ERROR(detail::check_device<T>());
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  detail::Plan pl;  // validated and planned once
  GECKO_RETURN_IF_ERROR(
      detail::plan_call<T>(a, true, saved ? saved->data : nullptr, saved ? saved->bytes : 0, "backward", pl));
  const detail::CublasLayout l = detail::cublas_layout<T>(ctx, pl, true);
  GECKO_RETURN_IF_ERROR(
      linear::cuda::detail::check_workspace(workspace, workspace_bytes, l.total, "working memory backward"));
  return detail::run_backward_planned<T>(a, pl, static_cast<char*>(workspace),
                                         saved ? static_cast<const char*>(saved->data) : nullptr,
                                         detail::make_exec(ctx, l, workspace, stream, o));
}

}  // namespace gecko::working_memory::cuda
