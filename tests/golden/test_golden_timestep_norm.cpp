// The CPU timestep decay norm against the authors' golden vectors, in the float32-beta mode that
// reproduces their forward, and a measurement of how far the exact-beta mode lands from it.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <string>

#include "golden_checks.hpp"

namespace {

gecko::testing::GoldenCase load(const char* name) {
  gecko::testing::GoldenCase gc;
  const auto path = gecko::testing::golden_dir() + "/" + name + ".safetensors";
  const auto st = gecko::testing::GoldenCase::load(path, gc);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  return gc;
}

void check_golden(const char* name) {
  const auto gc = load(name);
  const auto r = gecko::golden::check_case(gc);
  REQUIRE_MESSAGE(r.supported, name << ": no checker");
  REQUIRE_MESSAGE(r.error.empty(), r.error);
  for (const auto& t : r.tensors) {
    INFO(name << " " << t.name << ": " << t.cmp.to_string());
    CHECK(t.cmp.within(gecko::golden::kTolerance));
  }
  CHECK(r.tensors.size() >= 7);  // y, count, mean, var, grad_x, grad_weight, grad_bias (+ prev grads)
}

// Per-tensor errors of the exact-beta mode against the golden file.
std::map<std::string, double> exact_errors(const char* name) {
  const auto r = gecko::golden::check_timestep_norm(load(name), gecko::timestep_norm::BetaPrecision::kExact);
  REQUIRE_MESSAGE(r.error.empty(), r.error);
  std::map<std::string, double> e;
  for (const auto& t : r.tensors) e[t.name] = t.cmp.rel_fro;
  return e;
}

}  // namespace

TEST_CASE("golden tsdn_basic") { check_golden("tsdn_basic"); }
TEST_CASE("golden tsdn_bos_prev") { check_golden("tsdn_bos_prev"); }
TEST_CASE("golden tsdn_default_betas") { check_golden("tsdn_default_betas"); }

TEST_CASE("golden timestep norm: exact beta differs from the authors only by their float32 beta") {
  // beta 0.9 / 0.99 are far from 1, so float32 rounding of beta hardly matters there.
  for (const char* name : {"tsdn_basic", "tsdn_bos_prev"})
    for (const auto& [tensor, err] : exact_errors(name)) {
      INFO(std::string(name) << " " << tensor << ": " << err);
      CHECK(err < 1e-5);
    }
  // At beta2 = 0.9999 the raw var state carries (1 - float(beta2)) / (1 - beta2) - 1 = 1.66e-4;
  // the bias-corrected outputs and the gradients move by about 2e-5.
  auto e = exact_errors("tsdn_default_betas");
  const double beta2 = 0.9999;
  const double expected = (1.0 - static_cast<double>(static_cast<float>(beta2))) / (1.0 - beta2) - 1.0;
  CHECK(e["var"] == doctest::Approx(std::fabs(expected)).epsilon(0.02));
  for (const char* t : {"y", "mean", "grad_x", "grad_weight", "grad_bias"}) {
    INFO(std::string(t) << ": " << e[t]);
    CHECK(e[t] < 5e-5);
  }
}
