// Host launchers of the Linear layer on cuBLASLt, with fused epilogues.
//
// Row-major tensors are column-major transposes, so every product is one cuBLASLt call:
//   forward  y^T  [N, M] = W_stored^T(op T) x^T            epilogue BIAS when there is a bias,
//                                                          C = residual^T with beta = 1 when given
//   dx       dx^T [K, M] = W_stored(op N)   dpre^T         beta = 1 to accumulate
//   dweight  dW^T [K, N] = x^T(op N)        dpre^T(op T)   fp32 output, beta = 1 to accumulate
// A forward of at most kGemvMaxRows rows (decoding) runs kernel_gemv.cuh instead: one pass over
// the weight near the read bandwidth with the whole epilogue fused (when K and the strides suit its
// 16-byte loads; otherwise cuBLASLt as above).
// cuBLASLt has no SiLU epilogue (only ReLU/GELU and their AUX forms), so SiLU is one fused
// element-wise pass: forward reads the pre-activation once and writes y (in place when `pre` is not
// kept); backward reads dy and pre once, writes dpre (rounded to T) and, when dbias is wanted,
// sums the stored dpre per column in the same pass (deterministic partials, no atomics). Without
// SiLU the bias gradient is one column-sum pass over dy.
//
// Workspace (caller-owned, 256-byte aligned): [GEMM workspace | dpre (SiLU without args.dpre) |
// column-sum partials (dbias)], each part 256-byte aligned; *_workspace_size() gives the total.
// Stream-ordered; never synchronizes or allocates.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/elementwise.cuh"
#include "gecko/ops/linear/args.hpp"
#include "gecko/ops/linear/context.hpp"
#include "gecko/ops/linear/kernel.cuh"
#include "gecko/ops/linear/kernel_gemv.cuh"

namespace gecko::linear::cuda {

template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  else return CUDA_R_32F;
}

namespace detail {

inline std::size_t round_up_256(std::size_t b) { return (b + 255) / 256 * 256; }

inline Status check_workspace(const void* ws, std::size_t bytes, std::size_t need, const char* what) {
  if (need == 0) return Status::success();
  if (!ws || bytes < need)
    return invalid_argument(std::string(what) + " needs " + std::to_string(need) + " bytes of workspace, got " +
                            std::to_string(ws ? bytes : 0));
  if (reinterpret_cast<std::uintptr_t>(ws) % 256 != 0)
    return invalid_argument(std::string(what) + ": workspace must be 256-byte aligned");
  return Status::success();
}

template <class T>
std::size_t dpre_bytes(const BackwardArgs<T>& a, const Problem& p) {
  return has_silu(a.epilogue) && a.dpre.empty() ? round_up_256(static_cast<std::size_t>(p.M * p.N) * sizeof(T)) : 0;
}

template <class T>
Status partial_bytes(const BackwardArgs<T>& a, const Problem& p, std::size_t& bytes) {
  bytes = 0;
  if (a.dbias.empty() || p.M == 0) return Status::success();
  elementwise::ColsumPlan plan;
  GECKO_RETURN_IF_ERROR(elementwise::plan_colsum(p.M, p.N, plan));
  bytes = round_up_256(plan.partial_bytes);
  return Status::success();
}

// Whether a forward takes the matrix-vector kernel: few rows, and K, the row strides and the
// pointers of x and W suit 16-byte loads.
template <class T>
bool use_gemv(const ForwardArgs<T>& a, const Problem& p) {
  constexpr std::int64_t V = kVec16<T>;
  const auto aligned = [](const void* q) { return reinterpret_cast<std::uintptr_t>(q) % 16 == 0; };
  return p.M >= 1 && p.M <= kernels::kGemvMaxRows && p.K % V == 0 && p.ldw % V == 0 && (p.M == 1 || p.ldx % V == 0) &&
         aligned(a.x.data) && aligned(a.weight.data);
}

template <class T, int kUnroll = kernels::kGemvUnroll, int kSplit = kernels::kGemvSplit>
Status run_gemv(const ForwardArgs<T>& a, const Problem& p, cudaStream_t stream) {
  kernels::GemvParams<T> g;
  g.x = a.x.data;
  g.w = a.weight.data;
  g.bias = has_bias(a.epilogue) ? a.bias.data : nullptr;
  g.residual = a.residual.empty() ? nullptr : a.residual.data;
  g.y = a.y.data;
  g.pre = a.pre.empty() ? nullptr : a.pre.data;
  g.N = p.N;
  g.K = p.K;
  g.ldx = p.ldx;
  g.ldw = p.ldw;
  g.ldy = p.ldy;
  g.ldpre = p.ldpre;
  g.ldres = p.ldres;
  g.silu = has_silu(a.epilogue);
  constexpr int kSlots = kernels::kGemvWarps / kSplit;
  const std::int64_t ctas = (p.N + kSlots - 1) / kSlots;
  const dim3 grid(static_cast<unsigned>(std::min<std::int64_t>(ctas, 1 << 20)));
  const dim3 block(kernels::kGemvWarps * 32);
  switch (p.M) {
    case 1: kernels::gemv_kernel<T, 1, kUnroll, kSplit><<<grid, block, 0, stream>>>(g); break;
    case 2: kernels::gemv_kernel<T, 2, kUnroll, kSplit><<<grid, block, 0, stream>>>(g); break;
    case 3: kernels::gemv_kernel<T, 3, kUnroll, kSplit><<<grid, block, 0, stream>>>(g); break;
    default: kernels::gemv_kernel<T, 4, kUnroll, kSplit><<<grid, block, 0, stream>>>(g); break;
  }
  return last_launch_status("linear forward (matrix-vector)");
}

}  // namespace detail

