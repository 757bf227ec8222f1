// train_tiny: trains a small Gecko language model on a synthetic long-range task and prints
// step, loss and tokens/s. The loss must fall well below chance, which needs memory beyond the
// attention window.
//
// Task (associative recall across chunks). Each sequence has 4 chunks of C tokens. Chunk 0
// holds `pairs` key/value pairs (k1 v1 k2 v2 ...) followed by filler; chunks 1 and 2 are
// filler; chunk 3 asks for the values: "? k" and the model must answer v at the next position.
// A query in chunk 3 sees chunks 2 and 3 through sliding chunk attention, so the pairs are
// visible only through the adaptive working memory (and, weakly, the EMA). Chance loss is
// log(number of values).
//
// Model: embedding -> `blocks` Gecko blocks -> timestep decay norm -> output projection;
// cross-entropy on the answer positions; AdamW.
// With a GPU, the blocks' forward and backward run on it (the CUDA block, fp32) at a larger size
// (D = 128, chunk 64: the CUDA working memory takes chunks of 64k); the embedding, the final norm,
// the output projection, the loss and AdamW stay on the host (they are a few percent of the work
// at this size). Without a GPU, everything runs on the CPU reference backend (double) at a toy size.
//
//   usage: gecko_train_tiny [steps=300] [seed=1]      (GECKO_FORCE_CPU=1: the CPU backend)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gecko/gecko.hpp"
#include "gecko/layers/cuda/block.cuh"

using namespace gecko;
using layers::GeckoConfig;
using layers::ParameterSet;

namespace {

struct Task {
  int keys = 8, values = 8, pairs = 2;
  int vocab() const { return keys + values + 2; }  // + filler + query marker
  int filler() const { return keys + values; }
  int query() const { return keys + values + 1; }
};

// One batch: tokens [B, L], and targets (-1 = no loss at this position).
void make_batch(const Task& task, std::int64_t B, std::int64_t C, std::mt19937_64& rng, std::vector<int>& tokens,
                std::vector<int>& targets) {
  const std::int64_t L = 4 * C;
  tokens.assign(B * L, task.filler());
  targets.assign(B * L, -1);
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<int> ks(task.keys);
    for (int i = 0; i < task.keys; ++i) ks[i] = i;
    std::shuffle(ks.begin(), ks.end(), rng);
    std::vector<int> vs(task.pairs);
    for (int i = 0; i < task.pairs; ++i) vs[i] = task.keys + static_cast<int>(rng() % task.values);
    int* row = tokens.data() + b * L;
    for (int i = 0; i < task.pairs; ++i) {
      row[2 * i] = ks[i];
      row[2 * i + 1] = vs[i];
    }
    // Queries in the last chunk, in random order: "? k v".
    std::vector<int> order(task.pairs);
    for (int i = 0; i < task.pairs; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::int64_t pos = 3 * C;
    for (int i : order) {
      row[pos] = task.query();
      row[pos + 1] = ks[i];
      row[pos + 2] = vs[i];
      targets[b * L + pos + 1] = vs[i];  // predicted from the key's position
      pos += 3;
    }
  }
}

// AdamW over every tensor of a ParameterSet (decoupled weight decay on matrices only).
struct AdamW {
  double lr = 3e-3, beta1 = 0.9, beta2 = 0.98, eps = 1e-8, weight_decay = 0.01;
  int step = 0;
  ParameterSet m, v;
  void init(const ParameterSet& p) {
    m = p.zeros_like();
    v = p.zeros_like();
  }
  void update(ParameterSet& p, const ParameterSet& g) {
    ++step;
    const double c1 = 1.0 - std::pow(beta1, step), c2 = 1.0 - std::pow(beta2, step);
    for (const auto& name : p.names()) {
      auto& w = p.find(name)->data;
      const auto& gr = g.find(name)->data;
      auto& mm = m.find(name)->data;
      auto& vv = v.find(name)->data;
      const bool decay = p.find(name)->shape.size() == 2 && name.find(".weight") != std::string::npos;
      for (std::size_t i = 0; i < w.size(); ++i) {
        mm[i] = beta1 * mm[i] + (1 - beta1) * gr[i];
        vv[i] = beta2 * vv[i] + (1 - beta2) * gr[i] * gr[i];
        if (decay) w[i] -= lr * weight_decay * w[i];
        w[i] -= lr * (mm[i] / c1) / (std::sqrt(vv[i] / c2) + eps);
      }
    }
  }
};

// The blocks on the GPU in fp32: per block its parameters, gradients and activation region; one
// shared workspace. forward() keeps every block's input for backward().
struct GpuBlocks {
  using T = float;
  linear::cuda::Context ctx;
  std::vector<layers::cuda::DeviceParameters<T>> params;
  std::vector<layers::cuda::DeviceGradients> grads;
  std::vector<DeviceBuffer<T>> xs;  // block inputs, then the last block's output
  std::vector<DeviceBuffer<char>> acts;
  DeviceBuffer<char> ws;
  DeviceBuffer<T> dbuf[2];
  layers::cuda::BlockPlan plan;
  std::int64_t B = 0, L = 0, D = 0;

