// linear::cuda::Context: owns the cuBLASLt handle (the only place gecko creates one) and caches,
// per GEMM shape, the matmul descriptor, the matrix layouts and the algorithm the heuristic chose.
// Create one per device, once, and pass it to every Linear call; it is thread-safe (a mutex guards
// the cache and the descriptor update of each call). The GEMM workspace is the caller's: every
// *_workspace_size() answer includes gemm_workspace_bytes().
//
// Reproducibility: a shape always runs the algorithm cached for it, and the heuristic itself is
// deterministic, so a Context gives bitwise-identical results call after call on one device.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/status.hpp"

namespace gecko::linear::cuda {

inline Status cublas_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::success();
  return Status(StatusCode::kCudaError, std::string(what) + ": " + cublasLtGetStatusString(s));
}

#define GECKO_CUBLAS_RETURN(expr) GECKO_RETURN_IF_ERROR(::gecko::linear::cuda::cublas_status((expr), #expr))

// One column-major GEMM as cuBLASLt sees it: D (m x n, ld ldd) = alpha op(A) op(B) + beta D,
// or `batch` of them at constant element strides (cuBLASLt's strided batch).
struct Gemm {
  cudaDataType_t ab_type = CUDA_R_32F;  // A and B
  cudaDataType_t cd_type = CUDA_R_32F;  // C = D
  bool trans_a = false, trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  std::int64_t lda = 0;
  const void* b = nullptr;
  std::int64_t ldb = 0;
  void* d = nullptr;
  std::int64_t ldd = 0;
  float beta = 0.f;                // 0 (overwrite) or 1 (accumulate into D)
  const void* bias = nullptr;      // [m] of cd_type: CUBLASLT_EPILOGUE_BIAS, or null
  float alpha = 1.f;
  int batch = 1;                   // strided batch: matrix i at a + i * stride_a, ...
  std::int64_t stride_a = 0, stride_b = 0, stride_d = 0;
};

class Context {
 public:
  static constexpr std::size_t kDefaultGemmWorkspaceBytes = std::size_t(32) << 20;  // NVIDIA's advice for Hopper

  Context() = default;
  ~Context() { reset(); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Creates the cuBLASLt handle on the current device. gemm_workspace_bytes caps the workspace the
  // heuristic may pick algorithms for. Calling it again on a ready context is an error.
  Status init(std::size_t gemm_workspace_bytes = kDefaultGemmWorkspaceBytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handle_) return invalid_argument("linear::cuda::Context::init: already initialized");
    GECKO_CUDA_RETURN(cudaGetDevice(&device_));
    GECKO_CUBLAS_RETURN(cublasLtCreate(&handle_));
    gemm_workspace_bytes_ = gemm_workspace_bytes;
    return Status::success();
  }

  bool ready() const { return handle_ != nullptr; }
  int device() const { return device_; }
  cublasLtHandle_t handle() const { return handle_; }
  std::size_t gemm_workspace_bytes() const { return gemm_workspace_bytes_; }

