// CPU reference for the Gecko block: the MEGA layer's and the feed-forward network's CPU
// references chained, in double whatever T is. Same contract as mega::cpu (see
// layers/mega/reference.hpp): forward(config, params, args, state) and
// backward(config, params, args, grads, state), the backward recomputing the forward.
#pragma once

#include <vector>

#include "gecko/layers/block/args.hpp"
#include "gecko/layers/dense.hpp"
#include "gecko/layers/mega/reference.hpp"
#include "gecko/layers/nffn/reference.hpp"

namespace gecko::layers::block::cpu {

namespace detail {

struct Weights {
  mega::cpu::detail::Weights mega;
  nffn::cpu::detail::Weights nffn;
};

inline Status bind(const GeckoConfig& c, const ParameterSet& params, Weights& w) {
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::bind(c, params, kMegaPrefix, w.mega));
  return nffn::cpu::detail::bind(c, params, kNffnPrefix, w.nffn);
}

struct Activations {
  mega::cpu::detail::Activations mega;
  nffn::cpu::detail::Activations nffn;
};

template <class A>
Status run_forward(const GeckoConfig& c, const Weights& w, const Problem& p, const State& s, const A& a,
                   Activations& act) {
  mega::cpu::detail::load_inputs(p, a, act.mega);
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::run_forward(c, w.mega, p, s, act.mega));
  act.nffn.rows = p.batch * p.length;
  act.nffn.x = act.mega.out;
  return nffn::cpu::detail::run_forward(c, w.nffn, act.nffn);
}

}  // namespace detail

template <class T>
Status forward(const GeckoConfig& config, const ParameterSet& params, const ForwardArgs<T>& a,
               State* state = nullptr) {
  State local;
  State& s = state ? *state : local;
  Problem p;
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::prepare(config, a, s, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, w));
  detail::Activations act;
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, p, s, a, act));
  dense::store(act.nffn.out, a.out);
  if (state) GECKO_RETURN_IF_ERROR(mega::cpu::detail::advance(config, p, act.mega, *state));
  return Status::success();
}

template <class T>
Status backward(const GeckoConfig& config, const ParameterSet& params, const BackwardArgs<T>& a, ParameterSet& grads,
                const State* state = nullptr) {
  const State fresh;
  const State& s = state ? *state : fresh;
  Problem p;
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::prepare(config, a, s, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, w));
  mega::cpu::detail::Gradients gm;
  nffn::cpu::detail::Gradients gn;
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::bind(config, grads, kMegaPrefix, gm));
  GECKO_RETURN_IF_ERROR(nffn::cpu::detail::bind(config, grads, kNffnPrefix, gn));
  detail::Activations act;
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, p, s, a, act));
  std::vector<double> dy, dx;
  GECKO_RETURN_IF_ERROR(nffn::cpu::detail::run_backward(config, w.nffn, act.nffn, dense::load(a.dout), gn, dy));
  GECKO_RETURN_IF_ERROR(mega::cpu::detail::run_backward(config, w.mega, p, s, act.mega, dy, gm, dx));
  dense::store(dx, a.dx);
  return Status::success();
}

}  // namespace gecko::layers::block::cpu
