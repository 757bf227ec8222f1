// Timestep decay normalization at the 7B shapes: B = 1, D = 4096, 64 groups, bf16.
// Reference (authors' CUDA ops, H100, L = 16384): 1.162 ms forward, 5.564 ms forward+backward.
#include "bench_common.cuh"
#include "gecko/ops/timestep_norm/launch.cuh"

namespace gecko::bench {
namespace {

enum class Pass { kForward, kBackward, kForwardBackward };

void BM_timestep_norm(benchmark::State& state, Pass pass) {
  using T = __nv_bfloat16;
  const std::int64_t B = 1, L = state.range(0), D = 4096, G = 64;
  const std::size_t n = static_cast<std::size_t>(B * L * D);
  const double tensor_bytes = static_cast<double>(n) * sizeof(T);
  std::vector<T> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = from_float<T>(static_cast<float>((i * 2654435761u) % 1000) / 250.f - 2.f);
  DeviceBuffer<T> x, dy, y(n), dx(n), w(D), b(D);
  x.upload(host);
  dy.upload(host);
  w.zero();
  b.zero();
  DeviceBuffer<float> stats(B * L * G * 2), corr(B * L * 2), dw(D), db(D), mean(B * G), var(B * G), dpm(B * G), dpv(B * G);
  DeviceBuffer<std::int64_t> count(B);
  timestep_norm::ForwardArgs<T> f;
  f.groups = G;
  f.x = x.view({B, L, D});
  f.weight = w.view({D});
  f.bias = b.view({D});
  f.y = y.view({B, L, D});
  f.count = count.view({B});
  f.mean = mean.view({B, G});
  f.var = var.view({B, G});
  timestep_norm::cuda::Saved saved{stats.view({B, L, G, 2}), corr.view({B, L, 2})};
  timestep_norm::BackwardArgs<T> g;
  g.groups = G;
  g.x = f.x;
  g.weight = f.weight;
  g.dy = dy.view({B, L, D});
  g.dx = dx.view({B, L, D});
  g.dweight = dw.view({D});
  g.dbias = db.view({D});
  g.dprev_mean = dpm.view({B, G});
  g.dprev_var = dpv.view({B, G});
  std::size_t fb = 0, bb = 0;
  throw_if_error(timestep_norm::cuda::forward_workspace_size(f, fb));
  throw_if_error(timestep_norm::cuda::backward_workspace_size(g, bb));
  DeviceBuffer<char> ws(std::max(fb, bb));
  auto fwd = [&] { throw_if_error(timestep_norm::cuda::forward(f, saved, ws.data(), fb, nullptr)); };
  auto bwd = [&] { throw_if_error(timestep_norm::cuda::backward(g, saved, ws.data(), bb, nullptr)); };
  fwd();
  double bytes = 0;
  std::function<void(int)> launch;
  if (pass == Pass::kForward) {
    bytes = 2 * tensor_bytes;
    launch = [&](int) { fwd(); };
  } else if (pass == Pass::kBackward) {
    bytes = 3 * tensor_bytes;
    launch = [&](int) { bwd(); };
  } else {
    bytes = 5 * tensor_bytes;
    launch = [&](int) {
      fwd();
      bwd();
    };
  }
  run_timed(state, launch, 1, {bytes, 0});
  if (L == 16384) {
    const double ref_ms = pass == Pass::kForward ? 1.162 : pass == Pass::kForwardBackward ? 5.564 : 5.564 - 1.162;
    state.counters["speedup_vs_authors"] = ref_ms / state.counters["median_ms"];
  }
}

BENCHMARK_CAPTURE(BM_timestep_norm, fwd_bf16, Pass::kForward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_timestep_norm, bwd_bf16, Pass::kBackward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_timestep_norm, fwd_bwd_bf16, Pass::kForwardBackward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace gecko::bench
