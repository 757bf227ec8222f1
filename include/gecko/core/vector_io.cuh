// 16-byte vector loads and stores that convert between storage type T and fp32 registers.
// Memory-bound kernels move whole 128-bit words per thread to reach full DRAM bandwidth.
#pragma once

#include "gecko/core/dtype.hpp"

namespace gecko {

template <class T>
inline constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte word

template <class T, int N>
struct alignas(sizeof(T) * N) Packed {
  T v[N];
};

template <class T, int N>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[N]) {
  const Packed<T, N> pk = *reinterpret_cast<const Packed<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(pk.v[i]);
}

template <class T, int N>
__device__ __forceinline__ void store_from_float(T* p, const float (&in)[N]) {
  Packed<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Packed<T, N>*>(p) = pk;
}

}  // namespace gecko
