// The Gecko block (the authors' GeckoBlock, spec_attn_awm_layer.md 3.1): the MEGA layer, then the
// normalized feed-forward network whose residual is the MEGA output (two_hop_residual off):
//   y = MEGA(x; bos_mask, segment_idx, state),   out = NFFN(y) = fc2(silu(fc1(LN(y))) * fc3(LN(y))) + y
// Its parameters are the two sublayers' under the authors' attribute names, "mega." and "nffn."
// ("mega.wz.weight", "nffn.fc1.weight", ...); its arguments, call rule and streaming state are the
// MEGA layer's (the feed-forward network is position-wise and has no state).
#pragma once

#include <string>
#include <vector>

#include "gecko/layers/config.hpp"
#include "gecko/layers/mega/args.hpp"
#include "gecko/layers/mega/state.hpp"
#include "gecko/layers/nffn/args.hpp"
#include "gecko/layers/parameters.hpp"

namespace gecko::layers::block {

inline const std::string kMegaPrefix = "mega.";
inline const std::string kNffnPrefix = "nffn.";

inline std::vector<ParamSpec> parameter_specs(const GeckoConfig& c) {
  std::vector<ParamSpec> specs;
  for (auto s : mega::parameter_specs(c)) specs.push_back({kMegaPrefix + s.name, s.shape});
  for (auto s : nffn::parameter_specs(c)) specs.push_back({kNffnPrefix + s.name, s.shape});
  return specs;
}

inline ParameterSet make_parameters(const GeckoConfig& c) { return ParameterSet(parameter_specs(c)); }

template <class T>
using ForwardArgs = mega::ForwardArgs<T>;
template <class T>
using BackwardArgs = mega::BackwardArgs<T>;
using Problem = mega::Problem;
using State = mega::State;

template <class T>
Status validate(const GeckoConfig& c, const ForwardArgs<T>& a, std::int64_t start, Memory where, Problem& p) {
  return mega::validate(c, a, start, where, p);
}
template <class T>
Status validate(const GeckoConfig& c, const BackwardArgs<T>& a, std::int64_t start, Memory where, Problem& p) {
  return mega::validate(c, a, start, where, p);
}

}  // namespace gecko::layers::block
