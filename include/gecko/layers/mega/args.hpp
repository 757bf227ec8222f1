// The MEGA layer (the authors' MovingAverageGatedAttention, spec_attn_awm_layer.md 3.2): its
// parameters, call arguments, the streaming call rule, and their validation.
//
// x [B, L, D] -> out [B, L, D]:
//   tsn  = TimestepDecayNorm(x; bos_mask)                 (timenorm.weight/bias, carried count/mean/var)
//   mx   = GroupRMSNorm(CEMA(tsn; bos_mask) + tsn)        (cema.*, rmsnorm.weight; CEMA state carried)
//   z    = znorm(wz(mx))                                  (per-head RMSNorm, no affine)
//   q, k, aq, ak = z * (gamma_i + 1) / sqrt(dz) + beta_i  (rows i = 0..3 of gamma, beta [4, H*dz])
//   v    = silu(wv(tsn))                                  (the timenorm output, not mx)
//   r    = silu(wr(mx))
//   attn = SCA(q, k, v; segment_idx) * r + AWM(aq, ak, v; segment_idx)
//   out  = wh1(mx) + wh2(attn) + x
// Linear layers are y = x W^T + b with W stored out x in; wh2 has no bias. bos_mask resets the
// timestep norm and CEMA; segment_idx masks sliding chunk attention and working memory. Both are
// optional and independent, as in the authors' module (their model derives segment_idx as the
// running count of BOS tokens).
//
// Streaming (spec 3.5): a call may start anywhere its tokens stay inside one chunk, or be a whole
// number of chunks starting at a chunk boundary. In symbols, with p the tokens already processed:
//   p % C + L <= C                  (the tail path of SCA and AWM: prompt tails, decoding)
//   p % C == 0 and L % C == 0       (the full path: training, prefill)
// This admits every call the authors' model allows (L >= C aligned at both ends; 1 < L < C at a
// chunk boundary; L = 1 anywhere) and also multi-token calls inside a chunk, which the ops handle
// the same way. A call without a State starts a stream at p = 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/parameters.hpp"

namespace gecko::layers::mega {

// Parameter order of parameter_specs() (the authors' module registers them in a different order;
// loading is by name, so order does not matter).
enum Param : int {
  kTimenormWeight, kTimenormBias,
  kCemaAlpha, kCemaDelta, kCemaTheta, kCemaGamma,
  kRmsnormWeight,
  kWzWeight, kWzBias, kWvWeight, kWvBias, kWrWeight, kWrBias,
  kWh1Weight, kWh1Bias, kWh2Weight,
  kGamma, kBeta,
  kNumParams
};

// Names and shapes exactly as the authors' module's state_dict has them. Norm weights are
// offsets (effective scale = weight + 1); cema.gamma is complex stored as [D, N, (re, im)].
inline std::vector<ParamSpec> parameter_specs(const GeckoConfig& c) {
  const std::int64_t D = c.model_dim, Z = c.z_dim, E = c.value_dim, N = c.cema_ndim;
  return {
      {"timenorm.weight", {D}}, {"timenorm.bias", {D}},
      {"cema.alpha", {D, N}},   {"cema.delta", {D, N}},  {"cema.theta", {D}}, {"cema.gamma", {D, N, 2}},
      {"rmsnorm.weight", {D}},
      {"wz.weight", {Z, D}},    {"wz.bias", {Z}},
      {"wv.weight", {E, D}},    {"wv.bias", {E}},
      {"wr.weight", {E, D}},    {"wr.bias", {E}},
      {"wh1.weight", {D, D}},   {"wh1.bias", {D}},
      {"wh2.weight", {D, E}},
      {"gamma", {4, Z}},        {"beta", {4, Z}},
  };
}

// Zero-filled parameters (or a gradient set) for this config.
inline ParameterSet make_parameters(const GeckoConfig& c) { return ParameterSet(parameter_specs(c)); }

template <class T>
struct ForwardArgs {
  TensorView<const T> x;                       // [B, L, D], unit stride in D, outer strides free
  TensorView<const std::uint8_t> bos_mask;     // [B, L] 1 = a document starts here, or empty
  TensorView<const std::int64_t> segment_idx;  // [B, L] document ids (absolute in the stream), or empty
  TensorView<T> out;                           // [B, L, D], unit stride in D
};

// The backward recomputes the forward from x (nothing is saved), from the same starting state.
template <class T>
struct BackwardArgs {
  TensorView<const T> x;                       // [B, L, D] forward input
  TensorView<const std::uint8_t> bos_mask;     // [B, L] or empty, as in forward
  TensorView<const std::int64_t> segment_idx;  // [B, L] or empty, as in forward
  TensorView<const T> dout;                    // [B, L, D]
  TensorView<T> dx;                            // [B, L, D]
};

struct Problem {
  std::int64_t batch = 0, length = 0;
  std::int64_t start = 0;        // tokens processed before this call (absolute position of token 0)
  std::int64_t chunk = 0;
  bool full = false;             // whole chunks from a boundary: the full path of SCA and AWM
  bool ends_chunk = false;       // the call ends at a chunk boundary: the cache is cut to C tokens
  bool segments = false;
};

namespace detail {
inline std::string str(std::int64_t v) { return std::to_string(v); }
}  // namespace detail

// The streaming call rule (top of this file).
inline Status check_call(std::int64_t start, std::int64_t L, std::int64_t C) {
  using detail::str;
  if (L < 1) return invalid_argument("x must hold at least one token, got L=" + str(L));
  const std::int64_t offset = start % C;
  if (offset + L <= C) return Status::success();
  if (offset == 0 && L % C == 0) return Status::success();
  if (offset != 0)
    return invalid_argument("a call of L=" + str(L) + " tokens at stream position " + str(start) +
                            " (chunk offset " + str(offset) + ", C=" + str(C) + ") crosses a chunk boundary: a call "
                            "that does not start at a chunk boundary must end by the next one (offset + L <= C)");
  return invalid_argument("a call of L=" + str(L) + " tokens at a chunk boundary (position " + str(start) +
                          ") must be shorter than C=" + str(C) + " or a multiple of it");
}

namespace detail {

template <class T>
Status check_activation(const TensorView<T>& t, const char* name, std::int64_t B, std::int64_t L, std::int64_t D,
                        Memory where) {
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {B, L, D}));
  GECKO_RETURN_IF_ERROR(check_memory(t, name, where));
  return check_inner_contiguous(t, name);
}

