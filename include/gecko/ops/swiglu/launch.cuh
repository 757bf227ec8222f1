// Host launchers of the SwiGLU gate: one element-wise pass each way (16-byte words, see
// core/elementwise.cuh). Stream-ordered; never synchronizes or allocates; no workspace.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "gecko/core/elementwise.cuh"
#include "gecko/ops/swiglu/args.hpp"
#include "gecko/ops/swiglu/kernel.cuh"

namespace gecko::swiglu::cuda {

template <class T>
Status forward(const ForwardArgs<T>& x, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA swiglu takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(x, Memory::kDevice, p));
  elementwise::Problem<T, 2, 1> e;
  e.rows = p.rows;
  e.cols = p.cols;
  e.in[0] = x.a.data;
  e.in_stride[0] = p.a_stride;
  e.in[1] = x.b.data;
  e.in_stride[1] = p.b_stride;
  e.out[0] = x.hidden.data;
  e.out_stride[0] = p.hidden_stride;
  return elementwise::map(e, kernels::Forward{}, stream, "swiglu forward");
}

template <class T>
Status backward(const BackwardArgs<T>& x, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA swiglu takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(x, Memory::kDevice, p));
  elementwise::Problem<T, 3, 2> e;
  e.rows = p.rows;
  e.cols = p.cols;
  e.in[0] = x.dhidden.data;
  e.in_stride[0] = p.dhidden_stride;
  e.in[1] = x.a.data;
  e.in_stride[1] = p.a_stride;
  e.in[2] = x.b.data;
  e.in_stride[2] = p.b_stride;
  e.out[0] = x.da.data;
  e.out_stride[0] = p.da_stride;
  e.out[1] = x.db.data;
  e.out_stride[1] = p.db_stride;
  return elementwise::map(e, kernels::Backward{}, stream, "swiglu backward");
}

}  // namespace gecko::swiglu::cuda
