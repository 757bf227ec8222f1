// Host launchers for the complex EMA CUDA kernels: validation, tiling, workspace.
// Stream-ordered; never synchronizes or allocates.
//
//   cuda::forward(args, saved, workspace, bytes, stream)   saved optional (empty = not kept)
//   cuda::backward(args, saved, workspace, bytes, stream)  saved required (from the forward)
//   cuda::forward_workspace_size(args, [saved,] bytes), cuda::backward_workspace_size(args, bytes)
//
// The forward keeps the state after every tile of kTileTokens tokens (Saved::states, fp32,
// 8 * N bytes per kTileTokens tokens and channel: 1/2 of a bf16 activation at N = 16; in the
// workspace when no Saved is given). The backward reads it for the terms of dq and dg that involve
// the state entering each tile, so that it runs entirely in reverse time without recomputing any
// state. See kernel.cuh for the algorithm. Workspace needs no initialisation. A forward of at most
// kernels::kDecodeTokens tokens with N a power of two <= 32 (decoding) runs as one kernel instead
// (kernel_decode.cuh), with the same results and the same Saved state. A bf16 forward or backward
// with N <= 16, D a multiple of 8 and 16-byte aligned rows runs the chunked tensor-core kernel
// (kernel_chunked.cuh, kernel_chunked_backward.cuh): the same Saved states, results within ~1e-5 of
// the tile kernels' (ForwardPath / BackwardPath::kTiles select those).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cuda_runtime.h>
#include <string>
#include <type_traits>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/launch_util.cuh"
#include "gecko/ops/cema/args.hpp"
#include "gecko/ops/cema/kernel.cuh"
#include "gecko/ops/cema/kernel_chunked.cuh"
#include "gecko/ops/cema/kernel_chunked_backward.cuh"
#include "gecko/ops/cema/kernel_decode.cuh"

