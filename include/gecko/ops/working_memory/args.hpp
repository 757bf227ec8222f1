// Adaptive working memory (AWM): the runtime problem and its validation.
//
// Per (batch row, head) the op keeps a memory M [dk, dv] and a log-normaliser A [dk] (spec 2.4):
//
//   q̂_t = softmax over features of aq_t             k̂_t = softmax over features of ak_t
//   κ_p[i, t] = softmax over the tokens t of chunk p of ak_t[i]   ℓ_p[i] = logsumexp_t ak_t[i]
//   step j:  O_j = Q̂_j M                      (memory before this step: it holds chunks <= j-2)
//            A' = logaddexp(ℓ_{j-1}, A)   ρ = exp(ℓ_{j-1} - A')
//            VV = V_{j-1} - K̂_{j-1} M     M = M + ρ ⊙ (κ_{j-1} VV - M)   A = A'
//
// The one-chunk delay: chunk j reads the memory of chunks <= j-2 (SCA covers chunks j-1 and j),
// and the last chunk of a call is never absorbed by it: it is carried to the next call as
// prev_k / prev_v, which the next call absorbs first. With no carried state (the authors' None)
// step 0 outputs zeros and creates an empty state (M = 0, A = -inf).
//
// Documents (segment_idx): s(p) = doc id of the LAST token of chunk p; only that document feeds
// the memory (κ, ℓ mask the chunk's other tokens); the state is reset before absorbing chunk j-1
// when s(j-2) != s(j-1); chunk j's outputs are zeroed where seg(t) != s(j-2). For the carried
// chunks, s(-1) = prev_segment_idx[:, C-1] and s(-2) = prev_segment_count (the memory's doc). This
// is the intended semantics of spec 2.3, per batch row (not the authors' bug 4.1).
//
// Two paths, as in the authors' module and our sliding chunk attention (one call, chosen by L):
//   full path  L >= C: L % C == 0; P = C with memory (the previous chunk), P = 0 without.
//   tail path  L <  C: inference. With memory: C <= P and P + L <= 2C, where prev_k/prev_v hold
//              chunk -1 (not yet absorbed) followed by the P - C tokens of the current chunk seen
//              so far; the outputs read the current memory, and when P + L == 2C the call
//              completes a chunk and absorbs chunk -1 (= prev rows [0, C)). Without memory (the
//              first chunk of a stream): P + L <= C, the outputs are 0, and P + L == C creates the
//              empty state.
//
// What a streaming caller carries to its next call (spec 3.5; nothing here copies it):
//   * memory, log_norm  <- memory_out, log_norm_out (when Problem::state_after).
//   * prev_k / prev_v   <- full path: the call's last C rows of ak / v. Tail path: prev ++ this
//     call's rows, cut to the last C rows when P + L is a multiple of C.
//   * prev_segment_idx  <- cut and appended like prev_k. prev_segment_count <- when the stream
//     reaches a chunk boundary, the doc id of the last token of the chunk before the last one, i.e.
//     ids[len - C - 1] of [old prev ids ; call ids] (len of that concatenation); before the first
//     boundary any value will do (the memory is empty or absent, so the id is never used).
// Feeding a stream in full chunks, then a partial chunk, then one token at a time gives the same
// outputs and state as one full call (tests/host/test_working_memory.cpp).
//
// Precision: the state is acc_t<T> (fp32 for 16-bit T; the authors keep M in T). The CPU reference
// computes everything in double and rounds only what it returns (docs/numerics.md).
#pragma once

#include <cstdint>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::working_memory {

