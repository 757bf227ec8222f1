// Streaming inference through a Gecko block on the GPU: chunked prefill and token-by-token
// decoding with a state whose size does not depend on how many tokens went through.
//
// BlockStream<T> owns, on the device, what the MEGA layer carries between calls (mega/state.hpp
// is the same contract on the host): the timestep-norm statistics, the complex EMA state, the
// working memory and its log-normaliser, and the attention cache of the tokens the memory has not
// absorbed yet (at most 2C - 1: the previous chunk and the current one so far) as rotated keys,
// raw working-memory keys and values. The feed-forward has no state.
//
// Call rule (as the CPU stream): a call of L tokens at position p either stays inside one chunk
// (p mod C + L <= C; decoding is L = 1) or is a whole number of chunks starting at a chunk
// boundary (prefill). Document ids (segment_idx) are not supported on this path yet; bos_mask
// resets are.
//
// A stream can also run the MEGA layer alone (StreamLayers::kMega: out is the MEGA layer's output,
// the feed-forward is skipped), which is what the MEGA decode benchmark times.
//
// Decode steps can replay CUDA graphs (set_decode_graphs): the attention and the cache update then
// read the position and the cache length from a device DecodeCursor the step itself advances.
//
// Each call runs the block's forward (block.cuh) with the state views, then appends the call's
// keys and values to the cache in place; when the call ends a chunk the cache is cut to the last
// C tokens into the second cache buffer (one copy per chunk, not per token). Activations and
// workspace for a call are owned here and grow to the largest call seen (the only allocations);
// nothing is allocated or synchronized once they have.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "gecko/core/buffer.hpp"
#include "gecko/core/decode_cursor.hpp"
#include "gecko/layers/cuda/block.cuh"
#include "gecko/ops/rope/args.hpp"
#include "gecko/ops/sliding_chunk_attention/kernel_prep.cuh"  // Theta, rope_cos_sin

namespace gecko::layers::cuda {

namespace stream_kernels {

using i64 = std::int64_t;

// One cache of a [B, cap, H, d] layout to update: rows dst_row0 + i (i < n) <- old row
// old_row0 + i for i < n_old, else call row now_row0 + i - n_old of a dense [B, L, H, d] tensor,
// rotated (heads < n_rope) at position pos0 + its call row.
template <class T>
struct CacheJob {
  T* dst = nullptr;
  const T* old_rows = nullptr;
  const T* now = nullptr;
  i64 dst_sb = 0, old_sb = 0, now_sb = 0, total = 0;  // total: B * n * H * ceil(d / 2) pairs
  int d = 0, n_rope = 0;
};

template <class T>
struct CacheUpdate {
  CacheJob<T> job[3];  // rotated keys, raw working-memory keys, values
  int dst_row0 = 0, n = 0, old_row0 = 0, n_old = 0, now_row0 = 0, H = 0;
  i64 pos0 = 0;
  // Graph replay of an append (n_old = 0): dst_row0 and pos0 are the cursor's prev and position.
  const DecodeCursor* cursor = nullptr;
  sliding_chunk_attention::kernels::Theta theta{};
};

// All three caches of a call in one launch: blockIdx.y picks the cache; one thread per
// (b, i, h, element pair), grid-stride over x.
template <class T>
__global__ void cache_rows_kernel(const __grid_constant__ CacheUpdate<T> u) {
  const CacheJob<T>& c = u.job[blockIdx.y];
  const int d = c.d, pairs = (d + 1) / 2, H = u.H, n = u.n;
  const int dst_row0 = u.cursor ? static_cast<int>(u.cursor->prev) : u.dst_row0;
  const i64 pos0 = u.cursor ? u.cursor->position : u.pos0;
  for (i64 idx = blockIdx.x * static_cast<i64>(blockDim.x) + threadIdx.x; idx < c.total;
       idx += static_cast<i64>(gridDim.x) * blockDim.x) {
    const int pr = static_cast<int>(idx % pairs);
    i64 rest = idx / pairs;
    const int h = static_cast<int>(rest % H);
    rest /= H;
    const int i = static_cast<int>(rest % n);
    const int b = static_cast<int>(rest / n);
    const i64 col = static_cast<i64>(h) * d + 2 * pr;
    T* out = c.dst + b * c.dst_sb + static_cast<i64>(dst_row0 + i) * H * d + col;
    const bool has2 = 2 * pr + 1 < d;
    if (i < u.n_old) {
      const T* src = c.old_rows + b * c.old_sb + static_cast<i64>(u.old_row0 + i) * H * d + col;
      out[0] = src[0];
      if (has2) out[1] = src[1];
      continue;
    }
    const int r = u.now_row0 + i - u.n_old;
    const T* src = c.now + b * c.now_sb + static_cast<i64>(r) * H * d + col;
    if (h < c.n_rope) {
      const float x0 = to_float(src[0]), x1 = to_float(src[1]);
      float cs, sn;
      sliding_chunk_attention::kernels::rope_cos_sin(pos0 + r, u.theta.v[pr], cs, sn);
      out[0] = from_float<T>(x0 * cs - x1 * sn);
      out[1] = from_float<T>(x0 * sn + x1 * cs);
    } else {
      out[0] = src[0];
      if (has2) out[1] = src[1];
    }
  }
}

// The cursor of a graph-replayed step: set from the host's counters before the first replay after
// eager calls, advanced by the step itself as its last launch.
template <int kUnused = 0>
__global__ void cursor_set_kernel(DecodeCursor* c, i64 position, i64 prev) {
  c->position = position;
  c->prev = prev;
}
template <int kUnused = 0>
__global__ void cursor_advance_kernel(DecodeCursor* c, i64 n) {
  c->position += n;
  c->prev += n;
}

}  // namespace stream_kernels

// Which layers a stream runs: the whole block, or the MEGA layer alone.
using StreamLayers = BlockLayers;

namespace stream_detail {

struct GraphExecDestroy {
  void operator()(cudaGraphExec_t e) const { cudaGraphExecDestroy(e); }
};
struct GraphDestroy {
  void operator()(cudaGraph_t g) const { cudaGraphDestroy(g); }
};
struct StreamDestroy {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
using GraphExec = std::unique_ptr<CUgraphExec_st, GraphExecDestroy>;

// What a decode graph bakes in: the call's length, the ping-pong buffers (timestep norm, cache),
// and every address it reads or writes that the caller owns.
using GraphKey = std::tuple<std::int64_t, int, int, const void*, const void*, const void*, const void*, const void*>;

}  // namespace stream_detail

template <class T>
class BlockStream {
  using GraphExec = stream_detail::GraphExec;
  using GraphKey = stream_detail::GraphKey;
  using StreamDestroy = stream_detail::StreamDestroy;
  using GraphDestroy = stream_detail::GraphDestroy;

