// Golden check: adaptive working memory (awm_basic, awm_prev, awm_segments).
//
// The golden files store q/k/v as [B, L, H*d] (= gecko's token-major [B, L, H, d]) but prev_k /
// prev_v head-major as the authors do, [B, H, C, d]; the checker views them token-major through
// strides (and writes dprev_k / dprev_v the same way), so no transpose copy is needed.
#pragma once

#include <type_traits>

#include "check_common.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/ops/working_memory/reference.hpp"

namespace gecko::golden {

inline CaseResult check_working_memory(const testing::GoldenCase& gc) {
  CaseResult r;
  r.component = gc.meta("component");
  const std::int64_t B = gc.meta_int("B"), L = gc.meta_int("L"), H = gc.meta_int("H");
  const std::int64_t dk = gc.meta_int("dk"), dv = gc.meta_int("dv"), C = gc.meta_int("chunk");
  const bool state = gc.has("memory");
  const bool segments = gc.has("segment_idx");
  const bool prev_segments = gc.has("prev_segment_idx");

  auto q = gc.get<double>("q");
  auto k = gc.get<double>("k");
  auto v = gc.get<double>("v");
  auto dout = gc.get<double>("dout_out");
  auto dmem_out = gc.has("dout_memory_out") ? gc.get<double>("dout_memory_out") : std::vector<double>{};
  auto dln_out = gc.has("dout_log_norm_term_out") ? gc.get<double>("dout_log_norm_term_out") : std::vector<double>{};
  std::vector<double> memory, log_norm, prev_k, prev_v;
  if (state) {
    memory = gc.get<double>("memory");
    log_norm = gc.get<double>("log_norm_term");
    prev_k = gc.get<double>("prev_k");
    prev_v = gc.get<double>("prev_v");
  }
  std::vector<std::int64_t> seg, prev_seg, prev_count;
  if (segments) seg = gc.get<std::int64_t>("segment_idx");
  if (prev_segments) {
    prev_seg = gc.get<std::int64_t>("prev_segment_idx");
    prev_count = gc.get<std::int64_t>("prev_segment_count");
  }

  // Head-major [B, H, C, d] storage seen as token-major [B, C, H, d].
  auto head_major = [&](auto* data, std::int64_t d) {
    using V = std::remove_pointer_t<decltype(data)>;
    return TensorView<V>::strided(data, {B, C, H, d}, {H * C * d, d, C * d, 1}, Memory::kHost);
  };

  std::vector<double> out(B * L * H * dv), mem_out(B * H * dk * dv), ln_out(B * H * dk);
  working_memory::ForwardArgs<double> f;
  f.chunk = C;
  f.aq = host_view(q, {B, L, H, dk});
  f.ak = host_view(k, {B, L, H, dk});
  f.v = host_view(v, {B, L, H, dv});
  if (state) {
    f.memory = host_view(memory, {B, H, dk, dv});
    f.log_norm = host_view(log_norm, {B, H, dk});
    f.prev_k = head_major(static_cast<const double*>(prev_k.data()), dk);
    f.prev_v = head_major(static_cast<const double*>(prev_v.data()), dv);
  }
  if (segments) f.segment_idx = host_view(seg, {B, L});
  if (prev_segments) {
    f.prev_segment_idx = host_view(prev_seg, {B, C});
    f.prev_segment_count = host_view(prev_count, {B});
  }
  f.out = host_view(out, {B, L, H, dv});
  f.memory_out = host_view(mem_out, {B, H, dk, dv});
  f.log_norm_out = host_view(ln_out, {B, H, dk});
  throw_if_error(working_memory::cpu::forward(f));
  expect_tensor(gc, r, "out", out);
  if (gc.has("memory_out")) expect_tensor(gc, r, "memory_out", mem_out);
  if (gc.has("log_norm_term_out")) expect_tensor(gc, r, "log_norm_term_out", ln_out);

  std::vector<double> dq(q.size()), dkey(k.size()), dval(v.size());
  std::vector<double> dmem(memory.size()), dln(log_norm.size()), dpk(prev_k.size()), dpv(prev_v.size());
  working_memory::BackwardArgs<double> g;
  g.chunk = C;
  g.aq = f.aq;
  g.ak = f.ak;
  g.v = f.v;
  g.memory = f.memory;
  g.log_norm = f.log_norm;
  g.prev_k = f.prev_k;
  g.prev_v = f.prev_v;
  g.segment_idx = f.segment_idx;
  g.prev_segment_idx = f.prev_segment_idx;
  g.prev_segment_count = f.prev_segment_count;
  g.dout = host_view(dout, {B, L, H, dv});
  if (!dmem_out.empty()) g.dmemory_out = host_view(dmem_out, {B, H, dk, dv});
  if (!dln_out.empty()) g.dlog_norm_out = host_view(dln_out, {B, H, dk});
  g.daq = host_view(dq, {B, L, H, dk});
  g.dak = host_view(dkey, {B, L, H, dk});
  g.dv = host_view(dval, {B, L, H, dv});
  if (state) {
    g.dmemory = host_view(dmem, {B, H, dk, dv});
    g.dlog_norm = host_view(dln, {B, H, dk});
    g.dprev_k = head_major(dpk.data(), dk);
    g.dprev_v = head_major(dpv.data(), dv);
  }
  throw_if_error(working_memory::cpu::backward(g));
  expect_tensor(gc, r, "grad_q", dq);
  expect_tensor(gc, r, "grad_k", dkey);
  expect_tensor(gc, r, "grad_v", dval);
  if (gc.has("grad_memory")) expect_tensor(gc, r, "grad_memory", dmem);
  if (gc.has("grad_log_norm_term")) expect_tensor(gc, r, "grad_log_norm_term", dln);
  if (gc.has("grad_prev_k")) expect_tensor(gc, r, "grad_prev_k", dpk);
  if (gc.has("grad_prev_v")) expect_tensor(gc, r, "grad_prev_v", dpv);
  return r;
}

}  // namespace gecko::golden
