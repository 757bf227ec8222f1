// cuBLASLt Linear (and its matrix-vector path for at most 4 rows) against the CPU reference: awkward shapes (odd M, small K, padded rows, a rank-3
// input), every epilogue, pre kept or not, a residual added (its own buffer and stride, or y in
// place), accumulate on/off, dpre in the workspace / given / in place over dy, every dtype;
// determinism; the plan cache; bad arguments.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/linear/launch.cuh"
#include "gecko/ops/linear/reference.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
using linear::Epilogue;

namespace {

using I64 = std::int64_t;

linear::cuda::Context& context() { return test::gemm_context(); }

struct Case {
  I64 batch, length, K, N;
  I64 x_pad, y_pad, w_pad;  // extra elements per row of x/dx, y/pre/dy/dpre and weight
  I64 off = 0;              // elements every T tensor starts past its allocation (alignment)
};

// The rows x cols values of a padded buffer, densely.
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

template <class V>
TensorView<V> mat(V* p, I64 rows, I64 cols, I64 ld, Memory where) {
  return TensorView<V>::strided(p, {rows, cols}, {ld, 1}, where);
}

template <class T>
double param_tolerance(bool silu) {
  if constexpr (std::is_same_v<T, float>) return 2e-5;
  return silu ? test::output_tolerance<T>() : 1e-4;  // SiLU: dpre is rounded to T before the GEMMs
}

// residual_mode (epilogues without SiLU): 0 none, 1 its own buffer with its own row stride, 2 y in place.
template <class T>
void run_case(Epilogue ep, const Case& c, bool keep_pre, bool accumulate, int dpre_mode, std::uint64_t seed,
              int residual_mode = 0) {
  auto& ctx = context();
  const I64 B = c.batch, L = c.length, M = B * L, K = c.K, N = c.N;
  const I64 ldx = K + c.x_pad, ldy = N + c.y_pad, ldw = K + c.w_pad, o = c.off;
  const bool silu = linear::has_silu(ep), bias = linear::has_bias(ep);
  keep_pre = keep_pre && silu;
  if (silu) residual_mode = 0;
  const I64 ldr = N + c.x_pad;  // the separate residual's row stride
  CAPTURE(test::type_label<T>());
  CAPTURE(residual_mode);
  CAPTURE(linear::epilogue_name(ep));
  CAPTURE(M);
  CAPTURE(K);
  CAPTURE(N);
  CAPTURE(ldx);
  CAPTURE(ldy);
  CAPTURE(ldw);
  CAPTURE(keep_pre);
  CAPTURE(accumulate);
  CAPTURE(dpre_mode);
  CAPTURE(o);
  const Memory H = Memory::kHost, D = Memory::kDevice;

  auto x = test::random_vector<T>(o + M * ldx, seed, -1, 1);
  auto w = test::random_vector<T>(o + N * ldw, seed + 1, -0.5, 0.5);
  auto b = test::random_vector<T>(o + N, seed + 2, -1, 1);
  auto dy = test::random_vector<T>(o + M * ldy, seed + 3, -1, 1);
  auto pre = test::random_vector<T>(o + M * ldy, seed + 4, -4, 4);
  auto dx0 = test::random_vector<T>(o + M * ldx, seed + 5, -1, 1);
  auto dw0 = test::random_vector<float>(N * K, seed + 6, -1, 1);
  auto db0 = test::random_vector<float>(N, seed + 7, -1, 1);
  auto res = test::random_vector<T>(o + M * ldr, seed + 8, -1, 1);
  auto y0 = test::random_vector<T>(o + M * ldy, seed + 9, -1, 1);  // y before the call (in-place residual)

  // ---- forward ----
  auto xd = test::widen(x), wd = test::widen(w), bd = test::widen(b), resd = test::widen(res);
  std::vector<double> y_ref = residual_mode == 2 ? test::widen(y0) : std::vector<double>(o + M * ldy, 0.0);
  std::vector<double> pre_ref(o + M * ldy, 0.0);
  linear::ForwardArgs<double> fr;
  fr.epilogue = ep;
  fr.x = rows3<const double>(xd.data() + o, B, L, K, ldx, H);
  fr.weight = mat<const double>(wd.data() + o, N, K, ldw, H);
  if (bias) fr.bias = TensorView<const double>::host(bd.data() + o, {N});
  fr.y = rows3(y_ref.data() + o, B, L, N, ldy, H);
  if (keep_pre) fr.pre = rows3(pre_ref.data() + o, B, L, N, ldy, H);
  if (residual_mode == 1) fr.residual = rows3<const double>(resd.data() + o, B, L, N, ldr, H);
  if (residual_mode == 2) fr.residual = rows3<const double>(y_ref.data() + o, B, L, N, ldy, H);
  REQUIRE(linear::cpu::forward(fr).ok());

  DeviceBuffer<T> x_d, w_d, b_d, res_d, y_d(o + M * ldy), pre_d(o + M * ldy);
  x_d.upload(x);
  w_d.upload(w);
  b_d.upload(b);
  res_d.upload(res);
  if (residual_mode == 2) y_d.upload(y0);
  else y_d.zero();
  pre_d.zero();
  linear::ForwardArgs<T> f;
  f.epilogue = ep;
  f.x = rows3<const T>(x_d.data() + o, B, L, K, ldx, D);
  f.weight = mat<const T>(w_d.data() + o, N, K, ldw, D);
  if (bias) f.bias = TensorView<const T>::device(b_d.data() + o, {N});
  f.y = rows3(y_d.data() + o, B, L, N, ldy, D);
  if (keep_pre) f.pre = rows3(pre_d.data() + o, B, L, N, ldy, D);
  if (residual_mode == 1) f.residual = rows3<const T>(res_d.data() + o, B, L, N, ldr, D);
  if (residual_mode == 2) f.residual = rows3<const T>(y_d.data() + o, B, L, N, ldy, D);
  std::size_t fws_bytes = 0;
  REQUIRE(linear::cuda::forward_workspace_size(ctx, f, fws_bytes).ok());
  DeviceBuffer<char> fws(fws_bytes);
  const Status st = linear::cuda::forward(ctx, f, fws.data(), fws_bytes, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const double tol = test::output_tolerance<T>();
  GECKO_CHECK_CLOSE(compact(y_d.download(), M, N, ldy, o), compact(y_ref, M, N, ldy, o), tol, "y");
  if (keep_pre)
    GECKO_CHECK_CLOSE(compact(pre_d.download(), M, N, ldy, o), compact(pre_ref, M, N, ldy, o), tol, "pre");

  // ---- backward ----
  auto dyd = test::widen(dy), pred = test::widen(pre), dxd = test::widen(dx0);
  std::vector<double> dw_ref(dw0.begin(), dw0.end()), db_ref(db0.begin(), db0.end()), dpre_ref(o + M * ldy, 0.0);
  if (!accumulate) {
    std::fill(dxd.begin(), dxd.end(), 0.0);
    std::fill(dw_ref.begin(), dw_ref.end(), 0.0);
    std::fill(db_ref.begin(), db_ref.end(), 0.0);
  }
  linear::BackwardArgs<double> br;
  br.epilogue = ep;
  br.x = fr.x;
  br.weight = fr.weight;
  if (silu) br.pre = rows3<const double>(pred.data() + o, B, L, N, ldy, H);
  br.dy = rows3<const double>(dyd.data() + o, B, L, N, ldy, H);
  br.dx = rows3(dxd.data() + o, B, L, K, ldx, H);
  br.accumulate_dx = accumulate;
  br.dweight = host_view(dw_ref, {N, K});
  if (bias) br.dbias = host_view(db_ref, {N});
  br.accumulate_dparams = accumulate;
  if (silu) br.dpre = rows3(dpre_ref.data() + o, B, L, N, ldy, H);
  REQUIRE(linear::cpu::backward(br).ok());

  DeviceBuffer<T> dy_d, pre_in_d, dx_d, dpre_d(o + M * ldy);
  DeviceBuffer<float> dw_d, db_d;
  dy_d.upload(dy);
  pre_in_d.upload(pre);
  dx_d.upload(dx0);
  dw_d.upload(dw0);
  db_d.upload(db0);
  linear::BackwardArgs<T> g;
  g.epilogue = ep;
  g.x = f.x;
  g.weight = f.weight;
  if (silu) g.pre = rows3<const T>(pre_in_d.data() + o, B, L, N, ldy, D);
  g.dy = rows3<const T>(dy_d.data() + o, B, L, N, ldy, D);
  g.dx = rows3(dx_d.data() + o, B, L, K, ldx, D);
  g.accumulate_dx = accumulate;
  g.dweight = dw_d.view({N, K});
  if (bias) g.dbias = db_d.view({N});
  g.accumulate_dparams = accumulate;
  if (silu && dpre_mode == 1) g.dpre = rows3(dpre_d.data() + o, B, L, N, ldy, D);
  if (silu && dpre_mode == 2) g.dpre = rows3(dy_d.data() + o, B, L, N, ldy, D);  // in place over dy
  std::size_t ws_bytes = 0;
  REQUIRE(linear::cuda::backward_workspace_size(ctx, g, ws_bytes).ok());
  DeviceBuffer<char> ws(ws_bytes);
  const Status bst = linear::cuda::backward(ctx, g, ws.data(), ws_bytes, nullptr);
  REQUIRE_MESSAGE(bst.ok(), bst.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const double ptol = param_tolerance<T>(silu);
  GECKO_CHECK_CLOSE(compact(dx_d.download(), M, K, ldx, o), compact(dxd, M, K, ldx, o), tol, "dx");
  GECKO_CHECK_CLOSE(dw_d.download(), dw_ref, ptol, "dweight");
  if (bias) GECKO_CHECK_CLOSE(db_d.download(), db_ref, ptol, "dbias");
  if (silu && dpre_mode == 1)
    GECKO_CHECK_CLOSE(compact(dpre_d.download(), M, N, ldy, o), compact(dpre_ref, M, N, ldy, o), tol, "dpre");
  if (silu && dpre_mode == 2)
    GECKO_CHECK_CLOSE(compact(dy_d.download(), M, N, ldy, o), compact(dpre_ref, M, N, ldy, o), tol, "dpre (in place)");

  // Determinism: the same call again gives bitwise identical results.
  if (!accumulate && dpre_mode != 2) {
    const auto dx1 = dx_d.download();
    const auto dw1 = dw_d.download();
    const auto db1 = db_d.download();
    REQUIRE(linear::cuda::backward(ctx, g, ws.data(), ws_bytes, nullptr).ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto dx2 = dx_d.download();
    CHECK(std::memcmp(dx1.data(), dx2.data(), dx1.size() * sizeof(T)) == 0);
    CHECK(dw1 == dw_d.download());
    CHECK(db1 == db_d.download());
  }
}

template <class T>
void run_all() {
  const Case cases[] = {
      {1, 37, 64, 96, 0, 0, 0},     // odd M
      {3, 13, 7, 24, 0, 0, 0},      // small odd K, rank-3 input
      {2, 50, 130, 33, 6, 3, 2},    // odd N, padded rows everywhere
      {1, 1, 16, 8, 0, 0, 0},       // a single row
      {1, 129, 256, 80, 8, 16, 0},  // M = 129, aligned padding
      {1, 300, 96, 264, 0, 0, 0},   // several column-sum splits
      {2, 19, 48, 40, 0, 0, 0, 1},  // every tensor one element off 16-byte alignment
      // At most 4 rows: the forward takes the matrix-vector kernel (kernel_gemv.cuh) when K and the
      // strides suit 16-byte loads, cuBLASLt otherwise.
      {1, 2, 136, 40, 8, 3, 8},     // two rows, padded rows everywhere
      {1, 3, 1032, 17, 0, 0, 0},    // three rows, K past one warp step (a ragged last step), odd N
      {4, 1, 2056, 24, 0, 5, 0},    // four rows as [4, 1, K]
      {1, 4, 20, 12, 0, 0, 0},      // K = 20: the kernel for fp32, cuBLASLt for 16-bit types
      {1, 3, 48, 40, 0, 0, 0, 1},   // misaligned: cuBLASLt
  };
  const Epilogue eps[] = {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasSilu, Epilogue::kSilu};
  std::uint64_t seed = 1000;
  int k = 0;
  for (const auto& c : cases)
    for (Epilogue ep : eps) {
      ++k;
      run_case<T>(ep, c, k % 2 == 0, k % 4 >= 2, k % 3, seed += 17, (k / 2) % 3);
    }
}

}  // namespace

TEST_CASE("gpu linear fp32 matches the CPU reference") { run_all<float>(); }
TEST_CASE("gpu linear fp16 matches the CPU reference") { run_all<__half>(); }
TEST_CASE("gpu linear bf16 matches the CPU reference") { run_all<__nv_bfloat16>(); }

// The same few-row shapes with the matrix-vector kernel switched off: cuBLASLt takes them.
TEST_CASE("gpu linear: few rows on cuBLASLt when the matrix-vector kernel is off") {
  auto& ctx = context();
  ctx.set_small_rows_kernel(false);
  const Case cases[] = {{1, 2, 136, 40, 8, 3, 8}, {1, 3, 1032, 17, 0, 0, 0}, {4, 1, 2056, 24, 0, 5, 0}};
  std::uint64_t seed = 7000;
  int k = 0;
  for (const auto& c : cases)
    for (Epilogue ep : {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasSilu, Epilogue::kSilu}) {
      ++k;
      run_case<__nv_bfloat16>(ep, c, k % 2 == 0, k % 4 >= 2, k % 3, seed += 13, (k / 2) % 3);
    }
  ctx.set_small_rows_kernel(true);
  CHECK(ctx.small_rows_kernel());
}

TEST_CASE("gpu linear bf16 covers every flag combination on one shape") {
  const Case c{2, 21, 40, 72, 0, 8, 0};
  std::uint64_t seed = 5000;
  for (Epilogue ep : {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasSilu, Epilogue::kSilu})
    for (bool keep_pre : {false, true})
      for (bool acc : {false, true})
        for (int mode : {0, 1, 2})
          for (int residual : {0, 1, 2}) {
            if (residual > 0 && linear::has_silu(ep)) continue;
            run_case<__nv_bfloat16>(ep, c, keep_pre, acc, mode, seed += 3, residual);
          }
}

TEST_CASE("gpu linear caches one plan per shape") {
  auto& ctx = context();
  const I64 M = 24, K = 32, N = 48;
  DeviceBuffer<float> x(M * K), w(N * K), y(M * N);
  x.upload(test::random_vector<float>(M * K, 1));
  w.upload(test::random_vector<float>(N * K, 2));
  DeviceBuffer<char> ws(ctx.gemm_workspace_bytes());
  linear::ForwardArgs<float> f;
  f.x = x.view({M, K});
  f.weight = w.view({N, K});
  f.y = y.view({M, N});
  REQUIRE(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr).ok());
  const std::size_t plans = ctx.cached_plans();
  REQUIRE(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr).ok());
  CHECK(ctx.cached_plans() == plans);
  f.x = x.view({M / 2, K});
  f.y = y.view({M / 2, N});
  REQUIRE(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr).ok());
  CHECK(ctx.cached_plans() == plans + 1);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE("gpu linear with an empty batch zeroes the parameter gradients") {
  auto& ctx = context();
  const I64 K = 16, N = 8;
  DeviceBuffer<__nv_bfloat16> x(K), w(N * K), dy(N), pre(N);
  DeviceBuffer<float> dw(N * K), db(N);
  dw.upload(std::vector<float>(N * K, 3.f));
  db.upload(std::vector<float>(N, 3.f));
  linear::BackwardArgs<__nv_bfloat16> g;
  g.epilogue = Epilogue::kBiasSilu;
  g.x = x.view({0, K});
  g.weight = w.view({N, K});
  g.dy = dy.view({0, N});
  g.pre = pre.view({0, N});
  g.dweight = dw.view({N, K});
  g.dbias = db.view({N});
  std::size_t bytes = 0;
  REQUIRE(linear::cuda::backward_workspace_size(ctx, g, bytes).ok());
  DeviceBuffer<char> ws(bytes);
  REQUIRE(linear::cuda::backward(ctx, g, ws.data(), bytes, nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(dw.download() == std::vector<float>(N * K, 0.f));
  CHECK(db.download() == std::vector<float>(N, 0.f));
}

TEST_CASE("gpu linear rejects bad arguments with a clear message") {
  auto& ctx = context();
  const I64 M = 4, K = 8, N = 6;
  DeviceBuffer<float> x(M * K), w(N * K), b(N), y(M * N), pre(M * N), dw(N * K), db(N);
  DeviceBuffer<char> ws(ctx.gemm_workspace_bytes() + 256);
  std::vector<float> host(M * K);
  auto expect = [](const Status& s, const char* needle) {
    INFO(s.to_string());
    CHECK(!s.ok());
    CHECK(s.message().find(needle) != std::string::npos);
  };
  linear::ForwardArgs<float> f;
  f.epilogue = Epilogue::kBias;
  f.x = x.view({M, K});
  f.weight = w.view({N, K});
  f.y = y.view({M, N});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "bias is missing");
  f.epilogue = Epilogue::kNone;
  f.bias = b.view({N});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "has no bias");
  f.bias = {};
  f.pre = pre.view({M, N});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "pre is only written by SiLU");
  f.pre = {};
  f.residual = y.view({M, N});
  f.epilogue = Epilogue::kSilu;
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "residual is added only by epilogues without SiLU");
  f.epilogue = Epilogue::kNone;
  f.residual = x.view({M, K});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "residual has shape");
  f.residual = TensorView<const float>::strided(y.data(), {M / 2, N}, {2 * N, 1}, Memory::kDevice);
  f.x = x.view({M / 2, K});
  f.y = y.view({M / 2, N});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "same row stride");
  f.residual = {};
  f.x = x.view({M, K});
  f.y = y.view({M, N});
  f.weight = w.view({N, K - 1});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "weight has shape");
  f.weight = w.view({N, K});
  f.y = y.view({M, N - 1});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "y has shape");
  f.y = y.view({M, N});
  f.x = TensorView<const float>::host(host.data(), {M, K});
  expect(linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr), "expected device memory");
  f.x = x.view({M, K});
  expect(linear::cuda::forward(ctx, f, ws.data(), 16, nullptr), "workspace");
  expect(linear::cuda::forward(ctx, f, static_cast<char*>(ws.data()) + 8, ws.size() - 8, nullptr), "256-byte aligned");
  linear::cuda::Context fresh;
  expect(linear::cuda::forward(fresh, f, ws.data(), ws.size(), nullptr), "not initialized");
  expect(ctx.init(), "already initialized");

  linear::BackwardArgs<float> g;
  g.epilogue = Epilogue::kNone;
  g.x = x.view({M, K});
  g.weight = w.view({N, K});
  g.dy = y.view({M, N});
  g.dweight = dw.view({N, K});
  g.dbias = db.view({N});
  expect(linear::cuda::backward(ctx, g, ws.data(), ws.size(), nullptr), "has no bias");
  g.epilogue = Epilogue::kSilu;
  g.dbias = {};
  expect(linear::cuda::backward(ctx, g, ws.data(), ws.size(), nullptr), "pre (the forward pre-activation) is required");
  g.epilogue = Epilogue::kNone;
  g.x = {};
  expect(linear::cuda::backward(ctx, g, ws.data(), ws.size(), nullptr), "x is required");
  g.x = x.view({M, K});
  g.dweight = dw.view({K, N});
  expect(linear::cuda::backward(ctx, g, ws.data(), ws.size(), nullptr), "dweight has shape");
}

