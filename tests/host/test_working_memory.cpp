// Adaptive working memory on the CPU: finite-difference gradients in double (with carried state,
// documents and resets), the recurrence's closed form for the first chunk, streaming equivalence
// (full calls, a partial chunk, single tokens; the authors' bug 4.1 case), and clear errors.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/working_memory/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

struct Shape {
  std::int64_t B, L, H, dk, dv, C;
};

// Inputs of one full-path call, token-major, in double.
struct Inputs {
  Shape s;
  std::vector<double> aq, ak, v;                    // [B, L, H, d]
  bool state = false;
  std::vector<double> memory, log_norm;             // [B, H, dk, dv], [B, H, dk]
  std::vector<double> prev_k, prev_v;               // [B, C, H, d]
  bool segments = false;
  std::vector<std::int64_t> seg, prev_seg, prev_count;  // [B, L], [B, C], [B]
};

struct Outputs {
  std::vector<double> out, memory, log_norm;
};

Inputs make_inputs(const Shape& s, bool state, std::uint64_t seed) {
  Inputs in;
  in.s = s;
  in.aq = test::random_normal(s.B * s.L * s.H * s.dk, seed + 1, 1.2);
  in.ak = test::random_normal(s.B * s.L * s.H * s.dk, seed + 2, 1.2);
  in.v = test::random_normal(s.B * s.L * s.H * s.dv, seed + 3);
  in.state = state;
  if (state) {
    in.memory = test::random_normal(s.B * s.H * s.dk * s.dv, seed + 4, 0.5);
    in.log_norm = test::random_normal(s.B * s.H * s.dk, seed + 5, 0.5);
    for (auto& a : in.log_norm) a += 2.0;  // a few chunks' worth of mass: ρ well inside (0, 1)
    in.prev_k = test::random_normal(s.B * s.C * s.H * s.dk, seed + 6, 1.2);
    in.prev_v = test::random_normal(s.B * s.C * s.H * s.dv, seed + 7);
  }
  return in;
}

// Documents from each row's start positions: row b gets ids first_id, first_id + 1, ... starting at
// starts[b][0] = 0, starts[b][1], ...
std::vector<std::int64_t> make_segments(std::int64_t L, const std::vector<std::vector<std::int64_t>>& starts,
                                        std::int64_t first_id = 10) {
  std::vector<std::int64_t> seg;
  for (const auto& row : starts) {
    std::int64_t id = first_id - 1;
    std::size_t next = 0;
    for (std::int64_t t = 0; t < L; ++t) {
      while (next < row.size() && row[next] == t) {
        ++id;
        ++next;
      }
      seg.push_back(id);
    }
  }
  return seg;
}

template <class A>
void set_inputs(A& a, const Inputs& in) {
  const auto& s = in.s;
  a.chunk = s.C;
  a.aq = host_view(in.aq, {s.B, s.L, s.H, s.dk});
  a.ak = host_view(in.ak, {s.B, s.L, s.H, s.dk});
  a.v = host_view(in.v, {s.B, s.L, s.H, s.dv});
  if (in.state) {
    a.memory = host_view(in.memory, {s.B, s.H, s.dk, s.dv});
    a.log_norm = host_view(in.log_norm, {s.B, s.H, s.dk});
    a.prev_k = host_view(in.prev_k, {s.B, s.C, s.H, s.dk});
    a.prev_v = host_view(in.prev_v, {s.B, s.C, s.H, s.dv});
  }
  if (in.segments) {
    a.segment_idx = host_view(in.seg, {s.B, s.L});
    if (in.state) {
      a.prev_segment_idx = host_view(in.prev_seg, {s.B, s.C});
      a.prev_segment_count = host_view(in.prev_count, {s.B});
    }
  }
}

Outputs run_forward(const Inputs& in) {
  const auto& s = in.s;
  Outputs o{std::vector<double>(s.B * s.L * s.H * s.dv), std::vector<double>(s.B * s.H * s.dk * s.dv),
            std::vector<double>(s.B * s.H * s.dk)};
  working_memory::ForwardArgs<double> f;
  set_inputs(f, in);
  f.out = host_view(o.out, {s.B, s.L, s.H, s.dv});
  f.memory_out = host_view(o.memory, {s.B, s.H, s.dk, s.dv});
  f.log_norm_out = host_view(o.log_norm, {s.B, s.H, s.dk});
  const Status st = working_memory::cpu::forward(f);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  return o;
}

