// How much an algorithm search could buy over cuBLASLt's first heuristic choice, for the GEMM
// shapes of the 7B block at 16384 tokens (forward, dx, dweight of each projection) and of the
// staged attention. linear::cuda::Context runs the heuristic's first algorithm; this benchmark
// times up to 16 of the heuristic's candidates per shape and reports the first one's time, the best
// one's and their ratio, so the decision to add a tuning mode rests on a measurement.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/linear/context.hpp"

namespace gecko::bench {
namespace {

struct Shape {
  bool ta, tb;
  std::int64_t m, n, k;
  cudaDataType_t cd;  // output type (inputs are bf16)
  int batch;
};

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error(std::string(what) + ": " + cublasLtGetStatusString(s));
}

void BM_gemm_candidates(benchmark::State& state, Shape g) {
  add_device_context();
  cublasLtHandle_t lt = nullptr;
  check_lt(cublasLtCreate(&lt), "cublasLtCreate");
  const std::int64_t rows_a = g.ta ? g.k : g.m, cols_a = g.ta ? g.m : g.k;
  const std::int64_t rows_b = g.tb ? g.n : g.k, cols_b = g.tb ? g.k : g.n;
  const std::size_t out_size = g.cd == CUDA_R_32F ? 4 : 2;
  DeviceBuffer<char> A(static_cast<std::size_t>(rows_a * cols_a * g.batch) * 2),
      Bm(static_cast<std::size_t>(rows_b * cols_b * g.batch) * 2),
      D(static_cast<std::size_t>(g.m * g.n * g.batch) * out_size), ws(linear::cuda::Context::kDefaultGemmWorkspaceBytes);
  fill_bf16(reinterpret_cast<__nv_bfloat16*>(A.data()), A.size() / 2, 1);  // not zeros: see fill_bf16
  fill_bf16(reinterpret_cast<__nv_bfloat16*>(Bm.data()), Bm.size() / 2, 2);
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  check_lt(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
  const cublasOperation_t ta = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "transa");
  check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "transb");
  check_lt(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, rows_a, cols_a, rows_a), "layout a");
  check_lt(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, rows_b, cols_b, rows_b), "layout b");
  check_lt(cublasLtMatrixLayoutCreate(&ld, g.cd, g.m, g.n, g.m), "layout d");
  if (g.batch > 1) {
    const std::int32_t count = g.batch;
    const std::int64_t strides[3] = {rows_a * cols_a, rows_b * cols_b, g.m * g.n};
    cublasLtMatrixLayout_t ls[3] = {la, lb, ld};
    for (int i = 0; i < 3; ++i) {
      check_lt(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)), "batch");
      check_lt(cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i],
                                                sizeof(strides[i])),
               "stride");
    }
  }
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "pref");
  const std::uint64_t wsb = ws.size();
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)), "ws");
  std::vector<cublasLtMatmulHeuristicResult_t> res(16);
  int found = 0;
  check_lt(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 16, res.data(), &found), "heuristic");
  const float alpha = 1.f, beta = 0.f;
  EventTimer timer;
  std::vector<double> best_of(found, 1e30);
  for (auto _ : state) {
    for (int c = 0; c < found; ++c) {
      if (res[c].state != CUBLAS_STATUS_SUCCESS) continue;
      auto run = [&] {
        check_lt(cublasLtMatmul(lt, desc, &alpha, A.data(), la, Bm.data(), lb, &beta, D.data(), ld, D.data(), ld,
                                &res[c].algo, ws.data(), ws.size(), nullptr),
                 "matmul");
      };
      run();
      std::vector<double> ms;
      for (int r = 0; r < 5; ++r) ms.push_back(timer.time_ms(run));
      best_of[c] = std::min(best_of[c], median(ms));
    }
    state.SetIterationTime(best_of.empty() ? 0 : best_of[0] * 1e-3);
  }
  int best = 0;
  for (int c = 1; c < found; ++c)
    if (best_of[c] < best_of[best]) best = c;
  const double flops = 2.0 * g.m * g.n * g.k * g.batch;
  state.counters["candidates"] = found;
  state.counters["first_ms"] = found ? best_of[0] : 0;
  state.counters["best_ms"] = found ? best_of[best] : 0;
  state.counters["best_index"] = best;
  state.counters["first_TFLOP/s"] = found ? flops / (best_of[0] * 1e-3) / 1e12 : 0;
  state.counters["best_TFLOP/s"] = found ? flops / (best_of[best] * 1e-3) / 1e12 : 0;
  state.counters["first_over_best"] = found ? best_of[0] / best_of[best] : 0;
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(lt);
}

// Linear on R rows, W stored [out, in] (see ops/linear/launch.cuh for the column-major forms).
constexpr std::int64_t R = 16384;
Shape fwd(std::int64_t out, std::int64_t in) { return {true, false, out, R, in, CUDA_R_16BF, 1}; }
Shape dx(std::int64_t out, std::int64_t in) { return {false, false, in, R, out, CUDA_R_16BF, 1}; }
Shape dw(std::int64_t out, std::int64_t in) { return {false, true, in, out, R, CUDA_R_32F, 1}; }

#define GECKO_GEMM_CANDIDATES(name, shape) \
  BENCHMARK_CAPTURE(BM_gemm_candidates, name, shape)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond)

GECKO_GEMM_CANDIDATES(fwd_1024x4096, fwd(1024, 4096));
GECKO_GEMM_CANDIDATES(fwd_8192x4096, fwd(8192, 4096));
GECKO_GEMM_CANDIDATES(fwd_4096x4096, fwd(4096, 4096));
GECKO_GEMM_CANDIDATES(fwd_4096x8192, fwd(4096, 8192));
GECKO_GEMM_CANDIDATES(dx_1024x4096, dx(1024, 4096));
GECKO_GEMM_CANDIDATES(dx_8192x4096, dx(8192, 4096));
GECKO_GEMM_CANDIDATES(dx_4096x4096, dx(4096, 4096));
GECKO_GEMM_CANDIDATES(dx_4096x8192, dx(4096, 8192));
GECKO_GEMM_CANDIDATES(dw_1024x4096, dw(1024, 4096));
GECKO_GEMM_CANDIDATES(dw_8192x4096, dw(8192, 4096));
GECKO_GEMM_CANDIDATES(dw_4096x4096, dw(4096, 4096));
GECKO_GEMM_CANDIDATES(dw_4096x8192, dw(4096, 8192));
// Staged attention at C = 2048, dk = 256, dv = 2048, a group of 8 chunks: S = Q Kw^T (fp32 out)
// and O = P Vw.
GECKO_GEMM_CANDIDATES(sca_logits, (Shape{true, false, 4096, 2048, 256, CUDA_R_32F, 8}));
GECKO_GEMM_CANDIDATES(sca_pv, (Shape{false, false, 2048, 2048, 4096, CUDA_R_16BF, 8}));

}  // namespace
}  // namespace gecko::bench
