// CPU ops: LayerNorm, RMSNorm, attention (materialised T x T probabilities, every ProbFn),
// cross-entropy. Reference implementations written for clarity; parameter gradients are summed
// in a second pass over column blocks so results are deterministic.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/cpu_backend.h"
#include "ops/row_moments.h"

namespace oft::ops {

// ---------------------------------------------------------------- LayerNorm
void CpuBackend::layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                               const Tensor& w, const Tensor& b, double eps) {
  const int64_t C = w.numel(), N = x.numel() / C;
  // y [N, C], or [N, C + kBiasColumnPad] in the bias-column layout (ops.h)
  const int64_t ldy = is_bias_column_layout(y, C) ? y.dim(1) : C;
  if (ldy == C) {
    expect_same(y, x, "layernorm_fwd");
  } else {
    OFT_CHECK(y.dtype() == x.dtype() && y.dim(0) == N, "layernorm_fwd: y ", shape_str(y.shape()),
              " ", dtype_name(y.dtype()), " for x ", shape_str(x.shape()), " ",
              dtype_name(x.dtype()));
  }
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>(), *pb = b.defined() ? b.data<T>() : nullptr;
    T *py = y.data<T>(), *pm = mean.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = px + n * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += xr[c];
      const double mu = s / C;
      double v = 0;
      for (int64_t c = 0; c < C; ++c) v += (xr[c] - mu) * (xr[c] - mu);
      const double r = 1.0 / std::sqrt(v / C + eps);
      pm[n] = T(mu);
      pr[n] = T(r);
      T* yr = py + n * ldy;
      for (int64_t c = 0; c < C; ++c)
        yr[c] = T((xr[c] - mu) * r) * pw[c] + (pb ? pb[c] : T(0));
      for (int64_t c = C; c < ldy; ++c) yr[c] = T(c == C ? 1.0 : 0.0);
    }
  });
}

void CpuBackend::layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                               const Tensor& x, const Tensor& w, const Tensor& mean,
                               const Tensor& rstd, bool accumulate, Tensor* dsum) {
  const int64_t C = w.numel(), N = x.numel() / C;
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>(), *pdy = dy.data<T>();
    const T *pm = mean.data<T>(), *pr = rstd.data<T>();
    T* pdx = dx.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T *xr = px + n * C, *dyr = pdy + n * C;
      const double mu = pm[n], r = pr[n];
      double mean_g = 0, mean_gx = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double g = double(dyr[c]) * pw[c], xh = (xr[c] - mu) * r;
        mean_g += g;
        mean_gx += g * xh;
      }
      mean_g /= C;
      mean_gx /= C;
      T* dxr = pdx + n * C;
      for (int64_t c = 0; c < C; ++c) {
        const double g = double(dyr[c]) * pw[c], xh = (xr[c] - mu) * r;
        const T d = T(r * (g - mean_g - xh * mean_gx));
        dxr[c] = accumulate ? dxr[c] + d : d;
      }
    }
    T* pdw = dw.data<T>();
    T* pdb = db.defined() ? db.data<T>() : nullptr;
    const int64_t blk = 64;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += blk) {
      const int64_t c1 = std::min(C, c0 + blk);
      std::vector<double> aw(c1 - c0, 0.0), ab(c1 - c0, 0.0);
      for (int64_t n = 0; n < N; ++n) {
        const double mu = pm[n], r = pr[n];
        for (int64_t c = c0; c < c1; ++c) {
          const double d = pdy[n * C + c];
          aw[c - c0] += d * (px[n * C + c] - mu) * r;
          ab[c - c0] += d;
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        pdw[c] += T(aw[c - c0]);
        if (pdb) pdb[c] += T(ab[c - c0]);
      }
    }
  });
  if (dsum) bias_grad(*dsum, dx);
}

// ---------------------------------------------------------------- RMSNorm (seed B form)
void CpuBackend::rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w,
                             double eps) {
  const int64_t C = w.numel(), N = x.numel() / C;
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>();
    T *py = y.data<T>(), *pi = inv.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = px + n * C;
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += double(xr[c]) * xr[c];
      const double iv = 1.0 / (std::sqrt(s / C) + eps);
      pi[n] = T(iv);
      for (int64_t c = 0; c < C; ++c) py[n * C + c] = T(xr[c] * iv) * pw[c];
    }
  });
}

