// Complex exponential moving average (CEMA): the runtime problem and its validation.
//
// Every channel d of x [B, L, D] drives N independent complex states. From the raw parameters
// (alpha, delta [D, N], theta [D], gamma [D, N, 2]):
//   p = sigmoid(alpha)                                        real   [D, N]
//   q = (1 - sigmoid(alpha) sigmoid(delta)) e^{i phi},  phi_{d,n} = (n+1) (2 pi / N) sigmoid(theta_d)
//   g = gamma[..., 0] + i gamma[..., 1]                       complex [D, N]
// and per (b, d, n), starting from h0 (or 0):
//   h_t = a_t h_{t-1} + p x_t,   a_t = BOS(t) ? 0 : q
//   y_t = sum_n Re(g h_t) + x_t                               (residual fused; add_residual = false drops it)
//   h_out = h_{L-1}
// |q| = 1 - sa sd < 1, so the recurrence is stable for any parameters.
//
// Layout: time-major [B, L, D], like every other gecko activation. The authors' op takes
// [B, D, L] (their module transposes around it); the golden checker transposes their vectors.
// Complex tensors are real tensors with a trailing (real, imag) dimension of 2.
// Parameters, state and their gradients are acc_t<T> (fp32 for GPU activation types).
// See ../shared/spec/spec_norm_cema.md section 2.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::cema {

// The raw parameters -> coefficients map, on its own (A = acc_t<T>: float or double).
template <class A>
struct CoefficientArgs {
  TensorView<const A> alpha;  // [D, N]
  TensorView<const A> delta;  // [D, N]
  TensorView<const A> theta;  // [D]
  TensorView<const A> gamma;  // [D, N, 2]
  TensorView<A> p;            // [D, N] out
  TensorView<A> q;            // [D, N, 2] out
  TensorView<A> g;            // [D, N, 2] out
};

// Chains gradients of p, q, g (empty = 0) back to the raw parameters (all four overwritten).
template <class A>
struct CoefficientBackwardArgs {
  TensorView<const A> alpha;  // [D, N]
  TensorView<const A> delta;  // [D, N]
  TensorView<const A> theta;  // [D]
  TensorView<const A> dp;     // [D, N] or empty
  TensorView<const A> dq;     // [D, N, 2] or empty
  TensorView<const A> dg;     // [D, N, 2] or empty
  TensorView<A> dalpha;       // [D, N]
  TensorView<A> ddelta;       // [D, N]
  TensorView<A> dtheta;       // [D]
  TensorView<A> dgamma;       // [D, N, 2]
};

template <class T>
struct ForwardArgs {
  bool add_residual = true;                 // y includes + x (the model always adds it)
  TensorView<const T> x;                    // [B, L, D], unit stride in D, outer strides free
  TensorView<const std::uint8_t> bos_mask;  // [B, L] 1 = reset the state here, or empty
  TensorView<const acc_t<T>> h0;            // [B, D, N, 2] carried state, or empty (= 0)
  TensorView<const acc_t<T>> alpha;         // [D, N]
  TensorView<const acc_t<T>> delta;         // [D, N]
  TensorView<const acc_t<T>> theta;         // [D]
  TensorView<const acc_t<T>> gamma;         // [D, N, 2]
  TensorView<T> y;                          // [B, L, D], unit stride in D
  TensorView<acc_t<T>> h_out;               // [B, D, N, 2] final state, or empty; may alias h0
};

// The backward recomputes the states from x and h0 (nothing is saved).
template <class T>
struct BackwardArgs {
  bool add_residual = true;                 // as in forward: dx then includes dy
  TensorView<const T> x;                    // [B, L, D] forward input
  TensorView<const std::uint8_t> bos_mask;  // [B, L] or empty
  TensorView<const acc_t<T>> h0;            // [B, D, N, 2] or empty
  TensorView<const acc_t<T>> alpha;         // [D, N]
  TensorView<const acc_t<T>> delta;         // [D, N]
  TensorView<const acc_t<T>> theta;         // [D]
  TensorView<const acc_t<T>> gamma;         // [D, N, 2]
  TensorView<const T> dy;                   // [B, L, D]
  TensorView<const acc_t<T>> dh_out;        // [B, D, N, 2] grad of h_out, or empty (= 0)
  TensorView<T> dx;                         // [B, L, D]
  // Parameter gradients: each may be empty when not wanted; overwritten, not accumulated.
  TensorView<acc_t<T>> dalpha;  // [D, N]
  TensorView<acc_t<T>> ddelta;  // [D, N]
  TensorView<acc_t<T>> dtheta;  // [D]
  TensorView<acc_t<T>> dgamma;  // [D, N, 2]
  TensorView<acc_t<T>> dh0;     // [B, D, N, 2] or empty
};

