// Benchmark helpers: CUDA-event timing with a median over launches, rotating input sets so L2
// does not serve repeated runs, and counters that read as TB/s, TFLOP/s and fractions of the
// copy bandwidth measured in the same process.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/core/device.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/ops/linear/context.hpp"

namespace gecko::bench {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

class EventTimer {
 public:
  EventTimer() {
    check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Milliseconds of GPU time taken by fn's work on `stream`.
  double time_ms(const std::function<void()>& fn, cudaStream_t stream = nullptr) {
    check_cuda(cudaEventRecord(start_, stream), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(stop_, stream), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaEvent_t start_{}, stop_{};
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// Device-to-device copy bandwidth (bytes read + written per second, in TB/s), measured once.
inline double copy_bandwidth_tbs() {
  static double tbs = [] {
    const std::size_t bytes = std::size_t(1) << 30;
    DeviceBuffer<char> a(bytes), b(bytes);
    a.zero();
    EventTimer t;
    std::vector<double> ms;
    for (int i = 0; i < 13; ++i) {
      const double m = t.time_ms([&] { check_cuda(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice), "copy"); });
      if (i >= 3) ms.push_back(m);
    }
    return 2.0 * bytes / (median(ms) * 1e-3) / 1e12;
  }();
  return tbs;
}

// How many copies of a working set of `bytes` to rotate through so that consecutive launches
// do not find their inputs in L2.
inline int rotation_count(double bytes) {
  const DeviceInfo* dev = nullptr;
  throw_if_error(current_device_info(&dev));
  const double l2 = static_cast<double>(dev->l2_bytes);
  return std::max(1, std::min(16, static_cast<int>(3.0 * l2 / std::max(bytes, 1.0)) + 1));
}

struct Work {
  double bytes = 0;  // ideal bytes: each input read once, each output written once
  double flops = 0;  // useful floating-point operations
};

// Runs launch(i) (i = rotation index) once per benchmark iteration, timed with events on `stream`
// (launch enqueues there); reports
// the median as the iteration time and as rate counters. With GECKO_PROFILE_ONE=1 in the
// environment, the first timed iteration runs between cudaProfilerStart/Stop, so a profiler started
// with "--profile-from-start off" (ncu, nsys) sees exactly one warm iteration of each benchmark.
inline void run_timed(benchmark::State& state, const std::function<void(int)>& launch, int rotations, Work work,
                      cudaStream_t stream = nullptr) {
  EventTimer timer;
  for (int i = 0; i < 3; ++i) launch(i % rotations);
  check_cuda(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> ms;
  int i = 0;
  const char* profile = std::getenv("GECKO_PROFILE_ONE");
  const bool profile_one = profile && std::string(profile) == "1";
  for (auto _ : state) {
    if (profile_one && i == 0) check_cuda(cudaProfilerStart(), "cudaProfilerStart");
    const double m = timer.time_ms([&] { launch(i++ % rotations); }, stream);
    if (profile_one && i == 1) check_cuda(cudaProfilerStop(), "cudaProfilerStop");
    state.SetIterationTime(m * 1e-3);
    ms.push_back(m);
  }
  check_cuda(cudaGetLastError(), "benchmark launch");
  const double med = median(ms);
  state.counters["median_ms"] = med;
  if (work.bytes > 0) {
    const double tbs = work.bytes / (med * 1e-3) / 1e12;
    state.counters["TB/s"] = tbs;
    state.counters["copy_frac"] = tbs / copy_bandwidth_tbs();
  }
  if (work.flops > 0) state.counters["TFLOP/s"] = work.flops / (med * 1e-3) / 1e12;
}

// Runs call() once on `stream` (creating anything its launchers make lazily, such as cuBLASLt
// plans, outside the capture), then captures it into a CUDA graph and returns the instantiated
// graph. Relaxed capture: the launchers query kernel attributes while enqueuing.
inline cudaGraphExec_t capture_graph(cudaStream_t stream, const std::function<void()>& call) {
  call();
  check_cuda(cudaStreamSynchronize(stream), "warm-up");
  cudaGraph_t g = nullptr;
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  call();
  check_cuda(cudaStreamEndCapture(stream, &g), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  check_cuda(cudaGraphInstantiate(&exec, g, 0), "cudaGraphInstantiate");
  check_cuda(cudaGraphDestroy(g), "cudaGraphDestroy");
  return exec;
}

// The benchmark program's cuBLASLt context (heuristic algorithm choice), never destroyed.
inline linear::cuda::Context& gemm_context() {
  static linear::cuda::Context* ctx = [] {
    auto* c = new linear::cuda::Context();
    throw_if_error(c->init());
    return c;
  }();
  return *ctx;
}

// The same with AlgoChoice::kMeasured (each large shape's candidates timed on its first call).
inline linear::cuda::Context& measured_gemm_context() {
  static linear::cuda::Context* ctx = [] {
    auto* c = new linear::cuda::Context();
    throw_if_error(c->init(linear::cuda::Context::kDefaultGemmWorkspaceBytes, linear::cuda::AlgoChoice::kMeasured));
    return c;
  }();
  return *ctx;
}

// Fills bf16 memory with hashed values in [-scale, scale): tensor cores draw less power on zeros,
// which would flatter GEMM rates. (A template so every benchmark file may include it.)
template <int kUnused = 0>
__global__ void fill_bf16_kernel(__nv_bfloat16* p, std::size_t n, std::uint32_t seed, float scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16(scale * (static_cast<float>(h & 0xffff) / 32768.f - 1.f));
  }
}

inline void fill_bf16(__nv_bfloat16* p, std::size_t n, std::uint32_t seed, float scale = 1.f) {
  fill_bf16_kernel<><<<1024, 256>>>(p, n, seed, scale);
  check_cuda(cudaGetLastError(), "fill");
}

inline void add_device_context() {
  const DeviceInfo* dev = nullptr;
  if (current_device_info(&dev).ok()) {
    benchmark::AddCustomContext("device", dev->name);
    benchmark::AddCustomContext("sm_count", std::to_string(dev->sm_count));
  }
}

}  // namespace gecko::bench
