// CPU hidden_state_sums: the sufficient statistics of seed B's hidden-state metrics (ops.h,
// HiddenStateSums; the metrics themselves are finished in analysis/metrics.cpp). A host f64 copy
// of the centred tokens X~ [N, d], then:
//   columns       column sums of x~ and x~^2, in token order per column;
//   feature Gram  G = Y^T Y with Y = X~ - mu (OpenBLAS dsyrk, upper triangle), reduced per
//                 feature row i over j > i, the rows summed in order;
//   token cosines each sequence's Gram S = X~_b X~_b^T [T, T] (dsyrk), reduced per token;
//   max / median  per token, nth_element for the lower median.
// Parallel loops write per-item partials that are summed in a fixed order, and dsyrk splits its
// output (never the sum over tokens) among threads: results do not depend on the thread count.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/bf16.h"
#include "ops/cpu/cpu_backend.h"

namespace oft::ops {
namespace {

// X~ [N, d] in f64 with the per-token sums of squares.
struct Rows {
  std::vector<double> x;
  std::vector<double> row_sq;
  int64_t N = 0, d = 0;
};

template <class T>
void load_rows_from(Rows& R, const T* p, bool centre) {
  const int64_t N = R.N, d = R.d;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* src = p + n * d;
    double* dst = R.x.data() + n * d;
    double mean = 0;
    if (centre) {
      for (int64_t j = 0; j < d; ++j) mean += static_cast<double>(src[j]);
      mean /= static_cast<double>(d);
    }
    double sq = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(src[j]) - mean;
      dst[j] = v;
      sq += v * v;
    }
    R.row_sq[static_cast<size_t>(n)] = sq;
  }
}

Rows load_rows(const Tensor& h, bool centre) {
  Rows R;
  R.d = h.dim(-1);
  R.N = h.numel() / R.d;
  R.x.resize(static_cast<size_t>(h.numel()));
  R.row_sq.resize(static_cast<size_t>(R.N));
  switch (h.dtype()) {
    case DType::F64: load_rows_from(R, h.data<double>(), centre); break;
    case DType::F32: load_rows_from(R, h.data<float>(), centre); break;
    case DType::BF16: load_rows_from(R, static_cast<const Bf16Value*>(h.raw()), centre); break;
    default: fail("hidden_state_sums needs an f32, f64 or bf16 tensor, got ", dtype_name(h.dtype()));
  }
  return R;
}

// Column sums of f(x) over the N rows, in row order per column.
template <class F>
std::vector<double> column_sums(const Rows& R, F&& f) {
  const int64_t N = R.N, d = R.d;
  std::vector<double> out(static_cast<size_t>(d), 0.0);
  const int64_t chunk = 64;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < d; j0 += chunk) {
    const int64_t j1 = std::min(d, j0 + chunk);
    for (int64_t n = 0; n < N; ++n) {
      const double* row = R.x.data() + n * d;
      for (int64_t j = j0; j < j1; ++j) out[static_cast<size_t>(j)] += f(row[j]);
    }
  }
  return out;
}

void feature_gram(HiddenStateSums& s, const Rows& R) {
  const int64_t N = R.N, d = R.d;
  const double Nd = static_cast<double>(N);
  std::vector<double> mu(s.col_sum);
  for (double& v : mu) v /= Nd;
  std::vector<double> Y(R.x.size());
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) Y[n * d + j] = R.x[n * d + j] - mu[j];
  std::vector<double> G(static_cast<size_t>(d * d), 0.0);
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<blasint>(d),
              static_cast<blasint>(N), 1.0, Y.data(), static_cast<blasint>(d), 0.0, G.data(),
              static_cast<blasint>(d));
  double diag_floor = 0;
  for (int64_t i = 0; i < d; ++i) diag_floor += G[i * d + i];
  diag_floor = diag_floor / static_cast<double>(d) * 1e-24;
  std::vector<double> f_off(d, 0.0), f_diag(d, 0.0), cos_off(d, 0.0);
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < d; ++i) {
    const double gii = G[i * d + i];
    const double fii = gii + Nd * mu[i] * mu[i];
    f_diag[i] = fii * fii;
    double fo = 0, co = 0;
    for (int64_t j = i + 1; j < d; ++j) {
      const double gij = G[i * d + j];
      const double fij = gij + Nd * mu[i] * mu[j];
      fo += fij * fij;
      const double gjj = G[j * d + j];
      if (gii > diag_floor && gjj > diag_floor) {
        const double c = gij / std::sqrt(gii * gjj);
        co += c * c;
      }
    }
    f_off[i] = fo;
    cos_off[i] = co;
  }
  for (int64_t i = 0; i < d; ++i) s.f_off += f_off[i], s.f_diag += f_diag[i], s.cos_off += cos_off[i];
}

