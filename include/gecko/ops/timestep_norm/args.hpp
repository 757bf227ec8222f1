// Timestep decay normalization: the runtime problem and its validation.
//
// x [B, L, D] is split into G groups of K = D / G contiguous channels. For each batch row b and
// group g a decayed state (count c, raw mean M, raw variance V) runs over time:
//   mu_t = mean_k x_{t,k},  s_t = mean_k (x_{t,k} - mu_t)^2          (within-token group moments)
//   valid, not BOS:  c += 1,  M = beta1 M + (1-beta1) mu_t,  V = beta2 V + (1-beta2) s_t
//   valid, BOS:      c = 1,   M = (1-beta1) mu_t,            V = (1-beta2) s_t
//   padded:          nothing changes (a BOS flag on a padded step is ignored), y = 0
//   mhat = M / (1 - beta1^c),  vhat = V / (1 - beta2^c),  r = rsqrt(vhat + eps)
//   y_{t,k} = (x_{t,k} - mhat) * r * (weight_k + 1) + bias_k
// The state starts from (prev_count, prev_mean, prev_var), or from zero, and the state after the
// last step is returned, so feeding it back into the next call continues the stream. M and V are
// raw (not bias-corrected), as the authors' cache stores them. V averages the within-token
// variances only (no spread of mu_t over time), which is the authors' definition.
// See ../shared/spec/spec_norm_cema.md section 1.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::timestep_norm {

// How the forward rounds the decay rates. The backward always uses exact double beta.
enum class BetaPrecision {
  // (1 - beta) and 1 - beta^c computed in double, beta^c as exp(c log beta): the model as written.
  kExact,
  // The authors' CUDA forward: beta rounded to float32 in (1 - beta) and in the bias correction, and
  // beta^c a float32 running product that starts from powf(beta, prev_count) and is reset to beta at a
  // BOS. For beta2 = 0.9999 this changes (1 - beta2) by 1.66e-4 relative, which shows in the raw var
  // state; use it to reproduce the golden vectors, not to train.
  kReferenceFloat32,
};

inline const char* beta_precision_name(BetaPrecision p) {
  return p == BetaPrecision::kExact ? "exact" : "reference_float32";
}

template <class T>
struct ForwardArgs {
  std::int64_t groups = 1;
  double beta1 = 0.999;
  double beta2 = 0.9999;
  float eps = 1e-5f;
  BetaPrecision beta_precision = BetaPrecision::kExact;
  TensorView<const T> x;                     // [B, L, D], unit stride in D, outer strides free
  TensorView<const T> weight;                // [D] offset scale (effective weight + 1), or empty
  TensorView<const T> bias;                  // [D] shift, or empty
  TensorView<const std::uint8_t> bos_mask;   // [B, L] 1 = a document starts here, or empty
  TensorView<const std::uint8_t> padding_mask;  // [B, L] 1 = padded step, or empty
  // Carried state in: all three or none (none = the zero prior, count 0).
  TensorView<const std::int64_t> prev_count;  // [B] valid steps since the last reset, >= 0
  TensorView<const acc_t<T>> prev_mean;       // [B, G] raw M
  TensorView<const acc_t<T>> prev_var;        // [B, G] raw V
  TensorView<T> y;                            // [B, L, D], unit stride in D
  // State out: all three or none. May alias prev_* (each row is read before it is written).
  TensorView<std::int64_t> count;  // [B]
  TensorView<acc_t<T>> mean;       // [B, G]
  TensorView<acc_t<T>> var;        // [B, G]
};

// The backward replays the forward statistics from x and the carried state (nothing is saved), so
// it takes every forward input except bias. beta_precision selects how that replay rounds beta, so
// the gradient is taken at the point the forward actually evaluated; the adjoint recurrence itself
// always uses exact double beta, as the authors' backward does.
template <class T>
struct BackwardArgs {
  std::int64_t groups = 1;
  double beta1 = 0.999;
  double beta2 = 0.9999;
  float eps = 1e-5f;
  BetaPrecision beta_precision = BetaPrecision::kExact;
  TensorView<const T> x;                        // [B, L, D] forward input
  TensorView<const T> weight;                   // [D] as in forward, or empty
  TensorView<const std::uint8_t> bos_mask;      // [B, L] or empty
  TensorView<const std::uint8_t> padding_mask;  // [B, L] or empty
  TensorView<const std::int64_t> prev_count;    // [B] \ carried state in, as in forward:
  TensorView<const acc_t<T>> prev_mean;         // [B, G]  > all three or none
  TensorView<const acc_t<T>> prev_var;          // [B, G] /
  TensorView<const T> dy;                       // [B, L, D]
  TensorView<const acc_t<T>> dmean;             // [B, G] grad of the returned mean, or empty (= 0)
  TensorView<const acc_t<T>> dvar;              // [B, G] grad of the returned var, or empty (= 0)
  TensorView<T> dx;                             // [B, L, D]; 0 at padded steps
  TensorView<acc_t<T>> dweight;                 // [D] (required iff weight is given); overwritten
  TensorView<acc_t<T>> dbias;                   // [D] or empty; overwritten
  TensorView<acc_t<T>> dprev_mean;              // [B, G] or empty; overwritten
  TensorView<acc_t<T>> dprev_var;               // [B, G] or empty; overwritten
};

