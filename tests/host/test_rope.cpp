// Rotary embedding on the CPU: the authors' inverse frequencies, the rotation against complex
// arithmetic, partial heads, start positions, backward as the inverse rotation (and finite
// differences), strided and in-place views, and clear errors for bad arguments.
#include <doctest/doctest.h>

#include <cmath>
#include <complex>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

// The rotation written independently: pair i of the token at position t times e^{i t theta_i}.
std::vector<double> rotate_dense(const std::vector<double>& x, std::int64_t B, std::int64_t L, std::int64_t H,
                                 std::int64_t d, const rope::RopeConfig& c) {
  std::vector<double> y = x;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t h = 0; h < c.n_rope_heads; ++h)
        for (std::int64_t i = 0; i < d / 2; ++i) {
          const float theta = 1.0f / static_cast<float>(std::pow(c.base, 2.0 * i / d));
          const double phi = static_cast<double>(c.start + l) * theta;
          const std::size_t o = ((b * L + l) * H + h) * d + 2 * i;
          const std::complex<double> z = std::complex<double>(x[o], x[o + 1]) * std::polar(1.0, phi);
          y[o] = z.real();
          y[o + 1] = z.imag();
        }
  return y;
}

}  // namespace

TEST_CASE("rope inverse frequencies are the authors' fp32 values") {
  // fp32(1 / fp32(10000^(2i/16))): i = 0 is exactly 1, i = 2 is fp32(0.1), i = 4 is fp32(0.01).
  CHECK(rope::inv_freq(10000.0, 16, 0) == 1.0f);
  CHECK(rope::inv_freq(10000.0, 16, 2) == 0.1f);
  CHECK(rope::inv_freq(10000.0, 16, 4) == 0.01f);
  CHECK(std::fabs(rope::inv_freq(10000.0, 16, 1) - 0.316227766) < 1e-7);
  const auto th = rope::cpu::inv_freqs(500000.0, 256);
  REQUIRE(th.size() == 128);
  for (std::size_t i = 1; i < th.size(); ++i) CHECK(th[i] < th[i - 1]);
  // The angle is the double product of the integer position and the fp32 theta.
  CHECK(rope::angle(1000003, th[1]) == 1000003.0 * static_cast<double>(th[1]));
}

TEST_CASE("rope forward matches complex rotation, with partial heads and a start offset") {
  const std::int64_t B = 2, L = 5, H = 3, d = 8;
  const auto x = test::random_normal(B * L * H * d, 21);
  for (int n_rope : {0, 1, 3})
    for (std::int64_t start : {std::int64_t{0}, std::int64_t{7}, std::int64_t{123456789}}) {
      rope::RopeConfig c{10000.0, n_rope, start};
      std::vector<double> y(x.size());
      rope::ForwardArgs<double> f;
      f.config = c;
      f.x = host_view(x, {B, L, H, d});
      f.y = host_view(y, {B, L, H, d});
      REQUIRE(rope::cpu::forward(f).ok());
      GECKO_CHECK_CLOSE(y, rotate_dense(x, B, L, H, d, c), 1e-14, "n_rope " << n_rope << " start " << start);
      // Heads at or beyond n_rope_heads are copied bit for bit.
      for (std::int64_t i = 0; i < B * L * H * d; ++i)
        if ((i / d) % H >= n_rope) REQUIRE(y[i] == x[i]);
    }
}

TEST_CASE("rope start offset equals a longer call's later tokens") {
  const std::int64_t L = 6, H = 2, d = 4;
  const auto x = test::random_normal(L * H * d, 22);
  rope::ForwardArgs<double> f;
  f.config = {500000.0, 2, 0};
  std::vector<double> y_all(x.size()), y_tail(x.size() / 2);
  f.x = host_view(x, {1, L, H, d});
  f.y = host_view(y_all, {1, L, H, d});
  REQUIRE(rope::cpu::forward(f).ok());
  const std::vector<double> x_tail(x.begin() + x.size() / 2, x.end());
  f.config.start = L / 2;
  f.x = host_view(x_tail, {1, L / 2, H, d});
  f.y = host_view(y_tail, {1, L / 2, H, d});
  REQUIRE(rope::cpu::forward(f).ok());
  CHECK(std::vector<double>(y_all.begin() + y_all.size() / 2, y_all.end()) == y_tail);
}

TEST_CASE("rope backward is the inverse rotation and matches finite differences") {
  const std::int64_t B = 2, L = 4, H = 3, d = 6;
  auto x = test::random_normal(B * L * H * d, 23);
  const auto dy = test::random_normal(x.size(), 24);
  const rope::RopeConfig c{10000.0, 2, 3};
  std::vector<double> y(x.size()), dx(x.size()), back(x.size());
  auto loss = [&]() {
    rope::ForwardArgs<double> f;
    f.config = c;
    f.x = host_view(x, {B, L, H, d});
    f.y = host_view(y, {B, L, H, d});
    REQUIRE(rope::cpu::forward(f).ok());
    return test::dot(y, dy);
  };
  loss();
  rope::BackwardArgs<double> g;
  g.config = c;
  g.dy = host_view(dy, {B, L, H, d});
  g.dx = host_view(dx, {B, L, H, d});
  REQUIRE(rope::cpu::backward(g).ok());
  test::check_gradient("x", x, dx, loss);

  // backward(forward(x)) == x: the rotation is orthogonal.
  loss();  // y again at the unperturbed x
  g.dy = host_view(y, {B, L, H, d});
  g.dx = host_view(back, {B, L, H, d});
  REQUIRE(rope::cpu::backward(g).ok());
  GECKO_CHECK_CLOSE(back, x, 1e-14, "backward(forward(x))");
}

