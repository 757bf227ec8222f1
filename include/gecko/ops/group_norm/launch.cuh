// Host launchers for the group RMSNorm / LayerNorm CUDA kernels: validation, path choice,
// workspace query. Stream-ordered; never synchronizes or allocates.
#pragma once

#include <cuda_runtime.h>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/device.hpp"
#include "gecko/ops/group_norm/args.hpp"
#include "gecko/ops/group_norm/kernel.cuh"

namespace gecko::group_norm::cuda {

namespace detail {

// How a problem maps onto the fast row kernels (items = 0 means: use the generic path).
struct RowPlan {
  int items = 0;
  int threads = 0;
  int lanes_per_group = 0;
};

template <class T>
RowPlan plan_rows(const Problem& p, std::initializer_list<const void*> pointers,
                  std::initializer_list<std::int64_t> strides) {
  constexpr int VEC = kVec16<T>;
  RowPlan plan;
  if (p.channels % VEC != 0 || p.group_size % VEC != 0) return plan;
  for (const void* ptr : pointers)
    if (ptr && reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) return plan;
  for (std::int64_t s : strides)
    if (s % VEC != 0) return plan;
  const std::int64_t lanes = p.group_size / VEC;
  if (!(lanes <= 32 ? (lanes & (lanes - 1)) == 0 : lanes % 32 == 0)) return plan;
  const std::int64_t words = p.channels / VEC;
  for (int items : {1, 2, 4, 8}) {
    if (words % items != 0) continue;
    const std::int64_t threads = words / items;
    if (threads % 32 != 0 || threads > 1024 || threads % lanes != 0) continue;
    plan.items = items;
    plan.threads = static_cast<int>(threads);
    plan.lanes_per_group = static_cast<int>(lanes);
    return plan;
  }
  return plan;
}

inline kernels::RowParams row_params(const Problem& p, float eps, int lanes) {
  kernels::RowParams r{};
  r.rows = p.rows;
  r.channels = static_cast<int>(p.channels);
  r.groups = static_cast<int>(p.groups);
  r.group_size = static_cast<int>(p.group_size);
  r.lanes_per_group = lanes;
  r.x_stride = p.x_stride;
  r.y_stride = p.y_stride;
  r.dy_stride = p.dy_stride;
  r.dx_stride = p.dx_stride;
  r.dadd_stride = p.dadd_stride;
  r.eps = eps;
  return r;
}

template <class T, bool kLayer>
void launch_forward_rows(int items, int grid, int threads, cudaStream_t s, const kernels::RowParams& rp,
                         const T* x, const T* w, const T* b, T* y) {
  switch (items) {
    case 1: kernels::forward_rows_kernel<T, 1, kLayer><<<grid, threads, 0, s>>>(rp, x, w, b, y); break;
    case 2: kernels::forward_rows_kernel<T, 2, kLayer><<<grid, threads, 0, s>>>(rp, x, w, b, y); break;
    case 4: kernels::forward_rows_kernel<T, 4, kLayer><<<grid, threads, 0, s>>>(rp, x, w, b, y); break;
    default: kernels::forward_rows_kernel<T, 8, kLayer><<<grid, threads, 0, s>>>(rp, x, w, b, y); break;
  }
}

template <class T, bool kLayer>
const void* backward_rows_symbol(int items) {
  switch (items) {
    case 1: return reinterpret_cast<const void*>(&kernels::backward_rows_kernel<T, 1, kLayer>);
    case 2: return reinterpret_cast<const void*>(&kernels::backward_rows_kernel<T, 2, kLayer>);
    case 4: return reinterpret_cast<const void*>(&kernels::backward_rows_kernel<T, 4, kLayer>);
    default: return reinterpret_cast<const void*>(&kernels::backward_rows_kernel<T, 8, kLayer>);
  }
}

template <class T, bool kLayer>
void launch_backward_rows(int items, int grid, int threads, cudaStream_t s, const kernels::RowParams& rp,
                          const T* x, const T* w, const T* dy, T* dx, float* partial) {
  switch (items) {
    case 1: kernels::backward_rows_kernel<T, 1, kLayer><<<grid, threads, 0, s>>>(rp, x, w, dy, dx, partial); break;
    case 2: kernels::backward_rows_kernel<T, 2, kLayer><<<grid, threads, 0, s>>>(rp, x, w, dy, dx, partial); break;
    case 4: kernels::backward_rows_kernel<T, 4, kLayer><<<grid, threads, 0, s>>>(rp, x, w, dy, dx, partial); break;
    default: kernels::backward_rows_kernel<T, 8, kLayer><<<grid, threads, 0, s>>>(rp, x, w, dy, dx, partial); break;
  }
}

// Grid of a persistent row kernel: as many CTAs as fit on the device at once, capped by rows.
inline Status persistent_grid(const Problem& p, const RowPlan& plan, const void* fn, int& grid) {
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  int per_sm = 0;
  GECKO_CUDA_RETURN(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, plan.threads, 0));
  const std::int64_t cap = static_cast<std::int64_t>(dev->sm_count) * (per_sm > 0 ? per_sm : 1);
  grid = static_cast<int>(p.rows < cap ? (p.rows > 0 ? p.rows : 1) : cap);
  return Status::success();
}

template <class T>
Status backward_grid(const Problem& p, const RowPlan& plan, Kind kind, int& grid) {
  const void* fn = kind == Kind::kLayer ? backward_rows_symbol<T, true>(plan.items) : backward_rows_symbol<T, false>(plan.items);
  return persistent_grid(p, plan, fn, grid);
}

template <class T>
RowPlan plan_backward(const BackwardArgs<T>& a, const Problem& p) {
  return plan_rows<T>(p, {a.x.data, a.weight.data, a.dy.data, a.dx.data, a.dx_add.data},
                      {p.x_stride, p.dy_stride, p.dx_stride, p.dadd_stride});  // 0 without dx_add
}

}  // namespace detail

