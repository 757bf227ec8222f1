// Host launchers for the timestep decay normalization CUDA kernels: validation, tiling,
// workspace. Stream-ordered; never synchronizes or allocates. A forward of at most 8 tokens with
// groups of 32 to 256 channels (a multiple of 32) runs kernel_decode.cuh instead of the tiles; on
// sm_90 the forward of 16-byte rows and groups of 1..16 words runs kernel_rows.cuh.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cuda_runtime.h>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/launch_util.cuh"
#include "gecko/core/device.hpp"
#include "gecko/ops/timestep_norm/args.hpp"
#include "gecko/ops/timestep_norm/kernel.cuh"
#include "gecko/ops/timestep_norm/kernel_decode.cuh"
#include "gecko/ops/timestep_norm/kernel_rows.cuh"
#include "gecko/ops/timestep_norm/kernel_rows_backward.cuh"

namespace gecko::timestep_norm::cuda {

// What the CUDA forward saves for the CUDA backward (fp32): 8 bytes per (token, group) plus
// 8 per token, about 6% of one bf16 activation at the 7B shape.
struct Saved {
  TensorView<float> stats;       // [B, L, G, 2]: bias-corrected mean and rstd used at each step
  TensorView<float> correction;  // [B, L, 2]: 1 / (1 - beta1^c) and 1 / (1 - beta2^c) at each step
};

namespace detail {

using gecko::align_up;

struct Plan {
  kernels::Tiling tl{};
  int vec = 1;
  int rows_kv = 0;  // > 0: kernel_rows.cuh / kernel_rows_backward.cuh, groups of rows_kv 16-byte words
  int pitch = 0;
  std::size_t smem = 0;
  std::size_t flags_bytes = 0;  // ticket + flags: zeroed before every launch
  std::size_t agg_offset = 0, incl_offset = 0, partial_offset = 0, total = 0;
};

// Switches a forward plan to kernel_rows.cuh where it applies: an sm_90 device (bulk copies), the
// 16-byte path, groups of 1, 2, 4, 8 or 16 words, and a slab of at most 32 whole groups and 1 KiB
// per row whose 16-byte words divide the 256 threads. Tiles are 64 tokens. The workspace is
// planned for the device current at the size query: query it on the device that runs the call.
template <class T>
void plan_rows(Plan& pl) {
  kernels::Tiling& tl = pl.tl;
  const DeviceInfo* dev = nullptr;
  if (!current_device_info(&dev).ok() || dev->major < 9) return;
  constexpr int V = kVec16<T>;
  if (pl.vec != V || tl.group_size % V != 0) return;
  const int kv = tl.group_size / V;
  if (kv != 1 && kv != 2 && kv != 4 && kv != 8 && kv != 16) return;
  int gt = 0;
  for (int d = 1; d <= std::min(tl.groups, 32); ++d) {
    const long long dc = static_cast<long long>(d) * tl.group_size;
    if (tl.groups % d == 0 && dc * static_cast<long long>(sizeof(T)) <= 1024 && 256 % (dc / V) == 0) gt = d;
  }
  if (gt == 0) return;
  pl.rows_kv = kv;
  tl.slab_groups = gt;
  tl.slab_channels = gt * tl.group_size;
  tl.slabs = tl.channels / tl.slab_channels;
  tl.tile_tokens = kernels::kRowsTile;
  tl.time_tiles = (tl.length + kernels::kRowsTile - 1) / kernels::kRowsTile;
  pl.pitch = tl.slab_channels + V;
  pl.smem = kernels::rows_smem_bytes<T>(pl.pitch, gt);
}

// The same for a backward plan (kernel_rows_backward.cuh): x and dy tiles of 64 tokens and at most
// 512 bytes per row (three CTAs per SM), the word mapping for dx, and its reduction scratch
// within the two tiles.
template <class T>
void plan_rows_backward(Plan& pl) {
  kernels::Tiling& tl = pl.tl;
  const DeviceInfo* dev = nullptr;
  if (!current_device_info(&dev).ok() || dev->major < 9) return;
  constexpr int V = kVec16<T>;
  if (pl.vec != V || tl.group_size % V != 0) return;
  const int kv = tl.group_size / V;
  if (kv != 1 && kv != 2 && kv != 4 && kv != 8 && kv != 16) return;
  int gt = 0;
  for (int d = 1; d <= std::min(tl.groups, 32); ++d) {
    const long long dc = static_cast<long long>(d) * tl.group_size, words = dc / V;
    const long long pitch_bytes = (dc + V) * static_cast<long long>(sizeof(T));
    if (tl.groups % d == 0 && dc * static_cast<long long>(sizeof(T)) <= 512 && 256 % words == 0 &&
        2 * (256 / words) * dc * 4 <= 2 * kernels::kRowsTile * pitch_bytes)
      gt = d;
  }
  if (gt == 0) return;
  pl.rows_kv = kv;
  tl.slab_groups = gt;
  tl.slab_channels = gt * tl.group_size;
  tl.slabs = tl.channels / tl.slab_channels;
  tl.tile_tokens = kernels::kRowsTile;
  tl.time_tiles = (tl.length + kernels::kRowsTile - 1) / kernels::kRowsTile;
  tl.word_mapped = 1;
  pl.pitch = tl.slab_channels + V;
  pl.smem = kernels::rows_backward_smem_bytes<T>(pl.pitch, gt, tl.slab_channels);
}

template <class T>
Plan make_plan(const Problem& p, bool backward, bool partials, std::initializer_list<const void*> ptrs,
               std::initializer_list<std::int64_t> strides) {
  Plan pl;
  kernels::Tiling& tl = pl.tl;
  tl.batch = static_cast<int>(p.batch);
  tl.length = static_cast<int>(p.length);
  tl.channels = static_cast<int>(p.channels);
  tl.groups = static_cast<int>(p.groups);
  tl.group_size = static_cast<int>(p.group_size);
  // Whole groups per slab, up to 512 channels (one group if groups are wider).
  int gt = 1;
  for (int d = 1; d <= tl.groups; ++d)
    if (tl.groups % d == 0 && static_cast<long long>(d) * tl.group_size <= 512) gt = d;
  tl.slab_groups = gt;
  tl.slab_channels = gt * tl.group_size;
  tl.slabs = tl.channels / tl.slab_channels;
  // Bytes of each tile in shared memory (x; x and dy each in the backward). Measured on an H100 at
  // the 7B shape: 16, 32, 48, 64, 96 KB gave 0.33, 0.45, 0.46, 0.44, 0.32 of copy bandwidth forward
  // (look-back latency per tile against CTAs per SM). The backward holds two tiles and its
  // statistics: 40 KB keeps two CTAs per SM.
  const long long budget = backward ? 40960 : 49152;
  tl.tile_tokens = static_cast<int>(std::max<long long>(1, std::min<long long>(backward ? 64 : 128,
                                    budget / (static_cast<long long>(tl.slab_channels) * sizeof(T)))));
  tl.time_tiles = (tl.length + tl.tile_tokens - 1) / tl.tile_tokens;
  // About 8 elements per lane: fewer shuffles than a whole warp per (token, group).
  int lanes = 1;
  while (lanes < 32 && lanes * 2 <= tl.group_size / 8) lanes *= 2;
  tl.lanes_per_pair = lanes;

  constexpr int V = kVec16<T>;
  bool vec_ok = tl.group_size % V == 0;
  for (const void* q : ptrs) vec_ok = vec_ok && (!q || reinterpret_cast<std::uintptr_t>(q) % 16 == 0);
  for (std::int64_t s : strides) vec_ok = vec_ok && s % V == 0;
  pl.vec = vec_ok ? V : 1;
  {
    const int words = tl.slab_channels / pl.vec, glanes = tl.group_size / pl.vec;
    // The fast word mapping: whole rows per pass and groups of <= 32 threads. The backward reuses
    // its two tiles as 2 * rows_per_pass fp32 rows of reduction scratch.
    tl.word_mapped = tl.group_size % pl.vec == 0 && words <= 256 && 256 % words == 0 && glanes <= 32 &&
                     (glanes & (glanes - 1)) == 0 &&
                     (!backward || 2 * (256 / words) * 4 <= 2 * tl.tile_tokens * static_cast<int>(sizeof(T)));
  }

  if (backward) {
    plan_rows_backward<T>(pl);
  } else {
    plan_rows<T>(pl);
  }

  const std::size_t tile_elems = static_cast<std::size_t>(tl.tile_tokens) * tl.slab_channels;
  const std::size_t pairs = static_cast<std::size_t>(tl.tile_tokens) * tl.slab_groups;
  const std::size_t agg_bytes = backward ? sizeof(kernels::AdjointAggregate) : sizeof(kernels::Aggregate);
  if (pl.rows_kv == 0)
    pl.smem = (backward ? 2 : 1) * tile_elems * sizeof(T) + (backward ? 6 : 3) * pairs * 4 + 8 +
              (backward ? 8 * static_cast<std::size_t>(tl.tile_tokens) + 24 : 0) +
              static_cast<std::size_t>(tl.slab_groups) * (16 + (kernels::kWindow + 1) * agg_bytes);

  const std::size_t tiles = static_cast<std::size_t>(tl.time_tiles) * tl.batch * tl.slabs;
  const std::size_t agg_size = backward ? sizeof(kernels::AdjointAggregate) : sizeof(kernels::Aggregate);
  const std::size_t incl_size = backward ? sizeof(kernels::AdjointState) : sizeof(kernels::ChainState);
  pl.flags_bytes = align_up(4 * (1 + tiles), 256);
  pl.agg_offset = pl.flags_bytes;
  pl.incl_offset = align_up(pl.agg_offset + tiles * tl.slab_groups * agg_size, 256);
  pl.partial_offset = align_up(pl.incl_offset + tiles * tl.slab_groups * incl_size, 256);
  pl.total = pl.partial_offset;
  if (partials) pl.total += 2 * static_cast<std::size_t>(tl.time_tiles) * tl.batch * tl.channels * sizeof(float);
  return pl;
}

inline kernels::Decay make_decay(double beta) {
  return kernels::Decay{static_cast<float>(beta), static_cast<float>(1.0 - beta), static_cast<float>(std::log(beta))};
}

inline bool overlaps(const void* a, std::size_t an, const void* b, std::size_t bn) {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return a && b && x < y + bn && y < x + an;
}

template <class Args>
Status check_cuda_problem(const Args& a, const Problem& p) {
  if (a.beta_precision != BetaPrecision::kExact)
    return unsupported("the CUDA timestep norm computes beta powers exactly; reference_float32 is CPU-only");
  if (p.batch * p.length > (1LL << 31) || p.channels > (1 << 30))
    return unsupported("timestep norm: tensor too large for 32-bit tile indexing");
  return Status::success();
}

inline Status check_saved(const Saved& s, const Problem& p, bool required) {
  if (s.stats.empty() && s.correction.empty()) {
    if (required) return invalid_argument("saved.stats and saved.correction (from the CUDA forward) are required");
    return Status::success();
  }
  GECKO_RETURN_IF_ERROR(check_shape(s.stats, "saved.stats", {p.batch, p.length, p.groups, 2}));
  GECKO_RETURN_IF_ERROR(check_shape(s.correction, "saved.correction", {p.batch, p.length, 2}));
  GECKO_RETURN_IF_ERROR(check_memory(s.stats, "saved.stats", Memory::kDevice));
  GECKO_RETURN_IF_ERROR(check_memory(s.correction, "saved.correction", Memory::kDevice));
  GECKO_RETURN_IF_ERROR(check_contiguous(s.stats, "saved.stats"));
  return check_contiguous(s.correction, "saved.correction");
}

template <class T>
Plan forward_plan(const ForwardArgs<T>& a, const Problem& p) {
  return make_plan<T>(p, false, false, {a.x.data, a.y.data, a.weight.data, a.bias.data},
                      {a.x.stride(0), a.x.stride(1), a.y.stride(0), a.y.stride(1)});
}

template <class T>
Plan backward_plan(const BackwardArgs<T>& a, const Problem& p) {
  return make_plan<T>(p, true, !a.dweight.empty() || !a.dbias.empty(),
                      {a.x.data, a.dy.data, a.dx.data, a.weight.data},
                      {a.x.stride(0), a.x.stride(1), a.dy.stride(0), a.dy.stride(1), a.dx.stride(0), a.dx.stride(1)});
}

// One CTA per tile.
template <class K>
Status tile_grid(K, const Plan& pl, unsigned& grid) {
  grid = static_cast<unsigned>(static_cast<long long>(pl.tl.time_tiles) * pl.tl.batch * pl.tl.slabs);
  return Status::success();
}

inline kernels::RowsConfig rows_config(const Plan& pl, double beta1, double beta2) {
  kernels::RowsConfig cfg{};
  cfg.pitch = pl.pitch;
  for (int n = 0; n <= kernels::kRowsTile; ++n) {  // beta^n in double, rounded once
    cfg.pw1[n] = static_cast<float>(std::pow(beta1, n));
    cfg.pw2[n] = static_cast<float>(std::pow(beta2, n));
  }
  return cfg;
}

// Calls f(std::integral_constant<int, KV>{}) for the plan's group width in 16-byte words.
template <class F>
Status with_rows_kv(int kv, F&& f) {
  switch (kv) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    default: return internal_error("timestep norm: no row-per-lane kernel for groups of " + std::to_string(kv) + " words");
  }
}

// One CTA of 256 threads per tile of the plan.
template <class Kernel, class... Args>
Status launch_tiles(Kernel kernel, const Plan& pl, cudaStream_t stream, const char* what, Args... args) {
  GECKO_RETURN_IF_ERROR(allow_dynamic_smem(kernel, pl.smem));
  unsigned grid = 0;
  GECKO_RETURN_IF_ERROR(tile_grid(kernel, pl, grid));
  kernel<<<grid, 256, pl.smem, stream>>>(args...);
  return last_launch_status(what);
}

template <class T>
Status launch_rows(const kernels::ForwardParams& kp, const Plan& pl, const ForwardArgs<T>& a, cudaStream_t stream) {
  const kernels::RowsConfig cfg = rows_config(pl, a.beta1, a.beta2);
  return with_rows_kv(pl.rows_kv, [&](auto kv) {
    return launch_tiles(kernels::forward_rows_kernel<T, decltype(kv)::value>, pl, stream, "timestep_norm forward", kp,
                        cfg, a.x.data, a.weight.data, a.bias.data, a.y.data);
  });
}

template <class T>
Status launch_rows_backward(const kernels::BackwardParams& kp, const Plan& pl, const BackwardArgs<T>& a,
                            cudaStream_t stream) {
  const kernels::RowsConfig cfg = rows_config(pl, a.beta1, a.beta2);
  return with_rows_kv(pl.rows_kv, [&](auto kv) {
    return launch_tiles(kernels::backward_rows_kernel<T, decltype(kv)::value>, pl, stream, "timestep_norm backward",
                        kp, cfg, a.x.data, a.weight.data, a.dy.data, a.dx.data);
  });
}

}  // namespace detail

