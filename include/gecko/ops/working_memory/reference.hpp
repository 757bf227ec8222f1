// CPU reference for adaptive working memory: plain loops in double, one (batch row, head) at a
// time. The oracle for the CUDA kernels and the embedded backend where no GPU exists.
//
// Two building blocks carry the whole recurrence, so the full path, the tail (decode) path and the
// backward's recomputation cannot drift apart:
//   readout()       o_t = q̂_tᵀ M for a block of queries, zeroed outside the memory's document;
//   absorb_chunk()  one step of spec 2.4: reset check, the key views of a C-token chunk,
//                   logaddexp, delta rule, blend.
// Unlike the authors' code nothing is rounded to T in between: q̂, k̂, κ, ρ, VV, U and M stay
// double within a call; only out (T) and the state (acc_t<T>) are rounded when returned.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gecko/core/dtype.hpp"
#include "gecko/ops/working_memory/args.hpp"

namespace gecko::working_memory::cpu {

inline constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// A document id, or none where it is unknown (no segments, or no carried ids).
struct DocId {
  bool known = false;
  std::int64_t id = 0;
  static DocId none() { return {}; }
  static DocId of(std::int64_t id) { return {true, id}; }
  // True when both ids are known and differ: the only case that masks or resets.
  bool differs(std::int64_t other) const { return known && id != other; }
};

// The state of one (batch row, head) while a call runs.
struct HeadState {
  std::int64_t dk = 0, dv = 0;
  std::vector<double> memory;    // [dk, dv]
  std::vector<double> log_norm;  // [dk]; -inf for features nothing has been absorbed into

