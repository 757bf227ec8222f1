// CPU reference for the MEGA layer: the ops' cpu:: references (timestep norm, CEMA, group RMSNorm,
// RoPE + sliding chunk attention, working memory) composed with plain Linear loops, everything in
// double whatever T is. Forward and backward of one call, with an optional streaming State.
//
//   forward(config, params, args, state):  state null = a stream of its own (training); otherwise
//       the call continues *state (fresh or not) and updates it (see state.hpp).
//   backward(config, params, args, grads, state): recomputes the forward of the same call from the
//       same starting state (null = fresh) and writes dx and every parameter gradient into grads
//       (same names and shapes as params, overwritten). The starting state is a constant, as the
//       authors' detached cache is: no gradient flows into it. The working memory has no backward
//       for its tail path with a memory (inference only), so a call inside a chunk after the first
//       one is refused; full-path calls and calls within the first chunk are supported.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/dense.hpp"
#include "gecko/layers/mega/args.hpp"
#include "gecko/layers/mega/state.hpp"
#include "gecko/layers/parameters.hpp"
#include "gecko/ops/cema/reference.hpp"
#include "gecko/ops/group_norm/reference.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "gecko/ops/sliding_chunk_attention/reference.hpp"
#include "gecko/ops/timestep_norm/reference.hpp"
#include "gecko/ops/working_memory/reference.hpp"

