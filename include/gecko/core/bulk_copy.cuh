// Bulk asynchronous loads (sm_90, the tensor memory accelerator's 1-D form) and the shared-memory
// barriers that count their bytes. One thread moves a whole contiguous row from global to shared
// memory with one instruction, so a kernel spends no per-element instructions or registers on
// addresses, and the copy engine keeps the row in flight while the threads compute.
//
// Loads complete on an mbarrier (arrive_expect_tx by the issuing thread, then every waiting thread
// polls the phase parity).
// Requirements (PTX ISA, cp.async.bulk): 16-byte aligned addresses, sizes a multiple of 16.
// Compiled for older architectures these helpers trap: callers select them only on sm_90+.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GECKO_BULK_COPY 1
#endif

namespace gecko::bulk {

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Makes barrier initialisation visible to the other threads and to the copy engine.
__device__ __forceinline__ void init_barrier(std::uint64_t* bar, unsigned arrivals) {
#ifdef GECKO_BULK_COPY
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}

// The calling thread's arrival, announcing `bytes` of copies that will complete on the barrier.
__device__ __forceinline__ void arrive_expect_bytes(std::uint64_t* bar, unsigned bytes) {
#ifdef GECKO_BULK_COPY
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}

// Blocks until the barrier's phase with parity `parity` has completed.
__device__ __forceinline__ void wait_parity(std::uint64_t* bar, unsigned parity) {
#ifdef GECKO_BULK_COPY
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  }
#else
  __trap();
#endif
}

// global -> shared, `bytes` contiguous bytes, completing on `bar`.
__device__ __forceinline__ void load(void* smem_dst, const void* gmem_src, unsigned bytes, std::uint64_t* bar) {
#ifdef GECKO_BULK_COPY
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          smem_addr(smem_dst)),
      "l"(gmem_src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
#else
  __trap();
#endif
}

}  // namespace gecko::bulk