namespace gecko::cema::cuda {

inline constexpr int kTileTokens = kernels::kTileTokens;
inline constexpr std::int64_t kMaxStates = 64;

// Which kernels a forward may use. kAuto takes the chunked tensor-core kernel where it applies;
// kTiles keeps the tile kernels (for comparisons: same results to ~1e-5, more time).
enum class ForwardPath { kAuto, kTiles };
// Which kernels a backward may use, likewise (kernel_chunked_backward.cuh or the tile kernels).
enum class BackwardPath { kAuto, kTiles };

// What the CUDA forward saves for the CUDA backward.
struct Saved {
  TensorView<float> states;  // [time_tiles(L), B, D, N, 2]: the state h after each tile of kTileTokens tokens
};

inline std::int64_t time_tiles(std::int64_t length) { return (length + kTileTokens - 1) / kTileTokens; }

namespace detail {

using gecko::align_up;

struct Plan {
  kernels::Tiling tl{};
  int ns = 0;                  // states per thread (template parameter of the tile kernels)
  std::size_t smem_pass1 = 0;  // dynamic shared memory per CTA of the aggregate kernel
  std::size_t smem_pass2 = 0;  // ... of the output kernel
  std::size_t resets = 0, qg = 0, gp = 0, pw = 0, agg = 0, states = 0, enter0 = 0, partial = 0, slot = 0, total = 0;
  bool chunked = false;  // the call runs kernel_chunked.cuh / kernel_chunked_backward.cuh (see chunked_plan)
};

// Whether a call can run the chunked tensor-core kernels: bf16, N <= 16, whole 16-byte groups of
// channels on every row (D % 8 == 0, aligned rows of every activation) and a grid row per batch row.
template <class T>
bool chunked_eligible(const Problem& p, std::initializer_list<const void*> ptrs,
                      std::initializer_list<std::int64_t> strides) {
  if constexpr (!std::is_same_v<T, __nv_bfloat16>) {
    return false;
  } else {
    // (The kernels' token indices are int and run a few blocks past the end.)
    if (p.states > kernels::chunked::kMaxStates || p.channels % 8 != 0 || p.batch > 65535 ||
        p.length > INT_MAX - kernels::chunked::kTokensPastEnd)
      return false;
    for (const void* q : ptrs)
      if (reinterpret_cast<std::uintptr_t>(q) % 16 != 0) return false;
    for (std::int64_t st : strides)
      if (st % 8 != 0) return false;
    return true;
  }
}

template <class T>
bool chunked_eligible(const ForwardArgs<T>& a, const Problem& p) {
  return chunked_eligible<T>(p, {a.x.data, a.y.data}, {a.x.stride(0), a.x.stride(1), a.y.stride(0), a.y.stride(1)});
}

template <class T>
bool chunked_eligible(const BackwardArgs<T>& a, const Problem& p) {
  return chunked_eligible<T>(p, {a.x.data, a.dy.data, a.dx.data},
                             {a.x.stride(0), a.x.stride(1), a.dy.stride(0), a.dy.stride(1), a.dx.stride(0),
                              a.dx.stride(1)});
}

// The chunked kernels' workspace: the BOS bits (when there is a mask) at offset 0, then (backward
// with parameter gradients) the [B, 5, D, N] per-row sums.
inline Plan chunked_plan(const Problem& p, bool bos, bool slot = false) {
  namespace ck = kernels::chunked;
  Plan pl;
  pl.chunked = true;
  const std::size_t blocks = static_cast<std::size_t>((p.length + ck::kBlock - 1) / ck::kBlock);
  const std::size_t bits = bos ? static_cast<std::size_t>(p.batch) * blocks * (ck::kBlock / 8) : 0;
  pl.slot = align_up(bits, 256);
  pl.total = slot ? pl.slot + 20 * static_cast<std::size_t>(p.batch * p.channels * p.states) : bits;
  return pl;
}

inline int pow2_at_least(std::int64_t v) {
  int r = 1;
  while (r < v) r <<= 1;
  return r;
}

// Tiling. A thread owns NS states of a channel (NS = 16 in the forward: 3 x 16 fp32 registers of
// state and coefficients, one thread per channel at N = 16; NS = 8 in the backward, which keeps
// 6 complex values per state). CTAs have 128 threads (4 warps) so that 4 of them fit an SM with
// their tiles; a CTA takes dc = 128 / tpc channels (fewer when D is small) and kTileTokens tokens.
template <class T>
Plan make_plan(const Problem& p, bool backward, bool states_in_workspace, bool slot,
               std::initializer_list<const void*> ptrs, std::initializer_list<std::int64_t> strides) {
  Plan pl;
  kernels::Tiling& tl = pl.tl;
  tl.batch = static_cast<int>(p.batch);
  tl.length = static_cast<int>(p.length);
  tl.channels = static_cast<int>(p.channels);
  tl.states = static_cast<int>(p.states);
  const std::int64_t N = p.states;
  pl.ns = backward ? 8 : (N <= 4 ? 4 : N <= 8 ? 8 : 16);
  tl.tpc = pow2_at_least((N + pl.ns - 1) / pl.ns);
  int dc = kernels::kMaxThreads / tl.tpc;
  while (dc > 1 && dc / 2 >= p.channels && (dc / 2) * tl.tpc >= 32) dc /= 2;
  tl.dc = dc;
  tl.slabs = static_cast<int>((p.channels + dc - 1) / dc);
  tl.chains = tl.batch * tl.slabs;
  tl.time_tiles = static_cast<int>(time_tiles(p.length));

  constexpr int V = kVec16<T>;
  bool vec_ok = p.channels % V == 0 && dc % V == 0;
  for (const void* q : ptrs) vec_ok = vec_ok && (!q || reinterpret_cast<std::uintptr_t>(q) % 16 == 0);
  for (std::int64_t s : strides) vec_ok = vec_ok && s % V == 0;
  tl.vec = vec_ok ? V : 1;

  const std::size_t tile_bytes = static_cast<std::size_t>(kTileTokens) * dc * sizeof(T);
  pl.smem_pass1 = tile_bytes + kTileTokens;
  pl.smem_pass2 = (backward ? 2 : 1) * tile_bytes + kTileTokens;

  const std::size_t tiles = static_cast<std::size_t>(tl.time_tiles) * tl.chains;
  const std::size_t dn = static_cast<std::size_t>(p.channels * p.states);
  const std::size_t bdn = static_cast<std::size_t>(p.batch) * dn;
  const std::size_t state_bytes = static_cast<std::size_t>(tl.time_tiles) * bdn * 8;
  pl.resets = 0;
  pl.qg = align_up(pl.resets + 4 * tiles, 256);
  pl.gp = align_up(pl.qg + 16 * dn, 256);
  pl.pw = align_up(pl.gp + 16 * dn, 256);
  pl.agg = align_up(pl.pw + 8 * dn, 256);
  // Forward: the per-tile states (unless saved elsewhere); backward: the carries.
  pl.states = align_up(pl.agg + state_bytes, 256);
  pl.enter0 = align_up(pl.states + (states_in_workspace ? state_bytes : 0), 256);
  pl.partial = align_up(pl.enter0 + (backward ? 0 : 8 * bdn), 256);
  pl.slot = align_up(pl.partial + (slot ? 20 * static_cast<std::size_t>(tl.time_tiles) * bdn : 0), 256);
  pl.total = pl.slot + (slot ? 20 * bdn : 0);
  return pl;
}

inline bool overlaps(const void* a, std::size_t an, const void* b, std::size_t bn) {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return a && b && x < y + bn && y < x + an;
}

template <class Args>
Status check_cuda_problem(const Args& a, const Problem& p) {
  if (p.states > kMaxStates)
    return unsupported("cema: N = " + std::to_string(p.states) + " states per channel (alpha is " +
                       a.alpha.shape_string() + "); the CUDA kernels support N <= " + std::to_string(kMaxStates));
  // 32-bit tile indices; the grid (time tiles x batch x slabs of >= 4 channels) must fit too.
  if (p.length > INT_MAX - kTileTokens || p.channels * p.states > INT_MAX ||
      time_tiles(p.length) * p.batch * ((p.channels + 3) / 4) > INT_MAX)
    return unsupported("cema: tensor too large for the CUDA kernels' 32-bit tile indexing");
  GECKO_RETURN_IF_ERROR(check_aligned(a.h0, "h0", 8));
  return Status::success();
}

inline Status check_saved(const Saved& s, const Problem& p, bool required) {
  if (s.states.empty()) {
    if (required) return invalid_argument("saved.states (from the CUDA forward) is required by the CUDA backward");
    return Status::success();
  }
  GECKO_RETURN_IF_ERROR(check_shape(s.states, "saved.states", {time_tiles(p.length), p.batch, p.channels, p.states, 2}));
  GECKO_RETURN_IF_ERROR(check_memory(s.states, "saved.states", Memory::kDevice));
  GECKO_RETURN_IF_ERROR(check_contiguous(s.states, "saved.states"));
  return check_aligned(s.states, "saved.states", 8);
}

template <class T>
Plan forward_plan(const ForwardArgs<T>& a, const Problem& p, bool states_in_workspace, ForwardPath path) {
  if (path == ForwardPath::kAuto && chunked_eligible(a, p)) return chunked_plan(p, !a.bos_mask.empty());
  return make_plan<T>(p, false, states_in_workspace, false, {a.x.data, a.y.data},
                      {a.x.stride(0), a.x.stride(1), a.y.stride(0), a.y.stride(1)});
}

template <class T>
bool wants_parameter_gradients(const BackwardArgs<T>& a) {
  return !a.dalpha.empty() || !a.ddelta.empty() || !a.dtheta.empty() || !a.dgamma.empty();
}

template <class T>
Plan backward_plan(const BackwardArgs<T>& a, const Problem& p, BackwardPath path) {
  if (path == BackwardPath::kAuto && chunked_eligible(a, p))
    return chunked_plan(p, !a.bos_mask.empty(), wants_parameter_gradients(a));
  return make_plan<T>(p, true, true, wants_parameter_gradients(a), {a.x.data, a.dy.data, a.dx.data},
                      {a.x.stride(0), a.x.stride(1), a.dy.stride(0), a.dy.stride(1), a.dx.stride(0), a.dx.stride(1)});
}

template <class Args>
kernels::Coefficients launch_coefficients(const Args& a, const Problem& p, char* ws, const Plan& pl,
                                          cudaStream_t stream) {
  auto* qg = reinterpret_cast<float4*>(ws + pl.qg);
  auto* gp = reinterpret_cast<float4*>(ws + pl.gp);
  auto* pw = reinterpret_cast<float2*>(ws + pl.pw);
  const long long dn = p.channels * p.states;
  kernels::coefficient_kernel<><<<static_cast<unsigned>((dn + 255) / 256), 256, 0, stream>>>(
      a.alpha.data, a.delta.data, a.theta.data, a.gamma.data, static_cast<int>(p.channels), static_cast<int>(p.states),
      qg, gp, pw);
  return kernels::Coefficients{qg, gp, pw};
}

template <class T, int NS>
Status launch_forward(const kernels::ForwardParams& kp, const Plan& pl, const T* x, T* y, cudaStream_t stream) {
  const kernels::Tiling& tl = pl.tl;
  const unsigned threads = static_cast<unsigned>(tl.dc * tl.tpc);
  if (tl.time_tiles > 1) {
    const auto k1 = kernels::forward_aggregate_kernel<T, NS>;
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k1, pl.smem_pass1));
    k1<<<static_cast<unsigned>((tl.time_tiles - 1) * tl.chains), threads, pl.smem_pass1, stream>>>(kp, x);
    GECKO_RETURN_IF_ERROR(last_launch_status("cema forward aggregates"));
  }
  const long long bdn = static_cast<long long>(tl.batch) * tl.channels * tl.states;
  kernels::forward_scan_kernel<><<<static_cast<unsigned>((bdn + 255) / 256), 256, 0, stream>>>(kp);
  GECKO_RETURN_IF_ERROR(last_launch_status("cema forward scan"));
  const auto k3 = kernels::forward_output_kernel<T, NS>;
  GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k3, pl.smem_pass2));
  k3<<<static_cast<unsigned>(tl.time_tiles * tl.chains), threads, pl.smem_pass2, stream>>>(kp, x, y);
  return last_launch_status("cema forward");
}

