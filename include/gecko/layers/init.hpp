// Initial parameters for the Gecko layers, following the authors' initialisation as the spec
// describes it (spec_attn_awm_layer.md 0, paper_notes.md 2.2), seeded and deterministic for one
// standard library:
//   Linear weights ("he", kaiming_normal with a = sqrt(5)): N(0, 1 / (3 fan_in)); biases 0
//   norm weights (offsets) and biases, gamma, beta: 0
//   cema.alpha, cema.delta: N(0, 0.2^2)
//   cema.theta: logit(exp(-k ln(D) / D)) for k = 1..D, randomly permuted over the channels
//   cema.gamma: real part N(0, 1/N), imaginary part 0
// Works on any ParameterSet of the layers (MEGA, NFFN, block: names are matched by suffix).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gecko/layers/config.hpp"
#include "gecko/layers/parameters.hpp"

namespace gecko::layers {

inline void init_parameters(ParameterSet& params, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::string x(suffix);
    return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  for (const auto& name : params.names()) {
    HostTensor& t = *params.find(name);
    auto normal = [&](double sd) {
      std::normal_distribution<double> d(0.0, sd);
      for (auto& v : t.data) v = d(rng);
    };
    std::fill(t.data.begin(), t.data.end(), 0.0);
    if (ends_with(name, "cema.alpha") || ends_with(name, "cema.delta")) {
      normal(0.2);
    } else if (ends_with(name, "cema.theta")) {
      // Log-spaced base frequencies in (0, 1), stored through the sigmoid the layer applies.
      const std::int64_t D = t.numel();
      std::vector<std::int64_t> perm(static_cast<std::size_t>(D));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (std::int64_t d = 0; d < D; ++d) {
        double f = std::exp(-static_cast<double>(perm[d] + 1) * std::log(static_cast<double>(D)) / D);
        if (f >= 1.0) f = 0.5;  // only D = 1: exp(0) = 1 would be an infinite logit
        t.data[d] = std::log(f / (1.0 - f));
      }
    } else if (ends_with(name, "cema.gamma")) {
      const std::int64_t N = t.shape[1];
      std::normal_distribution<double> d(0.0, std::sqrt(1.0 / static_cast<double>(N)));
      for (std::size_t i = 0; i < t.data.size(); i += 2) t.data[i] = d(rng);  // imaginary parts stay 0
    } else if (ends_with(name, ".weight") && t.shape.size() == 2) {
      normal(1.0 / std::sqrt(3.0 * static_cast<double>(t.shape[1])));  // Linear [out, in]
    }
    // Everything else (biases, norm offsets, gamma, beta) starts at 0.
  }
}

}  // namespace gecko::layers
