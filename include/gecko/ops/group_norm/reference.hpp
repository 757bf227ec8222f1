// CPU reference for group RMSNorm / LayerNorm: plain loops in double. The oracle for the CUDA
// kernels and the embedded backend where no GPU exists.
#pragma once

#include <cmath>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/group_norm/args.hpp"

namespace gecko::group_norm::cpu {

namespace detail {

struct GroupStats {
  double mean = 0;  // 0 for RMSNorm
  double rstd = 0;
};

template <class T>
GroupStats stats(const T* x, std::int64_t k, Kind kind, double eps) {
  GroupStats s;
  if (kind == Kind::kLayer) {
    double sum = 0;
    for (std::int64_t i = 0; i < k; ++i) sum += to_double(x[i]);
    s.mean = sum / k;
  }
  double sq = 0;
  for (std::int64_t i = 0; i < k; ++i) {
    const double d = to_double(x[i]) - s.mean;
    sq += d * d;
  }
  s.rstd = 1.0 / std::sqrt(sq / k + eps);
  return s;
}

template <class T>
double scale_at(const TensorView<const T>& w, std::int64_t c) {
  return w.empty() ? 1.0 : to_double(w.data[c]) + 1.0;
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const std::int64_t K = p.group_size;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = a.x.data + r * p.x_stride;
    T* y = a.y.data + r * p.y_stride;
    for (std::int64_t g = 0; g < p.groups; ++g) {
      const auto s = detail::stats(x + g * K, K, a.kind, a.eps);
      for (std::int64_t i = g * K; i < (g + 1) * K; ++i) {
        double v = (to_double(x[i]) - s.mean) * s.rstd * detail::scale_at(a.weight, i);
        if (!a.bias.empty()) v += to_double(a.bias.data[i]);
        y[i] = from_double<T>(v);
      }
    }
  }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const std::int64_t K = p.group_size;
  std::vector<double> dw(a.dweight.empty() ? 0 : p.channels, 0.0), db(a.dbias.empty() ? 0 : p.channels, 0.0);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* x = a.x.data + r * p.x_stride;
    const T* dy = a.dy.data + r * p.dy_stride;
    T* dx = a.dx.data + r * p.dx_stride;
    for (std::int64_t g = 0; g < p.groups; ++g) {
      const auto s = detail::stats(x + g * K, K, a.kind, a.eps);
      double sum_dyw = 0, sum_dyw_xc = 0;
      for (std::int64_t i = g * K; i < (g + 1) * K; ++i) {
        const double dyw = to_double(dy[i]) * detail::scale_at(a.weight, i);
        sum_dyw += dyw;
        sum_dyw_xc += dyw * (to_double(x[i]) - s.mean);
      }
      const double mean_dyw = a.kind == Kind::kLayer ? sum_dyw / K : 0.0;
      const double mean_dyw_xc = sum_dyw_xc / K;
      const double r3 = s.rstd * s.rstd * s.rstd;
      for (std::int64_t i = g * K; i < (g + 1) * K; ++i) {
        const double xc = to_double(x[i]) - s.mean;
        const double d = to_double(dy[i]);
        const double w = detail::scale_at(a.weight, i);
        const double add = a.dx_add.empty() ? 0.0 : to_double(a.dx_add.data[r * p.dadd_stride + i]);
        dx[i] = from_double<T>(s.rstd * (w * d - mean_dyw) - r3 * mean_dyw_xc * xc + add);
        if (!dw.empty()) dw[i] += d * xc * s.rstd;
        if (!db.empty()) db[i] += d;
      }
    }
  }
  for (std::size_t i = 0; i < dw.size(); ++i) a.dweight.data[i] = static_cast<acc_t<T>>(dw[i]);
  for (std::size_t i = 0; i < db.size(); ++i) a.dbias.data[i] = static_cast<acc_t<T>>(db[i]);
  return Status::success();
}

}  // namespace gecko::group_norm::cpu
