// CUDA timestep decay normalization against the CPU reference (exact beta): decoding calls, odd
// and huge lengths, resets, padding, carried state, every dtype; determinism.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/timestep_norm/launch.cuh"
#include "gecko/ops/timestep_norm/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

struct Case {
  std::int64_t B, L, D, G;
  double bos_rate, pad_rate;
  bool prev_state;
  bool affine;
  double beta1 = 0.999, beta2 = 0.9999;
};

std::vector<std::uint8_t> random_mask(std::size_t n, double rate, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution d(rate);
  std::vector<std::uint8_t> m(n);
  for (auto& v : m) v = d(rng) ? 1 : 0;
  return m;
}

template <class T>
void run_case(const Case& c, std::uint64_t seed) {
  const std::int64_t B = c.B, L = c.L, D = c.D, G = c.G;
  CAPTURE(test::type_label<T>());
  CAPTURE(B);
  CAPTURE(L);
  CAPTURE(D);
  CAPTURE(G);
  CAPTURE(c.bos_rate);
  CAPTURE(c.pad_rate);
  CAPTURE(c.prev_state);
  const std::size_t n = static_cast<std::size_t>(B * L * D);
  auto x = test::random_vector<T>(n, seed, -2, 3);
  auto dy = test::random_vector<T>(n, seed + 1);
  auto w = test::random_vector<T>(D, seed + 2, -0.5, 0.5);
  auto bias = test::random_vector<T>(D, seed + 3, -0.5, 0.5);
  auto bos = random_mask(B * L, c.bos_rate, seed + 4);
  auto pad = random_mask(B * L, c.pad_rate, seed + 5);
  std::vector<std::int64_t> prev_count(B);
  for (std::int64_t b = 0; b < B; ++b) prev_count[b] = 3 + 7 * b;
  auto prev_mean = test::random_vector<float>(B * G, seed + 6, -0.1, 0.1);
  auto prev_var = test::random_vector<float>(B * G, seed + 7, 0.0, 0.05);
  for (auto& v : prev_var) v = std::fabs(v) + 0.01f;
  auto dmean = test::random_vector<float>(B * G, seed + 8);
  auto dvar = test::random_vector<float>(B * G, seed + 9);

  // CPU reference in double on the same rounded inputs.
  auto xd = test::widen(x), dyd = test::widen(dy), wd = test::widen(w), bd = test::widen(bias);
  auto pmd = test::widen(prev_mean), pvd = test::widen(prev_var), dmd = test::widen(dmean), dvd = test::widen(dvar);
  std::vector<double> y_ref(n), dx_ref(n), dw_ref(D), db_ref(D), mean_ref(B * G), var_ref(B * G), dpm_ref(B * G),
      dpv_ref(B * G);
  std::vector<std::int64_t> count_ref(B);
  timestep_norm::ForwardArgs<double> fr;
  fr.groups = G;
  fr.beta1 = c.beta1;
  fr.beta2 = c.beta2;
  fr.x = host_view(xd, {B, L, D});
  if (c.affine) {
    fr.weight = host_view(wd, {D});
    fr.bias = host_view(bd, {D});
  }
  if (c.bos_rate > 0) fr.bos_mask = host_view(bos, {B, L});
  if (c.pad_rate > 0) fr.padding_mask = host_view(pad, {B, L});
  if (c.prev_state) {
    fr.prev_count = host_view(prev_count, {B});
    fr.prev_mean = host_view(pmd, {B, G});
    fr.prev_var = host_view(pvd, {B, G});
  }
  fr.y = host_view(y_ref, {B, L, D});
  fr.count = host_view(count_ref, {B});
  fr.mean = host_view(mean_ref, {B, G});
  fr.var = host_view(var_ref, {B, G});
  REQUIRE(timestep_norm::cpu::forward(fr).ok());
  timestep_norm::BackwardArgs<double> br;
  br.groups = G;
  br.beta1 = c.beta1;
  br.beta2 = c.beta2;
  br.x = fr.x;
  br.weight = fr.weight;
  br.bos_mask = fr.bos_mask;
  br.padding_mask = fr.padding_mask;
  br.prev_count = fr.prev_count;
  br.prev_mean = fr.prev_mean;
  br.prev_var = fr.prev_var;
  br.dy = host_view(dyd, {B, L, D});
  br.dmean = host_view(dmd, {B, G});
  br.dvar = host_view(dvd, {B, G});
  br.dx = host_view(dx_ref, {B, L, D});
  if (c.affine) {
    br.dweight = host_view(dw_ref, {D});
    br.dbias = host_view(db_ref, {D});
  }
  br.dprev_mean = host_view(dpm_ref, {B, G});
  br.dprev_var = host_view(dpv_ref, {B, G});
  REQUIRE(timestep_norm::cpu::backward(br).ok());

  // GPU.
  DeviceBuffer<T> x_d, dy_d, w_d, b_d, y_d(n), dx_d(n);
  DeviceBuffer<std::uint8_t> bos_d, pad_d;
  DeviceBuffer<std::int64_t> pc_d, count_d(B);
  DeviceBuffer<float> pm_d, pv_d, dm_d, dv_d, mean_d(B * G), var_d(B * G), dpm_d(B * G), dpv_d(B * G), dw_d(D),
      db_d(D), stats_d(B * L * G * 2), corr_d(B * L * 2);
  x_d.upload(x);
  dy_d.upload(dy);
  w_d.upload(w);
  b_d.upload(bias);
  bos_d.upload(bos);
  pad_d.upload(pad);
  pc_d.upload(prev_count);
  pm_d.upload(prev_mean);
  pv_d.upload(prev_var);
  dm_d.upload(dmean);
  dv_d.upload(dvar);
  timestep_norm::ForwardArgs<T> f;
  f.groups = G;
  f.beta1 = c.beta1;
  f.beta2 = c.beta2;
  f.x = x_d.view({B, L, D});
  if (c.affine) {
    f.weight = w_d.view({D});
    f.bias = b_d.view({D});
  }
  if (c.bos_rate > 0) f.bos_mask = bos_d.view({B, L});
  if (c.pad_rate > 0) f.padding_mask = pad_d.view({B, L});
  if (c.prev_state) {
    f.prev_count = pc_d.view({B});
    f.prev_mean = pm_d.view({B, G});
    f.prev_var = pv_d.view({B, G});
  }
  f.y = y_d.view({B, L, D});
  f.count = count_d.view({B});
  f.mean = mean_d.view({B, G});
  f.var = var_d.view({B, G});
  timestep_norm::cuda::Saved saved{stats_d.view({B, L, G, 2}), corr_d.view({B, L, 2})};
  std::size_t fbytes = 0;
  REQUIRE(timestep_norm::cuda::forward_workspace_size(f, fbytes).ok());
  DeviceBuffer<char> fws(fbytes);
  Status st = timestep_norm::cuda::forward(f, saved, fws.data(), fbytes, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());

  timestep_norm::BackwardArgs<T> g;
  g.groups = G;
  g.beta1 = c.beta1;
  g.beta2 = c.beta2;
  g.x = f.x;
  g.weight = f.weight;
  g.bos_mask = f.bos_mask;
  g.padding_mask = f.padding_mask;
  g.prev_count = f.prev_count;
  g.prev_mean = f.prev_mean;
  g.prev_var = f.prev_var;
  g.dy = dy_d.view({B, L, D});
  g.dmean = dm_d.view({B, G});
  g.dvar = dv_d.view({B, G});
  g.dx = dx_d.view({B, L, D});
  if (c.affine) {
    g.dweight = dw_d.view({D});
    g.dbias = db_d.view({D});
  }
  g.dprev_mean = dpm_d.view({B, G});
  g.dprev_var = dpv_d.view({B, G});
  std::size_t bbytes = 0;
  REQUIRE(timestep_norm::cuda::backward_workspace_size(g, bbytes).ok());
  DeviceBuffer<char> bws(bbytes);
  Status st2 = timestep_norm::cuda::backward(g, saved, bws.data(), bbytes, nullptr);
  REQUIRE_MESSAGE(st2.ok(), st2.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const double tol = test::output_tolerance<T>();
  GECKO_CHECK_CLOSE(test::widen(y_d.download()), y_ref, tol, "y");
  GECKO_CHECK_CLOSE(test::widen(dx_d.download()), dx_ref, tol, "dx");
  GECKO_CHECK_CLOSE(mean_d.download(), mean_ref, 1e-4, "mean state");
  GECKO_CHECK_CLOSE(var_d.download(), var_ref, 1e-4, "var state");
  CHECK(count_d.download() == count_ref);
  GECKO_CHECK_CLOSE(dpm_d.download(), dpm_ref, 1e-4, "dprev_mean");
  GECKO_CHECK_CLOSE(dpv_d.download(), dpv_ref, 1e-4, "dprev_var");
  if (c.affine) {
    GECKO_CHECK_CLOSE(dw_d.download(), dw_ref, 1e-4, "dweight");
    GECKO_CHECK_CLOSE(db_d.download(), db_ref, 1e-4, "dbias");
  }

  // Determinism: the look-back scan is bitwise reproducible.
  const auto y1 = y_d.download();
  const auto dx1 = dx_d.download();
  const auto dw1 = dw_d.download();
  REQUIRE(timestep_norm::cuda::forward(f, saved, fws.data(), fbytes, nullptr).ok());
  REQUIRE(timestep_norm::cuda::backward(g, saved, bws.data(), bbytes, nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(std::memcmp(y1.data(), y_d.download().data(), n * sizeof(T)) == 0);
  CHECK(std::memcmp(dx1.data(), dx_d.download().data(), n * sizeof(T)) == 0);
  CHECK(dw1 == dw_d.download());
}

template <class T>
void run_suite() {
  std::uint64_t seed = 1000;
  const Case cases[] = {
      {2, 1, 64, 4, 0.0, 0.0, false, true},           // L = 1
      // Decoding calls (L <= 8, groups of 32..256 channels: kernel_decode.cuh) and neighbours.
      {2, 1, 4096, 64, 0.0, 0.0, true, true},         // one token at the 7B grouping, carried state
      {3, 5, 256, 2, 0.3, 0.2, true, true},           // 5 tokens, groups of 128, resets and padding
      {2, 8, 512, 2, 0.2, 0.0, true, false},          // 8 tokens, groups of 256, no affine
      {1, 3, 96, 3, 0.0, 0.0, true, true},            // groups of 32
      {2, 4, 48, 3, 0.0, 0.0, true, true},            // groups of 16: the tile path
      {1, 9, 256, 4, 0.1, 0.0, true, true},           // 9 tokens: the tile path
      {3, 97, 256, 4, 0.05, 0.0, true, true},         // prime L, resets, carried state
      {1, 1009, 512, 8, 0.01, 0.05, true, true},      // padding too
      {2, 300, 4096, 64, 0.02, 0.0, false, true},     // the 7B grouping (64 x 64)
      {1, 257, 4096, 1, 0.0, 0.0, true, false},       // one 4096-wide group
      {2, 130, 48, 3, 0.1, 0.1, true, true},          // group size 16, 3 groups
      {1, 64, 96, 2, 0.0, 0.0, false, true},          // group size 48 (scalar path for 16-bit)
      {1, 200, 128, 8, 0.3, 0.0, false, true, 0.9, 0.99},  // many resets, fast betas
      // Long look-back chains and more group widths.
      {1, 4099, 4096, 64, 0.001, 0.01, true, true},   // 7B grouping, look-back over long slab chains
      {2, 77, 256, 2, 0.1, 0.1, true, true},          // groups of 128 channels
      {1, 100, 64, 8, 0.05, 0.0, true, true},         // groups of 8 channels
      {3, 1000, 1024, 16, 0.01, 0.02, false, false},  // several batch rows, no affine
  };
  for (const auto& c : cases) run_case<T>(c, seed += 17);
}

}  // namespace

TEST_CASE("gpu timestep norm fp32 matches the CPU reference") { run_suite<float>(); }
TEST_CASE("gpu timestep norm bf16 matches the CPU reference") { run_suite<__nv_bfloat16>(); }
TEST_CASE("gpu timestep norm fp16 matches the CPU reference") { run_suite<__half>(); }

TEST_CASE("gpu timestep norm streams 2^20 steps") {
  run_case<float>({1, 1 << 20, 64, 1, 1e-5, 0.0, true, true}, 77);
}

TEST_CASE("gpu timestep norm rejects what it cannot do") {
  DeviceBuffer<float> x(2 * 8 * 16), y(2 * 8 * 16);
  timestep_norm::ForwardArgs<float> f;
  f.groups = 4;
  f.x = x.view({2, 8, 16});
  f.y = y.view({2, 8, 16});
  f.beta_precision = timestep_norm::BetaPrecision::kReferenceFloat32;
  std::size_t bytes = 0;
  REQUIRE(timestep_norm::cuda::forward_workspace_size(f, bytes).ok());
  DeviceBuffer<char> ws(bytes);
  CHECK(timestep_norm::cuda::forward(f, {}, ws.data(), bytes, nullptr).message().find("CPU-only") != std::string::npos);
  f.beta_precision = timestep_norm::BetaPrecision::kExact;
  CHECK(timestep_norm::cuda::forward(f, {}, nullptr, 0, nullptr).message().find("workspace") != std::string::npos);
  timestep_norm::BackwardArgs<float> g;
  g.groups = 4;
  g.x = x.view({2, 8, 16});
  g.dy = x.view({2, 8, 16});
  g.dx = y.view({2, 8, 16});
  CHECK(timestep_norm::cuda::backward(g, {}, ws.data(), bytes, nullptr).message().find("saved") != std::string::npos);
}
