// gecko demo: a Gecko block forward and backward and a streamed decode: on the GPU at the 7B
// shapes when one is present, otherwise on the CPU reference backend at a small size; it says
// which it used.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gecko/gecko_cuda.cuh"

using namespace gecko;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

double sum_squares(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return s;
}

// The CPU backend: one Gecko block (MEGA layer + normalized feed-forward) at a small size, forward
// and backward in double, one SGD step, and the same sequence decoded token by token through the
// streaming state.
int run_cpu() {
  layers::GeckoConfig cfg;  // the 7B layout scaled down: 2 heads, 4 chunks of 32 tokens
  cfg.model_dim = 128;
  cfg.z_dim = 64;
  cfg.value_dim = 128;
  cfg.num_heads = 2;
  cfg.cema_ndim = 4;
  cfg.chunk_size = 32;
  cfg.timenorm_num_groups = 4;
  cfg.ffn_hidden_dim = 256;
  cfg.rope_base = 10000.0;
  const std::int64_t B = 2, L = 4 * cfg.chunk_size, D = cfg.model_dim;
  std::printf("backend: CPU reference (no CUDA device found)\n");
  std::printf("Gecko block: D=%lld, %lld heads (dz=%lld, dv=%lld), CEMA N=%lld, chunk %lld, FFN %lld; "
              "batch %lld x %lld tokens, two documents in row 1\n",
              static_cast<long long>(D), static_cast<long long>(cfg.num_heads),
              static_cast<long long>(cfg.z_head_dim()), static_cast<long long>(cfg.v_head_dim()),
              static_cast<long long>(cfg.cema_ndim), static_cast<long long>(cfg.chunk_size),
              static_cast<long long>(cfg.ffn_hidden_dim), static_cast<long long>(B), static_cast<long long>(L));

  auto params = layers::block::make_parameters(cfg);
  layers::init_parameters(params, 2026);
  std::printf("parameters: %zu tensors, %lld values (\"mega.wz.weight\", \"nffn.fc1.weight\", ...)\n", params.size(),
              static_cast<long long>(params.numel()));

  const auto xf = random_floats(B * L * D, 1), target = random_floats(B * L * D, 2);
  std::vector<double> x(xf.begin(), xf.end());
  std::vector<std::uint8_t> bos(B * L, 0);
  std::vector<std::int64_t> seg(B * L, 0);
  bos[0] = bos[L] = bos[L + 77] = 1;  // row 1 holds a second document from token 77 on
  for (std::int64_t t = 77; t < L; ++t) seg[L + t] = 1;

  // loss = mean over tokens of 0.5 |out - target|^2 / D: a regression stand-in for a training loss.
  std::vector<double> out(B * L * D), dout(B * L * D), dx(B * L * D);
  auto loss_of = [&](const layers::ParameterSet& ps) {
    layers::block::ForwardArgs<double> f;
    f.x = host_view(x, {B, L, D});
    f.bos_mask = host_view(bos, {B, L});
    f.segment_idx = host_view(seg, {B, L});
    f.out = host_view(out, {B, L, D});
    throw_if_error(layers::block::cpu::forward(cfg, ps, f));
    double loss = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      const double e = out[i] - target[i];
      loss += 0.5 * e * e;
      dout[i] = e / static_cast<double>(B * L * D);
    }
    return loss / static_cast<double>(B * L * D);
  };

  auto t0 = std::chrono::steady_clock::now();
  const double loss0 = loss_of(params);
  const double fwd_s = seconds_since(t0);
  std::printf("forward:  %8.1f ms   loss %.6f   mean(out^2) %.4f\n", fwd_s * 1e3, loss0,
              sum_squares(out) / out.size());

  auto grads = params.zeros_like();
  layers::block::BackwardArgs<double> g;
  g.x = host_view(x, {B, L, D});
  g.bos_mask = host_view(bos, {B, L});
  g.segment_idx = host_view(seg, {B, L});
  g.dout = host_view(dout, {B, L, D});
  g.dx = host_view(dx, {B, L, D});
  t0 = std::chrono::steady_clock::now();
  throw_if_error(layers::block::cpu::backward(cfg, params, g, grads));
  const double bwd_s = seconds_since(t0);
  double gnorm = 0;
  for (const auto& n : grads.names()) gnorm += sum_squares(grads.find(n)->data);
  std::printf("backward: %8.1f ms   |grad params| %.4e   |grad x| %.4e   (recomputes the forward)\n", bwd_s * 1e3,
              std::sqrt(gnorm), std::sqrt(sum_squares(dx)));
  for (const char* n : {"mega.wz.weight", "mega.gamma", "mega.cema.alpha", "mega.timenorm.weight", "nffn.fc2.weight"})
    std::printf("          |grad %-22s| %.4e\n", n, std::sqrt(sum_squares(grads.find(n)->data)));

  // One plain SGD step along the gradient: the loss must go down.
  auto stepped = params;
  const double lr = 0.5;
  for (const auto& n : stepped.names()) {
    auto& p = stepped.find(n)->data;
    const auto& d = grads.find(n)->data;
    for (std::size_t i = 0; i < p.size(); ++i) p[i] -= lr * d[i];
  }
  const double loss1 = loss_of(stepped);
  std::printf("SGD step (lr %.1f): loss %.6f -> %.6f (%s)\n", lr, loss0, loss1, loss1 < loss0 ? "down" : "NOT down");

  // Streaming: the prompt's first 2 chunks in one call, then one token per call through the State,
  // in float storage. Its outputs match the one-call forward and the cache stays bounded.
  loss_of(params);  // out = the one-call result with the initial parameters
  std::vector<float> xs(xf), outs(B * L * D);
  layers::block::State state;
  std::int64_t max_cached = 0;
  t0 = std::chrono::steady_clock::now();
  for (std::int64_t pos = 0; pos < L;) {
    const std::int64_t n = pos == 0 ? 2 * cfg.chunk_size : 1;
    layers::block::ForwardArgs<float> f;
    f.x = TensorView<const float>::strided(xs.data() + pos * D, {B, n, D}, {L * D, D, 1}, Memory::kHost);
    f.bos_mask = TensorView<const std::uint8_t>::strided(bos.data() + pos, {B, n}, {L, 1}, Memory::kHost);
    f.segment_idx = TensorView<const std::int64_t>::strided(seg.data() + pos, {B, n}, {L, 1}, Memory::kHost);
    f.out = TensorView<float>::strided(outs.data() + pos * D, {B, n, D}, {L * D, D, 1}, Memory::kHost);
    throw_if_error(layers::block::cpu::forward(cfg, params, f, &state));
    max_cached = std::max(max_cached, state.cached);
    pos += n;
  }
  const double dec_s = seconds_since(t0);
  double diff = 0;
  for (std::size_t i = 0; i < out.size(); ++i) diff = std::max(diff, std::fabs(outs[i] - out[i]));
  std::printf("decode:   %8.1f ms   prefix of %lld tokens + %lld single-token calls; max |streamed - one call| "
              "%.2e (float storage), cache <= %lld tokens\n",
              dec_s * 1e3, static_cast<long long>(2 * cfg.chunk_size), static_cast<long long>(L - 2 * cfg.chunk_size),
              diff, static_cast<long long>(max_cached));
  return loss1 < loss0 && diff < 1e-4 ? 0 : 1;
}