TEST_CASE("rope accepts strided heads and runs in place") {
  const std::int64_t L = 3, H = 2, d = 4, pitch = 3 * H * d;  // q/k/v packed per token, take slot 1
  const auto dense = test::random_normal(L * H * d, 25);
  std::vector<double> packed(L * pitch, 99.0);
  for (std::int64_t l = 0; l < L; ++l)
    for (std::int64_t i = 0; i < H * d; ++i) packed[l * pitch + H * d + i] = dense[l * H * d + i];
  rope::ForwardArgs<double> f;
  f.config = {10000.0, 2, 5};
  std::vector<double> want(dense.size());
  f.x = host_view(dense, {1, L, H, d});
  f.y = host_view(want, {1, L, H, d});
  REQUIRE(rope::cpu::forward(f).ok());

  auto view = TensorView<double>::strided(packed.data() + H * d, {1, L, H, d}, {L * pitch, pitch, d, 1}, Memory::kHost);
  f.x = view;
  f.y = view;  // in place
  REQUIRE(rope::cpu::forward(f).ok());
  for (std::int64_t l = 0; l < L; ++l)
    for (std::int64_t i = 0; i < H * d; ++i) {
      CHECK(packed[l * pitch + H * d + i] == want[l * H * d + i]);
      CHECK(packed[l * pitch + i] == 99.0);  // neighbouring slots untouched
    }
}

TEST_CASE("rope float storage matches the double reference") {
  const std::int64_t B = 1, L = 7, H = 2, d = 8;
  const auto xd = test::random_normal(B * L * H * d, 26);
  const auto xf = test::narrow<float>(xd);
  std::vector<float> yf(xf.size());
  rope::ForwardArgs<float> f;
  f.config = {500000.0, 2, 1000};
  f.x = host_view(xf, {B, L, H, d});
  f.y = host_view(yf, {B, L, H, d});
  REQUIRE(rope::cpu::forward(f).ok());
  GECKO_CHECK_CLOSE(test::widen(yf), rotate_dense(test::widen(xf), B, L, H, d, f.config),
                    test::output_tolerance<float>(), "fp32");
}

TEST_CASE("rope rejects bad arguments with a message naming them") {
  std::vector<float> x(2 * 3 * 2 * 4), y(x.size()), odd(2 * 3 * 2 * 5);
  rope::ForwardArgs<float> f;
  f.config = {10000.0, 3, 0};
  f.x = host_view(x, {2, 3, 2, 4});
  f.y = host_view(y, {2, 3, 2, 4});
  auto msg = [&]() { return rope::cpu::forward(f).message(); };
  CHECK(msg().find("config.n_rope_heads=3 exceeds the number of heads H=2") != std::string::npos);
  f.config.n_rope_heads = -1;
  CHECK(msg().find("config.n_rope_heads must be >= 0") != std::string::npos);
  f.config.n_rope_heads = 2;
  f.config.base = 0.0;
  CHECK(msg().find("config.base must be positive") != std::string::npos);
  f.config.base = 10000.0;
  f.config.start = -1;
  CHECK(msg().find("config.start must be >= 0") != std::string::npos);
  f.config.start = 0;
  CHECK(msg().empty());

  f.x = host_view(odd, {2, 3, 2, 5});
  f.y = host_view(odd, {2, 3, 2, 5});
  CHECK(msg().find("head dimension 5 must be even") != std::string::npos);
  f.config.n_rope_heads = 0;  // no rotation: odd widths are fine
  CHECK(rope::cpu::forward(f).ok());

  f.config.n_rope_heads = 2;
  f.x = host_view(x, {2, 3, 2, 4});
  f.y = host_view(y, {2, 3, 4, 2});
  CHECK(msg().find("y has shape [2, 3, 4, 2], expected [2, 3, 2, 4]") != std::string::npos);
  f.y = host_view(y, {2, 3, 2, 4});
  f.x = host_view(x, {6, 2, 4});
  CHECK(msg().find("x has shape [6, 2, 4], expected [B, L, H, d]") != std::string::npos);
  f.x = TensorView<const float>::strided(x.data(), {2, 3, 2, 4}, {24, 8, 1, 2}, Memory::kHost);
  CHECK(msg().find("x must have unit stride") != std::string::npos);
  f.x = TensorView<const float>::device(x.data(), {2, 3, 2, 4});
  CHECK(msg().find("x lives in device memory") != std::string::npos);

  rope::BackwardArgs<float> g;
  g.config = {10000.0, 1, 0};
  g.dy = host_view(x, {2, 3, 2, 4});
  CHECK(rope::cpu::backward(g).message().find("dx is missing") != std::string::npos);
}
