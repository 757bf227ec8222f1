// stream_long_context: streams a long token sequence through a Gecko block and prints, as the
// context grows, the device memory in use, the size of the layer's inference state and the time
// per token: all must stay flat, because the state is bounded (the attention cache holds at most
// 2C - 1 tokens; the working memory, EMA and norm states have fixed sizes) whatever the length.
//
// With a GPU: the 7B block shapes in bf16 (random weights), 4,194,304 tokens by default, prefilled
// chunk by chunk (C = 2048 tokens per call); at every report the decode step (one token through
// the block, host included, replayed from a CUDA graph) is timed over 16 tokens before the chunk is
// completed. --json PATH
// writes the reports (bench/plot_results.py draws them).
// Without a GPU: the CPU reference backend at a small configuration, one token at a time.
//
//   usage: gecko_stream_long_context [tokens] [report_every] [--json PATH]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <algorithm>
#include <vector>

#include "gecko/gecko.hpp"
#include "gecko/layers/cuda/stream.cuh"

using namespace gecko;

namespace {

std::size_t state_bytes(const layers::mega::State& s) {
  return 8 * (s.norm_count.size() + s.norm_mean.size() + s.norm_var.size() + s.cema_h.size() + s.sca_prev_k.size() +
              s.awm_prev_k.size() + s.prev_v.size() + s.memory.size() + s.log_norm.size() +
              s.prev_segment_idx.size() + s.prev_segment_count.size());
}

}  // namespace

// The 7B block on the GPU: chunked prefill to `tokens`, decode steps timed at every report.
int run_gpu(std::int64_t tokens, std::int64_t every, const char* json_path) {
  using T = __nv_bfloat16;
  const layers::GeckoConfig c;  // the 7B defaults
  const std::int64_t D = c.model_dim, C = c.chunk_size;
  const std::int64_t probe = 16;  // decode steps timed per report
  tokens = std::max<std::int64_t>(C, tokens / C * C);
  every = std::max<std::int64_t>(C, every / C * C);
  DeviceInfo const* dev = nullptr;
  throw_if_error(current_device_info(&dev));
  std::printf("backend: CUDA on %s; Gecko block at the 7B shapes (D=%lld, %lld heads, dv %lld, chunk %lld), bf16, "
              "random weights; streaming %lld tokens\n",
              dev->name, static_cast<long long>(D), static_cast<long long>(c.num_heads),
              static_cast<long long>(c.v_head_dim()), static_cast<long long>(C), static_cast<long long>(tokens));
  std::fflush(stdout);
  auto host = layers::block::make_parameters(c);
  layers::init_parameters(host, 7);
  layers::cuda::DeviceParameters<T> params;
  throw_if_error(params.upload(host));
  linear::cuda::Context ctx;
  throw_if_error(ctx.init());
  layers::cuda::BlockStream<T> stream;
  throw_if_error(stream.init(c, 1));
  throw_if_error(stream.set_decode_graphs(true));  // decode steps replay a captured CUDA graph
  // Inputs: a few distinct chunks of random activations, reused (the state still evolves).
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  constexpr int kInputs = 4;
  std::vector<DeviceBuffer<T>> xs(kInputs);
  for (auto& x : xs) {
    std::vector<T> h(static_cast<std::size_t>(C * D));
    for (auto& v : h) v = from_float<T>(nd(rng));
    x.upload(h);
  }
  DeviceBuffer<T> out(static_cast<std::size_t>(C * D));
  cudaStream_t st;
  throw_if_error(cuda_status(cudaStreamCreate(&st), "cudaStreamCreate"));
  const auto call = [&](std::int64_t L, int which) {
    throw_if_error(stream.forward(ctx, params, TensorView<const T>::device(xs[which % kInputs].data(), {1, L, D}), {},
                                  out.view({1, L, D}), st));
  };
  const auto used_bytes = [] {
    std::size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return total_b - free_b;
  };
  std::string json = "{\"device\": \"" + std::string(dev->name) + "\", \"chunk\": " + std::to_string(C) + ", \"reports\": [";
  std::printf("%12s %14s %12s %16s %16s\n", "context", "device MiB", "state MiB", "prefill us/tok", "decode us/tok");
  auto window = std::chrono::steady_clock::now();
  std::int64_t window_tokens = 0, n = 0;
  int which = 0;
  while (stream.position() < tokens) {
    call(C, which++);
    window_tokens += C;
    const std::int64_t at = stream.position();
    if (at % every == 0 || at >= tokens || at == 4096 || at == 16384 || at == 65536) {
      throw_if_error(cuda_status(cudaStreamSynchronize(st), "sync"));
      const double prefill_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - window).count() /
          static_cast<double>(window_tokens);
      // Decode steps at this context, each waited for (the latency a caller sees), then the rest of
      // the chunk as one prefill call so the stream is back on a chunk boundary.
      std::vector<double> steps;
      for (std::int64_t i = 0; i < probe; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        call(1, which);
        throw_if_error(cuda_status(cudaStreamSynchronize(st), "sync"));
        steps.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(steps.begin(), steps.end());
      const double decode_us = steps[steps.size() / 2];
      const std::int64_t context = stream.position() - probe;
      call(C - probe, which++);
      const double used_mib = static_cast<double>(used_bytes()) / (1 << 20);
      const double state_mib = static_cast<double>(stream.state_bytes()) / (1 << 20);
      std::printf("\r%12lld %14.0f %12.2f %16.2f %16.1f\n", static_cast<long long>(context), used_mib, state_mib,
                  prefill_us, decode_us);
      std::fflush(stdout);
      json += std::string(n++ ? ", " : "") + "{\"context\": " + std::to_string(context) + ", \"device_mib\": " +
              std::to_string(used_mib) + ", \"state_mib\": " + std::to_string(state_mib) +
              ", \"prefill_us_per_token\": " + std::to_string(prefill_us) + ", \"decode_step_us\": " +
              std::to_string(decode_us) + "}";
      window = std::chrono::steady_clock::now();
      window_tokens = 0;
    } else if (stream.position() % (16 * C) == 0) {
      std::printf("\r  streaming: %lld / %lld tokens (%.1f%%)", static_cast<long long>(stream.position()),
                  static_cast<long long>(tokens), 100.0 * static_cast<double>(stream.position()) / tokens);
      std::fflush(stdout);
    }
  }
  throw_if_error(cuda_status(cudaStreamSynchronize(st), "sync"));
  cudaStreamDestroy(st);
  std::printf("decode steps replayed from CUDA graphs: %lld\n", static_cast<long long>(stream.graph_steps()));
  json += "], \"graph_steps\": " + std::to_string(stream.graph_steps()) + "}\n";
  if (json_path) {
    FILE* f = std::fopen(json_path, "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path);
      return 1;
    }
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}

int main(int argc, char** argv) {
  const char* json_path = nullptr;
  std::vector<const char*> pos;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--json" && i + 1 < argc) json_path = argv[++i];
    else pos.push_back(argv[i]);
  }
  const bool gpu = cuda_device_available() && std::getenv("GECKO_FORCE_CPU") == nullptr;
  if (gpu) {
    const std::int64_t tokens = pos.size() > 0 ? std::atoll(pos[0]) : 4194304;
    const std::int64_t every = pos.size() > 1 ? std::atoll(pos[1]) : 262144;
    try {
      return run_gpu(tokens, every, json_path);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  const std::int64_t tokens = pos.size() > 0 ? std::atoll(pos[0]) : 16384;
  const std::int64_t every = pos.size() > 1 ? std::atoll(pos[1]) : 2048;
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
