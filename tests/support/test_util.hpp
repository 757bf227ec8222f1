// Shared test helpers: seeded random tensors, dtype tolerances, finite-difference checks.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/testing/compare.hpp"

namespace gecko::test {

template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = from_double<T>(dist(rng));
  return v;
}

inline std::vector<double> random_normal(std::size_t n, std::uint64_t seed, double stddev = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> v(n);
  for (auto& e : v) e = dist(rng);
  return v;
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = to_double(v[i]);
  return out;
}

template <class T>
std::vector<T> narrow(const std::vector<double>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = from_double<T>(v[i]);
  return out;
}

// Relative Frobenius tolerance for outputs stored in T (one rounding plus fp32 arithmetic).
template <class T>
double output_tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return 1e-2;
  else if constexpr (std::is_same_v<T, __half>) return 2e-3;
  else return 2e-5;
}

template <class T>
const char* type_label() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<T, __half>) return "fp16";
  else if constexpr (std::is_same_v<T, float>) return "fp32";
  else return "fp64";
}

#define GECKO_CHECK_CLOSE(got, want, tol, what)                                  \
  do {                                                                           \
    const auto gecko_cmp_ = ::gecko::testing::compare((got), (want));            \
    INFO(what << ": " << gecko_cmp_.to_string());                                \
    CHECK(gecko_cmp_.within(tol));                                               \
  } while (0)

// Central finite differences of `loss` with respect to sampled entries of `param`, compared
// with `analytic`. Everything runs in double, so agreement should reach ~1e-7 relative.
inline void check_gradient(const std::string& name, std::vector<double>& param, const std::vector<double>& analytic,
                           const std::function<double()>& loss, int samples = 24, double h = 1e-5,
                           double tol = 1e-6, std::uint64_t seed = 7) {
  REQUIRE(param.size() == analytic.size());
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> idx(param.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(std::min<std::size_t>(idx.size(), samples));
  double scale = 0;
  for (double a : analytic) scale = std::max(scale, std::fabs(a));
  for (std::size_t i : idx) {
    const double keep = param[i];
    param[i] = keep + h;
    const double up = loss();
    param[i] = keep - h;
    const double down = loss();
    param[i] = keep;
    const double numeric = (up - down) / (2 * h);
    INFO(name << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric);
    CHECK(std::fabs(numeric - analytic[i]) <= tol * std::max(1.0, scale));
  }
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace gecko::test
