// Golden check: timestep decay norm (tsdn_basic, tsdn_bos_prev, tsdn_default_betas).
//
// The authors' forward rounds beta to float32 (spec erratum), so the checker runs the forward and
// the backward's replay with BetaPrecision::kReferenceFloat32; the adjoint uses exact beta either
// way, like theirs. Passing kExact measures how far the model as written is from their numbers.
#pragma once

#include <cstdint>
#include <vector>

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/timestep_norm/reference.hpp"

namespace gecko::golden {

inline CaseResult check_timestep_norm(const testing::GoldenCase& gc,
                                      timestep_norm::BetaPrecision precision =
                                          timestep_norm::BetaPrecision::kReferenceFloat32) {
  CaseResult r;
  r.component = gc.meta("component");
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), D = gc.meta_int("D");
  const std::int64_t G = gc.meta_int("groups");
  auto x = gc.get<double>("x");
  auto w = gc.has("weight") ? gc.get<double>("weight") : std::vector<double>{};
  auto b = gc.has("bias") ? gc.get<double>("bias") : std::vector<double>{};
  auto bos = gc.has("bos_mask") ? gc.get<std::uint8_t>("bos_mask") : std::vector<std::uint8_t>{};
  const bool carried = gc.has("prev_count");
  auto prev_count = carried ? gc.get<std::int64_t>("prev_count") : std::vector<std::int64_t>{};
  auto prev_mean = carried ? gc.get<double>("prev_mean") : std::vector<double>{};
  auto prev_var = carried ? gc.get<double>("prev_var") : std::vector<double>{};
  auto dy = gc.get<double>("dout_y");
  auto dmean = gc.has("dout_mean") ? gc.get<double>("dout_mean") : std::vector<double>{};
  auto dvar = gc.has("dout_var") ? gc.get<double>("dout_var") : std::vector<double>{};
  std::vector<double> y(x.size()), mean(B * G), var(B * G), dx(x.size()), dw(w.empty() ? 0 : D), db(D);
  std::vector<double> dprev_mean(B * G), dprev_var(B * G);
  std::vector<std::int64_t> count(B);

  timestep_norm::ForwardArgs<double> f;
  f.groups = G;
  f.beta1 = gc.meta_double("beta1");
  f.beta2 = gc.meta_double("beta2");
  f.eps = static_cast<float>(gc.meta_double("eps"));
  f.beta_precision = precision;
  f.x = host_view(x, {B, L, D});
  if (!w.empty()) f.weight = host_view(w, {D});
  if (!b.empty()) f.bias = host_view(b, {D});
  if (!bos.empty()) f.bos_mask = host_view(bos, {B, L});
  if (carried) {
    f.prev_count = host_view(prev_count, {B});
    f.prev_mean = host_view(prev_mean, {B, G});
    f.prev_var = host_view(prev_var, {B, G});
  }
  f.y = host_view(y, {B, L, D});
  f.count = host_view(count, {B});
  f.mean = host_view(mean, {B, G});
  f.var = host_view(var, {B, G});
  throw_if_error(timestep_norm::cpu::forward(f));
  expect_tensor(gc, r, "y", y);
  expect_tensor(gc, r, "count", std::vector<double>(count.begin(), count.end()));
  expect_tensor(gc, r, "mean", mean);
  expect_tensor(gc, r, "var", var);

  timestep_norm::BackwardArgs<double> g;
  g.groups = G;
  g.beta1 = f.beta1;
  g.beta2 = f.beta2;
  g.eps = f.eps;
  g.beta_precision = precision;
  g.x = f.x;
  g.weight = f.weight;
  g.bos_mask = f.bos_mask;
  g.prev_count = f.prev_count;
  g.prev_mean = f.prev_mean;
  g.prev_var = f.prev_var;
  g.dy = host_view(dy, {B, L, D});
  if (!dmean.empty()) g.dmean = host_view(dmean, {B, G});
  if (!dvar.empty()) g.dvar = host_view(dvar, {B, G});
  g.dx = host_view(dx, {B, L, D});
  if (!w.empty()) g.dweight = host_view(dw, {D});
  g.dbias = host_view(db, {D});
  g.dprev_mean = host_view(dprev_mean, {B, G});
  g.dprev_var = host_view(dprev_var, {B, G});
  throw_if_error(timestep_norm::cpu::backward(g));
  expect_tensor(gc, r, "grad_x", dx);
  if (gc.has("grad_weight")) expect_tensor(gc, r, "grad_weight", dw);
  if (gc.has("grad_bias")) expect_tensor(gc, r, "grad_bias", db);
  if (gc.has("grad_prev_mean")) expect_tensor(gc, r, "grad_prev_mean", dprev_mean);
  if (gc.has("grad_prev_var")) expect_tensor(gc, r, "grad_prev_var", dprev_var);
  return r;
}

}  // namespace gecko::golden
