// The MEGA layer's streaming inference state (the authors' per-layer cache plus the model's segment
// bookkeeping, spec_attn_awm_layer.md 3.5), held on the host in double for the CPU reference.
//
// Its size is bounded whatever the stream length: the attention cache holds the tokens the working
// memory has not absorbed yet, i.e. the previous chunk (once there is one) and the tokens of the
// current chunk seen so far, P <= 2C - 1. Whenever a call ends at a chunk boundary it is cut to
// the last C tokens. The working memory and the norm and CEMA states have fixed sizes.
//
// Update per call of L tokens at position p (what cpu::forward does after computing the outputs):
//   * norm count/mean/var, CEMA h <- the ops' returned states;
//   * memory, log_norm            <- the working memory's returned state (once it has one);
//   * sca_prev_k, awm_prev_k, prev_v, prev_segment_idx <- [cache ; this call's rope(k), ak, v, ids],
//     cut to the last C tokens when (p + L) % C == 0;
//   * prev_segment_count          <- this call's first id when the stream starts; at a chunk boundary
//     the id of the token just before the last C of that concatenation (the last token of the chunk
//     the working memory absorbed last, i.e. the memory's document);
//   * position += L.
// The block's state is the MEGA layer's (the feed-forward has none). A stream is either in
// document mode (every call passes segment_idx) or not; its first call decides.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gecko/core/status.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/mega/args.hpp"

namespace gecko::layers::mega {

struct State {
  std::int64_t batch = 0;        // fixed by the first call; 0 = a fresh stream
  std::int64_t position = 0;     // tokens processed: the next token's absolute position (RoPE start)
  bool documents = false;        // the stream passes segment_idx (fixed by the first call)
  // Timestep decay norm: raw decayed statistics, as the authors' cache stores them.
  std::vector<std::int64_t> norm_count;  // [B]
  std::vector<double> norm_mean;         // [B, G]
  std::vector<double> norm_var;          // [B, G]
  // Complex EMA hidden state.
  std::vector<double> cema_h;            // [B, D, N, 2]
  // Attention cache: tokens not yet absorbed by the working memory (token-major).
  std::int64_t cached = 0;               // P
  std::vector<double> sca_prev_k;        // [B, P, H, dz] keys after RoPE (sliding chunk attention)
  std::vector<double> awm_prev_k;        // [B, P, H, dz] raw ak (working memory key pre-activations)
  std::vector<double> prev_v;            // [B, P, H, dv] values, shared by both
  // Adaptive working memory; absent until the stream completes its first chunk.
  bool has_memory = false;
  std::vector<double> memory;            // [B, H, dz, dv]
  std::vector<double> log_norm;          // [B, H, dz]; -inf where nothing was absorbed
  // Documents (document mode only).
  std::vector<std::int64_t> prev_segment_idx;    // [B, P] ids of the cached tokens
  std::vector<std::int64_t> prev_segment_count;  // [B] the memory's document

  bool fresh() const { return batch == 0; }
  void reset() { *this = State{}; }
};

namespace detail {

inline Status check_size(std::size_t got, std::int64_t want, const char* name) {
  if (static_cast<std::int64_t>(got) != want)
    return invalid_argument(std::string("state.") + name + " holds " + std::to_string(got) + " values, expected " +
                            std::to_string(want) + " (a state from another config or batch size?)");
  return Status::success();
}

}  // namespace detail

// Checks that a call described by p may continue stream s (p.start must be s.position), and that
// s is internally consistent with the config, so that a state from another config cannot be read
// out of bounds.
inline Status check_state(const GeckoConfig& c, const State& s, const Problem& p) {
  if (s.fresh()) {
    if (s.position != 0) return invalid_argument("state.position is " + std::to_string(s.position) +
                                                 " but state.batch is 0 (a fresh stream starts at 0)");
    return Status::success();
  }
  if (s.batch != p.batch)
    return invalid_argument("x has B=" + std::to_string(p.batch) + " rows but the stream in state has B=" +
                            std::to_string(s.batch));
  if (s.documents != p.segments)
    return invalid_argument(s.documents ? "segment_idx is required: this stream started in document mode"
                                        : "segment_idx is given but this stream started without documents "
                                          "(reset the state to start a new stream)");
  const std::int64_t B = s.batch, C = c.chunk_size, H = c.num_heads, dz = c.z_head_dim(), dv = c.v_head_dim();
  const std::int64_t P = s.cached;
  const std::int64_t in_chunk = s.position % C;
  // The cache holds the previous chunk (once there is one) plus the current chunk's tokens.
  const std::int64_t want_P = s.position < C ? s.position : C + in_chunk;
  if (P != want_P)
    return invalid_argument("state.cached is " + std::to_string(P) + " tokens, expected " + std::to_string(want_P) +
                            " at position " + std::to_string(s.position) + " (C=" + std::to_string(C) + ")");
  if (s.has_memory != (s.position >= C))
    return invalid_argument("state.has_memory must be true exactly once the stream has completed a chunk");
  GECKO_RETURN_IF_ERROR(detail::check_size(s.norm_count.size(), B, "norm_count"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.norm_mean.size(), B * c.timenorm_num_groups, "norm_mean"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.norm_var.size(), B * c.timenorm_num_groups, "norm_var"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.cema_h.size(), B * c.model_dim * c.cema_ndim * 2, "cema_h"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.sca_prev_k.size(), B * P * H * dz, "sca_prev_k"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.awm_prev_k.size(), B * P * H * dz, "awm_prev_k"));
  GECKO_RETURN_IF_ERROR(detail::check_size(s.prev_v.size(), B * P * H * dv, "prev_v"));
  if (s.has_memory) {
    GECKO_RETURN_IF_ERROR(detail::check_size(s.memory.size(), B * H * dz * dv, "memory"));
    GECKO_RETURN_IF_ERROR(detail::check_size(s.log_norm.size(), B * H * dz, "log_norm"));
  }
  if (s.documents) {
    GECKO_RETURN_IF_ERROR(detail::check_size(s.prev_segment_idx.size(), B * P, "prev_segment_idx"));
    GECKO_RETURN_IF_ERROR(detail::check_size(s.prev_segment_count.size(), B, "prev_segment_count"));
  }
  return Status::success();
}

}  // namespace gecko::layers::mega
