// The Gecko block on the GPU, training path: MEGA layer then normalized SwiGLU feed-forward,
// forward and backward with every parameter gradient, composed from the CUDA ops.
//
//   MEGA:  xn = tsnorm(x); xc = cema(xn) + xn; mx = rmsnorm(xc); z = wz(mx);
//          q, k, aq, ak = views(znorm(z)); v = silu(wv(xn)); r_pre = wr(mx);
//          attn = sca(rope(q), rope(k), v) * silu(r_pre) + awm(aq, ak, v);
//          y = wh1(mx) + wh2(attn) + x
//   NFFN:  u = layernorm(y); out = fc2(silu(fc1(u)) * fc3(u)) + y
//
// Memory: everything lives in two caller-owned regions whose sizes plan() returns. The
// activation region holds what the forward saves for the backward (about 164 KB per token at the
// 7B shapes in bf16, plus small fp32 statistics); the workspace is scratch reused by every op.
// Nothing is allocated, nothing synchronizes. Training path: whole chunks from position 0, no
// carried state (the streaming inference path keeps the CPU State's contract and is separate).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <string>

#include "gecko/core/decode_cursor.hpp"
#include "gecko/core/elementwise.cuh"
#include "gecko/layers/block/args.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/cuda/arena.hpp"
#include "gecko/layers/cuda/device_parameters.cuh"
#include "gecko/layers/cuda/feedforward.cuh"
#include "gecko/layers/cuda/linear_steps.cuh"
#include "gecko/layers/cuda/plan.cuh"
#include "gecko/layers/cuda/stage.cuh"
#include "gecko/ops/cema/launch.cuh"
#include "gecko/ops/gated_combine/launch.cuh"
#include "gecko/ops/group_norm/launch.cuh"
#include "gecko/ops/linear/launch.cuh"
#include "gecko/ops/qk_views/launch.cuh"
#include "gecko/ops/sliding_chunk_attention/launch_gemm.cuh"
#include "gecko/ops/swiglu/launch.cuh"
#include "gecko/ops/timestep_norm/launch.cuh"
#include "gecko/ops/working_memory/launch_cublas.cuh"

namespace gecko::layers::cuda {

struct Dims {
  std::int64_t B, L, D, Z, E, H, dz, dv, N, C, G, F;
  int n_rope;  // heads the attention rotates
  std::int64_t rows() const { return B * L; }
  static Dims of(const GeckoConfig& c, std::int64_t B, std::int64_t L) {
    return Dims{B, L, c.model_dim, c.z_dim, c.value_dim, c.num_heads, c.z_head_dim(), c.v_head_dim(),
                c.cema_ndim, c.chunk_size, c.timenorm_num_groups, c.ffn_hidden_dim, c.rope(0).n_rope_heads};
  }
};

// What the forward keeps for the backward (views into the activation region).
template <class T>
struct BlockActivations {
  // MEGA
  T *xn, *xc, *mx, *z, *q, *k, *aq, *ak, *v_pre, *v, *r_pre, *o_sca, *attn, *y;
  float *tn_stats, *tn_corr, *cema_states, *lse;
  working_memory::cuda::Saved wm_saved;  // training calls: the working memory's front (else empty)
  T* sca_probs;                           // training calls: the attention's probabilities, or null
  // NFFN
  T *u, *a, *b, *hidden;

  // Whether a call keeps the working memory's front for the backward: training calls of at least
  // one chunk (streaming calls have no backward).
  static bool saves_wm(const Dims& d, bool training) { return training && d.L >= d.C; }

