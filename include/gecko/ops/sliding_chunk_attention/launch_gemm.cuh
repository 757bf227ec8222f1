// Sliding chunk attention staged through cuBLASLt: the training / prefill path (L a multiple of
// C) for the long value heads of Gecko.
//
// Why. At the 7B shapes (dk = 256, dv = 2048) the attention is two thin products and two fat ones
// per chunk: S = Q K^T (C x 2C x 256) and O = P V (C x 2048 x 2C). cuBLASLt runs the fat ones at
// ~650 TFLOP/s on an H100, several times what the flash kernels of launch.cuh reach with mma.sync
// (bench/results/*_sliding_chunk_attention_notes.md). So the logits of a group of query chunks go
// through memory, bounded: per chunk one C x 2C fp32 matrix (32 MiB at C = 2048), for at most
// `GemmOptions::group_bytes` at a time, reused across groups. The workspace is constant in L; the
// authors instead keep every chunk's C x 2C matrix alive.
//
// Per (batch, head) and group of chunks c (column j of chunk c is key (c - 1) C + j):
//   forward   S = scale Q_c Kw_c^T            (GEMM, fp32 out)
//             P = softmax(S) in place as T     (chunk_softmax_kernel, lse saved)
//             O_c = P Vw_c                      (GEMM into out)
//   backward  S again; dP = dO_c Vw_c^T        (GEMMs, fp32)
//             P, dS = P (dP - D) in place      (chunk_softmax_grad_kernel)
//             dQ_c = scale dS Kw_c              (GEMM into dq)
//             dK_j, dV_j from the two chunks that see key chunk j: the chunk's own part first,
//             then the next chunk's "previous" part accumulated (beta = 1) in chunk order, so
//             results are deterministic (with accumulate_dv the own part adds to dv's contents
//             too); the carried chunk's parts go to dprev_k / dprev_v
//             then RoPE's transpose is applied in place on dq and dk.
// The first chunk of a call has no key chunk -1 inside the call: its window is the carried chunk
// (own GEMMs on prev_k / prev_v) or nothing (those columns are masked and never read).
// The causal quadrant. With h = C / 2, query rows [0, h) of a chunk see window columns [0, C + h)
// only: every GEMM over queries runs in two halves (rows [0, h) against 1.5 C columns, rows
// [h, C) against 2 C), and the own-chunk dK / dV GEMMs give key rows [h, C) only the queries
// [h, C). That skips the always-masked quarter of the own block, 1/8 of the products; the row
// kernels then read and write 1.5 C columns for the first half of the rows.
//
// Kept probabilities (ForwardArgs::probs, BackwardArgs::probs): a training caller may give the
// forward a [B, H, L / C, C, 2C] T buffer; the softmax writes P there instead of over S, and the
// backward then skips the logit GEMMs and reads P instead of recomputing it from S and the lse
// (its row kernel moves 2 C^2 (2 |T| + 4) bytes a chunk instead of 2 C^2 (2 |T| + 8), and it needs
// no S buffer, so its groups are twice as large). The price is 2 C^2 elements of T per chunk and
// head of activation memory, the matrices the authors keep too.
//
// Everything else (tail / decode calls, C not a multiple of 64, windows wider than 8192 keys)
// goes to the flash kernels of launch.cuh through the same entry points.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "gecko/ops/linear/context.hpp"
#include "gecko/ops/linear/launch.cuh"  // cuda_data_type<T>, detail::check_workspace
#include "gecko/ops/sliding_chunk_attention/kernel_chunk_softmax.cuh"
#include "gecko/ops/sliding_chunk_attention/launch.cuh"

