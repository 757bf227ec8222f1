// The authors' golden MEGA-layer cases on the GPU in fp32 (the CPU reference passes the same files
// in tests/golden): mega_basic and mega_segments through the training path with the MEGA layer
// alone (BlockLayers::kMega: output, dx and every parameter gradient), mega_decode through the
// streaming path (a 32-token prefill, then 20 one-token steps). Same tolerance as the CPU checks
// (relative Frobenius error 1e-4); the GPU computes the timestep norm with exact beta, which the
// CPU tests show is within it of the authors' float32 beta.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "check_layers.hpp"
#include "gecko/core/buffer.hpp"
#include "gecko/layers/cuda/block.cuh"
#include "gecko/layers/cuda/stream.cuh"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
using namespace gecko::layers;
using I64 = std::int64_t;

namespace {

testing::GoldenCase load(const char* name) {
  testing::GoldenCase gc;
  const Status st = testing::GoldenCase::load(testing::golden_dir() + "/" + name + ".safetensors", gc);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  return gc;
}

// The MEGA layer's parameters as the block names them ("mega." + the authors' names).
ParameterSet as_block_parameters(const ParameterSet& mega_params) {
  ParameterSet p;
  for (const auto& n : mega_params.names()) {
    const std::string name = block::kMegaPrefix + n;
    p.add(name, mega_params.find(n)->shape);
    p.find(name)->data = mega_params.find(n)->data;
  }
  return p;
}

void check_result(const char* name, const golden::CaseResult& r) {
  for (const auto& t : r.tensors) {
    INFO(name << " " << t.name << ": " << t.cmp.to_string());
    CHECK(t.cmp.within(golden::kTolerance));
  }
  CHECK(!r.tensors.empty());
}

void check_training_case(const char* name) {
  const testing::GoldenCase gc = load(name);
  const GeckoConfig c = golden::detail::mega_config(gc, timestep_norm::BetaPrecision::kExact);
  auto mega_params = mega::make_parameters(c);
  REQUIRE(mega_params.load(gc.file()).ok());
  const ParameterSet params = as_block_parameters(mega_params);
  const I64 B = gc.meta_int("B"), L = gc.meta_int("L"), D = c.model_dim;
  const auto to_f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };

  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<float> P;
  REQUIRE(P.upload(params).ok());
  layers::cuda::DeviceGradients G;
  REQUIRE(G.allocate(params).ok());
  DeviceBuffer<float> x_d, d_d, out_d(B * L * D), dx_d(B * L * D);
  x_d.upload(to_f(gc.get<double>("x")));
  d_d.upload(to_f(gc.get<double>("dout_out")));
  DeviceBuffer<std::uint8_t> bos_d;
  DeviceBuffer<I64> seg_d;
  layers::cuda::BlockCall<float> call;
  call.x = x_d.view({B, L, D});
  call.layers = layers::cuda::BlockLayers::kMega;
  if (gc.has("bos_mask")) {
    bos_d.upload(gc.get<std::uint8_t>("bos_mask"));
    call.bos_mask = bos_d.view({B, L});
  }
  if (gc.has("segment_idx")) {
    seg_d.upload(gc.get<I64>("segment_idx"));
    call.segment_idx = seg_d.view({B, L});
  }
  layers::cuda::BlockPlan plan;
  const Status sp = layers::cuda::block_plan(ctx, c, P, call, plan);
  REQUIRE_MESSAGE(sp.ok(), sp.to_string());
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  const Status sf = layers::cuda::block_forward(ctx, c, P, call, out_d.view({B, L, D}), act.data(), act.size(),
                                                ws.data(), ws.size(), nullptr);
  REQUIRE_MESSAGE(sf.ok(), sf.to_string());
  const Status sb = layers::cuda::block_backward(ctx, c, P, G, call, TensorView<const float>::device(d_d.data(), {B, L, D}),
                                                 dx_d.view({B, L, D}), act.data(), act.size(), ws.data(), ws.size(),
                                                 nullptr);
  REQUIRE_MESSAGE(sb.ok(), sb.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  golden::CaseResult r;
  golden::expect_tensor(gc, r, "out", test::widen(out_d.download()));
  golden::expect_tensor(gc, r, "grad_x", test::widen(dx_d.download()));
  auto grads = params.zeros_like();
  REQUIRE(G.download(grads).ok());
  for (const auto& n : mega_params.names())
    golden::expect_tensor(gc, r, "grad_" + n, grads.find(block::kMegaPrefix + n)->data);
  golden::detail::require_all_compared(gc, r);
  check_result(name, r);
}

}  // namespace

TEST_CASE("gpu MEGA layer reproduces the golden mega_basic case in fp32") { check_training_case("mega_basic"); }
TEST_CASE("gpu MEGA layer reproduces the golden mega_segments case in fp32") { check_training_case("mega_segments"); }

TEST_CASE("gpu MEGA stream reproduces the golden mega_decode case in fp32") {
  const testing::GoldenCase gc = load("mega_decode");
  const GeckoConfig c = golden::detail::mega_config(gc, timestep_norm::BetaPrecision::kExact);
  auto mega_params = mega::make_parameters(c);
  REQUIRE(mega_params.load(gc.file()).ok());
  const I64 B = gc.meta_int("B"), prefix = gc.meta_int("prefix"), steps = gc.meta_int("steps");
  const I64 L = prefix + steps, D = c.model_dim;
  const auto x = gc.get<double>("x");
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<float> P;
  REQUIRE(P.upload(as_block_parameters(mega_params)).ok());
  layers::cuda::BlockStream<float> s;
  REQUIRE(s.init(c, B, layers::cuda::StreamLayers::kMega).ok());
  std::vector<double> out(B * L * D);
  I64 t = 0;
  while (t < L) {
    const I64 n = t == 0 ? prefix : 1;
    std::vector<float> xs(B * n * D);
    for (I64 b = 0; b < B; ++b)
      for (I64 i = 0; i < n * D; ++i) xs[b * n * D + i] = static_cast<float>(x[(b * L + t) * D + i]);
    DeviceBuffer<float> x_d, o_d(B * n * D);
    x_d.upload(xs);
    const Status st = s.forward(ctx, P, TensorView<const float>::device(x_d.data(), {B, n, D}), {}, o_d.view({B, n, D}),
                                nullptr);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    const auto o = o_d.download();
    for (I64 b = 0; b < B; ++b)
      for (I64 i = 0; i < n * D; ++i) out[(b * L + t) * D + i] = o[b * n * D + i];
    t += n;
  }
  golden::CaseResult r;
  golden::expect_tensor(gc, r, "out", out);
  check_result("mega_decode", r);
}
