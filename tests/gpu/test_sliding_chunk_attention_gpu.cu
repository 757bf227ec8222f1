// CUDA sliding chunk attention against the CPU reference (double) on random inputs: every
// supported (dk, dv) pair, documents, carried K/V, partial RoPE at large positions, odd chunk
// counts, chunks that are not multiples of the tile, tail and decode calls (split keys), the
// generic path (fp32, unaligned rows), the backward without saved out/lse; lse compared too;
// bitwise determinism; unsupported and bad arguments.
#include <doctest/doctest.h>

#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <type_traits>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/sliding_chunk_attention/launch.cuh"
#include "gecko/ops/sliding_chunk_attention/launch_gemm.cuh"
#include "gecko/ops/sliding_chunk_attention/reference.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
namespace sca = sliding_chunk_attention;
using I64 = std::int64_t;

namespace {

struct Case {
  I64 B = 1, L = 128, H = 1, dk = 64, dv = 64, C = 64, P = 0;
  bool segments = false;
  int n_rope = 0;
  I64 start = 0;
  double base = 10000;
  bool saved = true;      // the backward gets out and lse
  bool backward = true;
  I64 pad = 0;            // extra elements per row of q/k/v/out (strided views; odd = unaligned rows)
  bool accumulate_dv = false;  // dv starts with random values the backward adds to
  I64 cap = 0;            // > 0 (decoding): the call reads P and start from a device DecodeCursor;
                          // the device prev tensors have cap rows, those past P poisoned
  bool probs = false;     // GEMM-staged: the forward keeps its probabilities (poisoned buffer) and
                          // the backward reads them
};

std::string describe(const Case& c) {
  std::ostringstream s;
  s << "B=" << c.B << " L=" << c.L << " H=" << c.H << " dk=" << c.dk << " dv=" << c.dv << " C=" << c.C << " P=" << c.P
    << " seg=" << c.segments << " rope=" << c.n_rope << " start=" << c.start << " saved=" << c.saved
    << " pad=" << c.pad << " accumulate_dv=" << c.accumulate_dv << " cap=" << c.cap << " probs=" << c.probs;
  return s.str();
}

struct Tol {
  double out, lse, grad;
};
template <class T>
Tol tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return {1e-2, 3e-3, 2e-2};
  else if constexpr (std::is_same_v<T, __half>) return {3e-3, 1e-3, 6e-3};
  else return {1e-4, 1e-5, 2e-4};
}

// Non-decreasing document ids, prev first, about one boundary every 23 tokens.
void make_segments(const Case& c, std::uint64_t seed, std::vector<I64>& seg, std::vector<I64>& pseg) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution boundary(1.0 / 23);
  seg.resize(c.B * c.L);
  pseg.resize(c.B * c.P);
  for (I64 b = 0; b < c.B; ++b) {
    I64 id = 5 * b;
    for (I64 j = 0; j < c.P; ++j) pseg[b * c.P + j] = (id += boundary(rng));
    for (I64 r = 0; r < c.L; ++r) seg[b * c.L + r] = (id += boundary(rng));
  }
}

// [B, N, H, d] with row pitch d + pad (so the last dim stays unit stride).
template <class V>
TensorView<V> padded(V* p, I64 B, I64 N, I64 H, I64 d, I64 pad, Memory m) {
  const I64 rp = d + pad;
  return TensorView<V>::strided(p, {B, N, H, d}, {N * H * rp, H * rp, rp, 1}, m);
}

template <class T>
std::vector<double> gather(const std::vector<T>& v, I64 B, I64 N, I64 H, I64 d, I64 pad) {
  std::vector<double> out(B * N * H * d);
  const I64 rp = d + pad;
  for (I64 row = 0; row < B * N * H; ++row)
    for (I64 c = 0; c < d; ++c) out[row * d + c] = to_double(v[row * rp + c]);
  return out;
}

using test::gemm_context;  // the GEMM-staged path's cuBLASLt context

