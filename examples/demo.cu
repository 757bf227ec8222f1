// gecko demo: runs gecko's components forward and backward on the GPU when one is present,
// otherwise on the CPU reference backend at a small size, and says which it used.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gecko/gecko_cuda.cuh"

using namespace gecko;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

int run_cpu() {
  const std::int64_t rows = 2 * 128, C = 256;
  std::printf("backend: CPU reference (no CUDA device found), %lld tokens x %lld channels\n",
              static_cast<long long>(rows), static_cast<long long>(C));
  auto x = random_floats(rows * C, 1), dy = random_floats(rows * C, 2);
  std::vector<float> w(C, 0.f), y(rows * C), dx(rows * C), dw(C);
  const auto t0 = std::chrono::steady_clock::now();
  group_norm::ForwardArgs<float> f;
  f.kind = group_norm::Kind::kRms;
  f.groups = 4;
  f.x = host_view(x, {rows, C});
  f.weight = host_view(w, {C});
  f.y = host_view(y, {rows, C});
  throw_if_error(group_norm::cpu::forward(f));
  group_norm::BackwardArgs<float> g;
  g.kind = f.kind;
  g.groups = f.groups;
  g.x = f.x;
  g.weight = f.weight;
  g.dy = host_view(dy, {rows, C});
  g.dx = host_view(dx, {rows, C});
  g.dweight = host_view(dw, {C});
  throw_if_error(group_norm::cpu::backward(g));
  double ms = 0;
  for (float v : y) ms += double(v) * v;
  std::printf("group RMSNorm forward+backward: %.2f ms, mean(y^2) = %.4f (expect ~1)\n", seconds_since(t0) * 1e3,
              ms / y.size());
  return 0;
}

int run_gpu() {
  const DeviceInfo* dev = nullptr;
  throw_if_error(current_device_info(&dev));
  const std::int64_t rows = 16384, C = 4096;
  std::printf("backend: CUDA on %s (%d SMs), %lld tokens x %lld channels, bf16\n", dev->name, dev->sm_count,
              static_cast<long long>(rows), static_cast<long long>(C));
  const auto xf = random_floats(rows * C, 1);
  std::vector<__nv_bfloat16> xh(xf.size());
  for (std::size_t i = 0; i < xf.size(); ++i) xh[i] = from_float<__nv_bfloat16>(xf[i]);
  DeviceBuffer<__nv_bfloat16> x, y(rows * C), dx(rows * C), w(C);
  x.upload(xh);
  w.zero();
  DeviceBuffer<float> dw(C);
  group_norm::ForwardArgs<__nv_bfloat16> f;
  f.kind = group_norm::Kind::kRms;
  f.groups = 1;
  f.x = x.view({rows, C});
  f.weight = w.view({C});
  f.y = y.view({rows, C});
  group_norm::BackwardArgs<__nv_bfloat16> g;
  g.kind = f.kind;
  g.groups = 1;
  g.x = f.x;
  g.weight = f.weight;
  g.dy = x.view({rows, C});
  g.dx = dx.view({rows, C});
  g.dweight = dw.view({C});
  std::size_t ws_bytes = 0;
  throw_if_error(group_norm::cuda::backward_workspace_size(g, ws_bytes));
  DeviceBuffer<char> ws(ws_bytes);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int warm = 0; warm < 2; ++warm) throw_if_error(group_norm::cuda::forward(f, nullptr));
  cudaEventRecord(a);
  throw_if_error(group_norm::cuda::forward(f, nullptr));
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float fwd_ms = 0;
  cudaEventElapsedTime(&fwd_ms, a, b);
  cudaEventRecord(a);
  throw_if_error(group_norm::cuda::backward(g, ws.data(), ws_bytes, nullptr));
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float bwd_ms = 0;
  cudaEventElapsedTime(&bwd_ms, a, b);
  const double gb = rows * C * 2.0 / 1e9;
  std::printf("group RMSNorm forward  %.3f ms (%.2f TB/s)\n", fwd_ms, 2 * gb / fwd_ms);
  std::printf("group RMSNorm backward %.3f ms (%.2f TB/s)\n", bwd_ms, 3 * gb / bwd_ms);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 0;
}

}  // namespace

int main() {
  try {
    return cuda_device_available() ? run_gpu() : run_cpu();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo failed: %s\n", e.what());
    return 1;
  }
}
