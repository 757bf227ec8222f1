// The normalized SwiGLU feed-forward on the GPU (layers/nffn/args.hpp), forward and backward with
// every parameter gradient: on its own (feedforward_plan / _forward / _backward below, parameters
// named as the authors' module has them, under an optional prefix) and as the second half of the
// Gecko block (block.cuh runs the same two steps with the prefix "nffn.").
//
//   u = layernorm(x); a = fc1(u); b = fc3(u); hidden = silu(a) * b; out = fc2(hidden) + x
//
// Position-wise: any number of tokens. As the block, it works in two caller-owned regions (what the
// forward keeps for the backward, and scratch) whose sizes feedforward_plan returns.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "gecko/layers/config.hpp"
#include "gecko/layers/cuda/arena.hpp"
#include "gecko/layers/cuda/device_parameters.cuh"
#include "gecko/layers/cuda/linear_steps.cuh"
#include "gecko/layers/cuda/plan.cuh"
#include "gecko/layers/cuda/stage.cuh"
#include "gecko/layers/nffn/args.hpp"
#include "gecko/ops/group_norm/launch.cuh"
#include "gecko/ops/swiglu/launch.cuh"

namespace gecko::layers::cuda {

// What the forward keeps for the backward: u [rows, D]; a, b, hidden [rows, F].
template <class T>
struct FfnActivations {
  T *u = nullptr, *a = nullptr, *b = nullptr, *hidden = nullptr;
  static FfnActivations carve(Arena& act, std::int64_t rows, std::int64_t D, std::int64_t F) {
    FfnActivations s;
    const std::size_t r = static_cast<std::size_t>(rows);
    s.u = act.take<T>(r * D);
    s.a = act.take<T>(r * F);
    s.b = act.take<T>(r * F);
    s.hidden = act.take<T>(r * F);
    return s;
  }
};

// Scratch of the backward: dhidden, da, db [rows, >= F] and du [rows, D].
template <class T>
struct FfnScratch {
  T *dhidden = nullptr, *da = nullptr, *db = nullptr, *du = nullptr;
};

namespace detail {

// out = ffn(x) + x for `rows` tokens of D features (dense rows).
template <class T>
Status ffn_forward_steps(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                         const std::string& np, std::int64_t R, const T* x, T* out, const FfnActivations<T>& s,
                         Arena& ws, cudaStream_t st) {
  const std::int64_t D = c.model_dim, F = c.ffn_hidden_dim;
  group_norm::ForwardArgs<T> ln;
  ln.kind = group_norm::Kind::kLayer;
  ln.groups = c.layernorm_num_groups;
  ln.eps = c.norm_eps;
  ln.x = TensorView<const T>::device(x, {R, D});
  ln.weight = P.t(np + "norm.weight");
  ln.bias = P.t(np + "norm.bias");
  ln.y = TensorView<T>::device(s.u, {R, D});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return group_norm::cuda::forward(ln, st); }));
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kNone, s.u, R, D, P.t(np + "fc1.weight"), {},
                                          s.a, F, nullptr, st));
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kNone, s.u, R, D, P.t(np + "fc3.weight"), {},
                                          s.b, F, nullptr, st));
  swiglu::ForwardArgs<T> sw;
  sw.a = TensorView<const T>::device(s.a, {R, F});
  sw.b = TensorView<const T>::device(s.b, {R, F});
  sw.hidden = TensorView<T>::device(s.hidden, {R, F});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return swiglu::cuda::forward(sw, st); }));
  return linear_forward<T>(ctx, ws, linear::Epilogue::kNone, s.hidden, R, F, P.t(np + "fc2.weight"), {}, out, D,
                           nullptr, st, x);
}

