// Streaming inference through the GPU block (layers/cuda/stream.cuh): a stream cut into prefill
// chunks, calls inside a chunk and one-token decoding steps against the CPU block streaming the
// same calls (double), with bos resets; the same tokens streamed equal one training-path forward;
// the state stays the same size; bad calls get clear errors.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <random>

#include "gecko/core/buffer.hpp"
#include "gecko/layers/block/reference.hpp"
#include "gecko/layers/cuda/stream.cuh"
#include "gecko/layers/init.hpp"
#include "block_fixtures.hpp"
#include "gemm_context.hpp"
#include "test_util.hpp"

using namespace gecko;
using namespace gecko::layers;
using I64 = std::int64_t;

namespace {

GeckoConfig small_config() { return test::small_block_config(); }
ParameterSet make_params(const GeckoConfig& c) { return test::perturbed_block_parameters(c); }

// Prefill chunk, pieces of a chunk, decode steps, a piece that ends a chunk, two chunks at once.
const std::vector<I64> kCalls = {64, 5, 20, 39, 1, 1, 1, 61, 128, 1, 3, 1};

// The MEGA layer's own parameters: the block's "mega." tensors without the prefix.
ParameterSet mega_params(const ParameterSet& block_params) {
  ParameterSet m;
  for (const auto& n : block_params.names()) {
    if (n.rfind(block::kMegaPrefix, 0) != 0) continue;
    const HostTensor* t = block_params.find(n);
    const std::string name = n.substr(block::kMegaPrefix.size());
    m.add(name, t->shape);
    m.find(name)->data = t->data;
  }
  return m;
}

// The CPU stream a GPU stream is checked against: the block, or the MEGA layer alone.
struct CpuStream {
  bool mega = false;
  ParameterSet params;
  block::State block_state;
  mega::State mega_state;

  Status forward(const GeckoConfig& c, TensorView<const double> x, TensorView<const std::uint8_t> bos,
                 TensorView<double> out) {
    if (mega) {
      mega::ForwardArgs<double> a;
      a.x = x;
      a.bos_mask = bos;
      a.out = out;
      return mega::cpu::forward(c, params, a, &mega_state);
    }
    block::ForwardArgs<double> a;
    a.x = x;
    a.bos_mask = bos;
    a.out = out;
    return block::cpu::forward(c, params, a, &block_state);
  }
  I64 cached() const { return mega ? mega_state.cached : block_state.cached; }
};

template <class T>
void run_stream(double tol, layers::cuda::StreamLayers layers) {
  const GeckoConfig c = small_config();
  const I64 B = 2, D = c.model_dim;
  I64 total = 0;
  for (I64 l : kCalls) total += l;
  CAPTURE(test::type_label<T>());
  const bool mega_only = layers == layers::cuda::StreamLayers::kMega;
  CAPTURE(mega_only);
  const auto params = make_params(c);
  auto xh = test::random_vector<T>(B * total * D, 31, -2, 2);
  std::vector<std::uint8_t> bos(B * total, 0);
  bos[1 * total + 100] = 1;  // a document starts inside the stream of row 1
  bos[0 * total + 0] = 1;

  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  layers::cuda::BlockStream<T> gs;
  REQUIRE(gs.init(c, B, layers).ok());
  const std::size_t state_bytes = gs.state_bytes();
  CpuStream cs;
  cs.mega = mega_only;
  cs.params = mega_only ? mega_params(params) : params;

  I64 pos = 0;
  for (I64 L : kCalls) {
    CAPTURE(pos);
    CAPTURE(L);
    // This call's slice of x and bos, [B, L, ...].
    std::vector<T> xs(B * L * D);
    std::vector<std::uint8_t> bs(B * L);
    for (I64 b = 0; b < B; ++b) {
      std::copy_n(xh.begin() + (b * total + pos) * D, L * D, xs.begin() + b * L * D);
      std::copy_n(bos.begin() + b * total + pos, L, bs.begin() + b * L);
    }
    auto xd = test::widen(xs);
    std::vector<double> ref(B * L * D);
    REQUIRE(cs.forward(c, host_view(xd, {B, L, D}), host_view(bs, {B, L}), host_view(ref, {B, L, D})).ok());

    DeviceBuffer<T> x_d, out_d(B * L * D);
    DeviceBuffer<std::uint8_t> b_d;
    x_d.upload(xs);
    b_d.upload(bs);
    const Status st = gs.forward(ctx, P, TensorView<const T>::device(x_d.data(), {B, L, D}),
                                 TensorView<const std::uint8_t>::device(b_d.data(), {B, L}), out_d.view({B, L, D}),
                                 nullptr);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    GECKO_CHECK_CLOSE(test::widen(out_d.download()), ref, tol, "stream out");
    pos += L;
    CHECK(gs.position() == pos);
    CHECK(gs.cached() == cs.cached());
    CHECK(gs.state_bytes() == state_bytes);
  }
}

}  // namespace

