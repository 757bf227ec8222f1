// Plain CPU loops in double for the pieces of the Gecko layers that are not ops of their own: the
// Linear layers (y = x W^T + b, W stored out x in as in PyTorch) and SiLU. The layers' CPU
// reference composes these with the ops' cpu:: references.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::layers::dense {

// y[r, o] = sum_i x[r, i] W[o, i] + b[o]   (b may be null; y is overwritten)
inline void linear(const double* x, std::int64_t rows, std::int64_t in, const double* W, const double* b,
                   std::int64_t out, double* y) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* xr = x + r * in;
    for (std::int64_t o = 0; o < out; ++o) {
      const double* w = W + o * in;
      double acc = b ? b[o] : 0.0;
      for (std::int64_t i = 0; i < in; ++i) acc += xr[i] * w[i];
      y[r * out + o] = acc;
    }
  }
}

// The three gradients of linear(): dx += dy W (accumulated, because the layers feed one input into
// several projections; null = not wanted), dW = dy^T x and db = sum_r dy (overwritten; db may be
// null for a Linear without bias).
inline void linear_backward(const double* x, std::int64_t rows, std::int64_t in, const double* W, std::int64_t out,
                            const double* dy, double* dx, double* dW, double* db) {
  for (std::int64_t o = 0; o < out * in; ++o) dW[o] = 0.0;
  if (db)
    for (std::int64_t o = 0; o < out; ++o) db[o] = 0.0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const double* xr = x + r * in;
    const double* g = dy + r * out;
    double* dxr = dx ? dx + r * in : nullptr;
    for (std::int64_t o = 0; o < out; ++o) {
      const double go = g[o];
      if (go == 0.0) continue;
      double* dw = dW + o * in;
      const double* w = W + o * in;
      for (std::int64_t i = 0; i < in; ++i) dw[i] += go * xr[i];
      if (dxr)
        for (std::int64_t i = 0; i < in; ++i) dxr[i] += go * w[i];
      if (db) db[o] += go;
    }
  }
}

inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
inline double silu(double v) { return v * sigmoid(v); }
// d silu / dv = s (1 + v (1 - s)), s = sigmoid(v)
inline double silu_grad(double v) {
  const double s = sigmoid(v);
  return s * (1.0 + v * (1.0 - s));
}

inline void add_into(std::vector<double>& dst, const std::vector<double>& src) {
  for (std::size_t i = 0; i < dst.size(); ++i) dst[i] += src[i];
}

// A [B, L, D] view (outer strides free) to and from a dense double buffer.
template <class T>
std::vector<double> load(const TensorView<const T>& src) {
  const std::int64_t B = src.size(0), L = src.size(1), D = src.size(2);
  std::vector<double> v(B * L * D);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t l = 0; l < L; ++l) {
      const T* row = &src(b, l, 0);
      for (std::int64_t d = 0; d < D; ++d) v[(b * L + l) * D + d] = to_double(row[d]);
    }
  return v;
}

template <class T>
void store(const std::vector<double>& src, const TensorView<T>& dst) {
  const std::int64_t B = dst.size(0), L = dst.size(1), D = dst.size(2);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t l = 0; l < L; ++l) {
      T* row = &dst(b, l, 0);
      for (std::int64_t d = 0; d < D; ++d) row[d] = from_double<T>(src[(b * L + l) * D + d]);
    }
}

}  // namespace gecko::layers::dense
