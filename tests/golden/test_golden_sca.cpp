// The CPU sliding chunk attention (with RoPE inside) against the authors' golden vectors: output,
// gradients of q, k, v and of the carried prev_k / prev_v, and the RoPE cos/sin table.
#include <doctest/doctest.h>

#include "golden_checks.hpp"

namespace {

void check_golden(const char* name) {
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
  CHECK(!r.tensors.empty());
}

// Every gradient the case stores must have been compared (a missing one would pass silently).
void check_names(const char* name, std::initializer_list<const char*> expected) {
  gecko::testing::GoldenCase gc;
  REQUIRE(gecko::testing::GoldenCase::load(gecko::testing::golden_dir() + "/" + name + ".safetensors", gc).ok());
  const auto r = gecko::golden::check_case(gc);
  for (const char* e : expected) {
    bool found = false;
    for (const auto& t : r.tensors) found = found || t.name == e;
    CHECK_MESSAGE(found, name << ": " << e << " was not compared");
  }
}

}  // namespace

TEST_CASE("golden sca_basic") {
  check_golden("sca_basic");
  check_names("sca_basic", {"freqs_cis", "out", "grad_q", "grad_k", "grad_v"});
}
TEST_CASE("golden sca_prev_partial_rope") {
  check_golden("sca_prev_partial_rope");
  check_names("sca_prev_partial_rope", {"freqs_cis", "out", "grad_q", "grad_k", "grad_v", "grad_prev_k", "grad_prev_v"});
}
TEST_CASE("golden sca_segments") {
  check_golden("sca_segments");
  check_names("sca_segments", {"freqs_cis", "out", "grad_q", "grad_k", "grad_v"});
}
