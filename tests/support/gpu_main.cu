// Entry point for the GPU tests: without a CUDA device they exit with 77 (CTest skip), unless
// GECKO_REQUIRE_GPU=1 makes a missing device a failure.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda_runtime_api.h>

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    const char* req = std::getenv("GECKO_REQUIRE_GPU");
    if (req && std::strcmp(req, "1") == 0) {
      std::fprintf(stderr, "FAIL: GECKO_REQUIRE_GPU=1 but no CUDA device is usable (%s)\n",
                   err == cudaSuccess ? "no devices" : cudaGetErrorString(err));
      return 1;
    }
    std::printf("SKIP: no CUDA device; GPU tests not run\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