  std::size_t cached_plans() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return plans_.size();
  }
  void clear_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& kv : plans_) kv.second.destroy();
    plans_.clear();
  }

  // Checks the context can run on the calling thread's current device.
  Status check_ready() const {
    if (!handle_) return invalid_argument("linear::cuda::Context is not initialized (call init() once)");
    int dev = -1;
    GECKO_CUDA_RETURN(cudaGetDevice(&dev));
    if (dev != device_)
      return invalid_argument("linear::cuda::Context was created on device " + std::to_string(device_) +
                              " but the current device is " + std::to_string(dev));
    return Status::success();
  }

  // Enqueues one GEMM on `stream` with the cached plan for its shape (created on first use).
  // workspace: at least gemm_workspace_bytes(), 256-byte aligned (or null when that is 0).
  Status matmul(const Gemm& g, void* workspace, cudaStream_t stream) {
    GECKO_RETURN_IF_ERROR(check_ready());
    std::lock_guard<std::mutex> lock(mutex_);
    const Key key = make_key(g);
    auto it = plans_.find(key);
    if (it == plans_.end()) {
      Plan plan;
      const Status st = create_plan(g, plan);
      if (!st.ok()) {
        plan.destroy();
        return st;
      }
      it = plans_.emplace(key, plan).first;
    }
    Plan& plan = it->second;
    if (g.bias)
      GECKO_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                                         sizeof(g.bias)));
    const float alpha = g.alpha, beta = g.beta;
    GECKO_CUBLAS_RETURN(cublasLtMatmul(handle_, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, g.d, plan.d, g.d,
                                       plan.d, &plan.algo, workspace, plan.workspace, stream));
    return Status::success();
  }

 private:
  // Everything the plan depends on: types, transposes, sizes, leading dimensions, whether beta is
  // zero, the epilogue, the batch and the pointers' alignments (the heuristic filters algorithms
  // on them).
  using Key = std::array<std::int64_t, 20>;

  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    std::size_t workspace = 0;
    void destroy() {
      if (desc) cublasLtMatmulDescDestroy(desc);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (d) cublasLtMatrixLayoutDestroy(d);
      desc = nullptr;
      a = b = d = nullptr;
    }
  };

  static std::int64_t alignment(const void* p) {
    const auto v = reinterpret_cast<std::uintptr_t>(p);
    std::int64_t al = 256;
    while (al > 1 && v % static_cast<std::uintptr_t>(al) != 0) al >>= 1;
    return al;
  }

  static Key make_key(const Gemm& g) {
    return Key{g.ab_type,        g.cd_type,       g.trans_a,       g.trans_b,          g.m,
               g.n,              g.k,             g.lda,           g.ldb,              g.ldd,
               g.beta != 0.f,    g.bias != nullptr, alignment(g.a), alignment(g.b),     alignment(g.d),
               g.bias ? alignment(g.bias) : 0,
               g.batch,          g.stride_a,      g.stride_b,      g.stride_d};
  }

  Status create_plan(const Gemm& g, Plan& plan) {
    GECKO_CUBLAS_RETURN(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    GECKO_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    GECKO_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (g.bias) {
      const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
      const std::int32_t bias_type = g.cd_type;
      GECKO_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep)));
      GECKO_CUBLAS_RETURN(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
      GECKO_CUBLAS_RETURN(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
    }
    // Stored shapes (before op): A is (trans_a ? k x m : m x k), B is (trans_b ? n x k : k x n).
    GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.a, g.ab_type, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda));
    GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.b, g.ab_type, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb));
    GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.d, g.cd_type, g.m, g.n, g.ldd));
    if (g.batch > 1) {
      const std::int32_t count = g.batch;
      const std::pair<cublasLtMatrixLayout_t, std::int64_t> layouts[3] = {
          {plan.a, g.stride_a}, {plan.b, g.stride_b}, {plan.d, g.stride_d}};
      for (const auto& [layout, stride] : layouts) {
        GECKO_CUBLAS_RETURN(
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                             &stride, sizeof(stride)));
      }
    }

    cublasLtMatmulPreference_t pref = nullptr;
    GECKO_CUBLAS_RETURN(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t ws = gemm_workspace_bytes_;
    const std::uint32_t al_a = static_cast<std::uint32_t>(alignment(g.a)), al_b = static_cast<std::uint32_t>(alignment(g.b)),
                        al_d = static_cast<std::uint32_t>(alignment(g.d));
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.d, plan.d, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    GECKO_RETURN_IF_ERROR(cublas_status(s, "cublasLtMatmulAlgoGetHeuristic"));
    if (found < 1 || result.state != CUBLAS_STATUS_SUCCESS)
      return unsupported("cuBLASLt has no algorithm for this GEMM (m=" + std::to_string(g.m) + " n=" +
                         std::to_string(g.n) + " k=" + std::to_string(g.k) + ")");
    plan.algo = result.algo;
    plan.workspace = result.workspaceSize;
    return Status::success();
  }

  void reset() {
    for (auto& kv : plans_) kv.second.destroy();
    plans_.clear();
    if (handle_) cublasLtDestroy(handle_);
    handle_ = nullptr;
  }

  mutable std::mutex mutex_;
  cublasLtHandle_t handle_ = nullptr;
  int device_ = -1;
  std::size_t gemm_workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace gecko::linear::cuda
