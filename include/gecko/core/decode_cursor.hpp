// Where a streaming decode call sits, kept in device memory so that a captured CUDA graph can
// replay the same launches at every step: the kernels that depend on the position read it when
// they run instead of taking it as a launch argument.
#pragma once

#include <cstdint>

namespace gecko {

struct DecodeCursor {
  std::int64_t position = 0;  // absolute position of the call's first token (RoPE)
  std::int64_t prev = 0;      // rows of the carried attention window in use (P)
};

}  // namespace gecko
