// Complex EMA on the CPU: finite-difference gradients in double for x, the raw parameters and the
// carried state (with resets), the coefficient map on its own, streaming (one call == any split ==
// token by token, forward and backward), BOS semantics, float vs double, and clear errors for bad
// arguments.
#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <type_traits>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/cema/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

// A [B, n, D] window of a dense [B, L, D] buffer starting at step t0.
template <class T>
TensorView<T> steps(std::vector<std::remove_const_t<T>>& v, std::int64_t B, std::int64_t L, std::int64_t D,
                    std::int64_t t0, std::int64_t n) {
  return TensorView<T>::strided(v.data() + t0 * D, {B, n, D}, {L * D, D, 1}, Memory::kHost);
}

std::vector<std::uint8_t> mask_steps(const std::vector<std::uint8_t>& m, std::int64_t B, std::int64_t L,
                                     std::int64_t t0, std::int64_t n) {
  std::vector<std::uint8_t> out(B * n);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < n; ++t) out[b * n + t] = m[b * L + t0 + t];
  return out;
}

struct Case {
  std::int64_t B = 2, L = 9, D = 3, N = 4;
  bool bos = true, h0 = true, dh_out = true, residual = true;
};

struct Data {
  Case c;
  std::vector<double> x, alpha, delta, theta, gamma, h0, y, h, dy, dh;
  std::vector<double> dx, dalpha, ddelta, dtheta, dgamma, dh0;
  std::vector<std::uint8_t> bos;

  explicit Data(const Case& cs) : c(cs) {
    const auto BLD = c.B * c.L * c.D, DN = c.D * c.N, S = c.B * DN * 2;
    x = test::random_normal(BLD, 1);
    alpha = test::random_normal(DN, 2, 0.6);
    delta = test::random_normal(DN, 3, 0.6);
    theta = test::random_normal(c.D, 4, 1.0);
    gamma = test::random_normal(DN * 2, 5, 0.5);
    h0 = test::random_normal(S, 6, 0.7);
    dy = test::random_normal(BLD, 7);
    dh = test::random_normal(S, 8);
    bos.assign(c.B * c.L, 0);
    for (std::int64_t b = 0; b < c.B; ++b) {
      if (c.L > 5) bos[b * c.L + 2 + 3 * (b % 2)] = 1;  // a reset in the middle
      if (b == 1 && c.L > 1) bos[b * c.L] = 1;         // a reset at t = 0 hides h0
    }
    y.resize(BLD);
    dx.resize(BLD);
    h.resize(S);
    dh0.resize(S);
    dalpha.resize(DN);
    ddelta.resize(DN);
    dtheta.resize(c.D);
    dgamma.resize(DN * 2);
  }

  template <class Args>
  void common(Args& a) {
    a.add_residual = c.residual;
    a.x = host_view(x, {c.B, c.L, c.D});
    if (c.bos) a.bos_mask = host_view(bos, {c.B, c.L});
    if (c.h0) a.h0 = host_view(h0, {c.B, c.D, c.N, 2});
    a.alpha = host_view(alpha, {c.D, c.N});
    a.delta = host_view(delta, {c.D, c.N});
    a.theta = host_view(theta, {c.D});
    a.gamma = host_view(gamma, {c.D, c.N, 2});
  }

  double forward() {
    cema::ForwardArgs<double> f;
    common(f);
    f.y = host_view(y, {c.B, c.L, c.D});
    f.h_out = host_view(h, {c.B, c.D, c.N, 2});
    REQUIRE(cema::cpu::forward(f).ok());
    return test::dot(y, dy) + (c.dh_out ? test::dot(h, dh) : 0.0);
  }

