// CPU reference for the SwiGLU gate: plain loops in double whatever T is.
#pragma once

#include <cmath>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/swiglu/args.hpp"

namespace gecko::swiglu::cpu {

template <class T>
Status forward(const ForwardArgs<T>& x) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(x, Memory::kHost, p));
  for (std::int64_t i = 0; i < p.rows; ++i)
    for (std::int64_t c = 0; c < p.cols; ++c) {
      const double a = to_double(x.a.data[i * p.a_stride + c]);
      const double s = 1.0 / (1.0 + std::exp(-a));
      x.hidden.data[i * p.hidden_stride + c] = from_double<T>(a * s * to_double(x.b.data[i * p.b_stride + c]));
    }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& x) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(x, Memory::kHost, p));
  for (std::int64_t i = 0; i < p.rows; ++i)
    for (std::int64_t c = 0; c < p.cols; ++c) {
      const double a = to_double(x.a.data[i * p.a_stride + c]);
      const double b = to_double(x.b.data[i * p.b_stride + c]);
      const double g = to_double(x.dhidden.data[i * p.dhidden_stride + c]);
      const double s = 1.0 / (1.0 + std::exp(-a));
      x.da.data[i * p.da_stride + c] = from_double<T>(g * b * s * (1.0 + a * (1.0 - s)));
      x.db.data[i * p.db_stride + c] = from_double<T>(g * a * s);
    }
  return Status::success();
}

}  // namespace gecko::swiglu::cpu