// Finite differences of loss = <out, dout> + <memory_out, dmem> + <log_norm_out, dln> for every
// differentiable input.
void run_fd(Inputs in) {
  const auto& s = in.s;
  const auto dout = test::random_normal(s.B * s.L * s.H * s.dv, 101);
  const auto dmem = test::random_normal(s.B * s.H * s.dk * s.dv, 102);
  const auto dln = test::random_normal(s.B * s.H * s.dk, 103);
  auto loss = [&]() {
    const Outputs o = run_forward(in);
    return test::dot(o.out, dout) + test::dot(o.memory, dmem) + test::dot(o.log_norm, dln);
  };
  std::vector<double> daq(in.aq.size()), dak(in.ak.size()), dv(in.v.size());
  std::vector<double> dmemory(in.memory.size()), dlog_norm(in.log_norm.size());
  std::vector<double> dprev_k(in.prev_k.size()), dprev_v(in.prev_v.size());
  working_memory::BackwardArgs<double> g;
  set_inputs(g, in);
  g.dout = host_view(dout, {s.B, s.L, s.H, s.dv});
  g.dmemory_out = host_view(dmem, {s.B, s.H, s.dk, s.dv});
  g.dlog_norm_out = host_view(dln, {s.B, s.H, s.dk});
  g.daq = host_view(daq, {s.B, s.L, s.H, s.dk});
  g.dak = host_view(dak, {s.B, s.L, s.H, s.dk});
  g.dv = host_view(dv, {s.B, s.L, s.H, s.dv});
  if (in.state) {
    g.dmemory = host_view(dmemory, {s.B, s.H, s.dk, s.dv});
    g.dlog_norm = host_view(dlog_norm, {s.B, s.H, s.dk});
    g.dprev_k = host_view(dprev_k, {s.B, s.C, s.H, s.dk});
    g.dprev_v = host_view(dprev_v, {s.B, s.C, s.H, s.dv});
  }
  const Status st = working_memory::cpu::backward(g);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  test::check_gradient("aq", in.aq, daq, loss, 40);
  test::check_gradient("ak", in.ak, dak, loss, 60);
  test::check_gradient("v", in.v, dv, loss, 40);
  // The last chunk only enters the next call (through prev): exactly zero here.
  const std::int64_t last = (s.L - s.C) * s.H;
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t x = last * s.dk; x < s.L * s.H * s.dk; ++x) CHECK(dak[b * s.L * s.H * s.dk + x] == 0.0);
  if (in.state) {
    test::check_gradient("memory", in.memory, dmemory, loss, 30);
    test::check_gradient("log_norm", in.log_norm, dlog_norm, loss, 30);
    test::check_gradient("prev_k", in.prev_k, dprev_k, loss, 40);
    test::check_gradient("prev_v", in.prev_v, dprev_v, loss, 30);
  }
}

// ---- streaming: a caller that carries the state between calls like the layer's State will ----

class Streamer {
 public:
  // Starts from the state `in` carries (or none).
  explicit Streamer(const Inputs& in) : s_(in.s), segments_(in.segments) {
    memory_.assign(s_.B * s_.H * s_.dk * s_.dv, 0.0);
    log_norm_.assign(s_.B * s_.H * s_.dk, 0.0);
    if (in.state) {
      has_memory_ = true;
      memory_ = in.memory;
      log_norm_ = in.log_norm;
      prev_ = s_.C;
      pk_ = in.prev_k;
      pv_ = in.prev_v;
      if (segments_) {
        pseg_ = in.prev_seg;
        pcount_ = in.prev_count;
      }
    }
  }