TEST_CASE("gpu linear with measured algorithm choice: same results, the caller's output written once") {
  // >= 1 GFLOP so that the measured context times its candidates; y accumulates a residual in
  // place, so a timing run that touched y would show up as extra multiples of x W^T.
  const I64 M = 1024, K = 1024, N = 512;
  linear::cuda::Context measured;
  REQUIRE(measured.init(linear::cuda::Context::kDefaultGemmWorkspaceBytes, linear::cuda::AlgoChoice::kMeasured).ok());
  auto& heuristic = context();
  DeviceBuffer<float> x, w, b, y1, y2;
  x.upload(test::random_vector<float>(M * K, 11));
  w.upload(test::random_vector<float>(N * K, 12));
  b.upload(test::random_vector<float>(N, 13));
  const auto y0 = test::random_vector<float>(M * N, 14);
  y1.upload(y0);
  y2.upload(y0);
  DeviceBuffer<char> ws(linear::cuda::Context::kDefaultGemmWorkspaceBytes);
  auto run = [&](linear::cuda::Context& ctx, DeviceBuffer<float>& y) {
    linear::ForwardArgs<float> f;
    f.epilogue = Epilogue::kBias;
    f.x = x.view({M, K});
    f.weight = w.view({N, K});
    f.bias = b.view({N});
    f.y = y.view({M, N});
    f.residual = TensorView<const float>::device(y.data(), {M, N});
    const Status st = linear::cuda::forward(ctx, f, ws.data(), ws.size(), nullptr);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
  };
  run(measured, y1);
  run(heuristic, y2);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(measured.measured_plans() == 1);
  CHECK(measured.best_measured_gain() >= 1.0);
  GECKO_CHECK_CLOSE(test::widen(y1.download()), test::widen(y2.download()), 1e-5, "y (measured vs heuristic)");
  // The cached choice is reused: no second measurement, and the same call gives the same bits.
  y1.upload(y0);
  run(measured, y1);
  const auto again = y1.download();
  y1.upload(y0);
  run(measured, y1);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(measured.measured_plans() == 1);
  CHECK(again == y1.download());
}

