// Runs the CPU reference on one golden case and compares every output and gradient it holds.
// Dispatches on the case's "component" metadata; each component's checker has its own header.
#pragma once

#include <string>
#include <vector>

#include "check_common.hpp"
#include "check_cema.hpp"
#include "check_group_norm.hpp"
#include "check_layers.hpp"
#include "check_rope_sca.hpp"
#include "check_timestep_norm.hpp"
#include "check_working_memory.hpp"

namespace gecko::golden {

inline CaseResult check_case(const testing::GoldenCase& gc) {
  std::string component = gc.has_meta("component") ? gc.meta("component") : "";
  try {
    if (component == "group_rms_norm" || component == "group_layer_norm") return check_group_norm(gc);
    if (component == "timestep_decay_norm") return check_timestep_norm(gc);
    if (component == "cema") return check_cema(gc);
    if (component == "sliding_chunk_attention") return check_sliding_chunk_attention(gc);
    if (component == "adaptive_working_memory") return check_working_memory(gc);
    if (component == "mega_layer") return check_mega_layer(gc);
    if (component == "mega_layer_decode") return check_mega_decode(gc);
    if (component == "nffn") return check_nffn(gc);
  } catch (const std::exception& e) {
    CaseResult r;
    r.component = component;
    r.error = e.what();
    return r;
  }
  CaseResult r;
  r.component = component.empty() ? "<no component metadata>" : component;
  r.supported = false;
  return r;
}

}  // namespace gecko::golden