template <class T, bool kGeneral>
Status launch_backward(const kernels::BackwardParams& kp, const Plan& pl, const T* x, const T* dy, T* dx,
                       cudaStream_t stream) {
  const kernels::Tiling& tl = pl.tl;
  const unsigned threads = static_cast<unsigned>(tl.dc * tl.tpc);
  if (tl.time_tiles > 1) {
    const auto k1 = kernels::backward_aggregate_kernel<T, 8, kGeneral>;
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k1, pl.smem_pass1));
    k1<<<static_cast<unsigned>((tl.time_tiles - 1) * tl.chains), threads, pl.smem_pass1, stream>>>(kp, dy);
    GECKO_RETURN_IF_ERROR(last_launch_status("cema backward aggregates"));
  }
  const long long bdn = static_cast<long long>(tl.batch) * tl.channels * tl.states;
  kernels::backward_scan_kernel<kGeneral><<<static_cast<unsigned>((bdn + 255) / 256), 256, 0, stream>>>(kp);
  GECKO_RETURN_IF_ERROR(last_launch_status("cema backward scan"));
  const auto k3 = kernels::backward_output_kernel<T, 8, kGeneral>;
  GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k3, pl.smem_pass2));
  k3<<<static_cast<unsigned>(tl.time_tiles * tl.chains), threads, pl.smem_pass2, stream>>>(kp, x, dy, dx);
  return last_launch_status("cema backward");
}

