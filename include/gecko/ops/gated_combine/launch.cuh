// Host launchers of the MEGA gated combination: one element-wise pass each way (16-byte words);
// the backward optionally sums dr per column in the same pass (deterministic partials in the
// workspace, see core/elementwise.cuh). Stream-ordered; never synchronizes or allocates.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "gecko/core/elementwise.cuh"
#include "gecko/ops/gated_combine/args.hpp"
#include "gecko/ops/gated_combine/kernel.cuh"

namespace gecko::gated_combine::cuda {

template <class T>
Status forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA gated_combine takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  const char* what = "gated_combine forward";
  if (!a.awm.empty()) {
    elementwise::Problem<T, 3, 1> e;
    e.rows = p.rows;
    e.cols = p.cols;
    e.in[0] = a.sca.data;
    e.in_stride[0] = p.sca_stride;
    e.in[1] = a.r.data;
    e.in_stride[1] = p.r_stride;
    e.in[2] = a.awm.data;
    e.in_stride[2] = p.awm_stride;
    e.out[0] = a.attn.data;
    e.out_stride[0] = p.attn_stride;
    return a.silu_r ? elementwise::map(e, kernels::Forward<true, true>{}, stream, what)
                    : elementwise::map(e, kernels::Forward<false, true>{}, stream, what);
  }
  elementwise::Problem<T, 2, 1> e;
  e.rows = p.rows;
  e.cols = p.cols;
  e.in[0] = a.sca.data;
  e.in_stride[0] = p.sca_stride;
  e.in[1] = a.r.data;
  e.in_stride[1] = p.r_stride;
  e.out[0] = a.attn.data;
  e.out_stride[0] = p.attn_stride;
  return a.silu_r ? elementwise::map(e, kernels::Forward<true, false>{}, stream, what)
                  : elementwise::map(e, kernels::Forward<false, false>{}, stream, what);
}

// Bytes of workspace backward() needs: the dr_colsum partials (0 without dr_colsum).
template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = 0;
  if (a.dr_colsum.empty()) return Status::success();
  return elementwise::colsum_workspace_size(p.rows, p.cols, bytes);
}

template <class T>
Status backward(const BackwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA gated_combine takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  elementwise::Problem<T, 3, 3> e;
  e.rows = p.rows;
  e.cols = p.cols;
  e.in[0] = a.dattn.data;
  e.in_stride[0] = p.dattn_stride;
  e.in[1] = a.sca.data;
  e.in_stride[1] = p.sca_stride;
  e.in[2] = a.r.data;
  e.in_stride[2] = p.r_stride;
  e.out[0] = a.dsca.data;
  e.out_stride[0] = p.dsca_stride;
  e.out[1] = a.dr.data;
  e.out_stride[1] = p.dr_stride;
  e.out[2] = a.dawm.data;  // null: not stored
  e.out_stride[2] = a.dawm.empty() ? p.cols : p.dawm_stride;
  const char* what = "gated_combine backward";
  if (a.dr_colsum.empty())
    return a.silu_r ? elementwise::map(e, kernels::Backward<true>{}, stream, what)
                    : elementwise::map(e, kernels::Backward<false>{}, stream, what);
  return a.silu_r ? elementwise::map_colsum<1>(e, kernels::Backward<true>{}, a.dr_colsum.data, a.accumulate_dr_colsum,
                                               workspace, workspace_bytes, stream, what)
                  : elementwise::map_colsum<1>(e, kernels::Backward<false>{}, a.dr_colsum.data, a.accumulate_dr_colsum,
                                               workspace, workspace_bytes, stream, what);
}

}  // namespace gecko::gated_combine::cuda