 public:
  // Allocates the state of `batch` sequences for config c (fixed size whatever the stream length).
  Status init(const GeckoConfig& c, std::int64_t batch, StreamLayers layers = StreamLayers::kBlock) {
    GECKO_RETURN_IF_ERROR(validate(c));
    if (batch < 1) return invalid_argument("BlockStream::init: batch must be >= 1, got " + std::to_string(batch));
    if (c.timenorm_beta_precision != timestep_norm::BetaPrecision::kExact)
      return unsupported("the GPU block computes the timestep norm with exact beta (config.timenorm_beta_precision)");
    if (c.rope(0).enabled() && c.z_head_dim() / 2 > sliding_chunk_attention::kernels::kMaxPairs)
      return unsupported("BlockStream: RoPE on heads wider than " +
                         std::to_string(2 * sliding_chunk_attention::kernels::kMaxPairs));
    c_ = c;
    B_ = batch;
    layers_ = layers;
    sizes_.clear();
    const std::size_t B = static_cast<std::size_t>(batch), G = c.timenorm_num_groups, D = c.model_dim;
    const std::size_t H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim(), cap = 2 * c.chunk_size;
    try {
      for (int i = 0; i < 2; ++i) {
        count_[i].resize(B);
        mean_[i].resize(B * G);
        var_[i].resize(B * G);
        sca_k_[i].resize(B * cap * H * dz);
        awm_k_[i].resize(B * cap * H * dz);
        v_[i].resize(B * cap * H * dv);
      }
      cema_h_.resize(B * D * c.cema_ndim * 2);
      memory_.resize(B * H * dz * dv);
      log_norm_.resize(B * H * dz);
    } catch (const Error& e) {
      return Status(StatusCode::kCudaError, std::string("BlockStream::init: ") + e.what());
    }
    reset();
    return Status::success();
  }

  // Starts a new stream (the next call is at position 0; old state contents are never read).
  void reset() {
    position_ = cached_ = 0;
    has_memory_ = false;
    cur_ = tn_ = 0;
    cursor_synced_ = false;
  }