template <class T>
Status forward_workspace_size(const Context& ctx, const ForwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = ctx.gemm_workspace_bytes();
  return Status::success();
}

template <class T>
Status backward_workspace_size(const Context& ctx, const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  std::size_t partial = 0;
  GECKO_RETURN_IF_ERROR(detail::partial_bytes(a, p, partial));
  bytes = detail::round_up_256(ctx.gemm_workspace_bytes()) + detail::dpre_bytes(a, p) + partial;
  return Status::success();
}

// y = epilogue(x W^T + bias); with a SiLU epilogue and args.pre, pre keeps x W^T + bias.
template <class T>
Status forward(Context& ctx, const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA Linear takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  GECKO_RETURN_IF_ERROR(detail::check_workspace(workspace, workspace_bytes, ctx.gemm_workspace_bytes(), "linear forward"));
  if (p.M == 0) return Status::success();
  if (ctx.small_rows_kernel() && detail::use_gemv(a, p)) return detail::run_gemv(a, p, stream);
  const bool silu = has_silu(a.epilogue);
  const bool keep_pre = silu && !a.pre.empty();
  T* out = keep_pre ? a.pre.data : a.y.data;
  const std::int64_t ld_out = keep_pre ? p.ldpre : p.ldy;

  Gemm g;
  g.ab_type = g.cd_type = cuda_data_type<T>();
  g.trans_a = true;
  g.trans_b = false;
  g.m = p.N;
  g.n = p.M;
  g.k = p.K;
  g.a = a.weight.data;
  g.lda = p.ldw;
  g.b = a.x.data;
  g.ldb = p.ldx;
  g.d = out;
  g.ldd = ld_out;
  g.bias = has_bias(a.epilogue) ? a.bias.data : nullptr;
  if (!a.residual.empty()) {  // D = W x + bias + 1 * residual, in fp32 before rounding
    g.beta = 1.f;
    if (static_cast<const void*>(a.residual.data) != static_cast<const void*>(out)) {
      g.c = a.residual.data;
      g.ldc = p.ldres;
    }
  }
  GECKO_RETURN_IF_ERROR(ctx.matmul(g, workspace, stream));
  if (!silu) return Status::success();

  elementwise::Problem<T, 1, 1> e;
  e.rows = p.M;
  e.cols = p.N;
  e.in[0] = out;
  e.in_stride[0] = ld_out;
  e.out[0] = a.y.data;
  e.out_stride[0] = p.ldy;
  return elementwise::map(e, kernels::SiluForward{}, stream, "linear forward silu");
}