  // The authors' "create an empty state": M = 0, A = -inf. Absorbing into it gives ρ = 1.
  static HeadState empty(std::int64_t dk, std::int64_t dv) {
    return HeadState{dk, dv, std::vector<double>(dk * dv, 0.0), std::vector<double>(dk, kNegInf)};
  }
};

// The views of one chunk's keys for one (batch row, head), spec 2.2.
struct ChunkKeys {
  std::vector<double> khat;   // [C, dk] softmax over the features of each token ("query view")
  std::vector<double> kappa;  // [dk, C] softmax over the chunk's tokens of each feature ("key view");
                              //         0 for key-masked tokens
  std::vector<double> ell;    // [dk]    logsumexp over the chunk's unmasked tokens
  std::vector<double> v;      // [C, dv]
};

// What one absorb_chunk step leaves for the backward.
struct AbsorbRecord {
  bool reset = false;
  ChunkKeys keys;
  std::vector<double> memory_bar;    // [dk, dv] the memory the step starts from (after the reset)
  std::vector<double> log_norm_bar;  // [dk]
  std::vector<double> log_norm_new;  // [dk] A' = logaddexp(ℓ, Ā)
  std::vector<double> rho;           // [dk] exp(ℓ - A')
  std::vector<double> vv;            // [C, dv] V - K̂ M̄, the delta-rule residual
  std::vector<double> r;             // [dk, dv] U - M̄, the blend direction
};

namespace detail {

// Stable softmax of n values (max subtracted) into y.
template <class T>
void softmax(const T* x, std::int64_t n, double* y) {
  double m = kNegInf;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, to_double(x[i]));
  double z = 0;
  for (std::int64_t i = 0; i < n; ++i) z += (y[i] = std::exp(to_double(x[i]) - m));
  for (std::int64_t i = 0; i < n; ++i) y[i] /= z;
}

// log(exp(a) + exp(b)) without overflow; -inf + -inf stays -inf.
inline double logaddexp(double a, double b) {
  const double m = std::max(a, b);
  if (m == kNegInf) return kNegInf;
  return m + std::log1p(std::exp(std::min(a, b) - m));
}

// Softmax backward along a row: y ∘ (g - <g, y>).
inline void softmax_backward(const double* y, const double* g, std::int64_t n, std::int64_t stride, double* out) {
  double s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += g[i * stride] * y[i * stride];
  for (std::int64_t i = 0; i < n; ++i) out[i * stride] = y[i * stride] * (g[i * stride] - s);
}

template <class S>
HeadState load_state(const TensorView<const S>& memory, const TensorView<const S>& log_norm, std::int64_t b,
                     std::int64_t h, std::int64_t dk, std::int64_t dv) {
  HeadState s{dk, dv, std::vector<double>(dk * dv), std::vector<double>(dk)};
  for (std::int64_t i = 0; i < dk; ++i) {
    s.log_norm[i] = static_cast<double>(log_norm(b, h, i));
    for (std::int64_t c = 0; c < dv; ++c) s.memory[i * dv + c] = static_cast<double>(memory(b, h, i, c));
  }
  return s;
}

template <class S>
void store_state(const HeadState& s, const TensorView<S>& memory, const TensorView<S>& log_norm, std::int64_t b,
                 std::int64_t h) {
  for (std::int64_t i = 0; i < s.dk; ++i) {
    log_norm(b, h, i) = static_cast<S>(s.log_norm[i]);
    for (std::int64_t c = 0; c < s.dv; ++c) memory(b, h, i, c) = static_cast<S>(s.memory[i * s.dv + c]);
  }
}

// The three key views of the C tokens rows [t0, t0 + C) of k / v ([B, *, H, d]) for (b, h). ids
// holds the chunk's C doc ids, or null (one document): tokens outside the chunk's last document
// are key-masked (spec 2.3). The last token is never masked, so every ℓ is finite.
template <class T>
ChunkKeys chunk_keys(const TensorView<const T>& k, const TensorView<const T>& v, std::int64_t b, std::int64_t h,
                     std::int64_t t0, std::int64_t C, const std::int64_t* ids) {
  const std::int64_t dk = k.size(3), dv = v.size(3);
  ChunkKeys ck{std::vector<double>(C * dk), std::vector<double>(dk * C, 0.0), std::vector<double>(dk),
               std::vector<double>(C * dv)};
  auto masked = [&](std::int64_t t) { return ids != nullptr && ids[t] != ids[C - 1]; };
  for (std::int64_t t = 0; t < C; ++t) {
    softmax(&k(b, t0 + t, h, 0), dk, &ck.khat[t * dk]);
    for (std::int64_t c = 0; c < dv; ++c) ck.v[t * dv + c] = to_double(v(b, t0 + t, h, c));
  }
  for (std::int64_t i = 0; i < dk; ++i) {
    double m = kNegInf;
    for (std::int64_t t = 0; t < C; ++t)
      if (!masked(t)) m = std::max(m, to_double(k(b, t0 + t, h, i)));
    double z = 0;
    for (std::int64_t t = 0; t < C; ++t)
      if (!masked(t)) z += (ck.kappa[i * C + t] = std::exp(to_double(k(b, t0 + t, h, i)) - m));
    for (std::int64_t t = 0; t < C; ++t) ck.kappa[i * C + t] /= z;
    ck.ell[i] = m + std::log(z);
  }
  return ck;
}

}  // namespace detail

// Reads the memory for the n queries rows [t0, t0 + n) of aq ([B, *, H, dk]) into the same rows of
// out: o_t = softmax(aq_t)ᵀ M, set to 0 where ids[t] != memory_doc (ids: the n queries' doc ids, or
// null; memory_doc: s(-2), the doc of the memory's last absorbed token, or none).
template <class T>
void readout(const HeadState& s, const TensorView<const T>& aq, const TensorView<T>& out, std::int64_t b,
             std::int64_t h, std::int64_t t0, std::int64_t n, const std::int64_t* ids, DocId memory_doc) {
  const std::int64_t dk = s.dk, dv = s.dv;
  std::vector<double> qhat(dk), o(dv);
  for (std::int64_t t = 0; t < n; ++t) {
    std::fill(o.begin(), o.end(), 0.0);
    if (!(ids && memory_doc.differs(ids[t]))) {
      detail::softmax(&aq(b, t0 + t, h, 0), dk, qhat.data());
      for (std::int64_t i = 0; i < dk; ++i)
        for (std::int64_t c = 0; c < dv; ++c) o[c] += qhat[i] * s.memory[i * dv + c];
    }
    for (std::int64_t c = 0; c < dv; ++c) out(b, t0 + t, h, c) = from_double<T>(o[c]);
  }
}

