// Adaptive working memory at the 7B shapes (B = 1, H = 4, dk = 256, dv = 2048, C = 2048, bf16, no
// carried state, one document), L in {4096, 16384, 65536}: forward, backward, forward + backward.
//
// TFLOP/s counts the model's GEMM FLOPs, whatever the kernels actually do: per chunk and head, the
// forward has three C x dk x dv products (Q̂M, K̂M, κ VV), the backward six (the two gradients of
// each), so forward = 3, backward = 6, forward + backward = 9 units of 2 C dk dv FLOPs. The bf16
// GEMM ceiling in the same binary is BM_gemm_bf16. At L = 16384, authors_ms and speedup compare with
// the authors' kernels (2.09 ms forward, 14.47 ms forward + backward). The *_cublaslt rows run the
// Context-taking launchers (launch_cublas.cuh: the large products on cuBLASLt), as the block does.
#include <map>
#include <string>

#include "bench_common.cuh"
#include "gecko/ops/working_memory/launch_cublas.cuh"

namespace gecko::bench {
namespace {

enum class Pass { kForward, kBackward, kBoth };

void fill(DeviceBuffer<__nv_bfloat16>& b, std::size_t n, std::uint32_t seed, float scale) {
  std::vector<__nv_bfloat16> h(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u + seed * 40503u;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    h[i] = from_float<__nv_bfloat16>(scale * (static_cast<float>(x % 2001) / 1000.f - 1.f));
  }
  b.upload(h);
}

// graph: the call is captured once into a CUDA graph and the replay is timed (no host launch or
// argument-checking time between the kernels; what a graph-captured training step sees).
// measured: the cuBLASLt context times each product's candidate algorithms (AlgoChoice::kMeasured,
// as the block benchmark's context does) instead of taking the heuristic's first.
void BM_working_memory(benchmark::State& state, Pass pass, bool cublaslt, bool saved_front = false,
                       bool graph = false, bool measured = false) {
  using T = __nv_bfloat16;
  add_device_context();
  const std::int64_t B = 1, H = 4, dk = 256, dv = 2048, C = 2048, L = state.range(0);
  const std::size_t nq = static_cast<std::size_t>(B * L * H * dk), nv = static_cast<std::size_t>(B * L * H * dv);
  DeviceBuffer<T> aq, ak, v, dout, out(nv), daq(nq), dak(nq), dvv(nv);
  fill(aq, nq, 1, 2.f);
  fill(ak, nq, 2, 2.f);
  fill(v, nv, 3, 1.f);
  fill(dout, nv, 4, 1.f);
  DeviceBuffer<float> mo(B * H * dk * dv), lo(B * H * dk);

  working_memory::ForwardArgs<T> f;
  f.chunk = C;
  f.aq = aq.view({B, L, H, dk});
  f.ak = ak.view({B, L, H, dk});
  f.v = v.view({B, L, H, dv});
  f.out = out.view({B, L, H, dv});
  f.memory_out = mo.view({B, H, dk, dv});
  f.log_norm_out = lo.view({B, H, dk});
  working_memory::BackwardArgs<T> g;
  g.chunk = C;
  g.aq = f.aq;
  g.ak = f.ak;
  g.v = f.v;
  g.dout = dout.view({B, L, H, dv});
  g.daq = daq.view({B, L, H, dk});
  g.dak = dak.view({B, L, H, dk});
  g.dv = dvv.view({B, L, H, dv});
  std::size_t fbytes = 0, bbytes = 0;
  linear::cuda::Context* ctx = !cublaslt ? nullptr : measured ? &measured_gemm_context() : &gemm_context();
  if (ctx) {
    throw_if_error(working_memory::cuda::forward_workspace_size(*ctx, f, fbytes));
    throw_if_error(working_memory::cuda::backward_workspace_size(*ctx, g, bbytes));
  } else {
    throw_if_error(working_memory::cuda::forward_workspace_size(f, fbytes));
    throw_if_error(working_memory::cuda::backward_workspace_size(g, bbytes));
  }
  // saved_front: the forward keeps its front for the backward (the block's training mode).
  working_memory::cuda::Saved saved;
  DeviceBuffer<char> saved_buf;
  if (saved_front) {
    throw_if_error(working_memory::cuda::saved_bytes(f, saved.bytes));
    saved_buf = DeviceBuffer<char>(saved.bytes);
    saved.data = saved_buf.data();
    state.counters["saved_MiB"] = static_cast<double>(saved.bytes) / (1 << 20);
  }
  const working_memory::cuda::Saved* sv = saved_front ? &saved : nullptr;
  DeviceBuffer<char> ws(std::max(fbytes, bbytes));
  state.counters["workspace_MiB"] = static_cast<double>(std::max(fbytes, bbytes)) / (1 << 20);

  const double unit = 2.0 * B * H * (L / C) * static_cast<double>(C) * dk * dv;
  const double units = pass == Pass::kForward ? 3 : pass == Pass::kBackward ? 6 : 9;
  cudaStream_t stream = nullptr;
  if (graph) check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  auto call = [&] {
    if (pass != Pass::kBackward)
      throw_if_error(ctx ? working_memory::cuda::forward(*ctx, f, ws.data(), ws.size(), stream, sv)
                         : working_memory::cuda::forward(f, ws.data(), ws.size(), stream, sv));
    if (pass != Pass::kForward)
      throw_if_error(ctx ? working_memory::cuda::backward(*ctx, g, ws.data(), ws.size(), stream, sv)
                         : working_memory::cuda::backward(g, ws.data(), ws.size(), stream, sv));
  };
  const cudaGraphExec_t exec = graph ? capture_graph(stream, call) : nullptr;
  run_timed(
      state,
      [&](int) {
        if (graph) check_cuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
        else call();
      },
      1, {0, units * unit}, stream);
  if (graph) {
    check_cuda(cudaStreamSynchronize(stream), "graph");
    check_cuda(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }
  if (L == 16384 && pass != Pass::kBackward) {
    const double authors = pass == Pass::kForward ? 2.09 : 14.47;
    state.counters["authors_ms"] = authors;
    state.counters["speedup"] = authors / state.counters["median_ms"];
  }
}

// The kernel sequence of one forward + backward at L = 16384, each launch timed with events (the
// executor interface the launcher is written against): where the time goes.
class TimingExec {
 public:
  explicit TimingExec(std::map<std::string, double>* acc) : acc_(acc) {}

  template <class T>
  Status feature_rows(const working_memory::kernels::FeatParams& p, std::int64_t blocks) const {
    return timed("feature_rows", [&] { return base_.feature_rows<T>(p, blocks); });
  }
  Status stats(const working_memory::kernels::StatsParams& p, std::int64_t blocks) const {
    return timed("stats", [&] { return base_.stats(p, blocks); });
  }
  template <class T>
  Status kappa(const working_memory::kernels::KappaParams& p, std::int64_t blocks) const {
    return timed("kappa", [&] { return base_.kappa<T>(p, blocks); });
  }
  Status grad_stats(const working_memory::kernels::GradStatsParams& p, std::int64_t blocks) const {
    return timed("grad_stats", [&] { return base_.grad_stats(p, blocks); });
  }
  template <class T, bool AR, bool BR, int EPI>
  Status gemm(working_memory::kernels::GemmParams& gp, const char* what) const {
    return timed(what, [&] { return base_.gemm<T, AR, BR, EPI>(gp, what); });
  }
  template <class T, bool kBwd>
  Status scan(const working_memory::kernels::ScanParams& sp, std::int64_t grid) const {
    return timed(kBwd ? "scan_bwd" : "scan", [&] { return base_.scan<T, kBwd>(sp, grid); });
  }
  template <class T>
  Status zero_rows(const TensorView<T>& t, std::int64_t r0, std::int64_t rows) const {
    return timed("zero_rows", [&] { return base_.zero_rows<T>(t, r0, rows); });
  }
  template <class T>
  Status decode_read(const working_memory::kernels::DecodeParams& p) const {
    return timed("decode_read", [&] { return base_.decode_read<T>(p); });
  }

 private:
  template <class F>
  Status timed(const std::string& name, F&& f) const {
    EventTimer timer;
    Status st;
    const double ms = timer.time_ms([&] { static_cast<void>(st = f()); });
    (*acc_)[name] += ms;
    return st;
  }
  working_memory::cuda::detail::CudaExec base_{};
  std::map<std::string, double>* acc_;
};

void BM_working_memory_phases(benchmark::State& state) {
  using T = __nv_bfloat16;
  const std::int64_t B = 1, H = 4, dk = 256, dv = 2048, C = 2048, L = state.range(0);
  const std::size_t nq = static_cast<std::size_t>(B * L * H * dk), nv = static_cast<std::size_t>(B * L * H * dv);
  DeviceBuffer<T> aq, ak, v, dout, out(nv), daq(nq), dak(nq), dvv(nv);
  fill(aq, nq, 1, 2.f);
  fill(ak, nq, 2, 2.f);
  fill(v, nv, 3, 1.f);
  fill(dout, nv, 4, 1.f);
  DeviceBuffer<float> mo(B * H * dk * dv), lo(B * H * dk);
  working_memory::ForwardArgs<T> f;
  f.chunk = C;
  f.aq = aq.view({B, L, H, dk});
  f.ak = ak.view({B, L, H, dk});
  f.v = v.view({B, L, H, dv});
  f.out = out.view({B, L, H, dv});
  f.memory_out = mo.view({B, H, dk, dv});
  f.log_norm_out = lo.view({B, H, dk});
  working_memory::BackwardArgs<T> g;
  g.chunk = C;
  g.aq = f.aq;
  g.ak = f.ak;
  g.v = f.v;
  g.dout = dout.view({B, L, H, dv});
  g.daq = daq.view({B, L, H, dk});
  g.dak = dak.view({B, L, H, dk});
  g.dv = dvv.view({B, L, H, dv});
  std::size_t fbytes = 0, bbytes = 0;
  throw_if_error(working_memory::cuda::forward_workspace_size(f, fbytes));
  throw_if_error(working_memory::cuda::backward_workspace_size(g, bbytes));
  DeviceBuffer<char> ws(std::max(fbytes, bbytes));
  std::map<std::string, double> fwd_ms, bwd_ms;
  int n = 0;
  for (auto _ : state) {
    EventTimer timer;
    const double ms = timer.time_ms([&] {
      throw_if_error(working_memory::cuda::detail::run_forward<T>(f, ws.data(), ws.size(), TimingExec(&fwd_ms)));
      throw_if_error(working_memory::cuda::detail::run_backward<T>(g, ws.data(), ws.size(), TimingExec(&bwd_ms)));
    });
    state.SetIterationTime(ms * 1e-3);
    ++n;
  }
  for (const auto& [k, ms] : fwd_ms) state.counters["fwd:" + k + "_us"] = 1e3 * ms / n;
  for (const auto& [k, ms] : bwd_ms) state.counters["bwd:" + k + "_us"] = 1e3 * ms / n;
}
BENCHMARK(BM_working_memory_phases)
    ->Arg(16384)
    ->ArgNames({"L"})
    ->UseManualTime()
    ->Iterations(5)
    ->Unit(benchmark::kMillisecond);

const bool registered = [] {
  struct Row {
    const char* name;
    Pass pass;
    bool cublaslt;
    bool saved = false;
    bool graph = false;
    bool measured = false;
  };
  const Row rows[] = {
      {"working_memory/fwd_bf16", Pass::kForward, false},
      {"working_memory/bwd_bf16", Pass::kBackward, false},
      {"working_memory/fwd_bwd_bf16", Pass::kBoth, false},
      {"working_memory/fwd_bf16_cublaslt", Pass::kForward, true},
      {"working_memory/bwd_bf16_cublaslt", Pass::kBackward, true},
      {"working_memory/fwd_bwd_bf16_cublaslt", Pass::kBoth, true},
      {"working_memory/fwd_bf16_cublaslt_saved", Pass::kForward, true, true},
      {"working_memory/fwd_bwd_bf16_cublaslt_saved", Pass::kBoth, true, true},
      {"working_memory/fwd_bf16_cublaslt_saved_graph", Pass::kForward, true, true, true},
      {"working_memory/fwd_bwd_bf16_cublaslt_saved_graph", Pass::kBoth, true, true, true},
      {"working_memory/fwd_bf16_cublaslt_measured", Pass::kForward, true, false, false, true},
      {"working_memory/fwd_bwd_bf16_cublaslt_saved_measured", Pass::kBoth, true, true, false, true},
  };
  for (const Row& r : rows) {
    benchmark::RegisterBenchmark(r.name, &BM_working_memory, r.pass, r.cublaslt, r.saved, r.graph, r.measured)
        ->Arg(4096)
        ->Arg(16384)
        ->Arg(65536)
        ->ArgNames({"L"})
        ->UseManualTime()
        ->Iterations(10)
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
}  // namespace gecko::bench