  static BlockActivations carve(Arena& act, const Dims& d, bool training) {
    BlockActivations s{};
    const std::size_t r = static_cast<std::size_t>(d.rows());
    s.xn = act.take<T>(r * d.D);
    s.xc = act.take<T>(r * d.D);
    s.mx = act.take<T>(r * d.D);
    s.z = act.take<T>(r * d.Z);
    s.q = act.take<T>(r * d.Z);
    s.k = act.take<T>(r * d.Z);
    s.aq = act.take<T>(r * d.Z);
    s.ak = act.take<T>(r * d.Z);
    s.v_pre = act.take<T>(r * d.E);
    s.v = act.take<T>(r * d.E);
    s.r_pre = act.take<T>(r * d.E);
    s.o_sca = act.take<T>(r * d.E);
    s.attn = act.take<T>(r * d.E);
    s.y = act.take<T>(r * d.D);
    s.tn_stats = act.take<float>(r * d.G * 2);
    s.tn_corr = act.take<float>(r * 2);
    s.cema_states = act.take<float>(static_cast<std::size_t>(cema::cuda::time_tiles(d.L)) * d.B * d.D * d.N * 2);
    s.lse = act.take<float>(r * d.H);
    s.u = act.take<T>(r * d.D);
    s.a = act.take<T>(r * d.F);
    s.b = act.take<T>(r * d.F);
    s.hidden = act.take<T>(r * d.F);
    if (saves_wm(d, training)) {  // last, so the views above sit where a streaming call's do
      s.wm_saved.bytes = working_memory::cuda::saved_bytes_for<T>(d.B, d.L, d.H, d.dz, d.dv, d.C);
      s.wm_saved.data = act.take<char>(s.wm_saved.bytes);
    }
    const bool probs = training && sliding_chunk_attention::cuda::keeps_probs<T>(d.L, d.C, d.dz, d.dv, d.n_rope);
    s.sca_probs = probs ? act.take<T>(static_cast<std::size_t>(d.rows()) * d.H * 2 * d.C) : nullptr;
    return s;
  }
};


// Which layers a call runs: the whole block, or the MEGA layer alone (its output is the call's out;
// the feed-forward is skipped, its activation buffers are still reserved).
enum class BlockLayers { kBlock, kMega };

struct BlockInputs {
  TensorView<const std::uint8_t> bos_mask;     // [B, L] or empty
  TensorView<const std::int64_t> segment_idx;  // [B, L] or empty
  BlockLayers layers = BlockLayers::kBlock;
};

// The carried state of a streaming call (stream.cuh), as views: what the call reads and where the
// ops write the state after it. Null for a training call (a stream of its own from position 0).
template <class T>
struct StreamIO {
  std::int64_t position = 0;  // tokens before this call (RoPE start)
  bool fresh = true;          // no call before: zero priors
  // timestep norm (ping-pong: in and out are different buffers)
  TensorView<const std::int64_t> norm_count;
  TensorView<const float> norm_mean, norm_var;
  TensorView<std::int64_t> norm_count_out;
  TensorView<float> norm_mean_out, norm_var_out;
  // complex EMA, updated in place
  TensorView<float> cema_h;
  // attention cache of P tokens (empty views when P = 0): rotated keys, raw ak, values
  TensorView<const T> sca_k, awm_k, v;
  // working memory, updated in place; `has_memory` says whether it holds one yet
  bool has_memory = false;
  TensorView<float> memory, log_norm;
  // Stop after the MEGA layer: `out` receives its output (the feed-forward is skipped).
  bool mega_only = false;
  // Graph-replayable decoding: the attention reads position and P here when it runs (the cache
  // views above then span the largest P); null: `position` and the views' row count.
  const DecodeCursor* cursor = nullptr;
};

// The forward: out = block(x). `act` receives what the backward needs.
template <class T>
Status block_forward_impl(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P, const Dims& d,
                          const T* x, const BlockInputs& in, T* out, Arena& act_arena, Arena& ws, cudaStream_t st,
                          const StreamIO<T>* so = nullptr) {
  using namespace detail;
  const std::string mp = block::kMegaPrefix, np = block::kNffnPrefix;
  const auto s = BlockActivations<T>::carve(act_arena, d, so == nullptr);
  GECKO_RETURN_IF_ERROR(act_arena.status("activation"));
  const std::int64_t B = d.B, L = d.L, R = d.rows();

  // Timestep decay norm.
  timestep_norm::ForwardArgs<T> tn;
  tn.groups = d.G;
  tn.beta1 = c.timenorm_beta1;
  tn.beta2 = c.timenorm_beta2;
  tn.eps = c.norm_eps;
  tn.beta_precision = c.timenorm_beta_precision;
  tn.x = TensorView<const T>::device(x, {B, L, d.D});
  tn.weight = P.t(mp + "timenorm.weight");
  tn.bias = P.t(mp + "timenorm.bias");
  tn.bos_mask = in.bos_mask;
  tn.y = bl(s.xn, B, L, d.D);
  if (so) {
    if (!so->fresh) {
      tn.prev_count = so->norm_count;
      tn.prev_mean = so->norm_mean;
      tn.prev_var = so->norm_var;
    }
    tn.count = so->norm_count_out;
    tn.mean = so->norm_mean_out;
    tn.var = so->norm_var_out;
  }
  const timestep_norm::cuda::Saved tn_saved{TensorView<float>::device(s.tn_stats, {B, L, d.G, 2}),
                                            TensorView<float>::device(s.tn_corr, {B, L, 2})};
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return timestep_norm::cuda::forward_workspace_size(tn, b); },
      [&](void* p, std::size_t b) { return timestep_norm::cuda::forward(tn, tn_saved, p, b, st); }));

  // Complex EMA with the residual fused.
  cema::ForwardArgs<T> ce;
  ce.x = TensorView<const T>::device(s.xn, {B, L, d.D});
  ce.bos_mask = in.bos_mask;
  ce.alpha = P.f(mp + "cema.alpha");
  ce.delta = P.f(mp + "cema.delta");
  ce.theta = P.f(mp + "cema.theta");
  ce.gamma = P.f(mp + "cema.gamma");
  ce.y = bl(s.xc, B, L, d.D);
  if (so) {
    if (!so->fresh) ce.h0 = so->cema_h;
    ce.h_out = so->cema_h;
  }
  const cema::cuda::Saved ce_saved{
      TensorView<float>::device(s.cema_states, {cema::cuda::time_tiles(L), B, d.D, d.N, 2})};
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return cema::cuda::forward_workspace_size(ce, ce_saved, b); },
      [&](void* p, std::size_t b) { return cema::cuda::forward(ce, ce_saved, p, b, st); }));

  // RMSNorm.
  group_norm::ForwardArgs<T> rn;
  rn.kind = group_norm::Kind::kRms;
  rn.groups = c.layernorm_num_groups;
  rn.eps = c.norm_eps;
  rn.x = TensorView<const T>::device(s.xc, {R, d.D});
  rn.weight = P.t(mp + "rmsnorm.weight");
  rn.y = TensorView<T>::device(s.mx, {R, d.D});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return group_norm::cuda::forward(rn, st); }));

  // Projections of mx and xn.
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wz.weight"),
                                          P.t(mp + "wz.bias"), s.z, d.Z, nullptr, st));
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kBiasSilu, s.xn, R, d.D, P.t(mp + "wv.weight"),
                                          P.t(mp + "wv.bias"), s.v, d.E, s.v_pre, st));
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wr.weight"),
                                          P.t(mp + "wr.bias"), s.r_pre, d.E, nullptr, st));

  // Per-head z normalisation and the four views.
  qk_views::ForwardArgs<T> qv;
  qv.heads = d.H;
  qv.eps = c.norm_eps;
  qv.z = TensorView<const T>::device(s.z, {R, d.Z});
  qv.gamma = P.t(mp + "gamma");
  qv.beta = P.t(mp + "beta");
  qv.q = TensorView<T>::device(s.q, {R, d.Z});
  qv.k = TensorView<T>::device(s.k, {R, d.Z});
  qv.aq = TensorView<T>::device(s.aq, {R, d.Z});
  qv.ak = TensorView<T>::device(s.ak, {R, d.Z});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return qk_views::cuda::forward(qv, st); }));

  // Sliding chunk attention (RoPE inside).
  sliding_chunk_attention::ForwardArgs<T> sa;
  sa.chunk = d.C;
  sa.rope = c.rope(so ? so->position : 0);
  sa.cursor = so ? so->cursor : nullptr;
  sa.q = blh<const T>(s.q, B, L, d.H, d.dz);
  sa.k = blh<const T>(s.k, B, L, d.H, d.dz);
  sa.v = blh<const T>(s.v, B, L, d.H, d.dv);
  sa.segment_idx = in.segment_idx;
  if (so && !so->sca_k.empty()) {
    sa.prev_k = so->sca_k;
    sa.prev_v = so->v;
  }
  sa.out = blh(s.o_sca, B, L, d.H, d.dv);
  sa.lse = TensorView<float>::device(s.lse, {B, d.H, L});
  if (s.sca_probs) sa.probs = TensorView<T>::device(s.sca_probs, {B, d.H, L / d.C, d.C, 2 * d.C});
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return sliding_chunk_attention::cuda::forward_workspace_size(ctx, sa, b); },
      [&](void* p, std::size_t b) { return sliding_chunk_attention::cuda::forward(ctx, sa, p, b, st); }));

  // Adaptive working memory into scratch, then the gated combination.
  const std::size_t mark = ws.used();
  T* o_awm = ws.take<T>(static_cast<std::size_t>(R) * d.E);
  float* mem = ws.take<float>(static_cast<std::size_t>(B) * d.H * d.dz * d.dv);
  float* lnorm = ws.take<float>(static_cast<std::size_t>(B) * d.H * d.dz);
  working_memory::ForwardArgs<T> wm;
  wm.chunk = d.C;
  wm.aq = blh<const T>(s.aq, B, L, d.H, d.dz);
  wm.ak = blh<const T>(s.ak, B, L, d.H, d.dz);
  wm.v = blh<const T>(s.v, B, L, d.H, d.dv);
  wm.segment_idx = in.segment_idx;
  wm.out = blh(o_awm, B, L, d.H, d.dv);
  wm.memory_out = TensorView<float>::device(mem, {B, d.H, d.dz, d.dv});
  wm.log_norm_out = TensorView<float>::device(lnorm, {B, d.H, d.dz});
  if (so) {
    if (so->has_memory) {
      wm.memory = so->memory;
      wm.log_norm = so->log_norm;
    }
    if (!so->awm_k.empty()) {
      wm.prev_k = so->awm_k;
      wm.prev_v = so->v;
    }
    wm.memory_out = so->memory;  // in place (working_memory/args.hpp allows it)
    wm.log_norm_out = so->log_norm;
  }
  const working_memory::cuda::Saved* wm_saved = s.wm_saved.data ? &s.wm_saved : nullptr;
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return working_memory::cuda::forward_workspace_size(ctx, wm, b, wm_saved != nullptr); },
      [&](void* p, std::size_t b) { return working_memory::cuda::forward(ctx, wm, p, b, st, wm_saved); }));
  gated_combine::ForwardArgs<T> gc;
  gc.silu_r = true;
  gc.sca = TensorView<const T>::device(s.o_sca, {R, d.E});
  gc.r = TensorView<const T>::device(s.r_pre, {R, d.E});
  gc.awm = TensorView<const T>::device(o_awm, {R, d.E});
  gc.attn = TensorView<T>::device(s.attn, {R, d.E});
  GECKO_RETURN_IF_ERROR(stage(ws, [&] { return gated_combine::cuda::forward(gc, st); }));
  ws.rewind(mark);

  // y = wh1(mx) + x, then y += wh2(attn): the residual rides in the GEMMs' C operand (beta = 1).
  const bool mega_only = (so && so->mega_only) || in.layers == BlockLayers::kMega;
  T* const y = mega_only ? out : s.y;
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wh1.weight"),
                                          P.t(mp + "wh1.bias"), y, d.D, nullptr, st, x));
  GECKO_RETURN_IF_ERROR(linear_forward<T>(ctx, ws, linear::Epilogue::kNone, s.attn, R, d.E, P.t(mp + "wh2.weight"),
                                          {}, y, d.D, nullptr, st, y));
  if (mega_only) return Status::success();

  // Normalized SwiGLU feed-forward: out = fc2(silu(fc1(u)) * fc3(u)) + y, u = layernorm(y).
  return detail::ffn_forward_steps<T>(ctx, c, P, np, R, s.y, out, FfnActivations<T>{s.u, s.a, s.b, s.hidden}, ws, st);
}

