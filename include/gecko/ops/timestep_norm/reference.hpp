// CPU reference for timestep decay normalization: plain loops in double, one sequential pass over
// time per (batch row, group). The oracle for the CUDA kernels and the golden vectors.
//
// Padding is handled the mathematically correct way (not the authors' L >= 256 paths, see
// BUG-TDN-2/3 in the spec): a padded step leaves the state and the count untouched, ignores its BOS
// flag, outputs y = 0, gets dx = 0 and adds nothing to the weight and bias gradients.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/timestep_norm/args.hpp"

namespace gecko::timestep_norm::cpu {

namespace detail {

// One decay rate as the forward uses it.
struct Decay {
  bool exact = true;
  double beta = 0;       // exact beta, or float(beta) widened in the float32 mode
  double one_minus = 0;  // 1 - beta in double (exact for float(beta): the subtraction is exact)
  double log_beta = 0;   // exact mode: beta^c = exp(c log beta)
  float beta_f = 0;      // float32 mode: the running product's factor

  static Decay make(double beta, BetaPrecision precision) {
    Decay d;
    d.exact = precision == BetaPrecision::kExact;
    d.beta_f = static_cast<float>(beta);
    d.beta = d.exact ? beta : static_cast<double>(d.beta_f);
    d.one_minus = 1.0 - d.beta;
    d.log_beta = std::log(beta);
    return d;
  }
  // 1 - beta^c, with expm1 so that it keeps full relative precision when beta^c is near 1.
  double exact_correction(std::int64_t c) const { return -std::expm1(static_cast<double>(c) * log_beta); }
};

// The state of one (batch row, group). p1/p2 are the float32 running powers beta^c of the
// reference mode; the exact mode derives beta^c from the count instead.
struct GroupState {
  std::int64_t count = 0;
  double m = 0, v = 0;
  float p1 = 1, p2 = 1;
};

// What one valid step of one group used: needed again by the backward.
struct StepStats {
  double mu = 0;    // within-token group mean
  double mhat = 0;  // bias-corrected decayed mean
  double r = 0;     // rsqrt(vhat + eps)
  std::int64_t count = 0;  // count after the step
};

template <class T>
const T* row_ptr(const TensorView<const T>& t, std::int64_t b, std::int64_t l) {
  return t.data + b * t.stride(0) + l * t.stride(1);
}
template <class T>
T* row_ptr(const TensorView<T>& t, std::int64_t b, std::int64_t l) {
  return t.data + b * t.stride(0) + l * t.stride(1);
}

inline bool flag(const TensorView<const std::uint8_t>& m, const Problem& p, std::int64_t b, std::int64_t t) {
  return !m.empty() && m.data[b * p.length + t] != 0;
}

template <class T>
double scale_at(const TensorView<const T>& w, std::int64_t c) {
  return w.empty() ? 1.0 : to_double(w.data[c]) + 1.0;
}

// The host-only value check validate() cannot do (it never reads tensor data).
inline Status check_prev_count(const TensorView<const std::int64_t>& c) {
  for (std::int64_t b = 0; !c.empty() && b < c.size(0); ++b)
    if (c.data[b] < 0)
      return invalid_argument("prev_count[" + std::to_string(b) + "] is " + std::to_string(c.data[b]) +
                              ", expected >= 0");
  return Status::success();
}

// Runs the forward recurrence of batch row b over all L steps. stats[t * G + g] is filled for valid
// steps; state[g] ends as the state after the last step. Shared by forward and backward so both
// see exactly the same statistics.
template <class Args>
void replay_row(const Args& a, const Problem& p, const Decay& d1, const Decay& d2, std::int64_t b,
                std::vector<StepStats>& stats, std::vector<GroupState>& state) {
  const std::int64_t G = p.groups, K = p.group_size;
  stats.assign(p.length * G, StepStats{});
  state.assign(G, GroupState{});
  for (std::int64_t g = 0; g < G; ++g) {
    GroupState& s = state[g];
    if (p.has_prev_state) {
      s.count = a.prev_count.data[b];
      s.m = static_cast<double>(a.prev_mean.data[b * G + g]);
      s.v = static_cast<double>(a.prev_var.data[b * G + g]);
    }
    // The reference starts its float running product from powf(beta, prev_count).
    s.p1 = std::pow(d1.beta_f, static_cast<float>(s.count));
    s.p2 = std::pow(d2.beta_f, static_cast<float>(s.count));
  }
  const double eps = a.eps;
  for (std::int64_t t = 0; t < p.length; ++t) {
    if (flag(a.padding_mask, p, b, t)) continue;  // padded: state, count and BOS flag untouched
    const bool bos = flag(a.bos_mask, p, b, t);
    const auto* x = row_ptr(a.x, b, t);
    for (std::int64_t g = 0; g < G; ++g) {
      double sum = 0, sq = 0;
      for (std::int64_t k = g * K; k < (g + 1) * K; ++k) sum += to_double(x[k]);
      const double mu = sum / K;
      for (std::int64_t k = g * K; k < (g + 1) * K; ++k) sq += (to_double(x[k]) - mu) * (to_double(x[k]) - mu);
      const double var_t = sq / K;
      GroupState& s = state[g];
      if (bos) {  // the previous document is dropped; this token is the first of the new one
        s.count = 1;
        s.m = d1.one_minus * mu;
        s.v = d2.one_minus * var_t;
        s.p1 = d1.beta_f;
        s.p2 = d2.beta_f;
      } else {
        s.count += 1;
        s.m = d1.beta * s.m + d1.one_minus * mu;
        s.v = d2.beta * s.v + d2.one_minus * var_t;
        s.p1 *= d1.beta_f;
        s.p2 *= d2.beta_f;
      }
      const double c1 = d1.exact ? d1.exact_correction(s.count) : 1.0 - static_cast<double>(s.p1);
      const double c2 = d2.exact ? d2.exact_correction(s.count) : 1.0 - static_cast<double>(s.p2);
      StepStats& st = stats[t * G + g];
      st.mu = mu;
      st.mhat = s.m / c1;
      st.r = 1.0 / std::sqrt(s.v / c2 + eps);
      st.count = s.count;
    }
  }
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  GECKO_RETURN_IF_ERROR(detail::check_prev_count(a.prev_count));
  const auto d1 = detail::Decay::make(a.beta1, a.beta_precision);
  const auto d2 = detail::Decay::make(a.beta2, a.beta_precision);
  const std::int64_t G = p.groups, K = p.group_size;
  std::vector<detail::StepStats> stats;
  std::vector<detail::GroupState> state;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    detail::replay_row(a, p, d1, d2, b, stats, state);
    for (std::int64_t t = 0; t < p.length; ++t) {
      const T* x = detail::row_ptr(a.x, b, t);
      T* y = detail::row_ptr(a.y, b, t);
      const bool padded = detail::flag(a.padding_mask, p, b, t);
      for (std::int64_t g = 0; g < G; ++g) {
        const auto& st = stats[t * G + g];
        for (std::int64_t k = g * K; k < (g + 1) * K; ++k) {
          double v = 0;
          if (!padded) {
            v = (to_double(x[k]) - st.mhat) * st.r * detail::scale_at(a.weight, k);
            if (!a.bias.empty()) v += to_double(a.bias.data[k]);
          }
          y[k] = from_double<T>(v);
        }
      }
    }
    // Written after the row is done so that mean/var/count may alias prev_*.
    if (p.has_state_out) {
      a.count.data[b] = state[0].count;  // every group of a row steps together
      for (std::int64_t g = 0; g < G; ++g) {
        a.mean.data[b * G + g] = static_cast<acc_t<T>>(state[g].m);
        a.var.data[b * G + g] = static_cast<acc_t<T>>(state[g].v);
      }
    }
  }
  return Status::success();
}

// Backward by the reverse recurrence of spec 1.4. Per (b, g), U and W are the adjoints of the raw
// state (M, V) arriving from later steps, starting at dmean / dvar. At a valid step t with count c:
//   db = sum_k dy_k w_k,   ds = sum_k dy_k w_k (x_k - mhat)                 (w = weight + 1)
//   GM = U - r db / (1 - beta1^c),   GV = W - r^3 ds / (2 (1 - beta2^c))     (dL/dM_t, dL/dV_t)
//   dmu = (1 - beta1) GM,   ds_t = (1 - beta2) GV
//   U, W = BOS ? 0 : (beta1 GM, beta2 GV)
//   dx_k = dy_k r w_k + (dmu + 2 ds_t (x_k - mu)) / K
// and dprev_mean, dprev_var = U, W after step 0. Padded steps pass U, W through untouched.
template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  GECKO_RETURN_IF_ERROR(detail::check_prev_count(a.prev_count));
  const auto d1 = detail::Decay::make(a.beta1, a.beta_precision);
  const auto d2 = detail::Decay::make(a.beta2, a.beta_precision);
  // The adjoint always uses exact double beta (as the authors' backward does): in the exact mode it
  // is the exact Jacobian of the forward.
  const auto e1 = detail::Decay::make(a.beta1, BetaPrecision::kExact);
  const auto e2 = detail::Decay::make(a.beta2, BetaPrecision::kExact);
  const std::int64_t G = p.groups, K = p.group_size;
  std::vector<double> dw(p.channels, 0.0), db(p.channels, 0.0);
  std::vector<detail::StepStats> stats;
  std::vector<detail::GroupState> state;
  std::vector<double> U(G), W(G);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    detail::replay_row(a, p, d1, d2, b, stats, state);
    for (std::int64_t g = 0; g < G; ++g) {
      U[g] = a.dmean.empty() ? 0.0 : static_cast<double>(a.dmean.data[b * G + g]);
      W[g] = a.dvar.empty() ? 0.0 : static_cast<double>(a.dvar.data[b * G + g]);
    }
    for (std::int64_t t = p.length - 1; t >= 0; --t) {
      const T* x = detail::row_ptr(a.x, b, t);
      const T* dy = detail::row_ptr(a.dy, b, t);
      T* dx = detail::row_ptr(a.dx, b, t);
      if (detail::flag(a.padding_mask, p, b, t)) {
        for (std::int64_t k = 0; k < p.channels; ++k) dx[k] = from_double<T>(0.0);
        continue;
      }
      const bool bos = detail::flag(a.bos_mask, p, b, t);
      for (std::int64_t g = 0; g < G; ++g) {
        const auto& st = stats[t * G + g];
        double sum_dyw = 0, sum_dyw_xc = 0;
        for (std::int64_t k = g * K; k < (g + 1) * K; ++k) {
          const double dyw = to_double(dy[k]) * detail::scale_at(a.weight, k);
          sum_dyw += dyw;
          sum_dyw_xc += dyw * (to_double(x[k]) - st.mhat);
        }
        const double gm = U[g] - st.r * sum_dyw / e1.exact_correction(st.count);
        const double gv = W[g] - 0.5 * st.r * st.r * st.r * sum_dyw_xc / e2.exact_correction(st.count);
        const double dmu = e1.one_minus * gm;
        const double dvar_t = e2.one_minus * gv;
        U[g] = bos ? 0.0 : e1.beta * gm;  // nothing before a BOS influences anything after it
        W[g] = bos ? 0.0 : e2.beta * gv;
        for (std::int64_t k = g * K; k < (g + 1) * K; ++k) {
          const double xv = to_double(x[k]), d = to_double(dy[k]);
          dx[k] = from_double<T>(d * st.r * detail::scale_at(a.weight, k) + (dmu + 2.0 * dvar_t * (xv - st.mu)) / K);
          dw[k] += d * (xv - st.mhat) * st.r;
          db[k] += d;
        }
      }
    }
    for (std::int64_t g = 0; g < G; ++g) {
      if (!a.dprev_mean.empty()) a.dprev_mean.data[b * G + g] = static_cast<acc_t<T>>(U[g]);
      if (!a.dprev_var.empty()) a.dprev_var.data[b * G + g] = static_cast<acc_t<T>>(W[g]);
    }
  }
  for (std::int64_t k = 0; !a.dweight.empty() && k < p.channels; ++k) a.dweight.data[k] = static_cast<acc_t<T>>(dw[k]);
  for (std::int64_t k = 0; !a.dbias.empty() && k < p.channels; ++k) a.dbias.data[k] = static_cast<acc_t<T>>(db[k]);
  return Status::success();
}

}  // namespace gecko::timestep_norm::cpu
