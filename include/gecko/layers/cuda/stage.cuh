// Helpers shared by the GPU layers: reshaping row buffers into the views each op expects, and
// running one op with scratch from the workspace arena (or only measuring it).
#pragma once

#include <cstddef>

#include "gecko/core/status.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/layers/cuda/arena.hpp"

namespace gecko::layers::cuda {

// [rows, cols] device buffer viewed as [B, L, cols] / [B, L, H, cols / H].
template <class U>
TensorView<U> bl(U* p, std::int64_t B, std::int64_t L, std::int64_t cols) {
  return TensorView<U>::contiguous(p, {B, L, cols}, Memory::kDevice);
}
template <class U>
TensorView<U> blh(U* p, std::int64_t B, std::int64_t L, std::int64_t H, std::int64_t d) {
  return TensorView<U>::contiguous(p, {B, L, H, d}, Memory::kDevice);
}
// Runs one op: `size(bytes)` asks its workspace, which is carved from `ws` for the duration of
// `run(workspace, bytes)`; while measuring, nothing runs.
template <class SizeFn, class RunFn>
Status stage(Arena& ws, SizeFn&& size, RunFn&& run) {
  std::size_t bytes = 0;
  GECKO_RETURN_IF_ERROR(size(bytes));
  const std::size_t mark = ws.used();
  void* p = ws.take<char>(bytes);
  GECKO_RETURN_IF_ERROR(ws.status("workspace"));
  if (!ws.measuring()) GECKO_RETURN_IF_ERROR(run(p, bytes));
  ws.rewind(mark);
  return Status::success();
}

// Runs an op that needs no workspace (skipped while measuring).
template <class RunFn>
Status stage(Arena& ws, RunFn&& run) {
  return ws.measuring() ? Status::success() : run();
}

}  // namespace gecko::layers::cuda
