// What a GPU layer's entry points size for their caller: the activation region (kept from forward
// to backward) and the workspace (scratch for either pass); and the fake gradient views that let
// a backward be measured without memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "gecko/core/tensor_view.hpp"
#include "gecko/layers/cuda/arena.hpp"
#include "gecko/layers/cuda/device_parameters.cuh"  // Entry, view_of
#include "gecko/layers/parameters.hpp"

namespace gecko::layers::cuda {

struct BlockPlan {
  std::size_t activation_bytes = 0;  // kept from forward to backward
  std::size_t workspace_bytes = 0;   // scratch for either pass
};

namespace detail {

// Gradient views with fake addresses, for measuring the backward's workspace.
class MeasuringGradients {
 public:
  explicit MeasuringGradients(const std::vector<ParamSpec>& specs, const std::string& prefix = "") {
    for (const auto& spec : specs) {
      Entry e;
      e.shape = spec.shape;
      char* at = reinterpret_cast<char*>(arena_.take<float>(static_cast<std::size_t>(e.numel())));
      views_[prefix + spec.name] = view_of<float>(at, e);
    }
  }
  TensorView<float> g(const std::string& name) const {
    auto it = views_.find(name);
    return it == views_.end() ? TensorView<float>{} : it->second;
  }

 private:
  Arena arena_ = Arena::measure();
  std::map<std::string, TensorView<float>> views_;
};

}  // namespace detail
}  // namespace gecko::layers::cuda