namespace gecko::sliding_chunk_attention::cuda {

struct GemmOptions {
  // Bytes of logit buffers (fp32 S, and dP in the backward) one group of chunks may use.
  std::size_t group_bytes = std::size_t(256) << 20;
};

namespace gemm_detail {

using kernels::i64;

// A column-major view of one (batch, head) slice of a [B, N, H, d] tensor: d x N, ld = row stride.
struct Mat {
  const void* p = nullptr;
  i64 ld = 0;
};

template <class T>
Mat head_mat(const TensorView<T>& t, std::int64_t b, std::int64_t h) {
  return Mat{t.data + b * t.strides[0] + h * t.strides[2], t.strides[1]};
}
template <class T>
T* head_ptr(const TensorView<T>& t, std::int64_t b, std::int64_t h) {
  return t.data + b * t.strides[0] + h * t.strides[2];
}

inline bool rows_fit(std::int64_t row_stride, std::int64_t d) { return row_stride >= d; }

template <class A>
bool views_fit(const A& a, const Problem& p) {
  const auto fits = [](const auto& t, std::int64_t d) { return t.empty() || rows_fit(t.strides[1], d); };
  return fits(a.q, p.dk) && fits(a.k, p.dk) && fits(a.v, p.dv) && fits(a.prev_k, p.dk) && fits(a.prev_v, p.dv);
}

// The outputs, and the backward's saved tensors, 16-byte aligned (kept probabilities included:
// the row kernels move them in 4-element vectors).
template <class T>
bool outputs_aligned(const ForwardArgs<T>& a) {
  return detail::aligned16(a.out) && detail::aligned16(a.probs);
}
template <class T>
bool outputs_aligned(const BackwardArgs<T>& a) {
  return detail::aligned16(a.out) && detail::aligned16(a.probs) && detail::aligned16(a.dout) &&
         detail::aligned16(a.dq) && detail::aligned16(a.dk) && detail::aligned16(a.dv) &&
         detail::aligned16(a.dprev_k) && detail::aligned16(a.dprev_v);
}

// The GEMM-staged path's size conditions: chunks of 64k keys up to 4096 and RoPE frequencies that
// fit the kernels' table.
inline bool shapes_fit(std::int64_t C, std::int64_t dk, int n_rope_heads) {
  return C % 64 == 0 && 2 * C <= kernels::kRowMaxVec * 4 * kernels::kRowThreads &&
         (n_rope_heads == 0 || dk / 2 <= kernels::kMaxPairs);
}

// Whether the GEMM-staged path takes the call: the full path, shapes_fit, and 16-byte aligned rows
// (tensor-core GEMMs).
template <class T, class A>
bool applies(const A& a, const Problem& p) {
  if constexpr (std::is_same_v<T, double>) return false;
  if (p.tail || !shapes_fit(p.chunk, p.dk, p.n_rope_heads)) return false;
  if (p.prev != 0 && p.prev != p.chunk) return false;
  return views_fit(a, p) && detail::inputs_aligned(a) && outputs_aligned(a);
}

struct Plan {
  int group = 1;            // chunks per group
  i64 chunk_stride = 0;     // floats per chunk in the logit buffers
  std::size_t gemm = 0, qrot = 0, krot = 0, s = 0, dp = 0, dbuf = 0, out_ws = 0, lse_ws = 0, total = 0;
  bool fwd_inside = false;
};

inline std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

// kept_probs: a backward that reads the forward's probabilities (no logit buffer S).
template <class T>
Plan make_plan(const linear::cuda::Context& ctx, const Problem& p, bool backward, bool need_forward,
               const GemmOptions& o, bool kept_probs = false) {
  Plan pl;
  const i64 C = p.chunk, nc = p.length / C;
  pl.chunk_stride = C * 2 * C;
  const bool with_s = !(backward && kept_probs);
  const std::size_t per_chunk =
      static_cast<std::size_t>(pl.chunk_stride) * 4 * ((with_s ? 1 : 0) + (backward ? 1 : 0));
  pl.group = static_cast<int>(std::clamp<i64>(static_cast<i64>(o.group_bytes / per_chunk), 1, nc));
  std::size_t off = 0;
  auto take = [&off](std::size_t bytes) {
    const std::size_t at = off;
    off = align256(off + bytes);
    return at;
  };
  pl.gemm = take(ctx.gemm_workspace_bytes());
  const std::size_t rot = static_cast<std::size_t>(p.batch * p.length * p.n_rope_heads * p.dk) * sizeof(T);
  if (p.n_rope_heads > 0) {
    pl.qrot = take(rot);
    pl.krot = take(rot);
  }
  const std::size_t group_floats = static_cast<std::size_t>(pl.group) * pl.chunk_stride;
  if (with_s) pl.s = take(group_floats * 4);
  const std::size_t BH = static_cast<std::size_t>(p.batch * p.heads);
  if (backward) {
    pl.dp = take(group_floats * 4);
    pl.dbuf = take(BH * p.length * 4);
    if (need_forward) {
      pl.fwd_inside = true;
      pl.out_ws = take(static_cast<std::size_t>(p.batch * p.length * p.heads * p.dv) * sizeof(T));
      pl.lse_ws = take(BH * p.length * 4);
    }
  }
  pl.total = off;
  return pl;
}

// The operands of one call, rotated where RoPE applies.
template <class T>
struct Operands {
  const Problem* p = nullptr;
  TensorView<const T> q, k, v, prev_k, prev_v;
  const T* qrot = nullptr;  // dense [B, L, n_rope, dk]
  const T* krot = nullptr;
  Mat qmat(std::int64_t b, std::int64_t h) const {
    if (qrot && h < p->n_rope_heads) return Mat{qrot + (b * p->length * p->n_rope_heads + h) * p->dk, p->n_rope_heads * p->dk};
    return head_mat(q, b, h);
  }
  Mat kmat(std::int64_t b, std::int64_t h) const {
    if (krot && h < p->n_rope_heads) return Mat{krot + (b * p->length * p->n_rope_heads + h) * p->dk, p->n_rope_heads * p->dk};
    return head_mat(k, b, h);
  }
};

// The call's operands; with RoPE, q and k rotated into the workspace first. A: ForwardArgs<T> or
// BackwardArgs<T>.
template <class A, class T>
Status prepare_operands(const A& a, const Problem& p, const Plan& pl, char* ws, cudaStream_t stream, Operands<T>& op) {
  op.p = &p;
  op.q = a.q;
  op.k = a.k;
  op.v = a.v;
  op.prev_k = a.prev_k;
  op.prev_v = a.prev_v;
  if (p.n_rope_heads > 0) {
    kernels::Theta th;
    detail::fill_theta(a, p, th.v);
    GECKO_RETURN_IF_ERROR(detail::rope_rows(a.q, reinterpret_cast<T*>(ws + pl.qrot), p, th, a.rope.start, stream));
    GECKO_RETURN_IF_ERROR(detail::rope_rows(a.k, reinterpret_cast<T*>(ws + pl.krot), p, th, a.rope.start, stream));
    op.qrot = reinterpret_cast<const T*>(ws + pl.qrot);
    op.krot = reinterpret_cast<const T*>(ws + pl.krot);
  }
  return Status::success();
}

template <class T>
const T* rows_at(const Mat& m, i64 row) {
  return static_cast<const T*>(m.p) + row * m.ld;
}

// D (m x n) [+]= alpha op(A) op(B) for `batch` chunks.
struct Step {
  linear::cuda::Context* ctx;
  void* ws;
  cudaStream_t stream;
  Status run(cudaDataType_t ab, cudaDataType_t cd, bool ta, bool tb, i64 m, i64 n, i64 k, const void* A, i64 lda,
             i64 sa, const void* B, i64 ldb, i64 sb, void* D, i64 ldd, i64 sd, int batch, float alpha,
             float beta) const {
    if (batch < 1) return Status::success();
    linear::cuda::Gemm g;
    g.ab_type = ab;
    g.cd_type = cd;
    g.trans_a = ta;
    g.trans_b = tb;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = A;
    g.lda = lda;
    g.b = B;
    g.ldb = ldb;
    g.d = D;
    g.ldd = ldd;
    g.alpha = alpha;
    g.beta = beta;
    g.batch = batch;
    g.stride_a = batch > 1 ? sa : 0;
    g.stride_b = batch > 1 ? sb : 0;
    g.stride_d = batch > 1 ? sd : 0;
    return ctx->matmul(g, ws, stream);
  }
};

template <class A>
kernels::ChunkRows chunk_rows(const A& a, const Problem& p, float* s, i64 chunk_stride, int c0, int b, int h) {
  kernels::ChunkRows r;
  r.s = s;
  r.chunk_stride = chunk_stride;
  r.C = static_cast<int>(p.chunk);
  r.P = static_cast<int>(p.prev);
  r.c0 = c0;
  r.L = static_cast<int>(p.length);
  r.H = static_cast<int>(p.heads);
  r.b = b;
  r.h = h;
  r.segments = p.segments ? 1 : 0;
  r.seg = detail::segs_of(a, p);
  return r;
}

// Query rows [r0, r0 + C/2) of a chunk: their first row and how many window columns they see.
struct Half {
  i64 r0, width;
};
inline Half query_half(i64 C, int half) { return half ? Half{C / 2, 2 * C} : Half{0, C + C / 2}; }

// X^T (rows x C per chunk, ld 2C, fp32) = alpha W Y^T for chunks [c0, c1) of head (b, h), where W is
// the 2C-row window of `w` (k for the logits, v for dP) and Y the chunk's rows of `y` (q or dO),
// over an inner dimension of `inner`; skips the causal quadrant.
template <class T>
Status window_products(const Step& st, const Problem& p, const Mat& w, const Mat& y, const Mat* prev_w, i64 inner,
                       float alpha, int c0, int c1, float* X, i64 cs) {
  constexpr cudaDataType_t ty = linear::cuda::cuda_data_type<T>();
  const i64 C = p.chunk;
  const int first = std::max(c0, 1);
  for (int half = 0; half < 2; ++half) {
    const Half hv = query_half(C, half);
    // chunks >= 1: the window is rows (c - 1) C .. (c + 1) C of w
    GECKO_RETURN_IF_ERROR(st.run(ty, CUDA_R_32F, true, false, hv.width, C / 2, inner, rows_at<T>(w, (first - 1) * C),
                                 w.ld, C * w.ld, rows_at<T>(y, first * C + hv.r0), y.ld, C * y.ld,
                                 X + (first - c0) * cs + hv.r0 * 2 * C, 2 * C, cs, c1 - first, alpha, 0.f));
    if (c0 == 0)  // chunk 0's own columns
      GECKO_RETURN_IF_ERROR(st.run(ty, CUDA_R_32F, true, false, hv.width - C, C / 2, inner, w.p, w.ld, 0,
                                   rows_at<T>(y, hv.r0), y.ld, 0, X + C + hv.r0 * 2 * C, 2 * C, 0, 1, alpha, 0.f));
  }
  if (c0 == 0 && prev_w)  // chunk 0's carried columns: no mask
    GECKO_RETURN_IF_ERROR(
        st.run(ty, CUDA_R_32F, true, false, C, C, inner, prev_w->p, prev_w->ld, 0, y.p, y.ld, 0, X, 2 * C, 0, 1, alpha, 0.f));
  return Status::success();
}

// Z^T (m x C per chunk, into rows of z) = alpha W^T M^T for chunks [c0, c1): W the 2C-row window
// of `w` (v for the output, k for dQ), M the T matrix of the group buffer (P or dS, ld ldm); the
// carried chunk's part (prev_w) accumulates onto chunk 0's. Skips the causal quadrant.
template <class T>
Status window_apply(const Step& st, const Problem& p, const Mat& w, const Mat* prev_w, i64 m, const T* M, i64 ldm,
                    i64 csm, float alpha, int c0, int c1, T* z, i64 ldz) {
  constexpr cudaDataType_t ty = linear::cuda::cuda_data_type<T>();
  const i64 C = p.chunk;
  const int first = std::max(c0, 1);
  for (int half = 0; half < 2; ++half) {
    const Half hv = query_half(C, half);
    GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, false, m, C / 2, hv.width, rows_at<T>(w, (first - 1) * C), w.ld,
                                 C * w.ld, M + (first - c0) * csm + hv.r0 * ldm, ldm, csm,
                                 z + (first * C + hv.r0) * ldz, ldz, C * ldz, c1 - first, alpha, 0.f));
    if (c0 == 0)
      GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, false, m, C / 2, hv.width - C, w.p, w.ld, 0, M + C + hv.r0 * ldm, ldm,
                                   0, z + hv.r0 * ldz, ldz, 0, 1, alpha, 0.f));
  }
  if (c0 == 0 && prev_w)
    GECKO_RETURN_IF_ERROR(
        st.run(ty, ty, false, false, m, C, C, prev_w->p, prev_w->ld, 0, M, ldm, 0, z, ldz, 0, 1, alpha, 1.f));
  return Status::success();
}

