// Sliding chunk attention (SCA): the runtime problem and its validation.
//
// Keys and values are the window [prev ; current call]: key j in [0, P + L) is prev_k[j] for
// j < P and rope(k)[j - P] otherwise. Window positions: key j sits at j and query r at P + r.
// Position 0 of the window is always a chunk boundary (the carried prev is exactly the previous
// chunk on the full path, and "chunk n-1 plus the part of chunk n seen so far" on the tail path,
// spec 1.9 / 3.5), so one rule covers both paths:
//
//   query at window position i sees key j  iff  j <= i  and  floor(j / C) >= floor(i / C) - 1
//                                               and (no segments or seg(j) == seg(i))
//
// i.e. the whole previous chunk plus its own chunk causally, itself included (spec 1.4). On the
// tail path P + L <= 2C, so floor(i / C) <= 1 and the rule reduces to "every key <= i" (spec 1.9).
//
// Legal calls:
//   full path  L >= C: L % C == 0 and P in {0, C}            (training, prefill)
//   tail path  L <  C: P + L <= 2C (so P < 2C), any P >= 0    (prompt tails and decoding)
//
// The logit is s_ij = scale * <rope(q_i), key_j>, with no 1/sqrt(d) inside (the Gecko block folds
// it into q and k, spec 1.2); out_i = sum_j softmax_j(s_i.) v_j. RoPE (optional) is applied to q
// and k inside the op; the carried prev_k is already rotated (it is the previous call's rotated k).
// The CPU reference keeps logits and probabilities in double; the authors round them to T
// (spec 1.5, 1.8), see docs/numerics.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "gecko/core/config.hpp"
#include "gecko/core/decode_cursor.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/ops/rope/args.hpp"

