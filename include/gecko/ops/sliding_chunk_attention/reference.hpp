// CPU reference for sliding chunk attention: plain loops in double, one (batch, head) at a time.
// The oracle for the CUDA kernels. Unlike the authors' kernels it does not round the logits,
// probabilities, dP or dS to T, and it sums the overlapping dK/dV contributions of neighbouring
// chunks in double rather than in T (spec 1.5, 1.8).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "gecko/ops/sliding_chunk_attention/args.hpp"

namespace gecko::sliding_chunk_attention::cpu {

namespace detail {

// One (b, h) slice widened to double, with RoPE applied: q [L, dk], the key window
// [prev ; rope(k)] [P + L, dk], values [P + L, dv], and the segment id of every key and query.
struct Head {
  std::int64_t L = 0, P = 0, dk = 0, dv = 0;
  std::vector<double> q, k, v;
  std::vector<std::int64_t> qseg, kseg;  // empty without segments
  bool rotate = false;

  const double* q_row(std::int64_t r) const { return q.data() + r * dk; }
  const double* k_row(std::int64_t j) const { return k.data() + j * dk; }
  const double* v_row(std::int64_t j) const { return v.data() + j * dv; }
};

template <class T>
void load_rows(const TensorView<const T>& t, std::int64_t b, std::int64_t h, std::int64_t rows, std::int64_t d,
               double* dst) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* src = &t(b, r, h, 0);
    for (std::int64_t i = 0; i < d; ++i) dst[r * d + i] = to_double(src[i]);
  }
}

template <class A>
Head load_head(const A& a, const Problem& p, std::int64_t b, std::int64_t h, const std::vector<float>& theta) {
  Head s;
  s.L = p.length;
  s.P = p.prev;
  s.dk = p.dk;
  s.dv = p.dv;
  s.rotate = h < p.n_rope_heads;
  s.q.resize(s.L * s.dk);
  s.k.resize((s.P + s.L) * s.dk);
  s.v.resize((s.P + s.L) * s.dv);
  load_rows(a.q, b, h, s.L, s.dk, s.q.data());
  if (s.P > 0) {
    load_rows(a.prev_k, b, h, s.P, s.dk, s.k.data());  // already rotated by the call that made them
    load_rows(a.prev_v, b, h, s.P, s.dv, s.v.data());
  }
  load_rows(a.k, b, h, s.L, s.dk, s.k.data() + s.P * s.dk);
  load_rows(a.v, b, h, s.L, s.dv, s.v.data() + s.P * s.dv);
  if (s.rotate)
    for (std::int64_t r = 0; r < s.L; ++r) {
      rope::cpu::rotate(s.q.data() + r * s.dk, s.dk, a.rope.start + r, theta, +1);
      rope::cpu::rotate(s.k.data() + (s.P + r) * s.dk, s.dk, a.rope.start + r, theta, +1);
    }
  if (p.segments) {
    s.qseg.resize(s.L);
    s.kseg.resize(s.P + s.L);
    for (std::int64_t j = 0; j < s.P; ++j) s.kseg[j] = a.prev_segment_idx(b, j);
    for (std::int64_t r = 0; r < s.L; ++r) s.qseg[r] = s.kseg[s.P + r] = a.segment_idx(b, r);
  }
  return s;
}

// Softmax row of query r over its visible keys [lo, P + r]: writes p[j - lo] (0 where masked)
// and returns the log-sum-exp of the scaled logits, or -inf when no key is visible (cannot
// happen for legal inputs, since a query always sees its own key, but a kernel must not divide
// by zero, so neither does the oracle).
inline double softmax_row(const Head& s, std::int64_t r, std::int64_t chunk, double scale, std::int64_t& lo,
                          std::vector<double>& p) {
  const std::int64_t i = s.P + r;
  lo = first_key(i, chunk);
  const double ninf = -std::numeric_limits<double>::infinity();
  p.assign(static_cast<std::size_t>(i - lo + 1), ninf);  // logits; masked keys stay -inf
  double m = ninf;
  for (std::int64_t j = lo; j <= i; ++j) {
    if (!key_visible(j, i, chunk)) continue;
    if (!s.qseg.empty() && s.kseg[j] != s.qseg[r]) continue;
    double dot = 0;
    for (std::int64_t c = 0; c < s.dk; ++c) dot += s.q_row(r)[c] * s.k_row(j)[c];
    p[j - lo] = scale * dot;
    m = std::max(m, p[j - lo]);
  }
  if (m == ninf) {
    std::fill(p.begin(), p.end(), 0.0);
    return ninf;
  }
  double sum = 0;
  for (double& e : p) {
    e = std::exp(e - m);  // exactly 0 for masked keys
    sum += e;
  }
  for (double& e : p) e /= sum;
  return m + std::log(sum);
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  if (!a.probs.empty()) return unsupported("sliding chunk attention (CPU): probs are kept only by the CUDA GEMM-staged path");
  if (a.cursor) return unsupported("sliding chunk attention (CPU): a decode cursor is device memory; pass rope.start and P");
  const std::vector<float> theta = a.rope.enabled() ? rope::cpu::inv_freqs(a.rope.base, p.dk) : std::vector<float>{};
  std::vector<double> prob, acc(p.dv);
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const detail::Head s = detail::load_head(a, p, b, h, theta);
      for (std::int64_t r = 0; r < p.length; ++r) {
        std::int64_t lo = 0;
        const double lse = detail::softmax_row(s, r, p.chunk, a.scale, lo, prob);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::size_t t = 0; t < prob.size(); ++t)
          if (prob[t] != 0.0)
            for (std::int64_t c = 0; c < p.dv; ++c) acc[c] += prob[t] * s.v_row(lo + t)[c];
        T* o = &a.out(b, r, h, 0);
        for (std::int64_t c = 0; c < p.dv; ++c) o[c] = from_double<T>(acc[c]);
        if (!a.lse.empty()) a.lse(b, h, r) = static_cast<acc_t<T>>(lse);
      }
    }
  return Status::success();
}

