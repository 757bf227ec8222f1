// stream_long_context: streams a long token sequence through a Gecko block one token at a time
// (after a chunked prefill) and prints, as the context grows, the size of the layer's inference
// state and the time per token: both must stay flat, because the state is bounded (the
// attention cache holds at most 2C - 1 tokens; the working memory, EMA and norm states have
// fixed sizes) whatever the context length.
//
// This build runs the CPU reference backend at a small configuration; the GPU path at the 7B
// shapes (4,194,304 tokens) uses the CUDA block when it is built.
//
//   usage: gecko_stream_long_context [tokens=16384] [report_every=2048]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "gecko/gecko.hpp"

using namespace gecko;

namespace {

std::size_t state_bytes(const layers::mega::State& s) {
  return 8 * (s.norm_count.size() + s.norm_mean.size() + s.norm_var.size() + s.cema_h.size() + s.sca_prev_k.size() +
              s.awm_prev_k.size() + s.prev_v.size() + s.memory.size() + s.log_norm.size() +
              s.prev_segment_idx.size() + s.prev_segment_count.size());
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 16384;
  const std::int64_t every = argc > 2 ? std::atoll(argv[2]) : 2048;
  layers::GeckoConfig c;
  c.model_dim = 64;
  c.z_dim = 64;
  c.value_dim = 64;
  c.num_heads = 2;
  c.cema_ndim = 4;
  c.chunk_size = 32;
  c.timenorm_num_groups = 4;
  c.ffn_hidden_dim = 128;
  c.rope_base = 10000.0;
  const std::int64_t D = c.model_dim, C = c.chunk_size;
  std::printf("backend: CPU reference (double), Gecko block D=%lld, %lld heads, chunk %lld; streaming %lld tokens\n",
              static_cast<long long>(D), static_cast<long long>(c.num_heads), static_cast<long long>(C),
              static_cast<long long>(tokens));
  auto params = layers::block::make_parameters(c);
  layers::init_parameters(params, 7);
  layers::mega::State state;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<double> x(D), y(D);
  // Prefill: two whole chunks in one call.
  {
    std::vector<double> px(2 * C * D), py(2 * C * D);
    for (auto& v : px) v = d(rng);
    layers::block::ForwardArgs<double> f;
    f.x = host_view(px, {1, 2 * C, D});
    f.out = host_view(py, {1, 2 * C, D});
    throw_if_error(layers::block::cpu::forward(c, params, f, &state));
  }
  std::printf("%12s %14s %16s %12s\n", "context", "state bytes", "us per token", "|y| (last)");
  auto window_start = std::chrono::steady_clock::now();
  std::int64_t window_tokens = 0;
  for (std::int64_t t = 2 * C; t < tokens; ++t) {
    for (auto& v : x) v = d(rng);
    layers::block::ForwardArgs<double> f;
    f.x = host_view(x, {1, 1, D});
    f.out = host_view(y, {1, 1, D});
    throw_if_error(layers::block::cpu::forward(c, params, f, &state));
    ++window_tokens;
    if ((t + 1) % every == 0 || t + 1 == tokens) {
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - window_start).count() /
                        static_cast<double>(window_tokens);
      double norm = 0;
      for (double v : y) norm += v * v;
      std::printf("%12lld %14zu %16.1f %12.4f\n", static_cast<long long>(t + 1), state_bytes(state), us, std::sqrt(norm));
      std::fflush(stdout);
      window_start = std::chrono::steady_clock::now();
      window_tokens = 0;
    }
  }
  return 0;
}
