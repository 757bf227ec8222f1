// The SwiGLU gate of the normalized feed-forward (spec 3.3): hidden = silu(a) * b, a = fc1(u),
// b = fc3(u).
//
//   a, b, hidden  [..., F]  T   row matrices (rows collapse, unit inner stride, own row strides), so
//                               a and b may be the two halves of one [rows, 2F] GEMM output
// Backward: da = dhidden * b * silu'(a), db = dhidden * silu(a). Nothing is saved beyond a and b.
// Outputs may alias inputs element for element (same pointer and row stride), e.g. da over a.
#pragma once

#include <cstdint>

#include "gecko/core/dtype.hpp"
#include "gecko/core/row_view.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::swiglu {

template <class T>
struct ForwardArgs {
  TensorView<const T> a;  // [..., F]
  TensorView<const T> b;  // [..., F]
  TensorView<T> hidden;   // [..., F]
};

template <class T>
struct BackwardArgs {
  TensorView<const T> a, b;     // forward inputs
  TensorView<const T> dhidden;  // [..., F]
  TensorView<T> da, db;         // [..., F]
};

struct Problem {
  std::int64_t rows = 0, cols = 0;
  std::int64_t a_stride = 0, b_stride = 0, hidden_stride = 0;
  std::int64_t dhidden_stride = 0, da_stride = 0, db_stride = 0;
};

template <class T>
Status validate(const ForwardArgs<T>& x, Memory where, Problem& p) {
  p = Problem{};
  RowLayout l;
  GECKO_RETURN_IF_ERROR(row_layout(x.a, "a", where, l));
  p.rows = l.rows;
  p.cols = l.cols;
  p.a_stride = l.stride;
  GECKO_RETURN_IF_ERROR(check_row_matrix(x.b, "b", p.rows, p.cols, where, p.b_stride));
  return check_row_matrix(x.hidden, "hidden", p.rows, p.cols, where, p.hidden_stride);
}

template <class T>
Status validate(const BackwardArgs<T>& x, Memory where, Problem& p) {
  p = Problem{};
  RowLayout l;
  GECKO_RETURN_IF_ERROR(row_layout(x.dhidden, "dhidden", where, l));
  p.rows = l.rows;
  p.cols = l.cols;
  p.dhidden_stride = l.stride;
  GECKO_RETURN_IF_ERROR(check_row_matrix(x.a, "a", p.rows, p.cols, where, p.a_stride));
  GECKO_RETURN_IF_ERROR(check_row_matrix(x.b, "b", p.rows, p.cols, where, p.b_stride));
  GECKO_RETURN_IF_ERROR(check_row_matrix(x.da, "da", p.rows, p.cols, where, p.da_stride));
  return check_row_matrix(x.db, "db", p.rows, p.cols, where, p.db_stride);
}

}  // namespace gecko::swiglu