// Bytes of workspace backward() needs for this problem on the current device.
template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = 0;
  if (a.dweight.empty() && a.dbias.empty()) return Status::success();
  const auto plan = detail::plan_backward(a, p);
  if (plan.items) {
    int grid = 0;
    GECKO_RETURN_IF_ERROR(detail::backward_grid<T>(p, plan, a.kind, grid));
    bytes = static_cast<std::size_t>(2) * grid * p.channels * sizeof(float);
  } else {
    bytes = static_cast<std::size_t>(p.rows * p.groups) * sizeof(float2);
  }
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA group norm takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  if (p.rows == 0) return Status::success();
  if (p.rows > 0x7fffffff) return unsupported("group norm: more than 2^31 - 1 rows");
  const auto plan = detail::plan_rows<T>(p, {a.x.data, a.weight.data, a.bias.data, a.y.data}, {p.x_stride, p.y_stride});
  const auto rp = detail::row_params(p, a.eps, plan.lanes_per_group);
  const bool layer = a.kind == Kind::kLayer;
  if (plan.items) {
    const int grid = static_cast<int>(p.rows);
    if (layer)
      detail::launch_forward_rows<T, true>(plan.items, grid, plan.threads, stream, rp, a.x.data, a.weight.data, a.bias.data, a.y.data);
    else
      detail::launch_forward_rows<T, false>(plan.items, grid, plan.threads, stream, rp, a.x.data, a.weight.data, a.bias.data, a.y.data);
  } else {
    const std::int64_t warps = p.rows * p.groups;
    const unsigned blocks = static_cast<unsigned>((warps + 7) / 8);
    if (layer)
      kernels::forward_generic_kernel<T, true><<<blocks, 256, 0, stream>>>(rp, a.x.data, a.weight.data, a.bias.data, a.y.data);
    else
      kernels::forward_generic_kernel<T, false><<<blocks, 256, 0, stream>>>(rp, a.x.data, a.weight.data, a.bias.data, a.y.data);
  }
  return last_launch_status("group_norm forward");
}

template <class T>
Status backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA group norm takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  std::size_t need = 0;
  GECKO_RETURN_IF_ERROR(backward_workspace_size(a, need));
  if (workspace_bytes < need || (need && !workspace))
    return invalid_argument("group norm backward needs " + std::to_string(need) + " bytes of workspace, got " +
                            std::to_string(workspace_bytes));
  if (p.rows > 0x7fffffff) return unsupported("group norm: more than 2^31 - 1 rows");
  const bool layer = a.kind == Kind::kLayer;
  const bool want_params = !a.dweight.empty() || !a.dbias.empty();
  if (p.rows == 0) {
    if (!a.dweight.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dweight.data, 0, p.channels * sizeof(float), stream));
    if (!a.dbias.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dbias.data, 0, p.channels * sizeof(float), stream));
    return Status::success();
  }
  const auto plan = detail::plan_backward(a, p);
  auto rp = detail::row_params(p, a.eps, plan.lanes_per_group);
  rp.dadd = a.dx_add.data;
  const unsigned col_blocks = static_cast<unsigned>((p.channels + 255) / 256);
  if (plan.items) {
    int grid = 0;
    GECKO_RETURN_IF_ERROR(detail::backward_grid<T>(p, plan, a.kind, grid));
    float* partial = want_params ? static_cast<float*>(workspace) : nullptr;
    if (layer)
      detail::launch_backward_rows<T, true>(plan.items, grid, plan.threads, stream, rp, a.x.data, a.weight.data, a.dy.data, a.dx.data, partial);
    else
      detail::launch_backward_rows<T, false>(plan.items, grid, plan.threads, stream, rp, a.x.data, a.weight.data, a.dy.data, a.dx.data, partial);
    GECKO_RETURN_IF_ERROR(last_launch_status("group_norm backward"));
    if (want_params) {
      const int ch = static_cast<int>(p.channels);
      kernels::sum_partials_kernel<<<col_blocks, 256, 0, stream>>>(partial, grid, ch, a.dweight.data);
      kernels::sum_partials_kernel<<<col_blocks, 256, 0, stream>>>(partial + static_cast<std::size_t>(grid) * ch, grid, ch, a.dbias.data);
    }
  } else {
    const std::int64_t warps = p.rows * p.groups;
    const unsigned blocks = static_cast<unsigned>((warps + 7) / 8);
    float2* stats = want_params ? static_cast<float2*>(workspace) : nullptr;
    if (layer)
      kernels::backward_generic_kernel<T, true><<<blocks, 256, 0, stream>>>(rp, a.x.data, a.weight.data, a.dy.data, a.dx.data, stats);
    else
      kernels::backward_generic_kernel<T, false><<<blocks, 256, 0, stream>>>(rp, a.x.data, a.weight.data, a.dy.data, a.dx.data, stats);
    GECKO_RETURN_IF_ERROR(last_launch_status("group_norm backward"));
    if (want_params)
      kernels::param_grad_columns_kernel<T><<<col_blocks, 256, 0, stream>>>(rp, a.x.data, a.dy.data, stats, a.dweight.data, a.dbias.data);
  }
  return last_launch_status("group_norm parameter gradients");
}

}  // namespace gecko::group_norm::cuda