namespace gecko::layers::mega::cpu {

namespace detail {

using I64 = std::int64_t;

// The parameters, resolved by name (prefix + spec name) once per call.
struct Weights {
  const double* p[kNumParams] = {};
};
struct Gradients {
  double* p[kNumParams] = {};
};

inline Status bind(const GeckoConfig& c, const ParameterSet& set, const std::string& prefix, Weights& w) {
  const auto specs = parameter_specs(c);
  GECKO_RETURN_IF_ERROR(set.check(specs, prefix, "params"));
  for (int i = 0; i < kNumParams; ++i) w.p[i] = param_data(set, prefix + specs[i].name);
  return Status::success();
}

inline Status bind(const GeckoConfig& c, ParameterSet& set, const std::string& prefix, Gradients& g) {
  const auto specs = parameter_specs(c);
  GECKO_RETURN_IF_ERROR(set.check(specs, prefix, "grads"));
  for (int i = 0; i < kNumParams; ++i) g.p[i] = param_data(set, prefix + specs[i].name);
  return Status::success();
}

inline TensorView<const double> cv(const double* p, std::initializer_list<I64> dims) {
  return TensorView<const double>::host(p, dims);
}
inline TensorView<double> mv(double* p, std::initializer_list<I64> dims) { return TensorView<double>::host(p, dims); }

// Everything one call computes, dense and token-major ([B, L, ...]), kept for the backward.
struct Activations {
  std::vector<double> x;                // [B, L, D]
  std::vector<std::uint8_t> bos;        // [B, L] or empty
  std::vector<std::int64_t> seg;        // [B, L] or empty
  std::vector<double> tsn, cema, mx;    // [B, L, D] timenorm out, CEMA out (+ residual), RMSNorm out
  std::vector<double> z, zn;            // [B, L, Z] wz(mx) and its per-head RMSNorm
  std::vector<double> qk[4];            // q, k, aq, ak [B, L, H, dz] (pre-RoPE)
  std::vector<double> pre_v, v;         // [B, L, H, dv] wv(tsn) and silu of it
  std::vector<double> pre_r, r;         // [B, L, E] wr(mx) and silu of it
  std::vector<double> sca, awm, attn;   // [B, L, E]
  std::vector<double> out;              // [B, L, D]
  // States after the call.
  std::vector<std::int64_t> norm_count;
  std::vector<double> norm_mean, norm_var, cema_h, memory, log_norm;
  working_memory::Problem awm_problem;  // the working memory's path (tail/full, state, creation)
};

// Copies the call's inputs into dense host buffers.
template <class A>
void load_inputs(const Problem& p, const A& a, Activations& act) {
  const I64 B = p.batch, L = p.length;
  act.x = dense::load(a.x);
  act.bos.clear();
  act.seg.clear();
  if (!a.bos_mask.empty())
    for (I64 b = 0; b < B; ++b)
      for (I64 l = 0; l < L; ++l) act.bos.push_back(a.bos_mask(b, l) != 0);
  if (!a.segment_idx.empty())
    for (I64 b = 0; b < B; ++b)
      for (I64 l = 0; l < L; ++l) act.seg.push_back(a.segment_idx(b, l));
}

// ---- the ops' arguments, shared by forward and backward (their Args types share field names) ----

template <class A>
void set_timenorm(A& t, const GeckoConfig& c, const Weights& w, const Problem& p, const State& s,
                  const Activations& act) {
  const I64 B = p.batch, L = p.length, D = c.model_dim, G = c.timenorm_num_groups;
  t.groups = G;
  t.beta1 = c.timenorm_beta1;
  t.beta2 = c.timenorm_beta2;
  t.eps = c.norm_eps;
  t.beta_precision = c.timenorm_beta_precision;
  t.x = host_view(act.x, {B, L, D});
  t.weight = cv(w.p[kTimenormWeight], {D});
  if (!act.bos.empty()) t.bos_mask = host_view(act.bos, {B, L});
  if (!s.fresh()) {  // a fresh stream starts from the zero prior (count 0), as the authors' buffers do
    t.prev_count = host_view(s.norm_count, {B});
    t.prev_mean = host_view(s.norm_mean, {B, G});
    t.prev_var = host_view(s.norm_var, {B, G});
  }
}

template <class A>
void set_cema(A& e, const GeckoConfig& c, const Weights& w, const Problem& p, const State& s, const Activations& act) {
  const I64 B = p.batch, L = p.length, D = c.model_dim, N = c.cema_ndim;
  e.add_residual = true;  // the authors' module adds its input back: out_cema = CEMA(tsn) + tsn
  e.x = host_view(act.tsn, {B, L, D});
  if (!act.bos.empty()) e.bos_mask = host_view(act.bos, {B, L});
  if (!s.fresh()) e.h0 = host_view(s.cema_h, {B, D, N, 2});
  e.alpha = cv(w.p[kCemaAlpha], {D, N});
  e.delta = cv(w.p[kCemaDelta], {D, N});
  e.theta = cv(w.p[kCemaTheta], {D});
  e.gamma = cv(w.p[kCemaGamma], {D, N, 2});
}

template <class A>
void set_sca(A& a, const GeckoConfig& c, const Problem& p, const State& s, const Activations& act) {
  const I64 B = p.batch, L = p.length, H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim(), P = s.cached;
  a.chunk = c.chunk_size;
  a.scale = 1.0f;  // the 1/sqrt(dz) scaling is folded into q and k through gamma (spec 1.2)
  a.rope = c.rope(p.start);
  a.q = host_view(act.qk[0], {B, L, H, dz});
  a.k = host_view(act.qk[1], {B, L, H, dz});
  a.v = host_view(act.v, {B, L, H, dv});
  if (P > 0) {
    a.prev_k = host_view(s.sca_prev_k, {B, P, H, dz});
    a.prev_v = host_view(s.prev_v, {B, P, H, dv});
  }
  if (p.segments) {
    a.segment_idx = host_view(act.seg, {B, L});
    if (P > 0) a.prev_segment_idx = host_view(s.prev_segment_idx, {B, P});
  }
}

template <class A>
void set_awm(A& a, const GeckoConfig& c, const Problem& p, const State& s, const Activations& act) {
  const I64 B = p.batch, L = p.length, H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim(), P = s.cached;
  a.chunk = c.chunk_size;
  a.aq = host_view(act.qk[2], {B, L, H, dz});
  a.ak = host_view(act.qk[3], {B, L, H, dz});
  a.v = host_view(act.v, {B, L, H, dv});
  if (s.has_memory) {
    a.memory = host_view(s.memory, {B, H, dz, dv});
    a.log_norm = host_view(s.log_norm, {B, H, dz});
  }
  if (P > 0) {  // the same value cache as sliding chunk attention; the keys are the raw ak
    a.prev_k = host_view(s.awm_prev_k, {B, P, H, dz});
    a.prev_v = host_view(s.prev_v, {B, P, H, dv});
  }
  if (p.segments) {
    a.segment_idx = host_view(act.seg, {B, L});
    if (P > 0) a.prev_segment_idx = host_view(s.prev_segment_idx, {B, P});
    if (s.has_memory) a.prev_segment_count = host_view(s.prev_segment_count, {B});
  }
}

// ---- forward ----

// Runs the layer on act's inputs from state s; fills the rest of act.
inline Status run_forward(const GeckoConfig& c, const Weights& w, const Problem& p, const State& s,
                          Activations& act) {
  const I64 B = p.batch, L = p.length, BL = B * L, D = c.model_dim, Z = c.z_dim, E = c.value_dim;
  const I64 H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim(), N = c.cema_ndim, G = c.timenorm_num_groups;

  // 1. Timestep decay norm, carrying (count, mean, var).
  act.tsn.resize(BL * D);
  act.norm_count.resize(B);
  act.norm_mean.resize(B * G);
  act.norm_var.resize(B * G);
  timestep_norm::ForwardArgs<double> tn;
  set_timenorm(tn, c, w, p, s, act);
  tn.bias = cv(w.p[kTimenormBias], {D});
  tn.y = host_view(act.tsn, {B, L, D});
  tn.count = host_view(act.norm_count, {B});
  tn.mean = host_view(act.norm_mean, {B, G});
  tn.var = host_view(act.norm_var, {B, G});
  GECKO_RETURN_IF_ERROR(timestep_norm::cpu::forward(tn));

  // 2. CEMA with its residual, carrying h.
  act.cema.resize(BL * D);
  act.cema_h.resize(B * D * N * 2);
  cema::ForwardArgs<double> ce;
  set_cema(ce, c, w, p, s, act);
  ce.y = host_view(act.cema, {B, L, D});
  ce.h_out = host_view(act.cema_h, {B, D, N, 2});
  GECKO_RETURN_IF_ERROR(cema::cpu::forward(ce));

  // 3. mx = GroupRMSNorm(out_cema) with the learnable offset scale.
  act.mx.resize(BL * D);
  group_norm::ForwardArgs<double> rn;
  rn.kind = group_norm::Kind::kRms;
  rn.groups = c.layernorm_num_groups;
  rn.eps = c.norm_eps;
  rn.x = host_view(act.cema, {BL, D});
  rn.weight = cv(w.p[kRmsnormWeight], {D});
  rn.y = host_view(act.mx, {BL, D});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::forward(rn));

