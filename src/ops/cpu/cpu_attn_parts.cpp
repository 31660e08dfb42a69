// CPU ops for the attention variants: grouped (per-head) linear maps for gates, per-head
// gating, group means (conditional_per_head gates), and QK-norm on a fused qkv buffer.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace oft::ops {

void CpuBackend::grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  const int64_t G = w.dim(0), O = w.dim(1), I = w.dim(2), N = x.dim(0);
  expect_shape(x, {N, G * I}, "grouped_linear x");
  expect_shape(y, {N, G * O}, "grouped_linear y");
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>(), *pb = b.defined() ? b.data<T>() : nullptr;
    T* py = y.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t g = 0; g < G; ++g)
        for (int64_t o = 0; o < O; ++o) {
          const T* wr = pw + (g * O + o) * I;
          const T* xr = px + n * G * I + g * I;
          T acc = pb ? pb[g * O + o] : T(0);
          for (int64_t i = 0; i < I; ++i) acc += xr[i] * wr[i];
          py[n * G * O + g * O + o] = acc;
        }
  });
}

void CpuBackend::grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                    const Tensor& x, const Tensor& w, bool accumulate_dx) {
  const int64_t G = w.dim(0), O = w.dim(1), I = w.dim(2), N = x.dim(0);
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pw = w.data<T>(), *pdy = dy.data<T>();
    if (dx.defined()) {
      T* pdx = dx.data<T>();
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t i = 0; i < I; ++i) {
            T acc = 0;
            for (int64_t o = 0; o < O; ++o) acc += pdy[n * G * O + g * O + o] * pw[(g * O + o) * I + i];
            T& d = pdx[n * G * I + g * I + i];
            d = accumulate_dx ? d + acc : acc;
          }
    }
    T* pdw = dw.data<T>();
    T* pdb = db.defined() ? db.data<T>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t go = 0; go < G * O; ++go) {
      const int64_t g = go / O;
      std::vector<double> acc(static_cast<size_t>(I), 0.0);
      double accb = 0;
      for (int64_t n = 0; n < N; ++n) {
        const double d = pdy[n * G * O + go];
        accb += d;
        const T* xr = px + n * G * I + g * I;
        for (int64_t i = 0; i < I; ++i) acc[i] += d * xr[i];
      }
      for (int64_t i = 0; i < I; ++i) pdw[go * I + i] += T(acc[i]);
      if (pdb) pdb[go] += T(accb);
    }
  });
}

void CpuBackend::head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate,
                               int64_t rows_per_gate) {
  const int64_t N = x.dim(0), C = x.dim(1), H = gate.dim(1), D = C / H;
  OFT_ASSERT(gate.dim(0) * rows_per_gate == N, "head_gate: gate rows ", gate.dim(0), " x ",
             rows_per_gate, " != ", N);
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pg = gate.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* g = pg + (n / rows_per_gate) * H;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) po[n * C + h * D + d] = px[n * C + h * D + d] * g[h];
    }
  });
}

void CpuBackend::head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x,
                               const Tensor& gate, int64_t rows_per_gate) {
  const int64_t N = x.dim(0), C = x.dim(1), H = gate.dim(1), D = C / H, R = gate.dim(0);
  dispatch_float(x, [&]<class T>() {
    const T *px = x.data<T>(), *pg = gate.data<T>(), *pdo = dout.data<T>();
    T* pdg = dgate.data<T>();
    // Gate gradients first: dx may alias dout.
#pragma omp parallel for schedule(static)
    for (int64_t rh = 0; rh < R * H; ++rh) {
      const int64_t r = rh / H, h = rh % H;
      double acc = 0;
      for (int64_t n = r * rows_per_gate; n < (r + 1) * rows_per_gate; ++n)
        for (int64_t d = 0; d < D; ++d) acc += double(pdo[n * C + h * D + d]) * px[n * C + h * D + d];
      pdg[rh] = T(acc);
    }
    T* pdx = dx.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* g = pg + (n / rows_per_gate) * H;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) pdx[n * C + h * D + d] = pdo[n * C + h * D + d] * g[h];
    }
  });
}

void CpuBackend::group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) {
  const int64_t R = y.dim(0), H = y.dim(1);
  expect_shape(x, {R * k, H}, "group_mean x");
  dispatch_float(x, [&]<class T>() {
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for (int64_t r = 0; r < R; ++r)
      for (int64_t h = 0; h < H; ++h) {
        double s = 0;
        for (int64_t i = 0; i < k; ++i) s += px[(r * k + i) * H + h];
        py[r * H + h] = T(s / double(k));
      }
  });
}

void CpuBackend::group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) {
  const int64_t R = dy.dim(0), H = dy.dim(1);
  dispatch_float(dy, [&]<class T>() {
    const T* pdy = dy.data<T>();
    T* pdx = dx.data<T>();
    const T inv = T(1.0 / double(k));
    for (int64_t n = 0; n < R * k; ++n)
      for (int64_t h = 0; h < H; ++h) pdx[n * H + h] = pdy[(n / k) * H + h] * inv;
  });
}

