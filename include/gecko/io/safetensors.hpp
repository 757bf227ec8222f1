// safetensors reading and writing (https://github.com/huggingface/safetensors format):
// an 8-byte little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets} plus optional "__metadata__" string pairs, then raw
// little-endian data. Used for checkpoints and test vectors. Every malformed input returns a
// Status naming what is wrong; nothing here trusts the header.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gecko/core/dtype.hpp"
#include "gecko/core/status.hpp"

namespace gecko::io {

struct Tensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;  // raw little-endian data, numel * dtype_size(dtype) bytes

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<Tensor> tensors;  // in data-offset order

  const Tensor* find(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  // Adds a tensor copied from typed host data (T = double, float, __half, __nv_bfloat16,
  // int64_t, uint8_t for BOOL with as_bool).
  template <class T>
  void add(const std::string& name, std::vector<std::int64_t> shape, const T* data, bool as_bool = false) {
    Tensor t;
    t.name = name;
    t.dtype = as_bool ? DType::kBool : dtype_of<T>;
    t.shape = std::move(shape);
    t.bytes.resize(static_cast<std::size_t>(t.numel()) * sizeof(T));
    if (!t.bytes.empty()) std::memcpy(t.bytes.data(), data, t.bytes.size());
    tensors.push_back(std::move(t));
  }
};

namespace detail {

inline bool parse_dtype(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", DType::kF64}, {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
      {"I64", DType::kI64}, {"I32", DType::kI32}, {"U8", DType::kU8},   {"BOOL", DType::kBool}};
  for (const auto& e : table)
    if (s == e.first) {
      out = e.second;
      return true;
    }
  return false;
}

// Largest header accepted: the format's own limit is 100 MB.
inline constexpr std::uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

}  // namespace detail

// Parses a complete safetensors image held in memory.
inline Status parse_safetensors(const std::uint8_t* data, std::size_t size, SafetensorsFile& out,
                                const std::string& origin = "<memory>") {
  out = SafetensorsFile{};
  auto fail = [&](const std::string& why) { return io_error(origin + ": " + why); };
  if (size < 8) return fail("file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > detail::kMaxHeaderBytes) return fail("header length " + std::to_string(header_len) + " exceeds 100 MB");
  if (header_len > size - 8)
    return fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(size) + " bytes): truncated file?");
  const std::uint8_t* body = data + 8 + header_len;
  const std::uint64_t body_size = size - 8 - header_len;

  nlohmann::json header = nlohmann::json::parse(data + 8, data + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return fail("header is not valid JSON");
  if (!header.is_object()) return fail("header must be a JSON object");

  struct Span {
    std::uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return fail("__metadata__ must be an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) return fail("__metadata__ value for '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return fail("entry '" + name + "' is not an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return fail("tensor '" + name + "' has no string dtype");
    if (sh == entry.end() || !sh->is_array()) return fail("tensor '" + name + "' has no shape array");
    if (off == entry.end() || !off->is_array() || off->size() != 2)
      return fail("tensor '" + name + "' needs data_offsets [begin, end]");
    Tensor t;
    t.name = name;
    if (!detail::parse_dtype(dt->get<std::string>(), t.dtype))
      return fail("tensor '" + name + "' has unknown dtype '" + dt->get<std::string>() + "'");
    std::uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_integer() || d.get<std::int64_t>() < 0)
        return fail("tensor '" + name + "' has a shape entry that is not a non-negative integer");
      const auto extent = d.get<std::uint64_t>();
      if (extent != 0 && numel > (std::uint64_t{1} << 62) / extent) return fail("tensor '" + name + "' is too large");
      numel *= extent;
      t.shape.push_back(static_cast<std::int64_t>(extent));
    }
    for (const auto& o : *off)
      if (!o.is_number_integer() || o.get<std::int64_t>() < 0)
        return fail("tensor '" + name + "' has data_offsets that are not non-negative integers");
    const auto begin = (*off)[0].get<std::uint64_t>();
    const auto end = (*off)[1].get<std::uint64_t>();
    if (begin > end) return fail("tensor '" + name + "' has data_offsets begin > end");
    if (end > body_size)
      return fail("tensor '" + name + "' data [" + std::to_string(begin) + ", " + std::to_string(end) +
                  ") runs past the data section (" + std::to_string(body_size) + " bytes): truncated file?");
    const std::uint64_t expected = numel * dtype_size(t.dtype);
    if (end - begin != expected)
      return fail("tensor '" + name + "' holds " + std::to_string(end - begin) + " bytes but its shape and dtype need " +
                  std::to_string(expected));
    t.bytes.assign(body + begin, body + end);
    spans.push_back({begin, end, name});
    out.tensors.push_back(std::move(t));
  }
  // Tensors must not overlap (the format also requires them to tile the data section).
  std::vector<std::size_t> order(spans.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return spans[a].begin < spans[b].begin; });
  std::uint64_t cursor = 0;
  for (std::size_t i : order) {
    if (spans[i].begin < cursor) return fail("tensor '" + spans[i].name + "' overlaps another tensor's data");
    if (spans[i].begin > cursor) return fail("gap in the data section before tensor '" + spans[i].name + "'");
    cursor = spans[i].end;
  }
  if (cursor != body_size)
    return fail("data section has " + std::to_string(body_size - cursor) + " trailing bytes no tensor claims");
  std::vector<Tensor> sorted;
  sorted.reserve(order.size());
  for (std::size_t i : order) sorted.push_back(std::move(out.tensors[i]));
  out.tensors = std::move(sorted);
  return Status::success();
}

