// A downstream program: instantiates a gecko CUDA kernel template (the kernel is compiled into
// this binary, no gecko library is linked) and runs the CPU reference.
#include <cstdio>
#include <vector>

#include <gecko/gecko.hpp>
#include <gecko/ops/group_norm/launch.cuh>

// Explicit instantiation: proves the CUDA launcher and its kernels compile in a consumer.
template gecko::Status gecko::group_norm::cuda::forward<__nv_bfloat16>(
    const gecko::group_norm::ForwardArgs<__nv_bfloat16>&, cudaStream_t);

int main() {
  std::vector<float> x = {1, 2, 3, 4, -1, -2, -3, -4}, y(8);
  gecko::group_norm::ForwardArgs<float> f;
  f.kind = gecko::group_norm::Kind::kRms;
  f.groups = 2;
  f.x = gecko::host_view(x, {2, 4});
  f.y = gecko::host_view(y, {2, 4});
  const gecko::Status s = gecko::group_norm::cpu::forward(f);
  if (!s.ok()) {
    std::printf("consumer: %s\n", s.to_string().c_str());
    return 1;
  }
  double sq = 0;
  for (int i = 0; i < 4; ++i) sq += y[i] * y[i];
  std::printf("consumer: CPU group RMSNorm ok, mean square of the first row's groups = %.4f\n", sq / 4);
  return sq / 4 > 0.99 && sq / 4 < 1.01 ? 0 : 1;
}
