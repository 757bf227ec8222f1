// The Gecko block (MEGA layer + SwiGLU feed-forward) at the 7B shapes, bf16, batch 1: forward and
// forward+backward, tokens/s, model FLOP/s and memory. The authors' block (their kernels plus
// PyTorch) on an H100 took 7.07 / 28.81 / 60.15 ms forward and 23.09 / 92.76 / 186.89 ms
// forward+backward at L = 4096 / 16384 / 32768 (../shared/PERFORMANCE.md); a Llama2-7B block runs
// beside this binary in the same device session (bench/llama2_block.py). The main rows let the
// linear Context time cuBLASLt's candidate algorithms per shape (AlgoChoice::kMeasured, chosen
// during the warm-up); the *_heuristic rows keep the heuristic's first choice, for comparison.
// The decode rows stream one token at a time through the block, or through the MEGA layer alone
// (the authors' MEGA decode step: 1.0 ms), after a prefill of `context` tokens.
#include <map>

#include "bench_common.cuh"
#include "gecko/layers/block/args.hpp"
#include "gecko/layers/cuda/block.cuh"
#include "gecko/layers/cuda/stream.cuh"
#include "gecko/layers/init.hpp"

namespace gecko::bench {
namespace {

using T = __nv_bfloat16;

struct Model {
  layers::GeckoConfig cfg;  // the 7B defaults
  layers::cuda::DeviceParameters<T> params;
  layers::cuda::DeviceGradients grads;
  linear::cuda::Context ctx;            // AlgoChoice::kMeasured
  linear::cuda::Context ctx_heuristic;  // AlgoChoice::kHeuristic
  std::size_t param_bytes = 0;
};

Model& model() {
  static Model* m = [] {
    auto* m = new Model;
    throw_if_error(m->ctx.init(linear::cuda::Context::kDefaultGemmWorkspaceBytes, linear::cuda::AlgoChoice::kMeasured));
    throw_if_error(m->ctx_heuristic.init());
    auto host = layers::block::make_parameters(m->cfg);
    layers::init_parameters(host, 1);
    throw_if_error(m->params.upload(host));
    throw_if_error(m->grads.allocate(host));
    m->param_bytes = static_cast<std::size_t>(host.numel()) * (sizeof(T) + 4);
    return m;
  }();
  return *m;
}

// Forward FLOPs per token: the projections plus the useful attention and memory products.
double forward_flops(const layers::GeckoConfig& c, std::int64_t L) {
  const double D = c.model_dim, Z = c.z_dim, E = c.value_dim, F = c.ffn_hidden_dim, H = c.num_heads;
  const double dk = c.z_head_dim(), dv = c.v_head_dim(), C = c.chunk_size;
  const double proj = 2.0 * (D * Z + 2 * D * E + D * D + E * D + 3 * D * F);
  const double chunks = static_cast<double>(L) / C;
  // Sliding chunk attention: chunk 0 sees C/2 keys on average, later chunks 1.5 C.
  const double sca = H * 2.0 * C * (C / 2 + (chunks - 1) * 1.5 * C) * (dk + dv) / static_cast<double>(L);
  const double awm = H * 3 * 2.0 * dk * dv;
  return (proj + sca + awm) * static_cast<double>(L);
}

// graph: the step (forward, or forward + backward) is captured once into a CUDA graph and the graph
// is what gets timed: no host launch or argument-checking time between the kernels.
void BM_block(benchmark::State& state, bool backward, bool measured, bool graph = false) {
  add_device_context();
  Model& m = model();
  linear::cuda::Context& ctx = measured ? m.ctx : m.ctx_heuristic;
  const std::int64_t B = 1, L = state.range(0), D = m.cfg.model_dim;
  const std::size_t n = static_cast<std::size_t>(B * L * D);
  std::vector<T> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = from_float<T>(static_cast<float>((i * 2654435761u) % 2000) / 1000.f - 1.f);
  DeviceBuffer<T> x, out(n), dout, dx(n);
  x.upload(host);
  dout.upload(host);
  layers::cuda::BlockCall<T> call;
  call.x = TensorView<const T>::device(x.data(), {B, L, D});
  layers::cuda::BlockPlan plan;
  throw_if_error(layers::cuda::block_plan(ctx, m.cfg, m.params, call, plan));
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  cudaStream_t stream = nullptr;
  if (graph) check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  auto fwd = [&] {
    throw_if_error(layers::cuda::block_forward(ctx, m.cfg, m.params, call, out.view({B, L, D}), act.data(), act.size(),
                                               ws.data(), ws.size(), stream));
  };
  auto bwd = [&] {
    throw_if_error(layers::cuda::block_backward(ctx, m.cfg, m.params, m.grads, call,
                                                TensorView<const T>::device(dout.data(), {B, L, D}),
                                                dx.view({B, L, D}), act.data(), act.size(), ws.data(), ws.size(),
                                                stream));
  };
  auto step = [&] {
    fwd();
    if (backward) bwd();
  };
  // (capture_graph runs the step once first: the cuBLASLt plans are created, and their algorithms
  // measured, outside the capture.)
  const cudaGraphExec_t exec = graph ? capture_graph(stream, step) : nullptr;
  const double flops = forward_flops(m.cfg, L) * (backward ? 3.0 : 1.0);
  run_timed(
      state,
      [&](int) {
        if (graph) check_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        else step();
      },
      1, {0, flops}, stream);
  if (graph) {
    check_cuda(cudaStreamSynchronize(stream), "graph");
    check_cuda(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }
  const double ms = state.counters["median_ms"];
  state.counters["tokens/s"] = static_cast<double>(L) / (ms * 1e-3);
  state.counters["MFU_989"] = flops / (ms * 1e-3) / 989.4e12;  // H100 SXM dense bf16 peak
  state.counters["activation_GiB"] = plan.activation_bytes / 1073741824.0;
  state.counters["workspace_GiB"] = plan.workspace_bytes / 1073741824.0;
  state.counters["params+grads_GiB"] = m.param_bytes / 1073741824.0;
  state.counters["measured_gemm_plans"] = static_cast<double>(ctx.measured_plans());
  state.counters["max_measured_gain"] = ctx.best_measured_gain();
  static const std::map<std::int64_t, std::pair<double, double>> authors = {
      {4096, {7.07, 23.09}}, {16384, {28.81, 92.76}}, {32768, {60.15, 186.89}}};
  auto it = authors.find(L);
  if (it != authors.end())
    state.counters["speedup_vs_authors"] = (backward ? it->second.second : it->second.first) / ms;
}

// Decode: prefill `context` tokens (whole chunks), then time one-token steps in groups of kSteps,
// host launches included. 3 warm-up groups + 29 timed ones are one chunk's worth of steps, so the
// attention cache grows from C to 2C - 1 over the run and the median group sits near 1.5 C.
// With graphs, the steps replay CUDA graphs (BlockStream::set_decode_graphs; graph_steps counts them).
void BM_decode(benchmark::State& state, layers::cuda::StreamLayers layers, bool graphs) {
  add_device_context();
  Model& m = model();
  constexpr int kSteps = 64;
  const std::int64_t B = 1, context = state.range(0), D = m.cfg.model_dim, C = m.cfg.chunk_size;
  layers::cuda::BlockStream<T> s;
  throw_if_error(s.init(m.cfg, B, layers));
  throw_if_error(s.set_decode_graphs(graphs));
  DeviceBuffer<T> x(static_cast<std::size_t>(C * D)), out(static_cast<std::size_t>(C * D));
  fill_bf16(x.data(), x.size(), 7, 1.f);
  for (std::int64_t p = 0; p < context; p += C)
    throw_if_error(s.forward(m.ctx, m.params, TensorView<const T>::device(x.data(), {B, C, D}), {},
                             out.view({B, C, D}), nullptr));
  run_timed(
      state,
      [&](int) {
        for (int i = 0; i < kSteps; ++i)
          throw_if_error(s.forward(m.ctx, m.params, TensorView<const T>::device(x.data(), {B, 1, D}), {},
                                   out.view({B, 1, D}), nullptr));
      },
      1, {});
  state.counters["step_ms"] = state.counters["median_ms"] / kSteps;
  state.counters["context"] = static_cast<double>(context);
  state.counters["end_position"] = static_cast<double>(s.position());
  state.counters["state_MiB"] = s.state_bytes() / 1048576.0;
  state.counters["graph_steps"] = static_cast<double>(s.graph_steps());
  if (layers == layers::cuda::StreamLayers::kMega) state.counters["speedup_vs_authors"] = 1.0 / state.counters["step_ms"];
}

BENCHMARK_CAPTURE(BM_decode, block_bf16, layers::cuda::StreamLayers::kBlock, false)
    ->Arg(4096)->Arg(65536)->ArgName("context")->UseManualTime()->Iterations(29)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_decode, mega_bf16, layers::cuda::StreamLayers::kMega, false)
    ->Arg(4096)->Arg(65536)->ArgName("context")->UseManualTime()->Iterations(29)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_decode, block_bf16_graph, layers::cuda::StreamLayers::kBlock, true)
    ->Arg(4096)->Arg(65536)->ArgName("context")->UseManualTime()->Iterations(29)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_decode, mega_bf16_graph, layers::cuda::StreamLayers::kMega, true)
    ->Arg(4096)->Arg(65536)->ArgName("context")->UseManualTime()->Iterations(29)->Unit(benchmark::kMillisecond);

BENCHMARK_CAPTURE(BM_block, fwd_bf16, false, true)
    ->Arg(4096)->Arg(16384)->Arg(32768)->Arg(131072)->ArgName("L")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_block, fwd_bwd_bf16, true, true)
    ->Arg(4096)->Arg(16384)->Arg(32768)->Arg(131072)->ArgName("L")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_block, fwd_bwd_bf16_heuristic, true, false)
    ->Arg(4096)->Arg(32768)->ArgName("L")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_block, fwd_bwd_bf16_graph, true, true, true)
    ->Arg(4096)->Arg(32768)->ArgName("L")->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gecko::bench
