// Row matrices: a tensor [d0, ..., dk-1, C] whose leading dimensions collapse into `rows` rows
// of C elements, unit stride inside a row and one row stride between rows. Most element-wise ops
// and the Linear layer see their activations this way, so a [B, L, 4, Z] buffer's slices or a
// padded [rows, pitch] buffer can be passed as they are.
#pragma once

#include <cstdint>
#include <string>

#include "gecko/core/tensor_view.hpp"

namespace gecko {

struct RowLayout {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t stride = 0;  // elements between rows (== cols when rows <= 1)
};

// Reads the row layout of a present tensor (any number of rows).
template <class T>
Status row_layout(const TensorView<T>& t, const char* name, Memory where, RowLayout& out) {
  if (t.empty()) return invalid_argument(std::string(name) + " is missing (null data)");
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  if (t.rank < 1) return invalid_argument(std::string(name) + " must have at least one dimension");
  GECKO_RETURN_IF_ERROR(check_inner_contiguous(t, name));
  out.cols = t.size(-1);
  if (!collapse_rows(t, out.rows, out.stride))
    return invalid_argument(std::string(name) + " has shape " + t.shape_string() +
                            " whose leading dimensions do not collapse into rows with one row stride");
  if (out.rows <= 1) out.stride = out.cols;
  if (out.rows > 1 && out.stride < out.cols)
    return invalid_argument(std::string(name) + " row stride " + std::to_string(out.stride) + " overlaps rows of " +
                            std::to_string(out.cols) + " elements");
  return Status::success();
}

// Checks that t is a row matrix of exactly rows x cols and returns its row stride.
template <class T>
Status check_row_matrix(const TensorView<T>& t, const char* name, std::int64_t rows, std::int64_t cols, Memory where,
                        std::int64_t& stride) {
  RowLayout l;
  GECKO_RETURN_IF_ERROR(row_layout(t, name, where, l));
  if (l.cols != cols)
    return invalid_argument(std::string(name) + " has shape " + t.shape_string() + ", expected last dimension " +
                            std::to_string(cols));
  if (l.rows != rows)
    return invalid_argument(std::string(name) + " has shape " + t.shape_string() + " (" + std::to_string(l.rows) +
                            " rows), expected " + std::to_string(rows) + " rows");
  stride = l.stride;
  return Status::success();
}

}  // namespace gecko