// Derived sizes every backend works on.
struct Problem {
  std::int64_t batch = 0;
  std::int64_t length = 0;
  std::int64_t channels = 0;
  std::int64_t states = 0;  // N
};

namespace detail {

template <class T>
Status check_required(const TensorView<T>& t, const char* name, std::initializer_list<std::int64_t> shape,
                      Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, shape));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_contiguous(t, name);
}

template <class T>
Status check_optional(const TensorView<T>& t, const char* name, std::initializer_list<std::int64_t> shape,
                      Memory where) {
  return t.empty() ? Status::success() : check_required(t, name, shape, where);
}

// An activation [B, L, D]: unit stride in D; outer strides are free.
template <class T>
Status check_activation(const TensorView<T>& t, const char* name, const Problem& p, Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {p.batch, p.length, p.channels}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

// D and N from alpha, then delta/theta (and gamma when given) against them.
template <class A>
Status check_params(const TensorView<const A>& alpha, const TensorView<const A>& delta,
                    const TensorView<const A>& theta, const TensorView<const A>* gamma, Memory where,
                    Problem& p) {
  GECKO_RETURN_IF_ERROR(check_required(alpha, "alpha", {-1, -1}, where));
  if (alpha.size(0) < 1 || alpha.size(1) < 1)
    return invalid_argument("alpha has shape " + alpha.shape_string() + ", expected [D, N] with D, N >= 1");
  p.channels = alpha.size(0);
  p.states = alpha.size(1);
  GECKO_RETURN_IF_ERROR(check_required(delta, "delta", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(check_required(theta, "theta", {p.channels}, where));
  if (gamma) GECKO_RETURN_IF_ERROR(check_required(*gamma, "gamma", {p.channels, p.states, 2}, where));
  return Status::success();
}

// x against the parameters, then the optional mask and carried state.
template <class Args>
Status check_sequence(const Args& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(check_params(a.alpha, a.delta, a.theta, &a.gamma, where, p));
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  if (a.x.rank != 3) return invalid_argument("x has shape " + a.x.shape_string() + ", expected [B, L, D]");
  p.batch = a.x.size(0);
  p.length = a.x.size(1);
  if (a.x.size(2) != p.channels)
    return invalid_argument("x has shape " + a.x.shape_string() + ", expected last dimension D = " +
                            std::to_string(p.channels) + " (from alpha)");
  GECKO_RETURN_IF_ERROR(check_activation(a.x, "x", p, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.bos_mask, "bos_mask", {p.batch, p.length}, where));
  return check_optional(a.h0, "h0", {p.batch, p.channels, p.states, 2}, where);
}

}  // namespace detail

template <class A>
Status validate(const CoefficientArgs<A>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_params(a.alpha, a.delta, a.theta, &a.gamma, where, p));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.p, "p", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.q, "q", {p.channels, p.states, 2}, where));
  return detail::check_required(a.g, "g", {p.channels, p.states, 2}, where);
}

template <class A>
Status validate(const CoefficientBackwardArgs<A>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_params<A>(a.alpha, a.delta, a.theta, nullptr, where, p));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dp, "dp", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dq, "dq", {p.channels, p.states, 2}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dg, "dg", {p.channels, p.states, 2}, where));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.dalpha, "dalpha", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.ddelta, "ddelta", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_required(a.dtheta, "dtheta", {p.channels}, where));
  return detail::check_required(a.dgamma, "dgamma", {p.channels, p.states, 2}, where);
}

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_sequence(a, where, p));
  if (a.y.empty()) return invalid_argument("y is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.y, "y", p, where));
  return detail::check_optional(a.h_out, "h_out", {p.batch, p.channels, p.states, 2}, where);
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(detail::check_sequence(a, where, p));
  if (a.dy.empty()) return invalid_argument("dy is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dy, "dy", p, where));
  if (a.dx.empty()) return invalid_argument("dx is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dx, "dx", p, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dh_out, "dh_out", {p.batch, p.channels, p.states, 2}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dalpha, "dalpha", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.ddelta, "ddelta", {p.channels, p.states}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dtheta, "dtheta", {p.channels}, where));
  GECKO_RETURN_IF_ERROR(detail::check_optional(a.dgamma, "dgamma", {p.channels, p.states, 2}, where));
  return detail::check_optional(a.dh0, "dh0", {p.batch, p.channels, p.states, 2}, where);
}

}  // namespace gecko::cema