template <class T>
Status backward(Context& ctx, const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA Linear takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(ctx.check_ready());
  std::size_t need = 0, partial_bytes = 0;
  GECKO_RETURN_IF_ERROR(backward_workspace_size(ctx, a, need));
  GECKO_RETURN_IF_ERROR(detail::partial_bytes(a, p, partial_bytes));
  GECKO_RETURN_IF_ERROR(detail::check_workspace(workspace, workspace_bytes, need, "linear backward"));

  if (p.M == 0) {  // empty batch: parameter gradients are zero
    if (!a.accumulate_dparams) {
      if (!a.dweight.empty())
        GECKO_CUDA_RETURN(cudaMemset2DAsync(a.dweight.data, p.lddw * sizeof(float), 0, p.K * sizeof(float), p.N, stream));
      if (!a.dbias.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dbias.data, 0, p.N * sizeof(float), stream));
    }
    return Status::success();
  }

  char* base = static_cast<char*>(workspace);
  std::size_t offset = detail::round_up_256(ctx.gemm_workspace_bytes());
  const bool silu = has_silu(a.epilogue);
  const T* grad = a.dy.data;  // dpre as the GEMMs read it
  std::int64_t ld_grad = p.lddy;
  if (silu) {
    T* dpre = a.dpre.data;
    std::int64_t ld = p.lddpre;
    if (!dpre) {
      dpre = reinterpret_cast<T*>(base + offset);
      ld = p.N;
      offset += detail::dpre_bytes(a, p);
    }
    elementwise::Problem<T, 2, 1> e;
    e.rows = p.M;
    e.cols = p.N;
    e.in[0] = a.dy.data;
    e.in_stride[0] = p.lddy;
    e.in[1] = a.pre.data;
    e.in_stride[1] = p.ldpre;
    e.out[0] = dpre;
    e.out_stride[0] = ld;
    if (!a.dbias.empty())
      GECKO_RETURN_IF_ERROR(elementwise::map_colsum<0>(e, kernels::SiluBackward{}, a.dbias.data, a.accumulate_dparams,
                                                       base + offset, partial_bytes, stream, "linear backward silu"));
    else
      GECKO_RETURN_IF_ERROR(elementwise::map(e, kernels::SiluBackward{}, stream, "linear backward silu"));
    grad = dpre;
    ld_grad = ld;
  } else if (!a.dbias.empty()) {
    elementwise::Problem<T, 1, 1> e;
    e.rows = p.M;
    e.cols = p.N;
    e.in[0] = a.dy.data;
    e.in_stride[0] = p.lddy;
    e.out[0] = nullptr;
    e.out_stride[0] = p.N;
    GECKO_RETURN_IF_ERROR(elementwise::map_colsum<0>(e, kernels::Pass{}, a.dbias.data, a.accumulate_dparams,
                                                     base + offset, partial_bytes, stream, "linear backward dbias"));
  }

  if (!a.dx.empty()) {
    Gemm g;
    g.ab_type = g.cd_type = cuda_data_type<T>();
    g.m = p.K;
    g.n = p.M;
    g.k = p.N;
    g.a = a.weight.data;
    g.lda = p.ldw;
    g.b = grad;
    g.ldb = ld_grad;
    g.d = a.dx.data;
    g.ldd = p.lddx;
    g.beta = a.accumulate_dx ? 1.f : 0.f;
    GECKO_RETURN_IF_ERROR(ctx.matmul(g, workspace, stream));
  }
  if (!a.dweight.empty()) {
    Gemm g;
    g.ab_type = cuda_data_type<T>();
    g.cd_type = CUDA_R_32F;
    g.trans_b = true;
    g.m = p.K;
    g.n = p.N;
    g.k = p.M;
    g.a = a.x.data;
    g.lda = p.ldx;
    g.b = grad;
    g.ldb = ld_grad;
    g.d = a.dweight.data;
    g.ldd = p.lddw;
    g.beta = a.accumulate_dparams ? 1.f : 0.f;
    GECKO_RETURN_IF_ERROR(ctx.matmul(g, workspace, stream));
  }
  return Status::success();
}

}  // namespace gecko::linear::cuda