// dS_ij = p_ij (dP_ij - sum_j' p_ij' dP_ij') with dP_ij = <dout_i, v_j>; dq_i = scale sum_j dS_ij k_j,
// dk_j = scale sum_i dS_ij q_i, dv_j = sum_i p_ij dout_i. The first P rows of the window's
// gradients are the prev gradients (post-RoPE); the rest are rotated back by -phi for dk and dq.
template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  if (!a.probs.empty()) return unsupported("sliding chunk attention (CPU): probs are kept only by the CUDA GEMM-staged path");
  const std::vector<float> theta = a.rope.enabled() ? rope::cpu::inv_freqs(a.rope.base, p.dk) : std::vector<float>{};
  const std::int64_t L = p.length, P = p.prev, dk = p.dk, dv = p.dv;
  std::vector<double> prob, dprob, gq(L * dk), gk((P + L) * dk), gv((P + L) * dv), g(dv);
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h) {
      const detail::Head s = detail::load_head(a, p, b, h, theta);
      std::fill(gq.begin(), gq.end(), 0.0);
      std::fill(gk.begin(), gk.end(), 0.0);
      std::fill(gv.begin(), gv.end(), 0.0);
      for (std::int64_t r = 0; r < L; ++r) {
        std::int64_t lo = 0;
        detail::softmax_row(s, r, p.chunk, a.scale, lo, prob);
        const T* go = &a.dout(b, r, h, 0);
        for (std::int64_t c = 0; c < dv; ++c) g[c] = to_double(go[c]);
        dprob.assign(prob.size(), 0.0);
        double row_dot = 0;  // sum_j p_j dP_j
        for (std::size_t t = 0; t < prob.size(); ++t) {
          if (prob[t] == 0.0) continue;
          double d = 0;
          for (std::int64_t c = 0; c < dv; ++c) d += g[c] * s.v_row(lo + t)[c];
          dprob[t] = d;
          row_dot += prob[t] * d;
        }
        for (std::size_t t = 0; t < prob.size(); ++t) {
          if (prob[t] == 0.0) continue;
          const std::int64_t j = lo + static_cast<std::int64_t>(t);
          const double ds = a.scale * prob[t] * (dprob[t] - row_dot);
          for (std::int64_t c = 0; c < dk; ++c) {
            gq[r * dk + c] += ds * s.k_row(j)[c];
            gk[j * dk + c] += ds * s.q_row(r)[c];
          }
          for (std::int64_t c = 0; c < dv; ++c) gv[j * dv + c] += prob[t] * g[c];
        }
      }
      if (s.rotate)
        for (std::int64_t r = 0; r < L; ++r) {
          rope::cpu::rotate(gq.data() + r * dk, dk, a.rope.start + r, theta, -1);
          rope::cpu::rotate(gk.data() + (P + r) * dk, dk, a.rope.start + r, theta, -1);
        }
      for (std::int64_t r = 0; r < L; ++r) {
        for (std::int64_t c = 0; c < dk; ++c) {
          a.dq(b, r, h, c) = from_double<T>(gq[r * dk + c]);
          a.dk(b, r, h, c) = from_double<T>(gk[(P + r) * dk + c]);
        }
        for (std::int64_t c = 0; c < dv; ++c)
          a.dv(b, r, h, c) = from_double<T>(gv[(P + r) * dv + c] + (a.accumulate_dv ? to_double(a.dv(b, r, h, c)) : 0.0));
      }
      for (std::int64_t j = 0; j < P; ++j) {
        if (!a.dprev_k.empty())
          for (std::int64_t c = 0; c < dk; ++c) a.dprev_k(b, j, h, c) = from_double<T>(gk[j * dk + c]);
        if (!a.dprev_v.empty())
          for (std::int64_t c = 0; c < dv; ++c) a.dprev_v(b, j, h, c) = from_double<T>(gv[j * dv + c]);
      }
    }
  return Status::success();
}

}  // namespace gecko::sliding_chunk_attention::cpu
