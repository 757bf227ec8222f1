// CPU reference for the complex EMA: plain sequential loops in double (std::complex<double>) per
// (batch, channel, state). The oracle for the CUDA kernels and the golden vectors.
//
// Differences from the authors' op, all deliberate: activations are time-major [B, L, D]; the
// coefficients, the state and the residual add are computed in double here (fp32 on the GPU) and y
// is rounded to T once, after the residual (theirs rounds y to T, then adds x in T); the carried
// state is acc_t<T> rather than complex64 (the same for every GPU type).
#pragma once

#include <cmath>
#include <complex>
#include <type_traits>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/cema/args.hpp"

namespace gecko::cema::cpu {

namespace detail {

using cd = std::complex<double>;

inline constexpr double kPi = 3.14159265358979323846;

inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The coefficients of spec 2.1 in double, with the sigmoids the chain rule needs again.
struct Coefficients {
  std::int64_t channels = 0, states = 0;
  std::vector<double> sa, sd, st;  // sigmoid(alpha) [D*N], sigmoid(delta) [D*N], sigmoid(theta) [D]
  std::vector<double> p;           // [D*N]
  std::vector<cd> q, g;            // [D*N]
};

template <class A>
Coefficients make_coefficients(const TensorView<const A>& alpha, const TensorView<const A>& delta,
                               const TensorView<const A>& theta, const TensorView<const A>* gamma,
                               const Problem& pr) {
  Coefficients c;
  const std::int64_t D = pr.channels, N = pr.states;
  c.channels = D;
  c.states = N;
  c.sa.resize(D * N);
  c.sd.resize(D * N);
  c.st.resize(D);
  c.p.resize(D * N);
  c.q.resize(D * N);
  c.g.resize(D * N);
  for (std::int64_t d = 0; d < D; ++d) {
    c.st[d] = sigmoid(static_cast<double>(theta.data[d]));
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t i = d * N + n;
      c.sa[i] = sigmoid(static_cast<double>(alpha.data[i]));
      c.sd[i] = sigmoid(static_cast<double>(delta.data[i]));
      // Wavelet index n + 1 spreads the N rotation angles over (0, 2 pi sigmoid(theta)].
      const double phi = static_cast<double>(n + 1) * (2.0 * kPi / N) * c.st[d];
      c.p[i] = c.sa[i];
      c.q[i] = std::polar(1.0 - c.sa[i] * c.sd[i], phi);
      if (gamma) c.g[i] = cd(static_cast<double>(gamma->data[2 * i]), static_cast<double>(gamma->data[2 * i + 1]));
    }
  }
  return c;
}

// Gradients of the raw parameters from those of p, q, g (complex grads in PyTorch's convention,
// dL/dRe + i dL/dIm). rho = |q| = 1 - sa sd, phi = arg q:
//   dL/drho = Re(dq) cos phi + Im(dq) sin phi,   dL/dphi = rho (Im(dq) cos phi - Re(dq) sin phi)
//   dalpha = (dp - sd dL/drho) sa (1 - sa),      ddelta = -sa dL/drho sd (1 - sd)
//   dtheta_d = st (1 - st) (2 pi / N) sum_n (n + 1) dL/dphi_{d,n},   dgamma = (Re dg, Im dg)
struct RawGradients {
  std::vector<double> dalpha, ddelta, dtheta, dgamma;  // [D*N], [D*N], [D], [D*N*2]
};

inline RawGradients chain(const Coefficients& c, const std::vector<double>& dp, const std::vector<cd>& dq,
                          const std::vector<cd>& dg) {
  const std::int64_t D = c.channels, N = c.states;
  RawGradients r;
  r.dalpha.assign(D * N, 0.0);
  r.ddelta.assign(D * N, 0.0);
  r.dtheta.assign(D, 0.0);
  r.dgamma.assign(D * N * 2, 0.0);
  for (std::int64_t d = 0; d < D; ++d) {
    double dphi_sum = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t i = d * N + n;
      const double rho = 1.0 - c.sa[i] * c.sd[i];
      const double phi = static_cast<double>(n + 1) * (2.0 * kPi / N) * c.st[d];
      const double cs = std::cos(phi), sn = std::sin(phi);
      const double drho = dq[i].real() * cs + dq[i].imag() * sn;
      const double dphi = rho * (dq[i].imag() * cs - dq[i].real() * sn);
      r.dalpha[i] = (dp[i] - c.sd[i] * drho) * c.sa[i] * (1.0 - c.sa[i]);
      r.ddelta[i] = -c.sa[i] * drho * c.sd[i] * (1.0 - c.sd[i]);
      dphi_sum += static_cast<double>(n + 1) * dphi;
      r.dgamma[2 * i] = dg[i].real();
      r.dgamma[2 * i + 1] = dg[i].imag();
    }
    r.dtheta[d] = c.st[d] * (1.0 - c.st[d]) * (2.0 * kPi / N) * dphi_sum;
  }
  return r;
}

