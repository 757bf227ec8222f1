// Group RMSNorm and group LayerNorm: the runtime problem and its validation.
//
// x [..., C] is split into G contiguous groups of K = C / G channels. Per row and group:
//   RMSNorm:   y = x * rsqrt(mean(x^2) + eps) * (weight + 1)
//   LayerNorm: y = (x - mean(x)) * rsqrt(var(x) + eps) * (weight + 1) + bias
// The weight is stored as an offset around 1, as in the authors' modules (effective scale =
// weight + 1); an empty weight means no affine transform. Statistics are fp32 on the GPU and
// double on the CPU; parameter gradients are fp32.
#pragma once

#include <cstdint>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::group_norm {

enum class Kind { kRms, kLayer };

inline const char* kind_name(Kind k) { return k == Kind::kRms ? "rms" : "layer"; }

template <class T>
struct ForwardArgs {
  Kind kind = Kind::kRms;
  std::int64_t groups = 1;
  float eps = 1e-5f;
  TensorView<const T> x;       // [..., C], unit stride in C, leading dims collapse into rows
  TensorView<const T> weight;  // [C] offset scale, or empty for no affine
  TensorView<const T> bias;    // [C] LayerNorm shift, or empty
  TensorView<T> y;             // same shape as x
};

template <class T>
struct BackwardArgs {
  Kind kind = Kind::kRms;
  std::int64_t groups = 1;
  float eps = 1e-5f;
  TensorView<const T> x;        // forward input (statistics are recomputed from it)
  TensorView<const T> weight;   // as in forward
  TensorView<const T> dy;       // [..., C]
  TensorView<T> dx;             // [..., C]
  TensorView<const T> dx_add;   // [..., C] optional, added to dx before rounding (the gradient of a
                                // residual branch around the norm); must not overlap dx
  TensorView<acc_t<T>> dweight;  // [C] (required iff weight is given); overwritten, not accumulated
  TensorView<acc_t<T>> dbias;    // [C] (LayerNorm with bias) or empty
};

// The flattened problem every backend works on.
struct Problem {
  std::int64_t rows = 0;
  std::int64_t channels = 0;
  std::int64_t groups = 1;
  std::int64_t group_size = 0;
  std::int64_t x_stride = 0, y_stride = 0, dy_stride = 0, dx_stride = 0, dadd_stride = 0;
};

namespace detail {

template <class T>
Status check_rows(const TensorView<T>& t, const char* name, std::int64_t rows, std::int64_t channels,
                  Memory where, std::int64_t& stride) {
  std::int64_t r = 0;
  if (t.empty()) return invalid_argument(std::string(name) + " is missing (null data)");
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  if (t.rank < 1 || t.size(-1) != channels)
    return invalid_argument(std::string(name) + " has shape " + t.shape_string() + ", expected last dimension " +
                            std::to_string(channels));
  GECKO_RETURN_IF_ERROR(check_inner_contiguous(t, name));
  if (!collapse_rows(t, r, stride))
    return invalid_argument(std::string(name) + " leading dimensions must collapse into rows with one row stride");
  if (r != rows)
    return invalid_argument(std::string(name) + " has " + std::to_string(r) + " rows, expected " + std::to_string(rows));
  if (rows > 1 && stride < channels)
    return invalid_argument(std::string(name) + " row stride " + std::to_string(stride) + " overlaps rows of " +
                            std::to_string(channels) + " channels");
  return Status::success();
}

template <class T>
Status check_param(const TensorView<T>& t, const char* name, std::int64_t channels, Memory where) {
  if (t.empty()) return Status::success();
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {channels}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_contiguous(t, name);
}

inline Status check_groups(std::int64_t channels, std::int64_t groups, float eps) {
  if (groups < 1) return invalid_argument("groups must be >= 1, got " + std::to_string(groups));
  if (channels < 1) return invalid_argument("x must have at least one channel");
  if (channels % groups != 0)
    return invalid_argument("channels (" + std::to_string(channels) + ") must be divisible by groups (" +
                            std::to_string(groups) + ")");
  if (!(eps >= 0.0f)) return invalid_argument("eps must be non-negative");
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  p = Problem{};
  p.channels = a.x.size(-1);
  p.groups = a.groups;
  GECKO_RETURN_IF_ERROR(detail::check_groups(p.channels, a.groups, a.eps));
  p.group_size = p.channels / p.groups;
  std::int64_t ignored = 0;
  if (!collapse_rows(a.x, p.rows, ignored)) return invalid_argument("x leading dimensions must collapse into rows");
  GECKO_RETURN_IF_ERROR(detail::check_rows(a.x, "x", p.rows, p.channels, where, p.x_stride));
  GECKO_RETURN_IF_ERROR(detail::check_rows(a.y, "y", p.rows, p.channels, where, p.y_stride));
  GECKO_RETURN_IF_ERROR(detail::check_param(a.weight, "weight", p.channels, where));
  GECKO_RETURN_IF_ERROR(detail::check_param(a.bias, "bias", p.channels, where));
  if (a.kind == Kind::kRms && !a.bias.empty()) return invalid_argument("bias is only defined for LayerNorm");
  return Status::success();
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  p = Problem{};
  p.channels = a.x.size(-1);
  p.groups = a.groups;
  GECKO_RETURN_IF_ERROR(detail::check_groups(p.channels, a.groups, a.eps));
  p.group_size = p.channels / p.groups;
  std::int64_t ignored = 0;
  if (!collapse_rows(a.x, p.rows, ignored)) return invalid_argument("x leading dimensions must collapse into rows");
  GECKO_RETURN_IF_ERROR(detail::check_rows(a.x, "x", p.rows, p.channels, where, p.x_stride));
  GECKO_RETURN_IF_ERROR(detail::check_rows(a.dy, "dy", p.rows, p.channels, where, p.dy_stride));
  GECKO_RETURN_IF_ERROR(detail::check_rows(a.dx, "dx", p.rows, p.channels, where, p.dx_stride));
  if (!a.dx_add.empty()) {
    GECKO_RETURN_IF_ERROR(detail::check_rows(a.dx_add, "dx_add", p.rows, p.channels, where, p.dadd_stride));
    if (static_cast<const void*>(a.dx_add.data) == static_cast<const void*>(a.dx.data))
      return invalid_argument("dx_add must not be dx itself");
  }
  GECKO_RETURN_IF_ERROR(detail::check_param(a.weight, "weight", p.channels, where));
  GECKO_RETURN_IF_ERROR(detail::check_param(a.dweight, "dweight", p.channels, where));
  GECKO_RETURN_IF_ERROR(detail::check_param(a.dbias, "dbias", p.channels, where));
  if (a.weight.empty() != a.dweight.empty())
    return invalid_argument("dweight must be given exactly when weight is given");
  if (a.kind == Kind::kRms && !a.dbias.empty()) return invalid_argument("dbias is only defined for LayerNorm");
  return Status::success();
}

}  // namespace gecko::group_norm
