// The Linear forward of one row (a decode step's projections) at the 7B MEGA shapes, bf16: the
// matrix-vector kernel (linear/kernel_gemv.cuh, with 4 and 8 loads in flight per lane) against
// cuBLASLt on the same shape, in TB/s of weight bytes and as a fraction of the device copy rate.
// Weights rotate through enough copies that a launch never finds its weight in L2.
#include "bench_common.cuh"
#include "gecko/ops/linear/launch.cuh"

namespace gecko::bench {
namespace {

using T = __nv_bfloat16;

enum class Engine { kGemv4, kGemv8, kCublasLt };

void BM_linear_row(benchmark::State& state, Engine engine) {
  add_device_context();
  const std::int64_t N = state.range(0), K = state.range(1);
  const double wbytes = static_cast<double>(N * K) * sizeof(T);
  const int rot = rotation_count(wbytes);
  DeviceBuffer<T> w(static_cast<std::size_t>(rot * N * K)), x(static_cast<std::size_t>(K)), y(static_cast<std::size_t>(N)),
      bias(static_cast<std::size_t>(N));
  fill_bf16(w.data(), w.size(), 3, 0.05f);
  fill_bf16(x.data(), x.size(), 4, 1.f);
  fill_bf16(bias.data(), bias.size(), 5, 1.f);
  linear::cuda::Context& ctx = gemm_context();
  std::size_t ws_bytes = 0;
  linear::ForwardArgs<T> a;
  a.epilogue = linear::Epilogue::kBias;
  a.x = TensorView<const T>::device(x.data(), {1, K});
  a.weight = TensorView<const T>::device(w.data(), {N, K});
  a.bias = TensorView<const T>::device(bias.data(), {N});
  a.y = y.view({1, N});
  throw_if_error(linear::cuda::forward_workspace_size(ctx, a, ws_bytes));
  DeviceBuffer<char> ws(ws_bytes);
  linear::Problem p;
  throw_if_error(linear::validate(a, Memory::kDevice, p));
  run_timed(
      state,
      [&](int i) {
        a.weight = TensorView<const T>::device(w.data() + static_cast<std::size_t>(i) * N * K, {N, K});
        if (engine == Engine::kGemv4) throw_if_error(linear::cuda::detail::run_gemv<T, 4>(a, p, nullptr));
        else if (engine == Engine::kGemv8) throw_if_error(linear::cuda::detail::run_gemv<T, 8>(a, p, nullptr));
        else {
          ctx.set_small_rows_kernel(false);
          const Status s = linear::cuda::forward(ctx, a, ws.data(), ws.size(), nullptr);
          ctx.set_small_rows_kernel(true);
          throw_if_error(s);
        }
      },
      rot, {wbytes, 2.0 * N * K});
}

#define GECKO_ROW_SHAPES ->Args({1024, 4096})->Args({8192, 4096})->Args({4096, 4096})->Args({4096, 8192})
BENCHMARK_CAPTURE(BM_linear_row, gemv_u4_bf16, Engine::kGemv4)
GECKO_ROW_SHAPES->ArgNames({"N", "K"})->UseManualTime()->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_linear_row, gemv_u8_bf16, Engine::kGemv8)
GECKO_ROW_SHAPES->ArgNames({"N", "K"})->UseManualTime()->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_linear_row, cublaslt_bf16, Engine::kCublasLt)
GECKO_ROW_SHAPES->ArgNames({"N", "K"})->UseManualTime()->Iterations(200)->Unit(benchmark::kMicrosecond);
#undef GECKO_ROW_SHAPES

}  // namespace
}  // namespace gecko::bench
