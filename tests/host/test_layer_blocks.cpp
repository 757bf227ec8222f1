// CPU references of the GPU layer building blocks (Linear with epilogues, qk_views, gated_combine,
// swiglu): finite-difference gradients in double, accumulation, agreement with the layers' own
// loops, and clear errors for bad arguments.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/dense.hpp"
#include "gecko/ops/gated_combine/reference.hpp"
#include "gecko/ops/linear/reference.hpp"
#include "gecko/ops/qk_views/reference.hpp"
#include "gecko/ops/swiglu/reference.hpp"
#include "test_util.hpp"

using namespace gecko;
using I64 = std::int64_t;

namespace {

void expect_error(const Status& s, const char* needle) {
  INFO(s.to_string());
  CHECK(!s.ok());
  CHECK(s.message().find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("linear reference: finite-difference gradients for every epilogue") {
  using linear::Epilogue;
  const I64 M = 5, K = 7, N = 6;
  for (Epilogue ep : {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasSilu, Epilogue::kSilu}) {
    CAPTURE(linear::epilogue_name(ep));
    const bool bias = linear::has_bias(ep), silu = linear::has_silu(ep);
    auto x = test::random_normal(M * K, 1), w = test::random_normal(N * K, 2, 0.5), b = test::random_normal(N, 3);
    const auto g = test::random_normal(M * N, 4);
    std::vector<double> y(M * N), pre(M * N), dx(M * K), dw(N * K), db(N);
    auto forward = [&]() {
      linear::ForwardArgs<double> f;
      f.epilogue = ep;
      f.x = host_view(x, {M, K});
      f.weight = host_view(w, {N, K});
      if (bias) f.bias = host_view(b, {N});
      f.y = host_view(y, {M, N});
      if (silu) f.pre = host_view(pre, {M, N});
      REQUIRE(linear::cpu::forward(f).ok());
      return test::dot(y, g);
    };
    forward();
    linear::BackwardArgs<double> a;
    a.epilogue = ep;
    a.x = host_view(x, {M, K});
    a.weight = host_view(w, {N, K});
    if (silu) a.pre = host_view(pre, {M, N});
    a.dy = host_view(g, {M, N});
    a.dx = host_view(dx, {M, K});
    a.dweight = host_view(dw, {N, K});
    if (bias) a.dbias = host_view(db, {N});
    REQUIRE(linear::cpu::backward(a).ok());
    test::check_gradient("x", x, dx, forward);
    test::check_gradient("weight", w, dw, forward);
    if (bias) test::check_gradient("bias", b, db, forward);

    // Accumulation adds the same gradients on top of what is there.
    a.accumulate_dx = a.accumulate_dparams = true;
    const auto dx1 = dx, dw1 = dw, db1 = db;
    REQUIRE(linear::cpu::backward(a).ok());
    for (I64 i = 0; i < M * K; ++i) CHECK(dx[i] == doctest::Approx(2 * dx1[i]));
    for (I64 i = 0; i < N * K; ++i) CHECK(dw[i] == doctest::Approx(2 * dw1[i]));
    if (bias)
      for (I64 i = 0; i < N; ++i) CHECK(db[i] == doctest::Approx(2 * db1[i]));
  }
}

TEST_CASE("linear reference agrees with the layers' dense loops") {
  const I64 M = 4, K = 9, N = 5;
  const auto x = test::random_normal(M * K, 1), w = test::random_normal(N * K, 2), b = test::random_normal(N, 3);
  std::vector<double> y(M * N), want(M * N);
  linear::ForwardArgs<double> f;
  f.epilogue = linear::Epilogue::kBias;
  f.x = host_view(x, {M, K});
  f.weight = host_view(w, {N, K});
  f.bias = host_view(b, {N});
  f.y = host_view(y, {M, N});
  REQUIRE(linear::cpu::forward(f).ok());
  layers::dense::linear(x.data(), M, K, w.data(), b.data(), N, want.data());
  for (I64 i = 0; i < M * N; ++i) CHECK(y[i] == doctest::Approx(want[i]));
}

TEST_CASE("linear reference rejects bad arguments") {
  const I64 M = 3, K = 4, N = 2;
  std::vector<double> x(M * K), w(N * K), y(M * N), b(N);
  linear::ForwardArgs<double> f;
  f.epilogue = linear::Epilogue::kBiasSilu;
  f.x = host_view(x, {M, K});
  f.weight = host_view(w, {N, K});
  f.y = host_view(y, {M, N});
  expect_error(linear::cpu::forward(f), "bias is missing");
  f.bias = host_view(b, {N});
  f.y = TensorView<double>::device(y.data(), {M, N});
  expect_error(linear::cpu::forward(f), "expected host memory");
  f.y = TensorView<double>::strided(y.data(), {M, N}, {1, M}, Memory::kHost);
  expect_error(linear::cpu::forward(f), "unit stride");
  f.y = host_view(y, {M, N});
  f.pre = host_view(y, {M, N});
  expect_error(linear::cpu::forward(f), "different buffers");
}

TEST_CASE("layer fusion reference: qk_views finite-difference gradients") {
  const I64 R = 3, H = 2, dz = 5, Z = H * dz;
  auto z = test::random_normal(R * Z, 1, 1.3), gamma = test::random_normal(4 * Z, 2, 0.3),
       beta = test::random_normal(4 * Z, 3, 0.3);
  const auto g = test::random_normal(4 * R * Z, 4);
  // The four views packed as [R, 4, Z], as the authors lay them out.
  std::vector<double> views(4 * R * Z), dz_(R * Z), dgam(4 * Z), dbet(4 * Z);
  auto view = [&](double* base, int i) {
    return TensorView<double>::strided(base + i * Z, {R, Z}, {4 * Z, 1}, Memory::kHost);
  };
  auto forward = [&]() {
    qk_views::ForwardArgs<double> f;
    f.heads = H;
    f.z = host_view(z, {R, Z});
    f.gamma = host_view(gamma, {4, Z});
    f.beta = host_view(beta, {4, Z});
    f.q = view(views.data(), 0);
    f.k = view(views.data(), 1);
    f.aq = view(views.data(), 2);
    f.ak = view(views.data(), 3);
    REQUIRE(qk_views::cpu::forward(f).ok());
    return test::dot(views, g);
  };
  forward();
  // Each head of zn has unit mean square: the q view with gamma = beta = 0 would be zn / sqrt(dz).
  qk_views::BackwardArgs<double> b;
  b.heads = H;
  b.z = host_view(z, {R, Z});
  b.gamma = host_view(gamma, {4, Z});
  std::vector<double> gm(g);
  b.dq = view(gm.data(), 0);
  b.dk = view(gm.data(), 1);
  b.daq = view(gm.data(), 2);
  b.dak = view(gm.data(), 3);
  b.dz = host_view(dz_, {R, Z});
  b.dgamma = host_view(dgam, {4, Z});
  b.dbeta = host_view(dbet, {4, Z});
  REQUIRE(qk_views::cpu::backward(b).ok());
  test::check_gradient("z", z, dz_, forward);
  test::check_gradient("gamma", gamma, dgam, forward);
  test::check_gradient("beta", beta, dbet, forward);
}

TEST_CASE("layer fusion reference: qk_views matches the MEGA layer's formula") {
  const I64 R = 2, H = 2, dz = 4, Z = H * dz;
  const auto z = test::random_normal(R * Z, 5), gamma = test::random_normal(4 * Z, 6, 0.3),
             beta = test::random_normal(4 * Z, 7, 0.3);
  std::vector<double> out[4];
  for (auto& o : out) o.resize(R * Z);
  qk_views::ForwardArgs<double> f;
  f.heads = H;
  f.eps = 1e-5f;
  f.z = host_view(z, {R, Z});
  f.gamma = host_view(gamma, {4, Z});
  f.beta = host_view(beta, {4, Z});
  f.q = host_view(out[0], {R, Z});
  f.k = host_view(out[1], {R, Z});
  f.aq = host_view(out[2], {R, Z});
  f.ak = host_view(out[3], {R, Z});
  REQUIRE(qk_views::cpu::forward(f).ok());
  for (I64 r = 0; r < R; ++r)
    for (I64 h = 0; h < H; ++h) {
      double sq = 0;
      for (I64 c = 0; c < dz; ++c) sq += z[r * Z + h * dz + c] * z[r * Z + h * dz + c];
      const double rs = 1.0 / std::sqrt(sq / dz + static_cast<double>(1e-5f));
      for (I64 c = 0; c < dz; ++c)
        for (int i = 0; i < 4; ++i) {
          const I64 ch = h * dz + c;
          const double want = z[r * Z + ch] * rs * (gamma[i * Z + ch] + 1.0) / std::sqrt(double(dz)) + beta[i * Z + ch];
          CHECK(out[i][r * Z + ch] == doctest::Approx(want));
        }
    }
}

TEST_CASE("layer fusion reference: gated_combine finite-difference gradients") {
  const I64 R = 3, E = 4;
  for (bool silu : {false, true}) {
    for (bool awm_given : {false, true}) {
      CAPTURE(silu);
      CAPTURE(awm_given);
      auto sca = test::random_normal(R * E, 1), r = test::random_normal(R * E, 2, 2.0), awm = test::random_normal(R * E, 3);
      const auto g = test::random_normal(R * E, 4);
      std::vector<double> attn(R * E), dsca(R * E), dr(R * E), dawm(R * E), cs(E);
      auto forward = [&]() {
        gated_combine::ForwardArgs<double> f;
        f.silu_r = silu;
        f.sca = host_view(sca, {R, E});
        f.r = host_view(r, {R, E});
        if (awm_given) f.awm = host_view(awm, {R, E});
        f.attn = host_view(attn, {R, E});
        REQUIRE(gated_combine::cpu::forward(f).ok());
        return test::dot(attn, g);
      };
      forward();
      gated_combine::BackwardArgs<double> b;
      b.silu_r = silu;
      b.sca = host_view(sca, {R, E});
      b.r = host_view(r, {R, E});
      b.dattn = host_view(g, {R, E});
      b.dsca = host_view(dsca, {R, E});
      b.dr = host_view(dr, {R, E});
      b.dawm = host_view(dawm, {R, E});
      b.dr_colsum = host_view(cs, {E});
      REQUIRE(gated_combine::cpu::backward(b).ok());
      test::check_gradient("sca", sca, dsca, forward);
      test::check_gradient("r", r, dr, forward);
      if (awm_given) test::check_gradient("awm", awm, dawm, forward);
      for (I64 c = 0; c < E; ++c) {
        double s = 0;
        for (I64 i = 0; i < R; ++i) s += dr[i * E + c];
        CHECK(cs[c] == doctest::Approx(s));
      }
    }
  }
}

TEST_CASE("layer fusion reference: swiglu finite-difference gradients") {
  const I64 R = 3, F = 5;
  auto a = test::random_normal(R * F, 1, 2.0), bv = test::random_normal(R * F, 2);
  const auto g = test::random_normal(R * F, 3);
  std::vector<double> h(R * F), da(R * F), db(R * F);
  auto forward = [&]() {
    swiglu::ForwardArgs<double> f;
    f.a = host_view(a, {R, F});
    f.b = host_view(bv, {R, F});
    f.hidden = host_view(h, {R, F});
    REQUIRE(swiglu::cpu::forward(f).ok());
    return test::dot(h, g);
  };
  forward();
  for (I64 i = 0; i < R * F; ++i) CHECK(h[i] == doctest::Approx(layers::dense::silu(a[i]) * bv[i]));
  swiglu::BackwardArgs<double> b;
  b.a = host_view(a, {R, F});
  b.b = host_view(bv, {R, F});
  b.dhidden = host_view(g, {R, F});
  b.da = host_view(da, {R, F});
  b.db = host_view(db, {R, F});
  REQUIRE(swiglu::cpu::backward(b).ok());
  test::check_gradient("a", a, da, forward);
  test::check_gradient("b", bv, db, forward);
}

TEST_CASE("layer fusion references reject bad arguments") {
  std::vector<double> z(12), gm(8), v(12), cs(3);
  qk_views::ForwardArgs<double> f;
  f.heads = 0;
  f.z = host_view(z, {3, 4});
  expect_error(qk_views::cpu::forward(f), "heads must be >= 1");
  f.heads = 2;
  f.gamma = host_view(gm, {4, 2});
  expect_error(qk_views::cpu::forward(f), "gamma has shape");

  gated_combine::ForwardArgs<double> g;
  g.sca = host_view(z, {3, 4});
  g.r = host_view(v, {4, 3});
  g.attn = host_view(v, {3, 4});
  expect_error(gated_combine::cpu::forward(g), "r has shape");
  gated_combine::BackwardArgs<double> gb;
  gb.sca = gb.r = gb.dattn = host_view(z, {3, 4});
  gb.dsca = gb.dr = host_view(v, {3, 4});
  gb.dr_colsum = host_view(cs, {3});
  expect_error(gated_combine::cpu::backward(gb), "dr_colsum has shape");

  swiglu::BackwardArgs<double> s;
  s.dhidden = s.a = s.b = host_view(z, {3, 4});
  s.da = host_view(v, {3, 4});
  expect_error(swiglu::cpu::backward(s), "db is missing");
}