void token_cos(HiddenStateSums& s, const Rows& R, int64_t B, int64_t T) {
  const int64_t N = R.N, d = R.d;
  const double row_floor = s.row_sq / static_cast<double>(N) * 1e-24;
  std::vector<double> c_sum(N, 0.0), c_sq(N, 0.0);
  std::vector<double> S(static_cast<size_t>(T * T));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n0 = b * T;
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, static_cast<blasint>(T),
                static_cast<blasint>(d), 1.0, R.x.data() + n0 * d, static_cast<blasint>(d), 0.0,
                S.data(), static_cast<blasint>(T));
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < T; ++i) {
      const double qn = R.row_sq[n0 + i];
      if (!(qn > row_floor) || qn == 0) continue;
      const double* si = S.data() + i * T;
      double cs = 0, cq = 0;
      for (int64_t k = i + 1; k < T; ++k) {
        const double qm = R.row_sq[n0 + k];
        if (!(qm > row_floor) || qm == 0) continue;
        const double c = si[k] / std::sqrt(qn * qm);
        cs += c;
        cq += c * c;
      }
      c_sum[n0 + i] = cs;
      c_sq[n0 + i] = cq;
    }
  }
  for (int64_t n = 0; n < N; ++n) s.cos_sum += c_sum[n], s.cos_sq += c_sq[n];
}

void max_median(HiddenStateSums& s, const Rows& R) {
  const int64_t N = R.N, d = R.d;
  std::vector<double> ratio(N);
#pragma omp parallel
  {
    std::vector<double> buf(d);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const double* x = R.x.data() + n * d;
      bool has_nan = false;
      double mx = 0;
      for (int64_t j = 0; j < d; ++j) {
        buf[j] = std::fabs(x[j]);
        if (std::isnan(buf[j])) has_nan = true;
        mx = std::max(mx, buf[j]);
      }
      if (has_nan) {
        ratio[n] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      auto mid = buf.begin() + (d - 1) / 2;  // lower median, as torch.median
      std::nth_element(buf.begin(), mid, buf.end());
      ratio[n] = mx / *mid;
    }
  }
  for (double v : ratio) s.ratio_sum += v;
}

}  // namespace

HiddenStateSums CpuBackend::hidden_state_sums(const Tensor& h, int64_t B, int64_t T,
                                              unsigned parts, bool centre) {
  check_hidden_state_sums_args(h, B, T, parts);
  const Rows R = load_rows(h, centre);
  HiddenStateSums s;
  s.N = R.N;
  s.d = R.d;
  for (double v : R.row_sq) s.row_sq += v, s.row_sq2 += v * v;
  if (parts & (HiddenStateSums::kColumns | HiddenStateSums::kFeatureGram)) {
    s.col_sum = column_sums(R, [](double v) { return v; });
    s.col_sq = column_sums(R, [](double v) { return v * v; });
  }
  if (parts & HiddenStateSums::kFeatureGram) feature_gram(s, R);
  if (parts & HiddenStateSums::kTokenCos) token_cos(s, R, B, T);
  if (parts & HiddenStateSums::kMaxMedian) max_median(s, R);
  return s;
}

}  // namespace oft::ops