  void backward() {
    cema::BackwardArgs<double> g;
    common(g);
    g.dy = host_view(dy, {c.B, c.L, c.D});
    if (c.dh_out) g.dh_out = host_view(dh, {c.B, c.D, c.N, 2});
    g.dx = host_view(dx, {c.B, c.L, c.D});
    g.dalpha = host_view(dalpha, {c.D, c.N});
    g.ddelta = host_view(ddelta, {c.D, c.N});
    g.dtheta = host_view(dtheta, {c.D});
    g.dgamma = host_view(dgamma, {c.D, c.N, 2});
    g.dh0 = host_view(dh0, {c.B, c.D, c.N, 2});
    REQUIRE(cema::cpu::backward(g).ok());
  }
};

void run_fd(const Case& c) {
  Data d(c);
  d.forward();
  d.backward();
  auto loss = [&] { return d.forward(); };
  test::check_gradient("x", d.x, d.dx, loss, 40);
  test::check_gradient("alpha", d.alpha, d.dalpha, loss);
  test::check_gradient("delta", d.delta, d.ddelta, loss);
  test::check_gradient("theta", d.theta, d.dtheta, loss);
  test::check_gradient("gamma", d.gamma, d.dgamma, loss);
  if (c.h0) test::check_gradient("h0", d.h0, d.dh0, loss, 40);
}

}  // namespace

TEST_CASE("cema gradients match finite differences") {
  SUBCASE("resets, carried state, state grad, residual") { run_fd(Case{}); }
  SUBCASE("no residual") {
    Case c;
    c.residual = false;
    run_fd(c);
  }
  SUBCASE("no masks, zero state, no state grad, N = 16") {
    Case c;
    c.N = 16;
    c.D = 2;
    c.bos = c.h0 = c.dh_out = false;
    run_fd(c);
  }
  SUBCASE("longer, batch 3, N = 1") {
    Case c;
    c.B = 3;
    c.L = 17;
    c.N = 1;
    run_fd(c);
  }
}

TEST_CASE("cema coefficients and their backward") {
  const std::int64_t D = 3, N = 5;
  auto alpha = test::random_normal(D * N, 1, 0.8), delta = test::random_normal(D * N, 2, 0.8);
  auto theta = test::random_normal(D, 3), gamma = test::random_normal(D * N * 2, 4);
  const auto dp = test::random_normal(D * N, 5), dq = test::random_normal(D * N * 2, 6);
  const auto dg = test::random_normal(D * N * 2, 7);
  std::vector<double> p(D * N), q(D * N * 2), g(D * N * 2);
  auto forward = [&] {
    cema::CoefficientArgs<double> a;
    a.alpha = host_view(alpha, {D, N});
    a.delta = host_view(delta, {D, N});
    a.theta = host_view(theta, {D});
    a.gamma = host_view(gamma, {D, N, 2});
    a.p = host_view(p, {D, N});
    a.q = host_view(q, {D, N, 2});
    a.g = host_view(g, {D, N, 2});
    REQUIRE(cema::cpu::coefficients(a).ok());
    return test::dot(p, dp) + test::dot(q, dq) + test::dot(g, dg);
  };
  forward();
  // The closed forms of spec 2.1.
  const double pi = 3.14159265358979323846;
  for (std::int64_t d = 0; d < D; ++d)
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t i = d * N + n;
      const double sa = 1 / (1 + std::exp(-alpha[i])), sd = 1 / (1 + std::exp(-delta[i]));
      const double phi = (n + 1) * 2 * pi / N / (1 + std::exp(-theta[d]));
      CHECK(p[i] == doctest::Approx(sa).epsilon(1e-14));
      CHECK(std::hypot(q[2 * i], q[2 * i + 1]) == doctest::Approx(1 - sa * sd).epsilon(1e-14));
      CHECK(std::remainder(std::atan2(q[2 * i + 1], q[2 * i]) - phi, 2 * pi) == doctest::Approx(0.0).epsilon(1e-12));
      CHECK(g[2 * i] == gamma[2 * i]);
      CHECK(g[2 * i + 1] == gamma[2 * i + 1]);
    }
  std::vector<double> da(D * N), dd(D * N), dt(D), dgam(D * N * 2);
  cema::CoefficientBackwardArgs<double> b;
  b.alpha = host_view(alpha, {D, N});
  b.delta = host_view(delta, {D, N});
  b.theta = host_view(theta, {D});
  b.dp = host_view(dp, {D, N});
  b.dq = host_view(dq, {D, N, 2});
  b.dg = host_view(dg, {D, N, 2});
  b.dalpha = host_view(da, {D, N});
  b.ddelta = host_view(dd, {D, N});
  b.dtheta = host_view(dt, {D});
  b.dgamma = host_view(dgam, {D, N, 2});
  REQUIRE(cema::cpu::coefficients_backward(b).ok());
  test::check_gradient("alpha", alpha, da, forward);
  test::check_gradient("delta", delta, dd, forward);
  test::check_gradient("theta", theta, dt, forward);
  test::check_gradient("gamma", gamma, dgam, forward);
  // Empty upstream gradients count as zero.
  b.dp = {};
  b.dq = {};
  b.dg = {};
  REQUIRE(cema::cpu::coefficients_backward(b).ok());
  for (double v : da) CHECK(v == 0.0);
  for (double v : dgam) CHECK(v == 0.0);
}

