// ParameterSet: a layer's parameters (or their gradients) as named host tensors in double, in a
// fixed declaration order, named exactly as the authors' PyTorch modules name them ("wz.weight",
// "cema.alpha", "gamma", ...). A safetensors checkpoint with those names loads by name, optionally
// under a prefix ("layers.3.mega."), whatever its floating dtype; loading fails with a message
// naming the tensor when one is missing, mis-shaped or not floating point, and leaves the set
// unchanged. Tensors the set does not declare are ignored: a whole-model checkpoint holds every
// layer, and the authors' timestep norms also store constant-zero `prior_*` buffers.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/core/status.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/io/safetensors.hpp"

namespace gecko::layers {

struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct HostTensor {
  std::vector<std::int64_t> shape;
  std::vector<double> data;  // row-major

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

class ParameterSet {
 public:
  ParameterSet() = default;
  // Declares every spec, zero-filled.
  explicit ParameterSet(const std::vector<ParamSpec>& specs) {
    for (const auto& s : specs) add(s.name, s.shape);
  }

  // Declares (or re-declares, zero-filled) one tensor; the first declaration fixes its position.
  void add(const std::string& name, const std::vector<std::int64_t>& shape) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) names_.push_back(name);
    HostTensor& t = tensors_[name];
    t.shape = shape;
    t.data.assign(static_cast<std::size_t>(t.numel()), 0.0);
  }

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  HostTensor* find(const std::string& name) {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  const HostTensor* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  const std::vector<std::string>& names() const { return names_; }
  std::size_t size() const { return names_.size(); }
  std::int64_t numel() const {
    std::int64_t n = 0;
    for (const auto& kv : tensors_) n += kv.second.numel();
    return n;
  }

  void fill(double v) {
    for (auto& kv : tensors_) kv.second.data.assign(kv.second.data.size(), v);
  }
  // The same names and shapes, zero-filled (what a backward writes gradients into).
  ParameterSet zeros_like() const {
    ParameterSet z;
    for (const auto& n : names_) z.add(n, tensors_.at(n).shape);
    return z;
  }

  // Checks that every spec is declared under prefix + name with exactly its shape. `what` names the
  // set in messages ("params", "grads").
  Status check(const std::vector<ParamSpec>& specs, const std::string& prefix, const char* what) const {
    for (const auto& s : specs) {
      const HostTensor* t = find(prefix + s.name);
      if (!t)
        return invalid_argument(std::string(what) + ": tensor '" + prefix + s.name + "' " + shape_string(s.shape) +
                                " is missing");
      if (t->shape != s.shape || static_cast<std::int64_t>(t->data.size()) != t->numel())
        return invalid_argument(std::string(what) + ": tensor '" + prefix + s.name + "' has shape " +
                                shape_string(t->shape) + ", expected " + shape_string(s.shape) + " (from the config)");
    }
    return Status::success();
  }

  // Loads every declared tensor from `file`, looked up as prefix + name. All or nothing.
  Status load(const io::SafetensorsFile& file, const std::string& prefix = "") {
    std::map<std::string, std::vector<double>> loaded;
    for (const auto& n : names_) {
      const HostTensor& want = tensors_.at(n);
      const io::Tensor* t = file.find(prefix + n);
      if (!t)
        return invalid_argument("checkpoint has no tensor '" + prefix + n + "' (expected shape " +
                                shape_string(want.shape) + ")");
      if (!dtype_is_floating(t->dtype))
        return invalid_argument("checkpoint tensor '" + prefix + n + "' has dtype " + dtype_name(t->dtype) +
                                ", expected a floating type");
      if (t->shape != want.shape)
        return invalid_argument("checkpoint tensor '" + prefix + n + "' has shape " + shape_string(t->shape) +
                                ", expected " + shape_string(want.shape) + " (from the config)");
      GECKO_RETURN_IF_ERROR(io::to_vector(*t, loaded[n]));
    }
    for (auto& kv : loaded) tensors_[kv.first].data = std::move(kv.second);
    return Status::success();
  }

  Status load_file(const std::string& path, const std::string& prefix = "") {
    io::SafetensorsFile file;
    GECKO_RETURN_IF_ERROR(io::read_safetensors(path, file));
    const Status s = load(file, prefix);
    return s.ok() ? s : Status(s.code(), path + ": " + s.message());
  }

  // Appends every tensor to `file` as prefix + name, converted to dtype (F64, F32, F16 or BF16).
  void store(io::SafetensorsFile& file, const std::string& prefix = "", DType dtype = DType::kF32) const {
    for (const auto& n : names_) {
      const HostTensor& t = tensors_.at(n);
      switch (dtype) {
        case DType::kF64: file.add(prefix + n, t.shape, t.data.data()); break;
        case DType::kF16: add_as<__half>(file, prefix + n, t); break;
        case DType::kBF16: add_as<__nv_bfloat16>(file, prefix + n, t); break;
        default: add_as<float>(file, prefix + n, t); break;
      }
    }
  }

 private:
  template <class T>
  static void add_as(io::SafetensorsFile& file, const std::string& name, const HostTensor& t) {
    std::vector<T> v(t.data.size());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = from_double<T>(t.data[i]);
    file.add(name, t.shape, v.data());
  }

  std::vector<std::string> names_;
  std::map<std::string, HostTensor> tensors_;
};

// Read-only and writable views of a set's tensors resolved once by name (after check()).
inline const double* param_data(const ParameterSet& p, const std::string& name) { return p.find(name)->data.data(); }
inline double* param_data(ParameterSet& p, const std::string& name) { return p.find(name)->data.data(); }

}  // namespace gecko::layers
