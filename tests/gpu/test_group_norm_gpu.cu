// CUDA group RMSNorm / LayerNorm against the CPU reference on random shapes, every dtype, both
// the fast row path and the generic path; determinism of the backward.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/ops/group_norm/launch.cuh"
#include "gecko/ops/group_norm/reference.hpp"
#include "test_util.hpp"

using namespace gecko;
using group_norm::Kind;

namespace {

struct Shape {
  std::int64_t rows, channels, groups;
  std::int64_t pitch;  // row stride of x/y/dy/dx (>= channels)
};

// with_add: the backward adds a residual branch's gradient (dx_add) into dx.
template <class T>
void run_case(Kind kind, bool affine, const Shape& s, std::uint64_t seed, bool with_add = false) {
  const std::int64_t R = s.rows, C = s.channels, P = s.pitch;
  CAPTURE(test::type_label<T>());
  CAPTURE(group_norm::kind_name(kind));
  CAPTURE(affine);
  CAPTURE(R);
  CAPTURE(C);
  CAPTURE(s.groups);
  CAPTURE(P);
  CAPTURE(with_add);
  const bool bias = affine && kind == Kind::kLayer;
  auto x = test::random_vector<T>(R * P, seed, -2, 2);
  auto dy = test::random_vector<T>(R * P, seed + 1);
  auto w = test::random_vector<T>(C, seed + 2, -0.5, 0.5);
  auto b = test::random_vector<T>(C, seed + 3, -0.5, 0.5);
  auto dadd = test::random_vector<T>(R * P, seed + 4);

  // CPU reference in double on the same (rounded) inputs.
  auto xd = test::widen(x), dyd = test::widen(dy), wd = test::widen(w), bd = test::widen(b), daddd = test::widen(dadd);
  std::vector<double> y_ref(R * P, 0.0), dx_ref(R * P, 0.0), dw_ref(C), db_ref(C);
  group_norm::ForwardArgs<double> fr;
  fr.kind = kind;
  fr.groups = s.groups;
  fr.x = TensorView<const double>::strided(xd.data(), {R, C}, {P, 1}, Memory::kHost);
  if (affine) fr.weight = host_view(wd, {C});
  if (bias) fr.bias = host_view(bd, {C});
  fr.y = TensorView<double>::strided(y_ref.data(), {R, C}, {P, 1}, Memory::kHost);
  REQUIRE(group_norm::cpu::forward(fr).ok());
  group_norm::BackwardArgs<double> br;
  br.kind = kind;
  br.groups = s.groups;
  br.x = fr.x;
  br.weight = fr.weight;
  br.dy = TensorView<const double>::strided(dyd.data(), {R, C}, {P, 1}, Memory::kHost);
  br.dx = TensorView<double>::strided(dx_ref.data(), {R, C}, {P, 1}, Memory::kHost);
  if (with_add) br.dx_add = TensorView<const double>::strided(daddd.data(), {R, C}, {P, 1}, Memory::kHost);
  if (affine) br.dweight = host_view(dw_ref, {C});
  if (bias) br.dbias = host_view(db_ref, {C});
  REQUIRE(group_norm::cpu::backward(br).ok());

  DeviceBuffer<T> x_d, dy_d, w_d, b_d, dadd_d, y_d(R * P), dx_d(R * P);
  dadd_d.upload(dadd);
  DeviceBuffer<float> dw_d(C), db_d(C);
  x_d.upload(x);
  dy_d.upload(dy);
  w_d.upload(w);
  b_d.upload(b);
  y_d.zero();
  dx_d.zero();
  group_norm::ForwardArgs<T> f;
  f.kind = kind;
  f.groups = s.groups;
  f.x = TensorView<const T>::strided(x_d.data(), {R, C}, {P, 1}, Memory::kDevice);
  if (affine) f.weight = TensorView<const T>::device(w_d.data(), {C});
  if (bias) f.bias = TensorView<const T>::device(b_d.data(), {C});
  f.y = TensorView<T>::strided(y_d.data(), {R, C}, {P, 1}, Memory::kDevice);
  REQUIRE(group_norm::cuda::forward(f, nullptr).ok());

  group_norm::BackwardArgs<T> g;
  g.kind = kind;
  g.groups = s.groups;
  g.x = f.x;
  g.weight = f.weight;
  g.dy = TensorView<const T>::strided(dy_d.data(), {R, C}, {P, 1}, Memory::kDevice);
  g.dx = TensorView<T>::strided(dx_d.data(), {R, C}, {P, 1}, Memory::kDevice);
  if (with_add) g.dx_add = TensorView<const T>::strided(dadd_d.data(), {R, C}, {P, 1}, Memory::kDevice);
  if (affine) g.dweight = dw_d.view({C});
  if (bias) g.dbias = db_d.view({C});
  std::size_t ws_bytes = 0;
  REQUIRE(group_norm::cuda::backward_workspace_size(g, ws_bytes).ok());
  DeviceBuffer<char> ws(ws_bytes);
  const Status st = group_norm::cuda::backward(g, ws.data(), ws_bytes, nullptr);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  const double tol = test::output_tolerance<T>();
  GECKO_CHECK_CLOSE(test::widen(y_d.download()), y_ref, tol, "y");
  GECKO_CHECK_CLOSE(test::widen(dx_d.download()), dx_ref, tol, "dx");
  if (affine) GECKO_CHECK_CLOSE(dw_d.download(), dw_ref, 1e-4, "dweight");
  if (bias) GECKO_CHECK_CLOSE(db_d.download(), db_ref, 1e-4, "dbias");

  // Determinism: a second backward gives bitwise identical results.
  if (affine) {
    const auto dx1 = dx_d.download();
    const auto dw1 = dw_d.download();
    REQUIRE(group_norm::cuda::backward(g, ws.data(), ws_bytes, nullptr).ok());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const auto dx2 = dx_d.download();
    CHECK(std::memcmp(dx1.data(), dx2.data(), dx1.size() * sizeof(T)) == 0);
    CHECK(dw1 == dw_d.download());
  }
}

template <class T>
void run_all() {
  const Shape shapes[] = {
      {37, 4096, 1, 4096},    // one 4096 group, odd rows (fast path)
      {101, 4096, 64, 4096},  // 64 groups of 64 (the 7B timestep-norm grouping)
      {19, 1024, 4, 1024},    // per-head 256 (znorm)
      {7, 2048, 16, 2048},    // group size 128
      {9, 512, 1, 520},       // padded rows
      {13, 96, 1, 96},        // group size 96: generic path
      {5, 200, 2, 200},       // odd group size 100: generic path
      {1, 64, 1, 64},         // a single short row
      {3, 8192, 2, 8192},     // group size 4096, two groups
  };
  std::uint64_t seed = 100;
  for (const auto& s : shapes) {
    for (Kind kind : {Kind::kRms, Kind::kLayer}) {
      for (bool affine : {true, false}) run_case<T>(kind, affine, s, seed += 10, affine && kind == Kind::kLayer);
    }
  }
}

}  // namespace