// One recurrence step (spec 2.4) for (b, h): absorbs the chunk rows [t0, t0 + C) of k / v
// ([B, *, H, d]) whose doc ids are ids (C values, or null) into s. The state is reset first when the
// memory's document (memory_doc, or none when unknown) is not the chunk's last document.
template <class T>
void absorb_chunk(HeadState& s, DocId memory_doc, const TensorView<const T>& k, const TensorView<const T>& v,
                  std::int64_t b, std::int64_t h, std::int64_t t0, std::int64_t C, const std::int64_t* ids,
                  AbsorbRecord* rec = nullptr) {
  const std::int64_t dk = s.dk, dv = s.dv;
  const bool reset = ids && memory_doc.differs(ids[C - 1]);
  if (reset) s = HeadState::empty(dk, dv);
  ChunkKeys ck = detail::chunk_keys(k, v, b, h, t0, C, ids);
  std::vector<double> a_new(dk), rho(dk), vv(C * dv), u(dk * dv, 0.0);
  for (std::int64_t i = 0; i < dk; ++i) {
    a_new[i] = detail::logaddexp(ck.ell[i], s.log_norm[i]);
    rho[i] = std::exp(ck.ell[i] - a_new[i]);  // Z_chunk / Z_total: 1 into an empty state
  }
  // VV = V - K̂ M: what the memory does not yet predict of each value (delta rule).
  for (std::int64_t t = 0; t < C; ++t)
    for (std::int64_t c = 0; c < dv; ++c) {
      double pred = 0;
      for (std::int64_t i = 0; i < dk; ++i) pred += ck.khat[t * dk + i] * s.memory[i * dv + c];
      vv[t * dv + c] = ck.v[t * dv + c] - pred;
    }
  // U = κ VV [dk, dv]: per feature, the chunk's softmax-over-time average of the residuals.
  for (std::int64_t i = 0; i < dk; ++i)
    for (std::int64_t t = 0; t < C; ++t) {
      const double w = ck.kappa[i * C + t];
      if (w == 0.0) continue;
      for (std::int64_t c = 0; c < dv; ++c) u[i * dv + c] += w * vv[t * dv + c];
    }
  if (rec) {
    rec->reset = reset;
    rec->memory_bar = s.memory;
    rec->log_norm_bar = s.log_norm;
    rec->log_norm_new = a_new;
    rec->rho = rho;
    rec->vv = vv;
    rec->r.resize(dk * dv);
    for (std::int64_t x = 0; x < dk * dv; ++x) rec->r[x] = u[x] - s.memory[x];
  }
  for (std::int64_t i = 0; i < dk; ++i)
    for (std::int64_t c = 0; c < dv; ++c) s.memory[i * dv + c] += rho[i] * (u[i * dv + c] - s.memory[i * dv + c]);
  s.log_norm = a_new;
  if (rec) rec->keys = std::move(ck);
}

