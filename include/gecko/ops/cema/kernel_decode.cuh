// The complex EMA forward for a few tokens (decoding: L <= kDecodeTokens) in one kernel.
//
// The tile kernels (kernel.cuh) give a thread all N states of a channel, which at L = 1 leaves
// D threads each walking 16 states of loads and, with the coefficient and scan kernels before
// them, three launches for one token. Here a thread owns one (b, d, n) state: it computes its
// coefficients from the raw parameters (the same double-precision formulas as
// coefficient_kernel, so decoding and prefill use bit-identical q, p, g), runs the L steps from the
// carried state, and the N lanes of a channel (N divides 32: one warp segment) sum Re(g p k) with
// a shuffle tree for y. It writes y, h_out and the saved state of the call's single tile.
#pragma once

#include <cstdint>

#include "gecko/ops/cema/kernel.cuh"

namespace gecko::cema::kernels {

inline constexpr int kDecodeTokens = 8;  // longest call this path takes

struct DecodeParams : CallParams {
  const std::uint8_t* bos = nullptr;  // [B, L] or null
  float2* state = nullptr;            // [B, D, N]: Saved::states of the call's one tile
};

// grid ceil(B * D * N / 256), 256 threads; N a power of two <= 32, L <= kDecodeTokens.
template <class T>
__global__ void __launch_bounds__(256) forward_decode_kernel(const __grid_constant__ DecodeParams p, const T* x,
                                                             T* y) {
  const long long total = static_cast<long long>(p.B) * p.D * p.N;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = i < total;  // whole channels (N lanes) are valid or not together
  const long long dn_count = static_cast<long long>(p.D) * p.N;
  const int b = valid ? static_cast<int>(i / dn_count) : 0;
  const long long dn = valid ? i - b * dn_count : 0;
  const int d = static_cast<int>(dn / p.N), n = static_cast<int>(dn - static_cast<long long>(d) * p.N);
  float4 qg = make_float4(0.f, 0.f, 0.f, 0.f), gp = make_float4(0.f, 0.f, 1.f, 0.f);
  if (valid) coefficients_at(p.alpha, p.delta, p.theta, p.gamma, d, n, p.N, qg, gp);
  const float2 h = valid && p.h0 ? p.h0[i] : make_float2(0.f, 0.f);
  // The scaled state k = h / p, as the tile kernels carry it.
  float kr = h.x / gp.z, ki = h.y / gp.z;
  for (int t = 0; t < p.L; ++t) {
    if (p.bos && p.bos[static_cast<long long>(b) * p.L + t]) kr = ki = 0.f;
    const float xv = valid ? to_float(x[b * p.x_sb + t * p.x_sl + d]) : 0.f;
    const float nr = fmaf(qg.x, kr, fmaf(-qg.y, ki, xv));
    const float ni = fmaf(qg.x, ki, qg.y * kr);
    kr = nr;
    ki = ni;
    float part = fmaf(qg.z, nr, -qg.w * ni);
    for (int off = 1; off < p.N; off <<= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
    if (valid && n == 0) y[b * p.y_sb + t * p.y_sl + d] = from_float<T>(p.add_residual ? part + xv : part);
  }
  if (!valid) return;
  const float2 out = make_float2(gp.z * kr, gp.z * ki);
  if (p.h_out) p.h_out[i] = out;
  if (p.state) p.state[i] = out;
}

}  // namespace gecko::cema::kernels