  // 4. z = znorm(wz(mx)): each head's dz-vector RMS-normalised, no affine.
  act.z.resize(BL * Z);
  act.zn.resize(BL * Z);
  dense::linear(act.mx.data(), BL, D, w.p[kWzWeight], w.p[kWzBias], Z, act.z.data());
  group_norm::ForwardArgs<double> zn;
  zn.kind = group_norm::Kind::kRms;
  zn.groups = H;
  zn.eps = c.norm_eps;
  zn.x = host_view(act.z, {BL, Z});
  zn.y = host_view(act.zn, {BL, Z});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::forward(zn));

  // 5. The four affine views q, k, aq, ak = z (gamma_i + 1) / sqrt(dz) + beta_i.
  const double inv_sqrt_dz = 1.0 / std::sqrt(static_cast<double>(dz));
  for (int i = 0; i < 4; ++i) {
    std::vector<double>& dst = act.qk[i];
    dst.resize(BL * Z);
    const double* gam = w.p[kGamma] + i * Z;
    const double* bet = w.p[kBeta] + i * Z;
    for (I64 r = 0; r < BL; ++r)
      for (I64 ch = 0; ch < Z; ++ch)
        dst[r * Z + ch] = act.zn[r * Z + ch] * ((gam[ch] + 1.0) * inv_sqrt_dz) + bet[ch];
  }

