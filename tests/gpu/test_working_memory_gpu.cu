// CUDA adaptive working memory against the CPU reference (double, on the same rounded inputs):
// documents with resets and masked outputs, carried state, one chunk, many chunks, the tail and
// decode paths (with the state updated in place), every dtype; bitwise determinism; bad arguments.
// The 16-bit suites run twice: on the launchers of launch.cuh and on the Context-taking ones of
// launch_cublas.cuh (the large products on cuBLASLt).
// Every comparison is printed, so one run documents the errors of each path.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/working_memory/launch.cuh"
#include "gecko/ops/working_memory/launch_cublas.cuh"
#include "gecko/ops/working_memory/reference.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

struct Shape {
  std::int64_t B, L, H, dk, dv, C;
  bool state, seg;
  std::int64_t P = -1;     // tail path: carried rows (full path: C with state, 0 without)
  bool inplace = false;    // memory_out / log_norm_out are the views of memory / log_norm
  bool packed_qk = false;  // aq and ak are strided views into one [B, L, H, 2, dk] buffer
  bool upstream = true;    // dmemory_out / dlog_norm_out given (else empty, as in training)
};

struct Tol {
  double out, state, grad;
};

template <class T>
Tol tolerance() {
  if constexpr (std::is_same_v<T, float>) return {2e-5, 2e-5, 5e-5};
  else if constexpr (std::is_same_v<T, __half>) return {2e-3, 2e-3, 6e-3};
  else return {1e-2, 1e-2, 2e-2};
}

template <class T>
std::vector<T> normal(std::size_t n, std::uint64_t seed, double sd) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, sd);
  std::vector<T> v(n);
  for (auto& x : v) x = from_double<T>(d(g));
  return v;
}

// Documents per batch row b (kind = (b + seed) % 3): 0 one document, the memory's; 1 a boundary
// mid-sequence; 2 the carried chunk mixes two docs, the memory belongs to a third (reset at step 0)
// and a boundary inside chunk 1.
void make_docs(std::int64_t B, std::int64_t L, std::int64_t P, std::int64_t C, std::uint64_t seed,
               std::vector<std::int64_t>& seg, std::vector<std::int64_t>& pseg, std::vector<std::int64_t>& pcount) {
  seg.assign(B * L, 0);
  pseg.assign(B * std::max<std::int64_t>(P, 1), 0);
  pcount.assign(B, 0);
  for (std::int64_t b = 0; b < B; ++b) {
    const int kind = static_cast<int>((b + seed) % 3);
    for (std::int64_t t = 0; t < P; ++t) pseg[b * P + t] = (kind == 2 && t < P / 2) ? 9 : 10;
    pcount[b] = kind == 2 ? 8 : 10;
    std::int64_t id = 10;
    for (std::int64_t t = 0; t < L; ++t) {
      if (kind == 1 && t == L / 2 + 3) ++id;
      if (kind == 2 && t == C + 5) ++id;
      seg[b * L + t] = id;
    }
  }
}

// log_norm may hold -inf (nothing absorbed): equal infinities count as exact.
testing::Comparison compare_ln(const std::vector<float>& got, const std::vector<double>& want) {
  std::vector<double> g(got.begin(), got.end()), w = want;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (std::isinf(w[i]) && g[i] == w[i]) g[i] = w[i] = 0.0;
  return testing::compare(g, w);
}

// Prints every comparison (the log documents each path's error), then checks it.
#define AWM_CHECK(got, want, tol, what)                                                                   \
  do {                                                                                                   \
    const auto awm_cmp_ = ::gecko::testing::compare((got), (want));                                      \
    std::printf("%s %s: %s (tol %.0e)\n", label.c_str(), what, awm_cmp_.to_string().c_str(), (tol));      \
    INFO(what << ": " << awm_cmp_.to_string());                                                          \
    CHECK(awm_cmp_.within(tol));                                                                         \
  } while (0)

using test::gemm_context;