// Context::matmul's pointer-array batch: bf16 matrices at scattered addresses (no single stride
// between them), fp32 D, against a host product; then the arguments it refuses.
// A bf16 x bf16 -> fp32 column-major batch of `count` GEMMs whose A, B and D pointers are the
// three consecutive arrays of `arrays` (device memory), 16-byte aligned matrices.
linear::cuda::Gemm pointer_array_gemm(const void** arrays, I64 count, I64 m, I64 n, I64 k, I64 lda, I64 ldb,
                                      I64 ldd) {
  linear::cuda::Gemm g;
  g.ab_type = CUDA_R_16BF;
  g.cd_type = CUDA_R_32F;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = arrays;
  g.lda = lda;
  g.b = arrays + count;
  g.ldb = ldb;
  g.d = arrays + 2 * count;
  g.ldd = ldd;
  g.batch = static_cast<int>(count);
  g.pointer_array = true;
  g.matrix_alignment = 16;
  return g;
}

TEST_CASE("gpu linear Context runs a pointer-array batch of GEMMs at arbitrary addresses") {
  auto& ctx = context();
  const I64 m = 72, n = 40, k = 96, count = 5, lda = m + 8, ldb = k, ldd = m + 4;
  // Matrix i of A starts at a_off[i] elements into one buffer, likewise B and D (out of order).
  const I64 a_off[count] = {4 * lda * k, 0, 2 * lda * k + 16, lda * k, 3 * lda * k + 8};
  const I64 b_off[count] = {0, 3 * ldb * n, ldb * n + 8, 4 * ldb * n, 2 * ldb * n};
  const I64 d_off[count] = {2 * ldd * n, 4 * ldd * n, 0, ldd * n, 3 * ldd * n + 4};
  const auto ha = test::random_vector<__nv_bfloat16>(static_cast<std::size_t>(5 * lda * k + 16), 31);
  const auto hb = test::random_vector<__nv_bfloat16>(static_cast<std::size_t>(5 * ldb * n + 8), 32);
  DeviceBuffer<__nv_bfloat16> a, b;
  a.upload(ha);
  b.upload(hb);
  DeviceBuffer<float> d(static_cast<std::size_t>(5 * ldd * n + 4));
  REQUIRE(cudaMemset(d.data(), 0, d.size() * sizeof(float)) == cudaSuccess);
  std::vector<const void*> ptrs;
  for (I64 i = 0; i < count; ++i) ptrs.push_back(a.data() + a_off[i]);
  for (I64 i = 0; i < count; ++i) ptrs.push_back(b.data() + b_off[i]);
  for (I64 i = 0; i < count; ++i) ptrs.push_back(d.data() + d_off[i]);
  DeviceBuffer<const void*> arrays;
  arrays.upload(ptrs);
  DeviceBuffer<char> ws(ctx.gemm_workspace_bytes());
  // (every offset above is a multiple of 8 bf16 / 4 floats: 16-byte aligned matrices)
  const linear::cuda::Gemm g = pointer_array_gemm(arrays.data(), count, m, n, k, lda, ldb, ldd);
  const Status st = ctx.matmul(g, ws.data(), nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  const auto hd = d.download();
  // Column-major: A (m x k, lda), B (k x n, ldb), D (m x n, ldd).
  double worst = 0.0;
  for (I64 i = 0; i < count; ++i)
    for (I64 c = 0; c < n; ++c)
      for (I64 r = 0; r < m; ++r) {
        double ref = 0.0;
        for (I64 x = 0; x < k; ++x)
          ref += to_double(ha[a_off[i] + x * lda + r]) * to_double(hb[b_off[i] + c * ldb + x]);
        worst = std::max(worst, std::abs(ref - hd[d_off[i] + c * ldd + r]));
      }
  CHECK(worst < 1e-4);
  // Nothing outside the five outputs was written (the gaps between and after them stay zero).
  std::vector<bool> inside(hd.size(), false);
  for (I64 i = 0; i < count; ++i)
    for (I64 c = 0; c < n; ++c)
      for (I64 r = 0; r < m; ++r) inside[d_off[i] + c * ldd + r] = true;
  std::size_t stray = 0;
  for (std::size_t e = 0; e < hd.size(); ++e) stray += !inside[e] && hd[e] != 0.f;
  CHECK(stray == 0);

  linear::cuda::Gemm bad = g;
  bad.matrix_alignment = 0;
  const Status no_alignment = ctx.matmul(bad, ws.data(), nullptr);
  CHECK(no_alignment.code() == StatusCode::kInvalidArgument);
  CHECK(no_alignment.message().find("matrix_alignment") != std::string::npos);
  bad = g;
  bad.bias = d.data();
  CHECK(ctx.matmul(bad, ws.data(), nullptr).code() == StatusCode::kInvalidArgument);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE("gpu linear measured choice times a pointer-array batch (beta = 0) into its own outputs") {
  // 3 GEMMs of 512 x 384 x 1024 (1.2 GFLOP) so the measured context times its candidates; it runs
  // them into the batch's own outputs (beta = 0), which the real call then rewrites: the result
  // must be the plain product, and the gaps between the outputs must stay untouched.
  linear::cuda::Context measured;
  REQUIRE(measured.init(linear::cuda::Context::kDefaultGemmWorkspaceBytes, linear::cuda::AlgoChoice::kMeasured).ok());
  const I64 m = 512, n = 384, k = 1024, count = 3, ld_gap = 8;
  const I64 a_size = m * k, b_size = k * n, d_size = (m + ld_gap) * n;
  const auto ha = test::random_vector<__nv_bfloat16>(static_cast<std::size_t>(count * a_size), 41);
  const auto hb = test::random_vector<__nv_bfloat16>(static_cast<std::size_t>(count * b_size), 42);
  DeviceBuffer<__nv_bfloat16> a, b;
  a.upload(ha);
  b.upload(hb);
  const float sentinel = 7.f;
  DeviceBuffer<float> d;
  d.upload(std::vector<float>(static_cast<std::size_t>(count * d_size), sentinel));
  std::vector<const void*> ptrs;
  for (I64 i = 0; i < count; ++i) ptrs.push_back(a.data() + (count - 1 - i) * a_size);  // out of order
  for (I64 i = 0; i < count; ++i) ptrs.push_back(b.data() + i * b_size);
  for (I64 i = 0; i < count; ++i) ptrs.push_back(d.data() + ((i + 1) % count) * d_size);
  DeviceBuffer<const void*> arrays;
  arrays.upload(ptrs);
  DeviceBuffer<char> ws(measured.gemm_workspace_bytes());
  const linear::cuda::Gemm g = pointer_array_gemm(arrays.data(), count, m, n, k, m, k, m + ld_gap);
  const Status st = measured.matmul(g, ws.data(), nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  const auto hd = d.download();
  CHECK(measured.measured_plans() == 1);
  double worst = 0.0;
  std::size_t gap_changed = 0;
  for (I64 i = 0; i < count; ++i) {
    const I64 ai = (count - 1 - i) * a_size, bi = i * b_size, di = ((i + 1) % count) * d_size;
    for (I64 c = 0; c < n; ++c) {
      for (I64 r = 0; r < m; r += 7) {  // every 7th row: enough to catch a wrong or doubled product
        double ref = 0.0;
        for (I64 x = 0; x < k; ++x) ref += to_double(ha[ai + x * m + r]) * to_double(hb[bi + c * k + x]);
        worst = std::max(worst, std::abs(ref - hd[di + c * (m + ld_gap) + r]));
      }
      for (I64 r = m; r < m + ld_gap; ++r) gap_changed += hd[di + c * (m + ld_gap) + r] != sentinel;
    }
  }
  CHECK(worst < 1e-3);
  CHECK(gap_changed == 0);
  // With beta = 1 a pointer-array batch keeps the heuristic's choice (its outputs are inputs too).
  linear::cuda::Gemm acc = g;
  acc.beta = 1.f;
  acc.k = k / 2;
  REQUIRE(measured.matmul(acc, ws.data(), nullptr).ok());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  CHECK(measured.measured_plans() == 1);
}