TEST_CASE("gpu group norm fp32 matches the CPU reference") { run_all<float>(); }
TEST_CASE("gpu group norm fp16 matches the CPU reference") { run_all<__half>(); }
TEST_CASE("gpu group norm bf16 matches the CPU reference") { run_all<__nv_bfloat16>(); }

TEST_CASE("gpu group norm rejects host tensors and short workspace") {
  std::vector<float> host(64);
  DeviceBuffer<float> dev(64), dw(16);
  group_norm::ForwardArgs<float> f;
  f.x = TensorView<const float>::host(host.data(), {4, 16});
  f.y = dev.view({4, 16});
  CHECK(group_norm::cuda::forward(f, nullptr).message().find("expected device memory") != std::string::npos);
  group_norm::BackwardArgs<float> g;
  g.x = dev.view({4, 16});
  g.dy = dev.view({4, 16});
  g.dx = dev.view({4, 16});
  g.weight = dw.view({16});
  g.dweight = dw.view({16});
  CHECK(group_norm::cuda::backward(g, nullptr, 0, nullptr).message().find("workspace") != std::string::npos);
  g.dx_add = dev.view({4, 16});  // the same buffer as dx
  CHECK(group_norm::cuda::backward(g, nullptr, 0, nullptr).message().find("dx_add must not be dx") != std::string::npos);
  g.dx_add = dev.view({4, 8});
  CHECK(group_norm::cuda::backward(g, nullptr, 0, nullptr).message().find("dx_add") != std::string::npos);
}