// What the single-kernel paths (decode, chunked) take of any call: sizes, raw parameters, x's
// strides, the carried state h0.
template <class Args>
kernels::CallParams call_params(const Args& a, const Problem& p) {
  kernels::CallParams c;
  c.B = static_cast<int>(p.batch);
  c.L = static_cast<int>(p.length);
  c.D = static_cast<int>(p.channels);
  c.N = static_cast<int>(p.states);
  c.alpha = a.alpha.data;
  c.delta = a.delta.data;
  c.theta = a.theta.data;
  c.gamma = a.gamma.data;
  c.x_sb = a.x.stride(0);
  c.x_sl = a.x.stride(1);
  c.add_residual = a.add_residual;
  c.h0 = reinterpret_cast<const float2*>(a.h0.data);
  return c;
}

// ... and of a forward call: y's strides and h_out too.
template <class T>
kernels::CallParams forward_call_params(const ForwardArgs<T>& a, const Problem& p) {
  kernels::CallParams c = call_params(a, p);
  c.y_sb = a.y.stride(0);
  c.y_sl = a.y.stride(1);
  c.h_out = reinterpret_cast<float2*>(a.h_out.data);
  return c;
}

// The parameter gradients from the per-row sums slot [B, 5, D, N]: the sum over the batch in index
// order, then the chain rule to the raw parameters.
template <class T>
Status launch_parameter_gradients(const BackwardArgs<T>& a, const Problem& p, const float* slot,
                                  cudaStream_t stream) {
  kernels::parameter_gradient_kernel<><<<static_cast<unsigned>((p.channels + 127) / 128), 128, 0, stream>>>(
      slot, static_cast<int>(p.batch), static_cast<int>(p.channels), static_cast<int>(p.states), a.alpha.data,
      a.delta.data, a.theta.data, a.dalpha.data, a.ddelta.data, a.dtheta.data, a.dgamma.data);
  return last_launch_status("cema parameter gradients");
}