  // 6. v = silu(wv(tsn)) from the timenorm output (not mx); r = silu(wr(mx)).
  act.pre_v.resize(BL * E);
  act.v.resize(BL * E);
  act.pre_r.resize(BL * E);
  act.r.resize(BL * E);
  dense::linear(act.tsn.data(), BL, D, w.p[kWvWeight], w.p[kWvBias], E, act.pre_v.data());
  dense::linear(act.mx.data(), BL, D, w.p[kWrWeight], w.p[kWrBias], E, act.pre_r.data());
  for (I64 i = 0; i < BL * E; ++i) {
    act.v[i] = dense::silu(act.pre_v[i]);
    act.r[i] = dense::silu(act.pre_r[i]);
  }

  // 7. Sliding chunk attention (RoPE inside) and adaptive working memory, sharing v and its cache.
  act.sca.resize(BL * E);
  sliding_chunk_attention::ForwardArgs<double> sa;
  set_sca(sa, c, p, s, act);
  sa.out = host_view(act.sca, {B, L, H, dv});
  GECKO_RETURN_IF_ERROR(sliding_chunk_attention::cpu::forward(sa));

  act.awm.resize(BL * E);
  act.memory.resize(B * H * dz * dv);
  act.log_norm.resize(B * H * dz);
  working_memory::ForwardArgs<double> wm;
  set_awm(wm, c, p, s, act);
  wm.out = host_view(act.awm, {B, L, H, dv});
  wm.memory_out = host_view(act.memory, {B, H, dz, dv});
  wm.log_norm_out = host_view(act.log_norm, {B, H, dz});
  GECKO_RETURN_IF_ERROR(working_memory::validate(wm, Memory::kHost, act.awm_problem));
  GECKO_RETURN_IF_ERROR(working_memory::cpu::forward(wm));

  // 8. Only the local attention is gated: attn = sca * r + awm.
  act.attn.resize(BL * E);
  for (I64 i = 0; i < BL * E; ++i) act.attn[i] = act.sca[i] * act.r[i] + act.awm[i];

  // 9. out = wh1(mx) + wh2(attn) + x.
  act.out.resize(BL * D);
  std::vector<double> h2(BL * D);
  dense::linear(act.mx.data(), BL, D, w.p[kWh1Weight], w.p[kWh1Bias], D, act.out.data());
  dense::linear(act.attn.data(), BL, E, w.p[kWh2Weight], nullptr, D, h2.data());
  for (I64 i = 0; i < BL * D; ++i) act.out[i] += h2[i] + act.x[i];
  return Status::success();
}