// G^T (m x C keys per chunk, into rows of g) [+]= alpha Y^T M[:, C:2C] for the own key chunk of
// chunks [c0, c1): Y the chunk's query rows of `y` (q for dK, dO for dV), M the group's P or dS.
// Key rows [C/2, C) see queries [C/2, C) only.
template <class T>
Status own_keys(const Step& st, const Problem& p, const Mat& y, i64 m, const T* M, i64 ldm, i64 csm, float alpha,
                float beta, int c0, int n, T* g, i64 ldg) {
  constexpr cudaDataType_t ty = linear::cuda::cuda_data_type<T>();
  const i64 C = p.chunk, h = C / 2;
  GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, true, m, h, C, rows_at<T>(y, c0 * C), y.ld, C * y.ld, M + C, ldm, csm,
                               g + c0 * C * ldg, ldg, C * ldg, n, alpha, beta));
  return st.run(ty, ty, false, true, m, h, h, rows_at<T>(y, c0 * C + h), y.ld, C * y.ld, M + C + h + h * ldm, ldm, csm,
                g + (c0 * C + h) * ldg, ldg, C * ldg, n, alpha, beta);
}

// S (fp32, ld 2C) = scale Qw Kw^T for chunks [c0, c1) of head (b, h).
template <class T>
Status logits(const Step& st, const Operands<T>& op, const Problem& p, float scale, std::int64_t b, std::int64_t h,
              int c0, int c1, float* S, i64 cs) {
  const Mat q = op.qmat(b, h), k = op.kmat(b, h);
  Mat pk;
  if (p.prev > 0) pk = head_mat(op.prev_k, b, h);
  return window_products<T>(st, p, k, q, p.prev > 0 ? &pk : nullptr, p.dk, scale, c0, c1, S, cs);
}
template <class T>
constexpr i64 t_per_float() {
  return static_cast<i64>(sizeof(float) / sizeof(T));
}

}  // namespace gemm_detail

