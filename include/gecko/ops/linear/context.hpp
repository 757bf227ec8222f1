// linear::cuda::Context: owns the cuBLASLt handle (the only place gecko creates one) and caches,
// per GEMM shape, the matmul descriptor, the matrix layouts and the algorithm the heuristic chose.
// Create one per device, once, and pass it to every Linear call; it is thread-safe (a mutex guards
// the cache and the descriptor update of each call). The GEMM workspace is the caller's: every
// *_workspace_size() answer includes gemm_workspace_bytes().
//
// Algorithm choice. By default a shape runs the heuristic's first algorithm. With
// AlgoChoice::kMeasured, the first call of a large shape (>= 1 GFLOP) times the heuristic's first
// kCandidates algorithms on the caller's stream and keeps the fastest: on an H100 the first choice
// is up to ~10% slower than the best for some of the block's projection shapes
// (bench/bench_gemm_candidates.cu). Measuring synchronizes the stream once per new shape, writes
// only into a scratch output the Context allocates for it (never the caller's D; a pointer-array
// batch, whose outputs only its device-side arrays name, is timed only with beta = 0, into its own
// outputs, which the call then rewrites), and is skipped
// while the stream is being captured into a CUDA graph (the heuristic's choice is cached then).
//
// Reproducibility: a shape always runs the algorithm cached for it, so a Context gives
// bitwise-identical results call after call on one device. The heuristic is deterministic; a
// measured choice can differ between processes (timing noise), and so can the low bits.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
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

// The largest power of two <= 256 dividing v (an address or a byte stride): the alignment
// cuBLASLt's heuristic filters algorithms on.
inline std::int64_t pow2_alignment(std::uint64_t v) {
  std::int64_t al = 256;
  while (al > 1 && v % static_cast<std::uint64_t>(al) != 0) al >>= 1;
  return al;
}

// One column-major GEMM as cuBLASLt sees it: D (m x n, ld ldd) = alpha op(A) op(B) + beta C (+ bias),
// with C = D unless given, or `batch` of them at constant element strides (cuBLASLt's strided
// batch; a separate C is not batched), or `batch` of them anywhere (pointer_array: a, b and d are
// then device arrays of `batch` matrix pointers, for batches no single stride describes).
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
  float beta = 0.f;                // 0 (overwrite) or 1 (add C)
  const void* c = nullptr;         // C of cd_type, ld ldc; null: C is D (accumulate in place)
  std::int64_t ldc = 0;
  const void* bias = nullptr;      // [m] of cd_type: CUBLASLT_EPILOGUE_BIAS, or null
  float alpha = 1.f;
  int batch = 1;                   // strided batch: matrix i at a + i * stride_a, ...
  std::int64_t stride_a = 0, stride_b = 0, stride_d = 0;
  // Pointer-array batch: a, b, d point to device arrays of `batch` pointers (written before the
  // call runs, e.g. by a kernel earlier on the stream); matrix_alignment is the largest power of
  // two (<= 256 bytes) dividing every matrix address they hold, which the heuristic filters on.
  bool pointer_array = false;
  std::int64_t matrix_alignment = 0;
};

enum class AlgoChoice { kHeuristic, kMeasured };

class Context {
 public:
  static constexpr std::size_t kDefaultGemmWorkspaceBytes = std::size_t(32) << 20;  // NVIDIA's advice for Hopper
  static constexpr int kCandidates = 8;            // algorithms timed per shape with kMeasured
  static constexpr double kMeasureMinFlops = 1e9;  // smaller GEMMs keep the heuristic's choice