// dx = d(ffn(x) + x)/dx · dout (the residual's dout included) and the five parameter gradients
// (overwritten), from the forward's activations.
template <class T, class Grads>
Status ffn_backward_steps(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                          const Grads& G, const std::string& np, std::int64_t R, const T* x,
                          const FfnActivations<T>& s, const T* dout, T* dx, const FfnScratch<T>& g, Arena& ws,
                          cudaStream_t st) {
  const std::int64_t D = c.model_dim, F = c.ffn_hidden_dim;
  const auto none = linear::Epilogue::kNone;
  // dhidden = dout fc2 ; dfc2 = dout^T hidden
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, none, s.hidden, R, F, P.t(np + "fc2.weight"), nullptr, dout, D,
                                           g.dhidden, false, G.g(np + "fc2.weight"), {}, st));
  swiglu::BackwardArgs<T> sb;
  sb.a = TensorView<const T>::device(s.a, {R, F});
  sb.b = TensorView<const T>::device(s.b, {R, F});
  sb.dhidden = TensorView<const T>::device(g.dhidden, {R, F});
  sb.da = TensorView<T>::device(g.da, {R, F});
  sb.db = TensorView<T>::device(g.db, {R, F});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return swiglu::cuda::backward(sb, st); }));
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, none, s.u, R, D, P.t(np + "fc1.weight"), nullptr, g.da, F, g.du,
                                           false, G.g(np + "fc1.weight"), {}, st));
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, none, s.u, R, D, P.t(np + "fc3.weight"), nullptr, g.db, F, g.du,
                                           true, G.g(np + "fc3.weight"), {}, st));
  group_norm::BackwardArgs<T> lb;
  lb.kind = group_norm::Kind::kLayer;
  lb.groups = c.layernorm_num_groups;
  lb.eps = c.norm_eps;
  lb.x = TensorView<const T>::device(x, {R, D});
  lb.weight = P.t(np + "norm.weight");
  lb.dy = TensorView<const T>::device(g.du, {R, D});
  lb.dx = TensorView<T>::device(dx, {R, D});
  lb.dx_add = TensorView<const T>::device(dout, {R, D});  // + the residual path
  lb.dweight = G.g(np + "norm.weight");
  lb.dbias = G.g(np + "norm.bias");
  return stage(
      ws, [&](std::size_t& b) { return group_norm::cuda::backward_workspace_size(lb, b); },
      [&](void* p, std::size_t b) { return group_norm::cuda::backward(lb, p, b, st); });
}

// x: a [B, L, D] dense device tensor of the configuration's width.
template <class T>
Status check_x(const GeckoConfig& c, const TensorView<const T>& x) {
  if (x.empty() || x.rank != 3) return invalid_argument("x must be a [B, L, D] device tensor, got " + x.shape_string());
  if (x.size(2) != c.model_dim)
    return invalid_argument("x has D=" + std::to_string(x.size(2)) + ", expected config.model_dim=" +
                            std::to_string(c.model_dim));
  GECKO_RETURN_IF_ERROR(check_memory(x, "x", Memory::kDevice));
  return check_contiguous(x, "x");
}

// out, dout, dx: x's shape, dense, on the device.
template <class V, class T>
Status check_like_x(const TensorView<V>& t, const char* name, const TensorView<const T>& x) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {x.size(0), x.size(1), x.size(2)}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, Memory::kDevice));
  return check_contiguous(t, name);
}

// Every parameter (and gradient, when given) the network reads, with the shapes of the config.
template <class T>
Status check_ffn_parameters(const GeckoConfig& c, const DeviceParameters<T>& P, const DeviceGradients* G,
                            const std::string& np) {
  for (const auto& spec : nffn::parameter_specs(c)) {
    const std::string name = np + spec.name;
    const TensorView<const T> w = P.t(name);
    if (w.empty()) return invalid_argument("feed-forward: parameter '" + name + "' is missing");
    bool same = w.rank == static_cast<int>(spec.shape.size());
    for (int k = 0; same && k < w.rank; ++k) same = w.shape[k] == spec.shape[k];
    if (!same)
      return invalid_argument("feed-forward: parameter '" + name + "' has shape " + w.shape_string() +
                              ", the configuration expects another (model_dim, ffn_hidden_dim)");
    if (G && G->g(name).empty()) return invalid_argument("feed-forward: gradient '" + name + "' is missing");
  }
  return Status::success();
}

}  // namespace detail