// The launchers under test: launch.cuh's (ctx null) or launch_cublas.cuh's.
// (with a Saved when `sv` is given: the forward keeps its front, the backward reads it)
template <class T>
Status wm_forward_size(linear::cuda::Context* ctx, const working_memory::ForwardArgs<T>& a, std::size_t& b, bool sv) {
  return ctx ? working_memory::cuda::forward_workspace_size(*ctx, a, b, sv)
             : working_memory::cuda::forward_workspace_size(a, b, sv);
}
template <class T>
Status wm_backward_size(linear::cuda::Context* ctx, const working_memory::BackwardArgs<T>& a, std::size_t& b, bool sv) {
  return ctx ? working_memory::cuda::backward_workspace_size(*ctx, a, b, sv)
             : working_memory::cuda::backward_workspace_size(a, b, sv);
}
// Every product on cuBLASLt, however small (the test shapes are far below the default threshold).
const working_memory::cuda::CublasOptions kAllCublas{0.0};

template <class T>
Status wm_forward(linear::cuda::Context* ctx, const working_memory::ForwardArgs<T>& a, void* ws, std::size_t b,
                  const working_memory::cuda::Saved* sv) {
  return ctx ? working_memory::cuda::forward(*ctx, a, ws, b, nullptr, sv, kAllCublas)
             : working_memory::cuda::forward(a, ws, b, nullptr, sv);
}
template <class T>
Status wm_backward(linear::cuda::Context* ctx, const working_memory::BackwardArgs<T>& a, void* ws, std::size_t b,
                   const working_memory::cuda::Saved* sv) {
  return ctx ? working_memory::cuda::backward(*ctx, a, ws, b, nullptr, sv, kAllCublas)
             : working_memory::cuda::backward(a, ws, b, nullptr, sv);
}

