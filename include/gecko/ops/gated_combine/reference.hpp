// CPU reference for the MEGA gated combination: plain loops in double whatever T is.
#pragma once

#include <cmath>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/gated_combine/args.hpp"

namespace gecko::gated_combine::cpu {

namespace detail {
inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  for (std::int64_t i = 0; i < p.rows; ++i)
    for (std::int64_t c = 0; c < p.cols; ++c) {
      double r = to_double(a.r.data[i * p.r_stride + c]);
      if (a.silu_r) r *= detail::sigmoid(r);
      double v = to_double(a.sca.data[i * p.sca_stride + c]) * r;
      if (!a.awm.empty()) v += to_double(a.awm.data[i * p.awm_stride + c]);
      a.attn.data[i * p.attn_stride + c] = from_double<T>(v);
    }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  std::vector<double> colsum(p.cols, 0.0);
  for (std::int64_t i = 0; i < p.rows; ++i)
    for (std::int64_t c = 0; c < p.cols; ++c) {
      const double g = to_double(a.dattn.data[i * p.dattn_stride + c]);
      const double rin = to_double(a.r.data[i * p.r_stride + c]);
      const double sca = to_double(a.sca.data[i * p.sca_stride + c]);
      double r = rin, dr = g * sca;
      if (a.silu_r) {
        const double s = detail::sigmoid(rin);
        r = rin * s;
        dr *= s * (1.0 + rin * (1.0 - s));
      }
      a.dsca.data[i * p.dsca_stride + c] = from_double<T>(g * r);
      a.dr.data[i * p.dr_stride + c] = from_double<T>(dr);
      if (!a.dawm.empty()) a.dawm.data[i * p.dawm_stride + c] = from_double<T>(g);
      colsum[c] += dr;
    }
  using A = acc_t<T>;
  if (!a.dr_colsum.empty())
    for (std::int64_t c = 0; c < p.cols; ++c)
      a.dr_colsum.data[c] =
          static_cast<A>(a.accumulate_dr_colsum ? static_cast<double>(a.dr_colsum.data[c]) + colsum[c] : colsum[c]);
  return Status::success();
}

}  // namespace gecko::gated_combine::cpu
