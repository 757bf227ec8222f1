// A small Gecko block shared by the GPU block tests: 2 heads of 128 (the CUDA working memory's
// sizes), chunks of 64, and parameters with non-zero norm offsets and view affines so every
// gradient path carries signal.
#pragma once

#include <random>
#include <string>

#include "gecko/layers/block/args.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/init.hpp"

namespace gecko::test {

inline layers::GeckoConfig small_block_config() {
  layers::GeckoConfig c;
  c.model_dim = 256;
  c.z_dim = 256;  // 2 heads of 128
  c.value_dim = 256;
  c.num_heads = 2;
  c.cema_ndim = 4;
  c.chunk_size = 64;
  c.timenorm_num_groups = 4;
  c.timenorm_beta1 = 0.99;
  c.timenorm_beta2 = 0.999;
  c.ffn_hidden_dim = 512;
  c.rope_base = 10000.0;
  return c;
}

// The blocks' default init, then N(0, 0.2) added to every norm weight, gamma and beta.
inline layers::ParameterSet perturbed_block_parameters(const layers::GeckoConfig& c, std::uint64_t seed = 11) {
  auto params = layers::block::make_parameters(c);
  layers::init_parameters(params, seed);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd(0.0, 0.2);
  for (const auto& n : params.names())
    if (n.find("norm.") != std::string::npos || n.find("gamma") != std::string::npos || n.find("beta") != std::string::npos)
      for (auto& v : params.find(n)->data) v += nd(rng);
  return params;
}

}  // namespace gecko::test
