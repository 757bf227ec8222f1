// Golden check: the MEGA layer (mega_basic, mega_segments), its streaming inference
// (mega_decode) and the normalized feed-forward network (nffn_basic).
//
// Parameters load from the golden file by the authors' names through ParameterSet::load, so this
// also checks that a checkpoint of theirs loads as is. The config comes from the metadata; the
// timestep norm runs with BetaPrecision::kReferenceFloat32 (the authors' float32 beta, see
// check_timestep_norm.hpp): with kExact the layer's gradients move by ~1e-5..1e-4 relative.
// mega_decode feeds the 32-token prefix in one call, then 20 single tokens through one State, and
// compares the concatenated outputs with theirs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/layers/mega/reference.hpp"
#include "gecko/layers/nffn/reference.hpp"

namespace gecko::golden {

namespace detail {

inline std::int64_t meta_or(const testing::GoldenCase& gc, const std::string& key, std::int64_t fallback) {
  return gc.has_meta(key) ? gc.meta_int(key) : fallback;
}

// The MEGA cases' sizes, with the authors' defaults where the metadata is silent (eps, RMSNorm
// groups, every head rotating).
inline layers::GeckoConfig mega_config(const testing::GoldenCase& gc, timestep_norm::BetaPrecision precision) {
  layers::GeckoConfig c;
  c.model_dim = gc.meta_int("mdim");
  c.z_dim = gc.meta_int("zdim");
  c.value_dim = gc.meta_int("hdim");
  c.num_heads = gc.meta_int("num_heads");
  c.cema_ndim = gc.meta_int("ndim");
  c.chunk_size = gc.meta_int("chunk_size");
  c.timenorm_num_groups = gc.meta_int("timenorm_num_groups");
  c.timenorm_beta1 = gc.meta_double("timenorm_beta1");
  c.timenorm_beta2 = gc.meta_double("timenorm_beta2");
  c.timenorm_beta_precision = precision;
  c.layernorm_num_groups = meta_or(gc, "rmsnorm_num_groups", 1);
  c.norm_eps = gc.has_meta("norm_eps") ? static_cast<float>(gc.meta_double("norm_eps")) : 1e-5f;
  c.rope_base = gc.meta_double("rope_base");
  c.num_rope_heads = gc.has_meta("num_rope_heads") ? static_cast<int>(gc.meta_int("num_rope_heads"))
                                                    : layers::kAllRopeHeads;
  return c;
}

// Every output and gradient the case stores must have been compared: a tensor the checker does
// not know (a parameter added upstream, say) fails the case instead of passing silently.
inline void require_all_compared(const testing::GoldenCase& gc, const CaseResult& r) {
  for (const auto& t : gc.file().tensors) {
    const bool result = t.name == "out" || t.name.rfind("out_", 0) == 0 || t.name.rfind("grad_", 0) == 0;
    if (!result) continue;
    bool seen = false;
    for (const auto& c : r.tensors) seen = seen || c.name == t.name;
    if (!seen) throw Error(gc.path() + ": stored tensor '" + t.name + "' has no counterpart in the checker");
  }
}

}  // namespace detail

inline CaseResult check_mega_layer(const testing::GoldenCase& gc,
                                   timestep_norm::BetaPrecision precision =
                                       timestep_norm::BetaPrecision::kReferenceFloat32) {
  namespace mega = layers::mega;
  CaseResult r;
  r.component = gc.meta("component");
  const auto c = detail::mega_config(gc, precision);
  auto params = mega::make_parameters(c);
  throw_if_error(params.load(gc.file()));
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), D = c.model_dim;
  const auto x = gc.get<double>("x"), dout = gc.get<double>("dout_out");
  const auto bos = gc.has("bos_mask") ? gc.get<std::uint8_t>("bos_mask") : std::vector<std::uint8_t>{};
  const auto seg = gc.has("segment_idx") ? gc.get<std::int64_t>("segment_idx") : std::vector<std::int64_t>{};

  std::vector<double> out(B * L * D), dx(B * L * D);
  mega::ForwardArgs<double> f;
  f.x = host_view(x, {B, L, D});
  if (!bos.empty()) f.bos_mask = host_view(bos, {B, L});
  if (!seg.empty()) f.segment_idx = host_view(seg, {B, L});
  f.out = host_view(out, {B, L, D});
  throw_if_error(mega::cpu::forward(c, params, f));
  expect_tensor(gc, r, "out", out);