// Derived sizes every backend works on.
struct Problem {
  std::int64_t batch = 0;
  std::int64_t length = 0;
  std::int64_t channels = 0;
  std::int64_t groups = 1;
  std::int64_t group_size = 0;
  bool has_prev_state = false;
  bool has_state_out = false;
};

namespace detail {

// An activation [B, L, D]: unit stride in D; outer strides are free.
template <class T>
Status check_activation(const TensorView<T>& t, const char* name, const Problem& p, Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {p.batch, p.length, p.channels}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

// A dense optional tensor of a fixed shape (masks, state, parameters).
template <class T>
Status check_optional(const TensorView<T>& t, const char* name, std::initializer_list<std::int64_t> shape,
                      Memory where) {
  if (t.empty()) return Status::success();
  GECKO_RETURN_IF_ERROR(check_shape(t, name, shape));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_contiguous(t, name);
}

inline Status check_beta(double beta, const char* name, BetaPrecision precision) {
  if (!(beta >= 0.0 && beta < 1.0))
    return invalid_argument(std::string(name) + " must be in [0, 1), got " + std::to_string(beta));
  // In the float32 mode 1 - float(beta) would be 0 and every step would divide by zero.
  if (precision == BetaPrecision::kReferenceFloat32 && !(static_cast<float>(beta) < 1.0f))
    return invalid_argument(std::string(name) + " rounds to 1 in float32 (reference_float32 precision)");
  return Status::success();
}

// Sizes from x, then the scalar options.
template <class Args>
Status check_problem(const Args& a, Memory where, Problem& p) {
  p = Problem{};
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  if (a.x.rank != 3) return invalid_argument("x has shape " + a.x.shape_string() + ", expected [B, L, D]");
  p.batch = a.x.size(0);
  p.length = a.x.size(1);
  p.channels = a.x.size(2);
  p.groups = a.groups;
  if (a.groups < 1) return invalid_argument("groups must be >= 1, got " + std::to_string(a.groups));
  if (p.channels < 1) return invalid_argument("x must have at least one channel");
  if (p.channels % a.groups != 0)
    return invalid_argument("channels (" + std::to_string(p.channels) + ") must be divisible by groups (" +
                            std::to_string(a.groups) + ")");
  p.group_size = p.channels / p.groups;
  GECKO_RETURN_IF_ERROR(check_activation(a.x, "x", p, where));
  GECKO_RETURN_IF_ERROR(check_beta(a.beta1, "beta1", a.beta_precision));
  GECKO_RETURN_IF_ERROR(check_beta(a.beta2, "beta2", a.beta_precision));
  if (!(a.eps >= 0.0f)) return invalid_argument("eps must be non-negative");
  GECKO_RETURN_IF_ERROR(check_optional(a.weight, "weight", {p.channels}, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.bos_mask, "bos_mask", {p.batch, p.length}, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.padding_mask, "padding_mask", {p.batch, p.length}, where));
  const int given = !a.prev_count.empty() + !a.prev_mean.empty() + !a.prev_var.empty();
  if (given != 0 && given != 3)
    return invalid_argument("prev_count, prev_mean and prev_var must be given together (all empty = zero state)");
  p.has_prev_state = given == 3;
  GECKO_RETURN_IF_ERROR(check_optional(a.prev_count, "prev_count", {p.batch}, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.prev_mean, "prev_mean", {p.batch, p.groups}, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.prev_var, "prev_var", {p.batch, p.groups}, where));
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_problem(a, where, p));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.bias, "bias", {p.channels}, where));
  if (a.y.empty()) return invalid_argument("y is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.y, "y", p, where));
  const int given = !a.count.empty() + !a.mean.empty() + !a.var.empty();
  if (given != 0 && given != 3) return invalid_argument("count, mean and var must be given together (or all empty)");
  p.has_state_out = given == 3;
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.count, "count", {p.batch}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.mean, "mean", {p.batch, p.groups}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.var, "var", {p.batch, p.groups}, where));
  return Status::success();
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_problem(a, where, p));
  if (a.dy.empty()) return invalid_argument("dy is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dy, "dy", p, where));
  if (a.dx.empty()) return invalid_argument("dx is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dx, "dx", p, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dmean, "dmean", {p.batch, p.groups}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dvar, "dvar", {p.batch, p.groups}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dweight, "dweight", {p.channels}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dbias, "dbias", {p.channels}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dprev_mean, "dprev_mean", {p.batch, p.groups}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dprev_var, "dprev_var", {p.batch, p.groups}, where));
  if (a.weight.empty() != a.dweight.empty())
    return invalid_argument("dweight must be given exactly when weight is given");
  return Status::success();
}

}  // namespace gecko::timestep_norm
