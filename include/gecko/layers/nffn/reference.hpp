// CPU reference for the normalized SwiGLU feed-forward network: the group LayerNorm op's cpu::
// reference and plain Linear loops, in double whatever T is. The backward recomputes the forward.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/dense.hpp"
#include "gecko/layers/nffn/args.hpp"
#include "gecko/layers/parameters.hpp"
#include "gecko/ops/group_norm/reference.hpp"

namespace gecko::layers::nffn::cpu {

namespace detail {

using I64 = std::int64_t;

struct Weights {
  const double* p[kNumParams] = {};
};
struct Gradients {
  double* p[kNumParams] = {};
};

inline Status bind(const GeckoConfig& c, const ParameterSet& set, const std::string& prefix, Weights& w) {
  const auto specs = parameter_specs(c);
  GECKO_RETURN_IF_ERROR(set.check(specs, prefix, "params"));
  for (int i = 0; i < kNumParams; ++i) w.p[i] = param_data(set, prefix + specs[i].name);
  return Status::success();
}

inline Status bind(const GeckoConfig& c, ParameterSet& set, const std::string& prefix, Gradients& g) {
  const auto specs = parameter_specs(c);
  GECKO_RETURN_IF_ERROR(set.check(specs, prefix, "grads"));
  for (int i = 0; i < kNumParams; ++i) g.p[i] = param_data(set, prefix + specs[i].name);
  return Status::success();
}

// One call's intermediates, dense [rows, ...].
struct Activations {
  I64 rows = 0;
  std::vector<double> x;       // [rows, D] input and residual
  std::vector<double> u;       // [rows, D] LayerNorm(x)
  std::vector<double> a1, a3;  // [rows, F] fc1(u), fc3(u)
  std::vector<double> hidden;  // [rows, F] silu(a1) * a3
  std::vector<double> out;     // [rows, D]
};

// act.x and act.rows are set by the caller.
inline Status run_forward(const GeckoConfig& c, const Weights& w, Activations& act) {
  const I64 R = act.rows, D = c.model_dim, F = c.ffn_hidden_dim;
  act.u.resize(R * D);
  group_norm::ForwardArgs<double> ln;
  ln.kind = group_norm::Kind::kLayer;
  ln.groups = c.layernorm_num_groups;
  ln.eps = c.norm_eps;
  ln.x = host_view(act.x, {R, D});
  ln.weight = TensorView<const double>::host(w.p[kNormWeight], {D});
  ln.bias = TensorView<const double>::host(w.p[kNormBias], {D});
  ln.y = host_view(act.u, {R, D});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::forward(ln));
  act.a1.resize(R * F);
  act.a3.resize(R * F);
  act.hidden.resize(R * F);
  dense::linear(act.u.data(), R, D, w.p[kFc1Weight], nullptr, F, act.a1.data());
  dense::linear(act.u.data(), R, D, w.p[kFc3Weight], nullptr, F, act.a3.data());
  for (I64 i = 0; i < R * F; ++i) act.hidden[i] = dense::silu(act.a1[i]) * act.a3[i];
  act.out.resize(R * D);
  dense::linear(act.hidden.data(), R, F, w.p[kFc2Weight], nullptr, D, act.out.data());
  for (I64 i = 0; i < R * D; ++i) act.out[i] += act.x[i];
  return Status::success();
}

// dx (dense [rows, D], overwritten) and every parameter gradient, from dout.
inline Status run_backward(const GeckoConfig& c, const Weights& w, const Activations& act,
                           const std::vector<double>& dout, const Gradients& g, std::vector<double>& dx) {
  const I64 R = act.rows, D = c.model_dim, F = c.ffn_hidden_dim;
  dx = dout;  // the residual
  std::vector<double> dhidden(R * F, 0.0), da1(R * F), da3(R * F), du(R * D, 0.0), dx_ln(R * D);
  dense::linear_backward(act.hidden.data(), R, F, w.p[kFc2Weight], D, dout.data(), dhidden.data(), g.p[kFc2Weight],
                         nullptr);
  for (I64 i = 0; i < R * F; ++i) {
    da1[i] = dhidden[i] * act.a3[i] * dense::silu_grad(act.a1[i]);
    da3[i] = dhidden[i] * dense::silu(act.a1[i]);
  }
  dense::linear_backward(act.u.data(), R, D, w.p[kFc1Weight], F, da1.data(), du.data(), g.p[kFc1Weight], nullptr);
  dense::linear_backward(act.u.data(), R, D, w.p[kFc3Weight], F, da3.data(), du.data(), g.p[kFc3Weight], nullptr);
  group_norm::BackwardArgs<double> lb;
  lb.kind = group_norm::Kind::kLayer;
  lb.groups = c.layernorm_num_groups;
  lb.eps = c.norm_eps;
  lb.x = host_view(act.x, {R, D});
  lb.weight = TensorView<const double>::host(w.p[kNormWeight], {D});
  lb.dy = host_view(du, {R, D});
  lb.dx = host_view(dx_ln, {R, D});
  lb.dweight = TensorView<double>::host(g.p[kNormWeight], {D});
  lb.dbias = TensorView<double>::host(g.p[kNormBias], {D});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::backward(lb));
  dense::add_into(dx, dx_ln);
  return Status::success();
}

}  // namespace detail

template <class T>
Status forward(const GeckoConfig& config, const ParameterSet& params, const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(config, a, Memory::kHost, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, "", w));
  detail::Activations act;
  act.rows = p.batch * p.length;
  act.x = dense::load(a.x);
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, act));
  dense::store(act.out, a.out);
  return Status::success();
}

template <class T>
Status backward(const GeckoConfig& config, const ParameterSet& params, const BackwardArgs<T>& a,
                ParameterSet& grads) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(config, a, Memory::kHost, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, "", w));
  detail::Gradients g;
  GECKO_RETURN_IF_ERROR(detail::bind(config, grads, "", g));
  detail::Activations act;
  act.rows = p.batch * p.length;
  act.x = dense::load(a.x);
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, act));
  std::vector<double> dx;
  GECKO_RETURN_IF_ERROR(detail::run_backward(config, w, act, dense::load(a.dout), g, dx));
  dense::store(dx, a.dx);
  return Status::success();
}

}  // namespace gecko::layers::nffn::cpu