  // Decoding from CUDA graphs (16-bit T; off by default). When on, a call of 1 to 4 tokens that
  // stays inside a chunk without ending it, once the working memory exists, replays a graph of the
  // whole step instead of launching its kernels one by one: the attention and the cache update read
  // the position and the cache length from a device cursor, so one graph serves every such step.
  // A graph is captured the second time a step of its shape comes (the first runs eagerly, so that
  // every lazily created GEMM plan exists before capture) and is keyed by the call's length, the
  // ping-pong buffers in use and the addresses of x, out, bos_mask, the parameters and the context:
  // call clear_decode_graphs() after freeing or reloading any of those. Steps that end a chunk
  // (absorbing it into the memory) and all other calls run eagerly as before; both give the same
  // results up to the summation order of the attention's key blocks.
  Status set_decode_graphs(bool on) {
    if (on && std::is_same_v<T, float>)
      return unsupported("BlockStream: decode graphs need a 16-bit type (the fp32 attention has no decoding kernel)");
    graphs_on_ = on;
    return Status::success();
  }
  void clear_decode_graphs() { graphs_.clear(); }
  std::int64_t graph_steps() const { return graph_steps_; }  // steps replayed from a graph so far

  std::int64_t position() const { return position_; }
  std::int64_t cached() const { return cached_; }
  // Device bytes of the carried state (constant for the stream's life).
  std::size_t state_bytes() const {
    std::size_t n = cema_h_.size() * 4 + memory_.size() * 4 + log_norm_.size() * 4;
    for (int i = 0; i < 2; ++i)
      n += count_[i].size() * 8 + (mean_[i].size() + var_[i].size()) * 4 +
           (sca_k_[i].size() + awm_k_[i].size() + v_[i].size()) * sizeof(T);
    return n;
  }
  // Device bytes of activations and workspace held for calls (grows to the largest call).
  std::size_t scratch_bytes() const { return act_.size() + ws_.size(); }

  // out = block(x) (or the MEGA layer's output with StreamLayers::kMega), continuing the stream.
  // x, out: [B, L, D] dense device tensors; bos_mask [B, L] or empty.
  Status forward(linear::cuda::Context& ctx, const DeviceParameters<T>& P, const TensorView<const T>& x,
                 const TensorView<const std::uint8_t>& bos_mask, const TensorView<T>& out, cudaStream_t stream) {
    if (B_ == 0) return invalid_argument("BlockStream::forward: call init() first");
    if (x.empty() || x.rank != 3) return invalid_argument("x must be a [B, L, D] device tensor, got " + x.shape_string());
    GECKO_RETURN_IF_ERROR(check_memory(x, "x", Memory::kDevice));
    GECKO_RETURN_IF_ERROR(check_contiguous(x, "x"));
    const std::int64_t L = x.size(1), C = c_.chunk_size;
    if (x.size(0) != B_ || x.size(2) != c_.model_dim)
      return invalid_argument("x has shape " + x.shape_string() + ", expected [" + std::to_string(B_) + ", L, " +
                              std::to_string(c_.model_dim) + "] (the stream's batch and model_dim)");
    if (L < 1) return invalid_argument("x holds no tokens (L = 0)");
    GECKO_RETURN_IF_ERROR(check_shape(out, "out", {B_, L, c_.model_dim}));
    GECKO_RETURN_IF_ERROR(check_memory(out, "out", Memory::kDevice));
    GECKO_RETURN_IF_ERROR(check_contiguous(out, "out"));
    if (!bos_mask.empty()) {
      GECKO_RETURN_IF_ERROR(check_shape(bos_mask, "bos_mask", {B_, L}));
      GECKO_RETURN_IF_ERROR(check_memory(bos_mask, "bos_mask", Memory::kDevice));
      GECKO_RETURN_IF_ERROR(check_contiguous(bos_mask, "bos_mask"));
    }
    const std::int64_t in_chunk = position_ % C;
    if (!(in_chunk + L <= C || (in_chunk == 0 && L % C == 0)))
      return invalid_argument("a streaming call stays inside one chunk or is whole chunks from a chunk boundary: "
                              "position " + std::to_string(position_) + " (" + std::to_string(in_chunk) +
                              " into a chunk of C=" + std::to_string(C) + ") with L=" + std::to_string(L));

    const Dims d = Dims::of(c_, B_, L);
    const GraphKey gkey{L, tn_, cur_, x.data, out.data, bos_mask.data, &P, &ctx};
    const bool replayable = graphs_on_ && L <= sliding_chunk_attention::kernels::kDecodeRows && has_memory_ &&
                            position_ > 0 && in_chunk + L < C;  // inside the chunk, not ending it
    if (replayable && seen_.count(gkey)) return forward_graph(ctx, P, d, x, bos_mask, out, gkey, stream);
    if (replayable) {
      if (seen_.size() >= 64) seen_.clear();  // stay bounded, as the graphs do
      seen_.insert(gkey);
    }
    const StreamIO<T> so = views(cached_);
    const BlockInputs in{bos_mask, {}};
    GECKO_RETURN_IF_ERROR(reserve(ctx, P, d, x.data, in, out.data, so));
    Arena act(act_.data(), act_.size()), ws(ws_.data(), ws_.size());
    GECKO_RETURN_IF_ERROR(block_forward_impl<T>(ctx, c_, P, d, x.data, in, out.data, act, ws, stream, &so));
    GECKO_RETURN_IF_ERROR(update_cache(d, stream, nullptr));
    cursor_synced_ = false;
    step_done(L);
    return Status::success();
  }

