// Element-wise maps over row matrices, optionally fused with deterministic column sums.
//
// A map reads NIN row matrices and writes NOUT row matrices of the same rows x cols (each with
// its own row stride; a null output is computed but not stored). The per-element functor is
//   __device__ void operator()(const float (&in)[NIN], float (&out)[NOUT]) const
// and sees fp32 values; storage is T. Outputs may alias inputs element for element (same pointer
// and row stride): every thread loads its words before it stores them, and no word is touched by
// two threads.
//
// Fast path: 16-byte words (VEC = 16 / sizeof(T) elements) when every pointer is 16-byte aligned,
// cols and every row stride are multiples of VEC; otherwise one element per "word". Dense inputs
// (every row stride == cols) are flattened into one long row.
//
// map():        grid-stride over words with one wave of CTAs, kUnroll words in flight per thread.
// map_colsum(): the same map, tiled as (32 words) x (a split of the rows) per 256-thread CTA; each
//               CTA also sums output RED (as stored, i.e. rounded to T) over its rows and writes
//               one partial row; a second kernel adds the partials in split order. Bitwise
//               reproducible: the split depends only on the shape and the device's SM count.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "gecko/core/cuda_check.hpp"
#include "gecko/core/device.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/core/vector_io.cuh"

namespace gecko::elementwise {

inline constexpr int kUnroll = 2;  // words in flight per thread (more costs occupancy)
inline constexpr int kMapThreads = 256;
inline constexpr int kColWords = 32;  // words per column tile of map_colsum (one warp's width)
inline constexpr int kColRows = 8;    // row lanes per column tile (blockDim.y)

template <class T, int NIN, int NOUT>
struct Problem {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  const T* in[NIN] = {};
  std::int64_t in_stride[NIN] = {};
  T* out[NOUT] = {};  // null: not stored
  std::int64_t out_stride[NOUT] = {};
};

namespace kernels {

template <class T, int VEC>
__device__ __forceinline__ Packed<T, VEC> load_word(const T* p) {
  return *reinterpret_cast<const Packed<T, VEC>*>(p);
}

// Applies op to one word: raw inputs in, fp32 outputs (already rounded through T) out, stores.
template <class T, int VEC, int NIN, int NOUT, class Op>
__device__ __forceinline__ void apply_word(const Op& op, const Packed<T, VEC> (&raw)[NIN], float (&res)[NOUT][VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    float in[NIN], out[NOUT];
#pragma unroll
    for (int a = 0; a < NIN; ++a) in[a] = to_float(raw[a].v[j]);
    op(in, out);
#pragma unroll
    for (int b = 0; b < NOUT; ++b) res[b][j] = out[b];
  }
}

// Rounds the outputs to T, stores the present ones, and leaves in res what was stored.
template <class T, int VEC, int NOUT>
__device__ __forceinline__ void store_word(T* const (&out)[NOUT], const std::int64_t (&stride)[NOUT], std::int64_t row,
                                           std::int64_t col, float (&res)[NOUT][VEC]) {
#pragma unroll
  for (int b = 0; b < NOUT; ++b) {
    Packed<T, VEC> pk;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      pk.v[j] = from_float<T>(res[b][j]);
      res[b][j] = to_float(pk.v[j]);  // what was stored, for column sums
    }
    if (out[b]) *reinterpret_cast<Packed<T, VEC>*>(out[b] + row * stride[b] + col) = pk;
  }
}

template <class T, int VEC, int NIN, int NOUT, class Op>
__global__ void __launch_bounds__(kMapThreads) map_kernel(Problem<T, NIN, NOUT> p, Op op) {
  const std::int64_t words = p.cols / VEC;
  const std::int64_t total = p.rows * words;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t w0 = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w0 < total;
       w0 += kUnroll * step) {
    Packed<T, VEC> raw[kUnroll][NIN];
    std::int64_t row[kUnroll], col[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t w = w0 + u * step;
      row[u] = w / words;
      col[u] = (w - row[u] * words) * VEC;
      if (w < total) {
#pragma unroll
        for (int a = 0; a < NIN; ++a) raw[u][a] = load_word<T, VEC>(p.in[a] + row[u] * p.in_stride[a] + col[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (w0 + u * step >= total) break;
      float res[NOUT][VEC];
      apply_word<T, VEC, NIN, NOUT>(op, raw[u], res);
      store_word<T, VEC, NOUT>(p.out, p.out_stride, row[u], col[u], res);
    }
  }
}

// Grid (column tiles, row splits), block (kColWords, kColRows). partial[split * cols + col].
template <class T, int VEC, int NIN, int NOUT, int RED, class Op>
__global__ void __launch_bounds__(kColWords* kColRows)
    map_colsum_kernel(Problem<T, NIN, NOUT> p, Op op, std::int64_t rows_per_split, float* __restrict__ partial) {
  __shared__ float red[kColRows][kColWords * VEC + 1];
  const std::int64_t words = p.cols / VEC;
  const std::int64_t word = static_cast<std::int64_t>(blockIdx.x) * kColWords + threadIdx.x;
  const std::int64_t col = word * VEC;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_split;
  const std::int64_t r1 = r0 + rows_per_split < p.rows ? r0 + rows_per_split : p.rows;
  float acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
  if (word < words) {
    for (std::int64_t rb = r0 + threadIdx.y; rb < r1; rb += kUnroll * kColRows) {
      Packed<T, VEC> raw[kUnroll][NIN];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const std::int64_t r = rb + u * kColRows;
        if (r < r1) {
#pragma unroll
          for (int a = 0; a < NIN; ++a) raw[u][a] = load_word<T, VEC>(p.in[a] + r * p.in_stride[a] + col);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const std::int64_t r = rb + u * kColRows;
        if (r >= r1) break;
        float res[NOUT][VEC];
        apply_word<T, VEC, NIN, NOUT>(op, raw[u], res);
        store_word<T, VEC, NOUT>(p.out, p.out_stride, r, col, res);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] += res[RED][j];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) red[threadIdx.y][threadIdx.x * VEC + j] = acc[j];
  __syncthreads();
  // Thread t of the block sums column t, t + 256, ... of the tile over the row lanes in order.
  const int t = threadIdx.y * kColWords + threadIdx.x;
  const std::int64_t tile_col0 = static_cast<std::int64_t>(blockIdx.x) * kColWords * VEC;
  for (int c = t; c < kColWords * VEC; c += kColWords * kColRows) {
    if (tile_col0 + c >= p.cols) break;
    float s = 0.f;
#pragma unroll
    for (int y = 0; y < kColRows; ++y) s += red[y][c];
    partial[static_cast<std::int64_t>(blockIdx.y) * p.cols + tile_col0 + c] = s;
  }
}

// out[c] = (accumulate ? out[c] : 0) + sum over s of partial[s * cols + c], s in order.
// (A template only so that the header can be included by several translation units.)
template <int kUnused = 0>
__global__ void sum_partials_kernel(const float* __restrict__ partial, int parts, std::int64_t cols, bool accumulate,
                                    float* __restrict__ out) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.f;
  for (int k = 0; k < parts; ++k) s += partial[static_cast<std::int64_t>(k) * cols + c];
  out[c] = accumulate ? out[c] + s : s;
}

}  // namespace kernels

// ---- host side -------------------------------------------------------------------------------

// True when every pointer and stride admits 16-byte words.
template <class T, int NIN, int NOUT>
bool vectorizable(const Problem<T, NIN, NOUT>& p) {
  constexpr int VEC = kVec16<T>;
  if (p.cols % VEC != 0) return false;
  for (int a = 0; a < NIN; ++a)
    if (reinterpret_cast<std::uintptr_t>(p.in[a]) % 16 != 0 || p.in_stride[a] % VEC != 0) return false;
  for (int b = 0; b < NOUT; ++b)
    if (p.out[b] && (reinterpret_cast<std::uintptr_t>(p.out[b]) % 16 != 0 || p.out_stride[b] % VEC != 0)) return false;
  return true;
}

template <class T, int NIN, int NOUT>
Problem<T, NIN, NOUT> flattened(Problem<T, NIN, NOUT> p) {
  if (p.rows <= 1) return p;
  for (int a = 0; a < NIN; ++a)
    if (p.in_stride[a] != p.cols) return p;
  for (int b = 0; b < NOUT; ++b)
    if (p.out[b] && p.out_stride[b] != p.cols) return p;
  p.cols *= p.rows;
  p.rows = 1;
  for (int a = 0; a < NIN; ++a) p.in_stride[a] = p.cols;
  for (int b = 0; b < NOUT; ++b) p.out_stride[b] = p.cols;
  return p;
}

namespace detail {

// One wave of CTAs: as many as fit on the device at once, fewer when there is less work.
template <class T, int VEC, int NIN, int NOUT, class Op>
Status launch_map(const Problem<T, NIN, NOUT>& p, const Op& op, cudaStream_t stream, const char* what) {
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  const auto fn = &kernels::map_kernel<T, VEC, NIN, NOUT, Op>;
  int per_sm = 0;
  GECKO_CUDA_RETURN(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kMapThreads, 0));
  const std::int64_t words = p.rows * (p.cols / VEC);
  const std::int64_t want = (words + kMapThreads * kUnroll - 1) / (kMapThreads * kUnroll);
  const std::int64_t cap = static_cast<std::int64_t>(dev->sm_count) * (per_sm > 0 ? per_sm : 1);
  const unsigned blocks = static_cast<unsigned>(want < cap ? (want > 0 ? want : 1) : cap);
  fn<<<blocks, kMapThreads, 0, stream>>>(p, op);
  return last_launch_status(what);
}

}  // namespace detail

template <class T, int NIN, int NOUT, class Op>
Status map(const Problem<T, NIN, NOUT>& problem, const Op& op, cudaStream_t stream, const char* what) {
  if (problem.rows == 0 || problem.cols == 0) return Status::success();
  const auto p = flattened(problem);
  constexpr int VEC = kVec16<T>;
  if (vectorizable(p)) return detail::launch_map<T, VEC>(p, op, stream, what);
  return detail::launch_map<T, 1>(p, op, stream, what);
}

// How map_colsum() splits the rows: a function of (rows, cols, SM count) only, so the workspace
// query needs no pointers and the split (hence the summation order) never changes for a shape.
struct ColsumPlan {
  std::int64_t splits = 0;
  std::int64_t rows_per_split = 0;
  std::size_t partial_bytes = 0;
};

inline Status plan_colsum(std::int64_t rows, std::int64_t cols, ColsumPlan& plan) {
  plan = ColsumPlan{};
  if (rows <= 0 || cols <= 0) return Status::success();
  const DeviceInfo* dev = nullptr;
  GECKO_RETURN_IF_ERROR(current_device_info(&dev));
  const std::int64_t tile_cols = kColWords * 8;  // planned as 16-byte words of 2-byte elements
  const std::int64_t col_tiles = (cols + tile_cols - 1) / tile_cols;
  const std::int64_t target = static_cast<std::int64_t>(dev->sm_count) * 8;
  std::int64_t splits = (target + col_tiles - 1) / col_tiles;
  const std::int64_t quantum = kColRows * kUnroll;
  const std::int64_t max_splits = (rows + quantum - 1) / quantum;
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  if (splits > 65535) splits = 65535;
  std::int64_t per = (rows + splits - 1) / splits;
  per = (per + quantum - 1) / quantum * quantum;
  plan.rows_per_split = per;
  plan.splits = (rows + per - 1) / per;
  plan.partial_bytes = static_cast<std::size_t>(plan.splits * cols) * sizeof(float);
  return Status::success();
}

inline Status colsum_workspace_size(std::int64_t rows, std::int64_t cols, std::size_t& bytes) {
  ColsumPlan plan;
  GECKO_RETURN_IF_ERROR(plan_colsum(rows, cols, plan));
  bytes = plan.partial_bytes;
  return Status::success();
}

// The map, plus colsum[c] (=|+=) sum over rows of output RED as stored. `partial` is workspace
// of colsum_workspace_size(rows, cols) bytes. With zero rows, colsum is zeroed (or left, when accumulating).
template <int RED, class T, int NIN, int NOUT, class Op>
Status map_colsum(const Problem<T, NIN, NOUT>& p, const Op& op, float* colsum, bool accumulate, void* workspace,
                  std::size_t workspace_bytes, cudaStream_t stream, const char* what) {
  static_assert(RED >= 0 && RED < NOUT, "RED names one of the outputs");
  if (p.cols == 0) return Status::success();
  if (p.rows == 0) {
    if (!accumulate) GECKO_CUDA_RETURN(cudaMemsetAsync(colsum, 0, p.cols * sizeof(float), stream));
    return Status::success();
  }
  const bool vec = vectorizable(p);
  ColsumPlan plan;
  GECKO_RETURN_IF_ERROR(plan_colsum(p.rows, p.cols, plan));
  if (workspace_bytes < plan.partial_bytes || !workspace)
    return invalid_argument(std::string(what) + ": column sums need " + std::to_string(plan.partial_bytes) +
                            " bytes of workspace, got " + std::to_string(workspace_bytes));
  float* partial = static_cast<float*>(workspace);
  const std::int64_t words = vec ? p.cols / kVec16<T> : p.cols;
  const dim3 grid(static_cast<unsigned>((words + kColWords - 1) / kColWords), static_cast<unsigned>(plan.splits));
  const dim3 block(kColWords, kColRows);
  if (vec)
    kernels::map_colsum_kernel<T, kVec16<T>, NIN, NOUT, RED><<<grid, block, 0, stream>>>(p, op, plan.rows_per_split, partial);
  else
    kernels::map_colsum_kernel<T, 1, NIN, NOUT, RED><<<grid, block, 0, stream>>>(p, op, plan.rows_per_split, partial);
  GECKO_RETURN_IF_ERROR(last_launch_status(what));
  const unsigned sum_blocks = static_cast<unsigned>((p.cols + 255) / 256);
  kernels::sum_partials_kernel<><<<sum_blocks, 256, 0, stream>>>(partial, static_cast<int>(plan.splits), p.cols, accumulate,
                                                              colsum);
  return last_launch_status(what);
}

// ---- functors shared by several ops ---------------------------------------------------------

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
__device__ __forceinline__ float silu(float v) { return v * sigmoid(v); }
// d silu / dv = s (1 + v (1 - s)), s = sigmoid(v)
__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

}  // namespace gecko::elementwise