  void init(const GeckoConfig& c, int blocks, std::int64_t b, std::int64_t l) {
    B = b;
    L = l;
    D = c.model_dim;
    throw_if_error(ctx.init());
    params.resize(blocks);
    grads.resize(blocks);
    xs.resize(blocks + 1);
    acts.resize(blocks);
    const auto like = layers::block::make_parameters(c);
    for (int i = 0; i <= blocks; ++i) xs[i].resize(static_cast<std::size_t>(B * L * D));
    for (auto& d : dbuf) d.resize(static_cast<std::size_t>(B * L * D));
    for (int i = 0; i < blocks; ++i) {
      throw_if_error(params[i].upload(like));
      throw_if_error(grads[i].allocate(like));
    }
    layers::cuda::BlockCall<T> call;
    call.x = TensorView<const T>::device(xs[0].data(), {B, L, D});
    throw_if_error(layers::cuda::block_plan(ctx, c, params[0], call, plan));
    for (auto& a : acts) a.resize(plan.activation_bytes);
    ws.resize(plan.workspace_bytes);
  }
  layers::cuda::BlockCall<T> call(int i) const {
    layers::cuda::BlockCall<T> c;
    c.x = TensorView<const T>::device(xs[i].data(), {B, L, D});
    return c;
  }
  // x (double, [B, L, D]) through every block with the given per-block parameters; returns the output.
  std::vector<double> forward(const GeckoConfig& c, const std::vector<ParameterSet>& bp, const std::vector<double>& x) {
    std::vector<T> h(x.begin(), x.end());
    xs[0].upload(h);
    for (std::size_t i = 0; i < bp.size(); ++i) {
      throw_if_error(params[i].upload(bp[i]));
      throw_if_error(layers::cuda::block_forward(ctx, c, params[i], call(static_cast<int>(i)),
                                                 TensorView<T>::device(xs[i + 1].data(), {B, L, D}), acts[i].data(),
                                                 acts[i].size(), ws.data(), ws.size(), nullptr));
    }
    const auto out = xs[bp.size()].download();
    return std::vector<double>(out.begin(), out.end());
  }
  // From d(output) back to d(input); block i's parameter gradients land in g[i].
  std::vector<double> backward(const GeckoConfig& c, const std::vector<double>& dout, std::vector<ParameterSet>& g) {
    std::vector<T> h(dout.begin(), dout.end());
    dbuf[0].upload(h);
    int cur = 0;
    for (int i = static_cast<int>(g.size()) - 1; i >= 0; --i) {
      throw_if_error(layers::cuda::block_backward(ctx, c, params[i], grads[i], call(i),
                                                  TensorView<const T>::device(dbuf[cur].data(), {B, L, D}),
                                                  TensorView<T>::device(dbuf[1 - cur].data(), {B, L, D}),
                                                  acts[i].data(), acts[i].size(), ws.data(), ws.size(), nullptr));
      throw_if_error(grads[i].download(g[i]));
      cur = 1 - cur;
    }
    const auto dx = dbuf[cur].download();
    return std::vector<double>(dx.begin(), dx.end());
  }
};

struct Model {
  GeckoConfig cfg;
  int blocks = 2;
  GpuBlocks* gpu = nullptr;  // set: the blocks run on the GPU
  ParameterSet params;  // "embed.weight" [V, D], "blocks.i.<block names>", "final_norm.weight/bias", "output.weight"