// The backward: dx and every parameter gradient (overwritten) from dout and the activations.
template <class T, class Grads>
Status block_backward_impl(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                           const Grads& G, const Dims& d, const T* x, const BlockInputs& in, const T* dout,
                           T* dx, Arena& act_arena, Arena& ws, cudaStream_t st) {
  using namespace detail;
  const std::string mp = block::kMegaPrefix, np = block::kNffnPrefix;
  const auto s = BlockActivations<T>::carve(act_arena, d, true);
  GECKO_RETURN_IF_ERROR(act_arena.status("activation"));
  const std::int64_t B = d.B, L = d.L, R = d.rows();
  const std::size_t Rz = static_cast<std::size_t>(R);
  const auto none = linear::Epilogue::kNone;

  // Scratch that lives through the whole backward.
  T* dy = ws.take<T>(Rz * d.D);       // gradient at the MEGA output y
  T* g1 = ws.take<T>(Rz * d.D);       // D-wide scratch (du, then dmx, then dx of the norm)
  T* gF1 = ws.take<T>(Rz * std::max(d.F, d.E));  // F/E-wide scratch
  T* gF2 = ws.take<T>(Rz * std::max(d.F, d.E));
  T* gF3 = ws.take<T>(Rz * std::max(d.F, d.E));
  T* gz = ws.take<T>(Rz * d.Z * 5);   // dz, dq, dk, daq, dak
  GECKO_RETURN_IF_ERROR(ws.status("workspace"));
  T *gdz = gz, *gdq = gz + Rz * d.Z, *gdk = gz + 2 * Rz * d.Z, *gdaq = gz + 3 * Rz * d.Z, *gdak = gz + 4 * Rz * d.Z;

  // ---- feed-forward: dy = its dx (the residual's dout included); the MEGA layer alone: dy = dout ----
  if (in.layers == BlockLayers::kMega) {
    dy = const_cast<T*>(dout);  // only read from here on
  } else {
    GECKO_RETURN_IF_ERROR(detail::ffn_backward_steps<T>(ctx, c, P, G, np, R, s.y,
                                                        FfnActivations<T>{s.u, s.a, s.b, s.hidden}, dout, dy,
                                                        FfnScratch<T>{gF1, gF2, gF3, g1}, ws, st));
  }

  // ---- MEGA: y = wh1(mx) + wh2(attn) + x ----
  // dattn = dy wh2 (into gF1); dmx = dy wh1 (into g1)
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, none, s.attn, R, d.E, P.t(mp + "wh2.weight"), nullptr, dy, d.D,
                                           gF1, false, G.g(mp + "wh2.weight"), {}, st));
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wh1.weight"),
                                           nullptr, dy, d.D, g1, false, G.g(mp + "wh1.weight"), G.g(mp + "wh1.bias"),
                                           st));
  // attn = sca * silu(r_pre) + awm: dsca (gF2), dr_pre (gF3), dawm = dattn (gF1 itself)
  gated_combine::BackwardArgs<T> gb;
  gb.silu_r = true;
  gb.sca = TensorView<const T>::device(s.o_sca, {R, d.E});
  gb.r = TensorView<const T>::device(s.r_pre, {R, d.E});
  gb.dattn = TensorView<const T>::device(gF1, {R, d.E});
  gb.dsca = TensorView<T>::device(gF2, {R, d.E});
  gb.dr = TensorView<T>::device(gF3, {R, d.E});
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return gated_combine::cuda::backward_workspace_size(gb, b); },
      [&](void* p, std::size_t b) { return gated_combine::cuda::backward(gb, p, b, st); }));
  // r_pre = wr(mx): dmx += dr_pre wr
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wr.weight"),
                                           nullptr, gF3, d.E, g1, true, G.g(mp + "wr.weight"), G.g(mp + "wr.bias"),
                                           st));
  // Working memory backward: daq, dak, dv (into gF3).
  working_memory::BackwardArgs<T> wb;
  wb.chunk = d.C;
  wb.aq = blh<const T>(s.aq, B, L, d.H, d.dz);
  wb.ak = blh<const T>(s.ak, B, L, d.H, d.dz);
  wb.v = blh<const T>(s.v, B, L, d.H, d.dv);
  wb.segment_idx = in.segment_idx;
  wb.dout = blh<const T>(gF1, B, L, d.H, d.dv);
  wb.daq = blh(gdaq, B, L, d.H, d.dz);
  wb.dak = blh(gdak, B, L, d.H, d.dz);
  wb.dv = blh(gF3, B, L, d.H, d.dv);
  const working_memory::cuda::Saved* wm_saved = s.wm_saved.data ? &s.wm_saved : nullptr;
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return working_memory::cuda::backward_workspace_size(ctx, wb, b, wm_saved != nullptr); },
      [&](void* p, std::size_t b) { return working_memory::cuda::backward(ctx, wb, p, b, st, wm_saved); }));
  // Sliding chunk attention backward: dq, dk, and dv added to the working memory's (gF3).
  sliding_chunk_attention::BackwardArgs<T> sb2;
  sb2.chunk = d.C;
  sb2.rope = c.rope(0);
  sb2.q = blh<const T>(s.q, B, L, d.H, d.dz);
  sb2.k = blh<const T>(s.k, B, L, d.H, d.dz);
  sb2.v = blh<const T>(s.v, B, L, d.H, d.dv);
  sb2.segment_idx = in.segment_idx;
  sb2.out = blh<const T>(s.o_sca, B, L, d.H, d.dv);
  sb2.lse = TensorView<const float>::device(s.lse, {B, d.H, L});
  if (s.sca_probs) sb2.probs = TensorView<const T>::device(s.sca_probs, {B, d.H, L / d.C, d.C, 2 * d.C});
  sb2.dout = blh<const T>(gF2, B, L, d.H, d.dv);
  sb2.dq = blh(gdq, B, L, d.H, d.dz);
  sb2.dk = blh(gdk, B, L, d.H, d.dz);
  sb2.dv = blh(gF3, B, L, d.H, d.dv);
  sb2.accumulate_dv = true;
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return sliding_chunk_attention::cuda::backward_workspace_size(ctx, sb2, b); },
      [&](void* p, std::size_t b) { return sliding_chunk_attention::cuda::backward(ctx, sb2, p, b, st); }));
  // gF3 = dv until the wv backward below; gF1 and gF2 are free.
  // The four views and the z normalisation: dz.
  qk_views::BackwardArgs<T> qb;
  qb.heads = d.H;
  qb.eps = c.norm_eps;
  qb.z = TensorView<const T>::device(s.z, {R, d.Z});
  qb.gamma = P.t(mp + "gamma");
  qb.dq = TensorView<const T>::device(gdq, {R, d.Z});
  qb.dk = TensorView<const T>::device(gdk, {R, d.Z});
  qb.daq = TensorView<const T>::device(gdaq, {R, d.Z});
  qb.dak = TensorView<const T>::device(gdak, {R, d.Z});
  qb.dz = TensorView<T>::device(gdz, {R, d.Z});
  qb.dgamma = G.g(mp + "gamma");
  qb.dbeta = G.g(mp + "beta");
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return qk_views::cuda::backward_workspace_size(qb, b); },
      [&](void* p, std::size_t b) { return qk_views::cuda::backward(qb, p, b, st); }));
  // z = wz(mx): dmx += dz wz
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, linear::Epilogue::kBias, s.mx, R, d.D, P.t(mp + "wz.weight"),
                                           nullptr, gdz, d.Z, g1, true, G.g(mp + "wz.weight"), G.g(mp + "wz.bias"),
                                           st));
  // RMSNorm backward: dxc (into the first D columns of gF2).
  T* dxc = gF2;
  group_norm::BackwardArgs<T> rb;
  rb.kind = group_norm::Kind::kRms;
  rb.groups = c.layernorm_num_groups;
  rb.eps = c.norm_eps;
  rb.x = TensorView<const T>::device(s.xc, {R, d.D});
  rb.weight = P.t(mp + "rmsnorm.weight");
  rb.dy = TensorView<const T>::device(g1, {R, d.D});
  rb.dx = TensorView<T>::device(dxc, {R, d.D});
  rb.dweight = G.g(mp + "rmsnorm.weight");
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return group_norm::cuda::backward_workspace_size(rb, b); },
      [&](void* p, std::size_t b) { return group_norm::cuda::backward(rb, p, b, st); }));
  // CEMA backward (residual included): dxn = cema'(dxc), into gF1.
  T* dxn = gF1;
  cema::BackwardArgs<T> cb;
  cb.x = TensorView<const T>::device(s.xn, {B, L, d.D});
  cb.bos_mask = in.bos_mask;
  cb.alpha = P.f(mp + "cema.alpha");
  cb.delta = P.f(mp + "cema.delta");
  cb.theta = P.f(mp + "cema.theta");
  cb.gamma = P.f(mp + "cema.gamma");
  cb.dy = TensorView<const T>::device(dxc, {B, L, d.D});
  cb.dx = TensorView<T>::device(dxn, {B, L, d.D});
  cb.dalpha = G.g(mp + "cema.alpha");
  cb.ddelta = G.g(mp + "cema.delta");
  cb.dtheta = G.g(mp + "cema.theta");
  cb.dgamma = G.g(mp + "cema.gamma");
  const cema::cuda::Saved ce_saved{
      TensorView<float>::device(s.cema_states, {cema::cuda::time_tiles(L), B, d.D, d.N, 2})};
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return cema::cuda::backward_workspace_size(cb, b); },
      [&](void* p, std::size_t b) { return cema::cuda::backward(cb, ce_saved, p, b, st); }));
  // v = silu(wv(xn)): dxn += dpre wv (dpre in place over dv).
  GECKO_RETURN_IF_ERROR(linear_backward<T>(ctx, ws, linear::Epilogue::kBiasSilu, s.xn, R, d.D, P.t(mp + "wv.weight"),
                                           s.v_pre, gF3, d.E, dxn, true, G.g(mp + "wv.weight"), G.g(mp + "wv.bias"),
                                           st, gF3));
  // Timestep norm backward: dx (into g1), then + the residual dy.
  timestep_norm::BackwardArgs<T> tb;
  tb.groups = d.G;
  tb.beta1 = c.timenorm_beta1;
  tb.beta2 = c.timenorm_beta2;
  tb.eps = c.norm_eps;
  tb.beta_precision = c.timenorm_beta_precision;
  tb.x = TensorView<const T>::device(x, {B, L, d.D});
  tb.weight = P.t(mp + "timenorm.weight");
  tb.bos_mask = in.bos_mask;
  tb.dy = TensorView<const T>::device(dxn, {B, L, d.D});
  tb.dx = TensorView<T>::device(g1, {B, L, d.D});
  tb.dweight = G.g(mp + "timenorm.weight");
  tb.dbias = G.g(mp + "timenorm.bias");
  const timestep_norm::cuda::Saved tn_saved{TensorView<float>::device(s.tn_stats, {B, L, d.G, 2}),
                                            TensorView<float>::device(s.tn_corr, {B, L, 2})};
  GECKO_RETURN_IF_ERROR(stage(
      ws, [&](std::size_t& b) { return timestep_norm::cuda::backward_workspace_size(tb, b); },
      [&](void* p, std::size_t b) { return timestep_norm::cuda::backward(tb, tn_saved, p, b, st); }));
  return add<T>(ws, dx, g1, dy, R, d.D, st);
}

