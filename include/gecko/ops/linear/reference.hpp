// CPU reference for the Linear layer with fused epilogues: plain loops in double whatever T is.
// The oracle for the cuBLASLt path. Unlike the GPU, dpre is never rounded to T here.
#pragma once

#include <cmath>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/linear/args.hpp"

namespace gecko::linear::cpu {

namespace detail {

inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
inline double silu(double v) { return v * sigmoid(v); }
inline double silu_grad(double v) {
  const double s = sigmoid(v);
  return s * (1.0 + v * (1.0 - s));
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const bool silu = has_silu(a.epilogue);
  for (std::int64_t m = 0; m < p.M; ++m) {
    const T* x = a.x.data + m * p.ldx;
    for (std::int64_t n = 0; n < p.N; ++n) {
      const T* w = a.weight.data + n * p.ldw;
      double acc = has_bias(a.epilogue) ? to_double(a.bias.data[n]) : 0.0;
      for (std::int64_t k = 0; k < p.K; ++k) acc += to_double(x[k]) * to_double(w[k]);
      if (silu && !a.pre.empty()) a.pre.data[m * p.ldpre + n] = from_double<T>(acc);
      if (!a.residual.empty()) acc += to_double(a.residual.data[m * p.ldres + n]);
      a.y.data[m * p.ldy + n] = from_double<T>(silu ? detail::silu(acc) : acc);
    }
  }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  using A = acc_t<T>;
  const bool silu = has_silu(a.epilogue);
  std::vector<double> dpre(static_cast<std::size_t>(p.M * p.N));
  for (std::int64_t m = 0; m < p.M; ++m)
    for (std::int64_t n = 0; n < p.N; ++n) {
      double g = to_double(a.dy.data[m * p.lddy + n]);
      if (silu) g *= detail::silu_grad(to_double(a.pre.data[m * p.ldpre + n]));
      dpre[m * p.N + n] = g;
    }
  if (silu && !a.dpre.empty())
    for (std::int64_t m = 0; m < p.M; ++m)
      for (std::int64_t n = 0; n < p.N; ++n) a.dpre.data[m * p.lddpre + n] = from_double<T>(dpre[m * p.N + n]);
  if (!a.dx.empty())
    for (std::int64_t m = 0; m < p.M; ++m)
      for (std::int64_t k = 0; k < p.K; ++k) {
        double acc = 0;
        for (std::int64_t n = 0; n < p.N; ++n) acc += dpre[m * p.N + n] * to_double(a.weight.data[n * p.ldw + k]);
        T& d = a.dx.data[m * p.lddx + k];
        d = from_double<T>(a.accumulate_dx ? to_double(d) + acc : acc);
      }
  if (!a.dweight.empty())
    for (std::int64_t n = 0; n < p.N; ++n)
      for (std::int64_t k = 0; k < p.K; ++k) {
        double acc = 0;
        for (std::int64_t m = 0; m < p.M; ++m) acc += dpre[m * p.N + n] * to_double(a.x.data[m * p.ldx + k]);
        A& d = a.dweight.data[n * p.lddw + k];
        d = static_cast<A>(a.accumulate_dparams ? static_cast<double>(d) + acc : acc);
      }
  if (!a.dbias.empty())
    for (std::int64_t n = 0; n < p.N; ++n) {
      double acc = 0;
      for (std::int64_t m = 0; m < p.M; ++m) acc += dpre[m * p.N + n];
      A& d = a.dbias.data[n];
      d = static_cast<A>(a.accumulate_dparams ? static_cast<double>(d) + acc : acc);
    }
  return Status::success();
}

}  // namespace gecko::linear::cpu