  void build(int vocab, std::uint64_t seed) {
    params = ParameterSet();
    const std::int64_t D = cfg.model_dim;
    params.add("embed.weight", {vocab, D});
    for (int i = 0; i < blocks; ++i)
      for (const auto& s : layers::block::parameter_specs(cfg)) params.add(prefix(i) + s.name, s.shape);
    params.add("final_norm.weight", {D});
    params.add("final_norm.bias", {D});
    params.add("output.weight", {vocab, D});
    // The blocks' own init, then N(0, 1/D) for the embedding and the output projection.
    for (int i = 0; i < blocks; ++i) {
      auto b = layers::block::make_parameters(cfg);
      layers::init_parameters(b, seed + i);
      for (const auto& n : b.names()) params.find(prefix(i) + n)->data = b.find(n)->data;
    }
    std::mt19937_64 rng(seed + 100);
    std::normal_distribution<double> d(0.0, 1.0 / std::sqrt(static_cast<double>(D)));
    for (auto& e : params.find("embed.weight")->data) e = d(rng);
    for (auto& e : params.find("output.weight")->data) e = d(rng);
  }
  static std::string prefix(int i) { return "blocks." + std::to_string(i) + "."; }

  // The parameters of block i as their own set (a copy: the CPU reference reads named tensors).
  ParameterSet block_params(const ParameterSet& all, int i) const {
    auto b = layers::block::make_parameters(cfg);
    for (const auto& n : b.names()) b.find(n)->data = all.find(prefix(i) + n)->data;
    return b;
  }

