// Golden check: sliding chunk attention with RoPE inside (sca_basic, sca_prev_partial_rope,
// sca_segments). The files store q/k/v as [B, L, H*d], which is the same memory as the op's
// [B, L, H, d]; prev_k is [B, C, H, dk] and already rotated. The rotation is computed from the
// rope_base / rope_start / n_rope_heads metadata; the stored freqs_cis table (the authors' fp32
// cos/sin of rows start .. start+L-1) is compared with ours as an extra tensor, "freqs_cis".
#pragma once

#include <cmath>

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "gecko/ops/sliding_chunk_attention/reference.hpp"

namespace gecko::golden {

inline CaseResult check_sliding_chunk_attention(const testing::GoldenCase& gc) {
  namespace sca = sliding_chunk_attention;
  CaseResult r;
  r.component = gc.meta("component");
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), H = gc.meta_int("H");
  const std::int64_t dk = gc.meta_int("dk"), dv = gc.meta_int("dv"), C = gc.meta_int("chunk");
  rope::RopeConfig rc;
  rc.base = gc.meta_double("rope_base");
  rc.start = gc.meta_int("rope_start");
  rc.n_rope_heads = static_cast<int>(gc.meta_int("n_rope_heads"));

  // Our cos/sin at the call's positions against the stored table [L, dk/2, (cos, sin)].
  if (gc.has("freqs_cis") && rc.enabled()) {
    const auto theta = rope::cpu::inv_freqs(rc.base, dk);
    std::vector<double> table(static_cast<std::size_t>(L * dk));
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t i = 0; i < dk / 2; ++i) {
        const double phi = rope::angle(rc.start + l, theta[i]);
        table[(l * dk / 2 + i) * 2] = std::cos(phi);
        table[(l * dk / 2 + i) * 2 + 1] = std::sin(phi);
      }
    expect_tensor(gc, r, "freqs_cis", table);
  }

  const auto q = gc.get<double>("q"), k = gc.get<double>("k"), v = gc.get<double>("v");
  const auto dout = gc.get<double>("dout_out");
  const bool prev = gc.has("prev_k");
  const std::int64_t P = prev ? gc.shape("prev_k")[1] : 0;
  const auto prev_k = prev ? gc.get<double>("prev_k") : std::vector<double>{};
  const auto prev_v = prev ? gc.get<double>("prev_v") : std::vector<double>{};
  const auto seg = gc.has("segment_idx") ? gc.get<std::int64_t>("segment_idx") : std::vector<std::int64_t>{};
  const auto prev_seg =
      gc.has("prev_segment_idx") ? gc.get<std::int64_t>("prev_segment_idx") : std::vector<std::int64_t>{};

  std::vector<double> out(B * L * H * dv), dq(q.size()), dk_(k.size()), dv_(v.size());
  std::vector<double> dprev_k(prev_k.size()), dprev_v(prev_v.size());

  sca::ForwardArgs<double> f;
  f.chunk = C;
  f.scale = static_cast<float>(gc.meta_double("scale"));
  f.rope = rc;
  f.q = host_view(q, {B, L, H, dk});
  f.k = host_view(k, {B, L, H, dk});
  f.v = host_view(v, {B, L, H, dv});
  if (prev) {
    f.prev_k = host_view(prev_k, {B, P, H, dk});
    f.prev_v = host_view(prev_v, {B, P, H, dv});
  }
  if (!seg.empty()) f.segment_idx = host_view(seg, {B, L});
  if (!prev_seg.empty()) f.prev_segment_idx = host_view(prev_seg, {B, P});
  f.out = host_view(out, {B, L, H, dv});
  throw_if_error(sca::cpu::forward(f));
  expect_tensor(gc, r, "out", out);

  sca::BackwardArgs<double> g;
  g.chunk = f.chunk;
  g.scale = f.scale;
  g.rope = f.rope;
  g.q = f.q;
  g.k = f.k;
  g.v = f.v;
  g.prev_k = f.prev_k;
  g.prev_v = f.prev_v;
  g.segment_idx = f.segment_idx;
  g.prev_segment_idx = f.prev_segment_idx;
  g.dout = host_view(dout, {B, L, H, dv});
  g.dq = host_view(dq, {B, L, H, dk});
  g.dk = host_view(dk_, {B, L, H, dk});
  g.dv = host_view(dv_, {B, L, H, dv});
  if (prev) {
    g.dprev_k = host_view(dprev_k, {B, P, H, dk});
    g.dprev_v = host_view(dprev_v, {B, P, H, dv});
  }
  throw_if_error(sca::cpu::backward(g));
  expect_tensor(gc, r, "grad_q", dq);
  expect_tensor(gc, r, "grad_k", dk_);
  expect_tensor(gc, r, "grad_v", dv_);
  if (prev) {
    expect_tensor(gc, r, "grad_prev_k", dprev_k);
    expect_tensor(gc, r, "grad_prev_v", dprev_v);
  }
  return r;
}

}  // namespace gecko::golden