TEST_CASE("cema streams: one call == any split == token by token, forward and backward") {
  for (const bool with_bos : {false, true}) {
    CAPTURE(with_bos);
    Case c;
    c.L = 11;
    c.bos = with_bos;
    Data full(c);
    full.forward();
    full.backward();
    const auto B = c.B, L = c.L, D = c.D, N = c.N;

    auto run_chunks = [&](const std::vector<std::int64_t>& lens) {
      std::vector<double> y(B * L * D), dx(B * L * D), h = full.h0;
      std::vector<double> dalpha(D * N, 0.0), ddelta(D * N, 0.0), dtheta(D, 0.0), dgamma(D * N * 2, 0.0);
      struct Saved {
        std::int64_t t0, n;
        std::vector<double> h0;
        std::vector<std::uint8_t> bos;
      };
      std::vector<Saved> saved;
      std::int64_t t0 = 0;
      for (std::int64_t n : lens) {
        Saved s{t0, n, h, mask_steps(full.bos, B, L, t0, n)};
        cema::ForwardArgs<double> f;
        f.x = steps<const double>(full.x, B, L, D, t0, n);
        if (c.bos) f.bos_mask = host_view(s.bos, {B, n});
        f.h0 = host_view(h, {B, D, N, 2});
        f.h_out = host_view(h, {B, D, N, 2});  // in-place state update
        f.alpha = host_view(full.alpha, {D, N});
        f.delta = host_view(full.delta, {D, N});
        f.theta = host_view(full.theta, {D});
        f.gamma = host_view(full.gamma, {D, N, 2});
        f.y = steps<double>(y, B, L, D, t0, n);
        REQUIRE(cema::cpu::forward(f).ok());
        saved.push_back(std::move(s));
        t0 += n;
      }
      REQUIRE(t0 == L);
      GECKO_CHECK_CLOSE(y, full.y, 1e-13, "y");
      GECKO_CHECK_CLOSE(h, full.h, 1e-13, "h_out");

      std::vector<double> dh = full.dh, pa(D * N), pd(D * N), pt(D), pg(D * N * 2);
      for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
        cema::BackwardArgs<double> g;
        g.x = steps<const double>(full.x, B, L, D, it->t0, it->n);
        if (c.bos) g.bos_mask = host_view(it->bos, {B, it->n});
        g.h0 = host_view(it->h0, {B, D, N, 2});
        g.alpha = host_view(full.alpha, {D, N});
        g.delta = host_view(full.delta, {D, N});
        g.theta = host_view(full.theta, {D});
        g.gamma = host_view(full.gamma, {D, N, 2});
        g.dy = steps<const double>(full.dy, B, L, D, it->t0, it->n);
        g.dh_out = host_view(dh, {B, D, N, 2});
        g.dh0 = host_view(dh, {B, D, N, 2});  // may alias dh_out
        g.dx = steps<double>(dx, B, L, D, it->t0, it->n);
        g.dalpha = host_view(pa, {D, N});
        g.ddelta = host_view(pd, {D, N});
        g.dtheta = host_view(pt, {D});
        g.dgamma = host_view(pg, {D, N, 2});
        REQUIRE(cema::cpu::backward(g).ok());
        for (std::int64_t i = 0; i < D * N; ++i) dalpha[i] += pa[i], ddelta[i] += pd[i];
        for (std::int64_t i = 0; i < D; ++i) dtheta[i] += pt[i];
        for (std::int64_t i = 0; i < D * N * 2; ++i) dgamma[i] += pg[i];
      }
      GECKO_CHECK_CLOSE(dx, full.dx, 1e-12, "dx");
      GECKO_CHECK_CLOSE(dalpha, full.dalpha, 1e-12, "dalpha");
      GECKO_CHECK_CLOSE(ddelta, full.ddelta, 1e-12, "ddelta");
      GECKO_CHECK_CLOSE(dtheta, full.dtheta, 1e-12, "dtheta");
      GECKO_CHECK_CLOSE(dgamma, full.dgamma, 1e-12, "dgamma");
      GECKO_CHECK_CLOSE(dh, full.dh0, 1e-12, "dh0");
    };

    for (std::int64_t s = 0; s <= L; ++s) {
      CAPTURE(s);
      run_chunks({s, L - s});
    }
    run_chunks(std::vector<std::int64_t>(L, 1));
  }
}