 private:
  // Sizes the call (a measuring pass, once per call shape: decoding revisits the same few shapes) and
  // grows the owned regions if needed (which drops the graphs: they hold the old addresses).
  Status reserve(linear::cuda::Context& ctx, const DeviceParameters<T>& P, const Dims& d, const T* x,
                 const BlockInputs& in, T* out, const StreamIO<T>& so) {
    const SizeKey key{d.L, so.sca_k.empty() ? 0 : so.sca_k.size(1), has_memory_, position_ == 0, !in.bos_mask.empty()};
    auto known = sizes_.find(key);
    if (known == sizes_.end()) {
      auto ma = Arena::measure(), mw = Arena::measure();
      GECKO_RETURN_IF_ERROR(block_forward_impl<T>(ctx, c_, P, d, x, in, out, ma, mw, nullptr, &so));
      if (sizes_.size() >= 65536) sizes_.clear();  // unusual call mixes: stay bounded
      known = sizes_.emplace(key, std::make_pair(ma.peak(), mw.peak())).first;
    }
    try {
      if (known->second.first > act_.size()) {
        graphs_.clear();
        act_.resize(known->second.first);
      }
      if (known->second.second > ws_.size()) {
        graphs_.clear();
        ws_.resize(known->second.second);
      }
    } catch (const Error& e) {
      return Status(StatusCode::kCudaError, std::string("BlockStream: ") + e.what());
    }
    return Status::success();
  }

  // A step replayed from a graph (captured now if this key has none). The graph's views span the
  // largest cache a replayable step of L tokens sees (2C - 1 - L rows); the cursor says how much
  // of it is in use.
  Status forward_graph(linear::cuda::Context& ctx, const DeviceParameters<T>& P, const Dims& d,
                       const TensorView<const T>& x, const TensorView<const std::uint8_t>& bos_mask,
                       const TensorView<T>& out, const GraphKey& key, cudaStream_t stream) {
    if (cursor_.data() == nullptr) {
      try {
        cursor_ = DeviceBuffer<DecodeCursor>(1);
      } catch (const Error& e) {
        return Status(StatusCode::kCudaError, std::string("BlockStream: ") + e.what());
      }
    }
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      StreamIO<T> so = views(2 * c_.chunk_size - 1 - d.L);
      so.cursor = cursor_.data();
      const BlockInputs in{bos_mask, {}};
      GECKO_RETURN_IF_ERROR(reserve(ctx, P, d, x.data, in, out.data, so));
      GraphExec exec;
      GECKO_RETURN_IF_ERROR(capture(ctx, P, d, x.data, in, out.data, so, exec));
      if (graphs_.size() >= 16) graphs_.clear();  // callers cycling through many buffers: stay bounded
      it = graphs_.emplace(key, std::move(exec)).first;
    }
    if (!cursor_synced_) {
      stream_kernels::cursor_set_kernel<><<<1, 1, 0, stream>>>(cursor_.data(), position_, cached_);
      GECKO_RETURN_IF_ERROR(last_launch_status("BlockStream cursor"));
      cursor_synced_ = true;
    }
    GECKO_CUDA_RETURN(cudaGraphLaunch(it->second.get(), stream));
    ++graph_steps_;
    step_done(d.L);
    return Status::success();
  }

