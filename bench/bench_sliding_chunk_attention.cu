// Sliding chunk attention at the Gecko-7B head shape: B = 1, H = 4, dk = 256, dv = 2048,
// C = 2048, bf16, RoPE on every head, training call (no carried chunk), L in {4096, 16384, 65536}:
// forward, backward, forward + backward; and one decoding step against 2C - 1 cached keys.
//
// Counters: TFLOP/s in useful FLOPs (forward 2 * pairs * (dk + dv) with pairs the visible
// (query, key) pairs, backward 2.5x that), gemm_frac (that rate over a bf16 8192^3 cuBLAS GEMM
// measured in this process, the same product as BM_gemm_bf16), x_authors (the authors' time at
// L = 16384 on an H100, PERFORMANCE.md, over ours; a recorded anchor, not run here).
#include <cublas_v2.h>

#include "bench_common.cuh"
#include "gecko/ops/sliding_chunk_attention/launch.cuh"
#include "gecko/ops/sliding_chunk_attention/launch_gemm.cuh"

namespace gecko::bench {
namespace {

namespace sca = sliding_chunk_attention;
namespace kernels = sca::kernels;
using bf16 = __nv_bfloat16;
using I64 = std::int64_t;

constexpr I64 kH = 4, kDk = 256, kDv = 2048, kC = 2048;
constexpr double kAuthorsFwdMs = 3.168, kAuthorsFwdBwdMs = 9.574;  // L = 16384, H100 (PERFORMANCE.md)

// bf16 GEMM rate (TFLOP/s), measured once per process like copy_bandwidth_tbs().
double gemm_tflops() {
  static double rate = [] {
    const int n = 8192;
    const std::size_t elems = static_cast<std::size_t>(n) * n;
    std::vector<bf16> host(elems);
    for (std::size_t i = 0; i < elems; ++i) host[i] = from_float<bf16>(static_cast<float>((i * 7919u) % 97) / 97.f - 0.5f);
    DeviceBuffer<bf16> a, b, c(elems);
    a.upload(host);
    b.upload(host);
    cublasHandle_t handle;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw Error("cublasCreate failed");
    const float alpha = 1.f, beta = 0.f;
    EventTimer timer;
    std::vector<double> ms;
    for (int i = 0; i < 13; ++i) {
      const double m = timer.time_ms([&] {
        if (cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.data(), CUDA_R_16BF, n, b.data(),
                         CUDA_R_16BF, n, &beta, c.data(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
          throw Error("cublasGemmEx failed");
      });
      if (i >= 3) ms.push_back(m);
    }
    cublasDestroy(handle);
    return 2.0 * n * n * static_cast<double>(n) / (median(ms) * 1e-3) / 1e12;
  }();
  return rate;
}

// Visible (query, key) pairs of one head for a training call of L tokens (no carried chunk).
double visible_pairs(I64 L) {
  const double nc = static_cast<double>(L / kC), C = static_cast<double>(kC);
  return nc * C * (C + 1) / 2 + (nc - 1) * C * C;
}

// Pseudo-random values: 2^20 + 7 distinct ones repeated (cheap to make for the 1 GiB tensors, and no
// two rows alike at these row lengths).
std::vector<bf16> random_bf16(std::size_t n, std::uint32_t seed, float amp) {
  const std::size_t period = (std::size_t(1) << 20) + 7;
  std::vector<bf16> v(n);
  std::uint32_t x = seed * 2654435761u + 12345u;
  for (std::size_t i = 0; i < std::min(n, period); ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = from_float<bf16>(amp * (static_cast<float>(x >> 8) / 16777216.f * 2.f - 1.f));
  }
  for (std::size_t i = period; i < n; ++i) v[i] = v[i - period];
  return v;
}

enum class Mode { kForward, kBackward, kForwardBackward };

// flash: the fused kernels of launch.cuh; gemm: the cuBLASLt-staged path of launch_gemm.cuh with
// `group_mib` of logit buffers.
// probs: the forward keeps its probabilities for the backward (ForwardArgs::probs; GEMM-staged).
struct Strategy {
  bool gemm = false;
  std::size_t group_mib = 64;
  bool probs = false;
};

void BM_sca(benchmark::State& state, Mode mode, Strategy strategy) {
  add_device_context();
  const I64 L = state.range(0);
  const std::size_t nqk = static_cast<std::size_t>(L * kH * kDk), nv = static_cast<std::size_t>(L * kH * kDv);
  const double in_bytes = 2.0 * (2 * nqk + 2 * nv);
  const int rot = rotation_count(in_bytes);
  std::vector<DeviceBuffer<bf16>> q(rot), k(rot), v(rot), dout(rot);
  for (int i = 0; i < rot; ++i) {
    q[i].upload(random_bf16(nqk, 11 + i, 0.25f));
    k[i].upload(random_bf16(nqk, 23 + i, 0.25f));
    v[i].upload(random_bf16(nv, 37 + i, 1.f));
    dout[i].upload(random_bf16(nv, 41 + i, 1.f));
  }
  DeviceBuffer<bf16> out(nv), dq(nqk), dk(nqk), dv(nv);
  DeviceBuffer<float> lse(static_cast<std::size_t>(kH * L));
  DeviceBuffer<bf16> probs(strategy.probs ? static_cast<std::size_t>(kH * L * 2 * kC) : 1);

  sca::ForwardArgs<bf16> f;
  f.chunk = kC;
  f.scale = 1.0f;
  f.rope.n_rope_heads = static_cast<int>(kH);
  f.rope.base = 500000.0;
  f.out = out.view({1, L, kH, kDv});
  f.lse = lse.view({1, kH, L});
  auto set_inputs = [&](auto& a, int i) {
    a.q = q[i].view({1, L, kH, kDk});
    a.k = k[i].view({1, L, kH, kDk});
    a.v = v[i].view({1, L, kH, kDv});
  };
  set_inputs(f, 0);
  sca::BackwardArgs<bf16> g;
  g.chunk = kC;
  g.scale = 1.0f;
  g.rope = f.rope;
  g.out = f.out;
  g.lse = f.lse;
  if (strategy.probs) {
    f.probs = probs.view({1, kH, L / kC, kC, 2 * kC});
    g.probs = TensorView<const bf16>(f.probs);
    state.counters["probs_MiB"] = static_cast<double>(probs.size() * sizeof(bf16)) / (1 << 20);
  }
  g.dq = dq.view({1, L, kH, kDk});
  g.dk = dk.view({1, L, kH, kDk});
  g.dv = dv.view({1, L, kH, kDv});
  set_inputs(g, 0);
  g.dout = dout[0].view({1, L, kH, kDv});
  sca::cuda::GemmOptions opt;
  opt.group_bytes = strategy.group_mib << 20;
  auto& ctx = gemm_context();
  const auto forward = [&](void* w, std::size_t n) {
    return strategy.gemm ? sca::cuda::forward(ctx, f, w, n, nullptr, opt) : sca::cuda::forward(f, w, n, nullptr);
  };
  const auto backward = [&](void* w, std::size_t n) {
    return strategy.gemm ? sca::cuda::backward(ctx, g, w, n, nullptr, opt) : sca::cuda::backward(g, w, n, nullptr);
  };
  std::size_t fws = 0, bws = 0;
  throw_if_error(strategy.gemm ? sca::cuda::forward_workspace_size(ctx, f, fws, opt)
                               : sca::cuda::forward_workspace_size(f, fws));
  throw_if_error(strategy.gemm ? sca::cuda::backward_workspace_size(ctx, g, bws, opt)
                               : sca::cuda::backward_workspace_size(g, bws));
  DeviceBuffer<char> ws(std::max<std::size_t>({fws, bws, std::size_t(1)}));
  state.counters["workspace_MiB"] = static_cast<double>(ws.size()) / (1 << 20);
  // The backward reads a real forward's out and lse.
  throw_if_error(forward(ws.data(), ws.size()));

  const double fwd_flops = 2.0 * visible_pairs(L) * static_cast<double>(kDk + kDv) * kH;
  double flops = 0;
  if (mode != Mode::kBackward) flops += fwd_flops;
  if (mode != Mode::kForward) flops += 2.5 * fwd_flops;
  run_timed(
      state,
      [&](int i) {
        if (mode != Mode::kBackward) {
          set_inputs(f, i);
          throw_if_error(forward(ws.data(), ws.size()));
        }
        if (mode != Mode::kForward) {
          set_inputs(g, i);
          g.dout = dout[i].view({1, L, kH, kDv});
          throw_if_error(backward(ws.data(), ws.size()));
        }
      },
      rot, {0, flops});
  if (!strategy.gemm) {  // how many 8-CTA clusters of the forward fit the device at once (one CTA per SM)
    const kernels::ClusterLayout lay(16, static_cast<int>(kDk), 256);
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(8 * static_cast<unsigned>(L / 128), kH, 1);
    cfg.blockDim = dim3(kernels::kThreads);
    cfg.dynamicSmemBytes = static_cast<std::size_t>(lay.total);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 8;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernels::forward_kernel<bf16>, &cfg) == cudaSuccess)
      state.counters["fwd_clusters"] = clusters;
    cudaGetLastError();
  }
  const double tflops = state.counters["TFLOP/s"];
  state.counters["gemm_frac"] = tflops / gemm_tflops();
  if (L == 16384 && mode != Mode::kBackward) {
    const double authors = mode == Mode::kForward ? kAuthorsFwdMs : kAuthorsFwdBwdMs;
    state.counters["x_authors"] = authors / state.counters["median_ms"];
  }
}

// One decoded token against 2C - 1 cached keys (the tail path with the keys split over the grid):
// memory-bound, counted as the bytes of the cached keys and values read once.
void BM_sca_decode(benchmark::State& state) {
  const I64 P = 2 * kC - 1;
  const std::size_t nk = static_cast<std::size_t>(P * kH * kDk), nv = static_cast<std::size_t>(P * kH * kDv);
  DeviceBuffer<bf16> q, k, v, pk, pv, out(kH * kDv);
  q.upload(random_bf16(kH * kDk, 3, 0.25f));
  k.upload(random_bf16(kH * kDk, 5, 0.25f));
  v.upload(random_bf16(kH * kDv, 7, 1.f));
  pk.upload(random_bf16(nk, 9, 0.25f));
  pv.upload(random_bf16(nv, 13, 1.f));
  sca::ForwardArgs<bf16> f;
  f.chunk = kC;
  f.rope.n_rope_heads = static_cast<int>(kH);
  f.rope.start = 1 << 20;
  f.q = q.view({1, 1, kH, kDk});
  f.k = k.view({1, 1, kH, kDk});
  f.v = v.view({1, 1, kH, kDv});
  f.prev_k = pk.view({1, P, kH, kDk});
  f.prev_v = pv.view({1, P, kH, kDv});
  f.out = out.view({1, 1, kH, kDv});
  std::size_t fws = 0;
  throw_if_error(sca::cuda::forward_workspace_size(f, fws));
  DeviceBuffer<char> ws(std::max<std::size_t>(fws, 1));
  run_timed(
      state, [&](int) { throw_if_error(sca::cuda::forward(f, ws.data(), ws.size(), nullptr)); }, 1,
      {2.0 * static_cast<double>(nk + nv), 0});
}

const bool registered = [] {
  struct Row {
    const char* name;
    Mode mode;
    Strategy strategy;
  };
  const Row rows[] = {{"sliding_chunk_attention/fwd_bf16", Mode::kForward, {}},
                      {"sliding_chunk_attention/bwd_bf16", Mode::kBackward, {}},
                      {"sliding_chunk_attention/fwd_bwd_bf16", Mode::kForwardBackward, {}},
                      {"sliding_chunk_attention/gemm_fwd_bf16", Mode::kForward, {true, 256}},
                      {"sliding_chunk_attention/gemm_bwd_bf16", Mode::kBackward, {true, 256}},
                      {"sliding_chunk_attention/gemm_g64_fwd_bwd_bf16", Mode::kForwardBackward, {true, 64}},
                      {"sliding_chunk_attention/gemm_fwd_bwd_bf16", Mode::kForwardBackward, {true, 256}},
                      {"sliding_chunk_attention/gemm_probs_fwd_bf16", Mode::kForward, {true, 256, true}},
                      {"sliding_chunk_attention/gemm_probs_bwd_bf16", Mode::kBackward, {true, 256, true}},
                      {"sliding_chunk_attention/gemm_probs_fwd_bwd_bf16", Mode::kForwardBackward, {true, 256, true}}};
  for (const Row& r : rows) {
    benchmark::RegisterBenchmark(r.name, BM_sca, r.mode, r.strategy)
        ->Arg(4096)
        ->Arg(16384)
        ->Arg(65536)
        ->ArgNames({"L"})
        ->UseManualTime()
        ->Iterations(20)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("sliding_chunk_attention/decode_bf16", BM_sca_decode)
      ->UseManualTime()
      ->Iterations(50)
      ->Unit(benchmark::kMicrosecond);
  return true;
}();

}  // namespace
}  // namespace gecko::bench
