// The CPU complex EMA against the authors' golden vectors (their [B, D, L] layout is transposed by
// the checker; every coefficient, output, state and gradient in the files is compared).
#include <doctest/doctest.h>

#include "golden_checks.hpp"

namespace {

void check_golden(const char* name, std::size_t expected_tensors) {
  gecko::testing::GoldenCase gc;
  const auto path = gecko::testing::golden_dir() + "/" + name + ".safetensors";
  const auto st = gecko::testing::GoldenCase::load(path, gc);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  const auto r = gecko::golden::check_case(gc);
  REQUIRE_MESSAGE(r.supported, name << ": no checker");
  REQUIRE_MESSAGE(r.error.empty(), r.error);
  for (const auto& t : r.tensors) {
    INFO(name << " " << t.name << ": " << t.cmp.to_string());
    CHECK(t.cmp.within(gecko::golden::kTolerance));
  }
  CHECK(r.tensors.size() == expected_tensors);
}

}  // namespace

// coef_p, coef_q, coef_gamma, y, h, grad_x, grad_alpha, grad_delta, grad_theta, grad_gamma (+ grad_h0)
TEST_CASE("golden cema_basic") { check_golden("cema_basic", 10); }
TEST_CASE("golden cema_bos_h0") { check_golden("cema_bos_h0", 11); }