TEST_CASE("cema: a BOS drops the carried state and everything before it") {
  Case c;
  c.B = 1;
  c.L = 10;
  Data d(c);
  d.bos.assign(c.L, 0);
  d.bos[4] = 1;
  d.forward();
  Case tail = c;
  tail.L = c.L - 4;
  tail.bos = tail.h0 = false;
  Data t(tail);
  for (std::int64_t i = 0; i < tail.L * c.D; ++i) t.x[i] = d.x[4 * c.D + i];
  t.alpha = d.alpha;
  t.delta = d.delta;
  t.theta = d.theta;
  t.gamma = d.gamma;
  t.forward();
  for (std::int64_t i = 0; i < tail.L * c.D; ++i) CHECK(t.y[i] == doctest::Approx(d.y[4 * c.D + i]).epsilon(1e-13));
  GECKO_CHECK_CLOSE(t.h, d.h, 1e-13, "h_out");
  // And the gradient of h0 stops at the BOS: only steps 0..3 reach it.
  d.backward();
  Data head(c);
  head.bos = d.bos;
  for (std::int64_t i = 4 * c.D; i < c.L * c.D; ++i) head.dy[i] = 0.0;  // loss only on steps before the BOS
  head.dh.assign(head.dh.size(), 0.0);
  head.backward();
  for (std::size_t i = 0; i < d.dh0.size(); ++i) CHECK(d.dh0[i] == doctest::Approx(head.dh0[i]).epsilon(1e-13));
}

