// The Linear and residual steps the GPU layers compose (block.cuh, feedforward.cuh): each runs
// one op with its scratch carved from the workspace arena, or only measures it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gecko/core/elementwise.cuh"
#include "gecko/layers/cuda/arena.hpp"
#include "gecko/layers/cuda/stage.cuh"
#include "gecko/ops/linear/launch.cuh"

namespace gecko::layers::cuda {

namespace detail {

struct AddOp {
  __device__ void operator()(const float (&in)[2], float (&out)[1]) const { out[0] = in[0] + in[1]; }
};

// out = a + b over rows x cols (dense), in T.
template <class T>
Status add(Arena& ws, T* out, const T* a, const T* b, std::int64_t rows, std::int64_t cols, cudaStream_t st) {
  return stage(ws, [&] {
    elementwise::Problem<T, 2, 1> p;
    p.rows = rows;
    p.cols = cols;
    p.in[0] = a;
    p.in[1] = b;
    p.in_stride[0] = p.in_stride[1] = cols;
    p.out[0] = out;
    p.out_stride[0] = cols;
    return elementwise::map(p, AddOp{}, st, "residual add");
  });
}

// y = ep(x W^T + bias) [+ residual]; residual may be y itself.
template <class T>
Status linear_forward(linear::cuda::Context& ctx, Arena& ws, linear::Epilogue ep, const T* x, std::int64_t rows,
                      std::int64_t in, const TensorView<const T>& w, const TensorView<const T>& bias, T* y,
                      std::int64_t out, T* pre, cudaStream_t st, const T* residual = nullptr) {
  linear::ForwardArgs<T> a;
  a.epilogue = ep;
  a.x = TensorView<const T>::device(x, {rows, in});
  a.weight = w;
  if (linear::has_bias(ep)) a.bias = bias;
  a.y = TensorView<T>::device(y, {rows, out});
  if (pre) a.pre = TensorView<T>::device(pre, {rows, out});
  if (residual) a.residual = TensorView<const T>::device(residual, {rows, out});
  return stage(
      ws, [&](std::size_t& b) { return linear::cuda::forward_workspace_size(ctx, a, b); },
      [&](void* p, std::size_t b) { return linear::cuda::forward(ctx, a, p, b, st); });
}

// dx (= or +=) dpre W ; dW = dpre^T x ; db = colsum(dpre).
template <class T>
Status linear_backward(linear::cuda::Context& ctx, Arena& ws, linear::Epilogue ep, const T* x, std::int64_t rows,
                       std::int64_t in, const TensorView<const T>& w, const T* pre, const T* dy, std::int64_t out,
                       T* dx, bool accumulate_dx, const TensorView<float>& dw, const TensorView<float>& db,
                       cudaStream_t st, T* dpre = nullptr) {
  linear::BackwardArgs<T> a;
  a.epilogue = ep;
  a.x = TensorView<const T>::device(x, {rows, in});
  a.weight = w;
  if (pre) a.pre = TensorView<const T>::device(pre, {rows, out});
  a.dy = TensorView<const T>::device(dy, {rows, out});
  if (dx) a.dx = TensorView<T>::device(dx, {rows, in});
  a.accumulate_dx = accumulate_dx;
  a.dweight = dw;
  if (linear::has_bias(ep)) a.dbias = db;
  if (dpre) a.dpre = TensorView<T>::device(dpre, {rows, out});  // may be dy itself (in place)
  return stage(
      ws, [&](std::size_t& b) { return linear::cuda::backward_workspace_size(ctx, a, b); },
      [&](void* p, std::size_t b) { return linear::cuda::backward(ctx, a, p, b, st); });
}

}  // namespace detail

}  // namespace gecko::layers::cuda
