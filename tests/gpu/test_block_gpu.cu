// The Gecko block on the GPU against the CPU block (double): forward output, dx and every
// parameter gradient, with and without documents, fp32 and bf16.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/block/reference.hpp"
#include "gecko/layers/cuda/block.cuh"
#include "gecko/layers/init.hpp"
#include "block_fixtures.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
using namespace gecko::layers;

namespace {

GeckoConfig small_config() { return test::small_block_config(); }

template <class T>
void run_block(bool documents, double tol_out, double tol_grad) {
  const GeckoConfig c = small_config();
  const std::int64_t B = 2, L = 3 * c.chunk_size, D = c.model_dim;
  CAPTURE(test::type_label<T>());
  CAPTURE(documents);
  const auto params = test::perturbed_block_parameters(c);
  auto xh = test::random_vector<T>(B * L * D, 21, -2, 2);
  auto dh = test::random_vector<T>(B * L * D, 22, -1, 1);
  std::vector<std::uint8_t> bos(B * L, 0);
  std::vector<std::int64_t> seg(B * L, 0);
  if (documents) {
    for (std::int64_t b = 0; b < B; ++b) {
      std::int64_t id = 0;
      for (std::int64_t t = 0; t < L; ++t) {
        if (t == 0 || (b == 1 && (t == 50 || t == 130))) {
          bos[b * L + t] = 1;
          if (t) ++id;
        }
        seg[b * L + t] = id;
      }
    }
  }
  // CPU reference.
  auto xd = test::widen(xh), dd = test::widen(dh);
  std::vector<double> out_ref(B * L * D), dx_ref(B * L * D);
  block::ForwardArgs<double> fr;
  fr.x = host_view(xd, {B, L, D});
  if (documents) {
    fr.bos_mask = host_view(bos, {B, L});
    fr.segment_idx = host_view(seg, {B, L});
  }
  fr.out = host_view(out_ref, {B, L, D});
  REQUIRE(block::cpu::forward(c, params, fr).ok());
  auto grads_ref = params.zeros_like();
  block::BackwardArgs<double> br;
  br.x = fr.x;
  br.bos_mask = fr.bos_mask;
  br.segment_idx = fr.segment_idx;
  br.dout = host_view(dd, {B, L, D});
  br.dx = host_view(dx_ref, {B, L, D});
  REQUIRE(block::cpu::backward(c, params, br, grads_ref).ok());

  // GPU.
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  layers::cuda::DeviceGradients G;
  REQUIRE(G.allocate(params).ok());
  DeviceBuffer<T> x_d, dout_d, out_d(B * L * D), dx_d(B * L * D);
  DeviceBuffer<std::uint8_t> bos_d;
  DeviceBuffer<std::int64_t> seg_d;
  x_d.upload(xh);
  dout_d.upload(dh);
  bos_d.upload(bos);
  seg_d.upload(seg);
  layers::cuda::BlockCall<T> call;
  call.x = x_d.view({B, L, D});
  if (documents) {
    call.bos_mask = bos_d.view({B, L});
    call.segment_idx = seg_d.view({B, L});
  }
  layers::cuda::BlockPlan plan;
  Status st = layers::cuda::block_plan(ctx, c, P, call, plan);
  REQUIRE_MESSAGE(st.ok(), st.to_string());
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  Status st2 = layers::cuda::block_forward(ctx, c, P, call, out_d.view({B, L, D}), act.data(), act.size(), ws.data(), ws.size(), nullptr);
  REQUIRE_MESSAGE(st2.ok(), st2.to_string());
  Status st3 = layers::cuda::block_backward(ctx, c, P, G, call, TensorView<const T>::device(dout_d.data(), {B, L, D}),
                            dx_d.view({B, L, D}), act.data(), act.size(), ws.data(), ws.size(), nullptr);
  REQUIRE_MESSAGE(st3.ok(), st3.to_string());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  GECKO_CHECK_CLOSE(test::widen(out_d.download()), out_ref, tol_out, "out");
  GECKO_CHECK_CLOSE(test::widen(dx_d.download()), dx_ref, tol_grad, "dx");
  auto grads = params.zeros_like();
  REQUIRE(G.download(grads).ok());
  for (const auto& n : params.names()) GECKO_CHECK_CLOSE(grads.find(n)->data, grads_ref.find(n)->data, tol_grad, n);
}

}  // namespace

TEST_CASE("gpu block fp32 matches the CPU block") {
  run_block<float>(false, 1e-4, 1e-3);
  run_block<float>(true, 1e-4, 1e-3);
}

TEST_CASE("gpu block bf16 matches the CPU block") {
  run_block<__nv_bfloat16>(false, 2e-2, 6e-2);
  run_block<__nv_bfloat16>(true, 2e-2, 6e-2);
}

// A training step (forward + backward) enqueued on a stream captures into a CUDA graph; replaying
// the graph gives bitwise the results of the direct launches (every kernel is deterministic).
TEST_CASE("gpu block training step runs from a CUDA graph") {
  using T = __nv_bfloat16;
  const GeckoConfig c = small_config();
  const std::int64_t B = 1, L = 2 * c.chunk_size, D = c.model_dim;
  auto params = block::make_parameters(c);
  init_parameters(params, 13);
  auto xh = test::random_vector<T>(B * L * D, 51, -2, 2);
  auto dh = test::random_vector<T>(B * L * D, 52, -1, 1);
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  layers::cuda::DeviceGradients G;
  REQUIRE(G.allocate(params).ok());
  DeviceBuffer<T> x_d, dout_d, out_d(B * L * D), dx_d(B * L * D);
  x_d.upload(xh);
  dout_d.upload(dh);
  layers::cuda::BlockCall<T> call;
  call.x = x_d.view({B, L, D});
  layers::cuda::BlockPlan plan;
  REQUIRE(layers::cuda::block_plan(ctx, c, P, call, plan).ok());
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  const auto step = [&] {
    REQUIRE(layers::cuda::block_forward(ctx, c, P, call, out_d.view({B, L, D}), act.data(), act.size(), ws.data(),
                                        ws.size(), stream)
                .ok());
    REQUIRE(layers::cuda::block_backward(ctx, c, P, G, call, TensorView<const T>::device(dout_d.data(), {B, L, D}),
                                         dx_d.view({B, L, D}), act.data(), act.size(), ws.data(), ws.size(), stream)
                .ok());
  };
  step();  // direct launches (also creates the cuBLASLt plans outside the capture)
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  const auto out1 = out_d.download(), dx1 = dx_d.download();
  auto g1 = params.zeros_like();
  REQUIRE(G.download(g1).ok());
  REQUIRE(cudaMemset(out_d.data(), 0, out_d.size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemset(dx_d.data(), 0, dx_d.size() * sizeof(T)) == cudaSuccess);

  // Relaxed mode: the launchers query kernel attributes (not stream work) while capturing.
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  step();
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int i = 0; i < 2; ++i) REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  const auto out2 = out_d.download(), dx2 = dx_d.download();
  auto g2 = params.zeros_like();
  REQUIRE(G.download(g2).ok());
  CHECK(std::memcmp(out1.data(), out2.data(), out1.size() * sizeof(T)) == 0);
  CHECK(std::memcmp(dx1.data(), dx2.data(), dx1.size() * sizeof(T)) == 0);
  for (const auto& n : params.names()) CHECK_MESSAGE(g1.find(n)->data == g2.find(n)->data, n);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