// Backward of one absorb_chunk step. On entry gm / ga hold ∂L/∂(M, A) after the step; on exit,
// ∂L/∂(M, A) before it (0 through a reset). gk [C, dk] / gv [C, dv] receive the chunk's key and
// value gradients (overwritten).
inline void absorb_chunk_backward(const AbsorbRecord& r, std::vector<double>& gm, std::vector<double>& ga,
                                  std::vector<double>& gk, std::vector<double>& gv) {
  const std::int64_t dk = static_cast<std::int64_t>(r.rho.size());
  const std::int64_t dv = static_cast<std::int64_t>(gm.size()) / dk;
  const std::int64_t C = static_cast<std::int64_t>(r.vv.size()) / dv;
  const ChunkKeys& ck = r.keys;
  // M' = M̄ + ρ ∘ R with ρ = exp(ℓ - A'), A' = logaddexp(ℓ, Ā): ∂ρ/∂ℓ = ρ(1-ρ) = -∂ρ/∂Ā, ∂A'/∂ℓ = ρ.
  std::vector<double> g_ell(dk), gu(dk * dv);
  for (std::int64_t i = 0; i < dk; ++i) {
    double g_rho = 0;
    for (std::int64_t c = 0; c < dv; ++c) g_rho += gm[i * dv + c] * r.r[i * dv + c];
    const double rho = r.rho[i];
    const double g_plus = ga[i] - g_rho * rho;
    g_ell[i] = g_plus * rho + g_rho * rho;
    // exp(Ā - A') = 1 - ρ, computed from the logs so an empty Ā (-inf) gives exactly 0.
    ga[i] = g_plus * std::exp(r.log_norm_bar[i] - r.log_norm_new[i]);
    for (std::int64_t c = 0; c < dv; ++c) gu[i * dv + c] = rho * gm[i * dv + c];
  }
  // U = κ VV:  gVV = κᵀ gU [C, dv],  gκ = gU VVᵀ [dk, C].
  gv.assign(C * dv, 0.0);
  std::vector<double> g_kappa(dk * C, 0.0);
  for (std::int64_t i = 0; i < dk; ++i)
    for (std::int64_t t = 0; t < C; ++t) {
      double acc = 0;
      for (std::int64_t c = 0; c < dv; ++c) {
        gv[t * dv + c] += ck.kappa[i * C + t] * gu[i * dv + c];
        acc += gu[i * dv + c] * r.vv[t * dv + c];
      }
      g_kappa[i * C + t] = acc;
    }
  // VV = V - K̂ M̄:  gK̂ = -gVV M̄ᵀ [C, dk];  gM̄ = (1 - ρ) gM - K̂ᵀ gVV.
  std::vector<double> g_khat(C * dk);
  for (std::int64_t t = 0; t < C; ++t)
    for (std::int64_t i = 0; i < dk; ++i) {
      double acc = 0;
      for (std::int64_t c = 0; c < dv; ++c) acc += gv[t * dv + c] * r.memory_bar[i * dv + c];
      g_khat[t * dk + i] = -acc;
    }
  for (std::int64_t i = 0; i < dk; ++i)
    for (std::int64_t c = 0; c < dv; ++c) {
      double acc = 0;
      for (std::int64_t t = 0; t < C; ++t) acc += ck.khat[t * dk + i] * gv[t * dv + c];
      gm[i * dv + c] = (1.0 - r.rho[i]) * gm[i * dv + c] - acc;
    }
  if (r.reset) {  // M̄ = 0 and Ā = -inf did not depend on the incoming state
    std::fill(gm.begin(), gm.end(), 0.0);
    std::fill(ga.begin(), ga.end(), 0.0);
  }
  // ak enters through κ (softmax over time, per feature), k̂ (softmax over features, per token)
  // and ℓ (∂ℓ_i/∂a_ti = κ_it). Masked tokens have κ = 0 and gVV = 0, so all three vanish.
  gk.assign(C * dk, 0.0);
  std::vector<double> tmp(C);
  for (std::int64_t i = 0; i < dk; ++i) {
    detail::softmax_backward(&ck.kappa[i * C], &g_kappa[i * C], C, 1, tmp.data());
    for (std::int64_t t = 0; t < C; ++t) gk[t * dk + i] = tmp[t] + g_ell[i] * ck.kappa[i * C + t];
  }
  std::vector<double> tk(dk);
  for (std::int64_t t = 0; t < C; ++t) {
    detail::softmax_backward(&ck.khat[t * dk], &g_khat[t * dk], dk, 1, tk.data());
    for (std::int64_t i = 0; i < dk; ++i) gk[t * dk + i] += tk[i];
  }
}