// Whether a call of L tokens with no carried chunk, on dense [B, L, H, d] tensors and buffers from
// 16-byte aligned allocations, can keep its probabilities (ForwardArgs::probs) on the GEMM-staged
// path: its sizes fit, and heads of dk and dv elements are whole 16-byte words (aligned rows). A
// training caller allocates B H L 2C elements of T for them when this holds.
template <class T>
bool keeps_probs(std::int64_t L, std::int64_t C, std::int64_t dk, std::int64_t dv, int n_rope_heads) {
  if constexpr (std::is_same_v<T, double>) return false;
  const auto words = [](std::int64_t d) { return d * static_cast<std::int64_t>(sizeof(T)) % 16 == 0; };
  return C > 0 && L >= C && L % C == 0 && gemm_detail::shapes_fit(C, dk, n_rope_heads) && words(dk) && words(dv);
}

// Bytes of workspace forward(ctx, ...) needs (the flash path's when the GEMM path does not apply).
template <class T>
Status forward_workspace_size(const linear::cuda::Context& ctx, const ForwardArgs<T>& a, std::size_t& bytes,
                              const GemmOptions& o = {}) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (a.cursor || !gemm_detail::applies<T>(a, p)) return forward_workspace_size(a, bytes);
  bytes = gemm_detail::make_plan<T>(ctx, p, false, false, o).total;
  return Status::success();
}

