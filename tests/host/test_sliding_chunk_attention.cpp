// Sliding chunk attention on the CPU: finite-difference gradients, agreement with an independent
// dense masked softmax (spec 1.4 / 1.9, oracle dense_sca), streaming equivalence (chunked calls
// carrying prev K/V, prefix + tail + single-token decoding with the spec 3.5 cache), strided views,
// fp32 storage, and clear errors for bad arguments.
#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <limits>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "gecko/ops/sliding_chunk_attention/reference.hpp"
#include "test_util.hpp"

using namespace gecko;
namespace sca = sliding_chunk_attention;
using I64 = std::int64_t;

namespace {

struct Case {
  I64 B, L, H, dk, dv, C, P;
  bool segments;
  rope::RopeConfig rope;
  float scale;
};

// Inputs of one call, dense [B, L, H, d] / [B, P, H, d] / [B, L] / [B, P].
struct Data {
  Case c;
  std::vector<double> q, k, v, pk, pv;
  std::vector<I64> seg, pseg;
};

// Non-decreasing document ids per batch row, prev ids first: about one boundary every 5 tokens.
void make_segments(Data& d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution boundary(0.2);
  const Case& c = d.c;
  d.seg.resize(c.B * c.L);
  d.pseg.resize(c.B * c.P);
  for (I64 b = 0; b < c.B; ++b) {
    I64 id = 3 * b;  // different ids per row, so a row mix-up would show
    for (I64 j = 0; j < c.P; ++j) d.pseg[b * c.P + j] = (id += boundary(rng));
    for (I64 r = 0; r < c.L; ++r) d.seg[b * c.L + r] = (id += boundary(rng));
  }
}

Data make_data(const Case& c, std::uint64_t seed) {
  Data d;
  d.c = c;
  d.q = test::random_normal(c.B * c.L * c.H * c.dk, seed + 1);
  d.k = test::random_normal(c.B * c.L * c.H * c.dk, seed + 2);
  d.v = test::random_normal(c.B * c.L * c.H * c.dv, seed + 3);
  d.pk = test::random_normal(c.B * c.P * c.H * c.dk, seed + 4);
  d.pv = test::random_normal(c.B * c.P * c.H * c.dv, seed + 5);
  make_segments(d, seed + 6);  // always made (streaming tests slice them), used iff c.segments
  return d;
}

template <class A, class D>
void fill_inputs(A& a, D& d) {
  const Case& c = d.c;
  a.chunk = c.C;
  a.scale = c.scale;
  a.rope = c.rope;
  a.q = host_view(d.q, {c.B, c.L, c.H, c.dk});
  a.k = host_view(d.k, {c.B, c.L, c.H, c.dk});
  a.v = host_view(d.v, {c.B, c.L, c.H, c.dv});
  if (c.P > 0) {
    a.prev_k = host_view(d.pk, {c.B, c.P, c.H, c.dk});
    a.prev_v = host_view(d.pv, {c.B, c.P, c.H, c.dv});
  }
  if (c.segments) {
    a.segment_idx = host_view(d.seg, {c.B, c.L});
    if (c.P > 0) a.prev_segment_idx = host_view(d.pseg, {c.B, c.P});
  }
}

struct Result {
  std::vector<double> out, lse, dq, dk, dv, dpk, dpv;
};

Result run_forward(Data& d) {
  const Case& c = d.c;
  Result r;
  r.out.resize(c.B * c.L * c.H * c.dv);
  r.lse.resize(c.B * c.H * c.L);
  sca::ForwardArgs<double> f;
  fill_inputs(f, d);
  f.out = host_view(r.out, {c.B, c.L, c.H, c.dv});
  f.lse = host_view(r.lse, {c.B, c.H, c.L});
  const Status s = sca::cpu::forward(f);
  REQUIRE_MESSAGE(s.ok(), s.to_string());
  return r;
}

Result run_both(Data& d, const std::vector<double>& dout) {
  const Case& c = d.c;
  Result r = run_forward(d);
  r.dq.resize(d.q.size());
  r.dk.resize(d.k.size());
  r.dv.resize(d.v.size());
  r.dpk.resize(d.pk.size());
  r.dpv.resize(d.pv.size());
  sca::BackwardArgs<double> g;
  fill_inputs(g, d);
  g.out = host_view(r.out, {c.B, c.L, c.H, c.dv});
  g.lse = host_view(r.lse, {c.B, c.H, c.L});
  g.dout = host_view(dout, {c.B, c.L, c.H, c.dv});
  g.dq = host_view(r.dq, {c.B, c.L, c.H, c.dk});
  g.dk = host_view(r.dk, {c.B, c.L, c.H, c.dk});
  g.dv = host_view(r.dv, {c.B, c.L, c.H, c.dv});
  if (c.P > 0) {
    g.dprev_k = host_view(r.dpk, {c.B, c.P, c.H, c.dk});
    g.dprev_v = host_view(r.dpv, {c.B, c.P, c.H, c.dv});
  }
  const Status s = sca::cpu::backward(g);
  REQUIRE_MESSAGE(s.ok(), s.to_string());
  return r;
}

// ---- an independent dense computation (the oracle's dense_sca, in stream positions) ----------

// RoPE by complex multiplication, theta from its definition.
std::vector<double> rope_dense(const std::vector<double>& x, I64 B, I64 L, I64 H, I64 d, const rope::RopeConfig& rc) {
  std::vector<double> y = x;
  for (I64 b = 0; b < B; ++b)
    for (I64 l = 0; l < L; ++l)
      for (I64 h = 0; h < rc.n_rope_heads; ++h)
        for (I64 i = 0; i < d / 2; ++i) {
          const float theta = 1.0f / static_cast<float>(std::pow(rc.base, 2.0 * i / d));
          const std::size_t o = ((b * L + l) * H + h) * d + 2 * i;
          const auto z = std::complex<double>(x[o], x[o + 1]) *
                         std::polar(1.0, static_cast<double>(rc.start + l) * static_cast<double>(theta));
          y[o] = z.real();
          y[o + 1] = z.imag();
        }
  return y;
}

I64 floor_div(I64 a, I64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Full path: prev keys at positions -P..-1, queries and keys of the call at 0..L-1, key j visible
// from query i iff floor(j/C) in {floor(i/C)-1, floor(i/C)} and j <= i (spec 1.4). Tail path: the
// query r (position P + r of the window) sees every key up to it (spec 1.9).
void dense_sca(const Data& d, std::vector<double>& out, std::vector<double>& lse) {
  const Case& c = d.c;
  const I64 B = c.B, L = c.L, H = c.H, P = c.P, N = P + L;
  const auto qr = rope_dense(d.q, B, L, H, c.dk, c.rope);
  const auto kr = rope_dense(d.k, B, L, H, c.dk, c.rope);
  out.assign(B * L * H * c.dv, 0.0);
  lse.assign(B * H * L, 0.0);
  const bool tail = L < c.C;
  for (I64 b = 0; b < B; ++b)
    for (I64 h = 0; h < H; ++h)
      for (I64 i = 0; i < L; ++i) {
        std::vector<double> s(N, -std::numeric_limits<double>::infinity());
        for (I64 n = 0; n < N; ++n) {
          const I64 pos = n - P;  // stream position relative to the call
          const bool allowed = tail ? n <= P + i
                                    : pos <= i && floor_div(pos, c.C) >= floor_div(i, c.C) - 1;
          if (!allowed) continue;
          if (c.segments) {
            const I64 ks = n < P ? d.pseg[b * P + n] : d.seg[b * L + n - P];
            if (ks != d.seg[b * L + i]) continue;
          }
          const double* kv = n < P ? &d.pk[((b * P + n) * H + h) * c.dk] : &kr[((b * L + n - P) * H + h) * c.dk];
          const double* qv = &qr[((b * L + i) * H + h) * c.dk];
          double dot = 0;
          for (I64 e = 0; e < c.dk; ++e) dot += qv[e] * kv[e];
          s[n] = c.scale * dot;
        }
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (double e : s) m = std::max(m, e);
        for (double& e : s) z += (e = std::exp(e - m));
        lse[(b * H + h) * L + i] = m + std::log(z);
        for (I64 n = 0; n < N; ++n) {
          const double* vv = n < P ? &d.pv[((b * P + n) * H + h) * c.dv] : &d.v[((b * L + n - P) * H + h) * c.dv];
          for (I64 e = 0; e < c.dv; ++e) out[((b * L + i) * H + h) * c.dv + e] += s[n] / z * vv[e];
        }
      }
}

// Tokens [a, a + n) of a dense [B, L, row] tensor.
template <class V>
V slice_tokens(const V& x, I64 B, I64 L, I64 row, I64 a, I64 n) {
  V y(B * n * row);
  for (I64 b = 0; b < B; ++b)
    for (I64 t = 0; t < n * row; ++t) y[b * n * row + t] = x[(b * L + a) * row + t];
  return y;
}

// [B, n1, row] ++ [B, n2, row] along the token axis.
template <class V>
V concat_tokens(const V& x, I64 n1, const V& y, I64 n2, I64 B, I64 row) {
  V z(B * (n1 + n2) * row);
  for (I64 b = 0; b < B; ++b) {
    for (I64 t = 0; t < n1 * row; ++t) z[b * (n1 + n2) * row + t] = x[b * n1 * row + t];
    for (I64 t = 0; t < n2 * row; ++t) z[(b * (n1 + n2) + n1) * row + t] = y[b * n2 * row + t];
  }
  return z;
}

std::vector<double> rope_forward(const std::vector<double>& x, I64 B, I64 L, I64 H, I64 d, const rope::RopeConfig& rc) {
  std::vector<double> y(x.size());
  rope::ForwardArgs<double> f;
  f.config = rc;
  f.x = host_view(x, {B, L, H, d});
  f.y = host_view(y, {B, L, H, d});
  throw_if_error(rope::cpu::forward(f));
  return y;
}

std::vector<double> rope_backward(const std::vector<double>& dy, I64 B, I64 L, I64 H, I64 d,
                                  const rope::RopeConfig& rc) {
  std::vector<double> dx(dy.size());
  rope::BackwardArgs<double> g;
  g.config = rc;
  g.dy = host_view(dy, {B, L, H, d});
  g.dx = host_view(dx, {B, L, H, d});
  throw_if_error(rope::cpu::backward(g));
  return dx;
}

void run_fd(const Case& c, std::uint64_t seed) {
  Data d = make_data(c, seed);
  const auto dout = test::random_normal(c.B * c.L * c.H * c.dv, seed + 10);
  const Result g = run_both(d, dout);
  auto loss = [&]() { return test::dot(run_forward(d).out, dout); };
  test::check_gradient("q", d.q, g.dq, loss);
  test::check_gradient("k", d.k, g.dk, loss);
  test::check_gradient("v", d.v, g.dv, loss);
  if (c.P > 0) {
    test::check_gradient("prev_k", d.pk, g.dpk, loss);
    test::check_gradient("prev_v", d.pv, g.dpv, loss);
  }
}

}  // namespace

TEST_CASE("sliding chunk attention gradients match finite differences") {
  // Full path with a carried chunk, packed documents, RoPE on 2 of 3 heads from position 4.
  run_fd({2, 8, 3, 4, 3, 4, 4, true, {10000.0, 2, 4}, 0.7f}, 100);
  // Full path from scratch, 3 chunks, one rotated head.
  run_fd({1, 12, 2, 6, 2, 4, 0, true, {500.0, 1, 0}, 1.3f}, 200);
  // Tail path: 3 queries after 5 cached keys (chunk 0 complete, chunk 1 partly seen).
  run_fd({2, 3, 2, 4, 3, 4, 5, true, {10000.0, 2, 9}, 0.5f}, 300);
  // No segments, no RoPE.
  run_fd({2, 8, 2, 3, 4, 4, 4, false, {10000.0, 0, 0}, 1.0f}, 400);
}

TEST_CASE("sliding chunk attention equals a dense masked softmax") {
  const Case cases[] = {
      {2, 16, 2, 4, 3, 4, 0, false, {10000.0, 2, 0}, 1.0f},     // full, no prev
      {2, 16, 3, 6, 5, 4, 4, true, {10000.0, 1, 4}, 0.8f},      // full, prev, segments, partial RoPE
      {1, 24, 2, 8, 4, 8, 8, true, {500000.0, 2, 8}, 0.3f},     // full, prev
      {2, 5, 2, 4, 3, 5, 5, false, {10000.0, 2, 5}, 1.0f},      // L == C with prev
      {2, 3, 2, 4, 3, 8, 0, true, {10000.0, 2, 0}, 1.0f},       // tail, first chunk of the stream
      {2, 3, 2, 4, 3, 8, 8, true, {10000.0, 2, 8}, 1.1f},       // tail at a chunk boundary
      {1, 1, 2, 4, 3, 8, 13, true, {10000.0, 2, 13}, 1.0f},     // decode step in chunk 1
      {2, 4, 1, 2, 2, 8, 12, false, {10000.0, 1, 12}, 2.0f},    // tail filling the window to 2C
      {1, 16, 1, 2, 1, 1, 1, true, {10000.0, 1, 1}, 1.0f},      // C = 1: each query sees j-1 and j
  };
  std::uint64_t seed = 1000;
  for (const Case& c : cases) {
    Data d = make_data(c, seed += 17);
    const Result r = run_forward(d);
    std::vector<double> out, lse;
    dense_sca(d, out, lse);
    GECKO_CHECK_CLOSE(r.out, out, 1e-13, "out L=" << c.L << " C=" << c.C << " P=" << c.P);
    GECKO_CHECK_CLOSE(r.lse, lse, 1e-13, "lse L=" << c.L << " C=" << c.C << " P=" << c.P);
  }
}

namespace {

void check_two_calls(bool segments) {
  INFO("segments " << segments);
  const I64 B = 2, H = 2, dk = 4, dv = 3, C = 4, N = 4 * C, half = N / 2;
  const rope::RopeConfig rc{10000.0, 2, 0};
  Data full = make_data({B, N, H, dk, dv, C, 0, segments, rc, 0.9f}, 77);
  const auto dout = test::random_normal(B * N * H * dv, 78);
  const Result rf = run_both(full, dout);

  // Call 1: tokens [0, 2C) from position 0.
  Data d1;
  d1.c = {B, half, H, dk, dv, C, 0, segments, rc, 0.9f};
  d1.q = slice_tokens(full.q, B, N, H * dk, 0, half);
  d1.k = slice_tokens(full.k, B, N, H * dk, 0, half);
  d1.v = slice_tokens(full.v, B, N, H * dv, 0, half);
  d1.seg = slice_tokens(full.seg, B, N, 1, 0, half);
  const auto dout1 = slice_tokens(dout, B, N, H * dv, 0, half);
  const Result r1 = run_both(d1, dout1);

  // Call 2: tokens [2C, 4C) from position 2C, carrying call 1's last chunk (keys post-RoPE).
  Data d2;
  d2.c = {B, half, H, dk, dv, C, C, segments, {rc.base, rc.n_rope_heads, half}, 0.9f};
  d2.q = slice_tokens(full.q, B, N, H * dk, half, half);
  d2.k = slice_tokens(full.k, B, N, H * dk, half, half);
  d2.v = slice_tokens(full.v, B, N, H * dv, half, half);
  d2.seg = slice_tokens(full.seg, B, N, 1, half, half);
  d2.pk = slice_tokens(rope_forward(d1.k, B, half, H, dk, rc), B, half, H * dk, half - C, C);
  d2.pv = slice_tokens(d1.v, B, half, H * dv, half - C, C);
  d2.pseg = slice_tokens(d1.seg, B, half, 1, half - C, C);
  const auto dout2 = slice_tokens(dout, B, N, H * dv, half, half);
  const Result r2 = run_both(d2, dout2);

  GECKO_CHECK_CLOSE(concat_tokens(r1.out, half, r2.out, half, B, H * dv), rf.out, 1e-14, "out");
  GECKO_CHECK_CLOSE(concat_tokens(r1.dq, half, r2.dq, half, B, H * dk), rf.dq, 1e-13, "dq");

  // The carried chunk's gradient flows back into call 1's last chunk: dprev_v as is, dprev_k
  // (post-RoPE) through the inverse rotation at its own positions C..2C-1.
  auto dv1 = r1.dv, dk1 = r1.dk;
  const auto dpk_pre = rope_backward(r2.dpk, B, C, H, dk, {rc.base, rc.n_rope_heads, half - C});
  for (I64 b = 0; b < B; ++b) {
    for (I64 t = 0; t < C * H * dv; ++t) dv1[(b * half + half - C) * H * dv + t] += r2.dpv[b * C * H * dv + t];
    for (I64 t = 0; t < C * H * dk; ++t) dk1[(b * half + half - C) * H * dk + t] += dpk_pre[b * C * H * dk + t];
  }
  GECKO_CHECK_CLOSE(concat_tokens(dv1, half, r2.dv, half, B, H * dv), rf.dv, 1e-13, "dv");
  GECKO_CHECK_CLOSE(concat_tokens(dk1, half, r2.dk, half, B, H * dk), rf.dk, 1e-13, "dk");
}

}  // namespace

TEST_CASE("sliding chunk attention: one call equals two chunk-aligned calls carrying prev K/V") {
  check_two_calls(false);
  check_two_calls(true);
}

TEST_CASE("sliding chunk attention: key_visible and first_key describe the same window") {
  for (I64 C : {1, 3, 4})
    for (I64 i = 0; i < 5 * C; ++i)
      for (I64 j = 0; j < 6 * C; ++j) {
        const bool in_range = j >= sca::first_key(i, C) && j <= i;
        const bool rule = j <= i && j / C >= i / C - 1;  // spec 1.4 in window positions
        REQUIRE(sca::key_visible(j, i, C) == rule);
        REQUIRE(in_range == rule);
      }
}

namespace {

void check_streaming(bool segments) {
  const I64 B = 2, H = 2, dk = 4, dv = 3, C = 4, N = 3 * C;
  const rope::RopeConfig rc{10000.0, 1, 0};
  Data full = make_data({B, N, H, dk, dv, C, 0, segments, rc, 1.0f}, 91);
  const Result rf = run_forward(full);

  // Call lengths of each scenario; multi-token calls start on chunk boundaries (spec 3.5).
  const std::vector<std::vector<I64>> scenarios = {
      {C, 3, 1, 1, 1, 1, 1},           // full chunk, tail of 3 at a boundary, then decoding
      {3, 1, 1, 1, 1, 1, 1, 1, 1, 1},  // first call a short prompt (tail path, P = 0)
      {2 * C, 1, 1, 1, 1},             // two chunks, then a whole chunk decoded token by token
      {C, C - 1, 1, 2, 1, 1},          // tails that complete chunks exactly
  };
  for (const auto& calls : scenarios) {
    I64 total = 0;
    for (I64 n : calls) total += n;
    REQUIRE(total == N);
    // The spec 3.5 cache: post-RoPE keys, values and segment ids of chunk n-1 plus the part of
    // chunk n seen so far; cut to the last C tokens whenever the token count hits a multiple of C.
    std::vector<double> ck, cv;
    std::vector<I64> cs;
    I64 P = 0, count = 0;
    std::vector<double> out_stream;
    I64 done = 0;
    for (I64 L : calls) {
      Data d;
      d.c = {B, L, H, dk, dv, C, P, segments, {rc.base, rc.n_rope_heads, count}, 1.0f};
      d.q = slice_tokens(full.q, B, N, H * dk, count, L);
      d.k = slice_tokens(full.k, B, N, H * dk, count, L);
      d.v = slice_tokens(full.v, B, N, H * dv, count, L);
      d.seg = slice_tokens(full.seg, B, N, 1, count, L);
      d.pk = ck;
      d.pv = cv;
      d.pseg = cs;
      const Result r = run_forward(d);
      out_stream = concat_tokens(out_stream, done, r.out, L, B, H * dv);
      done += L;

      ck = concat_tokens(ck, P, rope_forward(d.k, B, L, H, dk, d.c.rope), L, B, H * dk);
      cv = concat_tokens(cv, P, d.v, L, B, H * dv);
      cs = concat_tokens(cs, P, d.seg, L, B, 1);
      P += L;
      count += L;
      if (count % C == 0 && P > C) {
        ck = slice_tokens(ck, B, P, H * dk, P - C, C);
        cv = slice_tokens(cv, B, P, H * dv, P - C, C);
        cs = slice_tokens(cs, B, P, 1, P - C, C);
        P = C;
      }
    }
    GECKO_CHECK_CLOSE(out_stream, rf.out, 1e-13, "streamed out, first call " << calls[0] << " segments " << segments);
  }
}

}  // namespace

TEST_CASE("sliding chunk attention: prefix, tail and single-token calls equal one full call") {
  check_streaming(false);
  check_streaming(true);
}

TEST_CASE("sliding chunk attention reads strided q/k/v views (the block's packed z4 layout)") {
  const Case c{2, 8, 2, 4, 3, 4, 0, true, {10000.0, 2, 0}, 1.0f};
  Data d = make_data(c, 55);
  const Result want = run_forward(d);
  // z4 is [B, L, 4, H*dk] with q in slot 0 and k in slot 1; v sits in a padded [B, L, H*dv + 5].
  const I64 HD = c.H * c.dk, vpitch = c.H * c.dv + 5;
  std::vector<double> z4(c.B * c.L * 4 * HD, 99.0), vp(c.B * c.L * vpitch, 99.0);
  for (I64 t = 0; t < c.B * c.L; ++t) {
    for (I64 e = 0; e < HD; ++e) {
      z4[(t * 4 + 0) * HD + e] = d.q[t * HD + e];
      z4[(t * 4 + 1) * HD + e] = d.k[t * HD + e];
    }
    for (I64 e = 0; e < c.H * c.dv; ++e) vp[t * vpitch + e] = d.v[t * c.H * c.dv + e];
  }
  std::vector<double> out(want.out.size());
  sca::ForwardArgs<double> f;
  fill_inputs(f, d);
  f.q = TensorView<const double>::strided(z4.data(), {c.B, c.L, c.H, c.dk}, {c.L * 4 * HD, 4 * HD, c.dk, 1},
                                          Memory::kHost);
  f.k = TensorView<const double>::strided(z4.data() + HD, {c.B, c.L, c.H, c.dk}, {c.L * 4 * HD, 4 * HD, c.dk, 1},
                                          Memory::kHost);
  f.v = TensorView<const double>::strided(vp.data(), {c.B, c.L, c.H, c.dv}, {c.L * vpitch, vpitch, c.dv, 1},
                                          Memory::kHost);
  f.out = host_view(out, {c.B, c.L, c.H, c.dv});
  REQUIRE(sca::cpu::forward(f).ok());
  CHECK(out == want.out);
}

TEST_CASE("sliding chunk attention with fp32 storage matches the double reference") {
  const Case c{2, 8, 2, 4, 3, 4, 4, true, {10000.0, 2, 4}, 0.7f};
  Data d = make_data(c, 66);
  const auto dout = test::random_normal(c.B * c.L * c.H * c.dv, 67);
  // Round the inputs to fp32 first so both runs see the same values.
  for (auto* v : {&d.q, &d.k, &d.v, &d.pk, &d.pv}) *v = test::widen(test::narrow<float>(*v));
  const auto doutr = test::widen(test::narrow<float>(dout));
  const Result want = run_both(d, doutr);

  const auto q = test::narrow<float>(d.q), k = test::narrow<float>(d.k), v = test::narrow<float>(d.v);
  const auto pk = test::narrow<float>(d.pk), pv = test::narrow<float>(d.pv), go = test::narrow<float>(doutr);
  std::vector<float> out(want.out.size()), lse(want.lse.size()), dq(q.size()), dk(k.size()), dv(v.size()),
      dpk(pk.size()), dpv(pv.size());
  sca::ForwardArgs<float> f;
  f.chunk = c.C;
  f.scale = c.scale;
  f.rope = c.rope;
  f.q = host_view(q, {c.B, c.L, c.H, c.dk});
  f.k = host_view(k, {c.B, c.L, c.H, c.dk});
  f.v = host_view(v, {c.B, c.L, c.H, c.dv});
  f.prev_k = host_view(pk, {c.B, c.P, c.H, c.dk});
  f.prev_v = host_view(pv, {c.B, c.P, c.H, c.dv});
  f.segment_idx = host_view(d.seg, {c.B, c.L});
  f.prev_segment_idx = host_view(d.pseg, {c.B, c.P});
  f.out = host_view(out, {c.B, c.L, c.H, c.dv});
  f.lse = host_view(lse, {c.B, c.H, c.L});
  REQUIRE(sca::cpu::forward(f).ok());
  sca::BackwardArgs<float> g;
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
  g.dout = host_view(go, {c.B, c.L, c.H, c.dv});
  g.dq = host_view(dq, {c.B, c.L, c.H, c.dk});
  g.dk = host_view(dk, {c.B, c.L, c.H, c.dk});
  g.dv = host_view(dv, {c.B, c.L, c.H, c.dv});
  g.dprev_k = host_view(dpk, {c.B, c.P, c.H, c.dk});
  g.dprev_v = host_view(dpv, {c.B, c.P, c.H, c.dv});
  REQUIRE(sca::cpu::backward(g).ok());
  const double tol = test::output_tolerance<float>();
  GECKO_CHECK_CLOSE(test::widen(out), want.out, tol, "out");
  GECKO_CHECK_CLOSE(test::widen(lse), want.lse, tol, "lse");
  GECKO_CHECK_CLOSE(test::widen(dq), want.dq, tol, "dq");
  GECKO_CHECK_CLOSE(test::widen(dk), want.dk, tol, "dk");
  GECKO_CHECK_CLOSE(test::widen(dv), want.dv, tol, "dv");
  GECKO_CHECK_CLOSE(test::widen(dpk), want.dpk, tol, "dprev_k");
  GECKO_CHECK_CLOSE(test::widen(dpv), want.dpv, tol, "dprev_v");
}

TEST_CASE("sliding chunk attention rejects bad arguments with a message naming them") {
  const I64 B = 2, L = 8, H = 2, dk = 4, dv = 3, C = 4;
  std::vector<float> q(B * 2 * C * H * 5), k(q.size()), v(B * 2 * C * H * dv), out(v.size()), lse(B * H * L);
  std::vector<float> pk(B * C * H * dk), pv(B * C * H * dv);
  std::vector<I64> seg(B * L), pseg(B * (C + 1));
  sca::ForwardArgs<float> f;
  auto reset = [&]() {
    f = {};
    f.chunk = C;
    f.q = host_view(q, {B, L, H, dk});
    f.k = host_view(k, {B, L, H, dk});
    f.v = host_view(v, {B, L, H, dv});
    f.out = host_view(out, {B, L, H, dv});
  };
  auto has = [&](const std::string& needle) {
    const std::string m = sca::cpu::forward(f).message();
    INFO("message: " << m);
    CHECK(m.find(needle) != std::string::npos);
  };
  reset();
  REQUIRE(sca::cpu::forward(f).ok());

  const DecodeCursor cursor{};  // device memory for the CUDA decoding kernel only
  f.cursor = &cursor;
  has("decode cursor");
  reset();

  f.q = host_view(q, {B, 6, H, dk});
  f.k = host_view(k, {B, 6, H, dk});
  f.v = host_view(v, {B, 6, H, dv});
  f.out = host_view(out, {B, 6, H, dv});
  has("L=6 must be a multiple of the chunk size C=4 on the full path (L >= C)");

  reset();
  f.prev_k = host_view(pk, {B, 2, H, dk});
  f.prev_v = host_view(pv, {B, 2, H, dv});
  has("prev_k holds P=2 keys; the full path (L >= C) needs none or exactly one chunk (P = C=4)");

  reset();  // tail: 3 queries after 6 keys > 2C
  f.q = host_view(q, {B, 3, H, dk});
  f.k = host_view(k, {B, 3, H, dk});
  f.v = host_view(v, {B, 3, H, dv});
  f.out = host_view(out, {B, 3, H, dv});
  f.prev_k = host_view(q, {B, 6, H, dk});
  f.prev_v = host_view(v, {B, 6, H, dv});
  has("the tail path (L=3 < C=4) allows at most 2C=8 keys, got P=6 prev keys + L=3");
  f.prev_k = host_view(q, {B, 5, H, dk});
  f.prev_v = host_view(v, {B, 5, H, dv});
  CHECK(sca::cpu::forward(f).ok());  // exactly 2C keys is legal

  reset();
  f.prev_k = host_view(pk, {B, C, H, dk});
  has("prev_k and prev_v must be given together (got only prev_k)");
  f.prev_v = host_view(pv, {B, C, 1, dv * H});
  has("prev_v has shape [2, 4, 1, 6], expected [2, 4, 2, 3]");
  f.prev_v = host_view(pv, {B, C, H, dv});
  f.prev_k = host_view(pk, {B, C, H * dk});
  has("prev_k has shape [2, 4, 8], expected [B, P, H, dk]");
  f.prev_k = host_view(pk, {1, 2 * C, H, dk});
  has("prev_k has shape [1, 8, 2, 4], expected [2, 8, 2, 4]");

  reset();
  f.rope = {10000.0, 3, 0};
  has("rope.n_rope_heads=3 exceeds the number of heads H=2");
  f.rope = {10000.0, 1, -2};
  has("rope.start must be >= 0");
  f.rope = {10000.0, 1, 0};
  f.q = host_view(q, {B, L, H, 5});
  f.k = host_view(k, {B, L, H, 5});
  has("head dimension 5 must be even for RoPE");
  f.rope.n_rope_heads = 0;
  CHECK(sca::cpu::forward(f).ok());  // odd dk is fine without RoPE

  reset();
  f.segment_idx = host_view(seg, {B, L});
  f.prev_k = host_view(pk, {B, C, H, dk});
  f.prev_v = host_view(pv, {B, C, H, dv});
  has("prev_segment_idx [B, P=4] is required when segment_idx is given with prev_k");
  f.prev_segment_idx = host_view(pseg, {B, C + 1});
  has("prev_segment_idx has shape [2, 5], expected [2, 4]");
  f.segment_idx = {};
  has("prev_segment_idx is given but segment_idx is not");
  f.segment_idx = host_view(seg, {B * L});
  has("segment_idx has shape [16], expected [2, 8]");

  reset();
  f.chunk = 0;
  has("chunk must be >= 1");
  f.chunk = C;
  f.scale = std::numeric_limits<float>::quiet_NaN();
  has("scale must be finite");
  f.scale = 1.0f;
  f.lse = host_view(lse, {B, L, H});
  has("lse has shape [2, 8, 2], expected [2, 2, 8]");
  f.lse = {};
  f.out = {};
  has("out is missing");
  f.out = host_view(out, {B, L, H, dv});
  f.k = TensorView<const float>::device(k.data(), {B, L, H, dk});
  has("k lives in device memory, expected host memory");
  f.k = host_view(k, {B, L, H, dk});
  f.v = host_view(v, {B, L - 1, H, dv});
  has("v has shape [2, 7, 2, 3], expected [2, 8, 2, 3]");
  f.v = TensorView<const float>::strided(v.data(), {B, L, H, dv}, {L * H * dv, H * dv, 1, H}, Memory::kHost);
  has("v must have unit stride in its last dimension");
  f.v = host_view(v, {B, L, H, dv});
  f.q = {};
  has("q is missing");

  sca::BackwardArgs<float> g;
  std::vector<float> dq(B * L * H * dk), dk_(dq.size()), dv_(B * L * H * dv), dout(dv_.size());
  g.chunk = C;
  g.q = host_view(q, {B, L, H, dk});
  g.k = host_view(k, {B, L, H, dk});
  g.v = host_view(v, {B, L, H, dv});
  g.dout = host_view(dout, {B, L, H, dv});
  g.dq = host_view(dq, {B, L, H, dk});
  g.dk = host_view(dk_, {B, L, H, dk});
  g.dv = host_view(dv_, {B, L, H, dv});
  REQUIRE(sca::cpu::backward(g).ok());
  g.dprev_k = host_view(pk, {B, C, H, dk});
  CHECK(sca::cpu::backward(g).message().find("dprev_k/dprev_v are given but there is no prev_k/prev_v") !=
        std::string::npos);
  g.prev_k = host_view(pk, {B, C, H, dk});
  g.prev_v = host_view(pv, {B, C, H, dv});
  g.dprev_k = host_view(pk, {B, C, H, dk + 1});
  CHECK(sca::cpu::backward(g).message().find("dprev_k has shape [2, 4, 2, 5], expected [2, 4, 2, 4]") !=
        std::string::npos);
  g.dprev_k = {};
  g.dq = host_view(dq, {B, L, H, dv});
  CHECK(sca::cpu::backward(g).message().find("dq has shape") != std::string::npos);
  g.dq = host_view(dq, {B, L, H, dk});
  g.lse = host_view(lse, {B, H, L + 1});
  CHECK(sca::cpu::backward(g).message().find("lse has shape") != std::string::npos);
  g.lse = {};

  // Kept probabilities: shape [B, H, L/C, C, 2C], dense, a whole number of chunks, out alongside in
  // the backward; and only the CUDA GEMM-staged path keeps them.
  std::vector<float> probs(B * H * L * 2 * C);
  reset();
  f.probs = TensorView<float>::host(probs.data(), {B, H, L / C, C, 2 * C});
  has("probs are kept only by the CUDA GEMM-staged path");
  f.probs = TensorView<float>::host(probs.data(), {B, H, L / C, C, C});
  has("probs has shape [2, 2, 2, 4, 4], expected [2, 2, 2, 4, 8]");
  f.probs = TensorView<float>::strided(probs.data(), {B, H, L / C, C, 2 * C},
                                       {H * L * 2 * C, L * 2 * C, C * 2 * C, 4 * C, 1}, Memory::kHost);
  has("probs must be contiguous");
  f.probs = TensorView<float>::device(probs.data(), {B, H, L / C, C, 2 * C});
  has("probs lives in device memory");
  g.probs = TensorView<const float>::host(probs.data(), {B, H, L / C, C, 2 * C});
  CHECK(sca::cpu::backward(g).message().find("probs are given without out") != std::string::npos);
  g.out = host_view(out, {B, L, H, dv});
  CHECK(sca::cpu::backward(g).message().find("probs are kept only by the CUDA GEMM-staged path") != std::string::npos);
}