template <class T>
Status forward_workspace_size(const ForwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = detail::forward_plan(a, p).total;
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a, const Saved& saved, void* workspace, std::size_t workspace_bytes,
               cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA timestep norm takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_cuda_problem(a, p));
  GECKO_RETURN_IF_ERROR(detail::check_saved(saved, p, false));
  if (p.has_prev_state && p.has_state_out) {
    const std::size_t gb = static_cast<std::size_t>(p.batch * p.groups) * sizeof(float);
    if (detail::overlaps(a.prev_mean.data, gb, a.mean.data, gb) || detail::overlaps(a.prev_var.data, gb, a.var.data, gb) ||
        detail::overlaps(a.prev_count.data, p.batch * 8, a.count.data, p.batch * 8))
      return unsupported("the CUDA timestep norm cannot write its state out over the state in: use separate buffers");
  }
  const auto pl = detail::forward_plan(a, p);
  if (workspace_bytes < pl.total || !workspace)
    return invalid_argument("timestep norm forward needs " + std::to_string(pl.total) + " bytes of workspace, got " +
                            std::to_string(workspace_bytes));
  if (p.batch == 0 || p.length == 0) {
    if (p.has_state_out) {
      // Nothing to process: the state passes through unchanged.
      const std::size_t gb = static_cast<std::size_t>(p.batch * p.groups) * sizeof(float);
      if (p.has_prev_state) {
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.mean.data, a.prev_mean.data, gb, cudaMemcpyDeviceToDevice, stream));
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.var.data, a.prev_var.data, gb, cudaMemcpyDeviceToDevice, stream));
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.count.data, a.prev_count.data, p.batch * 8, cudaMemcpyDeviceToDevice, stream));
      } else {
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.mean.data, 0, gb, stream));
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.var.data, 0, gb, stream));
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.count.data, 0, p.batch * 8, stream));
      }
    }
    return Status::success();
  }
  char* ws = static_cast<char*>(workspace);
  const bool decode = p.length <= kernels::kDecodeTokens && p.group_size % 32 == 0 &&
                      p.group_size <= kernels::kDecodeMaxGroup;
  if (!decode) GECKO_CUDA_RETURN(cudaMemsetAsync(ws, 0, pl.flags_bytes, stream));
  kernels::ForwardParams kp{};
  kp.tl = pl.tl;
  kp.x_sb = a.x.stride(0);
  kp.x_sl = a.x.stride(1);
  kp.y_sb = a.y.stride(0);
  kp.y_sl = a.y.stride(1);
  kp.d1 = detail::make_decay(a.beta1);
  kp.d2 = detail::make_decay(a.beta2);
  kp.eps = a.eps;
  kp.bos = a.bos_mask.data;
  kp.pad = a.padding_mask.data;
  kp.prev_count = reinterpret_cast<const long long*>(a.prev_count.data);
  kp.prev_mean = a.prev_mean.data;
  kp.prev_var = a.prev_var.data;
  kp.count_out = reinterpret_cast<long long*>(a.count.data);
  kp.mean_out = a.mean.data;
  kp.var_out = a.var.data;
  kp.saved_stats = reinterpret_cast<float2*>(saved.stats.data);
  kp.saved_corr = reinterpret_cast<float2*>(saved.correction.data);
  kp.ticket = reinterpret_cast<unsigned*>(ws);
  kp.flags = kp.ticket + 1;
  kp.agg = reinterpret_cast<kernels::Aggregate*>(ws + pl.agg_offset);
  kp.incl = reinterpret_cast<kernels::ChainState*>(ws + pl.incl_offset);
  if (decode) {
    const long long warps = static_cast<long long>(p.batch) * p.groups;
    kernels::forward_decode_kernel<T><<<static_cast<unsigned>((warps + 7) / 8), 256, 0, stream>>>(
        kp, a.x.data, a.weight.data, a.bias.data, a.y.data);
    return last_launch_status("timestep_norm forward (decode)");
  }
  if (pl.rows_kv > 0) return detail::launch_rows(kp, pl, a, stream);
  unsigned grid = 0;
  if (pl.vec == 1) {
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(kernels::forward_kernel<T, 1>, pl.smem));
    GECKO_RETURN_IF_ERROR(detail::tile_grid(kernels::forward_kernel<T, 1>, pl, grid));
    kernels::forward_kernel<T, 1><<<grid, 256, pl.smem, stream>>>(kp, a.x.data, a.weight.data, a.bias.data, a.y.data);
  } else {
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(kernels::forward_kernel<T, kVec16<T>>, pl.smem));
    GECKO_RETURN_IF_ERROR(detail::tile_grid(kernels::forward_kernel<T, kVec16<T>>, pl, grid));
    kernels::forward_kernel<T, kVec16<T>><<<grid, 256, pl.smem, stream>>>(kp, a.x.data, a.weight.data, a.bias.data, a.y.data);
  }
  return last_launch_status("timestep_norm forward");
}

