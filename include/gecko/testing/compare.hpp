// Tensor comparison for tests and the golden checker: relative Frobenius error (the golden
// vectors' metric), max absolute error, and where the worst element sits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace gecko::testing {

struct Comparison {
  double rel_fro = 0;     // |got - want|_F / |want|_F  (absolute when want is all zero)
  double max_abs = 0;     // max |got - want|
  double worst_got = 0;   // values at the index of max_abs
  double worst_want = 0;
  std::int64_t worst_index = -1;
  std::int64_t count = 0;
  std::int64_t nonfinite = 0;  // NaN/inf in got where want is finite
  bool size_mismatch = false;

  bool within(double tol) const { return !size_mismatch && nonfinite == 0 && rel_fro <= tol; }

  std::string to_string() const {
    std::ostringstream s;
    if (size_mismatch) return "size mismatch";
    s.precision(3);
    s << std::scientific << "rel_fro=" << rel_fro << " max_abs=" << max_abs << " at [" << worst_index
      << "] (got " << worst_got << ", want " << worst_want << ")";
    if (nonfinite) s << " nonfinite=" << nonfinite;
    return s.str();
  }
};

template <class A, class B>
Comparison compare(const A* got, const B* want, std::int64_t n) {
  Comparison c;
  c.count = n;
  long double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]);
    const double w = static_cast<double>(want[i]);
    if (!std::isfinite(g) && std::isfinite(w)) {
      ++c.nonfinite;
      continue;
    }
    const double d = std::fabs(g - w);
    num += static_cast<long double>(d) * d;
    den += static_cast<long double>(w) * w;
    if (d > c.max_abs || c.worst_index < 0) {
      c.max_abs = d;
      c.worst_index = i;
      c.worst_got = g;
      c.worst_want = w;
    }
  }
  c.rel_fro = static_cast<double>(den > 0 ? std::sqrt(num / den) : std::sqrt(num));
  return c;
}

template <class A, class B>
Comparison compare(const std::vector<A>& got, const std::vector<B>& want) {
  if (got.size() != want.size()) {
    Comparison c;
    c.size_mismatch = true;
    return c;
  }
  return compare(got.data(), want.data(), static_cast<std::int64_t>(got.size()));
}

}  // namespace gecko::testing