  // Feeds rows [t0, t0 + n) of in's activations (strided views into the full tensors) and writes
  // the outputs into the same rows of out [B, L, H, dv].
  void feed(const Inputs& in, std::int64_t t0, std::int64_t n, std::vector<double>& out) {
    const std::int64_t B = s_.B, L = s_.L, H = s_.H, dk = s_.dk, dv = s_.dv, C = s_.C, P = prev_;
    auto rows = [&](const std::vector<double>& x, std::int64_t d) {
      return TensorView<const double>::strided(x.data() + t0 * H * d, {B, n, H, d}, {L * H * d, H * d, d, 1},
                                               Memory::kHost);
    };
    working_memory::ForwardArgs<double> f;
    f.chunk = C;
    f.aq = rows(in.aq, dk);
    f.ak = rows(in.ak, dk);
    f.v = rows(in.v, dv);
    if (has_memory_) {  // updated in place: memory_out is the very view of memory
      f.memory = host_view(memory_, {B, H, dk, dv});
      f.log_norm = host_view(log_norm_, {B, H, dk});
    }
    f.memory_out = host_view(memory_, {B, H, dk, dv});
    f.log_norm_out = host_view(log_norm_, {B, H, dk});
    if (P > 0) {
      f.prev_k = host_view(pk_, {B, P, H, dk});
      f.prev_v = host_view(pv_, {B, P, H, dv});
    }
    if (segments_) {
      f.segment_idx = TensorView<const std::int64_t>::strided(in.seg.data() + t0, {B, n}, {L, 1}, Memory::kHost);
      if (P > 0) f.prev_segment_idx = host_view(pseg_, {B, P});
      if (!pcount_.empty()) f.prev_segment_count = host_view(pcount_, {B});
    }
    f.out = TensorView<double>::strided(out.data() + t0 * H * dv, {B, n, H, dv}, {L * H * dv, H * dv, dv, 1},
                                        Memory::kHost);
    working_memory::Problem p;
    REQUIRE(working_memory::validate(f, Memory::kHost, p).ok());
    const Status st = working_memory::cpu::forward(f);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    has_memory_ = has_memory_ || p.state_after;

    // Spec 3.5: prev ++ new, cut to the last C tokens at a chunk boundary; the memory's document
    // becomes the last token of the chunk before the last one.
    const bool boundary = (count_ + n) % C == 0;
    const std::int64_t len = P + n, keep = boundary ? std::min(len, C) : len;
    pk_ = append(pk_, P, in.ak, t0, n, H * dk, keep);
    pv_ = append(pv_, P, in.v, t0, n, H * dv, keep);
    if (segments_) {
      std::vector<std::int64_t> ids(B * len);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < len; ++t)
          ids[b * len + t] = t < P ? pseg_[b * P + t] : in.seg[b * L + t0 + t - P];
      if (pcount_.empty())
        for (std::int64_t b = 0; b < B; ++b) pcount_.push_back(in.seg[b * L + t0]);
      if (boundary)
        for (std::int64_t b = 0; b < B; ++b) pcount_[b] = ids[b * len + std::max<std::int64_t>(len - C - 1, 0)];
      pseg_.assign(B * keep, 0);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t t = 0; t < keep; ++t) pseg_[b * keep + t] = ids[b * len + len - keep + t];
    }
    prev_ = keep;
    count_ += n;
  }

  const std::vector<double>& memory() const { return memory_; }
  const std::vector<double>& log_norm() const { return log_norm_; }

 private:
  // The last `keep` of the P carried rows followed by rows [t0, t0 + n) of x; a row is H*d values.
  std::vector<double> append(const std::vector<double>& prev, std::int64_t P, const std::vector<double>& x,
                             std::int64_t t0, std::int64_t n, std::int64_t row, std::int64_t keep) const {
    const std::int64_t len = P + n;
    std::vector<double> r(s_.B * keep * row);
    for (std::int64_t b = 0; b < s_.B; ++b)
      for (std::int64_t t = len - keep; t < len; ++t)
        for (std::int64_t e = 0; e < row; ++e)
          r[(b * keep + t - (len - keep)) * row + e] =
              t < P ? prev[(b * P + t) * row + e] : x[(b * s_.L + t0 + t - P) * row + e];
    return r;
  }

  Shape s_;
  bool segments_;
  bool has_memory_ = false;
  std::vector<double> memory_, log_norm_;
  std::int64_t prev_ = 0, count_ = 0;
  std::vector<double> pk_, pv_;
  std::vector<std::int64_t> pseg_, pcount_;
};

// Feeds `in` in calls of the given lengths and compares with one full call.
void check_streaming(const Inputs& in, const std::vector<std::int64_t>& calls, const char* what) {
  const Outputs full = run_forward(in);
  Streamer st(in);
  std::vector<double> out(full.out.size(), -7.0);
  std::int64_t t = 0;
  for (std::int64_t n : calls) {
    st.feed(in, t, n, out);
    t += n;
  }
  REQUIRE(t == in.s.L);
  INFO(what);
  GECKO_CHECK_CLOSE(out, full.out, 1e-13, "out");
  GECKO_CHECK_CLOSE(st.memory(), full.memory, 1e-13, "memory");
  GECKO_CHECK_CLOSE(st.log_norm(), full.log_norm, 1e-13, "log_norm");
}

