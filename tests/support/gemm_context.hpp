// The one cuBLASLt context of the GPU test program, shared by every test that needs one.
#pragma once

#include "gecko/core/status.hpp"
#include "gecko/ops/linear/context.hpp"

namespace gecko::test {

// Never destroyed: the process exit releases the handle (no cuBLASLt call after CUDA's teardown).
inline linear::cuda::Context& gemm_context() {
  static linear::cuda::Context* ctx = [] {
    auto* c = new linear::cuda::Context();
    throw_if_error(c->init());
    return c;
  }();
  return *ctx;
}

}  // namespace gecko::test