// The GPU backend: one Gecko block at the 7B shapes in bf16 (random weights): a training step
// (forward + backward with every parameter gradient) at 4096 tokens, then the same tokens streamed
// through BlockStream (one chunk of prefill, then one token per call) and compared with the
// one-call forward.
int run_gpu() {
  using T = __nv_bfloat16;
  const DeviceInfo* dev = nullptr;
  throw_if_error(current_device_info(&dev));
  const layers::GeckoConfig cfg;  // the 7B defaults
  const std::int64_t B = 1, L = 2 * cfg.chunk_size, D = cfg.model_dim, C = cfg.chunk_size;
  std::printf("backend: CUDA on %s (%d SMs), bf16\n", dev->name, dev->sm_count);
  std::printf("Gecko block at the 7B shapes: D=%lld, %lld heads (dz=%lld, dv=%lld), chunk %lld, FFN %lld; "
              "%lld tokens\n",
              static_cast<long long>(D), static_cast<long long>(cfg.num_heads),
              static_cast<long long>(cfg.z_head_dim()), static_cast<long long>(cfg.v_head_dim()),
              static_cast<long long>(C), static_cast<long long>(cfg.ffn_hidden_dim), static_cast<long long>(L));
  auto host = layers::block::make_parameters(cfg);
  layers::init_parameters(host, 2026);
  linear::cuda::Context ctx;
  throw_if_error(ctx.init());
  layers::cuda::DeviceParameters<T> params;
  throw_if_error(params.upload(host));
  layers::cuda::DeviceGradients grads;
  throw_if_error(grads.allocate(host));

  const auto xf = random_floats(static_cast<std::size_t>(B * L * D), 1);
  std::vector<T> xh(xf.size());
  for (std::size_t i = 0; i < xf.size(); ++i) xh[i] = from_float<T>(xf[i]);
  DeviceBuffer<T> x, out(xh.size()), dx(xh.size()), streamed(xh.size());
  x.upload(xh);
  layers::cuda::BlockCall<T> call;
  call.x = x.view({B, L, D});
  layers::cuda::BlockPlan plan;
  throw_if_error(layers::cuda::block_plan(ctx, cfg, params, call, plan));
  DeviceBuffer<char> act(plan.activation_bytes), ws(plan.workspace_bytes);
  const auto step = [&] {
    throw_if_error(layers::cuda::block_forward(ctx, cfg, params, call, out.view({B, L, D}), act.data(), act.size(),
                                               ws.data(), ws.size(), nullptr));
    throw_if_error(layers::cuda::block_backward(ctx, cfg, params, grads, call,
                                                TensorView<const T>::device(x.data(), {B, L, D}), dx.view({B, L, D}),
                                                act.data(), act.size(), ws.data(), ws.size(), nullptr));
  };
  step();  // warm-up: cuBLASLt plans
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  step();
  cudaEventRecord(b);
  throw_if_error(cuda_status(cudaEventSynchronize(b), "sync"));
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  std::printf("training step (forward + backward, all parameter gradients): %.2f ms, %.0f tokens/s; "
              "activations %.2f GiB, workspace %.2f GiB\n",
              ms, static_cast<double>(B * L) / (ms * 1e-3), plan.activation_bytes / 1073741824.0,
              plan.workspace_bytes / 1073741824.0);

  // Streaming: chunk 0 as one prefill call, then chunk 1 one token per call.
  layers::cuda::BlockStream<T> stream;
  throw_if_error(stream.init(cfg, B));
  const auto piece = [&](DeviceBuffer<T>& buf, std::int64_t t0, std::int64_t n) {
    return TensorView<T>::device(buf.data() + t0 * D, {B, n, D});
  };
  throw_if_error(stream.forward(ctx, params, piece(x, 0, C), {}, piece(streamed, 0, C), nullptr));
  throw_if_error(cuda_status(cudaDeviceSynchronize(), "sync"));
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t t = C; t < L; ++t)
    throw_if_error(stream.forward(ctx, params, piece(x, t, 1), {}, piece(streamed, t, 1), nullptr));
  throw_if_error(cuda_status(cudaDeviceSynchronize(), "sync"));
  const double per_token_ms = seconds_since(t0) * 1e3 / static_cast<double>(L - C);
  const auto full = out.download(), part = streamed.download();
  double num = 0, den = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    const double d = to_double(part[i]) - to_double(full[i]);
    num += d * d;
    den += to_double(full[i]) * to_double(full[i]);
  }
  const double rel = std::sqrt(num / std::max(den, 1e-300));
  std::printf("streaming: %lld-token prefill + %lld one-token decode steps, %.3f ms per token; state %.1f MiB; "
              "streamed vs one-call output: relative error %.2e (bf16)\n",
              static_cast<long long>(C), static_cast<long long>(L - C), per_token_ms,
              stream.state_bytes() / 1048576.0, rel);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return rel < 2e-2 ? 0 : 1;
}

}  // namespace

int main() {
  try {
    return cuda_device_available() ? run_gpu() : run_cpu();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo failed: %s\n", e.what());
    return 1;
  }
}