  auto grads = params.zeros_like();
  mega::BackwardArgs<double> g;
  g.x = f.x;
  g.bos_mask = f.bos_mask;
  g.segment_idx = f.segment_idx;
  g.dout = host_view(dout, {B, L, D});
  g.dx = host_view(dx, {B, L, D});
  throw_if_error(mega::cpu::backward(c, params, g, grads));
  expect_tensor(gc, r, "grad_x", dx);
  for (const auto& name : grads.names()) expect_tensor(gc, r, "grad_" + name, grads.find(name)->data);
  detail::require_all_compared(gc, r);
  return r;
}

inline CaseResult check_mega_decode(const testing::GoldenCase& gc,
                                    timestep_norm::BetaPrecision precision =
                                        timestep_norm::BetaPrecision::kReferenceFloat32) {
  namespace mega = layers::mega;
  CaseResult r;
  r.component = gc.meta("component");
  const auto c = detail::mega_config(gc, precision);
  auto params = mega::make_parameters(c);
  throw_if_error(params.load(gc.file()));
  const std::int64_t B = gc.meta_int("B"), prefix = gc.meta_int("prefix"), steps = gc.meta_int("steps");
  const std::int64_t L = prefix + steps, D = c.model_dim;
  const auto x = gc.get<double>("x");
  std::vector<double> out(B * L * D);
  // Rows [t0, t0 + n) of x and out as strided views of the full tensors.
  auto rows_in = [&](std::int64_t t0, std::int64_t n) {
    return TensorView<const double>::strided(x.data() + t0 * D, {B, n, D}, {L * D, D, 1}, Memory::kHost);
  };
  auto rows_out = [&](std::int64_t t0, std::int64_t n) {
    return TensorView<double>::strided(out.data() + t0 * D, {B, n, D}, {L * D, D, 1}, Memory::kHost);
  };
  mega::State state;
  mega::ForwardArgs<double> f;
  f.x = rows_in(0, prefix);
  f.out = rows_out(0, prefix);
  throw_if_error(mega::cpu::forward(c, params, f, &state));
  for (std::int64_t t = prefix; t < L; ++t) {
    f.x = rows_in(t, 1);
    f.out = rows_out(t, 1);
    throw_if_error(mega::cpu::forward(c, params, f, &state));
  }
  expect_tensor(gc, r, "out", out);
  if (gc.has("out_full_call")) {  // one call over everything, when L is a chunk multiple
    std::vector<double> full(B * L * D);
    f.x = host_view(x, {B, L, D});
    f.out = host_view(full, {B, L, D});
    throw_if_error(mega::cpu::forward(c, params, f));
    expect_tensor(gc, r, "out_full_call", full);
  }
  detail::require_all_compared(gc, r);
  return r;
}

inline CaseResult check_nffn(const testing::GoldenCase& gc) {
  namespace nffn = layers::nffn;
  CaseResult r;
  r.component = gc.meta("component");
  layers::GeckoConfig c;
  c.model_dim = gc.meta_int("D");
  c.ffn_hidden_dim = gc.meta_int("hidden");
  c.layernorm_num_groups = detail::meta_or(gc, "norm_num_groups", 1);
  c.norm_eps = gc.has_meta("norm_eps") ? static_cast<float>(gc.meta_double("norm_eps")) : 1e-5f;
  if (gc.has_meta("swiglu") && !gc.meta_bool("swiglu")) throw Error("nffn: only the SwiGLU network is implemented");
  auto params = nffn::make_parameters(c);
  throw_if_error(params.load(gc.file()));
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), D = c.model_dim;
  const auto x = gc.get<double>("x"), dout = gc.get<double>("dout_out");
  std::vector<double> out(B * L * D), dx(B * L * D);
  nffn::ForwardArgs<double> f;
  f.x = host_view(x, {B, L, D});
  f.out = host_view(out, {B, L, D});
  throw_if_error(nffn::cpu::forward(c, params, f));
  expect_tensor(gc, r, "out", out);
  auto grads = params.zeros_like();
  nffn::BackwardArgs<double> g;
  g.x = f.x;
  g.dout = host_view(dout, {B, L, D});
  g.dx = host_view(dx, {B, L, D});
  throw_if_error(nffn::cpu::backward(c, params, g, grads));
  expect_tensor(gc, r, "grad_x", dx);
  for (const auto& name : grads.names()) expect_tensor(gc, r, "grad_" + name, grads.find(name)->data);
  detail::require_all_compared(gc, r);
  return r;
}

}  // namespace gecko::golden
