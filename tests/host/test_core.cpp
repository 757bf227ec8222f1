// Core types: TensorView geometry and checks, Status messages, dtype conversions, comparisons.
#include <doctest/doctest.h>

#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/core/status.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/testing/compare.hpp"

using namespace gecko;

TEST_CASE("TensorView: contiguous strides, element access, collapsing rows") {
  std::vector<float> buf(2 * 3 * 4);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  auto v = host_view(buf, {2, 3, 4});
  CHECK(v.rank == 3);
  CHECK(v.strides[0] == 12);
  CHECK(v.strides[2] == 1);
  CHECK(v.numel() == 24);
  CHECK(v.is_contiguous());
  CHECK(v(1, 2, 3) == 23.f);
  std::int64_t rows = 0, stride = 0;
  CHECK(collapse_rows(v, rows, stride));
  CHECK(rows == 6);
  CHECK(stride == 4);

  // A view of every other row: rows still collapse (stride 8 between rows).
  auto s = TensorView<float>::strided(buf.data(), {3, 4}, {8, 1}, Memory::kHost);
  CHECK(!s.is_contiguous());
  CHECK(collapse_rows(s, rows, stride));
  CHECK(stride == 8);
  // [2, 3, 4] with a padded middle dimension does not collapse into one row stride.
  auto p = TensorView<float>::strided(buf.data(), {2, 2, 4}, {12, 4, 1}, Memory::kHost);
  CHECK(!collapse_rows(p, rows, stride));
}

TEST_CASE("argument checks name the argument and the problem") {
  std::vector<float> buf(12);
  auto v = host_view(buf, {3, 4});
  CHECK(check_shape(v, "x", {3, 4}).ok());
  CHECK(check_shape(v, "x", {-1, 4}).ok());
  const Status bad = check_shape(v, "x", {3, 5});
  CHECK(!bad.ok());
  CHECK(bad.message() == "x has shape [3, 4], expected [3, 5]");
  CHECK(check_memory(v, "x", Memory::kDevice).message() == "x lives in host memory, expected device memory");
  TensorView<float> missing;
  CHECK(check_shape(missing, "w", {4}).message().find("w is missing") == 0);
  auto t = TensorView<float>::strided(buf.data(), {3, 4}, {1, 3}, Memory::kHost);
  CHECK(check_inner_contiguous(t, "x").message().find("unit stride") != std::string::npos);
  CHECK(Status(StatusCode::kUnsupported, "dk=96").to_string() == "unsupported: dk=96");
}

TEST_CASE("dtype conversions round to nearest and report sizes") {
  CHECK(dtype_size(DType::kBF16) == 2);
  CHECK(std::string(dtype_name(DType::kBool)) == "BOOL");
  CHECK(to_float(from_float<__nv_bfloat16>(1.0f + 1.0f / 512)) == 1.0f);  // nearest: 2^-9 rounds down
  CHECK(to_float(from_float<__nv_bfloat16>(1.0f + 3.0f / 512)) == 1.0f + 1.0f / 64 * 0.5f);
  CHECK(to_float(from_float<__half>(0.1f)) == doctest::Approx(0.0999755859375));
  CHECK(to_double(from_double<float>(0.1)) == doctest::Approx(0.1).epsilon(1e-7));
}

TEST_CASE("compare reports relative Frobenius error and the worst index") {
  const std::vector<double> want = {1, 2, 3, 4};
  const std::vector<double> got = {1, 2, 3.5, 4};
  const auto c = testing::compare(got, want);
  CHECK(c.worst_index == 2);
  CHECK(c.max_abs == doctest::Approx(0.5));
  CHECK(c.rel_fro == doctest::Approx(0.5 / std::sqrt(30.0)));
  CHECK(!c.within(1e-3));
  CHECK(testing::compare(want, want).within(0));
  const std::vector<double> nan = {1, 2, NAN, 4};
  CHECK(testing::compare(nan, want).nonfinite == 1);
  CHECK(!testing::compare(nan, want).within(1));
  CHECK(testing::compare(std::vector<double>{1}, want).size_mismatch);
}
