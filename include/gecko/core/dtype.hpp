// Element types: a runtime tag (DType) for files and messages, and compile-time traits that
// convert float, half and bfloat16 on host and device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gecko/core/config.hpp"

namespace gecko {

enum class DType : std::uint8_t { kF64, kF32, kF16, kBF16, kI64, kI32, kU8, kBool };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kU8: case DType::kBool: return 1;
  }
  return 0;
}

inline bool dtype_is_floating(DType t) {
  return t == DType::kF64 || t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

// dtype_traits<T>: the DType tag of T and lossless-as-possible conversions through float.
template <class T>
struct dtype_traits;

template <>
struct dtype_traits<double> {
  static constexpr DType value = DType::kF64;
  static GECKO_HOST_DEVICE float to_float(double v) { return static_cast<float>(v); }
  static GECKO_HOST_DEVICE double from_float(float v) { return v; }
  static GECKO_HOST_DEVICE double to_double(double v) { return v; }
  static GECKO_HOST_DEVICE double from_double(double v) { return v; }
};

template <>
struct dtype_traits<float> {
  static constexpr DType value = DType::kF32;
  static GECKO_HOST_DEVICE float to_float(float v) { return v; }
  static GECKO_HOST_DEVICE float from_float(float v) { return v; }
  static GECKO_HOST_DEVICE double to_double(float v) { return v; }
  static GECKO_HOST_DEVICE float from_double(double v) { return static_cast<float>(v); }
};

template <>
struct dtype_traits<__half> {
  static constexpr DType value = DType::kF16;
  static GECKO_HOST_DEVICE float to_float(__half v) { return __half2float(v); }
  static GECKO_HOST_DEVICE __half from_float(float v) { return __float2half_rn(v); }
  static GECKO_HOST_DEVICE double to_double(__half v) { return __half2float(v); }
  static GECKO_HOST_DEVICE __half from_double(double v) { return __double2half(v); }
};

template <>
struct dtype_traits<__nv_bfloat16> {
  static constexpr DType value = DType::kBF16;
  static GECKO_HOST_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static GECKO_HOST_DEVICE __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static GECKO_HOST_DEVICE double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
  static GECKO_HOST_DEVICE __nv_bfloat16 from_double(double v) { return __double2bfloat16(v); }
};

template <>
struct dtype_traits<std::int64_t> {
  static constexpr DType value = DType::kI64;
};
template <>
struct dtype_traits<std::int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct dtype_traits<std::uint8_t> {
  static constexpr DType value = DType::kU8;
};
template <>
struct dtype_traits<bool> {
  static constexpr DType value = DType::kBool;
};

template <class T>
GECKO_HOST_DEVICE inline float to_float(T v) { return dtype_traits<T>::to_float(v); }
template <class T>
GECKO_HOST_DEVICE inline T from_float(float v) { return dtype_traits<T>::from_float(v); }
template <class T>
GECKO_HOST_DEVICE inline double to_double(T v) { return dtype_traits<T>::to_double(v); }
template <class T>
GECKO_HOST_DEVICE inline T from_double(double v) { return dtype_traits<T>::from_double(v); }

template <class T>
inline constexpr DType dtype_of = dtype_traits<T>::value;

// The type statistics and parameter gradients are kept in: fp32, or fp64 for double tensors
// (the CPU reference's finite-difference checks run entirely in double).
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace gecko