template <class T>
const T* row_ptr(const TensorView<const T>& t, std::int64_t b, std::int64_t l) {
  return t.data + b * t.stride(0) + l * t.stride(1);
}
template <class T>
T* row_ptr(const TensorView<T>& t, std::int64_t b, std::int64_t l) {
  return t.data + b * t.stride(0) + l * t.stride(1);
}

inline bool bos(const TensorView<const std::uint8_t>& m, const Problem& p, std::int64_t b, std::int64_t t) {
  return !m.empty() && m.data[b * p.length + t] != 0;
}

// Complex element i of a [..., 2] tensor, or 0 when it is empty.
template <class A>
cd load_complex(const TensorView<A>& t, std::int64_t i) {
  return t.empty() ? cd(0.0, 0.0) : cd(static_cast<double>(t.data[2 * i]), static_cast<double>(t.data[2 * i + 1]));
}
template <class A>
void store_complex(const TensorView<A>& t, std::int64_t i, cd v) {
  t.data[2 * i] = static_cast<std::remove_const_t<A>>(v.real());
  t.data[2 * i + 1] = static_cast<std::remove_const_t<A>>(v.imag());
}

template <class A>
void store_real(const TensorView<A>& t, const std::vector<double>& v) {
  if (t.empty()) return;
  for (std::size_t i = 0; i < v.size(); ++i) t.data[i] = static_cast<A>(v[i]);
}

}  // namespace detail

// p [D, N], q [D, N, 2], g [D, N, 2] from the raw parameters.
template <class A>
Status coefficients(const CoefficientArgs<A>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const auto c = detail::make_coefficients(a.alpha, a.delta, a.theta, &a.gamma, p);
  for (std::int64_t i = 0; i < p.channels * p.states; ++i) {
    a.p.data[i] = static_cast<A>(c.p[i]);
    detail::store_complex(a.q, i, c.q[i]);
    detail::store_complex(a.g, i, c.g[i]);
  }
  return Status::success();
}

template <class A>
Status coefficients_backward(const CoefficientBackwardArgs<A>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const auto c = detail::make_coefficients<A>(a.alpha, a.delta, a.theta, nullptr, p);
  const std::int64_t DN = p.channels * p.states;
  std::vector<double> dp(DN, 0.0);
  std::vector<detail::cd> dq(DN), dg(DN);
  for (std::int64_t i = 0; i < DN; ++i) {
    if (!a.dp.empty()) dp[i] = static_cast<double>(a.dp.data[i]);
    dq[i] = detail::load_complex(a.dq, i);
    dg[i] = detail::load_complex(a.dg, i);
  }
  const auto r = detail::chain(c, dp, dq, dg);
  detail::store_real(a.dalpha, r.dalpha);
  detail::store_real(a.ddelta, r.ddelta);
  detail::store_real(a.dtheta, r.dtheta);
  detail::store_real(a.dgamma, r.dgamma);
  return Status::success();
}

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const auto c = detail::make_coefficients(a.alpha, a.delta, a.theta, &a.gamma, p);
  const std::int64_t D = p.channels, N = p.states, L = p.length;
  std::vector<double> acc(L);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t d = 0; d < D; ++d) {
      for (std::int64_t t = 0; t < L; ++t)
        acc[t] = a.add_residual ? to_double(detail::row_ptr(a.x, b, t)[d]) : 0.0;
      for (std::int64_t n = 0; n < N; ++n) {
        const std::int64_t i = d * N + n, s = (b * D + d) * N + n;
        detail::cd h = detail::load_complex(a.h0, s);
        for (std::int64_t t = 0; t < L; ++t) {
          const double xv = to_double(detail::row_ptr(a.x, b, t)[d]);
          h = (detail::bos(a.bos_mask, p, b, t) ? detail::cd(0.0, 0.0) : c.q[i] * h) + c.p[i] * xv;
          acc[t] += (c.g[i] * h).real();
        }
        // Written after h0[s] was read, so h_out may alias h0.
        if (!a.h_out.empty()) detail::store_complex(a.h_out, s, h);
      }
      for (std::int64_t t = 0; t < L; ++t) detail::row_ptr(a.y, b, t)[d] = from_double<T>(acc[t]);
    }
  }
  return Status::success();
}