TEST_CASE("cema in float matches the double reference") {
  Case c;
  c.L = 12;
  Data d(c);
  for (auto* v : {&d.x, &d.alpha, &d.delta, &d.theta, &d.gamma, &d.h0, &d.dy, &d.dh})
    *v = test::widen(test::narrow<float>(*v));
  d.forward();
  d.backward();
  const auto B = c.B, L = c.L, D = c.D, N = c.N;
  const auto x = test::narrow<float>(d.x), al = test::narrow<float>(d.alpha), de = test::narrow<float>(d.delta);
  const auto th = test::narrow<float>(d.theta), ga = test::narrow<float>(d.gamma), h0 = test::narrow<float>(d.h0);
  const auto dy = test::narrow<float>(d.dy), dh = test::narrow<float>(d.dh);
  std::vector<float> y(B * L * D), h(B * D * N * 2), dx(B * L * D), da(D * N), dd(D * N), dt(D), dg(D * N * 2),
      dh0(B * D * N * 2);
  cema::ForwardArgs<float> f;
  f.x = host_view(x, {B, L, D});
  f.bos_mask = host_view(d.bos, {B, L});
  f.h0 = host_view(h0, {B, D, N, 2});
  f.alpha = host_view(al, {D, N});
  f.delta = host_view(de, {D, N});
  f.theta = host_view(th, {D});
  f.gamma = host_view(ga, {D, N, 2});
  f.y = host_view(y, {B, L, D});
  f.h_out = host_view(h, {B, D, N, 2});
  REQUIRE(cema::cpu::forward(f).ok());
  GECKO_CHECK_CLOSE(y, d.y, 1e-6, "y");
  GECKO_CHECK_CLOSE(h, d.h, 1e-6, "h_out");
  cema::BackwardArgs<float> g;
  g.x = f.x;
  g.bos_mask = f.bos_mask;
  g.h0 = f.h0;
  g.alpha = f.alpha;
  g.delta = f.delta;
  g.theta = f.theta;
  g.gamma = f.gamma;
  g.dy = host_view(dy, {B, L, D});
  g.dh_out = host_view(dh, {B, D, N, 2});
  g.dx = host_view(dx, {B, L, D});
  g.dalpha = host_view(da, {D, N});
  g.ddelta = host_view(dd, {D, N});
  g.dtheta = host_view(dt, {D});
  g.dgamma = host_view(dg, {D, N, 2});
  g.dh0 = host_view(dh0, {B, D, N, 2});
  REQUIRE(cema::cpu::backward(g).ok());
  GECKO_CHECK_CLOSE(dx, d.dx, 1e-6, "dx");
  GECKO_CHECK_CLOSE(da, d.dalpha, 1e-6, "dalpha");
  GECKO_CHECK_CLOSE(dd, d.ddelta, 1e-6, "ddelta");
  GECKO_CHECK_CLOSE(dt, d.dtheta, 1e-6, "dtheta");
  GECKO_CHECK_CLOSE(dg, d.dgamma, 1e-6, "dgamma");
  GECKO_CHECK_CLOSE(dh0, d.dh0, 1e-6, "dh0");
}

