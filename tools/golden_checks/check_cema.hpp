// Golden check: complex EMA (cema_basic, cema_bos_h0).
//
// The authors' vectors are channel-major (x, y: [B, D, L]); gecko's op is time-major [B, L, D], so
// the checker transposes x and dy in and y and dx out. Their y and grad_x include the residual
// (module output = scan + x), as gecko's fused add_residual does.
#pragma once

#include <cstdint>
#include <vector>

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/cema/reference.hpp"

namespace gecko::golden {

namespace detail {

// [B, P, Q] -> [B, Q, P]
inline std::vector<double> swap_last_two(const std::vector<double>& v, std::int64_t B, std::int64_t P,
                                         std::int64_t Q) {
  std::vector<double> out(v.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < P; ++i)
      for (std::int64_t j = 0; j < Q; ++j) out[(b * Q + j) * P + i] = v[(b * P + i) * Q + j];
  return out;
}

}  // namespace detail

inline CaseResult check_cema(const testing::GoldenCase& gc) {
  CaseResult r;
  r.component = gc.meta("component");
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), D = gc.meta_int("D"), N = gc.meta_int("N");
  const auto x = detail::swap_last_two(gc.get<double>("x"), B, D, L);  // -> [B, L, D]
  const auto dy = detail::swap_last_two(gc.get<double>("dout_y"), B, D, L);
  const auto alpha = gc.get<double>("alpha"), delta = gc.get<double>("delta");
  const auto theta = gc.get<double>("theta"), gamma = gc.get<double>("gamma");
  const auto bos = gc.has("bos_mask") ? gc.get<std::uint8_t>("bos_mask") : std::vector<std::uint8_t>{};
  const auto h0 = gc.has("h0") ? gc.get<double>("h0") : std::vector<double>{};
  const auto dh = gc.has("dout_h") ? gc.get<double>("dout_h") : std::vector<double>{};

  std::vector<double> p(D * N), q(D * N * 2), g(D * N * 2);
  cema::CoefficientArgs<double> c;
  c.alpha = host_view(alpha, {D, N});
  c.delta = host_view(delta, {D, N});
  c.theta = host_view(theta, {D});
  c.gamma = host_view(gamma, {D, N, 2});
  c.p = host_view(p, {D, N});
  c.q = host_view(q, {D, N, 2});
  c.g = host_view(g, {D, N, 2});
  throw_if_error(cema::cpu::coefficients(c));
  expect_tensor(gc, r, "coef_p", p);
  expect_tensor(gc, r, "coef_q", q);
  expect_tensor(gc, r, "coef_gamma", g);

  std::vector<double> y(x.size()), h(B * D * N * 2);
  cema::ForwardArgs<double> f;
  f.x = host_view(x, {B, L, D});
  if (!bos.empty()) f.bos_mask = host_view(bos, {B, L});
  if (!h0.empty()) f.h0 = host_view(h0, {B, D, N, 2});
  f.alpha = c.alpha;
  f.delta = c.delta;
  f.theta = c.theta;
  f.gamma = c.gamma;
  f.y = host_view(y, {B, L, D});
  f.h_out = host_view(h, {B, D, N, 2});
  throw_if_error(cema::cpu::forward(f));
  expect_tensor(gc, r, "y", detail::swap_last_two(y, B, L, D));
  expect_tensor(gc, r, "h", h);

  std::vector<double> dx(x.size()), dalpha(D * N), ddelta(D * N), dtheta(D), dgamma(D * N * 2), dh0(B * D * N * 2);
  cema::BackwardArgs<double> bw;
  bw.x = f.x;
  bw.bos_mask = f.bos_mask;
  bw.h0 = f.h0;
  bw.alpha = f.alpha;
  bw.delta = f.delta;
  bw.theta = f.theta;
  bw.gamma = f.gamma;
  bw.dy = host_view(dy, {B, L, D});
  if (!dh.empty()) bw.dh_out = host_view(dh, {B, D, N, 2});
  bw.dx = host_view(dx, {B, L, D});
  bw.dalpha = host_view(dalpha, {D, N});
  bw.ddelta = host_view(ddelta, {D, N});
  bw.dtheta = host_view(dtheta, {D});
  bw.dgamma = host_view(dgamma, {D, N, 2});
  bw.dh0 = host_view(dh0, {B, D, N, 2});
  throw_if_error(cema::cpu::backward(bw));
  expect_tensor(gc, r, "grad_x", detail::swap_last_two(dx, B, L, D));
  expect_tensor(gc, r, "grad_alpha", dalpha);
  expect_tensor(gc, r, "grad_delta", ddelta);
  expect_tensor(gc, r, "grad_theta", dtheta);
  expect_tensor(gc, r, "grad_gamma", dgamma);
  if (gc.has("grad_h0")) expect_tensor(gc, r, "grad_h0", dh0);
  return r;
}

}  // namespace gecko::golden
