// Entry point for the golden-vector tests: exits with 77 (CTest skip) when ../shared/golden is
// absent, saying where it looked, instead of passing without checking anything.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>

#include "gecko/testing/golden.hpp"

int main(int argc, char** argv) {
  const auto dir = gecko::testing::golden_dir();
  if (!std::filesystem::is_directory(dir)) {
    std::printf("SKIP: golden directory '%s' not found (set GECKO_GOLDEN_DIR)\n", dir.c_str());
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