  // Records one step (block forward, cache append, cursor advance) into an executable graph, on a
  // stream of our own (the caller's may be the legacy default stream, which cannot capture).
  Status capture(linear::cuda::Context& ctx, const DeviceParameters<T>& P, const Dims& d, const T* x,
                 const BlockInputs& in, T* out, const StreamIO<T>& so, GraphExec& exec) {
    if (!capture_stream_) {
      cudaStream_t st = nullptr;
      GECKO_CUDA_RETURN(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      capture_stream_.reset(st);
    }
    cudaStream_t cs = capture_stream_.get();
    GECKO_CUDA_RETURN(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
    const Status recorded = record_step(ctx, P, d, x, in, out, so, cs);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(cs, &graph);  // ends the capture whatever happened
    std::unique_ptr<CUgraph_st, GraphDestroy> owned(graph);
    GECKO_RETURN_IF_ERROR(recorded);
    GECKO_CUDA_RETURN(ended);
    cudaGraphExec_t e = nullptr;
    GECKO_CUDA_RETURN(cudaGraphInstantiate(&e, graph, 0));
    exec.reset(e);
    return Status::success();
  }

  Status record_step(linear::cuda::Context& ctx, const DeviceParameters<T>& P, const Dims& d, const T* x,
                     const BlockInputs& in, T* out, const StreamIO<T>& so, cudaStream_t cs) {
    Arena act(act_.data(), act_.size()), ws(ws_.data(), ws_.size());
    GECKO_RETURN_IF_ERROR(block_forward_impl<T>(ctx, c_, P, d, x, in, out, act, ws, cs, &so));
    GECKO_RETURN_IF_ERROR(update_cache(d, cs, so.cursor));
    stream_kernels::cursor_advance_kernel<><<<1, 1, 0, cs>>>(cursor_.data(), d.L);
    return last_launch_status("BlockStream cursor advance");
  }

  StreamIO<T> views(std::int64_t P) const {
    const std::int64_t B = B_, G = c_.timenorm_num_groups, H = c_.num_heads, dz = c_.z_head_dim(), dv = c_.v_head_dim();
    const std::int64_t cap = 2 * c_.chunk_size;
    StreamIO<T> so;
    so.position = position_;
    so.fresh = position_ == 0;
    so.norm_count = TensorView<const std::int64_t>::device(count_[tn_].data(), {B});
    so.norm_mean = TensorView<const float>::device(mean_[tn_].data(), {B, G});
    so.norm_var = TensorView<const float>::device(var_[tn_].data(), {B, G});
    so.norm_count_out = TensorView<std::int64_t>::device(count_[1 - tn_].data(), {B});
    so.norm_mean_out = TensorView<float>::device(mean_[1 - tn_].data(), {B, G});
    so.norm_var_out = TensorView<float>::device(var_[1 - tn_].data(), {B, G});
    so.cema_h = TensorView<float>::device(cema_h_.data(), {B, c_.model_dim, c_.cema_ndim, 2});
    if (P > 0) {
      const auto cache = [&](const T* p, std::int64_t dd) {
        return TensorView<const T>::strided(p, {B, P, H, dd}, {cap * H * dd, H * dd, dd, 1}, Memory::kDevice);
      };
      so.sca_k = cache(sca_k_[cur_].data(), dz);
      so.awm_k = cache(awm_k_[cur_].data(), dz);
      so.v = cache(v_[cur_].data(), dv);
    }
    so.has_memory = has_memory_;
    so.memory = TensorView<float>::device(memory_.data(), {B, H, dz, dv});
    so.log_norm = TensorView<float>::device(log_norm_.data(), {B, H, dz});
    so.mega_only = layers_ == StreamLayers::kMega;
    return so;
  }

  // Appends the call's rotated keys, raw working-memory keys and values to the caches (in place), or
  // when the call ends a chunk writes the last min(P + L, C) rows of [cache ; call] into the other
  // buffers: one launch for the three caches. With a cursor (graph capture, an append) the kernel
  // reads the row and position from it.
  Status update_cache(const Dims& d, cudaStream_t stream, const DecodeCursor* cursor) {
    // The call's q/k/v views live at fixed places of the activation region.
    Arena again(act_.data(), act_.size());
    const auto s = BlockActivations<T>::carve(again, d, false);
    const std::int64_t L = d.L, C = c_.chunk_size, P = cached_, len = P + L, H = c_.num_heads;
    const std::int64_t cap = 2 * C;
    const bool ends = ends_chunk(L);
    const std::int64_t keep = kept_after(L);
    stream_kernels::CacheUpdate<T> u;
    u.H = static_cast<int>(H);
    u.pos0 = position_;
    u.cursor = cursor;
    if (!ends) {  // rows [P, P + L) in place
      u.dst_row0 = static_cast<int>(P);
      u.n = static_cast<int>(L);
    } else {
      const std::int64_t first = len - keep;
      u.n = static_cast<int>(keep);
      u.n_old = static_cast<int>(std::max<std::int64_t>(0, P - first));
      u.old_row0 = static_cast<int>(first);
      u.now_row0 = static_cast<int>(std::max<std::int64_t>(0, first - P));
    }
    const rope::RopeConfig rc = c_.rope(position_);
    const int dst = ends ? 1 - cur_ : cur_;
    struct Cache {
      DeviceBuffer<T>* buf;
      const T* now;
      std::int64_t dd;
      bool rotate;
    };
    const Cache caches[3] = {{sca_k_, s.k, d.dz, true}, {awm_k_, s.ak, d.dz, false}, {v_, s.v, d.dv, false}};
    std::int64_t most = 0;
    for (int j = 0; j < 3; ++j) {
      const Cache& k = caches[j];
      stream_kernels::CacheJob<T>& job = u.job[j];
      job.dst = k.buf[dst].data();
      job.old_rows = k.buf[cur_].data();
      job.now = k.now;
      job.dst_sb = job.old_sb = cap * H * k.dd;
      job.now_sb = L * H * k.dd;
      job.d = static_cast<int>(k.dd);
      job.total = B_ * u.n * H * ((k.dd + 1) / 2);
      if (k.rotate && rc.enabled()) {
        job.n_rope = rc.n_rope_heads;
        for (int i = 0; i < k.dd / 2; ++i) u.theta.v[i] = rope::inv_freq(rc.base, k.dd, i);
      }
      most = std::max(most, job.total);
    }
    if (most > 0) {
      const unsigned grid = static_cast<unsigned>(std::min<std::int64_t>((most + 255) / 256, 65536));
      stream_kernels::cache_rows_kernel<T><<<dim3(grid, 3), 256, 0, stream>>>(u);
      GECKO_RETURN_IF_ERROR(last_launch_status("BlockStream cache update"));
    }
    return Status::success();
  }

  // Whether a call of L tokens from here ends a chunk, and the cached tokens after it (the cache is
  // cut to the last C when it does).
  bool ends_chunk(std::int64_t L) const { return (position_ + L) % c_.chunk_size == 0; }
  std::int64_t kept_after(std::int64_t L) const {
    return ends_chunk(L) ? std::min(cached_ + L, c_.chunk_size) : cached_ + L;
  }

  // The host's side of a finished call of L tokens.
  void step_done(std::int64_t L) {
    if (ends_chunk(L)) cur_ = 1 - cur_;
    tn_ = 1 - tn_;
    has_memory_ = has_memory_ || position_ + L >= c_.chunk_size;  // the memory exists once a chunk completed
    cached_ = kept_after(L);
    position_ += L;
  }

  GeckoConfig c_;
  std::int64_t B_ = 0, position_ = 0, cached_ = 0;
  bool has_memory_ = false;
  StreamLayers layers_ = StreamLayers::kBlock;
  int cur_ = 0, tn_ = 0;
  DeviceBuffer<std::int64_t> count_[2];
  DeviceBuffer<float> mean_[2], var_[2];
  DeviceBuffer<T> sca_k_[2], awm_k_[2], v_[2];  // [B, 2C, H, d]
  DeviceBuffer<float> cema_h_, memory_, log_norm_;
  DeviceBuffer<char> act_, ws_;
  // Measured (activation, workspace) bytes per call shape: L, cached tokens, memory, fresh, bos.
  using SizeKey = std::tuple<std::int64_t, std::int64_t, bool, bool, bool>;
  std::map<SizeKey, std::pair<std::size_t, std::size_t>> sizes_;
  // Decode graphs: the device cursor, whether it holds the host's counters, the executables by key,
  // the keys seen once (captured on their second step), and the stream they are captured on.
  bool graphs_on_ = false, cursor_synced_ = false;
  std::int64_t graph_steps_ = 0;
  DeviceBuffer<DecodeCursor> cursor_;
  std::map<GraphKey, GraphExec> graphs_;
  std::set<GraphKey> seen_;
  std::unique_ptr<CUstream_st, StreamDestroy> capture_stream_;
};

}  // namespace gecko::layers::cuda