inline Status read_safetensors(const std::string& path, SafetensorsFile& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return io_error(path + ": cannot open for reading");
  std::vector<std::uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) return io_error(path + ": read failed");
  return parse_safetensors(buf.data(), buf.size(), out, path);
}

// Serializes to an in-memory image (tensors in the order given, 8-byte aligned header).
inline std::vector<std::uint8_t> serialize_safetensors(const SafetensorsFile& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : file.metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  std::uint64_t cursor = 0;
  for (const auto& t : file.tensors) {
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {cursor, cursor + t.bytes.size()}}};
    cursor += t.bytes.size();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // keep the data section aligned
  std::vector<std::uint8_t> out(8 + text.size() + cursor);
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::size_t pos = 8 + text.size();
  for (const auto& t : file.tensors) {
    if (!t.bytes.empty()) std::memcpy(out.data() + pos, t.bytes.data(), t.bytes.size());
    pos += t.bytes.size();
  }
  return out;
}

inline Status write_safetensors(const std::string& path, const SafetensorsFile& file) {
  for (const auto& t : file.tensors)
    if (static_cast<std::uint64_t>(t.numel()) * dtype_size(t.dtype) != t.bytes.size())
      return io_error(path + ": tensor '" + t.name + "' byte count does not match its shape and dtype");
  const auto image = serialize_safetensors(file);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return io_error(path + ": cannot open for writing");
  f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
  if (!f) return io_error(path + ": write failed");
  return Status::success();
}

// Converts a stored floating, integer or bool tensor into host values of type T.
template <class T>
Status to_vector(const Tensor& t, std::vector<T>& out) {
  const std::size_t n = static_cast<std::size_t>(t.numel());
  out.resize(n);
  const std::uint8_t* p = t.bytes.data();
  auto load = [&](std::size_t i, auto tag) {
    using S = decltype(tag);
    S v;
    std::memcpy(&v, p + i * sizeof(S), sizeof(S));
    return v;
  };
  for (std::size_t i = 0; i < n; ++i) {
    double v = 0;
    switch (t.dtype) {
      case DType::kF64: v = load(i, double{}); break;
      case DType::kF32: v = load(i, float{}); break;
      case DType::kF16: v = to_double(load(i, __half{})); break;
      case DType::kBF16: v = to_double(load(i, __nv_bfloat16{})); break;
      case DType::kI64: v = static_cast<double>(load(i, std::int64_t{})); break;
      case DType::kI32: v = load(i, std::int32_t{}); break;
      case DType::kU8: case DType::kBool: v = load(i, std::uint8_t{}); break;
    }
    if constexpr (std::is_integral_v<T>) {
      if (t.dtype == DType::kI64) {
        out[i] = static_cast<T>(load(i, std::int64_t{}));  // exact beyond 2^53
        continue;
      }
      out[i] = static_cast<T>(v);
    } else {
      out[i] = from_double<T>(v);
    }
  }
  return Status::success();
}

}  // namespace gecko::io
