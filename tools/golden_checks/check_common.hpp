// Shared pieces of the golden checkers: results, tolerance, and comparing named tensors.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "gecko/testing/compare.hpp"
#include "gecko/testing/golden.hpp"

namespace gecko::golden {

// Relative Frobenius error allowed per tensor (../shared/golden/README.md).
inline constexpr double kTolerance = 1e-4;

struct TensorResult {
  std::string name;
  testing::Comparison cmp;
};

struct CaseResult {
  std::string component;
  bool supported = true;
  std::string error;  // set when the case could not be run
  std::vector<TensorResult> tensors;

  double worst() const {
    double w = 0;
    for (const auto& t : tensors) w = std::max(w, t.cmp.size_mismatch || t.cmp.nonfinite ? 1e300 : t.cmp.rel_fro);
    return w;
  }
  bool passed() const { return supported && error.empty() && !tensors.empty() && worst() <= kTolerance; }
  const TensorResult* worst_tensor() const {
    const TensorResult* w = nullptr;
    for (const auto& t : tensors)
      if (!w || t.cmp.rel_fro > w->cmp.rel_fro || t.cmp.size_mismatch || t.cmp.nonfinite) w = &t;
    return w;
  }
};

// Compares `got` with the stored tensor `name` when the case holds it.
inline void expect_tensor(const testing::GoldenCase& gc, CaseResult& r, const std::string& name,
                          const std::vector<double>& got) {
  r.tensors.push_back({name, testing::compare(got, gc.get<double>(name))});
}

}  // namespace gecko::golden
