// Rotary position embedding (RoPE): the runtime problem and its validation.
//
// x [B, L, H, d] (token-major, unit stride in d). For the heads h < n_rope_heads, each interleaved
// pair (x[2i], x[2i+1]) of the token at absolute position t = start + l is read as the complex
// number x[2i] + i x[2i+1] and multiplied by e^{i phi}, phi = t * theta_i:
//   y[2i]   = x[2i] cos(phi) - x[2i+1] sin(phi)
//   y[2i+1] = x[2i] sin(phi) + x[2i+1] cos(phi)
// The other heads pass through unchanged. Backward is the rotation by -phi (the map is orthogonal).
//
// theta_i = fp32(1 / fp32(base^(2i/d))) reproduces the authors' fp32 inverse-frequency buffer
// (spec 1.3) bit for bit. The angle itself is taken in double (t * theta_i, exact for t < 2^29)
// rather than in fp32 as the authors do: their fp32 product loses about 2^-24 * t radians, which
// is already ~0.03 rad at a million positions (see docs/numerics.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "gecko/core/config.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"

namespace gecko::rope {

// What other ops (sliding chunk attention, the Gecko block) pass to ask for RoPE.
struct RopeConfig {
  double base = 500000.0;    // the authors' 7B default; their tests use 10000
  int n_rope_heads = 0;      // heads [0, n_rope_heads) rotate, the rest pass through; 0 = no RoPE
  std::int64_t start = 0;    // absolute position of token 0 (tokens already seen by the stream)

  bool enabled() const { return n_rope_heads > 0; }
};

// theta_i for a head of width d: the power in double (Python's float), rounded to fp32, then the
// reciprocal in fp32, exactly as the authors build their `freqs` buffer.
inline float inv_freq(double base, std::int64_t d, std::int64_t i) {
  const float denom = static_cast<float>(std::pow(base, static_cast<double>(2 * i) / static_cast<double>(d)));
  return 1.0f / denom;
}

// The rotation angle of pair i at absolute position pos. Double keeps the angle exact where the
// authors' fp32 product drifts (pos < 2^29: 24-bit theta times a 29-bit integer fits in 53 bits).
GECKO_HOST_DEVICE inline double angle(std::int64_t pos, float theta) {
  return static_cast<double>(pos) * static_cast<double>(theta);
}

template <class T>
struct ForwardArgs {
  RopeConfig config;
  TensorView<const T> x;  // [B, L, H, d], unit stride in d, outer strides free
  TensorView<T> y;        // [B, L, H, d]; may be x itself (in place)
};

template <class T>
struct BackwardArgs {
  RopeConfig config;
  TensorView<const T> dy;  // [B, L, H, d]
  TensorView<T> dx;        // [B, L, H, d]; may be dy itself (in place)
};

struct Problem {
  std::int64_t batch = 0, length = 0, heads = 0, dim = 0;
  int n_rope_heads = 0;
};

// Checks a RopeConfig against the heads it will rotate. `prefix` names the config in messages
// ("rope." inside another op's args, "config." here).
inline Status validate_config(const RopeConfig& c, std::int64_t heads, std::int64_t dim, const std::string& prefix) {
  if (c.n_rope_heads < 0)
    return invalid_argument(prefix + "n_rope_heads must be >= 0 (0 = no RoPE), got " + std::to_string(c.n_rope_heads));
  if (c.n_rope_heads == 0) return Status::success();
  if (c.n_rope_heads > heads)
    return invalid_argument(prefix + "n_rope_heads=" + std::to_string(c.n_rope_heads) +
                            " exceeds the number of heads H=" + std::to_string(heads));
  if (dim % 2 != 0)
    return invalid_argument("head dimension " + std::to_string(dim) +
                            " must be even for RoPE (it rotates pairs (x[2i], x[2i+1]))");
  if (!(c.base > 0.0) || !std::isfinite(c.base))
    return invalid_argument(prefix + "base must be positive and finite, got " + std::to_string(c.base));
  if (c.start < 0) return invalid_argument(prefix + "start must be >= 0, got " + std::to_string(c.start));
  return Status::success();
}

namespace detail {

template <class T>
Status check_heads(const TensorView<T>& t, const char* name, Memory where, std::int64_t B, std::int64_t L,
                   std::int64_t H, std::int64_t d) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {B, L, H, d}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

template <class In, class Out>
Status validate_pair(const RopeConfig& c, const TensorView<In>& in, const char* in_name, const TensorView<Out>& out,
                     const char* out_name, Memory where, Problem& p) {
  p = Problem{};
  if (in.empty()) return invalid_argument(std::string(in_name) + " is missing (null data)");
  if (in.rank != 4)
    return invalid_argument(std::string(in_name) + " has shape " + in.shape_string() + ", expected [B, L, H, d]");
  p.batch = in.size(0);
  p.length = in.size(1);
  p.heads = in.size(2);
  p.dim = in.size(3);
  p.n_rope_heads = c.n_rope_heads;
  GECKO_RETURN_IF_ERROR(check_heads(in, in_name, where, p.batch, p.length, p.heads, p.dim));
  GECKO_RETURN_IF_ERROR(check_heads(out, out_name, where, p.batch, p.length, p.heads, p.dim));
  return validate_config(c, p.heads, p.dim, "config.");
}

}  // namespace detail

template <class T>
Status validate(const ForwardArgs<T>& a, Memory where, Problem& p) {
  return detail::validate_pair(a.config, a.x, "x", a.y, "y", where, p);
}

template <class T>
Status validate(const BackwardArgs<T>& a, Memory where, Problem& p) {
  return detail::validate_pair(a.config, a.dy, "dy", a.dx, "dx", where, p);
}

}  // namespace gecko::rope