void CpuBackend::qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq,
                             const Tensor& wk, int64_t H, double eps) {
  const int64_t N = qkv.dim(0), C = qkv.dim(1) / 3, D = C / H;
  expect_shape(inv, {N, 2 * H}, "qk_norm inv");
  dispatch_float(qkv, [&]<class T>() {
    const T *pin = qkv.data<T>(), *pwq = wq.data<T>(), *pwk = wk.data<T>();
    T *po = out.data<T>(), *pi = inv.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t p = 0; p < 2; ++p) {
        const T* w = p == 0 ? pwq : pwk;
        for (int64_t h = 0; h < H; ++h) {
          const T* xr = pin + n * 3 * C + p * C + h * D;
          T* yr = po + n * 3 * C + p * C + h * D;
          double ss = 0;
          for (int64_t d = 0; d < D; ++d) ss += double(xr[d]) * xr[d];
          const double iv = 1.0 / (std::sqrt(ss / D) + eps);
          pi[n * 2 * H + p * H + h] = T(iv);
          for (int64_t d = 0; d < D; ++d) yr[d] = T(xr[d] * iv) * w[d];
        }
      }
      for (int64_t c = 0; c < C; ++c) po[n * 3 * C + 2 * C + c] = pin[n * 3 * C + 2 * C + c];
    }
  });
}

void CpuBackend::qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout,
                             const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                             const Tensor& inv, int64_t H) {
  const int64_t N = qkv.dim(0), C = qkv.dim(1) / 3, D = C / H;
  dispatch_float(qkv, [&]<class T>() {
    const T *px = qkv.data<T>(), *pwq = wq.data<T>(), *pwk = wk.data<T>();
    const T *pdo = dout.data<T>(), *pi = inv.data<T>();
    T* pdx = dqkv.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t p = 0; p < 2; ++p) {
        const T* w = p == 0 ? pwq : pwk;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t off = n * 3 * C + p * C + h * D;
          const double iv = pi[n * 2 * H + p * H + h];
          double gx = 0, ss = 0;
          for (int64_t d = 0; d < D; ++d) {
            gx += double(pdo[off + d]) * w[d] * px[off + d];
            ss += double(px[off + d]) * px[off + d];
          }
          const double rms = std::sqrt(ss / D);
          const double k = rms > 0 ? iv * iv * gx / (D * rms) : 0.0;
          for (int64_t d = 0; d < D; ++d)
            pdx[off + d] = T(iv * double(pdo[off + d]) * w[d] - k * px[off + d]);
        }
      }
      for (int64_t c = 0; c < C; ++c) pdx[n * 3 * C + 2 * C + c] = pdo[n * 3 * C + 2 * C + c];
    }
    for (int64_t p = 0; p < 2; ++p) {
      T* dw = (p == 0 ? dwq : dwk).data<T>();
#pragma omp parallel for schedule(static)
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t h = 0; h < H; ++h) {
            const int64_t off = n * 3 * C + p * C + h * D + d;
            acc += double(pdo[off]) * px[off] * pi[n * 2 * H + p * H + h];
          }
        dw[d] += T(acc);
      }
    }
  });
}

void CpuBackend::causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) {
  const int64_t N = x.dim(0), C = x.dim(1), B = N / T;
  dispatch_float(x, [&]<class F>() {
    const F* px = x.data<F>();
    F* py = y.data<F>();
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      double s = 0;
      for (int64_t i = 0; i < T; ++i) {
        s += px[(b * T + i) * C + c];
        py[(b * T + i) * C + c] = F(s / double(i + 1));
      }
    }
  });
}

void CpuBackend::causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) {
  const int64_t N = dy.dim(0), C = dy.dim(1), B = N / T;
  dispatch_float(dy, [&]<class F>() {
    const F* pdy = dy.data<F>();
    F* pdx = dx.data<F>();
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      double s = 0;  // suffix sum of dy_i / (i + 1)
      for (int64_t i = T - 1; i >= 0; --i) {
        s += pdy[(b * T + i) * C + c] / double(i + 1);
        pdx[(b * T + i) * C + c] = F(s);
      }
    }
  });
}

void CpuBackend::copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col,
                              int64_t ncols, bool accumulate) {
  const int64_t N = dst.dim(0), Wd = dst.dim(1), Ws = src.dim(1);
  OFT_ASSERT(src.dim(0) == N && dst_col + ncols <= Wd && src_col + ncols <= Ws, "copy_columns");
  dispatch_float(dst, [&]<class F>() {
    F* pd = dst.data<F>();
    const F* ps = src.data<F>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < ncols; ++c) {
        F& d = pd[n * Wd + dst_col + c];
        d = accumulate ? d + ps[n * Ws + src_col + c] : ps[n * Ws + src_col + c];
      }
  });
}

}  // namespace oft::ops