  // Forward and backward of the mean cross-entropy over the answer positions. Fills grads.
  double loss_and_grads(const std::vector<int>& tokens, const std::vector<int>& targets, std::int64_t B,
                        std::int64_t L, ParameterSet& grads) const {
    const std::int64_t D = cfg.model_dim, V = params.find("embed.weight")->shape[0];
    const auto& E = params.find("embed.weight")->data;
    std::vector<std::vector<double>> inputs(blocks + 1, std::vector<double>(B * L * D));
    for (std::int64_t i = 0; i < B * L; ++i)
      std::copy(E.begin() + tokens[i] * D, E.begin() + (tokens[i] + 1) * D, inputs[0].begin() + i * D);
    std::vector<ParameterSet> bp;
    for (int i = 0; i < blocks; ++i) bp.push_back(block_params(params, i));
    if (gpu) {
      inputs[blocks] = gpu->forward(cfg, bp, inputs[0]);
    } else {
      for (int i = 0; i < blocks; ++i) {
        layers::block::ForwardArgs<double> f;
        f.x = host_view(inputs[i], {B, L, D});
        f.out = host_view(inputs[i + 1], {B, L, D});
        throw_if_error(layers::block::cpu::forward(cfg, bp[i], f));
      }
    }
    // Final timestep decay norm.
    std::vector<double> hn(B * L * D);
    timestep_norm::ForwardArgs<double> tn;
    tn.groups = cfg.timenorm_num_groups;
    tn.beta1 = cfg.timenorm_beta1;
    tn.beta2 = cfg.timenorm_beta2;
    tn.eps = static_cast<float>(cfg.norm_eps);
    tn.x = host_view(inputs[blocks], {B, L, D});
    tn.weight = host_view(params.find("final_norm.weight")->data, {D});
    tn.bias = host_view(params.find("final_norm.bias")->data, {D});
    tn.y = host_view(hn, {B, L, D});
    throw_if_error(timestep_norm::cpu::forward(tn));
    // Logits and loss on the answer rows only.
    const auto& W = params.find("output.weight")->data;
    std::vector<double> dhn(B * L * D, 0.0), dW(V * D, 0.0), logits(V), dlogits(V);
    int count = 0;
    for (int t : targets) count += t >= 0;
    double loss = 0;
    for (std::int64_t i = 0; i < B * L; ++i) {
      if (targets[i] < 0) continue;
      layers::dense::linear(hn.data() + i * D, 1, D, W.data(), nullptr, V, logits.data());
      const double mx = *std::max_element(logits.begin(), logits.end());
      double z = 0;
      for (double l : logits) z += std::exp(l - mx);
      loss += (std::log(z) + mx - logits[targets[i]]) / count;
      for (std::int64_t v = 0; v < V; ++v) dlogits[v] = (std::exp(logits[v] - mx) / z - (v == targets[i])) / count;
      std::vector<double> dWi(V * D);
      layers::dense::linear_backward(hn.data() + i * D, 1, D, W.data(), V, dlogits.data(), dhn.data() + i * D,
                                     dWi.data(), nullptr);
      for (std::int64_t k = 0; k < V * D; ++k) dW[k] += dWi[k];
    }
    grads.find("output.weight")->data = dW;
    // Back through the norm and the blocks.
    std::vector<double> dx(B * L * D);
    timestep_norm::BackwardArgs<double> tb;
    tb.groups = tn.groups;
    tb.beta1 = tn.beta1;
    tb.beta2 = tn.beta2;
    tb.eps = tn.eps;
    tb.x = tn.x;
    tb.weight = tn.weight;
    tb.dy = host_view(dhn, {B, L, D});
    tb.dx = host_view(dx, {B, L, D});
    tb.dweight = host_view(grads.find("final_norm.weight")->data, {D});
    tb.dbias = host_view(grads.find("final_norm.bias")->data, {D});
    throw_if_error(timestep_norm::cpu::backward(tb));
    if (gpu) {
      std::vector<ParameterSet> g;
      for (int i = 0; i < blocks; ++i) g.push_back(layers::block::make_parameters(cfg));
      dx = gpu->backward(cfg, dx, g);
      for (int i = 0; i < blocks; ++i)
        for (const auto& n : g[i].names()) grads.find(prefix(i) + n)->data = g[i].find(n)->data;
    }
    for (int i = blocks - 1; i >= 0 && !gpu; --i) {
      auto g = layers::block::make_parameters(cfg);
      std::vector<double> dxi(B * L * D);
      layers::block::BackwardArgs<double> bb;
      bb.x = host_view(inputs[i], {B, L, D});
      bb.dout = host_view(dx, {B, L, D});
      bb.dx = host_view(dxi, {B, L, D});
      throw_if_error(layers::block::cpu::backward(cfg, bp[i], bb, g));
      for (const auto& n : g.names()) grads.find(prefix(i) + n)->data = g.find(n)->data;
      dx.swap(dxi);
    }
    auto& dE = grads.find("embed.weight")->data;
    std::fill(dE.begin(), dE.end(), 0.0);
    for (std::int64_t i = 0; i < B * L; ++i)
      for (std::int64_t k = 0; k < D; ++k) dE[tokens[i] * D + k] += dx[i * D + k];
    return loss;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  const std::uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  Task task;
  Model model;
  GeckoConfig& c = model.cfg;
  const bool gpu = cuda_device_available() && std::getenv("GECKO_FORCE_CPU") == nullptr;
  // GPU: heads of 64 and chunks of 64 (the CUDA working memory's smallest); CPU: a toy size.
  c.model_dim = gpu ? 128 : 32;
  c.z_dim = gpu ? 128 : 32;
  c.value_dim = gpu ? 128 : 32;
  c.num_heads = 2;
  c.cema_ndim = 4;
  c.chunk_size = gpu ? 64 : 8;
  c.timenorm_num_groups = 4;
  c.timenorm_beta1 = 0.99;
  c.timenorm_beta2 = 0.999;
  c.ffn_hidden_dim = gpu ? 256 : 64;
  c.rope_base = 10000.0;
  model.blocks = 2;
  const std::int64_t B = 16, C = c.chunk_size, L = 4 * C;
  model.build(task.vocab(), seed);
  GpuBlocks blocks_on_gpu;
  if (gpu) {
    blocks_on_gpu.init(c, model.blocks, B, L);
    model.gpu = &blocks_on_gpu;
  }
  AdamW opt;
  opt.init(model.params);
  std::printf("backend: %s. Gecko LM: %d blocks, D=%lld, %lld heads, chunk %lld; %lld parameters\n",
              gpu ? "CUDA blocks (fp32); embedding, head, loss, AdamW on the host" : "CPU reference (double)",
              model.blocks, static_cast<long long>(c.model_dim), static_cast<long long>(c.num_heads),
              static_cast<long long>(C), static_cast<long long>(model.params.numel()));
  std::printf("task: recall %d key/value pairs from chunk 0 in chunk 3 (attention sees chunks 2-3 only); "
              "chance loss = ln(%d) = %.3f\n",
              task.pairs, task.values, std::log(static_cast<double>(task.values)));
  std::mt19937_64 rng(seed);
  std::vector<int> tokens, targets;
  auto grads = model.params.zeros_like();
  double avg = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 1; step <= steps; ++step) {
    make_batch(task, B, C, rng, tokens, targets);
    const double loss = model.loss_and_grads(tokens, targets, B, L, grads);
    opt.update(model.params, grads);
    avg = step == 1 ? loss : 0.9 * avg + 0.1 * loss;
    if (step % 10 == 0 || step == 1) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("step %4d  loss %.4f  (avg %.4f)  %.0f tokens/s\n", step, loss, avg, step * B * L / secs);
      std::fflush(stdout);
    }
  }
  std::printf("final average loss %.4f vs chance %.4f: %s\n", avg, std::log(static_cast<double>(task.values)),
              avg < 0.5 * std::log(static_cast<double>(task.values)) ? "learned (well below chance)" : "not learned");
  return 0;
}
