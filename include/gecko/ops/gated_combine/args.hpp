// The MEGA layer's gated combination (spec 3.2 step 9): only the local attention is gated,
//   attn = sca * r + awm,      r = silu(r_pre) when silu_r (the SiLU of wr fused in here)
//
//   sca, r, awm, attn  [..., E]  T   row matrices (rows collapse, unit inner stride, own row strides);
//                                    awm may be empty (a call with no working-memory output: attn = sca * r)
//
// With silu_r the op takes wr's pre-activation (a Linear with the bias epilogue only) and never
// materialises r: that saves the SiLU pass in forward and the SiLU-backward pass in backward.
//
// Backward (dattn given): dsca = dattn * r; dr = dattn * sca, or with silu_r
// dr = dattn * sca * silu'(r_pre) (the gradient w.r.t. what forward was given as r); dawm = dattn,
// so dawm is optional (empty: use dattn itself). dr_colsum [E] fp32, optional: the column sums of dr
// as stored, i.e. wr's bias gradient, fused into the same pass (deterministic).
// Outputs may alias inputs element for element (same pointer and row stride).
#pragma once

#include <cstdint>

#include "gecko/core/dtype.hpp"
#include "gecko/core/row_view.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::gated_combine {

template <class T>
struct ForwardArgs {
  bool silu_r = false;
  TensorView<const T> sca;  // [..., E]
  TensorView<const T> r;    // [..., E]: r, or r_pre when silu_r
  TensorView<const T> awm;  // [..., E] or empty
  TensorView<T> attn;       // [..., E]
};

template <class T>
struct BackwardArgs {
  bool silu_r = false;
  TensorView<const T> sca;    // forward inputs
  TensorView<const T> r;
  TensorView<const T> dattn;  // [..., E]
  TensorView<T> dsca;         // [..., E]
  TensorView<T> dr;           // [..., E]: d r, or d r_pre when silu_r
  TensorView<T> dawm;         // [..., E] optional copy of dattn
  TensorView<acc_t<T>> dr_colsum;  // [E] optional
  bool accumulate_dr_colsum = false;
};

struct Problem {
  std::int64_t rows = 0, cols = 0;
  std::int64_t sca_stride = 0, r_stride = 0, awm_stride = 0, attn_stride = 0;
  std::int64_t dattn_stride = 0, dsca_stride = 0, dr_stride = 0, dawm_stride = 0;
};

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  RowLayout l;
  GECKO_RETURN_IF_ERROR(row_layout(a.sca, "sca", where, l));
  p.rows = l.rows;
  p.cols = l.cols;
  p.sca_stride = l.stride;
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.r, "r", p.rows, p.cols, where, p.r_stride));
  if (!a.awm.empty()) GECKO_RETURN_IF_ERROR(check_row_matrix(a.awm, "awm", p.rows, p.cols, where, p.awm_stride));
  return check_row_matrix(a.attn, "attn", p.rows, p.cols, where, p.attn_stride);
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  RowLayout l;
  GECKO_RETURN_IF_ERROR(row_layout(a.dattn, "dattn", where, l));
  p.rows = l.rows;
  p.cols = l.cols;
  p.dattn_stride = l.stride;
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.sca, "sca", p.rows, p.cols, where, p.sca_stride));
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.r, "r", p.rows, p.cols, where, p.r_stride));
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.dsca, "dsca", p.rows, p.cols, where, p.dsca_stride));
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.dr, "dr", p.rows, p.cols, where, p.dr_stride));
  if (!a.dawm.empty()) GECKO_RETURN_IF_ERROR(check_row_matrix(a.dawm, "dawm", p.rows, p.cols, where, p.dawm_stride));
  if (!a.dr_colsum.empty()) {
    GECKO_RETURN_IF_ERROR(check_shape(a.dr_colsum, "dr_colsum", {p.cols}));
    GECKO_RETURN_IF_ERROR(check_memory(a.dr_colsum, "dr_colsum", where));
    GECKO_RETURN_IF_ERROR(check_contiguous(a.dr_colsum, "dr_colsum"));
  }
  return Status::success();
}

}  // namespace gecko::gated_combine
