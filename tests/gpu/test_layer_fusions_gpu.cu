// The MEGA layer's / feed-forward's fused element-wise kernels (qk_views, gated_combine, swiglu)
// against their CPU references: awkward shapes (odd widths take the single-element path, padded
// rows, packed [B, L, 4, Z] views, one element off alignment), every dtype, determinism of the
// fused column sums, bad arguments.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/gated_combine/launch.cuh"
#include "gecko/ops/gated_combine/reference.hpp"
#include "gecko/ops/qk_views/launch.cuh"
#include "gecko/ops/qk_views/reference.hpp"
#include "gecko/ops/swiglu/launch.cuh"
#include "gecko/ops/swiglu/reference.hpp"
#include "test_util.hpp"

using namespace gecko;

namespace {

using I64 = std::int64_t;

template <class V>
std::vector<double> compact(const std::vector<V>& v, I64 rows, I64 cols, I64 ld, I64 off = 0) {
  std::vector<double> out(rows * cols);
  for (I64 r = 0; r < rows; ++r)
    for (I64 c = 0; c < cols; ++c) out[r * cols + c] = to_double(v[off + r * ld + c]);
  return out;
}

template <class V>
TensorView<V> rows3(V* p, I64 b, I64 l, I64 cols, I64 ld, Memory where) {
  return TensorView<V>::strided(p, {b, l, cols}, {l * ld, ld, 1}, where);
}

void expect_error(const Status& s, const char* needle) {
  INFO(s.to_string());
  CHECK(!s.ok());
  CHECK(s.message().find(needle) != std::string::npos);
}

// ---- qk_views ----------------------------------------------------------------------------------

struct QkCase {
  I64 batch, length, heads, head_dim;
  bool packed;  // views of one [B, L, 4, Z] buffer; otherwise separate buffers with row padding
  I64 pad;
};

template <class T>
void run_qk(const QkCase& c, bool accumulate, std::uint64_t seed) {
  const I64 B = c.batch, L = c.length, H = c.heads, Z = H * c.head_dim, M = B * L;
  const I64 zld = Z + c.pad, vld = c.packed ? 4 * Z : Z + c.pad;  // row stride of z/dz and of each view
  const Memory Hm = Memory::kHost, Dm = Memory::kDevice;
  CAPTURE(test::type_label<T>());
  CAPTURE(M);
  CAPTURE(H);
  CAPTURE(c.head_dim);
  CAPTURE(c.packed);
  CAPTURE(c.pad);
  CAPTURE(accumulate);
  const I64 vsize = c.packed ? M * 4 * Z : 4 * M * vld;  // all four views (or gradients) in one allocation
  auto view_ptr = [&](auto* base, int i) { return c.packed ? base + i * Z : base + i * M * vld; };

  auto z = test::random_vector<T>(M * zld, seed, -2, 2);
  auto gamma = test::random_vector<T>(4 * Z, seed + 1, -0.5, 0.5);
  auto beta = test::random_vector<T>(4 * Z, seed + 2, -0.5, 0.5);
  auto dv = test::random_vector<T>(vsize, seed + 3, -1, 1);
  auto dg0 = test::random_vector<float>(4 * Z, seed + 4), db0 = test::random_vector<float>(4 * Z, seed + 5);

  auto zd = test::widen(z), gd = test::widen(gamma), bd = test::widen(beta), dvd = test::widen(dv);
  std::vector<double> views_ref(vsize, 0.0), dz_ref(M * zld, 0.0);
  std::vector<double> dg_ref(dg0.begin(), dg0.end()), db_ref(db0.begin(), db0.end());
  if (!accumulate) {
    std::fill(dg_ref.begin(), dg_ref.end(), 0.0);
    std::fill(db_ref.begin(), db_ref.end(), 0.0);
  }
  qk_views::ForwardArgs<double> fr;
  fr.heads = H;
  fr.z = rows3<const double>(zd.data(), B, L, Z, zld, Hm);
  fr.gamma = host_view(gd, {4, Z});
  fr.beta = host_view(bd, {4, Z});
  fr.q = rows3(view_ptr(views_ref.data(), 0), B, L, Z, vld, Hm);
  fr.k = rows3(view_ptr(views_ref.data(), 1), B, L, Z, vld, Hm);
  fr.aq = rows3(view_ptr(views_ref.data(), 2), B, L, Z, vld, Hm);
  fr.ak = rows3(view_ptr(views_ref.data(), 3), B, L, Z, vld, Hm);
  REQUIRE(qk_views::cpu::forward(fr).ok());
  qk_views::BackwardArgs<double> br;
  br.heads = H;
  br.z = fr.z;
  br.gamma = fr.gamma;
  br.dq = rows3<const double>(view_ptr(dvd.data(), 0), B, L, Z, vld, Hm);
  br.dk = rows3<const double>(view_ptr(dvd.data(), 1), B, L, Z, vld, Hm);
  br.daq = rows3<const double>(view_ptr(dvd.data(), 2), B, L, Z, vld, Hm);
  br.dak = rows3<const double>(view_ptr(dvd.data(), 3), B, L, Z, vld, Hm);
  br.dz = rows3(dz_ref.data(), B, L, Z, zld, Hm);
  br.dgamma = host_view(dg_ref, {4, Z});
  br.dbeta = host_view(db_ref, {4, Z});
  br.accumulate_dparams = accumulate;
  REQUIRE(qk_views::cpu::backward(br).ok());

  DeviceBuffer<T> z_d, g_d, b_d, views_d(vsize), dv_d, dz_d(M * zld);
  DeviceBuffer<float> dg_d, db_d;
  z_d.upload(z);
  g_d.upload(gamma);
  b_d.upload(beta);
  dv_d.upload(dv);
  dg_d.upload(dg0);
  db_d.upload(db0);
  views_d.zero();
  dz_d.zero();
  qk_views::ForwardArgs<T> f;
  f.heads = H;
  f.z = rows3<const T>(z_d.data(), B, L, Z, zld, Dm);
  f.gamma = TensorView<const T>::device(g_d.data(), {4, Z});
  f.beta = TensorView<const T>::device(b_d.data(), {4, Z});
  if (c.packed) {
    f.q = qk_views::packed_view(views_d.data(), B, L, Z, 0, Dm);
    f.k = qk_views::packed_view(views_d.data(), B, L, Z, 1, Dm);
    f.aq = qk_views::packed_view(views_d.data(), B, L, Z, 2, Dm);
    f.ak = qk_views::packed_view(views_d.data(), B, L, Z, 3, Dm);
  } else {
    f.q = rows3(view_ptr(views_d.data(), 0), B, L, Z, vld, Dm);
    f.k = rows3(view_ptr(views_d.data(), 1), B, L, Z, vld, Dm);
    f.aq = rows3(view_ptr(views_d.data(), 2), B, L, Z, vld, Dm);
    f.ak = rows3(view_ptr(views_d.data(), 3), B, L, Z, vld, Dm);
  }
  const Status st = qk_views::cuda::forward(f, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  qk_views::BackwardArgs<T> g;
  g.heads = H;
  g.z = f.z;
  g.gamma = f.gamma;
  g.dq = rows3<const T>(view_ptr(dv_d.data(), 0), B, L, Z, vld, Dm);
  g.dk = rows3<const T>(view_ptr(dv_d.data(), 1), B, L, Z, vld, Dm);
  g.daq = rows3<const T>(view_ptr(dv_d.data(), 2), B, L, Z, vld, Dm);
  g.dak = rows3<const T>(view_ptr(dv_d.data(), 3), B, L, Z, vld, Dm);
  g.dz = rows3(dz_d.data(), B, L, Z, zld, Dm);
  g.dgamma = dg_d.view({4, Z});
  g.dbeta = db_d.view({4, Z});
  g.accumulate_dparams = accumulate;
  std::size_t bytes = 0;
  REQUIRE(qk_views::cuda::backward_workspace_size(g, bytes).ok());
  DeviceBuffer<char> ws(bytes);
  const Status bst = qk_views::cuda::backward(g, ws.data(), bytes, nullptr);
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const double tol = test::output_tolerance<T>();
  // Every view (the packed buffer is compared whole: its four row blocks are the four views).
  if (c.packed) {
    GECKO_CHECK_CLOSE(test::widen(views_d.download()), views_ref, tol, "q, k, aq, ak (packed)");
  } else {
    const auto got = views_d.download();
    for (int i = 0; i < 4; ++i)
      GECKO_CHECK_CLOSE(compact(got, M, Z, vld, i * M * vld), compact(views_ref, M, Z, vld, i * M * vld), tol,
                        qk_views::kViewNames[i]);
  }
  GECKO_CHECK_CLOSE(compact(dz_d.download(), M, Z, zld), compact(dz_ref, M, Z, zld), tol, "dz");
  const double ptol = std::is_same_v<T, float> ? 1e-5 : 1e-4;
  GECKO_CHECK_CLOSE(dg_d.download(), dg_ref, ptol, "dgamma");
  GECKO_CHECK_CLOSE(db_d.download(), db_ref, ptol, "dbeta");

  if (!accumulate) {  // determinism
    const auto dz1 = dz_d.download();
    const auto dg1 = dg_d.download(), db1 = db_d.download();
    REQUIRE(qk_views::cuda::backward(g, ws.data(), bytes, nullptr).ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto dz2 = dz_d.download();
    CHECK(std::memcmp(dz1.data(), dz2.data(), dz1.size() * sizeof(T)) == 0);
    CHECK(dg1 == dg_d.download());
    CHECK(db1 == db_d.download());
  }
}

template <class T>
void run_qk_all() {
  const QkCase cases[] = {
      {2, 37, 4, 256, true, 0},   // the 7B head layout, packed [B, L, 4, Z]
      {1, 700, 4, 256, false, 8},  // many rows: several splits, padded rows
      {3, 5, 2, 64, true, 0},     // short heads (a quarter of a warp busy)
      {1, 7, 3, 24, false, 0},    // dz = 24
      {2, 9, 1, 7, false, 1},     // odd dz: single-element path
      {1, 13, 2, 520, false, 0},  // dz = 520: several words per lane
      {1, 6, 1, 1000, true, 0},   // dz = 1000
  };
  std::uint64_t seed = 300;
  int k = 0;
  for (const auto& c : cases) run_qk<T>(c, ++k % 3 == 0, seed += 11);
}

// ---- gated_combine ----------------------------------------------------------------------------

struct RowCase {
  I64 batch, length, cols, pad, off;
};

template <class T>
void run_gated(const RowCase& c, bool silu, bool awm, bool dawm, bool colsum, bool accumulate, std::uint64_t seed) {
  const I64 B = c.batch, L = c.length, E = c.cols, M = B * L, ld = E + c.pad, o = c.off, n = o + M * ld;
  const Memory Hm = Memory::kHost, Dm = Memory::kDevice;
  CAPTURE(test::type_label<T>());
  CAPTURE(M);
  CAPTURE(E);
  CAPTURE(ld);
  CAPTURE(o);
  CAPTURE(silu);
  CAPTURE(awm);
  CAPTURE(dawm);
  CAPTURE(colsum);
  CAPTURE(accumulate);
  auto sca = test::random_vector<T>(n, seed, -2, 2), r = test::random_vector<T>(n, seed + 1, -4, 4);
  auto aw = test::random_vector<T>(n, seed + 2, -2, 2), dattn = test::random_vector<T>(n, seed + 3, -1, 1);
  auto cs0 = test::random_vector<float>(E, seed + 4);
  auto scad = test::widen(sca), rd = test::widen(r), awd = test::widen(aw), dad = test::widen(dattn);
  std::vector<double> attn_ref(n, 0.0), dsca_ref(n, 0.0), dr_ref(n, 0.0), dawm_ref(n, 0.0);
  std::vector<double> cs_ref(cs0.begin(), cs0.end());
  if (!accumulate) std::fill(cs_ref.begin(), cs_ref.end(), 0.0);

  gated_combine::ForwardArgs<double> fr;
  fr.silu_r = silu;
  fr.sca = rows3<const double>(scad.data() + o, B, L, E, ld, Hm);
  fr.r = rows3<const double>(rd.data() + o, B, L, E, ld, Hm);
  if (awm) fr.awm = rows3<const double>(awd.data() + o, B, L, E, ld, Hm);
  fr.attn = rows3(attn_ref.data() + o, B, L, E, ld, Hm);
  REQUIRE(gated_combine::cpu::forward(fr).ok());
  gated_combine::BackwardArgs<double> br;
  br.silu_r = silu;
  br.sca = fr.sca;
  br.r = fr.r;
  br.dattn = rows3<const double>(dad.data() + o, B, L, E, ld, Hm);
  br.dsca = rows3(dsca_ref.data() + o, B, L, E, ld, Hm);
  br.dr = rows3(dr_ref.data() + o, B, L, E, ld, Hm);
  br.dawm = rows3(dawm_ref.data() + o, B, L, E, ld, Hm);
  br.dr_colsum = host_view(cs_ref, {E});
  br.accumulate_dr_colsum = accumulate;
  REQUIRE(gated_combine::cpu::backward(br).ok());

  DeviceBuffer<T> sca_d, r_d, aw_d, da_d, attn_d(n), dsca_d(n), dr_d(n), dawm_d(n);
  DeviceBuffer<float> cs_d;
  sca_d.upload(sca);
  r_d.upload(r);
  aw_d.upload(aw);
  da_d.upload(dattn);
  cs_d.upload(cs0);
  gated_combine::ForwardArgs<T> f;
  f.silu_r = silu;
  f.sca = rows3<const T>(sca_d.data() + o, B, L, E, ld, Dm);
  f.r = rows3<const T>(r_d.data() + o, B, L, E, ld, Dm);
  if (awm) f.awm = rows3<const T>(aw_d.data() + o, B, L, E, ld, Dm);
  f.attn = rows3(attn_d.data() + o, B, L, E, ld, Dm);
  const Status st = gated_combine::cuda::forward(f, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  gated_combine::BackwardArgs<T> g;
  g.silu_r = silu;
  g.sca = f.sca;
  g.r = f.r;
  g.dattn = rows3<const T>(da_d.data() + o, B, L, E, ld, Dm);
  g.dsca = rows3(dsca_d.data() + o, B, L, E, ld, Dm);
  g.dr = rows3(dr_d.data() + o, B, L, E, ld, Dm);
  if (dawm) g.dawm = rows3(dawm_d.data() + o, B, L, E, ld, Dm);
  if (colsum) g.dr_colsum = cs_d.view({E});
  g.accumulate_dr_colsum = accumulate;
  std::size_t bytes = 0;
  REQUIRE(gated_combine::cuda::backward_workspace_size(g, bytes).ok());
  DeviceBuffer<char> ws(bytes);
  const Status bst = gated_combine::cuda::backward(g, ws.data(), bytes, nullptr);
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const double tol = test::output_tolerance<T>();
  GECKO_CHECK_CLOSE(compact(attn_d.download(), M, E, ld, o), compact(attn_ref, M, E, ld, o), tol, "attn");
  GECKO_CHECK_CLOSE(compact(dsca_d.download(), M, E, ld, o), compact(dsca_ref, M, E, ld, o), tol, "dsca");
  GECKO_CHECK_CLOSE(compact(dr_d.download(), M, E, ld, o), compact(dr_ref, M, E, ld, o), tol, "dr");
  if (dawm) GECKO_CHECK_CLOSE(compact(dawm_d.download(), M, E, ld, o), compact(dawm_ref, M, E, ld, o), 0.0, "dawm");
  if (colsum) {
    // The GPU sums dr as stored (rounded to T); the reference sums it exactly.
    const double cs_tol = std::is_same_v<T, float> ? 1e-5 : tol;
    GECKO_CHECK_CLOSE(cs_d.download(), cs_ref, cs_tol, "dr_colsum");
    if (!accumulate) {
      const auto cs1 = cs_d.download();
      REQUIRE(gated_combine::cuda::backward(g, ws.data(), bytes, nullptr).ok());
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      CHECK(cs1 == cs_d.download());
    }
  }
}

template <class T>
void run_gated_all() {
  const RowCase cases[] = {
      {2, 17, 264, 0, 0},   // dense: flattened into one long row
      {1, 9, 13, 3, 0},     // odd width, padded: single-element path
      {3, 40, 512, 8, 0},   // padded rows, 16-byte words
      {1, 301, 2048, 0, 0},  // several column-sum splits
      {2, 5, 64, 0, 1},     // one element off alignment
  };
  std::uint64_t seed = 700;
  int k = 0;
  for (const auto& c : cases)
    for (bool silu : {false, true}) {
      ++k;
      run_gated<T>(c, silu, k % 2 == 0, k % 3 != 0, k % 4 != 1, k % 4 == 2, seed += 13);
    }
}

// ---- swiglu ------------------------------------------------------------------------------------

template <class T>
void run_swiglu(const RowCase& c, bool fused_ab, std::uint64_t seed) {
  const I64 B = c.batch, L = c.length, F = c.cols, M = B * L, o = c.off;
  // a and b: the two halves of one [M, 2F] buffer (fused fc1|fc3 GEMM), or two padded buffers.
  const I64 abld = fused_ab ? 2 * F : F + c.pad, ld = F + c.pad;
  const I64 nab = o + M * abld, n = o + M * ld;
  const Memory Hm = Memory::kHost, Dm = Memory::kDevice;
  CAPTURE(test::type_label<T>());
  CAPTURE(M);
  CAPTURE(F);
  CAPTURE(fused_ab);
  CAPTURE(o);
  auto ab = test::random_vector<T>(fused_ab ? nab : 2 * nab, seed, -4, 4);
  auto dh = test::random_vector<T>(n, seed + 1, -1, 1);
  const I64 b_off = fused_ab ? F : nab;  // where b starts within ab
  auto abd = test::widen(ab), dhd = test::widen(dh);
  std::vector<double> h_ref(n, 0.0), da_ref(n, 0.0), db_ref(n, 0.0);
  swiglu::ForwardArgs<double> fr;
  fr.a = rows3<const double>(abd.data() + o, B, L, F, abld, Hm);
  fr.b = rows3<const double>(abd.data() + o + b_off, B, L, F, abld, Hm);
  fr.hidden = rows3(h_ref.data() + o, B, L, F, ld, Hm);
  REQUIRE(swiglu::cpu::forward(fr).ok());
  swiglu::BackwardArgs<double> br;
  br.a = fr.a;
  br.b = fr.b;
  br.dhidden = rows3<const double>(dhd.data() + o, B, L, F, ld, Hm);
  br.da = rows3(da_ref.data() + o, B, L, F, ld, Hm);
  br.db = rows3(db_ref.data() + o, B, L, F, ld, Hm);
  REQUIRE(swiglu::cpu::backward(br).ok());

  DeviceBuffer<T> ab_d, dh_d, h_d(n), da_d(n), db_d(n);
  ab_d.upload(ab);
  dh_d.upload(dh);
  swiglu::ForwardArgs<T> f;
  f.a = rows3<const T>(ab_d.data() + o, B, L, F, abld, Dm);
  f.b = rows3<const T>(ab_d.data() + o + b_off, B, L, F, abld, Dm);
  f.hidden = rows3(h_d.data() + o, B, L, F, ld, Dm);
  const Status st = swiglu::cuda::forward(f, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  swiglu::BackwardArgs<T> g;
  g.a = f.a;
  g.b = f.b;
  g.dhidden = rows3<const T>(dh_d.data() + o, B, L, F, ld, Dm);
  g.da = rows3(da_d.data() + o, B, L, F, ld, Dm);
  g.db = rows3(db_d.data() + o, B, L, F, ld, Dm);
  const Status bst = swiglu::cuda::backward(g, nullptr);
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const double tol = test::output_tolerance<T>();
  GECKO_CHECK_CLOSE(compact(h_d.download(), M, F, ld, o), compact(h_ref, M, F, ld, o), tol, "hidden");
  GECKO_CHECK_CLOSE(compact(da_d.download(), M, F, ld, o), compact(da_ref, M, F, ld, o), tol, "da");
  GECKO_CHECK_CLOSE(compact(db_d.download(), M, F, ld, o), compact(db_ref, M, F, ld, o), tol, "db");
}

template <class T>
void run_swiglu_all() {
  const RowCase cases[] = {
      {1, 37, 200, 0, 0}, {2, 5, 13, 3, 0}, {1, 64, 1024, 8, 0}, {3, 7, 96, 0, 1},
  };
  std::uint64_t seed = 900;
  for (const auto& c : cases)
    for (bool fused : {false, true}) run_swiglu<T>(c, fused, seed += 7);
}

}  // namespace

TEST_CASE("gpu layer fusion qk_views fp32 matches the CPU reference") { run_qk_all<float>(); }
TEST_CASE("gpu layer fusion qk_views fp16 matches the CPU reference") { run_qk_all<__half>(); }
TEST_CASE("gpu layer fusion qk_views bf16 matches the CPU reference") { run_qk_all<__nv_bfloat16>(); }
TEST_CASE("gpu layer fusion gated_combine fp32 matches the CPU reference") { run_gated_all<float>(); }
TEST_CASE("gpu layer fusion gated_combine fp16 matches the CPU reference") { run_gated_all<__half>(); }
TEST_CASE("gpu layer fusion gated_combine bf16 matches the CPU reference") { run_gated_all<__nv_bfloat16>(); }
TEST_CASE("gpu layer fusion swiglu fp32 matches the CPU reference") { run_swiglu_all<float>(); }
TEST_CASE("gpu layer fusion swiglu fp16 matches the CPU reference") { run_swiglu_all<__half>(); }
TEST_CASE("gpu layer fusion swiglu bf16 matches the CPU reference") { run_swiglu_all<__nv_bfloat16>(); }

TEST_CASE("gpu layer fusion swiglu backward may overwrite its inputs") {
  const I64 M = 33, F = 256;
  auto a = test::random_vector<__nv_bfloat16>(M * F, 1, -3, 3), b = test::random_vector<__nv_bfloat16>(M * F, 2);
  auto dh = test::random_vector<__nv_bfloat16>(M * F, 3);
  DeviceBuffer<__nv_bfloat16> a_d, b_d, dh_d, da_d(M * F), db_d(M * F);
  a_d.upload(a);
  b_d.upload(b);
  dh_d.upload(dh);
  swiglu::BackwardArgs<__nv_bfloat16> g;
  g.a = a_d.view({M, F});
  g.b = b_d.view({M, F});
  g.dhidden = dh_d.view({M, F});
  g.da = da_d.view({M, F});
  g.db = db_d.view({M, F});
  REQUIRE(swiglu::cuda::backward(g, nullptr).ok());
  g.da = a_d.view({M, F});  // da over a, db over b
  g.db = b_d.view({M, F});
  REQUIRE(swiglu::cuda::backward(g, nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(std::memcmp(a_d.download().data(), da_d.download().data(), M * F * 2) == 0);
  CHECK(std::memcmp(b_d.download().data(), db_d.download().data(), M * F * 2) == 0);
}

TEST_CASE("gpu layer fusion kernels reject bad arguments with a clear message") {
  const I64 M = 4, Z = 32;
  DeviceBuffer<float> z(M * Z), gamma(4 * Z), beta(4 * Z), v(4 * M * Z), dg(4 * Z), db(4 * Z), big(M * 4 * 301);
  qk_views::ForwardArgs<float> f;
  f.heads = 3;
  f.z = z.view({M, Z});
  f.gamma = gamma.view({4, Z});
  f.beta = beta.view({4, Z});
  f.q = TensorView<float>::device(v.data(), {M, Z});
  f.k = TensorView<float>::device(v.data() + M * Z, {M, Z});
  f.aq = TensorView<float>::device(v.data() + 2 * M * Z, {M, Z});
  f.ak = TensorView<float>::device(v.data() + 3 * M * Z, {M, Z});
  expect_error(qk_views::cuda::forward(f, nullptr), "divisible by heads");
  f.heads = 2;
  f.gamma = gamma.view({Z, 4});
  expect_error(qk_views::cuda::forward(f, nullptr), "gamma has shape");
  f.gamma = gamma.view({4, Z});
  f.ak = TensorView<float>::device(v.data(), {M, Z + 1});
  expect_error(qk_views::cuda::forward(f, nullptr), "ak has shape");
  f.heads = 1;  // dz = 301 (odd): single elements, more than 256 per head
  f.z = TensorView<float>::device(big.data(), {M, 301});
  f.gamma = TensorView<float>::device(big.data(), {4, 301});
  f.beta = f.gamma;
  f.q = f.k = f.aq = f.ak = TensorView<float>::device(big.data(), {M, 301});
  const Status s = qk_views::cuda::forward(f, nullptr);
  CHECK(s.code() == StatusCode::kUnsupported);
  CHECK(s.message().find("exceeds") != std::string::npos);

  qk_views::BackwardArgs<float> g;
  g.heads = 2;
  g.z = z.view({M, Z});
  g.gamma = gamma.view({4, Z});
  g.dq = g.dk = g.daq = g.dak = TensorView<const float>::device(v.data(), {M, Z});
  g.dz = TensorView<float>::device(v.data() + M * Z, {M, Z});
  g.dgamma = dg.view({4, Z});
  expect_error(qk_views::cuda::backward(g, nullptr, 0, nullptr), "given together");
  g.dbeta = db.view({4, Z});
  expect_error(qk_views::cuda::backward(g, nullptr, 0, nullptr), "workspace");

  gated_combine::BackwardArgs<float> gb;
  gb.sca = gb.r = gb.dattn = z.view({M, Z});
  gb.dsca = gb.dr = TensorView<float>::device(v.data(), {M, Z});
  gb.dr_colsum = dg.view({Z});
  expect_error(gated_combine::cuda::backward(gb, nullptr, 0, nullptr), "workspace");
  gb.dr = TensorView<float>::device(v.data(), {M, Z - 1});
  expect_error(gated_combine::cuda::backward(gb, nullptr, 0, nullptr), "dr has shape");

  std::vector<float> host(M * Z);
  swiglu::ForwardArgs<float> sf;
  sf.a = TensorView<const float>::host(host.data(), {M, Z});
  sf.b = z.view({M, Z});
  sf.hidden = TensorView<float>::device(v.data(), {M, Z});
  expect_error(swiglu::cuda::forward(sf, nullptr), "expected device memory");
  sf.a = z.view({M, Z});
  sf.b = z.view({M + 1, Z});
  expect_error(swiglu::cuda::forward(sf, nullptr), "rows");
}