// Prefix in full chunks, then a partial chunk, then one token at a time.
std::vector<std::int64_t> prefix_partial_tokens(std::int64_t L, std::int64_t C, std::int64_t prefix,
                                                std::int64_t partial) {
  std::vector<std::int64_t> calls{prefix * C, partial};
  for (std::int64_t t = prefix * C + partial; t < L; ++t) calls.push_back(1);
  return calls;
}

}  // namespace

TEST_CASE("working memory gradients match finite differences") {
  SUBCASE("no state, one document") { run_fd(make_inputs({2, 16, 2, 5, 4, 4}, false, 10)); }
  SUBCASE("carried state, one document") { run_fd(make_inputs({1, 12, 2, 6, 5, 4}, true, 20)); }
  SUBCASE("no state, documents with resets") {
    Inputs in = make_inputs({2, 24, 1, 4, 6, 4}, false, 30);
    in.segments = true;
    in.seg = make_segments(24, {{0, 6, 14}, {0, 3, 9, 10, 21}});
    run_fd(in);
  }
  SUBCASE("carried state and documents: resets at chunks 0 and 1, masked outputs") {
    Inputs in = make_inputs({2, 20, 2, 4, 5, 4}, true, 40);
    in.segments = true;
    in.seg = make_segments(20, {{0, 2, 9}, {0, 6, 15}}, 7);
    // Row 0: memory doc 5, prev chunk ends in doc 6 -> reset before chunk -1 is absorbed (step 0),
    //        and chunk 0's tokens (docs 7, 8) are outside the memory's doc: masked.
    // Row 1: memory doc 7 = the prev chunk's last doc: no reset at step 0, but the prev ids mix
    //        docs 6/7, so chunk -1 is key-masked; chunk 1 is half doc 7, half doc 8: half its
    //        outputs are masked, and step 2 resets.
    in.prev_seg = {6, 6, 6, 6, 6, 7, 7, 7};
    in.prev_count = {5, 7};
    run_fd(in);
  }
  SUBCASE("carried state and documents, C = 8: the memory carries over at step 0, resets at step 1") {
    Inputs in = make_inputs({1, 24, 1, 8, 8, 8}, true, 50);
    in.segments = true;
    in.seg = make_segments(24, {{0, 5}}, 4);
    in.prev_seg = {3, 3, 3, 4, 4, 4, 4, 4};
    in.prev_count = {4};  // the prev chunk's doc: kept at step 0; chunk 0 ends in doc 5: reset at step 1
    run_fd(in);
  }
}

TEST_CASE("working memory: the first absorbed chunk is its softmax-over-time average") {
  // With no state: chunk 0 outputs 0 and creates M = 0, A = -inf; chunk 1 reads the empty memory
  // (0) and absorbs chunk 0 with ρ = 1, so M = κ_0 V_0 and A = ℓ_0; chunk 2 reads q̂ᵀ M.
  const Shape s{1, 12, 1, 3, 2, 4};
  const Inputs in = make_inputs(s, false, 60);
  const Outputs o = run_forward(in);
  for (std::int64_t t = 0; t < 2 * s.C; ++t)
    for (std::int64_t c = 0; c < s.dv; ++c) CHECK(o.out[t * s.dv + c] == 0.0);
  std::vector<double> m(s.dk * s.dv, 0.0), a(s.dk);
  for (std::int64_t i = 0; i < s.dk; ++i) {
    double z = 0;
    for (std::int64_t t = 0; t < s.C; ++t) z += std::exp(in.ak[t * s.dk + i]);
    a[i] = std::log(z);
    for (std::int64_t t = 0; t < s.C; ++t)
      for (std::int64_t c = 0; c < s.dv; ++c) m[i * s.dv + c] += std::exp(in.ak[t * s.dk + i]) / z * in.v[t * s.dv + c];
  }
  // The state after two chunks (B = H = 1: the first 2C rows are a prefix of the buffers).
  Inputs two = in;
  two.s.L = 2 * s.C;
  two.aq.resize(2 * s.C * s.dk);
  two.ak.resize(2 * s.C * s.dk);
  two.v.resize(2 * s.C * s.dv);
  const Outputs o2 = run_forward(two);
  GECKO_CHECK_CLOSE(o2.log_norm, a, 1e-14, "log_norm");
  GECKO_CHECK_CLOSE(o2.memory, m, 1e-14, "memory");
  for (std::int64_t t = 2 * s.C; t < 3 * s.C; ++t) {
    double q[3], z = 0;
    for (int i = 0; i < 3; ++i) z += (q[i] = std::exp(in.aq[t * s.dk + i]));
    for (std::int64_t c = 0; c < s.dv; ++c) {
      double want = 0;
      for (int i = 0; i < 3; ++i) want += q[i] / z * m[i * s.dv + c];
      CHECK(o.out[t * s.dv + c] == doctest::Approx(want).epsilon(1e-13));
    }
  }

  // One chunk without state leaves the empty state: M = 0, A = -inf.
  const Inputs one = make_inputs({1, 4, 1, 3, 2, 4}, false, 61);
  const Outputs o1 = run_forward(one);
  for (double x : o1.memory) CHECK(x == 0.0);
  for (double x : o1.log_norm) CHECK(x == -std::numeric_limits<double>::infinity());
}

