// The ceilings every other row is read against: device copy bandwidth and a large bf16 GEMM.
#include <cublas_v2.h>

#include "bench_common.cuh"

namespace gecko::bench {
namespace {

void BM_device_copy(benchmark::State& state) {
  add_device_context();
  const std::size_t bytes = std::size_t(1) << 30;
  DeviceBuffer<char> a(bytes), b(bytes);
  a.zero();
  run_timed(
      state, [&](int) { check_cuda(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice), "copy"); }, 1,
      {2.0 * bytes, 0});
}
BENCHMARK(BM_device_copy)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);

// bf16 x bf16 -> bf16 with fp32 accumulation, M = N = K = state.range(0).
void BM_gemm_bf16(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const std::size_t elems = static_cast<std::size_t>(n) * n;
  std::vector<__nv_bfloat16> host(elems);
  for (std::size_t i = 0; i < elems; ++i) host[i] = from_float<__nv_bfloat16>(static_cast<float>((i * 7919u) % 97) / 97.f - 0.5f);
  DeviceBuffer<__nv_bfloat16> a, b, c(elems);
  a.upload(host);
  b.upload(host);
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw Error("cublasCreate failed");
  const float alpha = 1.f, beta = 0.f;
  run_timed(
      state,
      [&](int) {
        if (cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.data(), CUDA_R_16BF, n, b.data(),
                         CUDA_R_16BF, n, &beta, c.data(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
          throw Error("cublasGemmEx failed");
      },
      1, {0, 2.0 * n * n * static_cast<double>(n)});
  cublasDestroy(handle);
}
BENCHMARK(BM_gemm_bf16)->Arg(8192)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace gecko::bench