namespace detail {

// s(j): the doc id of the last token of chunk j of the call; j = -1, -2 come from the carried ids.
template <class A>
DocId last_doc(const A& a, const Problem& p, std::int64_t b, std::int64_t j) {
  if (!p.segments) return DocId::none();
  if (j >= 0) return DocId::of(a.segment_idx(b, j * p.chunk + p.chunk - 1));
  if (!p.has_state) return DocId::none();  // no carried chunk: the memory is empty or created here
  return DocId::of(j == -1 ? a.prev_segment_idx(b, p.chunk - 1) : a.prev_segment_count(b));
}

// What the full path leaves for the backward, per step.
struct Step {
  bool created = false;              // the "create an empty state" step (outputs 0, absorbs nothing)
  DocId out_doc;                     // s(j-2): the output mask's document
  std::vector<double> memory_in;     // [dk, dv] the memory the outputs read
  AbsorbRecord absorb;
};

// The full path (spec 2.4) for (b, h). Writes chunk outputs into out when it is given, records
// the steps when steps is given, and returns the final state.
template <class T, class A>
HeadState run_full(const A& a, const Problem& p, std::int64_t b, std::int64_t h, const TensorView<T>* out,
                   std::vector<Step>* steps) {
  const std::int64_t C = p.chunk;
  HeadState s;
  bool have = p.has_state;
  if (have) s = load_state(a.memory, a.log_norm, b, h, p.dk, p.dv);
  auto ids_at = [&](const TensorView<const std::int64_t>& ids, std::int64_t t) -> const std::int64_t* {
    return p.segments ? &ids(b, t) : nullptr;
  };
  for (std::int64_t j = 0; j < p.chunks; ++j) {
    Step* st = steps ? &(*steps)[j] : nullptr;
    if (!have) {  // the authors' None: nothing to read, nothing to absorb (chunk 0 becomes prev)
      if (out)
        for (std::int64_t t = j * C; t < (j + 1) * C; ++t)
          for (std::int64_t c = 0; c < p.dv; ++c) (*out)(b, t, h, c) = from_double<T>(0.0);
      s = HeadState::empty(p.dk, p.dv);
      have = true;
      if (st) st->created = true;
      continue;
    }
    const DocId doc = last_doc(a, p, b, j - 2);
    if (st) {
      st->out_doc = doc;
      st->memory_in = s.memory;
    }
    if (out) readout(s, a.aq, *out, b, h, j * C, C, ids_at(a.segment_idx, j * C), doc);
    AbsorbRecord* rec = st ? &st->absorb : nullptr;
    if (j == 0)
      absorb_chunk(s, doc, a.prev_k, a.prev_v, b, h, 0, C, ids_at(a.prev_segment_idx, 0), rec);
    else
      absorb_chunk(s, doc, a.ak, a.v, b, h, (j - 1) * C, C, ids_at(a.segment_idx, (j - 1) * C), rec);
  }
  return s;
}

}  // namespace detail

template <class T>
Status forward(const ForwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h) {
      if (!p.tail) {
        const HeadState s = detail::run_full<T>(a, p, b, h, &a.out, nullptr);
        detail::store_state(s, a.memory_out, a.log_norm_out, b, h);
        continue;
      }
      // Tail path (spec 2.5): the outputs read the memory as it stands (chunks <= n-2 while the
      // stream is in chunk n), then a completed chunk moves the delay line on by one chunk.
      if (!p.has_state) {
        for (std::int64_t t = 0; t < p.length; ++t)
          for (std::int64_t c = 0; c < p.dv; ++c) a.out(b, t, h, c) = from_double<T>(0.0);
        if (p.creates)
          detail::store_state(HeadState::empty(p.dk, p.dv), a.memory_out, a.log_norm_out, b, h);
        continue;
      }
      HeadState s = detail::load_state(a.memory, a.log_norm, b, h, p.dk, p.dv);
      const DocId doc = p.segments ? DocId::of(a.prev_segment_count(b)) : DocId::none();
      readout(s, a.aq, a.out, b, h, 0, p.length, p.segments ? &a.segment_idx(b, 0) : nullptr, doc);
      if (p.absorbs)
        absorb_chunk(s, doc, a.prev_k, a.prev_v, b, h, 0, p.chunk, p.segments ? &a.prev_segment_idx(b, 0) : nullptr);
      detail::store_state(s, a.memory_out, a.log_norm_out, b, h);
    }
  return Status::success();
}