TEST_CASE("working memory: streaming equals one full call") {
  const Shape s{2, 24, 2, 5, 6, 4};
  SUBCASE("one document, from no state") {
    const Inputs in = make_inputs(s, false, 70);
    check_streaming(in, {8, 16}, "two full calls");
    check_streaming(in, {4, 4, 4, 12}, "single-chunk full calls");
    check_streaming(in, prefix_partial_tokens(s.L, s.C, 2, 3), "prefix, partial chunk, tokens");
    check_streaming(in, std::vector<std::int64_t>(s.L, 1), "one token at a time from the start");
    check_streaming(in, {3, 1, 4, 2, 1, 1, 12}, "partial first chunk, then tokens, then full calls");
  }
  SUBCASE("one document, from a carried state") {
    const Inputs in = make_inputs(s, true, 80);
    check_streaming(in, {12, 12}, "two full calls");
    check_streaming(in, prefix_partial_tokens(s.L, s.C, 1, 2), "prefix, partial chunk, tokens");
    check_streaming(in, std::vector<std::int64_t>(s.L, 1), "one token at a time");
  }
  SUBCASE("documents, from no state") {
    Inputs in = make_inputs(s, false, 90);
    in.segments = true;
    in.seg = make_segments(s.L, {{0, 5, 13, 14}, {0, 9, 18}});
    check_streaming(in, {8, 16}, "two full calls");
    check_streaming(in, {4, 8, 4, 8}, "uneven full calls");
    check_streaming(in, prefix_partial_tokens(s.L, s.C, 2, 3), "prefix, partial chunk, tokens");
    check_streaming(in, std::vector<std::int64_t>(s.L, 1), "one token at a time from the start");
  }
  SUBCASE("documents, from a carried state") {
    Inputs in = make_inputs(s, true, 100);
    in.segments = true;
    in.seg = make_segments(s.L, {{0, 2, 11}, {0, 7, 20}}, 7);
    in.prev_seg = {6, 6, 6, 6, 6, 6, 7, 7};
    in.prev_count = {5, 6};
    check_streaming(in, {12, 12}, "two full calls");
    check_streaming(in, prefix_partial_tokens(s.L, s.C, 1, 1), "prefix, partial chunk, tokens");
    check_streaming(in, std::vector<std::int64_t>(s.L, 1), "one token at a time");
  }
}

TEST_CASE("working memory: a single-chunk call with prev documents and B > 1 equals streaming (bug 4.1)") {
  // The authors' full path mixes up batch rows' chunk-0 reset and output mask when L == C with
  // prev_segment_idx and B > 1. Here each row's reset and mask differ, so mixing them would show.
  const Shape s{3, 8, 2, 4, 5, 4};
  Inputs in = make_inputs(s, true, 110);
  in.segments = true;
  in.seg = make_segments(s.L, {{0}, {0, 2}, {0, 6}}, 20);
  in.prev_seg = {20, 20, 20, 20, 19, 19, 19, 19, 20, 20, 20, 20};
  in.prev_count = {20, 18, 19};  // row 0: no reset, row 1: reset at step 0, row 2: reset + masks
  check_streaming(in, {4, 4}, "single-chunk full calls");
  check_streaming(in, std::vector<std::int64_t>(s.L, 1), "one token at a time");
  check_streaming(in, {4, 1, 1, 1, 1}, "single-chunk call, then tokens");

  // Row 1's output in chunk 0 reads the memory (doc 18 != its tokens' doc 20 -> zeroed), and row 0
  // reads it unmasked: the per-row answer, not row 0's for everyone.
  const Outputs o = run_forward(in);
  const std::int64_t row = s.L * s.H * s.dv;
  double row0 = 0, row1 = 0;
  for (std::int64_t x = 0; x < s.C * s.H * s.dv; ++x) {
    row0 += std::fabs(o.out[x]);
    row1 += std::fabs(o.out[row + x]);
  }
  CHECK(row0 > 0.0);
  CHECK(row1 == 0.0);
}

