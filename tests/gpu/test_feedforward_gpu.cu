// The feed-forward network on the GPU (layers/cuda/feedforward.cuh) on its own: against the CPU
// network (double) on awkward shapes in fp32 and bf16, against the authors' golden nffn_basic case
// in fp32 (output, dx and every parameter gradient), and its errors for bad calls.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/cuda/feedforward.cuh"
#include "gecko/layers/init.hpp"
#include "gecko/layers/nffn/reference.hpp"
#include "gecko/testing/golden.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
using namespace gecko::layers;
using I64 = std::int64_t;

namespace {

struct Result {
  std::vector<double> out, dx;
  ParameterSet grads;
};

// The GPU network on x / dout (host, double), in T; params named with `prefix`.
template <class T>
Result run_gpu(const GeckoConfig& c, const ParameterSet& params, const std::string& prefix,
               const std::vector<double>& x, const std::vector<double>& dout, I64 B, I64 L) {
  const I64 D = c.model_dim;
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  layers::cuda::DeviceGradients G;
  REQUIRE(G.allocate(params).ok());
  std::vector<T> xh(x.size()), dh(dout.size());
  for (std::size_t i = 0; i < x.size(); ++i) xh[i] = from_double<T>(x[i]);
  for (std::size_t i = 0; i < dout.size(); ++i) dh[i] = from_double<T>(dout[i]);
  DeviceBuffer<T> x_d, d_d, out_d(B * L * D), dx_d(B * L * D);
  x_d.upload(xh);
  d_d.upload(dh);
  const auto xv = TensorView<const T>::device(x_d.data(), {B, L, D});
  layers::cuda::BlockPlan plan;
  const Status sp = layers::cuda::feedforward_plan(ctx, c, P, xv, plan, prefix);
  REQUIRE_MESSAGE(sp.ok(), sp.to_string());
  DeviceBuffer<char> act(std::max<std::size_t>(plan.activation_bytes, 1)), ws(std::max<std::size_t>(plan.workspace_bytes, 1));
  const Status sf = layers::cuda::feedforward_forward(ctx, c, P, xv, out_d.view({B, L, D}), act.data(),
                                                      plan.activation_bytes, ws.data(), plan.workspace_bytes, nullptr,
                                                      prefix);
  REQUIRE_MESSAGE(sf.ok(), sf.to_string());
  const Status sb = layers::cuda::feedforward_backward(ctx, c, P, G, xv, TensorView<const T>::device(d_d.data(), {B, L, D}),
                                                       dx_d.view({B, L, D}), act.data(), plan.activation_bytes,
                                                       ws.data(), plan.workspace_bytes, nullptr, prefix);
  REQUIRE_MESSAGE(sb.ok(), sb.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  Result r{test::widen(out_d.download()), test::widen(dx_d.download()), params.zeros_like()};
  REQUIRE(G.download(r.grads).ok());
  return r;
}

template <class T>
void run_random(const GeckoConfig& c, I64 B, I64 L, std::uint64_t seed, double tol) {
  CAPTURE(test::type_label<T>());
  CAPTURE(c.model_dim);
  CAPTURE(c.ffn_hidden_dim);
  CAPTURE(L);
  auto params = nffn::make_parameters(c);
  init_parameters(params, seed);
  // Norm offsets away from zero so that their gradients matter.
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  for (const char* n : {"norm.weight", "norm.bias"})
    for (auto& v : params.find(n)->data) v = u(rng);
  const I64 D = c.model_dim;
  // Inputs rounded to T, so both sides see the same values.
  const auto x = test::widen(test::random_vector<T>(B * L * D, seed + 1, -2, 2));
  const auto dout = test::widen(test::random_vector<T>(B * L * D, seed + 2, -1, 1));
  std::vector<double> out_ref(B * L * D), dx_ref(B * L * D);
  nffn::ForwardArgs<double> f;
  f.x = host_view(x, {B, L, D});
  f.out = host_view(out_ref, {B, L, D});
  REQUIRE(nffn::cpu::forward(c, params, f).ok());
  auto grads_ref = params.zeros_like();
  nffn::BackwardArgs<double> g;
  g.x = f.x;
  g.dout = host_view(dout, {B, L, D});
  g.dx = host_view(dx_ref, {B, L, D});
  REQUIRE(nffn::cpu::backward(c, params, g, grads_ref).ok());
  const Result r = run_gpu<T>(c, params, "", x, dout, B, L);
  GECKO_CHECK_CLOSE(r.out, out_ref, tol, "out");
  GECKO_CHECK_CLOSE(r.dx, dx_ref, tol, "dx");
  for (const auto& n : params.names()) GECKO_CHECK_CLOSE(r.grads.find(n)->data, grads_ref.find(n)->data, tol, n);
}

}  // namespace

TEST_CASE("gpu feed-forward matches the CPU network on awkward shapes") {
  GeckoConfig c;
  c.model_dim = 192;
  c.ffn_hidden_dim = 328;
  c.layernorm_num_groups = 1;
  run_random<float>(c, 2, 37, 5, 1e-4);
  run_random<__nv_bfloat16>(c, 2, 37, 6, 3e-2);
  c.model_dim = 256;
  c.ffn_hidden_dim = 512;
  c.layernorm_num_groups = 4;  // group layer norm
  run_random<float>(c, 1, 1, 7, 1e-4);  // one token
  run_random<__nv_bfloat16>(c, 3, 129, 8, 3e-2);
}

// The authors' vectors: the same tolerance as the CPU reference's golden tests (max error relative
// to each tensor's largest magnitude).
TEST_CASE("gpu feed-forward reproduces the golden nffn_basic case in fp32") {
  testing::GoldenCase gc;
  const std::string path = testing::golden_dir() + "/nffn_basic.safetensors";
  const Status ls = testing::GoldenCase::load(path, gc);
  REQUIRE_MESSAGE(ls.ok(), ls.to_string());
  GeckoConfig c;
  c.model_dim = gc.meta_int("D");
  c.ffn_hidden_dim = gc.meta_int("hidden");
  c.layernorm_num_groups = 1;
  c.norm_eps = 1e-5f;
  REQUIRE(gc.meta_bool("swiglu"));
  auto params = nffn::make_parameters(c);
  REQUIRE(params.load(gc.file()).ok());
  const I64 B = gc.meta_int("B"), L = gc.meta_int("L");
  // Under a prefix, as the block stores them, to exercise the names.
  ParameterSet prefixed;
  for (const auto& n : params.names()) {
    prefixed.add("ffn." + n, params.find(n)->shape);
    prefixed.find("ffn." + n)->data = params.find(n)->data;
  }
  const Result r = run_gpu<float>(c, prefixed, "ffn.", gc.get<double>("x"), gc.get<double>("dout_out"), B, L);
  const auto close = [](const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
    REQUIRE(got.size() == want.size());
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::abs(want[i]));
      err = std::max(err, std::abs(got[i] - want[i]));
    }
    INFO(what << ": max error " << err << " against max magnitude " << scale);
    CHECK(err <= 1e-4 * std::max(scale, 1e-30));
  };
  close(r.out, gc.get<double>("out"), "out");
  close(r.dx, gc.get<double>("grad_x"), "grad_x");
  for (const auto& n : params.names()) close(r.grads.find("ffn." + n)->data, gc.get<double>("grad_" + n), "grad_" + n);
}

