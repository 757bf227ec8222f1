// Complex EMA at the 7B shapes: B = 1, D = 4096, N = 16, bf16, training (no carried state, no
// dh_out; all parameter gradients). Ideal bytes: x and y (forward); x, dy and dx (backward).
// Reference (authors' CUB-scan CUDA ops, H100, L = 16384): 9.328 ms forward, 32.265 ms
// forward+backward.
#include <algorithm>
#include <cmath>

#include "bench_common.cuh"
#include "gecko/ops/cema/launch.cuh"

namespace gecko::bench {
namespace {

// kForwardTiles / kBackwardTiles: the forward / backward on the tile kernels (ForwardPath::kTiles,
// BackwardPath::kTiles), the paths every call took before the chunked tensor-core kernels,
// measured in the same run for comparison.
// kForwardInference: the forward alone, saving nothing for a backward (inference, prefill): y is
// all it writes, where the training forward also writes the state after every 128 tokens
// (Saved::states, 64 MiB at L = 16384, half the bytes of x).
enum class Pass { kForward, kForwardTiles, kForwardInference, kBackward, kBackwardTiles, kForwardBackward };

// docs: packed documents of 2000 tokens (a BOS at every multiple of 2000), as in training on
// concatenated text: blocks that hold a BOS take the chunked kernels' token-by-token path.
void BM_cema(benchmark::State& state, Pass pass, bool docs = false) {
  using T = __nv_bfloat16;
  const std::int64_t B = 1, L = state.range(0), D = 4096, N = 16;
  const std::size_t n = static_cast<std::size_t>(B * L * D), dn = static_cast<std::size_t>(D * N);
  const double tensor_bytes = static_cast<double>(n) * sizeof(T);
  std::vector<T> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = from_float<T>(static_cast<float>((i * 2654435761u) % 1000) / 500.f - 1.f);
  std::vector<float> alpha(dn), delta(dn), theta(D), gamma(2 * dn);
  for (std::size_t i = 0; i < dn; ++i) {
    alpha[i] = static_cast<float>((i * 7919u) % 100) / 250.f - 0.2f;
    delta[i] = static_cast<float>((i * 104729u) % 100) / 250.f - 0.2f;
    gamma[2 * i] = static_cast<float>((i * 31u) % 100) / 200.f - 0.25f;
    gamma[2 * i + 1] = 0.f;
  }
  for (std::int64_t d = 0; d < D; ++d) {
    const double f = std::pow(static_cast<double>(D), -static_cast<double>((d * 37) % D + 1) / D);
    theta[d] = static_cast<float>(std::log(f / (1.0 - f)));
  }
  DeviceBuffer<T> x, dy, y(n), dx(n);
  x.upload(host);
  dy.upload(host);
  DeviceBuffer<float> a, dl, th, g, da(dn), ddl(dn), dth(D), dg(2 * dn),
      states(static_cast<std::size_t>(cema::cuda::time_tiles(L)) * B * dn * 2);
  a.upload(alpha);
  dl.upload(delta);
  th.upload(theta);
  g.upload(gamma);
  DeviceBuffer<std::uint8_t> bos;
  if (docs) {
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(B * L), 0);
    for (std::int64_t t = 0; t < L; t += 2000) mask[static_cast<std::size_t>(t)] = 1;
    bos.upload(mask);
  }
  cema::ForwardArgs<T> f;
  f.x = x.view({B, L, D});
  if (docs) f.bos_mask = bos.view({B, L});
  f.alpha = a.view({D, N});
  f.delta = dl.view({D, N});
  f.theta = th.view({D});
  f.gamma = g.view({D, N, 2});
  f.y = y.view({B, L, D});
  cema::cuda::Saved saved{states.view({cema::cuda::time_tiles(L), B, D, N, 2})};
  cema::BackwardArgs<T> gb;
  gb.x = f.x;
  gb.bos_mask = f.bos_mask;
  gb.alpha = f.alpha;
  gb.delta = f.delta;
  gb.theta = f.theta;
  gb.gamma = f.gamma;
  gb.dy = dy.view({B, L, D});
  gb.dx = dx.view({B, L, D});
  gb.dalpha = da.view({D, N});
  gb.ddelta = ddl.view({D, N});
  gb.dtheta = dth.view({D});
  gb.dgamma = dg.view({D, N, 2});
  const auto path = pass == Pass::kForwardTiles ? cema::cuda::ForwardPath::kTiles : cema::cuda::ForwardPath::kAuto;
  const auto bpath =
      pass == Pass::kBackwardTiles ? cema::cuda::BackwardPath::kTiles : cema::cuda::BackwardPath::kAuto;
  std::size_t fb = 0, fi = 0, bb = 0;
  throw_if_error(cema::cuda::forward_workspace_size(f, saved, fb, path));
  throw_if_error(cema::cuda::forward_workspace_size(f, cema::cuda::Saved{}, fi, path));
  throw_if_error(cema::cuda::backward_workspace_size(gb, bb, bpath));
  DeviceBuffer<char> ws(std::max({fb, fi, bb}));
  auto fwd = [&] { throw_if_error(cema::cuda::forward(f, saved, ws.data(), fb, nullptr, path)); };
  auto fwd_infer = [&] { throw_if_error(cema::cuda::forward(f, cema::cuda::Saved{}, ws.data(), fi, nullptr, path)); };
  auto bwd = [&] { throw_if_error(cema::cuda::backward(gb, saved, ws.data(), bb, nullptr, bpath)); };
  fwd();
  double bytes = 0;
  std::function<void(int)> launch;
  if (pass == Pass::kForward || pass == Pass::kForwardTiles) {
    bytes = 2 * tensor_bytes;
    launch = [&](int) { fwd(); };
  } else if (pass == Pass::kForwardInference) {
    bytes = 2 * tensor_bytes;
    launch = [&](int) { fwd_infer(); };
  } else if (pass == Pass::kBackward || pass == Pass::kBackwardTiles) {
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
    const double ref_ms = pass == Pass::kForward || pass == Pass::kForwardTiles || pass == Pass::kForwardInference ? 9.328
                          : pass == Pass::kForwardBackward                                                          ? 32.265
                                                                                                                   : 32.265 - 9.328;
    state.counters["speedup_vs_authors"] = ref_ms / state.counters["median_ms"];
  }
}

BENCHMARK_CAPTURE(BM_cema, fwd_bf16, Pass::kForward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, fwd_inference_bf16, Pass::kForwardInference)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, fwd_tiles_bf16, Pass::kForwardTiles)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, fwd_docs_bf16, Pass::kForward, true)
    ->Arg(16384)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, bwd_docs_bf16, Pass::kBackward, true)
    ->Arg(16384)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, bwd_bf16, Pass::kBackward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, bwd_tiles_bf16, Pass::kBackwardTiles)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_cema, fwd_bwd_bf16, Pass::kForwardBackward)
    ->Arg(4096)->Arg(16384)->Arg(65536)->ArgName("L")->UseManualTime()->Iterations(30)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace gecko::bench