// The BOS mask as bits for the chunked kernels (none when there is no mask).
inline Status launch_bos_bits(const std::uint8_t* bos, const Problem& p, char* ws, const std::uint32_t*& bits,
                              cudaStream_t stream) {
  namespace ck = kernels::chunked;
  bits = nullptr;
  if (!bos) return Status::success();
  auto* out = reinterpret_cast<std::uint32_t*>(ws);
  const dim3 grid(static_cast<unsigned>((p.length + ck::kBlock - 1) / ck::kBlock), static_cast<unsigned>(p.batch));
  ck::bits_kernel<><<<grid, ck::kBlock, 0, stream>>>(bos, static_cast<int>(p.length), out);
  bits = out;
  return last_launch_status("cema chunked BOS bits");
}

// The chunked forward: the BOS bits (when there is a mask), then the kernel (grid: 16-channel
// slabs x batch rows).
template <class T>
Status launch_chunked(const ForwardArgs<T>& a, const Problem& p, const Saved& saved, char* ws, const Plan& pl,
                      cudaStream_t stream) {
  namespace ck = kernels::chunked;
  if constexpr (!std::is_same_v<T, __nv_bfloat16>) {
    return unsupported("cema: the chunked forward takes bfloat16");  // not reached: see chunked_eligible
  } else {
    ck::Params kp;
    static_cast<kernels::CallParams&>(kp) = forward_call_params(a, p);
    kp.states = saved.states.empty() ? nullptr : reinterpret_cast<float2*>(saved.states.data);
    GECKO_RETURN_IF_ERROR(launch_bos_bits(a.bos_mask.data, p, ws, kp.bos_bits, stream));
    const auto k = ck::forward_kernel<>;
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k, ck::kSmemBytes));
    const dim3 grid(static_cast<unsigned>((p.channels + ck::kWarps - 1) / ck::kWarps), static_cast<unsigned>(p.batch));
    k<<<grid, ck::kThreads, ck::kSmemBytes, stream>>>(kp, a.x.data, a.y.data);
    return last_launch_status("cema forward (chunked)");
  }
}