TEST_CASE("gpu feed-forward rejects bad calls") {
  GeckoConfig c;
  c.model_dim = 64;
  c.ffn_hidden_dim = 96;
  auto params = nffn::make_parameters(c);
  init_parameters(params, 3);
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<float> P;
  REQUIRE(P.upload(params).ok());
  DeviceBuffer<float> x(2 * 5 * 64);
  layers::cuda::BlockPlan plan;
  {
    const Status s = layers::cuda::feedforward_plan(ctx, c, P, TensorView<const float>::device(x.data(), {2, 5, 32}), plan);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("model_dim") != std::string::npos);
  }
  {
    const Status s = layers::cuda::feedforward_plan(ctx, c, P, TensorView<const float>::device(x.data(), {2, 5, 64}), plan, "nffn.");
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("'nffn.norm.weight' is missing") != std::string::npos);
  }
  {
    GeckoConfig wide = c;
    wide.ffn_hidden_dim = 128;  // the uploaded weights are 96 wide
    const Status s = layers::cuda::feedforward_plan(ctx, wide, P, TensorView<const float>::device(x.data(), {2, 5, 64}), plan);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("fc1.weight") != std::string::npos);
  }
  {
    std::vector<float> host(2 * 5 * 64);
    const Status s = layers::cuda::feedforward_plan(ctx, c, P, TensorView<const float>::host(host.data(), {2, 5, 64}), plan);
    CHECK(s.message().find("device memory") != std::string::npos);
  }
  REQUIRE(layers::cuda::feedforward_plan(ctx, c, P, TensorView<const float>::device(x.data(), {2, 5, 64}), plan).ok());
  {  // an activation region too small
    DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
    DeviceBuffer<float> out(2 * 5 * 64);
    const Status s = layers::cuda::feedforward_forward(ctx, c, P, TensorView<const float>::device(x.data(), {2, 5, 64}),
                                                       out.view({2, 5, 64}), act.data(), plan.activation_bytes / 2,
                                                       ws.data(), plan.workspace_bytes, nullptr);
    CHECK(s.code() != StatusCode::kOk);
    CHECK(s.message().find("activation") != std::string::npos);
  }
}