namespace gecko::sliding_chunk_attention {

template <class T>
struct ForwardArgs {
  std::int64_t chunk = 0;                       // C, the chunk size (> 0)
  float scale = 1.0f;                           // logit multiplier (the authors always pass 1)
  rope::RopeConfig rope;                        // rotation of q and k; n_rope_heads = 0 means none
  TensorView<const T> q;                        // [B, L, H, dk] pre-RoPE
  TensorView<const T> k;                        // [B, L, H, dk] pre-RoPE
  TensorView<const T> v;                        // [B, L, H, dv]
  TensorView<const T> prev_k;                   // [B, P, H, dk] post-RoPE carried keys, or empty (P = 0)
  TensorView<const T> prev_v;                   // [B, P, H, dv], given exactly when prev_k is
  TensorView<const std::int64_t> segment_idx;   // [B, L] document ids, or empty (one document)
  TensorView<const std::int64_t> prev_segment_idx;  // [B, P]; required when segment_idx and P > 0
  TensorView<T> out;                            // [B, L, H, dv]
  TensorView<acc_t<T>> lse;                     // [B, H, L] log sum_visible exp(s_ij) per query, or empty
                                                // (-inf for a row with no visible key, which legal
                                                // inputs never produce: a query sees itself)
  // The probabilities kept for the backward, or empty: [B, H, L / C, C, 2C] dense, row i of chunk c
  // holding query c C + i against window keys (c - 1) C .. (c + 1) C (entries a query cannot see
  // are 0; the always-hidden last C / 2 keys of the first C / 2 rows are left unwritten). Only
  // the CUDA GEMM-staged path (launch_gemm.cuh) fills them; with them its backward skips
  // recomputing the logits and the softmax. 2 C^2 elements per chunk and head.
  TensorView<T> probs;
  // Graph-replayable decoding (CUDA, 16-bit T, L <= 4 on the tail path): a device pointer whose
  // position and prev the kernels read when they run, in place of rope.start and P. prev_k / prev_v
  // (and prev_segment_idx) then give the capacity: their row count is the largest P the cursor may
  // hold, and rows at or past the cursor's prev are never read. Null: the host values.
  const DecodeCursor* cursor = nullptr;
};

template <class T>
struct BackwardArgs {
  std::int64_t chunk = 0;
  float scale = 1.0f;
  rope::RopeConfig rope;
  TensorView<const T> q;                        // forward inputs, as in ForwardArgs
  TensorView<const T> k;
  TensorView<const T> v;
  TensorView<const T> prev_k;
  TensorView<const T> prev_v;
  TensorView<const std::int64_t> segment_idx;
  TensorView<const std::int64_t> prev_segment_idx;
  TensorView<const T> out;                      // [B, L, H, dv] saved forward output, or empty
  TensorView<const acc_t<T>> lse;               // [B, H, L] saved log-sum-exp, or empty. Backends
                                                // that do not recompute the softmax read these two;
                                                // the CPU reference recomputes and only checks shapes.
  TensorView<const T> probs;                    // ForwardArgs::probs as the forward filled them, or
                                                // empty (the CUDA GEMM-staged path only; needs out)
  TensorView<const T> dout;                     // [B, L, H, dv]
  TensorView<T> dq;                             // [B, L, H, dk] w.r.t. the pre-RoPE q
  TensorView<T> dk;                             // [B, L, H, dk] w.r.t. the pre-RoPE k
  TensorView<T> dv;                             // [B, L, H, dv]
  bool accumulate_dv = false;                   // dv += (a second consumer's gradient already in
                                                // dv, e.g. the working memory's) instead of dv =
  TensorView<T> dprev_k;                        // [B, P, H, dk] w.r.t. the post-RoPE prev_k, or empty
  TensorView<T> dprev_v;                        // [B, P, H, dv], or empty
};

// The forward arguments of a backward call's inputs (outputs left empty): what a backward that
// has to run the forward itself passes to it.
template <class T>
ForwardArgs<T> forward_inputs_of(const BackwardArgs<T>& a) {
  ForwardArgs<T> f;
  f.chunk = a.chunk;
  f.scale = a.scale;
  f.rope = a.rope;
  f.q = a.q;
  f.k = a.k;
  f.v = a.v;
  f.prev_k = a.prev_k;
  f.prev_v = a.prev_v;
  f.segment_idx = a.segment_idx;
  f.prev_segment_idx = a.prev_segment_idx;
  return f;
}

// The problem every backend works on (derived sizes; strides stay in the views).
struct Problem {
  std::int64_t batch = 0, length = 0, heads = 0, dk = 0, dv = 0;
  std::int64_t chunk = 0;
  std::int64_t prev = 0;     // P, carried keys
  std::int64_t keys = 0;     // P + L, the key window
  bool tail = false;         // L < C
  bool segments = false;
  int n_rope_heads = 0;
};

// The visibility rule in window positions (see the top of this file). Kernels use the same
// function, so the mask has one definition.
GECKO_HOST_DEVICE inline bool key_visible(std::int64_t key, std::int64_t query_pos, std::int64_t chunk) {
  return key <= query_pos && key / chunk >= query_pos / chunk - 1;
}

// Visible keys (before the segment mask) form the contiguous range [first_key, query_pos].
GECKO_HOST_DEVICE inline std::int64_t first_key(std::int64_t query_pos, std::int64_t chunk) {
  const std::int64_t c = query_pos / chunk;
  return c > 0 ? (c - 1) * chunk : 0;
}

namespace detail {

template <class T>
Status check_heads(const TensorView<T>& t, const char* name, Memory where, std::int64_t B, std::int64_t L,
                   std::int64_t H, std::int64_t d) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {B, L, H, d}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

template <class T>
Status check_optional(const TensorView<T>& t, const char* name, Memory where, std::initializer_list<std::int64_t> s) {
  if (t.empty()) return Status::success();
  GECKO_RETURN_IF_ERROR(check_shape(t, name, s));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

inline std::string str(std::int64_t v) { return std::to_string(v); }

// probs, when given: [B, H, L / C, C, 2C], dense, where the call's other tensors are.
template <class T>
Status check_probs(const TensorView<T>& t, Memory where, const Problem& p) {
  if (t.empty()) return Status::success();
  if (p.length % p.chunk != 0)
    return invalid_argument("probs need a whole number of chunks (L = " + str(p.length) + ", C = " + str(p.chunk) + ")");
  GECKO_RETURN_IF_ERROR(check_shape(t, "probs", {p.batch, p.heads, p.length / p.chunk, p.chunk, 2 * p.chunk}));
  GECKO_RETURN_IF_ERROR(check_memory(t, "probs", where));
  return check_contiguous(t, "probs");
}

// Everything forward and backward share: q/k/v, prev, segments, chunk, scale, RoPE, and the path.
template <class A>
Status validate_inputs(const A& a, Memory where, Problem& p) {
  p = Problem{};
  if (a.q.empty()) return invalid_argument("q is missing (null data)");
  if (a.q.rank != 4) return invalid_argument("q has shape " + a.q.shape_string() + ", expected [B, L, H, dk]");
  if (a.v.empty()) return invalid_argument("v is missing (null data)");
  if (a.v.rank != 4) return invalid_argument("v has shape " + a.v.shape_string() + ", expected [B, L, H, dv]");
  p.batch = a.q.size(0);
  p.length = a.q.size(1);
  p.heads = a.q.size(2);
  p.dk = a.q.size(3);
  p.dv = a.v.size(3);
  p.chunk = a.chunk;
  const std::int64_t B = p.batch, L = p.length, H = p.heads, C = a.chunk;
  GECKO_RETURN_IF_ERROR(check_heads(a.q, "q", where, B, L, H, p.dk));
  GECKO_RETURN_IF_ERROR(check_heads(a.k, "k", where, B, L, H, p.dk));
  GECKO_RETURN_IF_ERROR(check_heads(a.v, "v", where, B, L, H, p.dv));
  if (B < 1 || L < 1 || H < 1 || p.dk < 1 || p.dv < 1)
    return invalid_argument("q/v sizes must be positive, got q " + a.q.shape_string() + " and v " + a.v.shape_string());
  if (C < 1) return invalid_argument("chunk must be >= 1, got " + str(C));
  if (!std::isfinite(a.scale)) return invalid_argument("scale must be finite");

  if (a.prev_k.empty() != a.prev_v.empty())
    return invalid_argument("prev_k and prev_v must be given together (got only " +
                            std::string(a.prev_k.empty() ? "prev_v" : "prev_k") + ")");
  if (!a.prev_k.empty()) {
    if (a.prev_k.rank != 4)
      return invalid_argument("prev_k has shape " + a.prev_k.shape_string() + ", expected [B, P, H, dk]");
    p.prev = a.prev_k.size(1);
    GECKO_RETURN_IF_ERROR(check_heads(a.prev_k, "prev_k", where, B, p.prev, H, p.dk));
    GECKO_RETURN_IF_ERROR(check_heads(a.prev_v, "prev_v", where, B, p.prev, H, p.dv));
  }
  const std::int64_t P = p.prev;
  p.keys = P + L;
  p.tail = L < C;
  if (!p.tail) {
    if (L % C != 0)
      return invalid_argument("L=" + str(L) + " must be a multiple of the chunk size C=" + str(C) +
                              " on the full path (L >= C); shorter calls take the tail path (L < C)");
    if (P != 0 && P != C)
      return invalid_argument("prev_k holds P=" + str(P) + " keys; the full path (L >= C) needs none or exactly " +
                              "one chunk (P = C=" + str(C) + ")");
  } else if (P + L > 2 * C) {
    return invalid_argument("the tail path (L=" + str(L) + " < C=" + str(C) + ") allows at most 2C=" + str(2 * C) +
                            " keys, got P=" + str(P) + " prev keys + L=" + str(L));
  }

  p.segments = !a.segment_idx.empty();
  if (p.segments) {
    GECKO_RETURN_IF_ERROR(check_shape(a.segment_idx, "segment_idx", {B, L}));
    GECKO_RETURN_IF_ERROR(check_memory(a.segment_idx, "segment_idx", where));
    if (P > 0 && a.prev_segment_idx.empty())
      return invalid_argument("prev_segment_idx [B, P=" + str(P) + "] is required when segment_idx is given " +
                              "with prev_k");
  }
  if (!a.prev_segment_idx.empty()) {
    if (!p.segments) return invalid_argument("prev_segment_idx is given but segment_idx is not");
    GECKO_RETURN_IF_ERROR(check_shape(a.prev_segment_idx, "prev_segment_idx", {B, P}));
    GECKO_RETURN_IF_ERROR(check_memory(a.prev_segment_idx, "prev_segment_idx", where));
  }

  GECKO_RETURN_IF_ERROR(rope::validate_config(a.rope, H, p.dk, "rope."));
  p.n_rope_heads = a.rope.n_rope_heads;
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::validate_inputs(a, where, p));
  if (a.out.empty()) return invalid_argument("out is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_heads(a.out, "out", where, p.batch, p.length, p.heads, p.dv));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.lse, "lse", where, {p.batch, p.heads, p.length}));
  return detail::check_probs(a.probs, where, p);
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::validate_inputs(a, where, p));
  const std::int64_t B = p.batch, L = p.length, H = p.heads, P = p.prev;
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.out, "out", where, {B, L, H, p.dv}));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.lse, "lse", where, {B, H, L}));
  GECKO_RETURN_IF_ERROR(detail::check_heads(a.dout, "dout", where, B, L, H, p.dv));
  GECKO_RETURN_IF_ERROR(detail::check_heads(a.dq, "dq", where, B, L, H, p.dk));
  GECKO_RETURN_IF_ERROR(detail::check_heads(a.dk, "dk", where, B, L, H, p.dk));
  GECKO_RETURN_IF_ERROR(detail::check_heads(a.dv, "dv", where, B, L, H, p.dv));
  if (P == 0 && (!a.dprev_k.empty() || !a.dprev_v.empty()))
    return invalid_argument("dprev_k/dprev_v are given but there is no prev_k/prev_v");
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dprev_k, "dprev_k", where, {B, P, H, p.dk}));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dprev_v, "dprev_v", where, {B, P, H, p.dv}));
  GECKO_RETURN_IF_ERROR(detail::check_probs(a.probs, where, p));
  if (!a.probs.empty() && a.out.empty()) return invalid_argument("probs are given without out (D = rowsum(dO * O) needs it)");
  return Status::success();
}

}  // namespace gecko::sliding_chunk_attention