template <class T>
Status check_optional(const TensorView<T>& t, const char* name, std::int64_t B, std::int64_t L, Memory where) {
  if (t.empty()) return Status::success();
  GECKO_RETURN_IF_ERROR(check_shape(t, name, {B, L}));
  return check_memory(t, name, where);
}

// The config, x and the masks; start is the stream position the call begins at.
template <class A>
Status check_inputs(const GeckoConfig& c, const A& a, std::int64_t start, Memory where, Problem& p) {
  p = Problem{};
  GECKO_RETURN_IF_ERROR(validate(c));
  if (a.x.empty()) return invalid_argument("x is missing (null data)");
  if (a.x.rank != 3) return invalid_argument("x has shape " + a.x.shape_string() + ", expected [B, L, D]");
  p.batch = a.x.size(0);
  p.length = a.x.size(1);
  p.start = start;
  p.chunk = c.chunk_size;
  if (p.batch < 1) return invalid_argument("x has shape " + a.x.shape_string() + ", expected B >= 1");
  GECKO_RETURN_IF_ERROR(check_activation(a.x, "x", p.batch, p.length, c.model_dim, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.bos_mask, "bos_mask", p.batch, p.length, where));
  GECKO_RETURN_IF_ERROR(check_optional(a.segment_idx, "segment_idx", p.batch, p.length, where));
  GECKO_RETURN_IF_ERROR(check_call(start, p.length, p.chunk));
  p.full = start % p.chunk == 0 && p.length % p.chunk == 0;
  p.ends_chunk = (start + p.length) % p.chunk == 0;
  p.segments = !a.segment_idx.empty();
  return Status::success();
}

}  // namespace detail

template <class T>
Status validate(const GeckoConfig& c, const ForwardArgs<T>& a, std::int64_t start, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_inputs(c, a, start, where, p));
  if (a.out.empty()) return invalid_argument("out is missing (null data)");
  return detail::check_activation(a.out, "out", p.batch, p.length, c.model_dim, where);
}

template <class T>
Status validate(const GeckoConfig& c, const BackwardArgs<T>& a, std::int64_t start, Memory where, Problem& p) {
  GECKO_RETURN_IF_ERROR(detail::check_inputs(c, a, start, where, p));
  if (a.dout.empty()) return invalid_argument("dout is missing (null data)");
  GECKO_RETURN_IF_ERROR(detail::check_activation(a.dout, "dout", p.batch, p.length, c.model_dim, where));
  if (a.dx.empty()) return invalid_argument("dx is missing (null data)");
  return detail::check_activation(a.dx, "dx", p.batch, p.length, c.model_dim, where);
}

}  // namespace gecko::layers::mega
