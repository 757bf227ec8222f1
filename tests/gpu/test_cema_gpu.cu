// CUDA complex EMA against the CPU reference (double): L = 1 and decoding calls, prime and 2^20 lengths, one and
// many resets, carried state, dh_out (general backward), N in {1, 4, 5, 16, 32, 64}, residual on
// and off, strided rows, every dtype; bitwise determinism; argument errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/cema/launch.cuh"
#include "gecko/ops/cema/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

struct Case {
  std::int64_t B, L, D, N;
  double bos_rate;
  bool h0;         // carried state in
  bool residual;   // add_residual
  bool dh_out;     // gradient of h_out given (general backward path)
  bool bos_first;  // a BOS at t = 0 of row 0 (h0 ignored there)
  std::int64_t pad = 0;  // extra elements per token row of x, y, dy, dx (strided views)
  double alpha_lo = -3.0, alpha_hi = 2.0;
};

// Worst errors seen per quantity and dtype, printed once per suite.
struct Worst {
  double y = 0, h_out = 0, dx = 0, dalpha = 0, ddelta = 0, dtheta = 0, dgamma = 0, dh0 = 0;
  int chunked = 0;      // cases whose forward took the chunked tensor-core kernel (kernel_chunked.cuh)
  int chunked_bwd = 0;  // ... whose backward took kernel_chunked_backward.cuh
};

std::vector<std::uint8_t> random_mask(std::size_t n, double rate, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution d(rate);
  std::vector<std::uint8_t> m(n);
  for (auto& v : m) v = d(rng) ? 1 : 0;
  return m;
}

// theta as the authors initialise it: logit(D^(-k/D)), k = 1..D, randomly permuted.
std::vector<float> spec_theta(std::int64_t D, std::uint64_t seed) {
  std::vector<std::int64_t> perm(D);
  std::iota(perm.begin(), perm.end(), 1);
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<float> t(D);
  for (std::int64_t i = 0; i < D; ++i) {
    const double f = std::pow(static_cast<double>(D), -static_cast<double>(perm[i]) / D);
    t[i] = static_cast<float>(std::log(f / (1.0 - f)));
  }
  return t;
}

// A [B, L, D] host tensor copied into a device buffer whose token rows are D + pad long.
template <class T>
void upload_padded(DeviceBuffer<T>& buf, const std::vector<T>& dense, std::int64_t B, std::int64_t L, std::int64_t D,
                   std::int64_t pad) {
  std::vector<T> h(static_cast<std::size_t>(B * L * (D + pad)), from_float<T>(0.f));
  for (std::int64_t r = 0; r < B * L; ++r)
    std::copy(dense.begin() + r * D, dense.begin() + (r + 1) * D, h.begin() + r * (D + pad));
  buf.upload(h);
}

template <class T>
std::vector<T> download_dense(const DeviceBuffer<T>& buf, std::int64_t B, std::int64_t L, std::int64_t D,
                              std::int64_t pad) {
  const auto h = buf.download();
  std::vector<T> out(static_cast<std::size_t>(B * L * D));
  for (std::int64_t r = 0; r < B * L; ++r)
    std::copy(h.begin() + r * (D + pad), h.begin() + r * (D + pad) + D, out.begin() + r * D);
  return out;
}

template <class T>
TensorView<T> act_view(const DeviceBuffer<T>& buf, std::int64_t B, std::int64_t L, std::int64_t D, std::int64_t pad) {
  return TensorView<T>::strided(buf.data(), {B, L, D}, {L * (D + pad), D + pad, 1}, Memory::kDevice);
}