// The chunked backward: the BOS bits, the kernel (grid: 16-channel slabs x batch rows), then the
// per-row sums through the chain rule.
template <class T>
Status launch_chunked_backward(const BackwardArgs<T>& a, const Problem& p, const Saved& saved, char* ws,
                               const Plan& pl, cudaStream_t stream) {
  namespace ck = kernels::chunked;
  if constexpr (!std::is_same_v<T, __nv_bfloat16>) {
    return unsupported("cema: the chunked backward takes bfloat16");  // not reached: see chunked_eligible
  } else {
    ck::BackwardParams kp;
    static_cast<kernels::CallParams&>(kp) = call_params(a, p);
    kp.dy_sb = a.dy.stride(0);
    kp.dy_sl = a.dy.stride(1);
    kp.dx_sb = a.dx.stride(0);
    kp.dx_sl = a.dx.stride(1);
    kp.states = reinterpret_cast<const float2*>(saved.states.data);
    kp.dh_out = reinterpret_cast<const float2*>(a.dh_out.data);
    kp.dh0 = reinterpret_cast<float2*>(a.dh0.data);
    const bool grads = wants_parameter_gradients(a);
    kp.slot = grads ? reinterpret_cast<float*>(ws + pl.slot) : nullptr;
    GECKO_RETURN_IF_ERROR(launch_bos_bits(a.bos_mask.data, p, ws, kp.bos_bits, stream));
    const auto k = ck::backward_kernel<>;
    GECKO_RETURN_IF_ERROR(allow_dynamic_smem(k, ck::kSmemBytesB));
    const dim3 grid(static_cast<unsigned>((p.channels + ck::kWarps - 1) / ck::kWarps), static_cast<unsigned>(p.batch));
    k<<<grid, ck::kThreads, ck::kSmemBytesB, stream>>>(kp, a.x.data, a.dy.data, a.dx.data);
    GECKO_RETURN_IF_ERROR(last_launch_status("cema backward (chunked)"));
    return grads ? launch_parameter_gradients(a, p, kp.slot, stream) : Status::success();
  }
}

}  // namespace detail

// Workspace for a forward that keeps its per-tile states in the workspace (no Saved given).
template <class T>
Status forward_workspace_size(const ForwardArgs<T>& a, std::size_t& bytes, ForwardPath path = ForwardPath::kAuto) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = detail::forward_plan(a, p, true, path).total;
  return Status::success();
}

