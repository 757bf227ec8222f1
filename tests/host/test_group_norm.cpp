// Group RMSNorm / LayerNorm on the CPU: finite-difference gradients in double, strided views,
// and clear errors for bad arguments.
#include <doctest/doctest.h>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/group_norm/reference.hpp"
#include "test_util.hpp"

using namespace gecko;
using group_norm::Kind;

namespace {

struct NormCase {
  Kind kind;
  bool affine;
  bool bias;
  std::int64_t rows, channels, groups;
};

void run_fd(const NormCase& c) {
  const std::int64_t R = c.rows, C = c.channels;
  auto x = test::random_normal(R * C, 1, 1.5);
  for (std::int64_t i = 0; i < R * C; ++i) x[i] += 0.3;  // non-zero mean exercises LayerNorm
  auto w = test::random_normal(C, 2, 0.3);
  auto b = test::random_normal(C, 3, 0.3);
  const auto dy = test::random_normal(R * C, 4);
  std::vector<double> y(R * C), dx(R * C), dw(C), db(C);

  auto forward = [&]() {
    group_norm::ForwardArgs<double> f;
    f.kind = c.kind;
    f.groups = c.groups;
    f.x = host_view(x, {R, C});
    if (c.affine) f.weight = host_view(w, {C});
    if (c.bias) f.bias = host_view(b, {C});
    f.y = host_view(y, {R, C});
    REQUIRE(group_norm::cpu::forward(f).ok());
    return test::dot(y, dy);
  };
  forward();
  group_norm::BackwardArgs<double> g;
  g.kind = c.kind;
  g.groups = c.groups;
  g.x = host_view(x, {R, C});
  if (c.affine) {
    g.weight = host_view(w, {C});
    g.dweight = host_view(dw, {C});
  }
  if (c.bias) g.dbias = host_view(db, {C});
  g.dy = host_view(dy, {R, C});
  g.dx = host_view(dx, {R, C});
  REQUIRE(group_norm::cpu::backward(g).ok());
  test::check_gradient("x", x, dx, forward);
  if (c.affine) test::check_gradient("weight", w, dw, forward);
  if (c.bias) test::check_gradient("bias", b, db, forward);
}

}  // namespace

TEST_CASE("group norm gradients match finite differences") {
  run_fd({Kind::kRms, true, false, 5, 24, 3});
  run_fd({Kind::kRms, false, false, 4, 16, 1});
  run_fd({Kind::kLayer, true, true, 5, 24, 4});
  run_fd({Kind::kLayer, false, false, 3, 12, 2});
  run_fd({Kind::kLayer, true, false, 3, 10, 1});
}

TEST_CASE("group norm accepts strided rows and matches the dense result") {
  const std::int64_t R = 4, C = 8, pitch = 13;
  auto dense = test::random_normal(R * C, 11);
  std::vector<double> padded(R * pitch, 99.0);
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) padded[r * pitch + c] = dense[r * C + c];
  std::vector<double> y1(R * C), y2(R * C);
  group_norm::ForwardArgs<double> f;
  f.kind = Kind::kLayer;
  f.groups = 2;
  f.x = host_view(dense, {R, C});
  f.y = host_view(y1, {R, C});
  REQUIRE(group_norm::cpu::forward(f).ok());
  f.x = TensorView<const double>::strided(padded.data(), {R, C}, {pitch, 1}, Memory::kHost);
  f.y = host_view(y2, {R, C});
  REQUIRE(group_norm::cpu::forward(f).ok());
  CHECK(y1 == y2);
}

TEST_CASE("group norm backward adds dx_add to dx") {
  const std::int64_t R = 3, C = 64;
  const auto x = test::random_normal(R * C, 11), dy = test::random_normal(R * C, 12), add = test::random_normal(R * C, 13);
  std::vector<double> dx0(R * C), dx1(R * C);
  group_norm::BackwardArgs<double> a;
  a.kind = Kind::kLayer;
  a.groups = 2;
  a.x = host_view(x, {R, C});
  a.dy = host_view(dy, {R, C});
  a.dx = host_view(dx0, {R, C});
  REQUIRE(group_norm::cpu::backward(a).ok());
  a.dx = host_view(dx1, {R, C});
  a.dx_add = host_view(add, {R, C});
  REQUIRE(group_norm::cpu::backward(a).ok());
  for (std::int64_t i = 0; i < R * C; ++i) CHECK(dx1[i] == doctest::Approx(dx0[i] + add[i]).epsilon(1e-12));
}

TEST_CASE("group norm rejects bad arguments with a message naming them") {
  std::vector<float> x(4 * 12), y(4 * 12), w(12), w_bad(10);
  group_norm::ForwardArgs<float> f;
  f.groups = 5;
  f.x = host_view(x, {4, 12});
  f.y = host_view(y, {4, 12});
  Status s = group_norm::cpu::forward(f);
  CHECK(s.message().find("divisible by groups") != std::string::npos);

  f.groups = 3;
  f.weight = host_view(w_bad, {10});
  CHECK(group_norm::cpu::forward(f).message().find("weight has shape [10]") != std::string::npos);

  f.weight = host_view(w, {12});
  f.y = host_view(y, {3, 16});
  CHECK(group_norm::cpu::forward(f).message().find("y has shape") != std::string::npos);

  f.y = TensorView<float>::device(y.data(), {4, 12});
  CHECK(group_norm::cpu::forward(f).message().find("expected host memory") != std::string::npos);

  f.y = host_view(y, {4, 12});
  f.bias = host_view(w, {12});
  CHECK(group_norm::cpu::forward(f).message().find("bias is only defined for LayerNorm") != std::string::npos);

  f.bias = {};
  f.x = TensorView<const float>::strided(x.data(), {4, 12}, {1, 4}, Memory::kHost);
  CHECK(group_norm::cpu::forward(f).message().find("unit stride") != std::string::npos);

  f.x = host_view(x, {4, 12});
  f.groups = 0;
  CHECK(group_norm::cpu::forward(f).message().find("groups must be >= 1") != std::string::npos);

  group_norm::BackwardArgs<float> g;
  std::vector<float> dx(48), dy(48);
  g.x = host_view(x, {4, 12});
  g.dy = host_view(dy, {4, 12});
  g.dx = host_view(dx, {4, 12});
  g.weight = host_view(w, {12});
  CHECK(group_norm::cpu::backward(g).message().find("dweight must be given") != std::string::npos);
}