template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = detail::backward_plan(a, p).total;
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a, const Saved& saved, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream) {
  static_assert(!std::is_same_v<T, double>, "the CUDA timestep norm takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_cuda_problem(a, p));
  GECKO_RETURN_IF_ERROR(detail::check_saved(saved, p, true));
  if ((a.dprev_mean.empty() != a.dprev_var.empty()))
    return invalid_argument("dprev_mean and dprev_var must be given together");
  if ((a.dmean.empty() != a.dvar.empty())) return invalid_argument("dmean and dvar must be given together");
  const auto pl = detail::backward_plan(a, p);
  if (workspace_bytes < pl.total || !workspace)
    return invalid_argument("timestep norm backward needs " + std::to_string(pl.total) + " bytes of workspace, got " +
                            std::to_string(workspace_bytes));
  const bool partials = !a.dweight.empty() || !a.dbias.empty();
  if (p.batch == 0 || p.length == 0) {
    const std::size_t gb = static_cast<std::size_t>(p.batch * p.groups) * sizeof(float);
    if (!a.dprev_mean.empty()) {
      if (!a.dmean.empty()) {
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.dprev_mean.data, a.dmean.data, gb, cudaMemcpyDeviceToDevice, stream));
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.dprev_var.data, a.dvar.data, gb, cudaMemcpyDeviceToDevice, stream));
      } else {
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.dprev_mean.data, 0, gb, stream));
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.dprev_var.data, 0, gb, stream));
      }
    }
    if (!a.dweight.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dweight.data, 0, p.channels * 4, stream));
    if (!a.dbias.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dbias.data, 0, p.channels * 4, stream));
    return Status::success();
  }
  char* ws = static_cast<char*>(workspace);
  GECKO_CUDA_RETURN(cudaMemsetAsync(ws, 0, pl.flags_bytes, stream));
  kernels::BackwardParams kp{};
  kp.tl = pl.tl;
  kp.x_sb = a.x.stride(0);
  kp.x_sl = a.x.stride(1);
  kp.dy_sb = a.dy.stride(0);
  kp.dy_sl = a.dy.stride(1);
  kp.dx_sb = a.dx.stride(0);
  kp.dx_sl = a.dx.stride(1);
  kp.d1 = detail::make_decay(a.beta1);
  kp.d2 = detail::make_decay(a.beta2);
  kp.bos = a.bos_mask.data;
  kp.pad = a.padding_mask.data;
  kp.saved_stats = reinterpret_cast<const float2*>(saved.stats.data);
  kp.saved_corr = reinterpret_cast<const float2*>(saved.correction.data);
  kp.dmean = a.dmean.data;
  kp.dvar = a.dvar.data;
  kp.dprev_mean = a.dprev_mean.data;
  kp.dprev_var = a.dprev_var.data;
  kp.partial = partials ? reinterpret_cast<float*>(ws + pl.partial_offset) : nullptr;
  kp.ticket = reinterpret_cast<unsigned*>(ws);
  kp.flags = kp.ticket + 1;
  kp.agg = reinterpret_cast<kernels::AdjointAggregate*>(ws + pl.agg_offset);
  kp.incl = reinterpret_cast<kernels::AdjointState*>(ws + pl.incl_offset);
  unsigned grid = 0;
  if (pl.rows_kv > 0) {
    GECKO_RETURN_IF_ERROR(detail::launch_rows_backward(kp, pl, a, stream));
  } else if (pl.vec == 1) {
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(kernels::backward_kernel<T, 1>, pl.smem));
    GECKO_RETURN_IF_ERROR(detail::tile_grid(kernels::backward_kernel<T, 1>, pl, grid));
    kernels::backward_kernel<T, 1><<<grid, 256, pl.smem, stream>>>(kp, a.x.data, a.weight.data, a.dy.data, a.dx.data);
  } else {
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(kernels::backward_kernel<T, kVec16<T>>, pl.smem));
    GECKO_RETURN_IF_ERROR(detail::tile_grid(kernels::backward_kernel<T, kVec16<T>>, pl, grid));
    kernels::backward_kernel<T, kVec16<T>><<<grid, 256, pl.smem, stream>>>(kp, a.x.data, a.weight.data, a.dy.data, a.dx.data);
  }
  GECKO_RETURN_IF_ERROR(last_launch_status("timestep_norm backward"));
  if (partials) {
    const long long parts = static_cast<long long>(pl.tl.time_tiles) * pl.tl.batch;
    const dim3 blocks(static_cast<unsigned>((p.channels + 31) / 32), 2);
    kernels::sum_parts_kernel<><<<blocks, 256, 0, stream>>>(kp.partial, parts, static_cast<int>(p.channels),
                                                            a.dweight.empty() ? nullptr : a.dweight.data,
                                                            a.dbias.empty() ? nullptr : a.dbias.data);
  }
  return last_launch_status("timestep_norm parameter gradients");
}

}  // namespace gecko::timestep_norm::cuda