// Workspace for a forward that writes its per-tile states to `saved` (when given).
template <class T>
Status forward_workspace_size(const ForwardArgs<T>& a, const Saved& saved, std::size_t& bytes,
                              ForwardPath path = ForwardPath::kAuto) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = detail::forward_plan(a, p, saved.states.empty(), path).total;
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a, const Saved& saved, void* workspace, std::size_t workspace_bytes,
               cudaStream_t stream, ForwardPath path = ForwardPath::kAuto) {
  static_assert(!std::is_same_v<T, double>, "the CUDA complex EMA takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_cuda_problem(a, p));
  GECKO_RETURN_IF_ERROR(check_aligned(a.h_out, "h_out", 8));
  GECKO_RETURN_IF_ERROR(detail::check_saved(saved, p, false));
  const std::size_t sb = static_cast<std::size_t>(p.batch * p.channels * p.states) * 8;
  if (!a.h0.empty() && !a.h_out.empty() && a.h0.data != a.h_out.data && detail::overlaps(a.h0.data, sb, a.h_out.data, sb))
    return invalid_argument("h_out partially overlaps h0: pass the same buffer or disjoint ones");
  const bool in_ws = saved.states.empty();
  const auto pl = detail::forward_plan(a, p, in_ws, path);
  if (workspace_bytes < pl.total || (!workspace && pl.total > 0))
    return invalid_argument("cema forward needs " + std::to_string(pl.total) + " bytes of workspace, got " +
                            std::to_string(workspace_bytes));
  if (p.batch == 0 || p.length == 0) {
    // Nothing to process: the state passes through unchanged.
    if (!a.h_out.empty() && sb > 0) {
      if (a.h0.empty()) {
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.h_out.data, 0, sb, stream));
      } else if (a.h0.data != a.h_out.data) {
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.h_out.data, a.h0.data, sb, cudaMemcpyDeviceToDevice, stream));
      }
    }
    return Status::success();
  }
  if (p.length <= kernels::kDecodeTokens && p.states <= 32 && (p.states & (p.states - 1)) == 0) {
    kernels::DecodeParams dp;
    static_cast<kernels::CallParams&>(dp) = detail::forward_call_params(a, p);
    dp.bos = a.bos_mask.data;
    dp.state = in_ws ? nullptr : reinterpret_cast<float2*>(saved.states.data);
    const long long total = static_cast<long long>(p.batch) * p.channels * p.states;
    kernels::forward_decode_kernel<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(dp, a.x.data,
                                                                                                   a.y.data);
    return last_launch_status("cema forward (decode)");
  }
  char* ws = static_cast<char*>(workspace);
  if (pl.chunked) return detail::launch_chunked(a, p, saved, ws, pl, stream);
  kernels::ForwardParams kp{};
  kp.tl = pl.tl;
  kp.x_sb = a.x.stride(0);
  kp.x_sl = a.x.stride(1);
  kp.y_sb = a.y.stride(0);
  kp.y_sl = a.y.stride(1);
  kp.add_residual = a.add_residual;
  kp.bos = a.bos_mask.data;
  kp.h0 = reinterpret_cast<const float2*>(a.h0.data);
  kp.h_out = reinterpret_cast<float2*>(a.h_out.data);
  kp.states = in_ws ? reinterpret_cast<float2*>(ws + pl.states) : reinterpret_cast<float2*>(saved.states.data);
  kp.enter0 = reinterpret_cast<float2*>(ws + pl.enter0);
  kp.agg = reinterpret_cast<float2*>(ws + pl.agg);
  kp.resets = reinterpret_cast<unsigned*>(ws + pl.resets);
  kp.cf = detail::launch_coefficients(a, p, ws, pl, stream);
  GECKO_RETURN_IF_ERROR(last_launch_status("cema coefficients"));
  switch (pl.ns) {
    case 4: return detail::launch_forward<T, 4>(kp, pl, a.x.data, a.y.data, stream);
    case 8: return detail::launch_forward<T, 8>(kp, pl, a.x.data, a.y.data, stream);
    default: return detail::launch_forward<T, 16>(kp, pl, a.x.data, a.y.data, stream);
  }
}

template <class T>
Status forward(const ForwardArgs<T>& a, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  return forward(a, Saved{}, workspace, workspace_bytes, stream);
}

template <class T>
Status backward_workspace_size(const BackwardArgs<T>& a, std::size_t& bytes,
                               BackwardPath path = BackwardPath::kAuto) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  bytes = detail::backward_plan(a, p, path).total;
  return Status::success();
}

