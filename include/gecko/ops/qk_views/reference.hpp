// CPU reference for the MEGA query/key views: plain loops in double whatever T is.
#pragma once

#include <cmath>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/qk_views/args.hpp"

namespace gecko::qk_views::cpu {

namespace detail {

// rstd of one head's dz values.
template <class T>
double rstd(const T* z, std::int64_t dz, double eps) {
  double sq = 0;
  for (std::int64_t c = 0; c < dz; ++c) sq += to_double(z[c]) * to_double(z[c]);
  return 1.0 / std::sqrt(sq / dz + eps);
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const std::int64_t Z = p.channels, dz = p.head_dim;
  const double inv_sqrt_dz = 1.0 / std::sqrt(static_cast<double>(dz));
  T* out[kViews] = {a.q.data, a.k.data, a.aq.data, a.ak.data};
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* z = a.z.data + r * p.z_stride;
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const double rs = detail::rstd(z + h * dz, dz, a.eps);
      for (std::int64_t ch = h * dz; ch < (h + 1) * dz; ++ch) {
        const double zn = to_double(z[ch]) * rs;
        for (int i = 0; i < kViews; ++i) {
          const double g = (to_double(a.gamma.data[i * Z + ch]) + 1.0) * inv_sqrt_dz;
          out[i][r * p.view_stride[i] + ch] = from_double<T>(zn * g + to_double(a.beta.data[i * Z + ch]));
        }
      }
    }
  }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  using A = acc_t<T>;
  const std::int64_t Z = p.channels, dz = p.head_dim;
  const double inv_sqrt_dz = 1.0 / std::sqrt(static_cast<double>(dz));
  const T* grads[kViews] = {a.dq.data, a.dk.data, a.daq.data, a.dak.data};
  std::vector<double> dgam(kViews * Z, 0.0), dbet(kViews * Z, 0.0), dzn(dz), zn(dz);
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const T* z = a.z.data + r * p.z_stride;
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const double rs = detail::rstd(z + h * dz, dz, a.eps);
      double dot = 0;
      for (std::int64_t c = 0; c < dz; ++c) {
        const std::int64_t ch = h * dz + c;
        zn[c] = to_double(z[ch]) * rs;
        double s = 0;
        for (int i = 0; i < kViews; ++i) {
          const double d = to_double(grads[i][r * p.view_stride[i] + ch]);
          s += d * (to_double(a.gamma.data[i * Z + ch]) + 1.0) * inv_sqrt_dz;
          dgam[i * Z + ch] += d * zn[c] * inv_sqrt_dz;
          dbet[i * Z + ch] += d;
        }
        dzn[c] = s;
        dot += s * zn[c];
      }
      const double mean = dot / dz;
      for (std::int64_t c = 0; c < dz; ++c)
        a.dz.data[r * p.dz_stride + h * dz + c] = from_double<T>(rs * (dzn[c] - zn[c] * mean));
    }
  }
  if (!a.dgamma.empty())
    for (std::int64_t i = 0; i < kViews * Z; ++i) {
      a.dgamma.data[i] = static_cast<A>(a.accumulate_dparams ? static_cast<double>(a.dgamma.data[i]) + dgam[i] : dgam[i]);
      a.dbeta.data[i] = static_cast<A>(a.accumulate_dparams ? static_cast<double>(a.dbeta.data[i]) + dbet[i] : dbet[i]);
    }
  return Status::success();
}

}  // namespace gecko::qk_views::cpu