template <class T>
Status backward(const BackwardArgs<T>& a) {
  Problem p;
  GECKO_RETURN_IF_ERROR(validate(a, Memory::kHost, p));
  const std::int64_t C = p.chunk, dk = p.dk, dv = p.dv;
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads; ++h) {
      // The authors save only the inputs and re-run the recurrence; so does the reference.
      std::vector<detail::Step> steps(p.chunks);
      detail::run_full<T>(a, p, b, h, nullptr, &steps);
      std::vector<double> gm(dk * dv, 0.0), ga(dk, 0.0);
      if (!a.dmemory_out.empty())
        for (std::int64_t i = 0; i < dk; ++i)
          for (std::int64_t c = 0; c < dv; ++c) gm[i * dv + c] = static_cast<double>(a.dmemory_out(b, h, i, c));
      if (!a.dlog_norm_out.empty())
        for (std::int64_t i = 0; i < dk; ++i) ga[i] = static_cast<double>(a.dlog_norm_out(b, h, i));
      // The last chunk is never absorbed in this call: its k and v get no gradient here.
      for (std::int64_t t = p.length - C; t < p.length; ++t) {
        for (std::int64_t i = 0; i < dk; ++i) a.dak(b, t, h, i) = from_double<T>(0.0);
        for (std::int64_t c = 0; c < dv; ++c) a.dv(b, t, h, c) = from_double<T>(0.0);
      }
      std::vector<double> gk, gv, go(C * dv), gq(dk), qhat(dk), tq(dk);
      for (std::int64_t j = p.chunks - 1; j >= 0; --j) {
        const detail::Step& st = steps[j];
        if (st.created) {  // outputs were constant zeros; no state came in (j == 0)
          for (std::int64_t t = j * C; t < (j + 1) * C; ++t)
            for (std::int64_t i = 0; i < dk; ++i) a.daq(b, t, h, i) = from_double<T>(0.0);
          continue;
        }
        absorb_chunk_backward(st.absorb, gm, ga, gk, gv);
        // Readout O = Q̂ M_in, with the output mask applied to the upstream gradient.
        for (std::int64_t t = 0; t < C; ++t) {
          const std::int64_t row = j * C + t;
          const bool masked = p.segments && st.out_doc.differs(a.segment_idx(b, row));
          for (std::int64_t c = 0; c < dv; ++c) go[t * dv + c] = masked ? 0.0 : to_double(a.dout(b, row, h, c));
          detail::softmax(&a.aq(b, row, h, 0), dk, qhat.data());
          for (std::int64_t i = 0; i < dk; ++i) {
            double acc = 0;
            for (std::int64_t c = 0; c < dv; ++c) {
              acc += go[t * dv + c] * st.memory_in[i * dv + c];
              gm[i * dv + c] += qhat[i] * go[t * dv + c];
            }
            gq[i] = acc;
          }
          detail::softmax_backward(qhat.data(), gq.data(), dk, 1, tq.data());
          for (std::int64_t i = 0; i < dk; ++i) a.daq(b, row, h, i) = from_double<T>(tq[i]);
        }
        // The absorbed chunk: the carried one for j == 0, else chunk j-1 of this call.
        const TensorView<T>& dk_view = j == 0 ? a.dprev_k : a.dak;
        const TensorView<T>& dv_view = j == 0 ? a.dprev_v : a.dv;
        const std::int64_t t0 = j == 0 ? 0 : (j - 1) * C;
        for (std::int64_t t = 0; t < C; ++t) {
          for (std::int64_t i = 0; i < dk; ++i) dk_view(b, t0 + t, h, i) = from_double<T>(gk[t * dk + i]);
          for (std::int64_t c = 0; c < dv; ++c) dv_view(b, t0 + t, h, c) = from_double<T>(gv[t * dv + c]);
        }
      }
      if (p.has_state) {
        for (std::int64_t i = 0; i < dk; ++i) {
          a.dlog_norm(b, h, i) = static_cast<acc_t<T>>(ga[i]);
          for (std::int64_t c = 0; c < dv; ++c) a.dmemory(b, h, i, c) = static_cast<acc_t<T>>(gm[i * dv + c]);
        }
      }
    }
  return Status::success();
}

}  // namespace gecko::working_memory::cpu