// dh_out empty selects the fast path (G = conj(g) R); given, the general one (about 1.4x the
// arithmetic of pass 2). dh0 may alias dh_out.
template <class T>
Status backward(const BackwardArgs<T>& a, const Saved& saved, void* workspace, std::size_t workspace_bytes,
                cudaStream_t stream, BackwardPath path = BackwardPath::kAuto) {
  static_assert(!std::is_same_v<T, double>, "the CUDA complex EMA takes float, half or bfloat16");
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kDevice, p));
  GECKO_RETURN_IF_ERROR(detail::check_cuda_problem(a, p));
  GECKO_RETURN_IF_ERROR(check_aligned(a.dh_out, "dh_out", 8));
  GECKO_RETURN_IF_ERROR(check_aligned(a.dh0, "dh0", 8));
  GECKO_RETURN_IF_ERROR(detail::check_saved(saved, p, p.batch > 0 && p.length > 0));
  const std::size_t sb = static_cast<std::size_t>(p.batch * p.channels * p.states) * 8;
  if (!a.dh_out.empty() && !a.dh0.empty() && a.dh_out.data != a.dh0.data &&
      detail::overlaps(a.dh_out.data, sb, a.dh0.data, sb))
    return invalid_argument("dh0 partially overlaps dh_out: pass the same buffer or disjoint ones");
  const auto pl = detail::backward_plan(a, p, path);
  if (workspace_bytes < pl.total || (!workspace && pl.total > 0))
    return invalid_argument("cema backward needs " + std::to_string(pl.total) + " bytes of workspace, got " +
                            std::to_string(workspace_bytes));
  const bool grads = detail::wants_parameter_gradients(a);
  if (p.batch == 0 || p.length == 0) {
    // h_out = h0: dh0 = dh_out, and no parameter sees a step.
    if (!a.dh0.empty() && sb > 0) {
      if (a.dh_out.empty()) {
        GECKO_CUDA_RETURN(cudaMemsetAsync(a.dh0.data, 0, sb, stream));
      } else if (a.dh0.data != a.dh_out.data) {
        GECKO_CUDA_RETURN(cudaMemcpyAsync(a.dh0.data, a.dh_out.data, sb, cudaMemcpyDeviceToDevice, stream));
      }
    }
    const std::size_t dn = static_cast<std::size_t>(p.channels * p.states) * 4;
    if (!a.dalpha.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dalpha.data, 0, dn, stream));
    if (!a.ddelta.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.ddelta.data, 0, dn, stream));
    if (!a.dtheta.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dtheta.data, 0, p.channels * 4, stream));
    if (!a.dgamma.empty()) GECKO_CUDA_RETURN(cudaMemsetAsync(a.dgamma.data, 0, 2 * dn, stream));
    return Status::success();
  }
  char* ws = static_cast<char*>(workspace);
  if (pl.chunked) return detail::launch_chunked_backward(a, p, saved, ws, pl, stream);
  kernels::BackwardParams kp{};
  kp.tl = pl.tl;
  kp.x_sb = a.x.stride(0);
  kp.x_sl = a.x.stride(1);
  kp.dy_sb = a.dy.stride(0);
  kp.dy_sl = a.dy.stride(1);
  kp.dx_sb = a.dx.stride(0);
  kp.dx_sl = a.dx.stride(1);
  kp.add_residual = a.add_residual;
  kp.bos = a.bos_mask.data;
  kp.h0 = reinterpret_cast<const float2*>(a.h0.data);
  kp.dh_out = reinterpret_cast<const float2*>(a.dh_out.data);
  kp.states = reinterpret_cast<const float2*>(saved.states.data);
  kp.dh0 = reinterpret_cast<float2*>(a.dh0.data);
  kp.agg = reinterpret_cast<float2*>(ws + pl.agg);
  kp.carry = reinterpret_cast<float2*>(ws + pl.states);
  kp.partial = grads ? reinterpret_cast<float*>(ws + pl.partial) : nullptr;
  kp.resets = reinterpret_cast<unsigned*>(ws + pl.resets);
  kp.cf = detail::launch_coefficients(a, p, ws, pl, stream);
  GECKO_RETURN_IF_ERROR(last_launch_status("cema coefficients"));
  if (a.dh_out.empty()) {
    GECKO_RETURN_IF_ERROR((detail::launch_backward<T, false>(kp, pl, a.x.data, a.dy.data, a.dx.data, stream)));
  } else {
    GECKO_RETURN_IF_ERROR((detail::launch_backward<T, true>(kp, pl, a.x.data, a.dy.data, a.dx.data, stream)));
  }
  if (grads) {
    // Sum the per-tile contributions over time (in tile order), then over the batch and through
    // the chain rule (in index order): deterministic without atomics.
    float* slot = reinterpret_cast<float*>(ws + pl.slot);
    const long long dn = p.channels * p.states, n = p.batch * 5 * dn;
    kernels::reduce_partials_kernel<><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
        kp.partial, pl.tl.time_tiles, static_cast<int>(p.batch), dn, slot);
    GECKO_RETURN_IF_ERROR(last_launch_status("cema gradient sums"));
    GECKO_RETURN_IF_ERROR(detail::launch_parameter_gradients(a, p, slot, stream));
  }
  return Status::success();
}

}  // namespace gecko::cema::cuda