// Moves stream s past the call (the update rule of state.hpp).
inline Status advance(const GeckoConfig& c, const Problem& p, Activations& act, State& s) {
  const I64 B = p.batch, L = p.length, C = c.chunk_size, H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim();
  // The next calls' sliding chunk attention needs the keys as this call used them: rotated at
  // their absolute positions (RoPE is never re-applied to cached keys).
  std::vector<double> rotated(act.qk[1].size());
  rope::ForwardArgs<double> ro;
  ro.config = c.rope(p.start);
  ro.x = host_view(act.qk[1], {B, L, H, dz});
  ro.y = host_view(rotated, {B, L, H, dz});
  GECKO_RETURN_IF_ERROR(rope::cpu::forward(ro));

  const bool first = s.fresh();
  const I64 P = first ? 0 : s.cached, len = P + L;
  const I64 keep = p.ends_chunk ? std::min(len, C) : len;
  // [cache ; this call] per batch row, keeping the last `keep` tokens of `row` values each.
  auto append = [&](const auto& prev, const auto& now, I64 row) {
    std::decay_t<decltype(prev)> r(B * keep * row);
    for (I64 b = 0; b < B; ++b)
      for (I64 t = len - keep; t < len; ++t) {
        auto* dst = &r[(b * keep + t - (len - keep)) * row];
        const auto* src = t < P ? &prev[(b * P + t) * row] : &now[(b * L + t - P) * row];
        std::copy(src, src + row, dst);
      }
    return r;
  };
  s.sca_prev_k = append(s.sca_prev_k, rotated, H * dz);
  s.awm_prev_k = append(s.awm_prev_k, act.qk[3], H * dz);
  s.prev_v = append(s.prev_v, act.v, H * dv);
  if (p.segments) {
    if (first) {  // before the first boundary the memory is absent or empty; any id will do
      s.prev_segment_count.resize(B);
      for (I64 b = 0; b < B; ++b) s.prev_segment_count[b] = act.seg[b * L];
    }
    if (p.ends_chunk)  // the memory now ends with the chunk before the last one: its last token's doc
      for (I64 b = 0; b < B; ++b) {
        const I64 t = std::max<I64>(len - C - 1, 0);
        s.prev_segment_count[b] = t < P ? s.prev_segment_idx[b * P + t] : act.seg[b * L + t - P];
      }
    s.prev_segment_idx = append(s.prev_segment_idx, act.seg, 1);
  }
  s.norm_count = act.norm_count;
  s.norm_mean = act.norm_mean;
  s.norm_var = act.norm_var;
  s.cema_h = act.cema_h;
  if (act.awm_problem.state_after) {
    s.has_memory = true;
    s.memory = act.memory;
    s.log_norm = act.log_norm;
  }
  s.batch = B;
  s.documents = p.segments;
  s.cached = keep;
  s.position += L;
  return Status::success();
}

// ---- backward ----