// Sizes of the activation and workspace regions for calls of x's shape (pointers unused).
template <class T>
Status feedforward_plan(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                        const TensorView<const T>& x, BlockPlan& plan, const std::string& prefix = "") {
  GECKO_RETURN_IF_ERROR(detail::check_x(c, x));
  GECKO_RETURN_IF_ERROR(detail::check_ffn_parameters(c, P, nullptr, prefix));
  const std::int64_t R = x.size(0) * x.size(1), D = c.model_dim, F = c.ffn_hidden_dim;
  auto fake = Arena::measure();  // distinct fake addresses: the ops check what may alias
  const T* xp = fake.take<T>(static_cast<std::size_t>(R * D));
  T* out = fake.take<T>(static_cast<std::size_t>(R * D));
  const T* dout = fake.take<T>(static_cast<std::size_t>(R * D));
  T* dx = fake.take<T>(static_cast<std::size_t>(R * D));
  auto act = Arena::measure(), ws = Arena::measure();
  const auto s = FfnActivations<T>::carve(act, R, D, F);
  GECKO_RETURN_IF_ERROR(detail::ffn_forward_steps<T>(ctx, c, P, prefix, R, xp, out, s, ws, nullptr));
  auto ws2 = Arena::measure();
  FfnScratch<T> g;
  g.dhidden = ws2.take<T>(static_cast<std::size_t>(R * F));
  g.da = ws2.take<T>(static_cast<std::size_t>(R * F));
  g.db = ws2.take<T>(static_cast<std::size_t>(R * F));
  g.du = ws2.take<T>(static_cast<std::size_t>(R * D));
  const detail::MeasuringGradients grads(nffn::parameter_specs(c), prefix);
  GECKO_RETURN_IF_ERROR(detail::ffn_backward_steps<T>(ctx, c, P, grads, prefix, R, xp, s, dout, dx, g, ws2, nullptr));
  plan.activation_bytes = act.peak();
  plan.workspace_bytes = std::max(ws.peak(), ws2.peak());
  return Status::success();
}

// out = ffn(x) + x; the activation region keeps what feedforward_backward needs.
template <class T>
Status feedforward_forward(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                           const TensorView<const T>& x, const TensorView<T>& out, void* activations,
                           std::size_t activation_bytes, void* workspace, std::size_t workspace_bytes,
                           cudaStream_t stream, const std::string& prefix = "") {
  GECKO_RETURN_IF_ERROR(detail::check_x(c, x));
  GECKO_RETURN_IF_ERROR(detail::check_like_x(out, "out", x));
  GECKO_RETURN_IF_ERROR(detail::check_ffn_parameters(c, P, nullptr, prefix));
  const std::int64_t R = x.size(0) * x.size(1);
  Arena act(activations, activation_bytes), ws(workspace, workspace_bytes);
  const auto s = FfnActivations<T>::carve(act, R, c.model_dim, c.ffn_hidden_dim);
  GECKO_RETURN_IF_ERROR(act.status("activation"));
  return detail::ffn_forward_steps<T>(ctx, c, P, prefix, R, x.data, out.data, s, ws, stream);
}

// dx and the five parameter gradients (overwritten in grads), from dout and the activations of
// the forward of the same x.
template <class T>
Status feedforward_backward(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                            const DeviceGradients& grads, const TensorView<const T>& x, const TensorView<const T>& dout,
                            const TensorView<T>& dx, void* activations, std::size_t activation_bytes, void* workspace,
                            std::size_t workspace_bytes, cudaStream_t stream, const std::string& prefix = "") {
  GECKO_RETURN_IF_ERROR(detail::check_x(c, x));
  GECKO_RETURN_IF_ERROR(detail::check_like_x(dout, "dout", x));
  GECKO_RETURN_IF_ERROR(detail::check_like_x(dx, "dx", x));
  GECKO_RETURN_IF_ERROR(detail::check_ffn_parameters(c, P, &grads, prefix));
  const std::int64_t R = x.size(0) * x.size(1), D = c.model_dim, F = c.ffn_hidden_dim;
  Arena act(activations, activation_bytes), ws(workspace, workspace_bytes);
  const auto s = FfnActivations<T>::carve(act, R, D, F);
  GECKO_RETURN_IF_ERROR(act.status("activation"));
  FfnScratch<T> g;
  g.dhidden = ws.take<T>(static_cast<std::size_t>(R * F));
  g.da = ws.take<T>(static_cast<std::size_t>(R * F));
  g.db = ws.take<T>(static_cast<std::size_t>(R * F));
  g.du = ws.take<T>(static_cast<std::size_t>(R * D));
  GECKO_RETURN_IF_ERROR(ws.status("workspace"));
  return detail::ffn_backward_steps<T>(ctx, c, P, grads, prefix, R, x.data, s, dout.data, dx.data, g, ws, stream);
}

}  // namespace gecko::layers::cuda