template <class T>
Status forward(linear::cuda::Context& ctx, const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes,
               cudaStream_t stream, const GemmOptions& o = {}) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (a.cursor || !gemm_detail::applies<T>(a, p)) return forward(a, workspace, workspace_bytes, stream);
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  const gemm_detail::Plan pl = gemm_detail::make_plan<T>(ctx, p, false, false, o);
  GECKO_RETURN_IF_ERROR(
      linear::cuda::detail::check_workspace(workspace, workspace_bytes, pl.total, "sliding chunk attention forward"));
  char* ws = static_cast<char*>(workspace);
  gemm_detail::Operands<T> op;
  GECKO_RETURN_IF_ERROR(gemm_detail::prepare_operands(a, p, pl, ws, stream, op));
  const gemm_detail::Step st{&ctx, ws + pl.gemm, stream};
  float* S = reinterpret_cast<float*>(ws + pl.s);
  const kernels::i64 C = p.chunk, cs = pl.chunk_stride, tpf = gemm_detail::t_per_float<T>();
  const int nc = static_cast<int>(p.length / C);
  // Probabilities (T): in place over S (ld 2C * tpf), or the caller's kept ones (ld 2C).
  const bool kept = !a.probs.empty();
  const kernels::i64 ldp = kept ? 2 * C : 2 * C * tpf, csp = kept ? cs : cs * tpf;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const gemm_detail::Mat v = gemm_detail::head_mat(a.v, b, h);
      T* out = gemm_detail::head_ptr(a.out, b, h);
      const kernels::i64 ldo = a.out.strides[1];
      T* probs_bh = kept ? a.probs.data + (b * p.heads + h) * nc * cs : nullptr;
      for (int c0 = 0; c0 < nc; c0 += pl.group) {
        const int c1 = std::min(nc, c0 + pl.group);
        const T* Pm = kept ? probs_bh + c0 * cs : reinterpret_cast<const T*>(S);
        GECKO_RETURN_IF_ERROR(gemm_detail::logits(st, op, p, a.scale, b, h, c0, c1, S, cs));
        kernels::ChunkRows r = gemm_detail::chunk_rows(a, p, S, cs, c0, static_cast<int>(b), static_cast<int>(h));
        if (kept) {
          r.probs = probs_bh + c0 * cs;
          r.probs_cs = cs;
        }
        if (!a.lse.empty()) {
          r.lse = a.lse.data;
          r.lse_sb = a.lse.strides[0];
          r.lse_sh = a.lse.strides[1];
          r.lse_sl = a.lse.strides[2];
        }
        kernels::chunk_softmax_kernel<T>
            <<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(c1 - c0)), kernels::kRowThreads, 0, stream>>>(r);
        GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention chunk softmax"));
        // O_c = P Vw_c: column-major O^T (dv x C) = V^T (dv x 2C) P^T (2C x C).
        gemm_detail::Mat pv;
        if (p.prev > 0) pv = gemm_detail::head_mat(a.prev_v, b, h);
        GECKO_RETURN_IF_ERROR(gemm_detail::window_apply<T>(st, p, v, p.prev > 0 ? &pv : nullptr, p.dv, Pm, ldp, csp,
                                                           1.f, c0, c1, out, ldo));
      }
    }
  }
  return Status::success();
}

