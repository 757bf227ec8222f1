// Host launchers of the MEGA query/key views: validation, plan (word width, items per lane, row
// splits), workspace query. Stream-ordered; never synchronizes or allocates.
//
// Word width: 16-byte words when dz is a multiple of 16 / sizeof(T) and every pointer and row
// stride allows it, otherwise single elements. A warp covers one head, so dz may be at most
// 8 * 32 words (2048 bf16/fp16, 1024 fp32, or 256 with single elements); larger heads are
// kUnsupported. The row split depends only on (rows, heads, SM count): the workspace query needs no
// pointers and the summation order of dgamma/dbeta never changes for a shape.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/device.hpp"
#include "gecko/ops/qk_views/args.hpp"
#include "gecko/ops/qk_views/kernel.cuh"

namespace gecko::qk_views::cuda {

namespace detail {

struct Plan {
  int vec = 1;
  int items = 0;
  std::int64_t splits = 0;
  std::int64_t rows_per_split = 0;
  std::size_t smem = 0;
  std::size_t partial_bytes = 0;
};

// Splits the rows into chunks of a multiple of `quantum` rows so that heads x splits is about
// target_ctas.
inline Status plan_splits(const Problem& p, std::int64_t target_ctas, std::int64_t quantum, Plan& plan) {
  if (p.rows == 0) return Status::success();
  std::int64_t splits = (target_ctas + p.heads - 1) / p.heads;
  const std::int64_t max_splits = (p.rows + quantum - 1) / quantum;
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  std::int64_t per = (p.rows + splits - 1) / splits;
  per = (per + quantum - 1) / quantum * quantum;
  while ((p.rows + per - 1) / per > 65535) per *= 2;
  plan.rows_per_split = per;
  plan.splits = (p.rows + per - 1) / per;
  plan.partial_bytes = static_cast<std::size_t>(plan.splits * 2 * kViews * p.channels) * sizeof(float);
  plan.smem = static_cast<std::size_t>(kernels::kWarps * p.head_dim) * sizeof(float);
  return Status::success();
}

// The backward's split: two CTAs per SM (its register budget), whatever the word width, so the
// workspace query needs no pointers.
inline Status plan_backward_splits(const Problem& p, Plan& plan) {
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  return plan_splits(p, static_cast<std::int64_t>(dev->sm_count) * 2, kernels::kWarps, plan);
}

template <class T>
Status make_plan(const Problem& p, bool backward, std::initializer_list<const void*> pointers,
                 std::initializer_list<std::int64_t> strides, Plan& plan) {
  plan = Plan{};
  if (backward) GECKO_RETURN_IF_ERROR(plan_backward_splits(p, plan));
  constexpr int VEC = kVec16<T>;
  bool vec = p.head_dim % VEC == 0;
  for (const void* ptr : pointers)
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) vec = false;
  for (std::int64_t s : strides)
    if (s % VEC != 0) vec = false;
  plan.vec = vec ? VEC : 1;
  const std::int64_t words = p.head_dim / plan.vec;
  const std::int64_t per_lane = (words + 31) / 32;
  plan.items = per_lane <= 1 ? 1 : per_lane <= 2 ? 2 : per_lane <= 4 ? 4 : per_lane <= 8 ? 8 : 0;
  if (!plan.items)
    return unsupported("qk_views: head dim " + std::to_string(p.head_dim) + " exceeds " +
                       std::to_string(256 * plan.vec) + " for this element type and alignment");
  if (p.channels > 0x7fffffff) return unsupported("qk_views: more than 2^31 - 1 channels");
  return Status::success();
}

inline kernels::Params params(const Problem& p, const Plan& plan, float eps) {
  kernels::Params k;
  k.rows = p.rows;
  k.rows_per_split = plan.rows_per_split;
  k.channels = static_cast<int>(p.channels);
  k.head_dim = static_cast<int>(p.head_dim);
  k.head_words = static_cast<int>(p.head_dim / plan.vec);
  k.z_stride = p.z_stride;
  k.dz_stride = p.dz_stride;
  for (int i = 0; i < kViews; ++i) k.view_stride[i] = p.view_stride[i];
  k.eps = eps;
  k.inv_dz = 1.f / static_cast<float>(p.head_dim);
  k.inv_sqrt_dz = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.head_dim)));
  return k;
}

// The forward has no partials: its split fills exactly one wave of this kernel's CTAs.
template <class T, int VEC, int ITEMS>
Status launch_forward(Plan plan, const Problem& p, kernels::Params k, const ForwardArgs<T>& a, cudaStream_t s) {
  const auto fn = &kernels::forward_kernel<T, VEC, ITEMS>;
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  int per_sm = 0;
  GECKO_CUDA_RETURN(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kernels::kThreads, 0));
  GECKO_RETURN_IF_ERROR(plan_splits(p, static_cast<std::int64_t>(dev->sm_count) * (per_sm > 0 ? per_sm : 1),
                                    2 * kernels::kWarps, plan));
  k.rows_per_split = plan.rows_per_split;
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(plan.splits));
  fn<<<grid, kernels::kThreads, 0, s>>>(k, a.z.data, a.gamma.data, a.beta.data, a.q.data, a.k.data, a.aq.data, a.ak.data);
  return last_launch_status("qk_views forward");
}