// ---- public entry points ----------------------------------------------------------------------

// One call: x, out and the document masks of [B, L] tokens (device memory, dense).
template <class T>
struct BlockCall {
  TensorView<const T> x;                       // [B, L, D]
  TensorView<const std::uint8_t> bos_mask;     // [B, L] or empty
  TensorView<const std::int64_t> segment_idx;  // [B, L] or empty
  BlockLayers layers = BlockLayers::kBlock;    // kMega: the MEGA layer alone (parameters "mega.*" only)
};

namespace detail {


template <class T>
Status check_call(const GeckoConfig& c, const BlockCall<T>& call, Dims& d) {
  GECKO_RETURN_IF_ERROR(validate(c));
  if (call.x.empty() || call.x.rank != 3)
    return invalid_argument("x must be a [B, L, D] device tensor, got " + call.x.shape_string());
  GECKO_RETURN_IF_ERROR(check_memory(call.x, "x", Memory::kDevice));
  GECKO_RETURN_IF_ERROR(check_contiguous(call.x, "x"));
  d = Dims::of(c, call.x.size(0), call.x.size(1));
  if (call.x.size(2) != c.model_dim)
    return invalid_argument("x has D=" + std::to_string(call.x.size(2)) + ", expected config.model_dim=" +
                            std::to_string(c.model_dim));
  if (d.L < c.chunk_size || d.L % c.chunk_size != 0)
    return invalid_argument("the GPU training path takes whole chunks: L=" + std::to_string(d.L) +
                            " must be a positive multiple of the chunk size C=" + std::to_string(c.chunk_size));
  if (c.timenorm_beta_precision != timestep_norm::BetaPrecision::kExact)
    return unsupported("the GPU block computes the timestep norm with exact beta (config.timenorm_beta_precision)");
  if (!call.bos_mask.empty()) {
    GECKO_RETURN_IF_ERROR(check_shape(call.bos_mask, "bos_mask", {d.B, d.L}));
    GECKO_RETURN_IF_ERROR(check_memory(call.bos_mask, "bos_mask", Memory::kDevice));
  }
  if (!call.segment_idx.empty()) {
    GECKO_RETURN_IF_ERROR(check_shape(call.segment_idx, "segment_idx", {d.B, d.L}));
    GECKO_RETURN_IF_ERROR(check_memory(call.segment_idx, "segment_idx", Memory::kDevice));
  }
  return Status::success();
}

template <class T>
Status check_out(const TensorView<T>& t, const char* name, const Dims& d) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {d.B, d.L, d.D}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, Memory::kDevice));
  return check_contiguous(t, name);
}

}  // namespace detail