// Bytes of workspace backward(ctx, ...) needs (more when out or lse is not given).
template <class T>
Status backward_workspace_size(const linear::cuda::Context& ctx, const BackwardArgs<T>& a, std::size_t& bytes,
                               const GemmOptions& o = {}) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (!gemm_detail::applies<T>(a, p)) return backward_workspace_size(a, bytes);
  const bool kept = !a.probs.empty();
  bytes = gemm_detail::make_plan<T>(ctx, p, true, !kept && (a.out.empty() || a.lse.empty()), o, kept).total;
  return Status::success();
}

template <class T>
Status backward(linear::cuda::Context& ctx, const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream, const GemmOptions& o = {}) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (!gemm_detail::applies<T>(a, p)) return backward(a, workspace, workspace_bytes, stream);
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  const bool kept = !a.probs.empty();  // the forward's probabilities (validate: then out is given)
  const bool need_forward = !kept && (a.out.empty() || a.lse.empty());
  const gemm_detail::Plan pl = gemm_detail::make_plan<T>(ctx, p, true, need_forward, o, kept);
  GECKO_RETURN_IF_ERROR(
      linear::cuda::detail::check_workspace(workspace, workspace_bytes, pl.total, "sliding chunk attention backward"));
  char* ws = static_cast<char*>(workspace);

  // Saved forward results, or a forward of our own (its workspace needs fit inside ours: the
  // forward plan is the backward's without dP, D, out and lse).
  TensorView<const T> out = a.out;
  detail::LseRows<const float> lse = detail::lse_rows(a.lse);
  if (pl.fwd_inside) {
    ForwardArgs<T> f = forward_inputs_of(a);
    f.out = TensorView<T>::device(reinterpret_cast<T*>(ws + pl.out_ws), {p.batch, p.length, p.heads, p.dv});
    f.lse = TensorView<float>::device(reinterpret_cast<float*>(ws + pl.lse_ws), {p.batch, p.heads, p.length});
    GemmOptions fo = o;
    fo.group_bytes = static_cast<std::size_t>(pl.group) * pl.chunk_stride * 4;  // the forward's group fits in S
    GECKO_RETURN_IF_ERROR(forward(ctx, f, ws, pl.out_ws, stream, fo));
    out = f.out;
    lse = detail::lse_rows(TensorView<const float>(f.lse));
  }
  float* dbuf = reinterpret_cast<float*>(ws + pl.dbuf);
  {
    const kernels::i64 rows = p.batch * p.length * p.heads;
    const int vec = detail::aligned16(a.dout) && detail::aligned16(out) && sizeof(T) == 2 && p.dv % 8 == 0;
    kernels::row_dot_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(
        detail::rows_of(a.dout), detail::rows_of(out), dbuf, static_cast<int>(p.length), static_cast<int>(p.heads),
        static_cast<int>(p.dv), rows, vec);
    GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention D = rowsum(dO * O)"));
  }

  gemm_detail::Operands<T> op;
  GECKO_RETURN_IF_ERROR(gemm_detail::prepare_operands(a, p, pl, ws, stream, op));
  kernels::Theta th;
  detail::fill_theta(a, p, th.v);

  constexpr cudaDataType_t ty = linear::cuda::cuda_data_type<T>();
  const gemm_detail::Step st{&ctx, ws + pl.gemm, stream};
  float* S = reinterpret_cast<float*>(ws + pl.s);
  float* dP = reinterpret_cast<float*>(ws + pl.dp);
  const kernels::i64 C = p.chunk, cs = pl.chunk_stride, tpf = gemm_detail::t_per_float<T>();
  const kernels::i64 lds = 2 * C * tpf, css = cs * tpf;  // dS (T) over dP
  const kernels::i64 ldp = kept ? 2 * C : lds, csp = kept ? cs : css;  // P (T): over S, or the kept ones
  const T* dS = reinterpret_cast<const T*>(dP);
  const int nc = static_cast<int>(p.length / C);
  const bool want_dprev_k = p.prev > 0 && !a.dprev_k.empty();
  const bool want_dprev_v = p.prev > 0 && !a.dprev_v.empty();
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const gemm_detail::Mat v = gemm_detail::head_mat(a.v, b, h);
      const gemm_detail::Mat dO = gemm_detail::head_mat(a.dout, b, h);
      const gemm_detail::Mat qm = op.qmat(b, h), km = op.kmat(b, h);
      T* dq = gemm_detail::head_ptr(a.dq, b, h);
      T* dk = gemm_detail::head_ptr(a.dk, b, h);
      T* dv = gemm_detail::head_ptr(a.dv, b, h);
      const kernels::i64 lddq = a.dq.strides[1], lddk = a.dk.strides[1], lddv = a.dv.strides[1];
      const T* probs_bh = kept ? a.probs.data + (b * p.heads + h) * nc * cs : nullptr;
      for (int c0 = 0; c0 < nc; c0 += pl.group) {
        const int c1 = std::min(nc, c0 + pl.group), n = c1 - c0;
        const int first = std::max(c0, 1), nf = c1 - first;
        const T* Pm = kept ? probs_bh + c0 * cs : reinterpret_cast<const T*>(S);
        if (!kept) GECKO_RETURN_IF_ERROR(gemm_detail::logits(st, op, p, a.scale, b, h, c0, c1, S, cs));
        // dP = dO_c Vw_c^T: column-major dP^T (2C x C) = V (op T of dv x 2C) dO^T (dv x C).
        gemm_detail::Mat pv, pk;
        if (p.prev > 0) {
          pv = gemm_detail::head_mat(a.prev_v, b, h);
          pk = gemm_detail::head_mat(a.prev_k, b, h);
        }
        GECKO_RETURN_IF_ERROR(gemm_detail::window_products<T>(st, p, v, dO, p.prev > 0 ? &pv : nullptr, p.dv, 1.f, c0,
                                                              c1, dP, cs));
        kernels::ChunkRows r = gemm_detail::chunk_rows(a, p, S, cs, c0, static_cast<int>(b), static_cast<int>(h));
        r.lse_in = lse.p;
        r.lse_sb = lse.sb;
        r.lse_sh = lse.sh;
        r.lse_sl = lse.sl;
        r.dp = dP;
        r.D = dbuf;
        if (kept) {
          r.probs = const_cast<T*>(Pm);
          r.probs_cs = cs;
        }
        kernels::chunk_softmax_grad_kernel<T>
            <<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(n)), kernels::kRowThreads, 0, stream>>>(r);
        GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention chunk softmax gradient"));

        // dQ_c = scale dS Kw_c: column-major dQ^T (dk x C) = K^T (dk x 2C) dS^T (2C x C).
        GECKO_RETURN_IF_ERROR(gemm_detail::window_apply<T>(st, p, km, p.prev > 0 ? &pk : nullptr, p.dk, dS, lds, css,
                                                           a.scale, c0, c1, dq, lddq));
        // Key chunk c's own part: dK_c = scale dS[:, C:]^T Q_c, dV_c = P[:, C:]^T dO_c
        // (column-major dK^T (dk x C) = Q^T (dk x C) (dS^T rows C..2C)^T).
        GECKO_RETURN_IF_ERROR(gemm_detail::own_keys<T>(st, p, qm, p.dk, dS, lds, css, a.scale, 0.f, c0, n, dk, lddk));
        GECKO_RETURN_IF_ERROR(gemm_detail::own_keys<T>(st, p, dO, p.dv, Pm, ldp, csp, 1.f, a.accumulate_dv ? 1.f : 0.f,
                                                       c0, n, dv, lddv));
        // The previous key chunk's part, seen by chunk c >= 1, accumulated in chunk order.
        GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, true, p.dk, C, C, gemm_detail::rows_at<T>(qm, first * C), qm.ld,
                                     C * qm.ld, dS + (first - c0) * css, lds, css, dk + (first - 1) * C * lddk, lddk,
                                     C * lddk, nf, a.scale, 1.f));
        GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, true, p.dv, C, C, gemm_detail::rows_at<T>(dO, first * C), dO.ld,
                                     C * dO.ld, Pm + (first - c0) * csp, ldp, csp, dv + (first - 1) * C * lddv, lddv,
                                     C * lddv, nf, 1.f, 1.f));
        if (c0 == 0 && want_dprev_k) {
          T* dpk = gemm_detail::head_ptr(a.dprev_k, b, h);
          GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, true, p.dk, C, C, qm.p, qm.ld, 0, dS, lds, 0, dpk,
                                       a.dprev_k.strides[1], 0, 1, a.scale, 0.f));
        }
        if (c0 == 0 && want_dprev_v) {
          T* dpv = gemm_detail::head_ptr(a.dprev_v, b, h);
          GECKO_RETURN_IF_ERROR(st.run(ty, ty, false, true, p.dv, C, C, dO.p, dO.ld, 0, Pm, ldp, 0, dpv,
                                       a.dprev_v.strides[1], 0, 1, 1.f, 0.f));
        }
      }
    }
  }
  // dq and dk were taken w.r.t. the rotated q and k: apply RoPE's transpose in place.
  if (p.n_rope_heads > 0) {
    const kernels::i64 pairs = p.batch * p.length * p.n_rope_heads * (p.dk / 2);
    const int grid = static_cast<int>(std::min<kernels::i64>((pairs + 255) / 256, 65536));
    const auto gq = detail::out_rows_of(a.dq), gk = detail::out_rows_of(a.dk);
    const int L = static_cast<int>(p.length), d = static_cast<int>(p.dk);
    if (pairs <= kernels::kMaxInt32Pairs)
      kernels::unrotate_rows_kernel<T, int><<<grid, 256, 0, stream>>>(gq, gk, L, p.n_rope_heads, d, a.rope.start,
                                                                      static_cast<int>(pairs), th);
    else
      kernels::unrotate_rows_kernel<T, kernels::i64>
          <<<grid, 256, 0, stream>>>(gq, gk, L, p.n_rope_heads, d, a.rope.start, pairs, th);
    GECKO_RETURN_IF_ERROR(last_launch_status("sliding_chunk_attention RoPE transpose on dq/dk"));
  }
  return Status::success();
}

}  // namespace gecko::sliding_chunk_attention::cuda
