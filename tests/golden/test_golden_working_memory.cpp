// The CPU adaptive working memory against the authors' golden vectors.
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

}  // namespace

TEST_CASE("golden awm_basic") { check_golden("awm_basic"); }
TEST_CASE("golden awm_prev") { check_golden("awm_prev"); }
TEST_CASE("golden awm_segments") { check_golden("awm_segments"); }