TEST_CASE("cema rejects bad arguments with a message naming them") {
  const std::int64_t B = 2, L = 5, D = 3, N = 4;
  std::vector<float> x(B * L * D), y(B * L * D), pa(D * N), pt(D), pg(D * N * 2), h(B * D * N * 2), bad(64);
  std::vector<std::uint8_t> mask(B * L);
  auto has = [](const std::string& m, const char* what) {
    INFO("message: " << m);
    CHECK(m.find(what) != std::string::npos);
  };
  cema::ForwardArgs<float> f;
  auto msg = [&] { return cema::cpu::forward(f).message(); };
  f.x = host_view(x, {B, L, D});
  f.y = host_view(y, {B, L, D});
  has(msg(), "alpha is missing");
  f.alpha = host_view(pa, {D, N});
  f.delta = host_view(pa, {D, N});
  f.theta = host_view(pt, {D});
  f.gamma = host_view(pg, {D, N, 2});
  REQUIRE(cema::cpu::forward(f).ok());

  f.alpha = host_view(pa, {D * N});
  has(msg(), "alpha has shape [12], expected [*, *]");
  f.alpha = host_view(pa, {D, N});
  f.delta = host_view(pa, {N, D});
  has(msg(), "delta has shape [4, 3], expected [3, 4]");
  f.delta = host_view(pa, {D, N});
  f.theta = host_view(pt, {D, 1});
  has(msg(), "theta has shape [3, 1], expected [3]");
  f.theta = host_view(pt, {D});
  f.gamma = host_view(bad, {D, N, 3});
  has(msg(), "gamma has shape [3, 4, 3], expected [3, 4, 2]");
  f.gamma = TensorView<const float>::device(pg.data(), {D, N, 2});
  has(msg(), "gamma lives in device memory, expected host memory");
  f.gamma = host_view(pg, {D, N, 2});

  f.x = host_view(x, {B, D, L});
  has(msg(), "x has shape [2, 3, 5], expected last dimension D = 3 (from alpha)");
  f.x = TensorView<const float>::strided(x.data(), {B, L, D}, {L * D, 1, L}, Memory::kHost);
  has(msg(), "x must have unit stride");
  f.x = host_view(x, {B, L, D});
  f.y = host_view(y, {B, L - 1, D});
  has(msg(), "y has shape [2, 4, 3], expected [2, 5, 3]");
  f.y = host_view(y, {B, L, D});

  f.bos_mask = host_view(mask, {L, B});
  has(msg(), "bos_mask has shape [5, 2], expected [2, 5]");
  f.bos_mask = host_view(mask, {B, L});
  f.h0 = host_view(bad, {B, D, N});
  has(msg(), "h0 has shape [2, 3, 4], expected [2, 3, 4, 2]");
  f.h0 = host_view(h, {B, D, N, 2});
  f.h_out = host_view(bad, {B, N, D, 2});
  has(msg(), "h_out has shape [2, 4, 3, 2]");
  f.h_out = TensorView<float>::device(h.data(), {B, D, N, 2});
  has(msg(), "h_out lives in device memory");
  f.h_out = host_view(h, {B, D, N, 2});
  REQUIRE(cema::cpu::forward(f).ok());

  cema::BackwardArgs<float> g;
  std::vector<float> dx(B * L * D), dy(B * L * D), dpa(D * N);
  auto bmsg = [&] { return cema::cpu::backward(g).message(); };
  g.x = f.x;
  g.alpha = f.alpha;
  g.delta = f.delta;
  g.theta = f.theta;
  g.gamma = f.gamma;
  has(bmsg(), "dy is missing");
  g.dy = host_view(dy, {B, L, D});
  has(bmsg(), "dx is missing");
  g.dx = host_view(dx, {B, L, D});
  REQUIRE(cema::cpu::backward(g).ok());  // every parameter gradient is optional
  g.dalpha = host_view(dpa, {N, D});
  has(bmsg(), "dalpha has shape [4, 3], expected [3, 4]");
  g.dalpha = {};
  g.dh0 = host_view(bad, {B, D, N});
  has(bmsg(), "dh0 has shape [2, 3, 4]");
  g.dh0 = {};
  g.dh_out = host_view(bad, {B, D, N});
  has(bmsg(), "dh_out has shape [2, 3, 4]");

  cema::CoefficientArgs<float> ca;
  std::vector<float> p(D * N), q(D * N * 2);
  ca.alpha = f.alpha;
  ca.delta = f.delta;
  ca.theta = f.theta;
  ca.gamma = f.gamma;
  ca.p = host_view(p, {D, N});
  ca.q = host_view(q, {D, N});
  ca.g = host_view(q, {D, N, 2});
  has(cema::cpu::coefficients(ca).message(), "q has shape [3, 4], expected [3, 4, 2]");
  cema::CoefficientBackwardArgs<float> cb;
  cb.alpha = f.alpha;
  cb.delta = f.delta;
  cb.theta = f.theta;
  cb.dalpha = host_view(dpa, {D, N});
  cb.ddelta = host_view(dpa, {D, N});
  cb.dtheta = host_view(pt, {D});
  has(cema::cpu::coefficients_backward(cb).message(), "dgamma is missing");
}