TEST_CASE("working memory accepts strided views and matches the dense result") {
  const Shape s{2, 8, 2, 3, 4, 4};
  const Inputs in = make_inputs(s, true, 120);
  const Outputs dense = run_forward(in);
  // aq and ak interleaved in one [B, L, H, 2 * dk] buffer; prev_k stored head-major [B, H, C, dk].
  std::vector<double> qk(s.B * s.L * s.H * 2 * s.dk), pk_hm(in.prev_k.size());
  for (std::int64_t r = 0; r < s.B * s.L * s.H; ++r)
    for (std::int64_t i = 0; i < s.dk; ++i) {
      qk[r * 2 * s.dk + i] = in.aq[r * s.dk + i];
      qk[r * 2 * s.dk + s.dk + i] = in.ak[r * s.dk + i];
    }
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t t = 0; t < s.C; ++t)
      for (std::int64_t h = 0; h < s.H; ++h)
        for (std::int64_t i = 0; i < s.dk; ++i)
          pk_hm[((b * s.H + h) * s.C + t) * s.dk + i] = in.prev_k[((b * s.C + t) * s.H + h) * s.dk + i];
  Outputs o{std::vector<double>(dense.out.size()), std::vector<double>(dense.memory.size()),
            std::vector<double>(dense.log_norm.size())};
  working_memory::ForwardArgs<double> f;
  set_inputs(f, in);
  const std::int64_t row = 2 * s.dk;
  f.aq = TensorView<const double>::strided(qk.data(), {s.B, s.L, s.H, s.dk}, {s.L * s.H * row, s.H * row, row, 1},
                                           Memory::kHost);
  f.ak = TensorView<const double>::strided(qk.data() + s.dk, {s.B, s.L, s.H, s.dk},
                                           {s.L * s.H * row, s.H * row, row, 1}, Memory::kHost);
  f.prev_k = TensorView<const double>::strided(pk_hm.data(), {s.B, s.C, s.H, s.dk},
                                               {s.H * s.C * s.dk, s.dk, s.C * s.dk, 1}, Memory::kHost);
  f.out = host_view(o.out, {s.B, s.L, s.H, s.dv});
  f.memory_out = host_view(o.memory, {s.B, s.H, s.dk, s.dv});
  f.log_norm_out = host_view(o.log_norm, {s.B, s.H, s.dk});
  REQUIRE(working_memory::cpu::forward(f).ok());
  CHECK(o.out == dense.out);
  CHECK(o.memory == dense.memory);
  CHECK(o.log_norm == dense.log_norm);
}

TEST_CASE("working memory runs in fp32 and bf16 against the double reference") {
  const Shape s{1, 12, 2, 4, 4, 4};
  const Inputs in = make_inputs(s, true, 130);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    using S = acc_t<T>;
    const auto aq = test::narrow<T>(in.aq), ak = test::narrow<T>(in.ak), v = test::narrow<T>(in.v);
    const auto pk = test::narrow<T>(in.prev_k), pv = test::narrow<T>(in.prev_v);
    std::vector<S> mem(in.memory.begin(), in.memory.end()), ln(in.log_norm.begin(), in.log_norm.end());
    // The double reference on the same (rounded) inputs.
    Inputs w = in;
    w.aq = test::widen(aq);
    w.ak = test::widen(ak);
    w.v = test::widen(v);
    w.prev_k = test::widen(pk);
    w.prev_v = test::widen(pv);
    w.memory.assign(mem.begin(), mem.end());
    w.log_norm.assign(ln.begin(), ln.end());
    const Outputs want = run_forward(w);
    std::vector<T> out(want.out.size());
    std::vector<S> mem_out(mem.size()), ln_out(ln.size());
    working_memory::ForwardArgs<T> f;
    f.chunk = s.C;
    f.aq = host_view(aq, {s.B, s.L, s.H, s.dk});
    f.ak = host_view(ak, {s.B, s.L, s.H, s.dk});
    f.v = host_view(v, {s.B, s.L, s.H, s.dv});
    f.memory = host_view(mem, {s.B, s.H, s.dk, s.dv});
    f.log_norm = host_view(ln, {s.B, s.H, s.dk});
    f.prev_k = host_view(pk, {s.B, s.C, s.H, s.dk});
    f.prev_v = host_view(pv, {s.B, s.C, s.H, s.dv});
    f.out = host_view(out, {s.B, s.L, s.H, s.dv});
    f.memory_out = host_view(mem_out, {s.B, s.H, s.dk, s.dv});
    f.log_norm_out = host_view(ln_out, {s.B, s.H, s.dk});
    REQUIRE(working_memory::cpu::forward(f).ok());
    INFO(test::type_label<T>());
    GECKO_CHECK_CLOSE(test::widen(out), want.out, test::output_tolerance<T>(), "out");
    GECKO_CHECK_CLOSE(test::widen(mem_out), want.memory, 1e-6, "memory_out (fp32 state)");
    GECKO_CHECK_CLOSE(test::widen(ln_out), want.log_norm, 1e-6, "log_norm_out (fp32 state)");
  };
  run(float{});
  run(__nv_bfloat16{});
}

