// The warp-level tensor-core product shared by the kernels that use mma.sync directly (sliding
// chunk attention, working memory, the complex EMA's chunked kernels), and a transposed ldmatrix.
//
// m16n8k16 fragments (PTX ISA "Matrix fragments for mma.m16n8k16"), lane l, g = l / 4, m = l % 4;
// a 32-bit register holds two 16-bit elements, the lower-indexed one in its low half:
//   A (16 x 16, row-major): a0 = (row g, cols 2m, 2m+1), a1 = (row g+8, same),
//                           a2 = (row g, cols 2m+8, 2m+9), a3 = (row g+8, cols 2m+8, 2m+9)
//   B (16 x 8, "col"):      b0 = (rows 2m, 2m+1, col g), b1 = (rows 2m+8, 2m+9, col g)
//   C, D (16 x 8, fp32):    d0, d1 = (row g, cols 2m, 2m+1), d2, d3 = (row g+8, same)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace gecko {

// d += a b for one m16n8k16 tile with fp32 accumulation; E is the 16-bit operand type.
template <class E>
__device__ __forceinline__ void mma16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                         std::uint32_t b1) {
  static_assert(std::is_same_v<E, __half> || std::is_same_v<E, __nv_bfloat16>, "mma16816 takes half or bfloat16");
  if constexpr (std::is_same_v<E, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Four 8x8 b16 matrices from shared memory, transposed (ldmatrix .x4 .trans): lane l gives the
// address of one 16-byte row (lanes 8q .. 8q + 7 the rows of matrix q, which lands in r[q]).
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem_row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

}  // namespace gecko