// Sizes of the activation and workspace regions for calls shaped like `call` (pointers unused).
template <class T>
Status block_plan(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P, const BlockCall<T>& call,
                  BlockPlan& plan) {
  Dims d;
  GECKO_RETURN_IF_ERROR(detail::check_call(c, call, d));
  auto fake = Arena::measure();
  const T* x = fake.take<T>(static_cast<std::size_t>(d.rows()) * d.D);
  T* out = fake.take<T>(static_cast<std::size_t>(d.rows()) * d.D);
  const BlockInputs in{call.bos_mask, call.segment_idx, call.layers};
  auto act = Arena::measure(), ws = Arena::measure();
  GECKO_RETURN_IF_ERROR(block_forward_impl<T>(ctx, c, P, d, x, in, out, act, ws, nullptr));
  const detail::MeasuringGradients grads(block::parameter_specs(c));
  auto act2 = Arena::measure(), ws2 = Arena::measure();
  GECKO_RETURN_IF_ERROR(block_backward_impl<T>(ctx, c, P, grads, d, x, in, out, out, act2, ws2, nullptr));
  plan.activation_bytes = act.peak();
  plan.workspace_bytes = std::max(ws.peak(), ws2.peak());
  return Status::success();
}

// out = block(x); the activation region keeps what block_backward needs.
template <class T>
Status block_forward(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P, const BlockCall<T>& call,
                     const TensorView<T>& out, void* activations, std::size_t activation_bytes, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream) {
  Dims d;
  GECKO_RETURN_IF_ERROR(detail::check_call(c, call, d));
  GECKO_RETURN_IF_ERROR(detail::check_out(out, "out", d));
  Arena act(activations, activation_bytes), ws(workspace, workspace_bytes);
  return block_forward_impl<T>(ctx, c, P, d, call.x.data, BlockInputs{call.bos_mask, call.segment_idx, call.layers}, out.data, act,
                               ws, stream);
}

// dx and every parameter gradient of the block (overwritten in grads), from dout and the
// activations of the forward of the same call.
template <class T>
Status block_backward(linear::cuda::Context& ctx, const GeckoConfig& c, const DeviceParameters<T>& P,
                      const DeviceGradients& grads, const BlockCall<T>& call, const TensorView<const T>& dout,
                      const TensorView<T>& dx, void* activations, std::size_t activation_bytes, void* workspace,
                      std::size_t workspace_bytes, cudaStream_t stream) {
  Dims d;
  GECKO_RETURN_IF_ERROR(detail::check_call(c, call, d));
  GECKO_RETURN_IF_ERROR(detail::check_out(dout, "dout", d));
  GECKO_RETURN_IF_ERROR(detail::check_out(dx, "dx", d));
  Arena act(activations, activation_bytes), ws(workspace, workspace_bytes);
  return block_backward_impl<T>(ctx, c, P, grads, d, call.x.data, BlockInputs{call.bos_mask, call.segment_idx, call.layers},
                                dout.data, dx.data, act, ws, stream);
}

}  // namespace gecko::layers::cuda