void CpuBackend::rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                             const Tensor& w, const Tensor& inv, bool accumulate, Tensor* dsum) {
  const int64_t C = w.numel(), N = x.numel() / C;
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>(), *pdy = dy.data<T>(), *pi = inv.data<T>();
    T* pdx = dx.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T *xr = px + n * C, *dyr = pdy + n * C;
      const double iv = pi[n];
      double gx = 0, ss = 0;
      for (int64_t c = 0; c < C; ++c) {
        gx += double(dyr[c]) * pw[c] * xr[c];
        ss += double(xr[c]) * xr[c];
      }
      const double rms = std::sqrt(ss / C);
      // d inv / d x_j = -inv^2 * x_j / (C * rms)
      const double k = rms > 0 ? iv * iv * gx / (C * rms) : 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const T d = T(iv * double(dyr[c]) * pw[c] - k * xr[c]);
        pdx[n * C + c] = accumulate ? pdx[n * C + c] + d : d;
      }
    }
    T* pdw = dw.data<T>();
    const int64_t blk = 64;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += blk) {
      const int64_t c1 = std::min(C, c0 + blk);
      std::vector<double> aw(c1 - c0, 0.0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c)
          aw[c - c0] += double(pdy[n * C + c]) * px[n * C + c] * pi[n];
      for (int64_t c = c0; c < c1; ++c) pdw[c] += T(aw[c - c0]);
    }
  });
  if (dsum) bias_grad(*dsum, dx);
}

// ---------------------------------------------------------------- attention
// Per (batch, head): S = Q K^T / sqrt(D) (+ causal / padding mask), P = rowsoftmax(S) (or
// softmax1), P' = clip((zeta - gamma) P + gamma, 0, 1) for clipped softmax, out = P' V.
// `saved` holds the unclipped P [B, H, T, T]: the clipped backward needs P at clipped entries.
namespace {

template <class T>
struct HeadView {
  const T* qkv;
  int64_t T_, C, D, h, b;
  const T* q(int64_t t) const { return qkv + (b * T_ + t) * 3 * C + h * D; }
  const T* k(int64_t t) const { return q(t) + C; }
  const T* v(int64_t t) const { return q(t) + 2 * C; }
};

inline bool key_visible(int64_t i, int64_t j, int64_t b, int64_t T, bool causal,
                        const int32_t* mask) {
  if (causal && j > i) return false;
  if (mask && mask[b * T + j] == 0) return false;
  return true;
}

template <class T>
T clip_prob(T p, const AttentionSpec& s) {
  if (s.prob != ProbFn::Clipped) return p;
  const T c = T(s.zeta - s.gamma) * p + T(s.gamma);
  return c < T(0) ? T(0) : (c > T(1) ? T(1) : c);
}

}  // namespace

