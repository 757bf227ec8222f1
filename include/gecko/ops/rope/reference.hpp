// CPU reference for rotary position embedding: plain loops in double. The oracle for the CUDA
// kernels, and the rotation that sliding chunk attention applies to q and k inside the op.
#pragma once

#include <cmath>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/rope/args.hpp"

namespace gecko::rope::cpu {

// theta_0 .. theta_{d/2-1} for one head width.
inline std::vector<float> inv_freqs(double base, std::int64_t d) {
  std::vector<float> theta(static_cast<std::size_t>(d / 2));
  for (std::int64_t i = 0; i < d / 2; ++i) theta[static_cast<std::size_t>(i)] = inv_freq(base, d, i);
  return theta;
}

// Rotates one head vector x[0..d) in place by +phi (sign = +1, forward) or -phi (sign = -1,
// backward) at absolute position pos. cos/sin are taken of the double angle, so the only error
// left is double rounding.
inline void rotate(double* x, std::int64_t d, std::int64_t pos, const std::vector<float>& theta, int sign) {
  for (std::int64_t i = 0; i < d / 2; ++i) {
    const double phi = angle(pos, theta[static_cast<std::size_t>(i)]);
    const double c = std::cos(phi), s = sign * std::sin(phi);
    const double x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * c;
  }
}

namespace detail {

// Shared by forward (sign +1) and backward (sign -1): the gradient of a rotation is the inverse
// rotation, so both directions are one loop.
template <class T>
void apply(const RopeConfig& c, const Problem& p, const TensorView<const T>& in, const TensorView<T>& out, int sign) {
  const std::vector<float> theta = c.enabled() ? inv_freqs(c.base, p.dim) : std::vector<float>{};
  std::vector<double> row(static_cast<std::size_t>(p.dim));
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t l = 0; l < p.length; ++l)
      for (std::int64_t h = 0; h < p.heads; ++h) {
        const T* src = &in(b, l, h, 0);
        T* dst = &out(b, l, h, 0);
        for (std::int64_t i = 0; i < p.dim; ++i) row[i] = to_double(src[i]);
        if (h < p.n_rope_heads) rotate(row.data(), p.dim, c.start + l, theta, sign);
        for (std::int64_t i = 0; i < p.dim; ++i) dst[i] = from_double<T>(row[i]);
      }
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  detail::apply(a.config, p, a.x, a.y, +1);
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  detail::apply(a.config, p, a.dy, a.dx, -1);
  return Status::success();
}

}  // namespace gecko::rope::cpu
