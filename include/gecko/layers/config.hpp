// GeckoConfig: the sizes and options of one Gecko block (MEGA layer + normalized feed-forward),
// named after the authors' ModelConf fields (spec_attn_awm_layer.md section 0). The defaults are
// their 7B configuration. Every layer entry point validates the config first.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "gecko/core/status.hpp"
#include "gecko/ops/rope/args.hpp"
#include "gecko/ops/timestep_norm/args.hpp"

namespace gecko::layers {

// num_rope_heads value meaning "every head rotates" (the authors' None).
inline constexpr int kAllRopeHeads = -1;

struct GeckoConfig {
  std::int64_t model_dim = 4096;             // D
  std::int64_t z_dim = 1024;                 // H * dz: the shared q/k representation (wz output)
  std::int64_t value_dim = 8192;             // H * dv: the value / gate width (wv, wr output)
  std::int64_t num_heads = 4;                // H, shared by sliding chunk attention and working memory
  std::int64_t cema_ndim = 16;               // N, complex EMA order per channel (no upper limit here)
  std::int64_t chunk_size = 2048;            // C
  std::int64_t timenorm_num_groups = 64;     // timestep decay norm groups
  double timenorm_beta1 = 0.999;
  double timenorm_beta2 = 0.9999;
  // How the timestep norm forward rounds beta. kExact is the model as written; kReferenceFloat32
  // reproduces the authors' float32 beta (needed to meet 1e-4 on their golden vectors, see
  // ops/timestep_norm/args.hpp and docs/numerics.md).
  timestep_norm::BetaPrecision timenorm_beta_precision = timestep_norm::BetaPrecision::kExact;
  std::int64_t layernorm_num_groups = 1;     // groups of the MEGA RMSNorm and of the NFFN LayerNorm
  float norm_eps = 1e-5f;                    // every norm
  double rope_base = 500000.0;
  int num_rope_heads = kAllRopeHeads;        // heads [0, n) rotate; 0 = no RoPE; kAllRopeHeads = H
  std::int64_t ffn_hidden_dim = 8192;        // SwiGLU hidden width (fc1, fc3 output)

  std::int64_t z_head_dim() const { return num_heads > 0 ? z_dim / num_heads : 0; }
  std::int64_t v_head_dim() const { return num_heads > 0 ? value_dim / num_heads : 0; }
  int rope_heads() const { return num_rope_heads == kAllRopeHeads ? static_cast<int>(num_heads) : num_rope_heads; }

  // The RoPE the MEGA layer asks sliding chunk attention for, at absolute position `start`.
  rope::RopeConfig rope(std::int64_t start) const {
    rope::RopeConfig r;
    r.base = rope_base;
    r.n_rope_heads = rope_heads();
    r.start = start;
    return r;
  }
};

namespace detail {

inline Status positive(std::int64_t v, const char* name) {
  if (v < 1) return invalid_argument(std::string("config.") + name + " must be >= 1, got " + std::to_string(v));
  return Status::success();
}

inline Status divides(std::int64_t whole, const char* whole_name, std::int64_t part, const char* part_name) {
  if (whole % part != 0)
    return invalid_argument(std::string("config.") + whole_name + " (" + std::to_string(whole) +
                            ") must be divisible by config." + part_name + " (" + std::to_string(part) + ")");
  return Status::success();
}

}  // namespace detail

// Checks sizes and options; messages name the config field.
inline Status validate(const GeckoConfig& c) {
  GECKO_RETURN_IF_ERROR(detail::positive(c.model_dim, "model_dim"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.z_dim, "z_dim"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.value_dim, "value_dim"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.num_heads, "num_heads"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.cema_ndim, "cema_ndim"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.chunk_size, "chunk_size"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.timenorm_num_groups, "timenorm_num_groups"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.layernorm_num_groups, "layernorm_num_groups"));
  GECKO_RETURN_IF_ERROR(detail::positive(c.ffn_hidden_dim, "ffn_hidden_dim"));
  GECKO_RETURN_IF_ERROR(detail::divides(c.z_dim, "z_dim", c.num_heads, "num_heads"));
  GECKO_RETURN_IF_ERROR(detail::divides(c.value_dim, "value_dim", c.num_heads, "num_heads"));
  GECKO_RETURN_IF_ERROR(detail::divides(c.model_dim, "model_dim", c.timenorm_num_groups, "timenorm_num_groups"));
  GECKO_RETURN_IF_ERROR(detail::divides(c.model_dim, "model_dim", c.layernorm_num_groups, "layernorm_num_groups"));
  const std::pair<double, const char*> betas[] = {{c.timenorm_beta1, "timenorm_beta1"},
                                                  {c.timenorm_beta2, "timenorm_beta2"}};
  for (const auto& [beta, name] : betas) {
    if (!(beta >= 0.0 && beta < 1.0))
      return invalid_argument(std::string("config.") + name + " must be in [0, 1), got " + std::to_string(beta));
    if (c.timenorm_beta_precision == timestep_norm::BetaPrecision::kReferenceFloat32 &&
        !(static_cast<float>(beta) < 1.0f))
      return invalid_argument(std::string("config.") + name + " rounds to 1 in float32 (reference_float32 precision)");
  }
  if (!(c.norm_eps >= 0.0f) || !std::isfinite(c.norm_eps))
    return invalid_argument("config.norm_eps must be finite and non-negative");
  if (c.num_rope_heads < kAllRopeHeads || c.num_rope_heads > c.num_heads)
    return invalid_argument("config.num_rope_heads must be in [0, num_heads=" + std::to_string(c.num_heads) +
                            "] or kAllRopeHeads (-1), got " + std::to_string(c.num_rope_heads));
  if (c.rope_heads() > 0) {
    if (c.z_head_dim() % 2 != 0)
      return invalid_argument("config.z_dim / num_heads = " + std::to_string(c.z_head_dim()) +
                              " must be even for RoPE (it rotates pairs); set num_rope_heads = 0 for none");
    if (!(c.rope_base > 0.0) || !std::isfinite(c.rope_base))
      return invalid_argument("config.rope_base must be positive and finite, got " + std::to_string(c.rope_base));
  }
  return Status::success();
}

}  // namespace gecko::layers