TEST_CASE("gpu block stream matches the CPU stream call by call") {
  run_stream<float>(1e-4, layers::cuda::StreamLayers::kBlock);
  run_stream<__nv_bfloat16>(3e-2, layers::cuda::StreamLayers::kBlock);
}

TEST_CASE("gpu MEGA-layer stream matches the CPU MEGA stream call by call") {
  run_stream<float>(1e-4, layers::cuda::StreamLayers::kMega);
  run_stream<__nv_bfloat16>(3e-2, layers::cuda::StreamLayers::kMega);
}

TEST_CASE("gpu block stream equals one training-path forward over the same tokens") {
  using T = __nv_bfloat16;
  const GeckoConfig c = small_config();
  const I64 B = 1, D = c.model_dim, L = 5 * c.chunk_size;
  const auto params = make_params(c);
  auto xh = test::random_vector<T>(B * L * D, 41, -2, 2);
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  DeviceBuffer<T> x_d, full_d(B * L * D), part_d(B * L * D);
  x_d.upload(xh);
  layers::cuda::BlockCall<T> call;
  call.x = x_d.view({B, L, D});
  layers::cuda::BlockPlan plan;
  REQUIRE(layers::cuda::block_plan(ctx, c, P, call, plan).ok());
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  REQUIRE(layers::cuda::block_forward(ctx, c, P, call, full_d.view({B, L, D}), act.data(), act.size(), ws.data(),
                                      ws.size(), nullptr)
              .ok());
  layers::cuda::BlockStream<T> gs;
  REQUIRE(gs.init(c, B).ok());
  I64 pos = 0;
  for (I64 l : {64, 7, 57, 1, 1, 62, 128}) {
    const Status st = gs.forward(ctx, P, TensorView<const T>::device(x_d.data() + pos * D, {B, l, D}), {},
                                 TensorView<T>::device(part_d.data() + pos * D, {B, l, D}), nullptr);
    REQUIRE_MESSAGE(st.ok(), st.to_string());
    pos += l;
  }
  REQUIRE(pos == L);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  GECKO_CHECK_CLOSE(test::widen(part_d.download()), test::widen(full_d.download()), 2e-2, "stream vs full");
}