template <class T>
struct ForwardArgs {
  std::int64_t chunk = 0;                        // C, the chunk size (> 0)
  TensorView<const T> aq;                        // [B, L, H, dk] query pre-activations (token-major)
  TensorView<const T> ak;                        // [B, L, H, dk] key pre-activations
  TensorView<const T> v;                         // [B, L, H, dv]
  // Carried state. memory and log_norm go together; empty = the start of a stream.
  TensorView<const acc_t<T>> memory;             // [B, H, dk, dv]
  TensorView<const acc_t<T>> log_norm;           // [B, H, dk]; -inf where nothing was absorbed
  TensorView<const T> prev_k;                    // [B, P, H, dk] raw ak of the tokens not yet absorbed
  TensorView<const T> prev_v;                    // [B, P, H, dv], given exactly when prev_k is
  // Documents: empty segment_idx = one document.
  TensorView<const std::int64_t> segment_idx;         // [B, L]
  TensorView<const std::int64_t> prev_segment_idx;    // [B, P]; required with segment_idx when P > 0
  TensorView<const std::int64_t> prev_segment_count;  // [B] s(-2), the memory's doc; required with
                                                      // segment_idx when memory is given
  // Outputs.
  TensorView<T> out;                             // [B, L, H, dv]
  TensorView<acc_t<T>> memory_out;               // [B, H, dk, dv] required when Problem::state_after
  TensorView<acc_t<T>> log_norm_out;             // [B, H, dk] (ignored otherwise). Each may be the very
                                                 // view of memory / log_norm (updated in place).
};

// Backward of the full path (training; the tail path is inference only).
template <class T>
struct BackwardArgs {
  std::int64_t chunk = 0;
  TensorView<const T> aq;                        // forward inputs, as in ForwardArgs (the backward
  TensorView<const T> ak;                        // recomputes the recurrence from them)
  TensorView<const T> v;
  TensorView<const acc_t<T>> memory;
  TensorView<const acc_t<T>> log_norm;
  TensorView<const T> prev_k;
  TensorView<const T> prev_v;
  TensorView<const std::int64_t> segment_idx;
  TensorView<const std::int64_t> prev_segment_idx;
  TensorView<const std::int64_t> prev_segment_count;
  TensorView<const T> dout;                      // [B, L, H, dv]
  TensorView<const acc_t<T>> dmemory_out;        // [B, H, dk, dv], or empty (= 0, as in training)
  TensorView<const acc_t<T>> dlog_norm_out;      // [B, H, dk], or empty (= 0)
  TensorView<T> daq;                             // [B, L, H, dk]
  TensorView<T> dak;                             // [B, L, H, dk]; the last chunk's rows are 0
  TensorView<T> dv;                              // [B, L, H, dv]; the last chunk's rows are 0 (its k and
                                                 // v only reach later calls, through prev)
  TensorView<acc_t<T>> dmemory;                  // [B, H, dk, dv] } required exactly when the
  TensorView<acc_t<T>> dlog_norm;                // [B, H, dk]     } carried state is given
  TensorView<T> dprev_k;                         // [B, C, H, dk]  }
  TensorView<T> dprev_v;                         // [B, C, H, dv]  }
};

// The problem every backend works on (derived sizes; strides stay in the views).
struct Problem {
  std::int64_t batch = 0, length = 0, heads = 0, dk = 0, dv = 0;
  std::int64_t chunk = 0;
  std::int64_t chunks = 0;     // full path: L / C; tail path: 0
  std::int64_t prev = 0;       // P, carried tokens in prev_k / prev_v
  bool tail = false;           // L < C
  bool has_state = false;      // memory / log_norm given
  bool segments = false;       // segment_idx given
  bool absorbs = false;        // tail path: P + L == 2C, chunk -1 is absorbed
  bool creates = false;        // no memory given and the call completes a chunk: an empty state is made
  bool state_after = false;    // the call ends with a state: memory_out / log_norm_out are written
};

namespace detail {

inline std::string str(std::int64_t v) { return std::to_string(v); }

template <class T>
Status check_required(const TensorView<T>& t, const char* name, Memory where, std::initializer_list<std::int64_t> s) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, s));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

template <class T>
Status check_optional(const TensorView<T>& t, const char* name, Memory where, std::initializer_list<std::int64_t> s) {
  if (t.empty()) return Status::success();
  return check_required(t, name, where, s);
}