TEST_CASE("working memory rejects bad arguments with a message naming them") {
  const std::int64_t B = 2, L = 8, H = 2, dk = 3, dv = 4, C = 4;
  std::vector<float> q(B * L * H * dk), k(q.size()), v(B * L * H * dv), out(v.size());
  std::vector<float> mem(B * H * dk * dv), ln(B * H * dk), pk(B * C * H * dk), pv(B * C * H * dv);
  std::vector<float> mem_out(mem.size()), ln_out(ln.size());
  std::vector<std::int64_t> seg(B * L), pseg(B * C), pcount(B);
  auto base = [&]() {
    working_memory::ForwardArgs<float> f;
    f.chunk = C;
    f.aq = host_view(q, {B, L, H, dk});
    f.ak = host_view(k, {B, L, H, dk});
    f.v = host_view(v, {B, L, H, dv});
    f.out = host_view(out, {B, L, H, dv});
    f.memory_out = host_view(mem_out, {B, H, dk, dv});
    f.log_norm_out = host_view(ln_out, {B, H, dk});
    return f;
  };
  auto with_state = [&]() {
    auto f = base();
    f.memory = host_view(mem, {B, H, dk, dv});
    f.log_norm = host_view(ln, {B, H, dk});
    f.prev_k = host_view(pk, {B, C, H, dk});
    f.prev_v = host_view(pv, {B, C, H, dv});
    return f;
  };
  auto msg = [](const working_memory::ForwardArgs<float>& f) { return working_memory::cpu::forward(f).message(); };
  auto has = [](const std::string& m, const char* what) {
    INFO(m);
    CHECK(m.find(what) != std::string::npos);
  };
  REQUIRE(working_memory::cpu::forward(base()).ok());
  REQUIRE(working_memory::cpu::forward(with_state()).ok());

  auto f = base();
  f.chunk = 3;
  has(msg(f), "L=8 must be a multiple of the chunk size C=3");
  f.chunk = 0;
  has(msg(f), "chunk must be >= 1");

  f = with_state();
  f.log_norm = {};
  has(msg(f), "memory and log_norm must be given together (got only memory)");
  f = with_state();
  f.prev_v = {};
  has(msg(f), "prev_k and prev_v must be given together (got only prev_k)");
  f = with_state();
  f.prev_k = {};
  f.prev_v = {};
  has(msg(f), "memory is given, so prev_k/prev_v must hold the previous chunk (P = C=4 tokens), got P=0");
  f = base();
  f.prev_k = host_view(pk, {B, C, H, dk});
  f.prev_v = host_view(pv, {B, C, H, dv});
  has(msg(f), "prev_k/prev_v are given without memory/log_norm");
  f = with_state();
  f.memory = host_view(mem, {B, H, dv, dk});
  has(msg(f), "memory has shape [2, 2, 4, 3], expected [2, 2, 3, 4]");
  f = with_state();
  f.log_norm = host_view(ln, {B, H * dk});
  has(msg(f), "log_norm has shape [2, 6], expected [2, 2, 3]");
  f = with_state();
  f.prev_v = host_view(pv, {B, C, H, dv - 1});
  has(msg(f), "prev_v has shape");
  f = with_state();
  f.memory_out = {};
  has(msg(f), "memory_out is missing");
  f = base();
  f.log_norm_out = host_view(ln_out, {B, H, dk + 1});
  has(msg(f), "log_norm_out has shape");
  f = base();
  f.out = {};
  has(msg(f), "out is missing");
  f = base();
  f.v = host_view(v, {B, L, H * dv});
  has(msg(f), "v has shape [2, 8, 8], expected [B, L, H, dv]");
  f = base();
  f.ak = host_view(k, {B, L, H, dk - 1});
  has(msg(f), "ak has shape");
  f = base();
  f.out = TensorView<float>::device(out.data(), {B, L, H, dv});
  has(msg(f), "out lives in device memory, expected host memory");
  f = base();
  f.aq = TensorView<const float>::strided(q.data(), {B, L, H, dk}, {L * H * dk, H * dk, 1, H}, Memory::kHost);
  has(msg(f), "aq must have unit stride");

  // Documents.
  f = base();
  f.prev_segment_idx = host_view(pseg, {B, C});
  has(msg(f), "prev_segment_idx is given but segment_idx is not");
  f = with_state();
  f.segment_idx = host_view(seg, {B, L});
  has(msg(f), "prev_segment_idx [B, P=4] is required");
  f.prev_segment_idx = host_view(pseg, {B, C});
  has(msg(f), "prev_segment_count [B] (the memory's document) is required");
  f.prev_segment_count = host_view(pcount, {B});
  CHECK(working_memory::cpu::forward(f).ok());
  f.prev_segment_idx = host_view(pseg, {C, B});
  has(msg(f), "prev_segment_idx has shape [4, 2], expected [2, 4]");
  f = base();
  f.segment_idx = host_view(seg, {B, L - 1});
  has(msg(f), "segment_idx has shape");

  // Tail path.
  f = with_state();
  f.aq = host_view(q, {B, 1, H, dk});
  f.ak = host_view(k, {B, 1, H, dk});
  f.v = host_view(v, {B, 1, H, dv});
  f.out = host_view(out, {B, 1, H, dv});
  CHECK(working_memory::cpu::forward(f).ok());
  f.prev_k = host_view(pk, {B, C - 1, H, dk});
  f.prev_v = host_view(pv, {B, C - 1, H, dv});
  has(msg(f), "the tail path with memory needs C <= P and P + L <= 2C");
  f.memory = {};
  f.log_norm = {};
  CHECK(working_memory::cpu::forward(f).ok());  // the first chunk's last token: creates the state
  f.aq = host_view(q, {B, 2, H, dk});
  f.ak = host_view(k, {B, 2, H, dk});
  f.v = host_view(v, {B, 2, H, dv});
  f.out = host_view(out, {B, 2, H, dv});
  has(msg(f), "the tail path without memory covers the first chunk only: P + L <= C, got P=3, L=2, C=4");

  // Backward.
  std::vector<float> dq(q.size()), dk_(k.size()), dv_(v.size()), dout(v.size());
  std::vector<float> dmem(mem.size()), dln(ln.size()), dpk(pk.size()), dpv(pv.size());
  working_memory::BackwardArgs<float> g;
  g.chunk = C;
  g.aq = host_view(q, {B, L, H, dk});
  g.ak = host_view(k, {B, L, H, dk});
  g.v = host_view(v, {B, L, H, dv});
  g.dout = host_view(dout, {B, L, H, dv});
  g.daq = host_view(dq, {B, L, H, dk});
  g.dak = host_view(dk_, {B, L, H, dk});
  g.dv = host_view(dv_, {B, L, H, dv});
  CHECK(working_memory::cpu::backward(g).ok());
  g.dmemory = host_view(dmem, {B, H, dk, dv});
  has(working_memory::cpu::backward(g).message(), "dmemory is given but there is no carried state");
  g.memory = host_view(mem, {B, H, dk, dv});
  g.log_norm = host_view(ln, {B, H, dk});
  g.prev_k = host_view(pk, {B, C, H, dk});
  g.prev_v = host_view(pv, {B, C, H, dv});
  has(working_memory::cpu::backward(g).message(), "dlog_norm is missing");
  g.dlog_norm = host_view(dln, {B, H, dk});
  g.dprev_k = host_view(dpk, {B, C, H, dk});
  has(working_memory::cpu::backward(g).message(), "dprev_v is missing");
  g.dprev_v = host_view(dpv, {B, C, H, dv});
  CHECK(working_memory::cpu::backward(g).ok());
  g.dmemory_out = host_view(dmem, {B, H, dk});
  has(working_memory::cpu::backward(g).message(), "dmemory_out has shape");
  g.dmemory_out = {};
  g.daq = {};
  has(working_memory::cpu::backward(g).message(), "daq is missing");
  g.daq = host_view(dq, {B, L, H, dk});
  g.aq = host_view(q, {B, 2, H, dk});
  g.ak = host_view(k, {B, 2, H, dk});
  g.v = host_view(v, {B, 2, H, dv});
  const Status st = working_memory::cpu::backward(g);
  CHECK(st.code() == StatusCode::kUnsupported);
  has(st.message(), "the tail path");
}