// Decode steps replayed from CUDA graphs against the same stream launched eagerly: prefill, then
// steps of 1 to 3 tokens across two chunk ends (which run eagerly, as do the first step of each
// graph shape), with a document start on one step. The graph path differs only in where the
// attention cuts its key blocks (the grid covers the largest window), so the outputs agree to
// rounding; replaying the same tokens again after reset() gives bitwise the first replay.
TEST_CASE("gpu stream decode steps replay CUDA graphs") {
  using T = __nv_bfloat16;
  const GeckoConfig c = small_config();
  const I64 B = 2, D = c.model_dim, C = c.chunk_size;
  const auto params = make_params(c);
  // A context of its own: the stream's GEMM plans are created lazily by its first eager steps,
  // before any capture, as in a fresh program (a shared context would already hold them).
  linear::cuda::Context ctx;
  REQUIRE(ctx.init().ok());
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(params).ok());
  std::vector<I64> calls = {C};
  while (true) {  // 1-token steps with a few 2- and 3-token ones, up to 2C + 40 more tokens
    I64 pos = 0;
    for (I64 l : calls) pos += l;
    if (pos >= 3 * C + 40) break;
    const I64 l = calls.size() % 17 == 5 ? 3 : calls.size() % 13 == 7 ? 2 : 1;
    calls.push_back(std::min(l, C - pos % C));
  }
  I64 total = 0;
  for (I64 l : calls) total += l;
  const auto xh = test::random_vector<T>(B * total * D, 77, -2, 2);
  const I64 bos_at = C + 37;  // a document starts here in row 1 (an eager step between replays)

  for (auto layers : {layers::cuda::StreamLayers::kBlock, layers::cuda::StreamLayers::kMega}) {
    CAPTURE(layers == layers::cuda::StreamLayers::kMega);
    layers::cuda::BlockStream<T> eager, graphed;
    REQUIRE(eager.init(c, B, layers).ok());
    REQUIRE(graphed.init(c, B, layers).ok());
    REQUIRE(graphed.set_decode_graphs(true).ok());
    // One device buffer per call length (graphs are keyed by the addresses they read and write).
    std::map<I64, DeviceBuffer<T>> x_d, out_d;
    std::map<I64, DeviceBuffer<std::uint8_t>> bos_d;
    std::vector<T> first_run;
    for (int run = 0; run < 2; ++run) {
      CAPTURE(run);
      if (run == 1) graphed.reset();
      I64 pos = 0;
      std::vector<T> outs;
      for (I64 L : calls) {
        CAPTURE(pos);
        CAPTURE(L);
        std::vector<T> xs(B * L * D);
        std::vector<std::uint8_t> bs(B * L, 0);
        for (I64 b = 0; b < B; ++b) std::copy_n(xh.begin() + (b * total + pos) * D, L * D, xs.begin() + b * L * D);
        const bool with_bos = pos <= bos_at && bos_at < pos + L;
        if (with_bos) bs[1 * L + (bos_at - pos)] = 1;
        x_d[L].upload(xs);
        if (!out_d.count(L)) out_d.emplace(L, DeviceBuffer<T>(B * L * D));
        bos_d[L].upload(bs);
        const TensorView<const T> xv = TensorView<const T>::device(x_d[L].data(), {B, L, D});
        const TensorView<const std::uint8_t> bv =
            with_bos ? TensorView<const std::uint8_t>::device(bos_d[L].data(), {B, L}) : TensorView<const std::uint8_t>{};
        const Status st = graphed.forward(ctx, P, xv, bv, out_d[L].view({B, L, D}), nullptr);
        REQUIRE_MESSAGE(st.ok(), st.to_string());
        const auto got = out_d[L].download();
        outs.insert(outs.end(), got.begin(), got.end());
        if (run == 0) {
          DeviceBuffer<T> ref_d(B * L * D);
          const Status se = eager.forward(ctx, P, xv, bv, ref_d.view({B, L, D}), nullptr);
          REQUIRE_MESSAGE(se.ok(), se.to_string());
          GECKO_CHECK_CLOSE(test::widen(got), test::widen(ref_d.download()), 1e-2, "graph vs eager");
        }
        pos += L;
        CHECK(graphed.position() == pos);
      }
      if (run == 0) first_run = outs;
      else CHECK((outs.size() == first_run.size() &&
                  std::memcmp(outs.data(), first_run.data(), outs.size() * sizeof(T)) == 0));
    }
    // All but the chunk-ending steps and the first of each graph shape replayed a graph.
    CHECK(graphed.graph_steps() > static_cast<I64>(calls.size()));
    CHECK(eager.graph_steps() == 0);
  }
}

TEST_CASE("gpu stream decode graphs are refused for fp32") {
  layers::cuda::BlockStream<float> gs;
  const Status s = gs.set_decode_graphs(true);
  CHECK(s.code() == StatusCode::kUnsupported);
  CHECK(s.message().find("16-bit") != std::string::npos);
}

TEST_CASE("gpu block stream rejects bad calls") {
  using T = float;
  const GeckoConfig c = small_config();
  const I64 D = c.model_dim;
  linear::cuda::Context& ctx = test::gemm_context();
  layers::cuda::DeviceParameters<T> P;
  REQUIRE(P.upload(make_params(c)).ok());
  DeviceBuffer<T> x(2 * 128 * D), out(2 * 128 * D);
  layers::cuda::BlockStream<T> gs;
  {
    const Status s = gs.forward(ctx, P, TensorView<const T>::device(x.data(), {1, 1, D}), {}, out.view({1, 1, D}), nullptr);
    CHECK(s.message().find("init") != std::string::npos);
  }
  CHECK(gs.init(c, 0).code() == StatusCode::kInvalidArgument);
  REQUIRE(gs.init(c, 1).ok());
  {
    const Status s = gs.forward(ctx, P, TensorView<const T>::device(x.data(), {2, 1, D}), {}, out.view({2, 1, D}), nullptr);
    CHECK(s.message().find("batch") != std::string::npos);
  }
  REQUIRE(gs.forward(ctx, P, TensorView<const T>::device(x.data(), {1, 5, D}), {}, out.view({1, 5, D}), nullptr).ok());
  {  // 5 tokens in: 64 more would cross the chunk boundary
    const Status s = gs.forward(ctx, P, TensorView<const T>::device(x.data(), {1, 64, D}), {}, out.view({1, 64, D}), nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message().find("inside one chunk") != std::string::npos);
  }
  {
    const Status s = gs.forward(ctx, P, TensorView<const T>::device(x.data(), {1, 3, D}), {}, out.view({1, 4, D}), nullptr);
    CHECK(s.code() == StatusCode::kInvalidArgument);
  }
  CHECK(gs.position() == 5);  // rejected calls leave the stream where it was
}