// Everything forward and backward share: activations, carried state, documents, and the path.
template <class A>
Status validate_inputs(const A& a, Memory where, Problem& p) {
  p = Problem{};
  if (a.aq.empty()) return invalid_argument("aq is missing (null data)");
  if (a.aq.rank != 4) return invalid_argument("aq has shape " + a.aq.shape_string() + ", expected [B, L, H, dk]");
  if (a.v.empty()) return invalid_argument("v is missing (null data)");
  if (a.v.rank != 4) return invalid_argument("v has shape " + a.v.shape_string() + ", expected [B, L, H, dv]");
  p.batch = a.aq.size(0);
  p.length = a.aq.size(1);
  p.heads = a.aq.size(2);
  p.dk = a.aq.size(3);
  p.dv = a.v.size(3);
  p.chunk = a.chunk;
  const std::int64_t B = p.batch, L = p.length, H = p.heads, C = a.chunk;
  GECKO_RETURN_IF_ERROR(check_required(a.aq, "aq", where, {B, L, H, p.dk}));
  GECKO_RETURN_IF_ERROR(check_required(a.ak, "ak", where, {B, L, H, p.dk}));
  GECKO_RETURN_IF_ERROR(check_required(a.v, "v", where, {B, L, H, p.dv}));
  if (B < 1 || L < 1 || H < 1 || p.dk < 1 || p.dv < 1)
    return invalid_argument("aq/v sizes must be positive, got aq " + a.aq.shape_string() + " and v " +
                            a.v.shape_string());
  if (C < 1) return invalid_argument("chunk must be >= 1, got " + str(C));

  // State: memory and log_norm are one thing (M, A); prev_k and prev_v are one buffer.
  if (a.memory.empty() != a.log_norm.empty())
    return invalid_argument(std::string("memory and log_norm must be given together (got only ") +
                            (a.memory.empty() ? "log_norm" : "memory") + ")");
  if (a.prev_k.empty() != a.prev_v.empty())
    return invalid_argument(std::string("prev_k and prev_v must be given together (got only ") +
                            (a.prev_k.empty() ? "prev_v" : "prev_k") + ")");
  p.has_state = !a.memory.empty();
  GECKO_RETURN_IF_ERROR(check_optional(a.memory, "memory", where, {B, H, p.dk, p.dv}));
  GECKO_RETURN_IF_ERROR(check_optional(a.log_norm, "log_norm", where, {B, H, p.dk}));
  if (!a.prev_k.empty()) {
    if (a.prev_k.rank != 4)
      return invalid_argument("prev_k has shape " + a.prev_k.shape_string() + ", expected [B, P, H, dk]");
    p.prev = a.prev_k.size(1);
    GECKO_RETURN_IF_ERROR(check_required(a.prev_k, "prev_k", where, {B, p.prev, H, p.dk}));
    GECKO_RETURN_IF_ERROR(check_required(a.prev_v, "prev_v", where, {B, p.prev, H, p.dv}));
  }
  const std::int64_t P = p.prev;

  p.tail = L < C;
  if (!p.tail) {
    if (L % C != 0)
      return invalid_argument("L=" + str(L) + " must be a multiple of the chunk size C=" + str(C) +
                              " on the full path (L >= C); shorter calls take the tail path (L < C)");
    p.chunks = L / C;
    // The full path absorbs exactly one carried chunk, and a carried chunk implies a memory
    // (the chunk before it was absorbed or the state was created when the chunk completed).
    if (p.has_state && P != C)
      return invalid_argument("memory is given, so prev_k/prev_v must hold the previous chunk (P = C=" + str(C) +
                              " tokens), got P=" + str(P));
    if (!p.has_state && P != 0)
      return invalid_argument("prev_k/prev_v are given without memory/log_norm; the full path needs the whole "
                              "carried state (memory, log_norm, prev_k, prev_v) or none of it");
    p.creates = !p.has_state;
  } else if (p.has_state) {
    if (P < C || P + L > 2 * C)
      return invalid_argument("the tail path with memory needs C <= P and P + L <= 2C (prev_k holds chunk -1 "
                              "and the current chunk so far), got P=" + str(P) + ", L=" + str(L) + ", C=" + str(C));
    p.absorbs = P + L == 2 * C;
  } else {
    if (P + L > C)
      return invalid_argument("the tail path without memory covers the first chunk only: P + L <= C, got P=" +
                              str(P) + ", L=" + str(L) + ", C=" + str(C));
    p.creates = P + L == C;
  }
  p.state_after = p.has_state || p.creates;

  p.segments = !a.segment_idx.empty();
  if (p.segments) {
    GECKO_RETURN_IF_ERROR(check_required(a.segment_idx, "segment_idx", where, {B, L}));
    if (P > 0 && a.prev_segment_idx.empty())
      return invalid_argument("prev_segment_idx [B, P=" + str(P) + "] is required when segment_idx is given "
                              "with prev_k (the carried tokens' documents decide their key mask and the reset)");
    if (p.has_state && a.prev_segment_count.empty())
      return invalid_argument("prev_segment_count [B] (the memory's document) is required when segment_idx is "
                              "given with memory");
  } else if (!a.prev_segment_idx.empty() || !a.prev_segment_count.empty()) {
    return invalid_argument(std::string(a.prev_segment_idx.empty() ? "prev_segment_count" : "prev_segment_idx") +
                            " is given but segment_idx is not");
  }
  if (!a.prev_segment_idx.empty() && P == 0)
    return invalid_argument("prev_segment_idx is given but there is no prev_k");
  GECKO_RETURN_IF_ERROR(check_optional(a.prev_segment_idx, "prev_segment_idx", where, {B, P}));
  GECKO_RETURN_IF_ERROR(check_optional(a.prev_segment_count, "prev_segment_count", where, {B}));
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::validate_inputs(a, where, p));
  const std::int64_t B = p.batch, H = p.heads;
  GECKO_RETURN_IF_ERROR(detail::check_required(a.out, "out", where, {B, p.length, H, p.dv}));
  if (p.state_after) {
    GECKO_RETURN_IF_ERROR(detail::check_required(a.memory_out, "memory_out", where, {B, H, p.dk, p.dv}));
    GECKO_RETURN_IF_ERROR(detail::check_required(a.log_norm_out, "log_norm_out", where, {B, H, p.dk}));
  }
  return Status::success();
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::validate_inputs(a, where, p));
  if (p.tail)
    return unsupported("working memory backward covers the full path only (L % C == 0, L >= C); the tail path "
                       "(L=" + detail::str(p.length) + " < C=" + detail::str(p.chunk) + ") is inference only");
  const std::int64_t B = p.batch, L = p.length, H = p.heads, C = p.chunk;
  GECKO_RETURN_IF_ERROR(detail::check_required(a.dout, "dout", where, {B, L, H, p.dv}));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dmemory_out, "dmemory_out", where, {B, H, p.dk, p.dv}));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dlog_norm_out, "dlog_norm_out", where, {B, H, p.dk}));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.daq, "daq", where, {B, L, H, p.dk}));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.dak, "dak", where, {B, L, H, p.dk}));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.dv, "dv", where, {B, L, H, p.dv}));
  if (p.has_state) {
    GECKO_RETURN_IF_ERROR(detail::check_required(a.dmemory, "dmemory", where, {B, H, p.dk, p.dv}));
    GECKO_RETURN_IF_ERROR(detail::check_required(a.dlog_norm, "dlog_norm", where, {B, H, p.dk}));
    GECKO_RETURN_IF_ERROR(detail::check_required(a.dprev_k, "dprev_k", where, {B, C, H, p.dk}));
    GECKO_RETURN_IF_ERROR(detail::check_required(a.dprev_v, "dprev_v", where, {B, C, H, p.dv}));
  } else {
    const char* extra = !a.dmemory.empty() ? "dmemory" : !a.dlog_norm.empty() ? "dlog_norm"
                        : !a.dprev_k.empty() ? "dprev_k" : !a.dprev_v.empty() ? "dprev_v" : nullptr;
    if (extra) return invalid_argument(std::string(extra) + " is given but there is no carried state");
  }
  return Status::success();
}

}  // namespace gecko::working_memory