void CpuBackend::attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv,
                               const Tensor& key_mask, int64_t B, int64_t T,
                               const AttentionSpec& spec) {
  OFT_CHECK(spec.gate == nullptr, "attention_fwd: the CPU backend applies the head gate as a "
            "separate op (gate_in_epilogue is false)");
  const int64_t C = qkv.dim(1) / 3, H = spec.n_head, D = C / H;
  expect_shape(qkv, {B * T, 3 * C}, "attention qkv");
  expect_shape(out, {B * T, C}, "attention out");
  if (!saved.defined() || saved.shape() != Shape{B, H, T, T} || saved.dtype() != qkv.dtype())
    saved = Tensor::empty({B, H, T, T}, qkv.dtype());
  const int32_t* mask = key_mask.defined() ? key_mask.data<int32_t>() : nullptr;
  // Quantized evaluation sees every score, as the source quantizes them before the mask.
  const bool all_scores = spec.score_quant.enabled || spec.score_range != nullptr;
  const bool prob_q = spec.prob_quant.enabled;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> smin(B * H, kInf), smax(B * H, -kInf), pmin(B * H, kInf), pmax(B * H, -kInf);
  dispatch_float(qkv, [&]<class F>() {
    const F* base = qkv.data<F>();
    F* po = out.data<F>();
    F* pp = saved.data<F>();
    const double inv_sqrt_d = 1.0 / std::sqrt(double(D));
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      HeadView<F> hv{base, T, C, D, h, b};
      std::vector<double> s(T);
      for (int64_t i = 0; i < T; ++i) {
        F* prow = pp + (bh * T + i) * T;
        double mx = -kInf;
        const F* qi = hv.q(i);
        for (int64_t j = 0; j < T; ++j) {
          const bool visible = key_visible(i, j, b, T, spec.causal, mask);
          if (!visible && !all_scores) {
            s[j] = -kInf;
            continue;
          }
          const F* kj = hv.k(j);
          F dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
          double sc = double(dot) * inv_sqrt_d;
          if (all_scores) {
            smin[bh] = std::min(smin[bh], sc);
            smax[bh] = std::max(smax[bh], sc);
            if (spec.score_quant.enabled) sc = fake_quant_value(sc, spec.score_quant);
          }
          s[j] = visible ? sc : -kInf;
          if (visible) mx = std::max(mx, s[j]);
        }
        double denom = 0;
        for (int64_t j = 0; j < T; ++j) {
          s[j] = std::isinf(s[j]) ? 0.0 : double(std::exp(F(s[j] - mx)));
          denom += s[j];
        }
        // softmax1: exp(s_j) / (1 + sum exp(s)) = exp(s_j - m) / (exp(-m) + sum exp(s - m)).
        if (spec.prob == ProbFn::Softmax1) denom += std::isinf(mx) ? 1.0 : std::exp(-mx);
        for (int64_t j = 0; j < T; ++j) prow[j] = denom > 0 ? F(s[j] / denom) : F(0);
        if (spec.entropy_rows) spec.entropy_rows[bh * T + i] = row_entropy_f64(prow, T);
        F* orow = po + (b * T + i) * C + h * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = 0;
        for (int64_t j = 0; j < T; ++j) {
          F pj = clip_prob(prow[j], spec);
          if (spec.prob_range || prob_q) {
            pmin[bh] = std::min(pmin[bh], double(pj));
            pmax[bh] = std::max(pmax[bh], double(pj));
            if (prob_q) pj = F(fake_quant_value(pj, spec.prob_quant));
          }
          if (pj == F(0)) continue;
          const F* vj = hv.v(j);
          for (int64_t d = 0; d < D; ++d) orow[d] += pj * vj[d];
        }
      }
    }
  });
  if (spec.score_range) {
    spec.score_range[0] = *std::min_element(smin.begin(), smin.end());
    spec.score_range[1] = *std::max_element(smax.begin(), smax.end());
  }
  if (spec.prob_range) {
    spec.prob_range[0] = *std::min_element(pmin.begin(), pmin.end());
    spec.prob_range[1] = *std::max_element(pmax.begin(), pmax.end());
  }
}

void CpuBackend::attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                               const Tensor& saved, const Tensor& key_mask, int64_t B, int64_t T,
                               const AttentionSpec& spec, Tensor* dsum) {
  OFT_CHECK(spec.gate == nullptr, "attention_bwd: the CPU backend applies the head gate as a "
            "separate op (gate_in_epilogue is false)");
  const int64_t C = qkv.dim(1) / 3, H = spec.n_head, D = C / H;
  expect_shape(dqkv, {B * T, 3 * C}, "attention dqkv");
  expect_shape(saved, {B, H, T, T}, "attention saved probabilities");
  dispatch_float(qkv, [&]<class F>() {
    const F* base = qkv.data<F>();
    const F *pdo = dout.data<F>(), *pp = saved.data<F>();
    F* pdq = dqkv.data<F>();
    const double inv_sqrt_d = 1.0 / std::sqrt(double(D));
    const double span = spec.zeta - spec.gamma;
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      HeadView<F> hv{base, T, C, D, h, b};
      auto dq = [&](int64_t t) { return pdq + (b * T + t) * 3 * C + h * D; };
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) dq(t)[d] = dq(t)[C + d] = dq(t)[2 * C + d] = 0;
      std::vector<double> dp(T);
      for (int64_t i = 0; i < T; ++i) {
        const F* prow = pp + (bh * T + i) * T;
        const F* doi = pdo + (b * T + i) * C + h * D;
        double rowsum = 0;
        for (int64_t j = 0; j < T; ++j) {
          const F pij = prow[j];
          const F pc = clip_prob(pij, spec);
          const F* vj = hv.v(j);
          F gf = 0;
          for (int64_t d = 0; d < D; ++d) gf += doi[d] * vj[d];
          double g = gf;
          // dV_j += P'_ij dO_i
          if (pc != F(0)) {
            F* dvj = dq(j) + 2 * C;
            for (int64_t d = 0; d < D; ++d) dvj[d] += pc * doi[d];
          }
          if (spec.prob == ProbFn::Clipped) {
            // The clamp passes the gradient on [0, 1]; for zeta <= 1 the upper clamp never
            // binds (p <= 1 gives raw <= zeta), so only the lower bound is tested, as the CUDA
            // kernels do (a rounding of p = 1 upwards must not switch the gradient off).
            const double raw = span * pij + spec.gamma;
            g = (raw >= 0.0 && (spec.zeta <= 1.0 || raw <= 1.0)) ? g * span : 0.0;
          }
          dp[j] = g;
          rowsum += double(pij) * g;
        }
        const F* qi = hv.q(i);
        F* dqi = dq(i);
        for (int64_t j = 0; j < T; ++j) {
          const F ds = F(double(prow[j]) * (dp[j] - rowsum) * inv_sqrt_d);
          if (ds == F(0)) continue;
          const F* kj = hv.k(j);
          F* dkj = dq(j) + C;
          for (int64_t d = 0; d < D; ++d) {
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
          }
        }
      }
    }
  });
  if (dsum) bias_grad(*dsum, dqkv);
}