template <class T, int VEC, int ITEMS>
Status launch_backward(const Plan& plan, const Problem& p, const kernels::Params& k, const BackwardArgs<T>& a,
                       float* partial, cudaStream_t s) {
  const auto fn = &kernels::backward_kernel<T, VEC, ITEMS>;
  if (plan.smem > 48 * 1024)
    GECKO_CUDA_RETURN(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem)));
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(plan.splits));
  fn<<<grid, kernels::kThreads, plan.smem, s>>>(k, a.z.data, a.gamma.data, a.dq.data, a.dk.data, a.daq.data, a.dak.data,
                                                a.dz.data, partial);
  return last_launch_status("qk_views backward");
}

template <class T, int VEC>
Status dispatch_forward(const Plan& plan, const Problem& p, const kernels::Params& k, const ForwardArgs<T>& a,
                        cudaStream_t s) {
  switch (plan.items) {
    case 1: return launch_forward<T, VEC, 1>(plan, p, k, a, s);
    case 2: return launch_forward<T, VEC, 2>(plan, p, k, a, s);
    case 4: return launch_forward<T, VEC, 4>(plan, p, k, a, s);
    default: return launch_forward<T, VEC, 8>(plan, p, k, a, s);
  }
}

template <class T, int VEC>
Status dispatch_backward(const Plan& plan, const Problem& p, const kernels::Params& k, const BackwardArgs<T>& a,
                         float* partial, cudaStream_t s) {
  switch (plan.items) {
    case 1: return launch_backward<T, VEC, 1>(plan, p, k, a, partial, s);
    case 2: return launch_backward<T, VEC, 2>(plan, p, k, a, partial, s);
    case 4: return launch_backward<T, VEC, 4>(plan, p, k, a, partial, s);
    default: return launch_backward<T, VEC, 8>(plan, p, k, a, partial, s);
  }
}

}  // namespace detail

// Bytes of workspace backward() needs: the dgamma/dbeta partials (0 when they are not wanted).
template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = 0;
  if (a.dgamma.empty() || p.rows == 0) return Status::success();
  detail::Plan plan;
  GECKO_RETURN_IF_ERROR(detail::plan_backward_splits(p, plan));
  bytes = plan.partial_bytes;
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA qk_views takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (p.rows == 0) return Status::success();
  detail::Plan plan;
  GECKO_RETURN_IF_ERROR(detail::make_plan<T>(p, false,
                                             {a.z.data, a.gamma.data, a.beta.data, a.q.data, a.k.data, a.aq.data, a.ak.data},
                                             {p.z_stride, p.view_stride[0], p.view_stride[1], p.view_stride[2], p.view_stride[3]},
                                             plan));
  const auto k = detail::params(p, plan, a.eps);
  constexpr int VEC = kVec16<T>;
  if (plan.vec == 1) return detail::dispatch_forward<T, 1>(plan, p, k, a, stream);
  return detail::dispatch_forward<T, VEC>(plan, p, k, a, stream);
}

template <class T>
Status backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA qk_views takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  std::size_t need = 0;
  GECKO_RETURN_IF_ERROR(backward_workspace_size(a, need));
  if (need && (workspace_bytes < need || !workspace))
    return invalid_argument("qk_views backward needs " + std::to_string(need) + " bytes of workspace, got " +
                            std::to_string(workspace ? workspace_bytes : 0));
  const bool want_params = !a.dgamma.empty();
  if (p.rows == 0) {
    if (want_params && !a.accumulate_dparams) {
      GECKO_CUDA_RETURN(cudaMemsetAsync(a.dgamma.data, 0, kViews * p.channels * sizeof(float), stream));
      GECKO_CUDA_RETURN(cudaMemsetAsync(a.dbeta.data, 0, kViews * p.channels * sizeof(float), stream));
    }
    return Status::success();
  }
  detail::Plan plan;
  GECKO_RETURN_IF_ERROR(detail::make_plan<T>(
      p, true, {a.z.data, a.gamma.data, a.dq.data, a.dk.data, a.daq.data, a.dak.data, a.dz.data},
      {p.z_stride, p.dz_stride, p.view_stride[0], p.view_stride[1], p.view_stride[2], p.view_stride[3]}, plan));
  const auto k = detail::params(p, plan, a.eps);
  float* partial = want_params ? static_cast<float*>(workspace) : nullptr;
  constexpr int VEC = kVec16<T>;
  const Status st = plan.vec == 1 ? detail::dispatch_backward<T, 1>(plan, p, k, a, partial, stream)
                                  : detail::dispatch_backward<T, VEC>(plan, p, k, a, partial, stream);
  GECKO_RETURN_IF_ERROR(st);
  if (!want_params) return Status::success();
  const std::int64_t n = 2 * kViews * p.channels;
  kernels::sum_partials_kernel<><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
      partial, static_cast<int>(plan.splits), static_cast<int>(p.channels), a.accumulate_dparams, a.dgamma.data,
      a.dbeta.data);
  return last_launch_status("qk_views parameter gradients");
}

}  // namespace gecko::qk_views::cuda
