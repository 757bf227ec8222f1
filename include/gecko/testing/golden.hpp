// Loading the authors' golden test vectors (safetensors files with string metadata).
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include "gecko/core/buffer.hpp"
#include "gecko/io/safetensors.hpp"

namespace gecko::testing {

// The golden directory: $GECKO_GOLDEN_DIR if set, else the compile-time GECKO_GOLDEN_DIR.
inline std::string golden_dir() {
  if (const char* env = std::getenv("GECKO_GOLDEN_DIR"); env && *env) return env;
#ifdef GECKO_GOLDEN_DIR
  return GECKO_GOLDEN_DIR;
#else
  return "../shared/golden";
#endif
}

// One golden case. Accessors throw gecko::Error with the tensor's name when it is missing, so a
// test fails loudly instead of comparing nothing.
class GoldenCase {
 public:
  static Status load(const std::string& path, GoldenCase& out) {
    out.path_ = path;
    return io::read_safetensors(path, out.file_);
  }

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return file_.find(name) != nullptr; }
  const io::Tensor& tensor(const std::string& name) const {
    const io::Tensor* t = file_.find(name);
    if (!t) throw Error(path_ + ": tensor '" + name + "' is missing");
    return *t;
  }
  std::vector<std::int64_t> shape(const std::string& name) const { return tensor(name).shape; }
  template <class T = double>
  std::vector<T> get(const std::string& name) const {
    std::vector<T> v;
    throw_if_error(io::to_vector(tensor(name), v));
    return v;
  }
  bool has_meta(const std::string& key) const { return file_.metadata.count(key) != 0; }
  std::string meta(const std::string& key) const {
    auto it = file_.metadata.find(key);
    if (it == file_.metadata.end()) throw Error(path_ + ": metadata '" + key + "' is missing");
    return it->second;
  }
  double meta_double(const std::string& key) const { return std::stod(meta(key)); }
  std::int64_t meta_int(const std::string& key) const { return std::stoll(meta(key)); }
  bool meta_bool(const std::string& key) const {
    const std::string v = meta(key);
    return v == "True" || v == "true" || v == "1";
  }
  const io::SafetensorsFile& file() const { return file_; }

 private:
  std::string path_;
  io::SafetensorsFile file_;
};

}  // namespace gecko::testing