  Context() = default;
  ~Context() { reset(); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Creates the cuBLASLt handle on the current device. gemm_workspace_bytes caps the workspace the
  // heuristic may pick algorithms for. Calling it again on a ready context is an error.
  Status init(std::size_t gemm_workspace_bytes = kDefaultGemmWorkspaceBytes,
              AlgoChoice choice = AlgoChoice::kHeuristic) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handle_) return invalid_argument("linear::cuda::Context::init: already initialized");
    GECKO_CUDA_RETURN(cudaGetDevice(&device_));
    GECKO_CUBLAS_RETURN(cublasLtCreate(&handle_));
    gemm_workspace_bytes_ = gemm_workspace_bytes;
    choice_ = choice;
    return Status::success();
  }

  AlgoChoice algo_choice() const { return choice_; }
  // Whether forwards of at most 4 rows take the matrix-vector kernel (linear/kernel_gemv.cuh;
  // the default) or cuBLASLt like every other shape (for comparison).
  void set_small_rows_kernel(bool on) { small_rows_kernel_ = on; }
  bool small_rows_kernel() const { return small_rows_kernel_; }
  // Shapes whose algorithm was chosen by timing (kMeasured), and the largest ratio seen between
  // the heuristic's first choice and the one kept (1 when it was already the fastest).
  std::size_t measured_plans() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return measured_;
  }
  double best_measured_gain() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return best_gain_;
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
      const Status st = create_plan(g, plan, workspace, stream);
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
    const void* c = g.c ? g.c : g.d;
    GECKO_CUBLAS_RETURN(cublasLtMatmul(handle_, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, c,
                                       plan.c ? plan.c : plan.d, g.d, plan.d, &plan.algo, workspace, plan.workspace,
                                       stream));
    return Status::success();
  }

 private:
  // Everything the plan depends on: types, transposes, sizes, leading dimensions, whether beta is
  // zero, the epilogue, the batch, a separate C and the pointers' alignments (the heuristic filters
  // algorithms on them).
  using Key = std::array<std::int64_t, 23>;

  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;  // c: null when C is D
    cublasLtMatmulAlgo_t algo{};
    std::size_t workspace = 0;
    void destroy() {
      if (desc) cublasLtMatmulDescDestroy(desc);
      if (a) cublasLtMatrixLayoutDestroy(a);
      if (b) cublasLtMatrixLayoutDestroy(b);
      if (c) cublasLtMatrixLayoutDestroy(c);
      if (d) cublasLtMatrixLayoutDestroy(d);
      desc = nullptr;
      a = b = c = d = nullptr;
    }
  };

  static std::int64_t alignment(const void* p) { return pow2_alignment(reinterpret_cast<std::uintptr_t>(p)); }

  // The alignment the heuristic is told for a matrix operand (its pointer, or for a pointer array
  // the caller's matrix_alignment).
  static std::int64_t operand_alignment(const Gemm& g, const void* p) {
    return g.pointer_array ? g.matrix_alignment : alignment(p);
  }

  static Key make_key(const Gemm& g) {
    return Key{g.ab_type,        g.cd_type,         g.trans_a,
               g.trans_b,        g.m,               g.n,
               g.k,              g.lda,             g.ldb,
               g.ldd,            g.beta != 0.f,     g.bias != nullptr,
               operand_alignment(g, g.a),           operand_alignment(g, g.b),
               operand_alignment(g, g.d),           g.bias ? alignment(g.bias) : 0,
               g.batch,          g.stride_a,        g.stride_b,
               g.stride_d,       g.c ? g.ldc : -1,  g.c ? alignment(g.c) : 0,
               g.pointer_array};
  }

  Status create_plan(const Gemm& g, Plan& plan, void* workspace, cudaStream_t stream) {
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
    if (g.c && (g.batch > 1 || g.pointer_array))
      return invalid_argument("linear::cuda::Gemm: a separate C is not batched");
    if (g.pointer_array && (g.bias || g.matrix_alignment < 1))
      return invalid_argument("linear::cuda::Gemm: a pointer-array batch takes no bias and needs matrix_alignment");
    if (g.c) GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.c, g.cd_type, g.m, g.n, g.ldc));
    if (g.pointer_array) {
      const std::int32_t count = g.batch;
      const std::uint32_t mode = CUBLASLT_BATCH_MODE_POINTER_ARRAY;
      for (cublasLtMatrixLayout_t layout : {plan.a, plan.b, plan.d}) {
        GECKO_CUBLAS_RETURN(
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
        GECKO_CUBLAS_RETURN(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, &mode, sizeof(mode)));
      }
    } else if (g.batch > 1) {
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
    const std::uint32_t al_a = static_cast<std::uint32_t>(operand_alignment(g, g.a)),
                        al_b = static_cast<std::uint32_t>(operand_alignment(g, g.b)),
                        al_d = static_cast<std::uint32_t>(operand_alignment(g, g.d)),
                        al_c = g.c ? static_cast<std::uint32_t>(alignment(g.c)) : al_d;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    std::array<cublasLtMatmulHeuristicResult_t, kCandidates> results{};
    int found = 0;
    const double flops = 2.0 * static_cast<double>(g.m) * g.n * g.k * g.batch;
    // A pointer-array batch is timed only when it overwrites its outputs (beta = 0; see fastest()).
    const bool timeable = !g.pointer_array || g.beta == 0.f;
    const int want = choice_ == AlgoChoice::kMeasured && flops >= kMeasureMinFlops && timeable ? kCandidates : 1;
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.c ? plan.c : plan.d, plan.d, pref,
                                         want, results.data(), &found);
    cublasLtMatmulPreferenceDestroy(pref);
    GECKO_RETURN_IF_ERROR(cublas_status(s, "cublasLtMatmulAlgoGetHeuristic"));
    if (found < 1 || results[0].state != CUBLAS_STATUS_SUCCESS)
      return unsupported("cuBLASLt has no algorithm for this GEMM (m=" + std::to_string(g.m) + " n=" +
                         std::to_string(g.n) + " k=" + std::to_string(g.k) + ")");
    int pick = 0;
    if (found > 1) GECKO_RETURN_IF_ERROR(fastest(g, plan, results.data(), found, workspace, stream, pick));
    plan.algo = results[pick].algo;
    plan.workspace = results[pick].workspaceSize;
    return Status::success();
  }

  // Elements a column-major m x n (ld) matrix, batched at `stride`, spans.
  static std::size_t extent(std::int64_t m, std::int64_t n, std::int64_t ld, int batch, std::int64_t stride) {
    return static_cast<std::size_t>(ld * (n - 1) + m + (batch > 1 ? stride * (batch - 1) : 0));
  }

  // Times each candidate on `stream` into a scratch output and sets `pick` to the fastest. Leaves
  // pick = 0 (the heuristic's first) when the stream is capturing or the scratch cannot be had.
  Status fastest(const Gemm& g, const Plan& plan, const cublasLtMatmulHeuristicResult_t* results, int found,
                 void* workspace, cudaStream_t stream, int& pick) {
    pick = 0;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    GECKO_CUDA_RETURN(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) return Status::success();
    // A pointer-array batch (beta = 0, no separate C) is timed into the caller's own outputs, the
    // only matrices its device-side arrays name: every candidate writes the same product there and
    // the call that follows rewrites it with the chosen algorithm. (D never overlaps A or B.)
    void* out = g.pointer_array ? g.d : nullptr;
    const std::size_t elem = g.cd_type == CUDA_R_32F ? 4 : 2;
    std::size_t need = extent(g.m, g.n, g.ldd, g.batch, g.stride_d);
    if (g.c) need = std::max(need, extent(g.m, g.n, g.ldc, 1, 0));
    need *= elem;
    if (!out && scratch_bytes_ < need) {
      if (scratch_) cudaFree(scratch_);
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      if (cudaMalloc(&scratch_, need) != cudaSuccess) {
        (void)cudaGetLastError();  // out of memory: keep the heuristic's choice
        scratch_ = nullptr;
        return Status::success();
      }
      scratch_bytes_ = need;
      GECKO_CUDA_RETURN(cudaMemsetAsync(scratch_, 0, need, stream));
    }
    if (!out) out = scratch_;
    if (!start_) GECKO_CUDA_RETURN(cudaEventCreate(&start_));
    if (!stop_) GECKO_CUDA_RETURN(cudaEventCreate(&stop_));
    const float alpha = g.alpha, beta = g.beta;
    float best = -1.f, first = -1.f;
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      auto run = [&] {
        return cublasLtMatmul(handle_, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, out,
                              plan.c ? plan.c : plan.d, out, plan.d, &results[i].algo, workspace,
                              results[i].workspaceSize, stream);
      };
      if (run() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that does not launch is not kept
      GECKO_CUDA_RETURN(cudaEventRecord(start_, stream));
      constexpr int kRuns = 3;
      for (int r = 0; r < kRuns; ++r) GECKO_CUBLAS_RETURN(run());
      GECKO_CUDA_RETURN(cudaEventRecord(stop_, stream));
      GECKO_CUDA_RETURN(cudaEventSynchronize(stop_));
      float ms = 0.f;
      GECKO_CUDA_RETURN(cudaEventElapsedTime(&ms, start_, stop_));
      if (i == 0) first = ms;
      if (best < 0.f || ms < best) {
        best = ms;
        pick = i;
      }
    }
    ++measured_;
    if (best > 0.f && first > 0.f) best_gain_ = std::max(best_gain_, static_cast<double>(first / best));
    return Status::success();
  }

  void reset() {
    for (auto& kv : plans_) kv.second.destroy();
    plans_.clear();
    if (scratch_) cudaFree(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    if (start_) cudaEventDestroy(start_);
    if (stop_) cudaEventDestroy(stop_);
    start_ = stop_ = nullptr;
    if (handle_) cublasLtDestroy(handle_);
    handle_ = nullptr;
  }

  mutable std::mutex mutex_;
  cublasLtHandle_t handle_ = nullptr;
  int device_ = -1;
  std::size_t gemm_workspace_bytes_ = 0;
  AlgoChoice choice_ = AlgoChoice::kHeuristic;
  bool small_rows_kernel_ = true;
  std::map<Key, Plan> plans_;
  // kMeasured: the scratch output candidates are timed into, and the events that time them.
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::size_t measured_ = 0;
  double best_gain_ = 1.0;
};

}  // namespace gecko::linear::cuda
