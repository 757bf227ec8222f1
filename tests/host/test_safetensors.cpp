// safetensors: round trips of every dtype with metadata, and clear errors on malformed files.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "gecko/io/safetensors.hpp"

using namespace gecko;

namespace {

std::vector<std::uint8_t> image_with_header(const std::string& json, std::size_t data_bytes) {
  std::vector<std::uint8_t> img(8 + json.size() + data_bytes, 0);
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) img[i] = static_cast<std::uint8_t>(n >> (8 * i));
  std::memcpy(img.data() + 8, json.data(), json.size());
  return img;
}

std::string parse_error(const std::vector<std::uint8_t>& img) {
  io::SafetensorsFile f;
  const Status s = io::parse_safetensors(img.data(), img.size(), f);
  return s.ok() ? std::string("ok") : s.message();
}

}  // namespace

TEST_CASE("safetensors round trip keeps every dtype, shape, value and metadata") {
  io::SafetensorsFile f;
  f.metadata["component"] = "test";
  f.metadata["B"] = "2";
  const double f64[] = {1.5, -2.25, 1e300};
  const float f32[] = {0.5f, -1.0f, 3.0f, 4.0f};
  const __half f16[] = {__float2half(1.0f), __float2half(-0.5f)};
  const __nv_bfloat16 bf16[] = {__float2bfloat16(2.0f), __float2bfloat16(-8.0f), __float2bfloat16(0.125f)};
  const std::int64_t i64[] = {-1, 1LL << 60};
  const std::uint8_t flags[] = {1, 0, 1};
  f.add("a_f64", {3}, f64);
  f.add("b_f32", {2, 2}, f32);
  f.add("c_f16", {2}, f16);
  f.add("d_bf16", {1, 3}, bf16);
  f.add("e_i64", {2}, i64);
  f.add("f_bool", {3}, flags, /*as_bool=*/true);
  f.add("g_empty", {0, 4}, f32);

  const auto path = (std::filesystem::temp_directory_path() / "gecko_roundtrip.safetensors").string();
  REQUIRE(io::write_safetensors(path, f).ok());
  io::SafetensorsFile g;
  const Status s = io::read_safetensors(path, g);
  REQUIRE_MESSAGE(s.ok(), s.to_string());
  std::filesystem::remove(path);

  CHECK(g.metadata == f.metadata);
  REQUIRE(g.tensors.size() == f.tensors.size());
  for (const auto& t : f.tensors) {
    const io::Tensor* u = g.find(t.name);
    REQUIRE_MESSAGE(u, t.name);
    CHECK(u->dtype == t.dtype);
    CHECK(u->shape == t.shape);
    CHECK(u->bytes == t.bytes);
  }
  std::vector<double> v;
  REQUIRE(io::to_vector(*g.find("d_bf16"), v).ok());
  CHECK(v == std::vector<double>{2.0, -8.0, 0.125});
  std::vector<std::int64_t> iv;
  REQUIRE(io::to_vector(*g.find("e_i64"), iv).ok());
  CHECK(iv[1] == (1LL << 60));
  REQUIRE(io::to_vector(*g.find("f_bool"), v).ok());
  CHECK(v == std::vector<double>{1, 0, 1});
}

TEST_CASE("safetensors rejects malformed images with a clear message") {
  const std::string ok_header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK(parse_error(image_with_header(ok_header, 8)) == "ok");

  CHECK(parse_error({1, 2, 3}).find("too short") != std::string::npos);

  auto huge = image_with_header(ok_header, 8);
  huge[6] = 0x7f;  // header length far beyond the file
  CHECK(parse_error(huge).find("header length") != std::string::npos);

  auto past_end = image_with_header(ok_header, 8);
  past_end[0] = static_cast<std::uint8_t>(past_end[0] + 20);
  CHECK(parse_error(past_end).find("runs past the end") != std::string::npos);

  CHECK(parse_error(image_with_header(ok_header, 4)).find("truncated") != std::string::npos);
  CHECK(parse_error(image_with_header("{not json", 0)).find("not valid JSON") != std::string::npos);
  CHECK(parse_error(image_with_header("[1,2]", 0)).find("JSON object") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})", 2))
            .find("unknown dtype 'F8_E9'") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8))
            .find("shape and dtype need 12") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))
            .find("non-negative") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F32","shape":[2]}})", 8)).find("data_offsets") !=
        std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8))
            .find("begin > end") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                      R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                      12))
            .find("overlaps") != std::string::npos);
  CHECK(parse_error(image_with_header(ok_header, 12)).find("trailing bytes") != std::string::npos);
  CHECK(parse_error(image_with_header(R"({"__metadata__":{"k":1}})", 0)).find("not a string") != std::string::npos);
}

TEST_CASE("safetensors reports a missing file by path") {
  io::SafetensorsFile f;
  const Status s = io::read_safetensors("/nonexistent/dir/file.safetensors", f);
  CHECK(!s.ok());
  CHECK(s.code() == StatusCode::kIoError);
  CHECK(s.message().find("/nonexistent/dir/file.safetensors") != std::string::npos);
}
