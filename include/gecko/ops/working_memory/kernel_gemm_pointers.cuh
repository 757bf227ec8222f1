// The pointer arrays of a cuBLASLt pointer-array batch (launch_cublas.cuh): one GEMM per (batch row
// b, head h, chunk c). The heads of a token-major tensor ([B, L, H, d]) are d elements apart and
// its chunks C * H * d apart, so no single stride walks (h, c) and a strided batch covers only one
// head: at the 7B shapes that meant 112- to 132-CTA launches, one per head, and 64 x 64-tile
// launches of 9.4 us for the dk x dk products. A pointer array runs all heads in one launch.
#pragma once

#include <cstdint>

#include "gecko/ops/working_memory/kernel_common.cuh"

namespace gecko::working_memory::kernels {

// A matrix operand by bytes: (b, h, c) at p + b * sb + h * sh + c * sc.
struct BytePlacement {
  const char* p = nullptr;
  std::int64_t sb = 0, sh = 0, sc = 0;
};

struct PointerTable {
  BytePlacement m[3];  // A, B, D of the GEMM as cuBLASLt sees it
  int H = 0, chunks = 0, total = 0;  // entries (b * H + h) * chunks + k, k < chunks; total = B * H * chunks
  const void** out = nullptr;        // [3][total]
};

template <int kUnused = 0>  // a template: header-defined kernels must not clash at link time
__global__ void __launch_bounds__(kThreads) gemm_pointer_table_kernel(const __grid_constant__ PointerTable t) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= t.total) return;
  const int k = i % t.chunks, bh = i / t.chunks, b = bh / t.H, h = bh % t.H;
#pragma unroll
  for (int w = 0; w < 3; ++w) {
    const BytePlacement& m = t.m[w];
    t.out[w * t.total + i] = m.p + b * m.sb + h * m.sh + k * m.sc;
  }
}

}  // namespace gecko::working_memory::kernels