// Gradients of one call whose forward is act (from state s): dx (dense [B, L, D], overwritten) and
// every parameter gradient.
inline Status run_backward(const GeckoConfig& c, const Weights& w, const Problem& p, const State& s,
                           const Activations& act, const std::vector<double>& dout, const Gradients& g,
                           std::vector<double>& dx) {
  const I64 B = p.batch, L = p.length, BL = B * L, D = c.model_dim, Z = c.z_dim, E = c.value_dim;
  const I64 H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim(), N = c.cema_ndim;
  const working_memory::Problem& ap = act.awm_problem;
  if (ap.tail && ap.has_state)
    return unsupported("MEGA backward: the working memory has no backward for a call inside a chunk once the stream "
                       "has a memory (position " + std::to_string(p.start) + ", L=" + std::to_string(L) +
                       "); train on whole chunks or within the first chunk");

  // out = wh1(mx) + wh2(attn) + x
  dx = dout;
  std::vector<double> dmx(BL * D, 0.0), dattn(BL * E, 0.0);
  dense::linear_backward(act.mx.data(), BL, D, w.p[kWh1Weight], D, dout.data(), dmx.data(), g.p[kWh1Weight],
                         g.p[kWh1Bias]);
  dense::linear_backward(act.attn.data(), BL, E, w.p[kWh2Weight], D, dout.data(), dattn.data(), g.p[kWh2Weight],
                         nullptr);

  // attn = sca * r + awm
  std::vector<double> dsca(BL * E), dr(BL * E);
  for (I64 i = 0; i < BL * E; ++i) {
    dsca[i] = dattn[i] * act.r[i];
    dr[i] = dattn[i] * act.sca[i];
  }

  // Working memory (dout = dattn). A tail call without memory outputs constant zeros.
  std::vector<double> dqk[4], dv_awm(BL * E, 0.0);
  for (auto& d : dqk) d.assign(BL * Z, 0.0);
  if (!ap.tail) {
    std::vector<double> dmem, dln, dpk, dpv;
    working_memory::BackwardArgs<double> wb;
    set_awm(wb, c, p, s, act);
    wb.dout = host_view(dattn, {B, L, H, dv});
    wb.daq = host_view(dqk[2], {B, L, H, dz});
    wb.dak = host_view(dqk[3], {B, L, H, dz});
    wb.dv = host_view(dv_awm, {B, L, H, dv});
    if (ap.has_state) {  // the carried state is a constant here; its gradients go to scratch
      dmem.resize(B * H * dz * dv);
      dln.resize(B * H * dz);
      dpk.resize(B * ap.prev * H * dz);
      dpv.resize(B * ap.prev * H * dv);
      wb.dmemory = host_view(dmem, {B, H, dz, dv});
      wb.dlog_norm = host_view(dln, {B, H, dz});
      wb.dprev_k = host_view(dpk, {B, ap.prev, H, dz});
      wb.dprev_v = host_view(dpv, {B, ap.prev, H, dv});
    }
    GECKO_RETURN_IF_ERROR(working_memory::cpu::backward(wb));
  }

  // Sliding chunk attention (dout = dattn * r); dq, dk are w.r.t. the pre-RoPE q, k.
  std::vector<double> dv_total(BL * E);
  sliding_chunk_attention::BackwardArgs<double> sb;
  set_sca(sb, c, p, s, act);
  sb.dout = host_view(dsca, {B, L, H, dv});
  sb.dq = host_view(dqk[0], {B, L, H, dz});
  sb.dk = host_view(dqk[1], {B, L, H, dz});
  sb.dv = host_view(dv_total, {B, L, H, dv});
  GECKO_RETURN_IF_ERROR(sliding_chunk_attention::cpu::backward(sb));
  dense::add_into(dv_total, dv_awm);

  // v = silu(wv(tsn)), r = silu(wr(mx))
  std::vector<double> dpre(BL * E), dtsn(BL * D, 0.0);
  for (I64 i = 0; i < BL * E; ++i) dpre[i] = dv_total[i] * dense::silu_grad(act.pre_v[i]);
  dense::linear_backward(act.tsn.data(), BL, D, w.p[kWvWeight], E, dpre.data(), dtsn.data(), g.p[kWvWeight],
                         g.p[kWvBias]);
  for (I64 i = 0; i < BL * E; ++i) dpre[i] = dr[i] * dense::silu_grad(act.pre_r[i]);
  dense::linear_backward(act.mx.data(), BL, D, w.p[kWrWeight], E, dpre.data(), dmx.data(), g.p[kWrWeight],
                         g.p[kWrBias]);

  // q, k, aq, ak = zn * (gamma_i + 1) / sqrt(dz) + beta_i
  const double inv_sqrt_dz = 1.0 / std::sqrt(static_cast<double>(dz));
  std::vector<double> dzn(BL * Z, 0.0);
  for (int i = 0; i < 4; ++i) {
    const double* gam = w.p[kGamma] + i * Z;
    double* dgam = g.p[kGamma] + i * Z;
    double* dbet = g.p[kBeta] + i * Z;
    for (I64 ch = 0; ch < Z; ++ch) dgam[ch] = dbet[ch] = 0.0;
    for (I64 r = 0; r < BL; ++r)
      for (I64 ch = 0; ch < Z; ++ch) {
        const double d = dqk[i][r * Z + ch];
        dzn[r * Z + ch] += d * ((gam[ch] + 1.0) * inv_sqrt_dz);
        dgam[ch] += d * act.zn[r * Z + ch] * inv_sqrt_dz;
        dbet[ch] += d;
      }
  }

  // zn = znorm(z), z = wz(mx)
  std::vector<double> dz_(BL * Z);
  group_norm::BackwardArgs<double> znb;
  znb.kind = group_norm::Kind::kRms;
  znb.groups = H;
  znb.eps = c.norm_eps;
  znb.x = host_view(act.z, {BL, Z});
  znb.dy = host_view(dzn, {BL, Z});
  znb.dx = host_view(dz_, {BL, Z});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::backward(znb));
  dense::linear_backward(act.mx.data(), BL, D, w.p[kWzWeight], Z, dz_.data(), dmx.data(), g.p[kWzWeight],
                         g.p[kWzBias]);

  // mx = GroupRMSNorm(out_cema)
  std::vector<double> dcema(BL * D);
  group_norm::BackwardArgs<double> rnb;
  rnb.kind = group_norm::Kind::kRms;
  rnb.groups = c.layernorm_num_groups;
  rnb.eps = c.norm_eps;
  rnb.x = host_view(act.cema, {BL, D});
  rnb.weight = cv(w.p[kRmsnormWeight], {D});
  rnb.dy = host_view(dmx, {BL, D});
  rnb.dx = host_view(dcema, {BL, D});
  rnb.dweight = mv(g.p[kRmsnormWeight], {D});
  GECKO_RETURN_IF_ERROR(group_norm::cpu::backward(rnb));

  // out_cema = CEMA(tsn) + tsn (its dx includes the residual)
  std::vector<double> dtsn_cema(BL * D);
  cema::BackwardArgs<double> ceb;
  set_cema(ceb, c, w, p, s, act);
  ceb.dy = host_view(dcema, {B, L, D});
  ceb.dx = host_view(dtsn_cema, {B, L, D});
  ceb.dalpha = mv(g.p[kCemaAlpha], {D, N});
  ceb.ddelta = mv(g.p[kCemaDelta], {D, N});
  ceb.dtheta = mv(g.p[kCemaTheta], {D});
  ceb.dgamma = mv(g.p[kCemaGamma], {D, N, 2});
  GECKO_RETURN_IF_ERROR(cema::cpu::backward(ceb));
  dense::add_into(dtsn, dtsn_cema);

  // tsn = TimestepDecayNorm(x)
  std::vector<double> dx_tn(BL * D);
  timestep_norm::BackwardArgs<double> tnb;
  set_timenorm(tnb, c, w, p, s, act);
  tnb.dy = host_view(dtsn, {B, L, D});
  tnb.dx = host_view(dx_tn, {B, L, D});
  tnb.dweight = mv(g.p[kTimenormWeight], {D});
  tnb.dbias = mv(g.p[kTimenormBias], {D});
  GECKO_RETURN_IF_ERROR(timestep_norm::cpu::backward(tnb));
  dense::add_into(dx, dx_tn);
  return Status::success();
}

