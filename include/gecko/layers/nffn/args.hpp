// The normalized SwiGLU feed-forward network (the authors' NormalizedFeedForwardNetwork with
// swiglu = True and no layer scale, spec_attn_awm_layer.md 3.3): parameters, arguments, validation.
//
//   u   = GroupLayerNorm(x)                       (norm.weight as offset scale, norm.bias)
//   out = fc2( silu(fc1(u)) * fc3(u) ) + x        (fc1, fc3: D -> F; fc2: F -> D; no biases)
//
// In the Gecko block x is the MEGA layer's output and is also the residual (two_hop_residual off).
// The network is position-wise: it has no state and any L works.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gecko/core/tensor_view.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/parameters.hpp"

namespace gecko::layers::nffn {

enum Param : int { kNormWeight, kNormBias, kFc1Weight, kFc2Weight, kFc3Weight, kNumParams };

// Names and shapes exactly as the authors' module's state_dict has them.
inline std::vector<ParamSpec> parameter_specs(const GeckoConfig& c) {
  const std::int64_t D = c.model_dim, F = c.ffn_hidden_dim;
  return {{"norm.weight", {D}}, {"norm.bias", {D}}, {"fc1.weight", {F, D}}, {"fc2.weight", {D, F}},
          {"fc3.weight", {F, D}}};
}

inline ParameterSet make_parameters(const GeckoConfig& c) { return ParameterSet(parameter_specs(c)); }

template <class T>
struct ForwardArgs {
  TensorView<const T> x;  // [B, L, D], unit stride in D, outer strides free
  TensorView<T> out;      // [B, L, D], unit stride in D
};

template <class T>
struct BackwardArgs {
  TensorView<const T> x;     // [B, L, D] forward input (the forward is recomputed)
  TensorView<const T> dout;  // [B, L, D]
  TensorView<T> dx;          // [B, L, D] (includes the residual's dout)
};

struct Problem {
  std::int64_t batch = 0, length = 0;
};

namespace detail {

template <class T>
Status check_activation(const TensorView<T>& t, const char* name, const Problem& p, std::int64_t D, Memory where) {
  if (t.empty()) return invalid_argument(std::string(name) + " is missing (null data)");
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {p.batch, p.length, D}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

template <class A>
Status check_x(const GeckoConfig& c, const A& a, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(validate(c));
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  if (a.x.rank != 3) return invalid_argument("x has shape " + a.x.shape_string() + ", expected [B, L, D]");
  p.batch = a.x.size(0);
  p.length = a.x.size(1);
  return check_activation(a.x, "x", p, c.model_dim, where);
}

}  // namespace detail

template <class T>
Status validate(const GeckoConfig& c, const ForwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_x(c, a, where, p));
  return detail::check_activation(a.out, "out", p, c.model_dim, where);
}

template <class T>
Status validate(const GeckoConfig& c, const BackwardArgs<T>& a, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_x(c, a, where, p));
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dout, "dout", p, c.model_dim, where));
  return detail::check_activation(a.dx, "dx", p, c.model_dim, where);
}

}  // namespace gecko::layers::nffn
