// TensorView: a non-owning view of a strided tensor (pointer, shape, int64 strides in elements,
// and where the memory lives). Every gecko entry point takes its tensors as views and checks
// them against the problem before touching memory.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "gecko/core/config.hpp"
#include "gecko/core/status.hpp"

namespace gecko {

enum class Memory : std::uint8_t { kHost, kDevice };

inline const char* memory_name(Memory m) { return m == Memory::kHost ? "host" : "device"; }

inline constexpr int kMaxRank = 6;

template <class T>
struct TensorView {
  T* data = nullptr;
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  std::array<std::int64_t, kMaxRank> strides{};
  Memory memory = Memory::kHost;

  // A dense row-major view.
  static TensorView contiguous(T* p, std::initializer_list<std::int64_t> dims, Memory where) {
    TensorView v;
    v.data = p;
    v.memory = where;
    v.rank = static_cast<int>(dims.size());
    int i = 0;
    for (std::int64_t d : dims) v.shape[i++] = d;
    std::int64_t s = 1;
    for (int k = v.rank - 1; k >= 0; --k) {
      v.strides[k] = s;
      s *= v.shape[k];
    }
    return v;
  }
  static TensorView host(T* p, std::initializer_list<std::int64_t> dims) { return contiguous(p, dims, Memory::kHost); }
  static TensorView device(T* p, std::initializer_list<std::int64_t> dims) { return contiguous(p, dims, Memory::kDevice); }

  // A view with explicit strides (in elements).
  static TensorView strided(T* p, std::initializer_list<std::int64_t> dims,
                            std::initializer_list<std::int64_t> elem_strides, Memory where) {
    TensorView v;
    v.data = p;
    v.memory = where;
    v.rank = static_cast<int>(dims.size());
    int i = 0;
    for (std::int64_t d : dims) v.shape[i++] = d;
    i = 0;
    for (std::int64_t s : elem_strides) v.strides[i++] = s;
    return v;
  }

  bool empty() const { return data == nullptr; }
  std::int64_t size(int i) const { return shape[i < 0 ? i + rank : i]; }
  std::int64_t stride(int i) const { return strides[i < 0 ? i + rank : i]; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    std::int64_t s = 1;
    for (int k = rank - 1; k >= 0; --k) {
      if (shape[k] != 1 && strides[k] != s) return false;
      s *= shape[k];
    }
    return true;
  }

  // Host-side element access by multi-index (no bounds check; validate first).
  template <class... I>
  T& operator()(I... idx) const {
    const std::int64_t ix[] = {static_cast<std::int64_t>(idx)...};
    std::int64_t off = 0;
    for (int k = 0; k < static_cast<int>(sizeof...(I)); ++k) off += ix[k] * strides[k];
    return data[off];
  }

  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator TensorView<const U>() const {  // NOLINT: views convert to read-only implicitly
    TensorView<const U> v;
    v.data = data;
    v.rank = rank;
    v.shape = shape;
    v.strides = strides;
    v.memory = memory;
    return v;
  }

  std::string shape_string() const {
    std::string s = "[";
    for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// ---- argument checks shared by every op's validate() ----------------------------------------

// Checks rank and each extent; an expected extent of -1 accepts any size.
template <class T>
Status check_shape(const TensorView<T>& t, const char* name, std::initializer_list<std::int64_t> expected) {
  std::string want = "[";
  int i = 0;
  for (std::int64_t e : expected) want += (i++ ? ", " : "") + (e < 0 ? std::string("*") : std::to_string(e));
  want += "]";
  if (t.empty()) return invalid_argument(std::string(name) + " is missing (null data), expected shape " + want);
  bool match = t.rank == static_cast<int>(expected.size());
  i = 0;
  for (std::int64_t e : expected) {
    if (!match) break;
    if (e >= 0 && t.shape[i] != e) match = false;
    ++i;
  }
  if (!match) return invalid_argument(std::string(name) + " has shape " + t.shape_string() + ", expected " + want);
  return Status::success();
}

template <class T>
Status check_memory(const TensorView<T>& t, const char* name, Memory where) {
  if (!t.empty() && t.memory != where)
    return invalid_argument(std::string(name) + " lives in " + memory_name(t.memory) + " memory, expected " +
                            memory_name(where) + " memory");
  return Status::success();
}

template <class T>
Status check_contiguous(const TensorView<T>& t, const char* name) {
  if (!t.empty() && !t.is_contiguous())
    return invalid_argument(std::string(name) + " must be contiguous (row-major, dense)");
  return Status::success();
}

// The innermost dimension must be dense (stride 1); outer strides are free.
template <class T>
Status check_inner_contiguous(const TensorView<T>& t, const char* name) {
  if (!t.empty() && t.rank > 0 && t.shape[t.rank - 1] > 1 && t.strides[t.rank - 1] != 1)
    return invalid_argument(std::string(name) + " must have unit stride in its last dimension, got stride " +
                            std::to_string(t.strides[t.rank - 1]));
  return Status::success();
}

template <class T>
Status check_aligned(const TensorView<T>& t, const char* name, std::size_t bytes) {
  if (!t.empty() && reinterpret_cast<std::uintptr_t>(t.data) % bytes != 0)
    return invalid_argument(std::string(name) + " must be aligned to " + std::to_string(bytes) + " bytes");
  return Status::success();
}

// For a tensor [d0, ..., dk-1, C] whose leading dimensions collapse into rows with one row
// stride: returns true and writes rows and row_stride.
template <class T>
bool collapse_rows(const TensorView<T>& t, std::int64_t& rows, std::int64_t& row_stride) {
  if (t.rank < 1) return false;
  rows = 1;
  for (int i = 0; i + 1 < t.rank; ++i) rows *= t.shape[i];
  if (t.rank == 1) {
    row_stride = t.shape[0];
    return true;
  }
  row_stride = t.strides[t.rank - 2];
  for (int i = 0; i + 2 < t.rank; ++i)
    if (t.shape[i] != 1 && t.strides[i] != t.strides[i + 1] * t.shape[i + 1]) return false;
  return true;
}

}  // namespace gecko