// Validation shared by the public entry points and the block: args, then the stream state.
template <class A>
Status prepare(const GeckoConfig& c, const A& a, const State& s, Problem& p) {
  GECKO_RETURN_IF_ERROR(validate(c, a, s.position, Memory::kHost, p));
  return check_state(c, s, p);
}

}  // namespace detail

template <class T>
Status forward(const GeckoConfig& config, const ParameterSet& params, const ForwardArgs<T>& a,
               State* state = nullptr) {
  State local;
  State& s = state ? *state : local;
  Problem p;
  GECKO_RETURN_IF_ERROR(detail::prepare(config, a, s, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, "", w));
  detail::Activations act;
  detail::load_inputs(p, a, act);
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, p, s, act));
  dense::store(act.out, a.out);
  if (state) GECKO_RETURN_IF_ERROR(detail::advance(config, p, act, *state));
  return Status::success();
}

template <class T>
Status backward(const GeckoConfig& config, const ParameterSet& params, const BackwardArgs<T>& a, ParameterSet& grads,
                const State* state = nullptr) {
  const State fresh;
  const State& s = state ? *state : fresh;
  Problem p;
  GECKO_RETURN_IF_ERROR(detail::prepare(config, a, s, p));
  detail::Weights w;
  GECKO_RETURN_IF_ERROR(detail::bind(config, params, "", w));
  detail::Gradients g;
  GECKO_RETURN_IF_ERROR(detail::bind(config, grads, "", g));
  detail::Activations act;
  detail::load_inputs(p, a, act);
  GECKO_RETURN_IF_ERROR(detail::run_forward(config, w, p, s, act));
  std::vector<double> dx;
  GECKO_RETURN_IF_ERROR(detail::run_backward(config, w, p, s, act, dense::load(a.dout), g, dx));
  dense::store(dx, a.dx);
  return Status::success();
}

}  // namespace gecko::layers::mega::cpu
