// Linear layer y = epilogue(x W^T + bias): the runtime problem and its validation.
//
//   x      [..., K]  T   leading dims collapse into M rows; unit inner stride, any row stride >= K
//   weight [N, K]    T   the authors' (PyTorch) Linear layout; unit inner stride, row stride >= K
//   bias   [N]       T   contiguous; given exactly when the epilogue has a bias
//   y      [..., N]  T   M rows, own row stride
//   pre    [..., N]  T   optional, SiLU epilogues only: the pre-activation x W^T + bias as rounded to
//                        T (what backward needs). Without it y is produced in place.
//   residual [..., N] T  optional, epilogues without SiLU: y = x W^T (+ bias) + residual, added in
//                        fp32 before y is rounded (a residual connection without a separate pass).
//                        May be y itself (same data and row stride) to accumulate into y.
//
// Epilogues: kNone (y = x W^T), kBias (+ bias), kBiasSilu (silu(x W^T + bias)), kSilu. Products
// accumulate in fp32 whatever T is (fp32 inputs use full fp32, not TF32).
//
// Backward, with dpre = dy (no SiLU) or dpre = dy * silu'(pre) rounded to T:
//   dx      [M, K] T     (=|+=) dpre W              optional; accumulate_dx adds (beta = 1)
//   dweight [N, K] fp32  (=|+=) dpre^T x            optional; accumulate_dparams adds
//   dbias   [N]    fp32  (=|+=) column sums of dpre optional (bias epilogues only), deterministic
//   dpre    [M, N] T     optional output for SiLU epilogues; may be dy itself (same pointer and
//                        strides) to work in place. Without it, dpre lives in the workspace.
#pragma once

#include <cstdint>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/row_view.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::linear {

enum class Epilogue { kNone, kBias, kBiasSilu, kSilu };

inline const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::kNone: return "none";
    case Epilogue::kBias: return "bias";
    case Epilogue::kBiasSilu: return "bias+silu";
    case Epilogue::kSilu: return "silu";
  }
  return "?";
}
inline bool has_bias(Epilogue e) { return e == Epilogue::kBias || e == Epilogue::kBiasSilu; }
inline bool has_silu(Epilogue e) { return e == Epilogue::kSilu || e == Epilogue::kBiasSilu; }

template <class T>
struct ForwardArgs {
  Epilogue epilogue = Epilogue::kNone;
  TensorView<const T> x;       // [..., K]
  TensorView<const T> weight;  // [N, K]
  TensorView<const T> bias;    // [N] iff has_bias(epilogue)
  TensorView<T> y;             // [..., N]
  TensorView<T> pre;           // [..., N] optional, SiLU epilogues only
  TensorView<const T> residual;  // [..., N] optional, not with SiLU; may be y (same row stride)
};

template <class T>
struct BackwardArgs {
  Epilogue epilogue = Epilogue::kNone;
  TensorView<const T> x;       // [..., K] forward input; required when dweight is wanted
  TensorView<const T> weight;  // [N, K]; required when dx is wanted
  TensorView<const T> pre;     // [..., N] forward pre-activation; required iff has_silu(epilogue)
  TensorView<const T> dy;      // [..., N]
  TensorView<T> dx;            // [..., K] or empty
  bool accumulate_dx = false;
  TensorView<acc_t<T>> dweight;  // [N, K] or empty
  TensorView<acc_t<T>> dbias;    // [N] or empty (bias epilogues only)
  bool accumulate_dparams = false;  // dweight and dbias are added to instead of overwritten
  TensorView<T> dpre;            // [..., N] optional, SiLU epilogues only (may alias dy)
};

struct Problem {
  std::int64_t M = 0, N = 0, K = 0;
  std::int64_t ldx = 0, ldw = 0, ldy = 0, ldpre = 0, ldres = 0;  // row strides in elements
  std::int64_t lddy = 0, lddx = 0, lddw = 0, lddpre = 0;
};

namespace detail {

template <class T>
Status check_weight(const TensorView<T>& w, const char* name, std::int64_t N, std::int64_t K, Memory where,
                    std::int64_t& ld, bool know_shape) {
  if (w.empty()) return invalid_argument(std::string(name) + " is missing (null data)");
  GECKO_RETURN_IF_ERROR(check_memory(w, name, where));
  if (w.rank != 2 || (know_shape && (w.size(0) != N || w.size(1) != K)))
    return invalid_argument(std::string(name) + " has shape " + w.shape_string() + ", expected [" +
                            (know_shape ? std::to_string(N) + ", " + std::to_string(K) : std::string("N, K")) + "]");
  GECKO_RETURN_IF_ERROR(check_inner_contiguous(w, name));
  ld = w.size(0) <= 1 ? w.size(1) : w.stride(0);
  if (ld < w.size(1))
    return invalid_argument(std::string(name) + " row stride " + std::to_string(ld) + " overlaps rows of " +
                            std::to_string(w.size(1)) + " elements");
  return Status::success();
}

template <class T>
Status check_vector(const TensorView<T>& v, const char* name, std::int64_t N, Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(v, name, {N}));
  GECKO_RETURN_IF_ERROR(check_memory(v, name, where));
  return check_contiguous(v, name);
}

inline Status check_sizes(const Problem& p) {
  if (p.N < 1) return invalid_argument("weight must have at least one row (N >= 1)");
  if (p.K < 1) return invalid_argument("the reduction dimension K must be >= 1");
  return Status::success();
}