// gemm: run the GEMM-staged entry points (launch_gemm.cuh) with these options instead of the
// flash ones (the GEMM entry points fall back to the flash kernels where they do not apply).
template <class T>
void run_case(const Case& c, std::uint64_t seed, bool determinism = false,
              const sca::cuda::GemmOptions* gemm = nullptr) {
  INFO(test::type_label<T>() << " " << describe(c) << (gemm ? " gemm-staged" : ""));
  const I64 B = c.B, L = c.L, H = c.H, dk = c.dk, dv = c.dv, P = c.P, pad = c.pad;
  const double qk_range = 1.0;
  auto q = test::random_vector<T>(B * L * H * (dk + pad), seed + 1, -qk_range, qk_range);
  auto k = test::random_vector<T>(B * L * H * (dk + pad), seed + 2, -qk_range, qk_range);
  auto v = test::random_vector<T>(B * L * H * (dv + pad), seed + 3);
  auto pk = test::random_vector<T>(B * P * H * dk, seed + 4, -qk_range, qk_range);
  auto pv = test::random_vector<T>(B * P * H * dv, seed + 5);
  auto dout = test::random_vector<T>(B * L * H * dv, seed + 6);
  auto dv0 = test::random_vector<T>(B * L * H * dv, seed + 9);  // dv before an accumulating backward
  std::vector<I64> seg, pseg;
  make_segments(c, seed + 7, seg, pseg);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dk))) * 1.5f;
  rope::RopeConfig rc;
  rc.n_rope_heads = c.n_rope;
  rc.start = c.start;
  rc.base = c.base;

  // ---- CPU reference in double on the same rounded inputs ----
  auto qd = gather(q, B, L, H, dk, pad), kd = gather(k, B, L, H, dk, pad), vd = gather(v, B, L, H, dv, pad);
  auto pkd = test::widen(pk), pvd = test::widen(pv), dod = test::widen(dout);
  std::vector<double> out_ref(B * L * H * dv), lse_ref(B * H * L), dq_ref(B * L * H * dk), dk_ref(B * L * H * dk),
      dv_ref(B * L * H * dv), dpk_ref(B * P * H * dk), dpv_ref(B * P * H * dv);
  {
    sca::ForwardArgs<double> f;
    f.chunk = c.C;
    f.scale = scale;
    f.rope = rc;
    f.q = host_view(qd, {B, L, H, dk});
    f.k = host_view(kd, {B, L, H, dk});
    f.v = host_view(vd, {B, L, H, dv});
    if (P > 0) {
      f.prev_k = host_view(pkd, {B, P, H, dk});
      f.prev_v = host_view(pvd, {B, P, H, dv});
    }
    if (c.segments) {
      f.segment_idx = host_view(seg, {B, L});
      if (P > 0) f.prev_segment_idx = host_view(pseg, {B, P});
    }
    f.out = host_view(out_ref, {B, L, H, dv});
    f.lse = host_view(lse_ref, {B, H, L});
    REQUIRE(sca::cpu::forward(f).ok());
    if (c.backward) {
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
      g.dout = host_view(dod, {B, L, H, dv});
      g.dq = host_view(dq_ref, {B, L, H, dk});
      g.dk = host_view(dk_ref, {B, L, H, dk});
      if (c.accumulate_dv) dv_ref = test::widen(dv0);
      g.dv = host_view(dv_ref, {B, L, H, dv});
      g.accumulate_dv = c.accumulate_dv;
      if (P > 0) {
        g.dprev_k = host_view(dpk_ref, {B, P, H, dk});
        g.dprev_v = host_view(dpv_ref, {B, P, H, dv});
      }
      REQUIRE(sca::cpu::backward(g).ok());
    }
  }

  // ---- device ----
  DeviceBuffer<T> q_d, k_d, v_d, pk_d, pv_d, do_d, out_d(B * L * H * (dv + pad)), dq_d(B * L * H * dk),
      dk_d(B * L * H * dk), dv_d(B * L * H * dv), dpk_d(std::max<I64>(1, B * P * H * dk)),
      dpv_d(std::max<I64>(1, B * P * H * dv));
  DeviceBuffer<float> lse_d(B * H * L);
  DeviceBuffer<I64> seg_d, pseg_d;
  q_d.upload(q);
  k_d.upload(k);
  v_d.upload(v);
  do_d.upload(dout);
  if (P > 0) {
    pk_d.upload(pk);
    pv_d.upload(pv);
  }
  if (c.segments) {
    seg_d.upload(seg);
    if (P > 0) pseg_d.upload(pseg);
  }
  // Poison the outputs: every element must be written.
  for (auto* buf : {&out_d, &dq_d, &dk_d, &dv_d, &dpk_d, &dpv_d})
    REQUIRE(cudaMemset(buf->data(), 0xff, buf->size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemset(lse_d.data(), 0xff, lse_d.size() * sizeof(float)) == cudaSuccess);

  sca::ForwardArgs<T> f;
  f.chunk = c.C;
  f.scale = scale;
  f.rope = rc;
  f.q = padded<const T>(q_d.data(), B, L, H, dk, pad, Memory::kDevice);
  f.k = padded<const T>(k_d.data(), B, L, H, dk, pad, Memory::kDevice);
  f.v = padded<const T>(v_d.data(), B, L, H, dv, pad, Memory::kDevice);
  if (P > 0) {
    f.prev_k = pk_d.view({B, P, H, dk});
    f.prev_v = pv_d.view({B, P, H, dv});
  }
  if (c.segments) {
    f.segment_idx = seg_d.view({B, L});
    if (P > 0) f.prev_segment_idx = pseg_d.view({B, P});
  }
  // Decoding through a cursor: the same rows at the front of cap-row tensors, NaN (ids -1) after.
  DeviceBuffer<T> cpk_d, cpv_d;
  DeviceBuffer<I64> cpseg_d;
  DeviceBuffer<DecodeCursor> cursor_d;
  if (c.cap > 0) {
    REQUIRE(c.cap >= P);
    const auto widen_rows = [&](const auto& src, I64 row, auto poison) {  // row: elements per token
      std::vector<std::decay_t<decltype(src[0])>> dst(B * c.cap * row, poison);
      for (I64 b = 0; b < B; ++b) std::copy_n(src.begin() + b * P * row, P * row, dst.begin() + b * c.cap * row);
      return dst;
    };
    const T nan = from_float<T>(std::numeric_limits<float>::quiet_NaN());
    cpk_d.upload(widen_rows(pk, H * dk, nan));
    cpv_d.upload(widen_rows(pv, H * dv, nan));
    f.prev_k = cpk_d.view({B, c.cap, H, dk});
    f.prev_v = cpv_d.view({B, c.cap, H, dv});
    if (c.segments) {
      cpseg_d.upload(widen_rows(pseg, 1, I64{-1}));
      f.prev_segment_idx = cpseg_d.view({B, c.cap});
    }
    DecodeCursor cur;
    cur.position = c.start;
    cur.prev = P;
    cursor_d.upload(std::vector<DecodeCursor>{cur});
    f.cursor = cursor_d.data();
    f.rope.start = c.start + 977;  // ignored: the cursor's position counts
  }
  f.out = padded<T>(out_d.data(), B, L, H, dv, pad, Memory::kDevice);
  f.lse = lse_d.view({B, H, L});
  // Kept probabilities, poisoned: the entries the forward leaves unwritten must never be read.
  DeviceBuffer<T> probs_d(c.probs ? B * H * L * 2 * c.C : 1);
  if (c.probs) {
    REQUIRE(gemm);
    REQUIRE(cudaMemset(probs_d.data(), 0xff, probs_d.size() * sizeof(T)) == cudaSuccess);
    f.probs = probs_d.view({B, H, L / c.C, c.C, 2 * c.C});
  }
  std::size_t fws = 0;
  char* fwork_ptr = nullptr;
  const auto fwd_size = [&] {
    return gemm ? sca::cuda::forward_workspace_size(gemm_context(), f, fws, *gemm)
                : sca::cuda::forward_workspace_size(f, fws);
  };
  const auto fwd = [&] {
    return gemm ? sca::cuda::forward(gemm_context(), f, fwork_ptr, fws, nullptr, *gemm)
                : sca::cuda::forward(f, fwork_ptr, fws, nullptr);
  };
  REQUIRE(fwd_size().ok());
  DeviceBuffer<char> fwork(std::max<std::size_t>(fws, 1));
  fwork_ptr = fwork.data();
  const Status st = fwd();
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const Tol tol = tolerance<T>();
  const auto out_h = out_d.download();
  GECKO_CHECK_CLOSE(gather(out_h, B, L, H, dv, pad), out_ref, tol.out, "out");
  GECKO_CHECK_CLOSE(lse_d.download(), lse_ref, tol.lse, "lse");
  if (determinism) {
    REQUIRE(fwd().ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto again = out_d.download();
    CHECK(std::memcmp(again.data(), out_h.data(), again.size() * sizeof(T)) == 0);
  }
  if (!c.backward) return;

  sca::BackwardArgs<T> g;
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
  if (c.saved) {
    g.out = f.out;
    g.lse = f.lse;
  }
  if (c.probs) g.probs = TensorView<const T>(f.probs);
  g.dout = do_d.view({B, L, H, dv});
  g.dq = dq_d.view({B, L, H, dk});
  g.dk = dk_d.view({B, L, H, dk});
  g.dv = dv_d.view({B, L, H, dv});
  g.accumulate_dv = c.accumulate_dv;
  if (c.accumulate_dv) dv_d.upload(dv0);
  if (P > 0) {
    g.dprev_k = dpk_d.view({B, P, H, dk});
    g.dprev_v = dpv_d.view({B, P, H, dv});
  }
  std::size_t bws = 0;
  REQUIRE((gemm ? sca::cuda::backward_workspace_size(gemm_context(), g, bws, *gemm)
                : sca::cuda::backward_workspace_size(g, bws))
              .ok());
  DeviceBuffer<char> bwork(std::max<std::size_t>(bws, 1));
  const auto bwd = [&] {
    return gemm ? sca::cuda::backward(gemm_context(), g, bwork.data(), bws, nullptr, *gemm)
                : sca::cuda::backward(g, bwork.data(), bws, nullptr);
  };
  const Status bst = bwd();
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto dq_h = dq_d.download(), dk_h = dk_d.download(), dv_h = dv_d.download();
  GECKO_CHECK_CLOSE(test::widen(dq_h), dq_ref, tol.grad, "dq");
  GECKO_CHECK_CLOSE(test::widen(dk_h), dk_ref, tol.grad, "dk");
  GECKO_CHECK_CLOSE(test::widen(dv_h), dv_ref, tol.grad, "dv");
  if (P > 0) {
    GECKO_CHECK_CLOSE(test::widen(dpk_d.download()), dpk_ref, tol.grad, "dprev_k");
    GECKO_CHECK_CLOSE(test::widen(dpv_d.download()), dpv_ref, tol.grad, "dprev_v");
  }
  if (determinism) {
    if (c.accumulate_dv) dv_d.upload(dv0);
    REQUIRE(bwd().ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto dq2 = dq_d.download(), dk2 = dk_d.download(), dv2 = dv_d.download();
    CHECK(std::memcmp(dq2.data(), dq_h.data(), dq2.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(dk2.data(), dk_h.data(), dk2.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(dv2.data(), dv_h.data(), dv2.size() * sizeof(T)) == 0);
  }
}

// A mix of features for the pair sweep, picked by the pair's index.
Case sweep_case(I64 dk, I64 dv, int i) {
  Case c;
  c.dk = dk;
  c.dv = dv;
  c.C = 64;
  c.L = (i % 3 == 0) ? 192 : 128;  // 3 or 2 chunks
  c.P = (i % 2 == 0) ? c.C : 0;
  c.segments = i % 4 == 1;
  c.n_rope = (i % 5 != 4) ? 1 : 0;
  c.start = (i % 7) * 1000003;
  return c;
}

// Two batches of three heads over several tiles, partial RoPE at a large start, documents and a
// carried chunk.
Case documents_case() {
  Case c;
  c.B = 2;
  c.H = 3;
  c.L = 384;
  c.C = 128;
  c.P = 128;
  c.dk = 128;
  c.dv = 256;
  c.segments = true;
  c.n_rope = 2;
  c.start = (I64(1) << 28) + 12345;
  c.base = 500000;
  return c;
}

}  // namespace

TEST_CASE("gpu sliding chunk attention bf16: every (dk, dv) pair") {
  int i = 0;
  for (I64 dk : {64, 128, 256})
    for (I64 dv = 64; dv <= 2048; dv += 64, ++i) run_case<__nv_bfloat16>(sweep_case(dk, dv, i), 1000 + 17 * i);
}

TEST_CASE("gpu sliding chunk attention fp16: a pair sweep") {
  int i = 0;
  for (I64 dk : {64, 128, 256})
    for (I64 dv : {64, 192, 512, 2048}) {
      run_case<__half>(sweep_case(dk, dv, i), 5000 + 31 * i);
      ++i;
    }
}

TEST_CASE("gpu sliding chunk attention bf16: documents, carried K/V, RoPE, odd chunk counts") {
  std::vector<Case> cases;
  cases.push_back(documents_case());  // several tiles and heads
  {  // the 7B head shape, small: dk 256, dv 2048 (cluster of 8), 5 chunks, no prev
    Case c;
    c.H = 2;
    c.L = 320;
    c.C = 64;
    c.dk = 256;
    c.dv = 2048;
    c.n_rope = 2;
    c.start = 777;
    cases.push_back(c);
  }
  {  // chunk not a multiple of the 64-key block: query tiles straddle chunks
    Case c;
    c.L = 288;
    c.C = 96;
    c.P = 96;
    c.dk = 64;
    c.dv = 128;
    c.segments = true;
    c.n_rope = 1;
    cases.push_back(c);
  }
  {  // chunk larger than a tile, one chunk only, with carried chunk
    Case c;
    c.L = 256;
    c.C = 256;
    c.P = 256;
    c.H = 2;
    c.dk = 256;
    c.dv = 512;
    c.n_rope = 1;
    c.start = 5000000;
    cases.push_back(c);
  }
  {  // backward without saved out / lse: it runs the forward itself
    Case c;
    c.L = 256;
    c.C = 128;
    c.P = 128;
    c.dk = 128;
    c.dv = 640;
    c.saved = false;
    c.segments = true;
    c.n_rope = 1;
    cases.push_back(c);
  }
  std::uint64_t seed = 9000;
  for (const Case& c : cases) run_case<__nv_bfloat16>(c, seed += 101);
}

TEST_CASE("gpu sliding chunk attention bf16: tail and decode calls") {
  std::vector<Case> cases;
  for (I64 P : {0, 5, 64, 200, 255}) {  // prompt tails L < C with P + L <= 2C
    Case c;
    c.C = 128;
    c.L = P == 255 ? 1 : std::min<I64>(57, 2 * c.C - P);
    c.P = P;
    c.H = 2;
    c.dk = 128;
    c.dv = 384;
    c.segments = P == 200;
    c.n_rope = 2;
    c.start = 1000 + P;
    cases.push_back(c);
  }
  {  // one decoded token against 2C - 1 keys at the 7B head shape: keys split across the grid
    Case c;
    c.C = 512;
    c.P = 1023;
    c.L = 1;
    c.H = 1;
    c.dk = 256;
    c.dv = 2048;
    c.n_rope = 1;
    c.start = 123456;
    c.backward = false;
    cases.push_back(c);
  }
  {  // two queries against 2C - 2 keys at the 7B shapes (4 heads, C = 2048): 32-key blocks
    Case c;
    c.C = 2048;
    c.P = 4094;
    c.L = 2;
    c.H = 4;
    c.dk = 256;
    c.dv = 2048;
    c.n_rope = 4;
    c.start = 4094;
    c.backward = false;
    cases.push_back(c);
  }
  {  // a few queries, several heads, documents
    Case c;
    c.C = 256;
    c.P = 300;
    c.L = 3;
    c.H = 4;
    c.dk = 64;
    c.dv = 1024;
    c.segments = true;
    c.n_rope = 3;
    cases.push_back(c);
  }
  std::uint64_t seed = 20000;
  for (const Case& c : cases) run_case<__nv_bfloat16>(c, seed += 77);
}

// Graph-replayable decoding: P and the RoPE position come from a device cursor and the prev tensors
// are larger than P (poisoned past it), at several fill levels of the same capacity.
TEST_CASE("gpu sliding chunk attention bf16: decoding through a device cursor") {
  std::uint64_t seed = 21000;
  for (I64 P : {128, 131, 200, 254}) {
    Case c;
    c.C = 128;
    c.L = P == 131 ? 2 : 1;
    c.P = P;
    c.cap = 2 * c.C - 1 - c.L;
    c.H = 2;
    c.dk = 128;
    c.dv = 256;
    c.n_rope = 1;
    c.start = 5000 + P;
    c.segments = P == 200;
    c.backward = false;
    run_case<__nv_bfloat16>(c, seed += 31, /*determinism=*/P == 254);
  }
  {  // the 7B head shape, a nearly empty cache of the largest capacity
    Case c;
    c.C = 2048;
    c.L = 1;
    c.P = 2048;
    c.cap = 4094;
    c.H = 4;
    c.dk = 256;
    c.dv = 2048;
    c.n_rope = 4;
    c.start = 1 << 20;
    c.backward = false;
    run_case<__nv_bfloat16>(c, seed += 31);
  }
}

TEST_CASE("gpu sliding chunk attention: generic path (fp32, unaligned bf16 rows)") {
  Case c;
  c.L = 192;
  c.C = 64;
  c.P = 64;
  c.H = 2;
  c.dk = 64;
  c.dv = 192;
  c.segments = true;
  c.n_rope = 1;
  c.start = 31337;
  run_case<float>(c, 30000);
  c.accumulate_dv = true;
  run_case<float>(c, 30050);
  c.accumulate_dv = false;
  Case t = c;
  t.L = 40;
  t.P = 70;
  run_case<float>(t, 30100);
  Case u = c;
  u.pad = 3;  // rows of 67 / 195 elements: no 16-byte alignment
  run_case<__nv_bfloat16>(u, 30200);
}

TEST_CASE("gpu sliding chunk attention is deterministic") {
  Case c;
  c.L = 384;
  c.C = 128;
  c.P = 128;
  c.H = 2;
  c.dk = 256;
  c.dv = 1024;
  c.segments = true;
  c.n_rope = 2;
  run_case<__nv_bfloat16>(c, 40000, true);
  c.accumulate_dv = true;  // the flash dv kernel adding to dv
  run_case<__nv_bfloat16>(c, 40050, true);
  Case d;
  d.C = 512;
  d.P = 1000;
  d.L = 2;
  d.dk = 128;
  d.dv = 2048;
  d.backward = false;
  run_case<__nv_bfloat16>(d, 40100, true);
}

TEST_CASE("gpu sliding chunk attention, GEMM-staged path: shapes, documents, carried K/V, groups") {
  sca::cuda::GemmOptions one;  // one chunk per group: every group boundary is crossed
  one.group_bytes = 1;
  const sca::cuda::GemmOptions all;  // the default budget: all chunks of these small calls in one group
  int i = 0;
  for (I64 dk : {64, 128, 256})
    for (I64 dv : {64, 320, 2048}) {
      const Case c = sweep_case(dk, dv, i);
      run_case<__nv_bfloat16>(c, 60000 + 13 * i, false, i % 2 ? &one : &all);
      ++i;
    }
  std::vector<Case> cases;
  cases.push_back(documents_case());
  {  // a head size the flash kernels do not take (dk 96), one chunk with a carried one
    Case c;
    c.L = 192;
    c.C = 192;
    c.P = 192;
    c.dk = 96;
    c.dv = 320;
    c.n_rope = 1;
    c.segments = true;
    cases.push_back(c);
  }
  {  // backward without saved out / lse
    Case c;
    c.L = 256;
    c.C = 64;
    c.dk = 64;
    c.dv = 128;
    c.H = 2;
    c.saved = false;
    c.segments = true;
    c.n_rope = 1;
    cases.push_back(c);
  }
  std::uint64_t seed = 61000;
  for (const Case& c : cases) {
    run_case<__nv_bfloat16>(c, seed += 7, false, &one);
    run_case<__nv_bfloat16>(c, seed += 7, false, &all);
  }
  run_case<__half>(cases[0], 62000, false, &one);
  run_case<float>(cases[0], 62100, false, &one);  // fp32 GEMMs: tight tolerances
  run_case<float>(cases[2], 62200, false, &all);
  run_case<__nv_bfloat16>(cases[0], 62300, true, &one);  // deterministic
  for (Case c : cases) {  // dv added to what the caller's buffer holds
    c.accumulate_dv = true;
    run_case<__nv_bfloat16>(c, seed += 7, true, &one);
    run_case<float>(c, seed += 7, false, &all);
  }
  // Kept probabilities: the forward writes P into the caller's buffer, the backward reads it.
  for (Case c : {cases[0], cases[1]}) {
    c.probs = true;
    run_case<__nv_bfloat16>(c, seed += 7, false, &one);
    run_case<__nv_bfloat16>(c, seed += 7, false, &all);
    c.accumulate_dv = true;
    run_case<__nv_bfloat16>(c, seed += 7, true, &one);  // deterministic too
    run_case<__half>(c, seed += 7, false, &all);
    run_case<float>(c, seed += 7, false, &one);
  }
  for (I64 dk : {64, 256})
    for (I64 dv : {320, 2048}) {
      Case c = sweep_case(dk, dv, i++);
      c.probs = true;
      run_case<__nv_bfloat16>(c, seed += 7, false, dk == 64 ? &one : &all);
    }
  Case tail;  // a tail call goes to the flash kernels through the same entry point
  tail.C = 128;
  tail.L = 57;
  tail.P = 100;
  tail.dk = 128;
  tail.dv = 256;
  run_case<__nv_bfloat16>(tail, 62400, false, &all);
}

TEST_CASE("gpu sliding chunk attention rejects unsupported and bad arguments") {
  DeviceBuffer<__nv_bfloat16> buf(1 << 16);
  DeviceBuffer<float> fbuf(1 << 12);
  std::vector<__nv_bfloat16> host(1 << 12);
  auto make = [&](I64 L, I64 dk, I64 dv, I64 C) {
    sca::ForwardArgs<__nv_bfloat16> f;
    f.chunk = C;
    f.q = buf.view({1, L, 1, dk});
    f.k = buf.view({1, L, 1, dk});
    f.v = buf.view({1, L, 1, dv});
    f.out = buf.view({1, L, 1, dv});
    return f;
  };
  std::size_t bytes = 0;
  {  // a cursor needs a decoding call, and device memory the CPU reference cannot read
    DeviceBuffer<DecodeCursor> cursor(1);
    auto f = make(64, 64, 64, 64);
    f.cursor = cursor.data();
    const Status s = sca::cuda::forward_workspace_size(f, bytes);
    CHECK(s.code() == StatusCode::kUnsupported);
    CHECK(s.message().find("cursor") != std::string::npos);
    std::vector<double> hq(64 * 64);
    sca::ForwardArgs<double> g;
    g.chunk = 64;
    g.q = host_view(hq, {1, 1, 1, 64});
    g.k = g.q;
    g.v = g.q;
    std::vector<double> ho(64);
    g.out = host_view(ho, {1, 1, 1, 64});
    g.cursor = cursor.data();
    const Status sc = sca::cpu::forward(g);
    CHECK(sc.code() == StatusCode::kUnsupported);
    CHECK(sc.message().find("cursor") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward(make(64, 96, 64, 64), buf.data(), 1 << 17, nullptr);
    CHECK(s.code() == StatusCode::kUnsupported);
    CHECK(s.message().find("dk=96") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward_workspace_size(make(64, 64, 100, 64), bytes);
    CHECK(s.code() == StatusCode::kUnsupported);
    CHECK(s.message().find("dv=100") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward_workspace_size(make(64, 64, 4096, 64), bytes);
    CHECK(s.code() == StatusCode::kUnsupported);
  }
  {
    const Status s = sca::cuda::forward_workspace_size(make(8192, 64, 64, 8192), bytes);
    CHECK(s.code() == StatusCode::kUnsupported);
    CHECK(s.message().find("chunk") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward_workspace_size(make(100, 64, 64, 64), bytes);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("multiple of the chunk") != std::string::npos);
  }
  {
    auto f = make(64, 64, 64, 64);
    f.q = TensorView<const __nv_bfloat16>::host(host.data(), {1, 64, 1, 64});
    const Status s = sca::cuda::forward(f, nullptr, 0, nullptr);
    CHECK(s.message().find("expected device memory") != std::string::npos);
  }
  {
    auto f = make(64, 64, 64, 64);
    f.rope.n_rope_heads = 1;  // needs a workspace for the rotated keys
    REQUIRE(sca::cuda::forward_workspace_size(f, bytes).ok());
    CHECK(bytes > 0);
    const Status s = sca::cuda::forward(f, nullptr, 0, nullptr);
    CHECK(s.message().find("workspace") != std::string::npos);
  }
  {
    sca::BackwardArgs<__nv_bfloat16> g;
    g.chunk = 64;
    g.q = buf.view({1, 64, 1, 64});
    g.k = g.q;
    g.v = g.q;
    g.dout = g.q;
    g.dq = buf.view({1, 64, 1, 64});
    g.dk = g.dq;
    g.dv = g.dq;
    g.out = g.q;
    g.lse = fbuf.view({1, 1, 64});
    REQUIRE(sca::cuda::backward_workspace_size(g, bytes).ok());
    CHECK(bytes > 0);
    const Status s = sca::cuda::backward(g, nullptr, 0, nullptr);
    CHECK(s.message().find("workspace") != std::string::npos);
  }
}

TEST_CASE("gpu sliding chunk attention, GEMM-staged path: bad arguments") {
  using T = __nv_bfloat16;
  const I64 L = 128, C = 64, d = 64;
  DeviceBuffer<T> buf(L * d * 4);
  DeviceBuffer<char> ws(std::size_t(64) << 20);
  sca::ForwardArgs<T> f;
  f.chunk = C;
  f.q = buf.view({1, L, 1, d});
  f.k = f.q;
  f.v = f.q;
  f.out = TensorView<T>::device(buf.data() + L * d, {1, L, 1, d});
  std::size_t need = 0;
  REQUIRE(sca::cuda::forward_workspace_size(gemm_context(), f, need).ok());
  CHECK(need > 0);
  {
    linear::cuda::Context cold;  // never initialized
    const Status s = sca::cuda::forward(cold, f, ws.data(), ws.size(), nullptr);
    CHECK(s.message().find("not initialized") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward(gemm_context(), f, ws.data(), need - 1, nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("workspace") != std::string::npos);
  }
  {
    const Status s = sca::cuda::forward(gemm_context(), f, ws.data() + 16, ws.size() - 16, nullptr);
    CHECK(s.message().find("256-byte aligned") != std::string::npos);
  }
  {
    auto bad = f;
    bad.q = buf.view({1, L - 1, 1, d});  // L not a chunk multiple on the full path
    const Status s = sca::cuda::forward_workspace_size(gemm_context(), bad, need);
    CHECK(s.code() == StatusCode::kInvalidArgument);
  }
  // Kept probabilities: shape, the path that keeps them, and the backward's needs.
  DeviceBuffer<T> probs(L * 2 * C);
  {
    auto bad = f;
    bad.probs = probs.view({1, 1, L / C, C, C});  // last dimension must be 2C
    const Status s = sca::cuda::forward(gemm_context(), bad, ws.data(), ws.size(), nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("probs") != std::string::npos);
  }
  {
    auto flash = f;  // the flash kernels' entry point does not keep them
    flash.probs = probs.view({1, 1, L / C, C, 2 * C});
    std::size_t b = 0;
    const Status s = sca::cuda::forward_workspace_size(flash, b);
    CHECK(s.code() == StatusCode::kUnsupported);
    CHECK(s.message().find("GEMM-staged") != std::string::npos);
    auto misaligned = f;  // nor a buffer the row kernels cannot move in 16-byte pieces
    DeviceBuffer<T> wide(L * 2 * C + 8);
    misaligned.probs = TensorView<T>::device(wide.data() + 1, {1, 1, L / C, C, 2 * C});
    const Status m = sca::cuda::forward(gemm_context(), misaligned, ws.data(), ws.size(), nullptr);
    CHECK(m.code() == StatusCode::kUnsupported);
    CHECK(m.message().find("16-byte aligned") != std::string::npos);
    auto tail = flash;  // nor does a tail call through the GEMM entry point (it goes to them)
    tail.chunk = 2 * L;
    tail.probs = probs.view({1, 1, 1, L, 2 * L});
    CHECK(!sca::cuda::forward(gemm_context(), tail, ws.data(), ws.size(), nullptr).ok());
  }
  {
    sca::BackwardArgs<T> g;
    g.chunk = C;
    g.q = f.q;
    g.k = f.k;
    g.v = f.v;
    g.dout = f.q;
    g.dq = TensorView<T>::device(buf.data() + 2 * L * d, {1, L, 1, d});
    g.dk = g.dq;
    g.dv = TensorView<T>::device(buf.data() + 3 * L * d, {1, L, 1, d});
    g.probs = TensorView<const T>::device(probs.data(), {1, 1, L / C, C, 2 * C});
    std::size_t b = 0;
    const Status s = sca::cuda::backward_workspace_size(gemm_context(), g, b);  // without out
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("out") != std::string::npos);
  }
  {  // the CPU reference does not keep them
    std::vector<float> h(L * d), o(L * d), pr(L * 2 * C);
    sca::ForwardArgs<float> cf;
    cf.chunk = C;
    cf.q = TensorView<const float>::host(h.data(), {1, L, 1, d});
    cf.k = cf.q;
    cf.v = cf.q;
    cf.out = TensorView<float>::host(o.data(), {1, L, 1, d});
    cf.probs = TensorView<float>::host(pr.data(), {1, 1, L / C, C, 2 * C});
    CHECK(sca::cpu::forward(cf).code() == StatusCode::kUnsupported);
  }
}
