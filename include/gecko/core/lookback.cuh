// Chained scans across CTAs with decoupled look-back, made deterministic.
//
// A sequence (one "chain", e.g. one batch row and channel slab over time) is cut into tiles
// processed by different CTAs. Tile i publishes its aggregate (how it maps the state at its start
// to the state at its end) as soon as it has read its input, then looks back for the nearest
// predecessor k that has published its inclusive state, and applies the aggregates k+1 .. i-1 to
// that state in forward order. Because every inclusive state is the result of the same
// left-to-right sequence of state updates, the result is bitwise identical whichever k a tile
// happens to find: the speed of look-back without its usual run-to-run rounding differences.
//
// Tiles must be started in chain order (tickets from an atomic counter), so that a predecessor
// is always resident or finished and the spin cannot deadlock. Flags and the ticket counter live
// in caller workspace that is zeroed before each launch.
#pragma once

#include <cuda/atomic>

namespace gecko::lookback {

enum : unsigned { kEmpty = 0, kAggregate = 1, kInclusive = 2 };

__device__ __forceinline__ unsigned load_flag(unsigned* flag) {
  return cuda::atomic_ref<unsigned, cuda::thread_scope_device>(*flag).load(cuda::memory_order_acquire);
}

__device__ __forceinline__ void store_flag(unsigned* flag, unsigned value) {
  cuda::atomic_ref<unsigned, cuda::thread_scope_device>(*flag).store(value, cuda::memory_order_release);
}

// A ticket in launch order: the i-th CTA to start gets i. Call from one thread.
__device__ __forceinline__ unsigned take_ticket(unsigned* counter) { return atomicAdd(counter, 1u); }

// Called by a whole warp, 32 flags per round trip to L2: the nearest k < position with
// kInclusive such that every tile between k and position has published at least its aggregate.
// Spins while a nearer tile has published nothing. Tile 0 of every chain publishes its inclusive
// state without looking back, so the search always ends.
__device__ __forceinline__ int warp_find_inclusive(unsigned* flags, int stride, int position) {
  const int lane = threadIdx.x & 31;
  int hi = position - 1;
  while (true) {
    const int idx = hi - lane;
    const unsigned f = idx >= 0 ? load_flag(flags + static_cast<long long>(idx) * stride) : kInclusive;
    const unsigned incl = __ballot_sync(0xffffffffu, f == kInclusive);
    const unsigned empty = __ballot_sync(0xffffffffu, f == kEmpty);
    if (incl) {
      const int first = __ffs(incl) - 1;  // the nearest inclusive state
      if ((empty & ((1u << first) - 1u)) == 0u) return hi - first;
    } else if (!empty) {
      hi -= 32;
      continue;
    }
    __nanosleep(32);
  }
}

// The state entering tile `position` of a chain: found by one warp, then the aggregates between
// the inclusive state found and this tile are staged in shared memory (`window` holds
// kWindow * width of them) and applied in order by threads 0 .. width-1, one lane of the chain
// each (e.g. one group). apply(state, aggregate) -> state. All threads of the CTA must call it;
// threads < width get the state, the others get an unspecified value. Aggregates and states are
// read with lookback_load(const X*), found by argument-dependent lookup next to their types; it
// must read through L2 (__ldcg), since they were written by other SMs.
template <int kWindow, class Agg, class State, class Apply>
__device__ __forceinline__ State chain_prefix(unsigned* flags, int chains, int chain, int position, const Agg* aggs,
                                             const State* incls, int width, Agg* window, int* found, Apply apply) {
  if (threadIdx.x < 32) {
    const int k = warp_find_inclusive(flags + chain, chains, position);
    if (threadIdx.x == 0) *found = k;
  }
  __syncthreads();
  const int k = *found;
  State st{};
  if (threadIdx.x < width) st = lookback_load(incls + (static_cast<long long>(k) * chains + chain) * width + threadIdx.x);
  for (int start = k + 1; start < position; start += kWindow) {
    const int count = min(kWindow, position - start);
    __syncthreads();  // the previous window is consumed
    for (int i = threadIdx.x; i < count * width; i += blockDim.x) {
      const int j = i / width, lane = i - j * width;
      window[i] = lookback_load(aggs + (static_cast<long long>(start + j) * chains + chain) * width + lane);
    }
    __syncthreads();
    if (threadIdx.x < width)
      for (int j = 0; j < count; ++j) st = apply(st, window[j * width + threadIdx.x]);
  }
  return st;
}

}  // namespace gecko::lookback
