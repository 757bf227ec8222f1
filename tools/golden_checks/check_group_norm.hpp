// Golden check: group RMSNorm (rms_affine, rms_noaffine) and group LayerNorm (ln_affine).
#pragma once

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/group_norm/reference.hpp"

namespace gecko::golden {

inline CaseResult check_group_norm(const testing::GoldenCase& gc) {
  CaseResult r;
  r.component = gc.meta("component");
  const auto kind = r.component == "group_layer_norm" ? group_norm::Kind::kLayer : group_norm::Kind::kRms;
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), D = gc.meta_int("D");
  const std::int64_t G = gc.meta_int("groups");
  const bool affine = gc.has("weight");
  auto x = gc.get<double>("x");
  auto w = affine ? gc.get<double>("weight") : std::vector<double>{};
  auto b = gc.has("bias") ? gc.get<double>("bias") : std::vector<double>{};
  auto dy = gc.get<double>("dout_y");
  std::vector<double> y(x.size()), dx(x.size()), dw(affine ? D : 0), db(b.empty() ? 0 : D);

  group_norm::ForwardArgs<double> f;
  f.kind = kind;
  f.groups = G;
  f.eps = static_cast<float>(gc.meta_double("eps"));
  f.x = host_view(x, {B, L, D});
  if (affine) f.weight = host_view(w, {D});
  if (!b.empty()) f.bias = host_view(b, {D});
  f.y = host_view(y, {B, L, D});
  throw_if_error(group_norm::cpu::forward(f));
  expect_tensor(gc, r, "y", y);

  group_norm::BackwardArgs<double> g;
  g.kind = kind;
  g.groups = G;
  g.eps = f.eps;
  g.x = f.x;
  g.weight = f.weight;
  g.dy = host_view(dy, {B, L, D});
  g.dx = host_view(dx, {B, L, D});
  if (affine) g.dweight = host_view(dw, {D});
  if (!db.empty()) g.dbias = host_view(db, {D});
  throw_if_error(group_norm::cpu::backward(g));
  expect_tensor(gc, r, "grad_x", dx);
  if (affine) expect_tensor(gc, r, "grad_weight", dw);
  if (!db.empty()) expect_tensor(gc, r, "grad_bias", db);
  return r;
}

}  // namespace gecko::golden