inline Status check_epilogue(Epilogue e) {
  if (e != Epilogue::kNone && e != Epilogue::kBias && e != Epilogue::kBiasSilu && e != Epilogue::kSilu)
    return invalid_argument("epilogue is not one of none, bias, bias+silu, silu");
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_epilogue(a.epilogue));
  RowLayout xl;
  GECKO_RETURN_IF_ERROR(row_layout(a.x, "x", where, xl));
  p.M = xl.rows;
  p.K = xl.cols;
  p.ldx = xl.stride;
  if (a.weight.empty()) return invalid_argument("weight is missing (null data)");
  if (a.weight.rank == 2) p.N = a.weight.size(0);
  GECKO_RETURN_IF_ERROR(detail::check_weight(a.weight, "weight", p.N, p.K, where, p.ldw, a.weight.rank == 2));
  GECKO_RETURN_IF_ERROR(detail::check_sizes(p));
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.y, "y", p.M, p.N, where, p.ldy));
  if (has_bias(a.epilogue)) {
    GECKO_RETURN_IF_ERROR(detail::check_vector(a.bias, "bias", p.N, where));
  } else if (!a.bias.empty()) {
    return invalid_argument(std::string("bias is given but the epilogue '") + epilogue_name(a.epilogue) +
                            "' has no bias");
  }
  if (!a.pre.empty()) {
    if (!has_silu(a.epilogue))
      return invalid_argument(std::string("pre is only written by SiLU epilogues, not '") +
                              epilogue_name(a.epilogue) + "'");
    GECKO_RETURN_IF_ERROR(check_row_matrix(a.pre, "pre", p.M, p.N, where, p.ldpre));
    if (static_cast<const void*>(a.pre.data) == static_cast<const void*>(a.y.data))
      return invalid_argument("pre and y must be different buffers");
  }
  if (!a.residual.empty()) {
    if (has_silu(a.epilogue))
      return invalid_argument(std::string("residual is added only by epilogues without SiLU, not '") +
                              epilogue_name(a.epilogue) + "'");
    GECKO_RETURN_IF_ERROR(check_row_matrix(a.residual, "residual", p.M, p.N, where, p.ldres));
    if (static_cast<const void*>(a.residual.data) == static_cast<const void*>(a.y.data) && p.ldres != p.ldy)
      return invalid_argument("residual may be y itself only with the same row stride");
  }
  return Status::success();
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_epilogue(a.epilogue));
  RowLayout dl;
  GECKO_RETURN_IF_ERROR(row_layout(a.dy, "dy", where, dl));
  p.M = dl.rows;
  p.N = dl.cols;
  p.lddy = dl.stride;
  // K comes from whichever of weight, x, dx, dweight is present.
  if (!a.weight.empty() && a.weight.rank == 2) p.K = a.weight.size(1);
  else if (!a.x.empty()) p.K = a.x.size(-1);
  else if (!a.dx.empty()) p.K = a.dx.size(-1);
  else if (!a.dweight.empty() && a.dweight.rank == 2) p.K = a.dweight.size(1);
  else p.K = 1;  // only dbias (and dpre) wanted
  if (p.N < 1) return invalid_argument("dy must have at least one column (N >= 1)");
  if (p.K < 1) return invalid_argument("the reduction dimension K must be >= 1");
  if (!a.dx.empty()) {
    if (a.weight.empty()) return invalid_argument("weight is required to compute dx");
    GECKO_RETURN_IF_ERROR(check_row_matrix(a.dx, "dx", p.M, p.K, where, p.lddx));
  }
  if (!a.weight.empty()) GECKO_RETURN_IF_ERROR(detail::check_weight(a.weight, "weight", p.N, p.K, where, p.ldw, true));
  if (!a.dweight.empty()) {
    if (a.x.empty()) return invalid_argument("x is required to compute dweight");
    GECKO_RETURN_IF_ERROR(detail::check_weight(a.dweight, "dweight", p.N, p.K, where, p.lddw, true));
  }
  if (!a.x.empty()) GECKO_RETURN_IF_ERROR(check_row_matrix(a.x, "x", p.M, p.K, where, p.ldx));
  if (!a.dbias.empty()) {
    if (!has_bias(a.epilogue))
      return invalid_argument(std::string("dbias is given but the epilogue '") + epilogue_name(a.epilogue) +
                              "' has no bias");
    GECKO_RETURN_IF_ERROR(detail::check_vector(a.dbias, "dbias", p.N, where));
  }
  if (has_silu(a.epilogue)) {
    if (a.pre.empty()) return invalid_argument("pre (the forward pre-activation) is required by SiLU epilogues");
    GECKO_RETURN_IF_ERROR(check_row_matrix(a.pre, "pre", p.M, p.N, where, p.ldpre));
    if (!a.dpre.empty()) {
      GECKO_RETURN_IF_ERROR(check_row_matrix(a.dpre, "dpre", p.M, p.N, where, p.lddpre));
      if (static_cast<const void*>(a.dpre.data) == static_cast<const void*>(a.dy.data) && p.lddpre != p.lddy)
        return invalid_argument("dpre may alias dy only with the same row stride");
    }
  } else {
    if (!a.pre.empty())
      return invalid_argument(std::string("pre is given but the epilogue '") + epilogue_name(a.epilogue) +
                              "' has no SiLU");
    if (!a.dpre.empty())
      return invalid_argument(std::string("dpre is given but the epilogue '") + epilogue_name(a.epilogue) +
                              "' has no SiLU (dpre would be dy)");
  }
  return Status::success();
}

}  // namespace gecko::linear