// Backward by the adjoint recurrence of spec 2.4. Per (b, d, n), G_t = dL/dh_t:
//   G_t = dy_t conj(g) + conj(a_{t+1}) G_{t+1},   G_{L-1} = dy_{L-1} conj(g) + dh_out
//   dx_t += p Re(G_t),   dp += x_t Re(G_t),   dq += conj(h_{t-1}) G_t (not at a BOS),
//   dg += dy_t conj(h_t),   dh0 = conj(a_0) G_0
// then the coefficient grads are chained to the raw parameters.
template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const auto c = detail::make_coefficients(a.alpha, a.delta, a.theta, &a.gamma, p);
  const std::int64_t D = p.channels, N = p.states, L = p.length;
  std::vector<double> dp(D * N, 0.0), dxacc(L);
  std::vector<detail::cd> dq(D * N), dg(D * N), h(L + 1);  // h[t + 1] = h_t, h[0] = h0
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t d = 0; d < D; ++d) {
      for (std::int64_t t = 0; t < L; ++t)
        dxacc[t] = a.add_residual ? to_double(detail::row_ptr(a.dy, b, t)[d]) : 0.0;
      for (std::int64_t n = 0; n < N; ++n) {
        const std::int64_t i = d * N + n, s = (b * D + d) * N + n;
        const detail::cd q = c.q[i], g = c.g[i];
        h[0] = detail::load_complex(a.h0, s);
        for (std::int64_t t = 0; t < L; ++t) {
          const double xv = to_double(detail::row_ptr(a.x, b, t)[d]);
          h[t + 1] = (detail::bos(a.bos_mask, p, b, t) ? detail::cd(0.0, 0.0) : q * h[t]) + c.p[i] * xv;
        }
        detail::cd carry = detail::load_complex(a.dh_out, s);  // conj(a_{t+1}) G_{t+1}
        for (std::int64_t t = L - 1; t >= 0; --t) {
          const double dyv = to_double(detail::row_ptr(a.dy, b, t)[d]);
          const double xv = to_double(detail::row_ptr(a.x, b, t)[d]);
          const detail::cd G = dyv * std::conj(g) + carry;
          const bool reset = detail::bos(a.bos_mask, p, b, t);
          dxacc[t] += c.p[i] * G.real();
          dp[i] += xv * G.real();
          if (!reset) dq[i] += std::conj(h[t]) * G;
          dg[i] += dyv * std::conj(h[t + 1]);
          carry = reset ? detail::cd(0.0, 0.0) : std::conj(q) * G;  // a BOS cuts the path to h_{t-1}
        }
        if (!a.dh0.empty()) detail::store_complex(a.dh0, s, carry);
      }
      for (std::int64_t t = 0; t < L; ++t) detail::row_ptr(a.dx, b, t)[d] = from_double<T>(dxacc[t]);
    }
  }
  const auto r = detail::chain(c, dp, dq, dg);
  detail::store_real(a.dalpha, r.dalpha);
  detail::store_real(a.ddelta, r.ddelta);
  detail::store_real(a.dtheta, r.dtheta);
  detail::store_real(a.dgamma, r.dgamma);
  return Status::success();
}

}  // namespace gecko::cema::cpu