// save_front: the forward keeps its front in a Saved region the backward reads (full path only).
template <class T>
void run_case(const Shape& s, std::uint64_t seed, bool determinism = false, linear::cuda::Context* ctx = nullptr,
              bool save_front = false) {
  const std::int64_t B = s.B, L = s.L, H = s.H, dk = s.dk, dv = s.dv, C = s.C;
  const bool tail = L < C;
  const std::int64_t P = tail ? std::max<std::int64_t>(s.P, 0) : (s.state ? C : 0);
  const Tol tol = tolerance<T>();
  std::ostringstream lab;
  lab << test::type_label<T>() << " B" << B << " L" << L << " H" << H << " dk" << dk << " dv" << dv << " C" << C
      << (s.state ? " state" : "") << (s.seg ? " docs" : "") << (tail ? " P" + std::to_string(P) : std::string())
      << (s.inplace ? " in-place" : "") << (s.packed_qk ? " strided" : "") << (ctx ? " cublaslt" : "")
      << (save_front && L >= C ? " saved" : "");
  const std::string label = lab.str();
  CAPTURE(label);

  // Inputs, rounded to T; the reference reads the same values in double.
  const std::size_t nq = B * L * H * dk, nv = B * L * H * dv;
  auto aq = normal<T>(nq, seed + 1, 1.2), ak = normal<T>(nq, seed + 2, 1.2), v = normal<T>(nv, seed + 3, 1.0);
  const std::int64_t Pk = std::max<std::int64_t>(P, 1);
  auto pk = normal<T>(B * Pk * H * dk, seed + 4, 1.2), pv = normal<T>(B * Pk * H * dv, seed + 5, 1.0);
  auto mem = normal<float>(B * H * dk * dv, seed + 6, 0.5), ln = normal<float>(B * H * dk, seed + 7, 0.5);
  for (auto& x : ln) x += 2.f;
  auto dout = normal<T>(nv, seed + 8, 1.0);
  auto dmo = normal<float>(B * H * dk * dv, seed + 9, 0.3), dlo = normal<float>(B * H * dk, seed + 10, 0.3);
  std::vector<std::int64_t> seg, pseg, pcount;
  make_docs(B, L, P, C, seed, seg, pseg, pcount);

  auto aqd = test::widen(aq), akd = test::widen(ak), vd = test::widen(v), pkd = test::widen(pk), pvd = test::widen(pv);
  auto memd = test::widen(mem), lnd = test::widen(ln), doutd = test::widen(dout), dmod = test::widen(dmo),
       dlod = test::widen(dlo);
  std::vector<double> out_r(nv), mo_r(B * H * dk * dv), lo_r(B * H * dk);
  working_memory::ForwardArgs<double> fr;
  fr.chunk = C;
  fr.aq = host_view(aqd, {B, L, H, dk});
  fr.ak = host_view(akd, {B, L, H, dk});
  fr.v = host_view(vd, {B, L, H, dv});
  if (s.state) {
    fr.memory = host_view(memd, {B, H, dk, dv});
    fr.log_norm = host_view(lnd, {B, H, dk});
  }
  if (P > 0) {
    fr.prev_k = host_view(pkd, {B, P, H, dk});
    fr.prev_v = host_view(pvd, {B, P, H, dv});
  }
  if (s.seg) {
    fr.segment_idx = host_view(seg, {B, L});
    if (P > 0) fr.prev_segment_idx = host_view(pseg, {B, P});
    if (s.state) fr.prev_segment_count = host_view(pcount, {B});
  }
  fr.out = host_view(out_r, {B, L, H, dv});
  fr.memory_out = host_view(mo_r, {B, H, dk, dv});
  fr.log_norm_out = host_view(lo_r, {B, H, dk});
  working_memory::Problem prob;
  REQUIRE(working_memory::validate(fr, Memory::kHost, prob).ok());
  REQUIRE(working_memory::cpu::forward(fr).ok());

  // Device inputs.
  DeviceBuffer<T> aq_d, ak_d, qk_d, v_d, pk_d, pv_d, dout_d, out_d(nv);
  DeviceBuffer<float> mem_d, ln_d, mo_d(B * H * dk * dv), lo_d(B * H * dk), dmo_d, dlo_d;
  DeviceBuffer<std::int64_t> seg_d, pseg_d, pcount_d;
  v_d.upload(v);
  pk_d.upload(pk);
  pv_d.upload(pv);
  mem_d.upload(mem);
  ln_d.upload(ln);
  dout_d.upload(dout);
  dmo_d.upload(dmo);
  dlo_d.upload(dlo);
  seg_d.upload(seg);
  pseg_d.upload(pseg);
  pcount_d.upload(pcount);
  working_memory::ForwardArgs<T> f;
  f.chunk = C;
  if (s.packed_qk) {  // [B, L, H, 2, dk]: aq at [..., 0, :], ak at [..., 1, :]
    std::vector<T> qk(2 * nq);
    for (std::size_t r = 0; r < nq / dk; ++r)
      for (std::int64_t i = 0; i < dk; ++i) {
        qk[(2 * r) * dk + i] = aq[r * dk + i];
        qk[(2 * r + 1) * dk + i] = ak[r * dk + i];
      }
    qk_d.upload(qk);
    const std::int64_t st[] = {L * H * 2 * dk, H * 2 * dk, 2 * dk, 1};
    f.aq = TensorView<const T>::strided(qk_d.data(), {B, L, H, dk}, {st[0], st[1], st[2], st[3]}, Memory::kDevice);
    f.ak = TensorView<const T>::strided(qk_d.data() + dk, {B, L, H, dk}, {st[0], st[1], st[2], st[3]}, Memory::kDevice);
  } else {
    aq_d.upload(aq);
    ak_d.upload(ak);
    f.aq = aq_d.view({B, L, H, dk});
    f.ak = ak_d.view({B, L, H, dk});
  }
  f.v = v_d.view({B, L, H, dv});
  if (s.state) {
    f.memory = mem_d.view({B, H, dk, dv});
    f.log_norm = ln_d.view({B, H, dk});
  }
  if (P > 0) {
    f.prev_k = pk_d.view({B, P, H, dk});
    f.prev_v = pv_d.view({B, P, H, dv});
  }
  if (s.seg) {
    f.segment_idx = seg_d.view({B, L});
    if (P > 0) f.prev_segment_idx = pseg_d.view({B, P});
    if (s.state) f.prev_segment_count = pcount_d.view({B});
  }
  f.out = out_d.view({B, L, H, dv});
  const bool inplace = s.inplace && s.state;
  f.memory_out = inplace ? mem_d.view({B, H, dk, dv}) : mo_d.view({B, H, dk, dv});
  f.log_norm_out = inplace ? ln_d.view({B, H, dk}) : lo_d.view({B, H, dk});
  const bool sv = save_front && !tail;
  working_memory::cuda::Saved saved;
  DeviceBuffer<char> saved_d;
  if (sv) {
    const Status ss = working_memory::cuda::saved_bytes(f, saved.bytes);
    REQUIRE_MESSAGE(ss.ok(), ss.to_string());
    saved_d = DeviceBuffer<char>(saved.bytes);
    saved.data = saved_d.data();
  }
  const working_memory::cuda::Saved* svp = sv ? &saved : nullptr;
  std::size_t fbytes = 0;
  const Status fsize = wm_forward_size(ctx, f, fbytes, sv);
  REQUIRE_MESSAGE(fsize.ok(), fsize.to_string());
  DeviceBuffer<char> fws(fbytes);
  const Status fst = wm_forward(ctx, f, fws.data(), fbytes, svp);
  REQUIRE_MESSAGE(fst.ok(), fst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto out = out_d.download();
  AWM_CHECK(test::widen(out), out_r, tol.out, "out");
  if (prob.state_after) {
    const auto mo = (inplace ? mem_d : mo_d).download();
    const auto lo = (inplace ? ln_d : lo_d).download();
    AWM_CHECK(mo, mo_r, tol.state, "memory_out");
    const auto c = compare_ln(lo, lo_r);
    std::printf("%s log_norm_out: %s (tol 1e-05)\n", label.c_str(), c.to_string().c_str());
    INFO("log_norm_out: " << c.to_string());
    CHECK(c.within(1e-5));
  }
  if (tail) return;
  if (inplace) {  // restore the inputs the backward recomputes from
    mem_d.upload(mem);
    ln_d.upload(ln);
  }

  // Backward.
  std::vector<double> daq_r(nq), dak_r(nq), dv_r(nv), dm_r(B * H * dk * dv), dl_r(B * H * dk), dpk_r(B * C * H * dk),
      dpv_r(B * C * H * dv);
  working_memory::BackwardArgs<double> br;
  br.chunk = C;
  br.aq = fr.aq;
  br.ak = fr.ak;
  br.v = fr.v;
  br.memory = fr.memory;
  br.log_norm = fr.log_norm;
  br.prev_k = fr.prev_k;
  br.prev_v = fr.prev_v;
  br.segment_idx = fr.segment_idx;
  br.prev_segment_idx = fr.prev_segment_idx;
  br.prev_segment_count = fr.prev_segment_count;
  br.dout = host_view(doutd, {B, L, H, dv});
  if (s.upstream) {
    br.dmemory_out = host_view(dmod, {B, H, dk, dv});
    br.dlog_norm_out = host_view(dlod, {B, H, dk});
  }
  br.daq = host_view(daq_r, {B, L, H, dk});
  br.dak = host_view(dak_r, {B, L, H, dk});
  br.dv = host_view(dv_r, {B, L, H, dv});
  if (s.state) {
    br.dmemory = host_view(dm_r, {B, H, dk, dv});
    br.dlog_norm = host_view(dl_r, {B, H, dk});
    br.dprev_k = host_view(dpk_r, {B, C, H, dk});
    br.dprev_v = host_view(dpv_r, {B, C, H, dv});
  }
  REQUIRE(working_memory::cpu::backward(br).ok());

  DeviceBuffer<T> daq_d(nq), dak_d(nq), dv_d(nv), dpk_d(B * C * H * dk), dpv_d(B * C * H * dv);
  DeviceBuffer<float> dm_d(B * H * dk * dv), dl_d(B * H * dk);
  working_memory::BackwardArgs<T> g;
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
  g.dout = dout_d.view({B, L, H, dv});
  if (s.upstream) {
    g.dmemory_out = dmo_d.view({B, H, dk, dv});
    g.dlog_norm_out = dlo_d.view({B, H, dk});
  }
  g.daq = daq_d.view({B, L, H, dk});
  g.dak = dak_d.view({B, L, H, dk});
  g.dv = dv_d.view({B, L, H, dv});
  if (s.state) {
    g.dmemory = dm_d.view({B, H, dk, dv});
    g.dlog_norm = dl_d.view({B, H, dk});
    g.dprev_k = dpk_d.view({B, C, H, dk});
    g.dprev_v = dpv_d.view({B, C, H, dv});
  }
  std::size_t bbytes = 0;
  const Status bsize = wm_backward_size(ctx, g, bbytes, sv);
  REQUIRE_MESSAGE(bsize.ok(), bsize.to_string());
  DeviceBuffer<char> bws(bbytes);
  const Status bst = wm_backward(ctx, g, bws.data(), bbytes, svp);
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const auto daq = daq_d.download(), dak = dak_d.download(), dvv = dv_d.download();
  AWM_CHECK(test::widen(daq), daq_r, tol.grad, "daq");
  AWM_CHECK(test::widen(dak), dak_r, tol.grad, "dak");
  AWM_CHECK(test::widen(dvv), dv_r, tol.grad, "dv");
  if (s.state) {
    AWM_CHECK(dm_d.download(), dm_r, tol.grad, "dmemory");
    AWM_CHECK(dl_d.download(), dl_r, tol.grad, "dlog_norm");
    AWM_CHECK(test::widen(dpk_d.download()), dpk_r, tol.grad, "dprev_k");
    AWM_CHECK(test::widen(dpv_d.download()), dpv_r, tol.grad, "dprev_v");
  }

  if (determinism) {  // bitwise: no atomics, fixed reduction orders
    REQUIRE(wm_forward(ctx, f, fws.data(), fbytes, svp).ok());
    REQUIRE(wm_backward(ctx, g, bws.data(), bbytes, svp).ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(std::memcmp(out.data(), out_d.download().data(), nv * sizeof(T)) == 0);
    CHECK(std::memcmp(daq.data(), daq_d.download().data(), nq * sizeof(T)) == 0);
    CHECK(std::memcmp(dak.data(), dak_d.download().data(), nq * sizeof(T)) == 0);
    CHECK(std::memcmp(dvv.data(), dv_d.download().data(), nv * sizeof(T)) == 0);
    if (s.state) {
      const auto dm1 = dm_d.download();
      REQUIRE(wm_backward(ctx, g, bws.data(), bbytes, svp).ok());
      CHECK(std::memcmp(dm1.data(), dm_d.download().data(), dm1.size() * sizeof(float)) == 0);
    }
  }
}

template <class T>
void full_suite(linear::cuda::Context* ctx = nullptr, bool save_front = false) {
  std::uint64_t seed = 500;
  const Shape shapes[] = {
      {3, 256, 2, 64, 128, 64, true, true},                 // carried state, documents, resets, masks
      {1, 320, 2, 128, 64, 64, true, false, -1, false, false, false},  // state, no docs, no upstream grads
      {3, 512, 1, 256, 256, 128, false, true},              // no state, dk 256, documents
      {1, 128, 3, 128, 64, 128, false, false},              // one chunk, no state: zeros, empty state
      {1, 128, 2, 128, 192, 64, false, true},               // two chunks: the readout of the empty memory
      {2, 448, 1, 192, 128, 64, true, true, -1, false, true},  // 7 chunks, dk 192, strided aq / ak
      {3, 64, 2, 64, 64, 64, true, true},                   // one chunk with a carried state (bug 4.1 shape)
  };
  for (const auto& s : shapes) run_case<T>(s, seed += 31, false, ctx, save_front);
}

template <class T>
void tail_suite(linear::cuda::Context* ctx = nullptr) {
  std::uint64_t seed = 900;
  const Shape shapes[] = {
      {3, 47, 1, 64, 64, 64, true, true, 81},               // completes a chunk: absorbs chunk -1
      {3, 1, 2, 64, 128, 64, true, true, 69, true},         // decode, no absorb, state in place
      {2, 1, 1, 128, 64, 64, true, false, 127, true},       // decode that completes a chunk, in place
      // Decoding reads (kernel_decode.cuh): up to 4 tokens, no absorb, the state copied out.
      {2, 3, 2, 256, 192, 128, true, true, 130},            // 3 tokens, dk 256, documents
      {1, 4, 1, 192, 64, 64, true, false, 70},              // 4 tokens, dk 192
      {2, 63, 2, 64, 64, 64, true, true, 64},               // partial chunk after a boundary
      {2, 54, 1, 64, 64, 64, false, false, 10},             // first chunk completes: the empty state
      {2, 5, 1, 64, 64, 64, false, true, 0},                // first tokens of a stream: zeros only
  };
  for (const auto& s : shapes) run_case<T>(s, seed += 17, false, ctx);
}

}  // namespace

TEST_CASE("gpu working memory fp32 matches the CPU reference") {
  full_suite<float>();
  tail_suite<float>();
}
// The fp32 engine predicates k, so any chunk works (the 16-bit path wants multiples of 64): chunks of
// 16 (the golden MEGA cases'), 24, 40 and 100 (a partial second 64-token row block), full and tail
// paths.
TEST_CASE("gpu working memory fp32 with chunks that are not multiples of 64") {
  std::uint64_t seed = 7100;
  const Shape shapes[] = {
      {2, 64, 2, 256, 64, 16, true, true},         // C = 16, dk 256, dv 64: documents, resets
      {1, 96, 1, 64, 128, 24, false, true},        // no state
      {2, 200, 2, 128, 64, 40, true, false},       // 5 chunks
      {1, 300, 1, 64, 64, 100, true, true},        // 3 chunks of 100
      {2, 5, 1, 64, 64, 16, true, true, 20},       // tail, no absorb
      {1, 1, 2, 64, 64, 16, true, false, 31},      // one token that completes a chunk
      {2, 7, 1, 64, 64, 16, false, true, 9},       // the first chunk completes: the empty state
  };
  for (const auto& s : shapes) run_case<float>(s, seed += 13);
}

TEST_CASE("gpu working memory bf16 matches the CPU reference") {
  full_suite<__nv_bfloat16>();
  tail_suite<__nv_bfloat16>();
}
TEST_CASE("gpu working memory fp16 matches the CPU reference") {
  full_suite<__half>();
  tail_suite<__half>();
}

TEST_CASE("gpu working memory with cuBLASLt products matches the CPU reference (bf16, fp16, fp32)") {
  auto* ctx = &gemm_context();
  full_suite<__nv_bfloat16>(ctx);
  tail_suite<__nv_bfloat16>(ctx);
  full_suite<__half>(ctx);
  run_case<float>({3, 256, 2, 64, 128, 64, true, true}, 4141, false, ctx);  // fp32 keeps the engine
}

TEST_CASE("gpu working memory with the forward's front saved for the backward") {
  full_suite<__nv_bfloat16>(&gemm_context(), true);
  full_suite<float>(nullptr, true);
  // The saved front is only read: a second backward gives the same bits (determinism run).
  run_case<__nv_bfloat16>({1, 1024, 2, 256, 512, 256, true, true}, 4242, true, &gemm_context(), true);
}

TEST_CASE("gpu working memory bf16 at a larger shape, bitwise deterministic") {
  run_case<__nv_bfloat16>({1, 1024, 2, 256, 512, 256, true, true}, 4242, true);
  run_case<__nv_bfloat16>({1, 1024, 2, 256, 512, 256, true, true}, 4242, true, &gemm_context());
  run_case<float>({2, 256, 1, 128, 128, 64, true, true}, 4343, true);
}

TEST_CASE("gpu working memory rejects what it cannot do") {
  using working_memory::ForwardArgs;
  using working_memory::BackwardArgs;
  const std::int64_t B = 1, L = 128, H = 1, C = 64;
  DeviceBuffer<__nv_bfloat16> x(B * L * H * 256 + 8), y(B * L * H * 256);
  auto fwd = [&](std::int64_t dk, std::int64_t dv, std::int64_t chunk, std::int64_t offset = 0) {
    ForwardArgs<__nv_bfloat16> f;
    f.chunk = chunk;
    f.aq = TensorView<const __nv_bfloat16>::device(x.data() + offset, {B, L, H, dk});
    f.ak = TensorView<const __nv_bfloat16>::device(x.data(), {B, L, H, dk});
    f.v = TensorView<const __nv_bfloat16>::device(x.data(), {B, L, H, dv});
    f.out = y.view({B, L, H, dv});
    return f;
  };
  DeviceBuffer<float> mo(256 * 256), lo(256);
  auto with_state_out = [&](ForwardArgs<__nv_bfloat16> f, std::int64_t dk, std::int64_t dv) {
    f.memory_out = mo.view({B, H, dk, dv});
    f.log_norm_out = lo.view({B, H, dk});
    return f;
  };
  std::size_t bytes = 0;
  auto expect = [&](const Status& st, StatusCode code, const char* word) {
    INFO(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find(word) != std::string::npos);
  };
  expect(working_memory::cuda::forward_workspace_size(with_state_out(fwd(96, 64, C), 96, 64), bytes),
         StatusCode::kUnsupported, "dk");
  expect(working_memory::cuda::forward_workspace_size(with_state_out(fwd(64, 100, C), 64, 100), bytes),
         StatusCode::kUnsupported, "dv");
  expect(working_memory::cuda::forward_workspace_size(with_state_out(fwd(64, 64, 32), 64, 64), bytes),
         StatusCode::kUnsupported, "chunk");
  expect(working_memory::cuda::forward_workspace_size(with_state_out(fwd(64, 64, C, 1), 64, 64), bytes),
         StatusCode::kUnsupported, "aligned");
  expect(working_memory::cuda::forward_workspace_size(with_state_out(fwd(64, 64, 48), 64, 64), bytes),
         StatusCode::kInvalidArgument, "multiple");  // L % C != 0
  // Workspace too small.
  const auto good = with_state_out(fwd(64, 64, C), 64, 64);
  REQUIRE(working_memory::cuda::forward_workspace_size(good, bytes).ok());
  REQUIRE(bytes > 0);
  DeviceBuffer<char> ws(bytes);
  expect(working_memory::cuda::forward(good, ws.data(), bytes - 1, nullptr), StatusCode::kInvalidArgument,
         "workspace");
  CHECK(working_memory::cuda::forward(good, ws.data(), bytes, nullptr).ok());
  // A Saved region too small, or given to a tail call.
  std::size_t sbytes = 0;
  REQUIRE(working_memory::cuda::saved_bytes(good, sbytes).ok());
  DeviceBuffer<char> sbuf(sbytes);
  const working_memory::cuda::Saved small{sbuf.data(), sbytes - 1};
  expect(working_memory::cuda::forward(good, ws.data(), bytes, nullptr, &small), StatusCode::kInvalidArgument,
         "`saved` needs");
  auto tail = fwd(64, 64, 256);  // L = 128 < C: the tail path
  expect(working_memory::cuda::saved_bytes(tail, sbytes), StatusCode::kInvalidArgument, "full path");
  const working_memory::cuda::Saved enough{sbuf.data(), sbuf.size()};
  expect(working_memory::cuda::forward(tail, ws.data(), bytes, nullptr, &enough), StatusCode::kInvalidArgument,
         "full path");
  // The backward is the full path only.
  BackwardArgs<__nv_bfloat16> g;
  g.chunk = 256;
  g.aq = good.aq;
  g.ak = good.ak;
  g.v = good.v;
  g.dout = good.v;
  g.daq = y.view({B, L, H, 64});
  g.dak = y.view({B, L, H, 64});
  g.dv = y.view({B, L, H, 64});
  expect(working_memory::cuda::backward(g, ws.data(), bytes, nullptr), StatusCode::kUnsupported, "tail");
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}
