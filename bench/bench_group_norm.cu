// Group RMSNorm / LayerNorm at B*L = 16384 tokens x 4096 channels.
#include "bench_common.cuh"
#include "gecko/ops/group_norm/launch.cuh"

namespace gecko::bench {
namespace {

template <class T>
void BM_group_norm(benchmark::State& state, group_norm::Kind kind, bool backward) {
  const std::int64_t rows = state.range(0), C = state.range(1), G = state.range(2);
  const std::size_t n = static_cast<std::size_t>(rows * C);
  const double tensor_bytes = static_cast<double>(n) * sizeof(T);
  const int rot = rotation_count(tensor_bytes * (backward ? 3 : 2));
  std::vector<DeviceBuffer<T>> x(rot), dy(rot);
  for (int i = 0; i < rot; ++i) {
    x[i].upload(std::vector<T>(n, from_float<T>(0.5f + 0.01f * i)));
    if (backward) dy[i].upload(std::vector<T>(n, from_float<T>(0.25f)));
  }
  // Non-constant rows so the statistics are not degenerate.
  std::vector<T> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = from_float<T>(static_cast<float>((i * 2654435761u) % 1000) / 500.f - 1.f);
  x[0].upload(host);
  DeviceBuffer<T> w(C), b(C), out(n);
  w.zero();
  b.zero();
  DeviceBuffer<float> dw(C), db(C);
  const bool layer = kind == group_norm::Kind::kLayer;
  if (!backward) {
    group_norm::ForwardArgs<T> f;
    f.kind = kind;
    f.groups = G;
    f.weight = w.view({C});
    if (layer) f.bias = b.view({C});
    f.y = out.view({rows, C});
    run_timed(
        state,
        [&](int i) {
          f.x = x[i].view({rows, C});
          throw_if_error(group_norm::cuda::forward(f, nullptr));
        },
        rot, {2 * tensor_bytes, 0});
  } else {
    group_norm::BackwardArgs<T> g;
    g.kind = kind;
    g.groups = G;
    g.weight = w.view({C});
    g.dweight = dw.view({C});
    if (layer) g.dbias = db.view({C});
    g.dx = out.view({rows, C});
    g.x = x[0].view({rows, C});
    g.dy = dy[0].view({rows, C});
    std::size_t ws_bytes = 0;
    throw_if_error(group_norm::cuda::backward_workspace_size(g, ws_bytes));
    DeviceBuffer<char> ws(ws_bytes);
    run_timed(
        state,
        [&](int i) {
          g.x = x[i].view({rows, C});
          g.dy = dy[i].view({rows, C});
          throw_if_error(group_norm::cuda::backward(g, ws.data(), ws_bytes, nullptr));
        },
        rot, {3 * tensor_bytes, 0});
  }
}

// Registered at static-initialization time: Google Benchmark's capture macro cannot name a
// function template.
const bool registered = [] {
  using group_norm::Kind;
  struct Row {
    const char* name;
    Kind kind;
    bool backward;
    void (*fn)(benchmark::State&, Kind, bool);
  };
  const Row rows[] = {
      {"group_norm/rms_fwd_bf16", Kind::kRms, false, &BM_group_norm<__nv_bfloat16>},
      {"group_norm/rms_bwd_bf16", Kind::kRms, true, &BM_group_norm<__nv_bfloat16>},
      {"group_norm/ln_fwd_bf16", Kind::kLayer, false, &BM_group_norm<__nv_bfloat16>},
      {"group_norm/ln_bwd_bf16", Kind::kLayer, true, &BM_group_norm<__nv_bfloat16>},
      {"group_norm/rms_fwd_fp32", Kind::kRms, false, &BM_group_norm<float>},
      {"group_norm/rms_bwd_fp32", Kind::kRms, true, &BM_group_norm<float>},
  };
  for (const Row& r : rows) {
    benchmark::RegisterBenchmark(r.name, r.fn, r.kind, r.backward)
        ->Args({16384, 4096, 1})
        ->Args({16384, 4096, 64})
        ->ArgNames({"rows", "C", "G"})
        ->UseManualTime()
        ->Iterations(30)
        ->Unit(benchmark::kMicrosecond);
  }
  return true;
}();

}  // namespace
}  // namespace gecko::bench