template <class T>
void run_case(const Case& c, std::uint64_t seed, Worst& worst) {
  const std::int64_t B = c.B, L = c.L, D = c.D, N = c.N, pad = c.pad;
  CAPTURE(test::type_label<T>());
  CAPTURE(B);
  CAPTURE(L);
  CAPTURE(D);
  CAPTURE(N);
  CAPTURE(c.bos_rate);
  CAPTURE(c.h0);
  CAPTURE(c.residual);
  CAPTURE(c.dh_out);
  CAPTURE(pad);
  const std::size_t n = static_cast<std::size_t>(B * L * D), dn = static_cast<std::size_t>(D * N),
                    sn = static_cast<std::size_t>(B * D * N * 2);
  auto x = test::random_vector<T>(n, seed, -1, 1);
  auto dy = test::random_vector<T>(n, seed + 1, -1, 1);
  auto alpha = test::random_vector<float>(dn, seed + 2, c.alpha_lo, c.alpha_hi);
  auto delta = test::random_vector<float>(dn, seed + 3, c.alpha_lo, c.alpha_hi);
  auto theta = spec_theta(D, seed + 4);
  std::vector<float> gamma(2 * dn);
  {
    const auto gn = test::random_normal(2 * dn, seed + 5, std::sqrt(1.0 / N));
    for (std::size_t i = 0; i < gamma.size(); ++i) gamma[i] = static_cast<float>(gn[i]);
  }
  auto h0 = test::random_vector<float>(sn, seed + 6, -0.5, 0.5);
  auto dh_out = test::random_vector<float>(sn, seed + 7, -1, 1);
  auto bos = random_mask(static_cast<std::size_t>(B * L), c.bos_rate, seed + 8);
  if (c.bos_first) bos[0] = 1;
  const bool has_bos = c.bos_rate > 0 || c.bos_first;

  // CPU reference in double on the same rounded inputs.
  auto xd = test::widen(x), dyd = test::widen(dy), ad = test::widen(alpha), dd = test::widen(delta),
       td = test::widen(theta), gd = test::widen(gamma), h0d = test::widen(h0), dhd = test::widen(dh_out);
  std::vector<double> y_ref(n), hout_ref(sn), dx_ref(n), da_ref(dn), ddl_ref(dn), dt_ref(D), dg_ref(2 * dn),
      dh0_ref(sn);
  cema::ForwardArgs<double> fr;
  fr.add_residual = c.residual;
  fr.x = host_view(xd, {B, L, D});
  if (has_bos) fr.bos_mask = host_view(bos, {B, L});
  if (c.h0) fr.h0 = host_view(h0d, {B, D, N, 2});
  fr.alpha = host_view(ad, {D, N});
  fr.delta = host_view(dd, {D, N});
  fr.theta = host_view(td, {D});
  fr.gamma = host_view(gd, {D, N, 2});
  fr.y = host_view(y_ref, {B, L, D});
  fr.h_out = host_view(hout_ref, {B, D, N, 2});
  REQUIRE(cema::cpu::forward(fr).ok());
  cema::BackwardArgs<double> br;
  br.add_residual = c.residual;
  br.x = fr.x;
  br.bos_mask = fr.bos_mask;
  br.h0 = fr.h0;
  br.alpha = fr.alpha;
  br.delta = fr.delta;
  br.theta = fr.theta;
  br.gamma = fr.gamma;
  br.dy = host_view(dyd, {B, L, D});
  if (c.dh_out) br.dh_out = host_view(dhd, {B, D, N, 2});
  br.dx = host_view(dx_ref, {B, L, D});
  br.dalpha = host_view(da_ref, {D, N});
  br.ddelta = host_view(ddl_ref, {D, N});
  br.dtheta = host_view(dt_ref, {D});
  br.dgamma = host_view(dg_ref, {D, N, 2});
  br.dh0 = host_view(dh0_ref, {B, D, N, 2});
  REQUIRE(cema::cpu::backward(br).ok());

  // GPU.
  DeviceBuffer<T> x_d, dy_d, y_d, dx_d;
  upload_padded(x_d, x, B, L, D, pad);
  upload_padded(dy_d, dy, B, L, D, pad);
  upload_padded(y_d, std::vector<T>(n, from_float<T>(0.f)), B, L, D, pad);
  upload_padded(dx_d, std::vector<T>(n, from_float<T>(0.f)), B, L, D, pad);
  DeviceBuffer<float> a_d, d_d, t_d, g_d, h0_d, dh_d, hout_d(sn), da_d(dn), ddl_d(dn), dt_d(D), dg_d(2 * dn),
      dh0_d(sn), states_d(static_cast<std::size_t>(cema::cuda::time_tiles(L)) * sn);
  DeviceBuffer<std::uint8_t> bos_d;
  a_d.upload(alpha);
  d_d.upload(delta);
  t_d.upload(theta);
  g_d.upload(gamma);
  h0_d.upload(h0);
  dh_d.upload(dh_out);
  bos_d.upload(bos);
  cema::ForwardArgs<T> f;
  f.add_residual = c.residual;
  f.x = act_view(x_d, B, L, D, pad);
  if (has_bos) f.bos_mask = bos_d.view({B, L});
  if (c.h0) f.h0 = h0_d.view({B, D, N, 2});
  f.alpha = a_d.view({D, N});
  f.delta = d_d.view({D, N});
  f.theta = t_d.view({D});
  f.gamma = g_d.view({D, N, 2});
  f.y = act_view(y_d, B, L, D, pad);
  f.h_out = hout_d.view({B, D, N, 2});
  cema::cuda::Saved saved{states_d.view({cema::cuda::time_tiles(L), B, D, N, 2})};
  {
    cema::Problem pr;
    REQUIRE(cema::validate(f, Memory::kDevice, pr).ok());
    if (L > cema::kernels::kDecodeTokens && cema::cuda::detail::chunked_eligible(f, pr)) ++worst.chunked;
  }
  std::size_t fbytes = 0;
  REQUIRE(cema::cuda::forward_workspace_size(f, saved, fbytes).ok());
  DeviceBuffer<char> fws(fbytes);
  Status st = cema::cuda::forward(f, saved, fws.data(), fbytes, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());

  cema::BackwardArgs<T> g;
  g.add_residual = c.residual;
  g.x = f.x;
  g.bos_mask = f.bos_mask;
  g.h0 = f.h0;
  g.alpha = f.alpha;
  g.delta = f.delta;
  g.theta = f.theta;
  g.gamma = f.gamma;
  g.dy = act_view(dy_d, B, L, D, pad);
  if (c.dh_out) g.dh_out = dh_d.view({B, D, N, 2});
  g.dx = act_view(dx_d, B, L, D, pad);
  g.dalpha = da_d.view({D, N});
  g.ddelta = ddl_d.view({D, N});
  g.dtheta = dt_d.view({D});
  g.dgamma = dg_d.view({D, N, 2});
  g.dh0 = dh0_d.view({B, D, N, 2});
  {
    cema::Problem pr;
    REQUIRE(cema::validate(g, Memory::kDevice, pr).ok());
    if (cema::cuda::detail::chunked_eligible(g, pr)) ++worst.chunked_bwd;
  }
  std::size_t bbytes = 0;
  REQUIRE(cema::cuda::backward_workspace_size(g, bbytes).ok());
  DeviceBuffer<char> bws(bbytes);
  Status st2 = cema::cuda::backward(g, saved, bws.data(), bbytes, nullptr);
  REQUIRE_MESSAGE(st2.ok(), st2.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const auto y1 = download_dense(y_d, B, L, D, pad);
  const auto dx1 = download_dense(dx_d, B, L, D, pad);
  const auto hout1 = hout_d.download(), da1 = da_d.download(), ddl1 = ddl_d.download(), dt1 = dt_d.download(),
             dg1 = dg_d.download(), dh01 = dh0_d.download(), states1 = states_d.download();
  // fp32 arithmetic throughout (errors ~1e-6 in a float model of the same algorithm), so states and
  // parameter gradients get fp32-level tolerances whatever T is.
  const double ty = test::output_tolerance<T>(), ts = 5e-5, tg = 1e-4;
  auto check = [&](const auto& got, const std::vector<double>& want, double tol, const char* what, double& w) {
    const auto cmp = testing::compare(got, want);
    w = std::max(w, cmp.rel_fro);
    INFO(what << ": " << cmp.to_string());
    CHECK(cmp.within(tol));
  };
  check(test::widen(y1), y_ref, ty, "y", worst.y);
  check(hout1, hout_ref, ts, "h_out", worst.h_out);
  check(test::widen(dx1), dx_ref, ty, "dx", worst.dx);
  check(da1, da_ref, tg, "dalpha", worst.dalpha);
  check(ddl1, ddl_ref, tg, "ddelta", worst.ddelta);
  check(dt1, dt_ref, tg, "dtheta", worst.dtheta);
  check(dg1, dg_ref, tg, "dgamma", worst.dgamma);
  check(dh01, dh0_ref, ts, "dh0", worst.dh0);

  // Determinism: the look-back scans and the ordered gradient sums are bitwise reproducible.
  REQUIRE(cema::cuda::forward(f, saved, fws.data(), fbytes, nullptr).ok());
  REQUIRE(cema::cuda::backward(g, saved, bws.data(), bbytes, nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(std::memcmp(y1.data(), download_dense(y_d, B, L, D, pad).data(), n * sizeof(T)) == 0);
  CHECK(std::memcmp(dx1.data(), download_dense(dx_d, B, L, D, pad).data(), n * sizeof(T)) == 0);
  CHECK(hout1 == hout_d.download());
  CHECK(states1 == states_d.download());
  CHECK(da1 == da_d.download());
  CHECK(ddl1 == ddl_d.download());
  CHECK(dt1 == dt_d.download());
  CHECK(dg1 == dg_d.download());
  CHECK(dh01 == dh0_d.download());
}

template <class T>
void run_suite() {
  std::uint64_t seed = 500;
  Worst worst;
  const Case cases[] = {
      {2, 1, 64, 16, 0.0, true, true, false, false},            // L = 1, carried state
      // Decoding calls (L <= 8, N a power of two <= 32: one kernel, kernel_decode.cuh) and their
      // neighbours on the tile path.
      {2, 5, 64, 16, 0.3, true, true, false, true},             // 5 tokens, resets, BOS at t = 0
      {3, 8, 33, 8, 0.2, true, false, false, false},            // 8 tokens, N = 8, odd D, no residual
      {1, 4, 64, 16, 0.0, true, true, false, false, 8},         // strided rows
      {1, 3, 40, 64, 0.0, true, true, false, false},            // N = 64: the tile path
      {1, 2, 24, 5, 0.0, true, true, false, false},             // N = 5: the tile path
      {2, 9, 64, 16, 0.1, true, true, false, false},            // 9 tokens: the tile path
      {3, 997, 200, 16, 0.01, true, true, false, false},        // prime L, partial slab, resets, carried state
      {1, 1031, 96, 4, 0.3, false, true, false, false},         // many resets, N = 4
      {2, 300, 40, 1, 0.02, true, false, false, false},         // N = 1, no residual
      {1, 200, 64, 32, 0.02, false, true, false, false},        // N = 32
      {1, 257, 48, 64, 0.0, true, true, true, false},           // N = 64, dh_out (general backward)
      {2, 515, 33, 5, 0.05, true, true, true, true},            // odd N and D (scalar tiles), BOS at t = 0
      {2, 640, 128, 16, 0.0, false, true, false, false, 8},     // strided rows, whole tiles
      {1, 700, 64, 16, 0.002, true, false, true, false, 0, -4.5, -3.0},  // long memory (|q| ~ 0.999)
  };
  for (const auto& c : cases) run_case<T>(c, seed += 17, worst);
  MESSAGE(std::string(test::type_label<T>()) << " (" << worst.chunked_bwd << " chunked backwards) worst rel_fro: y " << worst.y << ", h_out " << worst.h_out << ", dx " << worst.dx
                                << ", dalpha " << worst.dalpha << ", ddelta " << worst.ddelta << ", dtheta "
                                << worst.dtheta << ", dgamma " << worst.dgamma << ", dh0 " << worst.dh0);
}

}  // namespace

TEST_CASE("gpu cema fp32 matches the CPU reference") { run_suite<float>(); }
TEST_CASE("gpu cema bf16 matches the CPU reference") { run_suite<__nv_bfloat16>(); }
TEST_CASE("gpu cema fp16 matches the CPU reference") { run_suite<__half>(); }

// The chunked tensor-core forward and backward (bf16, N <= 16): whole 256-token blocks on the
// tensor cores, blocks with a BOS and the tail token by token, states saved every 128 tokens for
// the backward. Every case must take both chunked kernels.
TEST_CASE("gpu cema bf16 chunked forward matches the CPU reference") {
  Worst worst;
  const Case cases[] = {
      {1, 4096 + 77, 64, 16, 0.0005, true, true, false, false},        // blocks, a few BOS blocks, tail
      {2, 1024, 48, 8, 0.0, true, false, false, false},                 // N = 8, no residual, whole blocks only
      {1, 2048, 24, 16, 0.0, false, true, false, true},                 // half a CTA of channels, BOS at t = 0
      {1, 512, 8, 3, 0.0, true, true, true, false},                     // N = 3, D = 8, dh_out
      {3, 777, 32, 16, 0.003, true, true, false, false, 8},             // strided rows, resets
      {1, 16384, 16, 16, 0.0, true, true, false, false, 0, -4.5, -3.0}, // long memory (|q| ~ 0.999), 64 blocks
  };
  std::uint64_t seed = 900;
  for (const auto& c : cases) run_case<__nv_bfloat16>(c, seed += 13, worst);
  CHECK(worst.chunked == static_cast<int>(std::size(cases)));
  CHECK(worst.chunked_bwd == static_cast<int>(std::size(cases)));
  MESSAGE("chunked bf16 worst rel_fro: y " << worst.y << ", h_out " << worst.h_out << ", dx " << worst.dx
                                           << ", dalpha " << worst.dalpha << ", dgamma " << worst.dgamma << ", dh0 "
                                           << worst.dh0);
}

// A longer sequence (no CPU reference at this size) for comparing the chunked kernels with the
// tile kernels: B = 2, L = 16584, D = 256, N = 16, resets, carried state, residual.
struct LongSequence {
  using T = __nv_bfloat16;
  static constexpr std::int64_t B = 2, L = 16384 + 200, D = 256, N = 16;
  static constexpr std::size_t n = static_cast<std::size_t>(B * L * D), dn = static_cast<std::size_t>(D * N),
                               sn = static_cast<std::size_t>(B * D * N * 2);
  DeviceBuffer<T> x, dy;
  DeviceBuffer<float> a, dl, th, g, h0, dh_out;
  DeviceBuffer<std::uint8_t> bos;

  LongSequence() {
    x.upload(test::random_vector<T>(n, 31, -1, 1));
    dy.upload(test::random_vector<T>(n, 42, -1, 1));
    a.upload(test::random_vector<float>(dn, 32, -3, 2));
    dl.upload(test::random_vector<float>(dn, 33, -3, 2));
    th.upload(spec_theta(D, 34));
    g.upload(test::random_vector<float>(2 * dn, 35, -0.3, 0.3));
    h0.upload(test::random_vector<float>(sn, 36, -0.5, 0.5));
    dh_out.upload(test::random_vector<float>(sn, 48, -1, 1));
    bos.upload(random_mask(static_cast<std::size_t>(B * L), 2e-4, 37));
  }
  cema::ForwardArgs<T> forward_args(DeviceBuffer<T>& y, DeviceBuffer<float>& h_out) const {
    cema::ForwardArgs<T> f;
    f.add_residual = true;
    f.x = x.view({B, L, D});
    f.bos_mask = bos.view({B, L});
    f.h0 = h0.view({B, D, N, 2});
    f.alpha = a.view({D, N});
    f.delta = dl.view({D, N});
    f.theta = th.view({D});
    f.gamma = g.view({D, N, 2});
    f.y = y.view({B, L, D});
    f.h_out = h_out.view({B, D, N, 2});
    return f;
  }
  static cema::cuda::Saved saved(DeviceBuffer<float>& states) {
    return cema::cuda::Saved{states.view({cema::cuda::time_tiles(L), B, D, N, 2})};
  }
  static void run(const cema::ForwardArgs<T>& f, const cema::cuda::Saved& saved, cema::cuda::ForwardPath path) {
    std::size_t bytes = 0;
    REQUIRE(cema::cuda::forward_workspace_size(f, saved, bytes, path).ok());
    DeviceBuffer<char> ws(bytes);
    const Status s = cema::cuda::forward(f, saved, ws.data(), bytes, nullptr, path);
    REQUIRE_MESSAGE(s.ok(), s.to_string());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  }
};

// The two GPU forwards: the chunked kernel against the tile kernels (ForwardPath::kTiles), y,
// h_out and every saved state.
TEST_CASE("gpu cema bf16 chunked forward agrees with the tile kernels") {
  using S = LongSequence;
  S seq;
  DeviceBuffer<S::T> y_c(S::n), y_t(S::n);
  DeviceBuffer<float> ho_c(S::sn), ho_t(S::sn), st_c(cema::cuda::time_tiles(S::L) * S::sn),
      st_t(cema::cuda::time_tiles(S::L) * S::sn);
  S::run(seq.forward_args(y_c, ho_c), S::saved(st_c), cema::cuda::ForwardPath::kAuto);
  S::run(seq.forward_args(y_t, ho_t), S::saved(st_t), cema::cuda::ForwardPath::kTiles);
  const auto y_cmp = testing::compare(test::widen(y_c.download()), test::widen(y_t.download())),
             h_cmp = testing::compare(test::widen(ho_c.download()), test::widen(ho_t.download())),
             s_cmp = testing::compare(test::widen(st_c.download()), test::widen(st_t.download()));
  INFO("y: " << y_cmp.to_string() << "; h_out: " << h_cmp.to_string() << "; states: " << s_cmp.to_string());
  CHECK(y_cmp.within(2e-3));
  CHECK(h_cmp.within(5e-5));
  CHECK(s_cmp.within(5e-5));
  MESSAGE("chunked vs tiles, B = 2, L = 16584, D = 256: y " << y_cmp.rel_fro << ", h_out " << h_cmp.rel_fro
                                                            << ", states " << s_cmp.rel_fro);
}

// The two GPU backwards from the same forward: the chunked kernel against the tile kernels
// (BackwardPath::kTiles), with dh_out: dx, every parameter gradient and dh0.
TEST_CASE("gpu cema bf16 chunked backward agrees with the tile kernels") {
  using S = LongSequence;
  using T = S::T;
  const std::int64_t B = S::B, L = S::L, D = S::D, N = S::N;
  S seq;
  DeviceBuffer<T> y(S::n), dx_c(S::n), dx_t(S::n);
  DeviceBuffer<float> ho(S::sn), st(cema::cuda::time_tiles(L) * S::sn);
  const cema::ForwardArgs<T> f = seq.forward_args(y, ho);
  const cema::cuda::Saved saved = S::saved(st);
  S::run(f, saved, cema::cuda::ForwardPath::kAuto);
  struct Grads {
    DeviceBuffer<float> da{S::dn}, ddl{S::dn}, dt{static_cast<std::size_t>(D)}, dg{2 * S::dn}, dh0{S::sn};
  };
  Grads gc, gt;
  auto run = [&](DeviceBuffer<T>& dx, Grads& gr, cema::cuda::BackwardPath path) {
    cema::BackwardArgs<T> b;
    b.add_residual = true;
    b.x = f.x;
    b.bos_mask = f.bos_mask;
    b.h0 = f.h0;
    b.alpha = f.alpha;
    b.delta = f.delta;
    b.theta = f.theta;
    b.gamma = f.gamma;
    b.dy = seq.dy.view({B, L, D});
    b.dh_out = seq.dh_out.view({B, D, N, 2});
    b.dx = dx.view({B, L, D});
    b.dalpha = gr.da.view({D, N});
    b.ddelta = gr.ddl.view({D, N});
    b.dtheta = gr.dt.view({D});
    b.dgamma = gr.dg.view({D, N, 2});
    b.dh0 = gr.dh0.view({B, D, N, 2});
    std::size_t bytes = 0;
    REQUIRE(cema::cuda::backward_workspace_size(b, bytes, path).ok());
    DeviceBuffer<char> ws(bytes);
    const Status s = cema::cuda::backward(b, saved, ws.data(), bytes, nullptr, path);
    REQUIRE_MESSAGE(s.ok(), s.to_string());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  };
  run(dx_c, gc, cema::cuda::BackwardPath::kAuto);
  run(dx_t, gt, cema::cuda::BackwardPath::kTiles);
  auto cmp = [](const auto& u, const auto& v) { return testing::compare(test::widen(u.download()), test::widen(v.download())); };
  const auto dx_cmp = cmp(dx_c, dx_t), da = cmp(gc.da, gt.da), ddl = cmp(gc.ddl, gt.ddl), dt = cmp(gc.dt, gt.dt),
             dg = cmp(gc.dg, gt.dg), dh0 = cmp(gc.dh0, gt.dh0);
  INFO("dx: " << dx_cmp.to_string() << "; dalpha: " << da.to_string() << "; ddelta: " << ddl.to_string()
              << "; dtheta: " << dt.to_string() << "; dgamma: " << dg.to_string() << "; dh0: " << dh0.to_string());
  CHECK(dx_cmp.within(2e-3));
  CHECK(da.within(5e-5));
  CHECK(ddl.within(5e-5));
  CHECK(dt.within(5e-5));
  CHECK(dg.within(5e-5));
  CHECK(dh0.within(5e-5));
  MESSAGE("chunked vs tiles backward, B = 2, L = 16584, D = 256: dx " << dx_cmp.rel_fro << ", dalpha " << da.rel_fro
                                                                     << ", ddelta " << ddl.rel_fro << ", dtheta "
                                                                     << dt.rel_fro << ", dgamma " << dg.rel_fro
                                                                     << ", dh0 " << dh0.rel_fro);
}

TEST_CASE("gpu cema streams 2^20 steps") {
  Worst worst;
  run_case<float>({1, 1 << 20, 8, 4, 1e-5, true, true, false, false}, 77, worst);
  MESSAGE("2^20 worst rel_fro: y " << worst.y << ", h_out " << worst.h_out << ", dx " << worst.dx << ", dalpha "
                                   << worst.dalpha << ", dtheta " << worst.dtheta << ", dgamma " << worst.dgamma);
}

TEST_CASE("gpu cema rejects what it cannot do") {
  const std::int64_t B = 2, L = 8, D = 16;
  DeviceBuffer<float> x(B * L * D), y(B * L * D), p65(D * 65 * 2), th(D), p16(D * 16 * 2),
      states(cema::cuda::time_tiles(L) * B * D * 16 * 2);
  cema::ForwardArgs<float> f;
  f.x = x.view({B, L, D});
  f.y = y.view({B, L, D});
  f.alpha = p65.view({D, 65});
  f.delta = p65.view({D, 65});
  f.theta = th.view({D});
  f.gamma = p65.view({D, 65, 2});
  std::size_t bytes = 0;
  REQUIRE(cema::cuda::forward_workspace_size(f, bytes).ok());
  DeviceBuffer<char> ws(bytes + 1);
  CHECK(cema::cuda::forward(f, ws.data(), bytes, nullptr).message().find("N <= 64") != std::string::npos);

  f.alpha = p16.view({D, 16});
  f.delta = p16.view({D, 16});
  f.gamma = p16.view({D, 16, 2});
  REQUIRE(cema::cuda::forward_workspace_size(f, bytes).ok());
  ws.resize(bytes);
  CHECK(cema::cuda::forward(f, ws.data(), bytes - 1, nullptr).message().find("workspace") != std::string::npos);
  const cema::cuda::Saved bad{states.view({cema::cuda::time_tiles(L), B, D, 8, 4})};
  CHECK(cema::cuda::forward(f, bad, ws.data(), bytes, nullptr).message().find("saved.states") != std::string::npos);
  std::vector<float> host(B * L * D);
  cema::ForwardArgs<float> fh = f;
  fh.x = host_view(host, {B, L, D});
  CHECK(cema::cuda::forward(fh, ws.data(), bytes, nullptr).message().find("host memory") != std::string::npos);

  cema::BackwardArgs<float> g;
  g.x = f.x;
  g.alpha = f.alpha;
  g.delta = f.delta;
  g.theta = f.theta;
  g.gamma = f.gamma;
  g.dy = y.view({B, L, D});
  g.dx = y.view({B, L, D});
  std::size_t bb = 0;
  REQUIRE(cema::cuda::backward_workspace_size(g, bb).ok());
  DeviceBuffer<char> bws(bb);
  CHECK(cema::cuda::backward(g, {}, bws.data(), bb, nullptr).message().find("saved.states") != std::string::npos);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}