// ---------------------------------------------------------------- cross-entropy
void CpuBackend::cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets,
                                   int64_t vocab) {
  const int64_t N = logits.dim(0), ld = logits.dim(1), V = vocab;
  OFT_ASSERT(V >= 1 && V <= ld, "cross_entropy_fwd: vocab ", V, " outside [1, ", ld, "]");
  const int32_t* tg = targets.data<int32_t>();
  dispatch_float(logits, [&]<class T>() {
    const T* pl = logits.data<T>();
    T* po = losses.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      if (tg[n] < 0) {
        po[n] = 0;
        continue;
      }
      OFT_ASSERT(tg[n] < V, "target ", tg[n], " outside the vocabulary of ", V);
      const T* row = pl + n * ld;
      T mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
      po[n] = T(double(mx) + std::log(s) - double(row[tg[n]]));
    }
  });
}

namespace {
// One row of the cross-entropy gradient: drow[:V] = scale * (softmax(row[:V]) - onehot(tgt)),
// drow[V:ld] = 0 (zero row for tgt < 0); returns the row's loss logsumexp(row) - row[tgt] (0
// for tgt < 0). The target's logit is read before the row is written, so drow may be row.
template <class T>
T ce_row_grad(T* drow, const T* row, int64_t V, int64_t ld, int32_t tgt, double scale) {
  for (int64_t v = V; v < ld; ++v) drow[v] = 0;
  if (tgt < 0) {
    for (int64_t v = 0; v < V; ++v) drow[v] = 0;
    return 0;
  }
  const T x_target = row[tgt];
  T mx = row[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) {
    drow[v] = std::exp(row[v] - mx);
    s += drow[v];
  }
  const T k = T(scale / s);
  for (int64_t v = 0; v < V; ++v) drow[v] *= k;
  drow[tgt] -= T(scale);
  return T(double(mx) + std::log(s) - double(x_target));
}
}  // namespace

void CpuBackend::cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                   double scale, int64_t vocab) {
  const int64_t N = logits.dim(0), ld = logits.dim(1), V = vocab;
  OFT_ASSERT(V >= 1 && V <= ld, "cross_entropy_bwd: vocab ", V, " outside [1, ", ld, "]");
  const int32_t* tg = targets.data<int32_t>();
  dispatch_float(logits, [&]<class T>() {
    const T* pl = logits.data<T>();
    T* pd = dlogits.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) ce_row_grad(pd + n * ld, pl + n * ld, V, ld, tg[n], scale);
  });
}

// The two above in one pass, with the same arithmetic (losses and gradient equal those of
// cross_entropy_fwd and cross_entropy_bwd at scale 1 bit for bit). The target's logit is read
// before the row is overwritten, so dlogits may alias logits.
void CpuBackend::cross_entropy_fwd_grad(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                                        const Tensor& targets, int64_t vocab) {
  const int64_t N = logits.dim(0), ld = logits.dim(1), V = vocab;
  OFT_ASSERT(V >= 1 && V <= ld, "cross_entropy_fwd_grad: vocab ", V, " outside [1, ", ld, "]");
  expect_same(dlogits, logits, "cross_entropy_fwd_grad");
  OFT_ASSERT(losses.numel() == N && targets.numel() == N, "cross_entropy_fwd_grad: ",
             losses.numel(), " losses and ", targets.numel(), " targets for ", N, " rows");
  const int32_t* tg = targets.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)  // checked before anything is written (no throw in the loop)
    OFT_ASSERT(tg[n] < V, "target ", tg[n], " outside the vocabulary of ", V);
  dispatch_float(logits, [&]<class T>() {
    const T* pl = logits.data<T>();
    T* pd = dlogits.data<T>();
    T* po = losses.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) po[n] = ce_row_grad(pd + n * ld, pl + n * ld, V, ld, tg[n], 1.0);
  });
}

}  // namespace oft::ops
