// The GPU building blocks of the MEGA layer and the feed-forward at the 7B shapes (16384 tokens,
// D = 4096, Z = 1024 in 4 heads of 256, E = F = 8192), bf16:
//   blocks/linear_*:  cuBLASLt Linear with its fused epilogue passes; TFLOP/s, read against the
//                     BM_gemm_bf16 ceiling row (8192^3) of the same process
//   blocks/qk_views_*, gated_combine_*, swiglu_*: one-pass element-wise kernels; TB/s and copy_frac
//                     (ideal bytes: every input read once, every output written once)

#include "bench_common.cuh"
#include "gecko/ops/gated_combine/launch.cuh"
#include "gecko/ops/linear/launch.cuh"
#include "gecko/ops/qk_views/launch.cuh"
#include "gecko/ops/swiglu/launch.cuh"

namespace gecko::bench {
namespace {

using T = __nv_bfloat16;
using I64 = std::int64_t;
constexpr I64 kTokens = 16384;

DeviceBuffer<T> filled(std::size_t n, std::uint32_t seed, float scale = 1.f) {
  DeviceBuffer<T> b(n);
  fill_bf16(b.data(), n, seed, scale);
  return b;
}

linear::cuda::Context& context() { return gemm_context(); }

// ---- Linear ------------------------------------------------------------------------------------

void BM_linear(benchmark::State& state, linear::Epilogue ep, bool backward) {
  const I64 M = state.range(0), K = state.range(1), N = state.range(2);
  const bool silu = linear::has_silu(ep), bias = linear::has_bias(ep);
  auto& ctx = context();
  auto x = filled(M * K, 1), w = filled(N * K, 2, 0.02f), b = filled(N, 3, 0.1f);
  if (!backward) {
    DeviceBuffer<T> y(M * N), pre(silu ? M * N : 0);
    linear::ForwardArgs<T> f;
    f.epilogue = ep;
    f.x = x.view({M, K});
    f.weight = w.view({N, K});
    if (bias) f.bias = b.view({N});
    f.y = y.view({M, N});
    if (silu) f.pre = pre.view({M, N});
    std::size_t bytes = 0;
    throw_if_error(linear::cuda::forward_workspace_size(ctx, f, bytes));
    DeviceBuffer<char> ws(bytes);
    run_timed(
        state, [&](int) { throw_if_error(linear::cuda::forward(ctx, f, ws.data(), bytes, nullptr)); }, 1,
        {0, 2.0 * M * N * K});
    return;
  }
  auto dy = filled(M * N, 4), pre = filled(silu ? M * N : 1, 5, 3.f);
  DeviceBuffer<T> dx(M * K);
  DeviceBuffer<float> dw(N * K), db(N);
  linear::BackwardArgs<T> g;
  g.epilogue = ep;
  g.x = x.view({M, K});
  g.weight = w.view({N, K});
  g.dy = dy.view({M, N});
  if (silu) {
    g.pre = pre.view({M, N});
    g.dpre = dy.view({M, N});  // in place: repeated runs see a changing dy, which costs nothing extra
  }
  g.dx = dx.view({M, K});
  g.dweight = dw.view({N, K});
  if (bias) g.dbias = db.view({N});
  std::size_t bytes = 0;
  throw_if_error(linear::cuda::backward_workspace_size(ctx, g, bytes));
  DeviceBuffer<char> ws(bytes);
  run_timed(
      state, [&](int) { throw_if_error(linear::cuda::backward(ctx, g, ws.data(), bytes, nullptr)); }, 1,
      {0, 4.0 * M * N * K});
}

// ---- element-wise ------------------------------------------------------------------------------

void BM_qk_views(benchmark::State& state, bool backward) {
  const I64 M = kTokens, H = 4, Z = state.range(0);
  const double tensor = static_cast<double>(M * Z) * sizeof(T);
  const int rot = rotation_count(tensor * (backward ? 6 : 5));
  std::vector<DeviceBuffer<T>> z, dv;
  for (int i = 0; i < rot; ++i) {
    z.push_back(filled(M * Z, 10 + i));
    if (backward) dv.push_back(filled(4 * M * Z, 20 + i));
  }
  auto gamma = filled(4 * Z, 6, 0.1f), beta = filled(4 * Z, 7, 0.1f);
  DeviceBuffer<T> out(4 * M * Z);
  if (!backward) {
    qk_views::ForwardArgs<T> f;
    f.heads = H;
    f.gamma = gamma.view({4, Z});
    f.beta = beta.view({4, Z});
    f.q = qk_views::packed_view(out.data(), 1, M, Z, 0, Memory::kDevice);
    f.k = qk_views::packed_view(out.data(), 1, M, Z, 1, Memory::kDevice);
    f.aq = qk_views::packed_view(out.data(), 1, M, Z, 2, Memory::kDevice);
    f.ak = qk_views::packed_view(out.data(), 1, M, Z, 3, Memory::kDevice);
    run_timed(
        state,
        [&](int i) {
          f.z = z[i].view({M, Z});
          throw_if_error(qk_views::cuda::forward(f, nullptr));
        },
        rot, {5 * tensor, 0});
    return;
  }
  DeviceBuffer<float> dg(4 * Z), db(4 * Z);
  qk_views::BackwardArgs<T> g;
  g.heads = H;
  g.gamma = gamma.view({4, Z});
  g.dz = out.view({M, Z});
  g.dgamma = dg.view({4, Z});
  g.dbeta = db.view({4, Z});
  auto set = [&](int i) {
    g.z = z[i].view({M, Z});
    g.dq = qk_views::packed_view<const T>(dv[i].data(), 1, M, Z, 0, Memory::kDevice);
    g.dk = qk_views::packed_view<const T>(dv[i].data(), 1, M, Z, 1, Memory::kDevice);
    g.daq = qk_views::packed_view<const T>(dv[i].data(), 1, M, Z, 2, Memory::kDevice);
    g.dak = qk_views::packed_view<const T>(dv[i].data(), 1, M, Z, 3, Memory::kDevice);
  };
  set(0);
  std::size_t bytes = 0;
  throw_if_error(qk_views::cuda::backward_workspace_size(g, bytes));
  DeviceBuffer<char> ws(bytes);
  run_timed(
      state,
      [&](int i) {
        set(i);
        throw_if_error(qk_views::cuda::backward(g, ws.data(), bytes, nullptr));
      },
      rot, {6 * tensor, 0});
}

void BM_gated_combine(benchmark::State& state, bool backward) {
  const I64 M = kTokens, E = state.range(0);
  const double tensor = static_cast<double>(M * E) * sizeof(T);
  auto sca = filled(M * E, 30), r = filled(M * E, 31, 3.f), third = filled(M * E, 32);
  DeviceBuffer<T> o1(M * E), o2(M * E);
  if (!backward) {  // attn = sca * silu(r_pre) + awm
    gated_combine::ForwardArgs<T> f;
    f.silu_r = true;
    f.sca = sca.view({M, E});
    f.r = r.view({M, E});
    f.awm = third.view({M, E});
    f.attn = o1.view({M, E});
    run_timed(
        state, [&](int) { throw_if_error(gated_combine::cuda::forward(f, nullptr)); }, 1, {4 * tensor, 0});
    return;
  }
  DeviceBuffer<float> cs(E);  // dsca, dr_pre and wr's bias gradient in one pass; dawm is dattn
  gated_combine::BackwardArgs<T> g;
  g.silu_r = true;
  g.sca = sca.view({M, E});
  g.r = r.view({M, E});
  g.dattn = third.view({M, E});
  g.dsca = o1.view({M, E});
  g.dr = o2.view({M, E});
  g.dr_colsum = cs.view({E});
  std::size_t bytes = 0;
  throw_if_error(gated_combine::cuda::backward_workspace_size(g, bytes));
  DeviceBuffer<char> ws(bytes);
  run_timed(
      state, [&](int) { throw_if_error(gated_combine::cuda::backward(g, ws.data(), bytes, nullptr)); }, 1,
      {5 * tensor, 0});
}

void BM_swiglu(benchmark::State& state, bool backward) {
  const I64 M = kTokens, F = state.range(0);
  const double tensor = static_cast<double>(M * F) * sizeof(T);
  auto ab = filled(2 * M * F, 40, 3.f), dh = filled(M * F, 41);  // a | b: one [M, 2F] fc1|fc3 output
  DeviceBuffer<T> o1(M * F), o2(M * F);
  const auto a = TensorView<const T>::strided(ab.data(), {M, F}, {2 * F, 1}, Memory::kDevice);
  const auto b = TensorView<const T>::strided(ab.data() + F, {M, F}, {2 * F, 1}, Memory::kDevice);
  if (!backward) {
    swiglu::ForwardArgs<T> f;
    f.a = a;
    f.b = b;
    f.hidden = o1.view({M, F});
    run_timed(
        state, [&](int) { throw_if_error(swiglu::cuda::forward(f, nullptr)); }, 1, {3 * tensor, 0});
    return;
  }
  swiglu::BackwardArgs<T> g;
  g.a = a;
  g.b = b;
  g.dhidden = dh.view({M, F});
  g.da = o1.view({M, F});
  g.db = o2.view({M, F});
  run_timed(
      state, [&](int) { throw_if_error(swiglu::cuda::backward(g, nullptr)); }, 1, {5 * tensor, 0});
}

const bool registered = [] {
  using linear::Epilogue;
  struct LinRow {
    const char* name;
    Epilogue ep;
    bool backward;
    I64 M, K, N;
  };
  const LinRow lin[] = {
      // The same problem as the BM_gemm_bf16 ceiling row, through the Context (no epilogue).
      {"blocks/linear_fwd/square", Epilogue::kNone, false, 8192, 8192, 8192},
      {"blocks/linear_fwd/wz_bias", Epilogue::kBias, false, kTokens, 4096, 1024},
      {"blocks/linear_fwd/wv_bias_silu_keep_pre", Epilogue::kBiasSilu, false, kTokens, 4096, 8192},
      {"blocks/linear_fwd/wr_bias", Epilogue::kBias, false, kTokens, 4096, 8192},
      {"blocks/linear_fwd/wh2", Epilogue::kNone, false, kTokens, 8192, 4096},
      {"blocks/linear_bwd/wz_bias", Epilogue::kBias, true, kTokens, 4096, 1024},
      {"blocks/linear_bwd/wv_bias_silu", Epilogue::kBiasSilu, true, kTokens, 4096, 8192},
      {"blocks/linear_bwd/wr_bias", Epilogue::kBias, true, kTokens, 4096, 8192},
      {"blocks/linear_bwd/wh2", Epilogue::kNone, true, kTokens, 8192, 4096},
  };
  for (const LinRow& r : lin)
    benchmark::RegisterBenchmark(r.name, BM_linear, r.ep, r.backward)
        ->Args({r.M, r.K, r.N})
        ->ArgNames({"M", "K", "N"})
        ->UseManualTime()
        ->Iterations(20)
        ->Unit(benchmark::kMicrosecond);
  struct EwRow {
    const char* name;
    void (*fn)(benchmark::State&, bool);
    bool backward;
    I64 width;
  };
  const EwRow ew[] = {
      {"blocks/qk_views_fwd", BM_qk_views, false, 1024},
      {"blocks/qk_views_bwd", BM_qk_views, true, 1024},
      {"blocks/gated_combine_fwd_silu", BM_gated_combine, false, 8192},
      {"blocks/gated_combine_bwd_silu_colsum", BM_gated_combine, true, 8192},
      {"blocks/swiglu_fwd", BM_swiglu, false, 8192},
      {"blocks/swiglu_bwd", BM_swiglu, true, 8192},
  };
  for (const EwRow& r : ew)
    benchmark::RegisterBenchmark(r.name, r.fn, r.backward)
        ->Arg(r.width)
        ->ArgName("width")
        ->UseManualTime()
        ->Iterations(30)
        ->Unit(benchmark::kMicrosecond);
  return true;
}();

}  // namespace
}  // namespace gecko::bench
