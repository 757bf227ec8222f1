// The MEGA layer's query/key views (spec 3.2 steps 4-5): per-head RMS normalisation of the wz
// output without affine, then four affine views of it.
//
//   zn[r, h*dz + c] = z[r, h*dz + c] * rsqrt(mean_c(z[r, h*dz + c]^2) + eps)
//   view_i = zn * (gamma[i] + 1) / sqrt(dz) + beta[i],   i = 0..3 -> q, k, aq, ak
//
//   z            [..., Z]  T   Z = heads * dz; rows collapse (any row stride), unit inner stride
//   gamma, beta  [4, Z]    T   contiguous; gamma is an offset (scale = gamma + 1), as the authors store it
//   q, k, aq, ak [..., Z]  T   separate row matrices, each with its own row stride. The authors' packed
//                              [B, L, 4, Z] buffer is four views of row stride 4Z at offsets i*Z
//                              (packed_view() below); separate [B, L, H, dz] tensors work as well.
//
// Forward saves nothing: backward takes z again and recomputes the per-(row, head) statistic,
// bit for bit as forward computed it. Backward:
//   dzn = sum_i dview_i * (gamma[i] + 1) / sqrt(dz)
//   dz  = rstd * (dzn - zn * mean_c(dzn * zn))         (per row and head)
//   dgamma[i] = sum_rows dview_i * zn / sqrt(dz),  dbeta[i] = sum_rows dview_i   ([4, Z] fp32)
// Statistics are fp32 on the GPU (double on the CPU); dgamma/dbeta are overwritten unless
// accumulate_dparams, and deterministic (per-CTA partials summed in a fixed order).
#pragma once

#include <cstdint>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/row_view.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::qk_views {

inline constexpr int kViews = 4;
inline const char* const kViewNames[kViews] = {"q", "k", "aq", "ak"};

template <class T>
struct ForwardArgs {
  std::int64_t heads = 1;
  float eps = 1e-5f;
  TensorView<const T> z;      // [..., Z]
  TensorView<const T> gamma;  // [4, Z]
  TensorView<const T> beta;   // [4, Z]
  TensorView<T> q, k, aq, ak;  // [..., Z] each
};

template <class T>
struct BackwardArgs {
  std::int64_t heads = 1;
  float eps = 1e-5f;
  TensorView<const T> z;      // forward input
  TensorView<const T> gamma;  // [4, Z]
  TensorView<const T> dq, dk, daq, dak;  // [..., Z] each
  TensorView<T> dz;                      // [..., Z]
  TensorView<acc_t<T>> dgamma, dbeta;    // [4, Z] each, or both empty (not wanted)
  bool accumulate_dparams = false;
};

struct Problem {
  std::int64_t rows = 0;
  std::int64_t channels = 0;  // Z
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;  // dz
  std::int64_t z_stride = 0, dz_stride = 0;
  std::int64_t view_stride[kViews] = {};  // q/k/aq/ak (forward) or their gradients (backward)
};

// View i (0..3 = q, k, aq, ak) of a packed [B, L, 4, Z] buffer, as a [B, L, Z] row matrix.
template <class T>
TensorView<T> packed_view(T* data, std::int64_t batch, std::int64_t length, std::int64_t channels, int i, Memory where) {
  return TensorView<T>::strided(data + i * channels, {batch, length, channels},
                                {length * kViews * channels, kViews * channels, 1}, where);
}

namespace detail {

inline Status check_heads(std::int64_t channels, std::int64_t heads, float eps) {
  if (heads < 1) return invalid_argument("heads must be >= 1, got " + std::to_string(heads));
  if (channels < 1) return invalid_argument("z must have at least one channel");
  if (channels % heads != 0)
    return invalid_argument("z channels (" + std::to_string(channels) + ") must be divisible by heads (" +
                            std::to_string(heads) + ")");
  if (!(eps >= 0.0f)) return invalid_argument("eps must be non-negative");
  return Status::success();
}

template <class T>
Status check_param(const TensorView<T>& t, const char* name, std::int64_t channels, Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {kViews, channels}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_contiguous(t, name);
}

template <class A>
Status common(const A& a, Memory where, Problem& p) {
  p = Problem{};
  RowLayout zl;
  GECKO_RETURN_IF_ERROR(row_layout(a.z, "z", where, zl));
  GECKO_RETURN_IF_ERROR(check_heads(zl.cols, a.heads, a.eps));
  p.rows = zl.rows;
  p.channels = zl.cols;
  p.heads = a.heads;
  p.head_dim = zl.cols / a.heads;
  p.z_stride = zl.stride;
  return check_param(a.gamma, "gamma", p.channels, where);
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::common(a, where, p));
  GECKO_RETURN_IF_ERROR(detail::check_param(a.beta, "beta", p.channels, where));
  const TensorView<T>* views[kViews] = {&a.q, &a.k, &a.aq, &a.ak};
  for (int i = 0; i < kViews; ++i)
    GECKO_RETURN_IF_ERROR(check_row_matrix(*views[i], kViewNames[i], p.rows, p.channels, where, p.view_stride[i]));
  return Status::success();
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::common(a, where, p));
  const TensorView<const T>* grads[kViews] = {&a.dq, &a.dk, &a.daq, &a.dak};
  const char* names[kViews] = {"dq", "dk", "daq", "dak"};
  for (int i = 0; i < kViews; ++i)
    GECKO_RETURN_IF_ERROR(check_row_matrix(*grads[i], names[i], p.rows, p.channels, where, p.view_stride[i]));
  GECKO_RETURN_IF_ERROR(check_row_matrix(a.dz, "dz", p.rows, p.channels, where, p.dz_stride));
  if (a.dgamma.empty() != a.dbeta.empty()) return invalid_argument("dgamma and dbeta must be given together");
  if (!a.dgamma.empty()) {
    GECKO_RETURN_IF_ERROR(detail::check_param(a.dgamma, "dgamma", p.channels, where));
    GECKO_RETURN_IF_ERROR(detail::check_param(a.dbeta, "dbeta", p.channels, where));
  }
  return Status::success();
}

}  // namespace gecko::qk_views
