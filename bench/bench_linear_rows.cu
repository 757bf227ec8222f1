// The Linear forward of one row (a decode step's projections) at the 7B MEGA shapes, bf16: the
// matrix-vector kernel (linear/kernel_gemv.cuh, in several configurations of loads in flight per
// lane and warps per output column) against
// cuBLASLt on the same shape, in TB/s of weight bytes and as a fraction of the device copy rate.
// Weights rotate through enough copies that a launch never finds its weight in L2.
#include "bench_common.cuh"
#include "gecko/ops/linear/launch.cuh"

namespace gecko::bench {
namespace {

using T = __nv_bfloat16;

// A matrix-vector configuration: 16-byte loads in flight per lane, warps per output column.
struct Engine {
  int unroll = 0, split = 0;  // 0: cuBLASLt
};

template <int U, int S>
Status gemv(const linear::ForwardArgs<T>& a, const linear::Problem& p) {
  return linear::cuda::detail::run_gemv<T, U, S>(a, p, nullptr);
}

Status run_engine(Engine e, const linear::ForwardArgs<T>& a, const linear::Problem& p) {
  if (e.unroll == 4 && e.split == 1) return gemv<4, 1>(a, p);
  if (e.unroll == 8 && e.split == 1) return gemv<8, 1>(a, p);
  if (e.unroll == 4 && e.split == 2) return gemv<4, 2>(a, p);
  if (e.unroll == 4 && e.split == 4) return gemv<4, 4>(a, p);
  if (e.unroll == 2 && e.split == 8) return gemv<2, 8>(a, p);
  if (e.unroll == 4 && e.split == 8) return gemv<4, 8>(a, p);
  return invalid_argument("no such matrix-vector configuration");
}

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
        if (engine.unroll > 0) {
          throw_if_error(run_engine(engine, a, p));
        } else {
          ctx.set_small_rows_kernel(false);
          const Status s = linear::cuda::forward(ctx, a, ws.data(), ws.size(), nullptr);
          ctx.set_small_rows_kernel(true);
          throw_if_error(s);
        }
      },
      rot, {wbytes, 2.0 * N * K});
}

#define GECKO_ROW_SHAPES ->Args({1024, 4096})->Args({8192, 4096})->Args({4096, 4096})->Args({4096, 8192})
#define GECKO_ROW_ENGINE(name, u, s)                         \
  BENCHMARK_CAPTURE(BM_linear_row, name, Engine{u, s})       \
  GECKO_ROW_SHAPES->ArgNames({"N", "K"})->UseManualTime()->Iterations(200)->Unit(benchmark::kMicrosecond);
GECKO_ROW_ENGINE(gemv_u4_s1_bf16, 4, 1)
GECKO_ROW_ENGINE(gemv_u8_s1_bf16, 8, 1)
GECKO_ROW_ENGINE(gemv_u4_s2_bf16, 4, 2)
GECKO_ROW_ENGINE(gemv_u4_s4_bf16, 4, 4)
GECKO_ROW_ENGINE(gemv_u2_s8_bf16, 2, 8)
GECKO_ROW_ENGINE(gemv_u4_s8_bf16, 4, 8)
GECKO_ROW_ENGINE(cublaslt_bf16, 0, 0)
#undef GECKO_ROW_ENGINE
#undef GECKO_ROW_SHAPES

}  // namespace
}  // namespace gecko::bench
