// Outlier metrics (src/analysis/metrics.h): each function against a naive re-implementation of
// its formula, plus closed-form cases (Gaussian kurtosis 3, one-hot rows, equal / dominant
// feature RMS, identical / random tokens, uniform causal attention) and the Seed A tracker's
// running means and summary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "analysis/metrics.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/ops.h"

using namespace oft;
using namespace oft::analysis;

namespace {

Tensor randn_t(const Shape& s, Rng& rng, DType dt = DType::F64, double std = 1.0) {
  std::vector<double> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = rng.normal() * std;
  return Tensor::from_vector(s, v, dt);
}

void expect_rel(double got, double want, double rtol, const std::string& what) {
  EXPECT_NEAR(got, want, rtol * std::max(1.0, std::fabs(want))) << what;
}

// ---- naive references (written independently of the implementation) ----

double naive_kurtosis(std::vector<double> x, double eps = 1e-6) {
  const double n = static_cast<double>(x.size());
  const double mean = std::accumulate(x.begin(), x.end(), 0.0) / n;
  double m4 = 0, var = 0;
  for (double v : x) m4 += std::pow(v - mean, 4.0) / n;
  for (double v : x) var += (v - mean) * (v - mean) / (n - 1);
  const double sd = std::sqrt(var);
  return m4 / (std::pow(sd, 4.0) + eps);
}

double naive_inf(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

using Mat = std::vector<std::vector<double>>;

Mat to_mat(const Tensor& h) {
  const int64_t d = h.dim(-1), N = h.numel() / d;
  const std::vector<double> v = h.to_vector();
  Mat m(N, std::vector<double>(d));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < d; ++j) m[n][j] = v[n * d + j];
  return m;
}

Mat centred(Mat m) {
  for (auto& row : m) {
    const double mean = std::accumulate(row.begin(), row.end(), 0.0) / row.size();
    for (auto& v : row) v -= mean;
  }
  return m;
}

double global_rms(const Mat& x) {
  double s = 0;
  size_t cnt = 0;
  for (const auto& row : x)
    for (double v : row) s += v * v, ++cnt;
  return std::sqrt(s / cnt) + 1e-8;
}

struct NaiveKurt {
  double kurt, var;
};
NaiveKurt naive_neuron_kurtosis(const Tensor& h) {
  Mat x = centred(to_mat(h));
  const double r = global_rms(x);
  const size_t N = x.size(), d = x[0].size();
  std::vector<double> s2(d);
  for (size_t j = 0; j < d; ++j) {
    double acc = 0;
    for (size_t n = 0; n < N; ++n) acc += (x[n][j] / r) * (x[n][j] / r);
    s2[j] = acc / N;
  }
  double m2 = 0, m4 = 0;
  for (double v : s2) m2 += v / d, m4 += v * v / d;
  double var = 0;
  for (double v : s2) var += (v - m2) * (v - m2);
  return {m4 / (m2 * m2), var / (d - 1)};
}

SignalProp naive_signal(const Tensor& h, int64_t B, int64_t T) {
  Mat x = centred(to_mat(h));
  const double r = global_rms(x);
  const size_t N = x.size(), d = x[0].size();
  Mat z = x;
  for (auto& row : z)
    for (auto& v : row) v /= r;
  SignalProp s{};
  // Feature Gram Z^T Z / N, off-diagonal RMS.
  double acc = 0;
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j) {
      if (i == j) continue;
      double g = 0;
      for (size_t n = 0; n < N; ++n) g += z[n][i] * z[n][j];
      g /= N;
      acc += g * g;
    }
  s.feat_corr_rms = std::sqrt(acc / (d * (d - 1)));
  // Feature correlations (columns centred over tokens).
  Mat c(d, std::vector<double>(N));
  for (size_t j = 0; j < d; ++j) {
    double m = 0;
    for (size_t n = 0; n < N; ++n) m += z[n][j] / N;
    for (size_t n = 0; n < N; ++n) c[j][n] = z[n][j] - m;
  }
  acc = 0;
  for (size_t i = 0; i < d; ++i)
    for (size_t j = 0; j < d; ++j) {
      if (i == j) continue;
      double ij = 0, ii = 0, jj = 0;
      for (size_t n = 0; n < N; ++n)
        ij += c[i][n] * c[j][n], ii += c[i][n] * c[i][n], jj += c[j][n] * c[j][n];
      const double cs = ij / std::sqrt(ii * jj);
      acc += cs * cs;
    }
  s.feat_cos_rms = std::sqrt(acc / (d * (d - 1)));
  // Token Gram Z Z^T / d over all tokens.
  double sum = 0, sq = 0;
  for (size_t n = 0; n < N; ++n)
    for (size_t m = 0; m < N; ++m) {
      if (n == m) continue;
      double g = 0;
      for (size_t j = 0; j < d; ++j) g += z[n][j] * z[m][j];
      g /= d;
      sum += g, sq += g * g;
    }
  s.token_corr_mean = sum / (N * (N - 1.0));
  s.token_corr_rms = std::sqrt(sq / (N * (N - 1.0)));
  // Per-sequence cosines.
  sum = sq = 0;
  double cnt = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t u = 0; u < T; ++u) {
        if (t == u) continue;
        const auto& a = x[b * T + t];
        const auto& e = x[b * T + u];
        double ab = 0, aa = 0, ee = 0;
        for (size_t j = 0; j < d; ++j) ab += a[j] * e[j], aa += a[j] * a[j], ee += e[j] * e[j];
        const double cs = ab / std::sqrt(aa * ee);
        sum += cs, sq += cs * cs, cnt += 1;
      }
  s.token_cos_mean = sum / cnt;
  s.token_cos_rms = std::sqrt(sq / cnt);
  return s;
}

double naive_max_median(const Tensor& h, bool centre) {
  Mat x = to_mat(h);
  if (centre) x = centred(x);
  double s = 0;
  for (auto row : x) {
    for (auto& v : row) v = std::abs(v);
    std::sort(row.begin(), row.end());
    s += row.back() / row[(row.size() - 1) / 2];
  }
  return s / x.size();
}

std::vector<double> naive_entropy_per_head(const Tensor& p, bool causal) {
  const int64_t B = p.dim(0), H = p.dim(1), Tq = p.dim(2), Tk = p.dim(3);
  const std::vector<double> v = p.to_vector();
  std::vector<double> out(H, 0.0);
  for (int64_t h = 0; h < H; ++h) {
    double s = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t j = 0; j < Tk; ++j) {
          if (causal && j > i) continue;
          const double q = v[((b * H + h) * Tq + i) * Tk + j];
          if (q != 0) s -= q * std::log(q);
        }
    out[h] = s / (B * Tq);
  }
  return out;
}

// Random softmax rows [B, H, T, T], optionally causal (masked entries exactly 0).
Tensor random_probs(int64_t B, int64_t H, int64_t T, bool causal, Rng& rng) {
  std::vector<double> v(B * H * T * T, 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < T; ++i) {
      double* row = v.data() + (bh * T + i) * T;
      const int64_t jend = causal ? i + 1 : T;
      double z = 0;
      for (int64_t j = 0; j < jend; ++j) z += (row[j] = std::exp(2.0 * rng.normal()));
      for (int64_t j = 0; j < jend; ++j) row[j] /= z;
    }
  return Tensor::from_vector({B, H, T, T}, v, DType::F64);
}

}  // namespace

// ---------------------------------------------------------------- seed A

TEST(MetricsSeedA, KurtosisOfGaussianIsThree) {
  Rng rng(1);
  const int64_t n = 1000000;
  Tensor t = randn_t({1, n}, rng);
  const double k = pearson_kurtosis(t.data<double>(), n);
  EXPECT_NEAR(k, 3.0, 0.05);
  Tensor f = t.cast(DType::F32);
  EXPECT_NEAR(pearson_kurtosis(f.data<float>(), n), k, 1e-4);
  EXPECT_NEAR(row_kurtosis(t, n)[0], k, 1e-12);
}

TEST(MetricsSeedA, KurtosisOfOneHotRowIsExact) {
  // x = e_1 of length n: mean 1/n, var_unbiased = 1/n, mean((x - mean)^4) =
  // (n-1)((n-1)^3 + 1) / n^5. With the source's eps = 1e-6 and n = 1000, std^4 = 1e-6 = eps, so
  // the value is half the eps-free one: 498.003 vs 996.006.
  const int64_t n = 1000;
  std::vector<double> x(n, 0.0);
  x[0] = 1;
  const double nn = static_cast<double>(n);
  const double m4 = (nn - 1) * (std::pow(nn - 1, 3) + 1) / std::pow(nn, 5);
  const double std4 = 1.0 / (nn * nn);
  EXPECT_NEAR(pearson_kurtosis(x.data(), n), m4 / (std4 + 1e-6), 1e-9);
  EXPECT_NEAR(pearson_kurtosis(x.data(), n), 498.003, 1e-3);
  EXPECT_NEAR(pearson_kurtosis(x.data(), n, 0.0), m4 / std4, 1e-9);
  EXPECT_NEAR(pearson_kurtosis(x.data(), n, 0.0), 996.006, 1e-3);
  EXPECT_DOUBLE_EQ(inf_norm(x.data(), n), 1.0);
  EXPECT_THROW(pearson_kurtosis(x.data(), 1), Error);
}

TEST(MetricsSeedA, RowsMatchNaive) {
  Rng rng(2);
  for (DType dt : {DType::F64, DType::F32}) {
    Tensor t = randn_t({2, 3, 40}, rng, dt, 1.7);  // 6 token rows or 2 sequence rows
    std::vector<double> v = t.to_vector();
    v[17] = 25.0;  // an outlier
    t = Tensor::from_vector(t.shape(), v, dt);
    v = t.to_vector();
    for (int64_t row_len : {40, 120}) {
      const auto k = row_kurtosis(t, row_len);
      const auto m = row_inf_norm(t, row_len);
      ASSERT_EQ(k.size(), static_cast<size_t>(240 / row_len));
      for (size_t r = 0; r < k.size(); ++r) {
        std::vector<double> row(v.begin() + r * row_len, v.begin() + (r + 1) * row_len);
        expect_rel(k[r], naive_kurtosis(row), 1e-10, "kurtosis row " + std::to_string(r));
        EXPECT_DOUBLE_EQ(m[r], naive_inf(row));
      }
    }
    EXPECT_DOUBLE_EQ(inf_norm(t), naive_inf(v));
  }
  std::vector<double> with_nan = {1.0, std::nan(""), -3.0};
  EXPECT_TRUE(std::isnan(inf_norm(with_nan.data(), 3)));
  EXPECT_THROW(row_kurtosis(Tensor::zeros({10}, DType::F32), 3), Error);
}

// The backend op behind the row statistics: both columns, kurtosis off, a NaN row, and the
// checks that guard it; a bf16 tensor goes through an f64 copy.
TEST(MetricsSeedA, RowMomentsOpAndItsInputs) {
  Rng rng(5);
  const Tensor t = randn_t({3, 50}, rng, DType::F32, 1.2);
  std::vector<double> v = t.to_vector();
  v[60] = std::nan("");
  const Tensor x = Tensor::from_vector({3, 50}, v, DType::F32);
  Tensor out = Tensor::empty({3, 2}, DType::F64);
  ops::cpu_backend().row_moments(out, x, 50, true, kSeedAKurtosisEps);
  const std::vector<double> o = out.to_vector();
  for (int r : {0, 2}) {
    const std::vector<double> row(v.begin() + r * 50, v.begin() + (r + 1) * 50);
    expect_rel(o[2 * r], naive_kurtosis(row), 1e-12, "kurtosis");
    EXPECT_EQ(o[2 * r + 1], naive_inf(row));
  }
  EXPECT_TRUE(std::isnan(o[2]) && std::isnan(o[3])) << "the NaN row";
  ops::cpu_backend().row_moments(out, x, 50, false, kSeedAKurtosisEps);
  EXPECT_TRUE(std::isnan(out.to_vector()[0])) << "no kurtosis asked";
  const Tensor b = t.cast(DType::BF16);
  const std::vector<double> bv = b.to_vector();
  expect_rel(row_kurtosis(b, 50)[1],
             naive_kurtosis(std::vector<double>(bv.begin() + 50, bv.begin() + 100)), 1e-12,
             "bf16 row");
  EXPECT_THROW(row_inf_norm(Tensor::zeros({4}, DType::I32), 2), Error);
  EXPECT_THROW(row_kurtosis(Tensor::zeros({4}, DType::F32), 1), Error);  // rows of one value
}

TEST(MetricsSeedA, TrackerRunningMeanOverRows) {
  Rng rng(3);
  SeedATracker tr;
  std::vector<double> all_k, all_m;
  // Three calls with 2, 5 and 3 rows (the last one with another row length).
  const std::vector<std::pair<Shape, int64_t>> calls = {{{2, 30}, 30}, {{5, 30}, 30}, {{3, 20}, 20}};
  for (const auto& [shape, row_len] : calls) {
    Tensor t = randn_t(shape, rng, DType::F32, 0.5 + rng.uniform());
    tr.add("layers.0.fc2", 0, t, row_len);
    const std::vector<double> v = t.to_vector();
    for (int64_t r = 0; r < t.numel() / row_len; ++r) {
      std::vector<double> row(v.begin() + r * row_len, v.begin() + (r + 1) * row_len);
      all_k.push_back(naive_kurtosis(row));
      all_m.push_back(naive_inf(row));
    }
  }
  // Inf norms only (the source tracks kurtosis over fewer batches than inf norms).
  Tensor extra = randn_t({4, 30}, rng, DType::F32);
  tr.add("layers.0.fc2", 0, extra, 30, /*with_kurtosis=*/false);
  const std::vector<double> ev = extra.to_vector();
  for (int64_t r = 0; r < 4; ++r)
    all_m.push_back(naive_inf(std::vector<double>(ev.begin() + r * 30, ev.begin() + (r + 1) * 30)));

  const SeedATracker::Entry* e = tr.find("layers.0.fc2");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->layer, 0);
  EXPECT_EQ(e->rows, 14);
  EXPECT_EQ(e->kurtosis_rows, 10);
  expect_rel(e->kurtosis_mean, std::accumulate(all_k.begin(), all_k.end(), 0.0) / all_k.size(),
             1e-10, "kurtosis mean");
  expect_rel(e->inf_norm_mean, std::accumulate(all_m.begin(), all_m.end(), 0.0) / all_m.size(),
             1e-12, "inf norm mean");
  EXPECT_DOUBLE_EQ(e->inf_norm_max, *std::max_element(all_m.begin(), all_m.end()));
  EXPECT_EQ(tr.entries().size(), 1u);
  EXPECT_THROW(tr.add("layers.0.fc2", 1, extra, 30), Error);   // layer changed
  EXPECT_THROW(tr.add("layers.0.fc2", 0, extra, 7), Error);    // 120 values, rows of 7
  EXPECT_EQ(tr.find("nope"), nullptr);

  const nlohmann::json j = tr.to_json();
  ASSERT_TRUE(j.contains("layers.0.fc2"));
  for (const char* k : {"layer", "kurtosis", "kurtosis_rows", "inf_norm", "inf_norm_max", "rows"})
    EXPECT_TRUE(j["layers.0.fc2"].contains(k)) << k;
  EXPECT_EQ(j["layers.0.fc2"]["rows"], 14);
  tr.clear();
  EXPECT_TRUE(tr.empty());
}

TEST(MetricsSeedA, SummaryOnHandBuiltSet) {
  // Each tensor: two rows of 4 values whose max |x| are (a, b): row mean-inf = (a+b)/2.
  auto rows = [](double a, double b) {
    return Tensor::from_vector({2, 4}, {a, -0.5, 0.25, 0.0, -b, 0.5, 0.0, 0.1}, DType::F64);
  };
  SeedATracker tr;
  tr.add("l0.fc2", 0, rows(1, 3), 4);         // ffn: mean 2, max 3
  tr.add("l1.fc2", 1, rows(4, 2), 4);         // ffn: mean 3, max 4
  tr.add("l0", 0, rows(10, 30), 4);           // layer: mean 20, max 30
  tr.add("l1", 1, rows(40, 2), 4);            // layer: mean 21, max 40
  tr.add("l0.ln", 0, rows(5, 5), 4);          // ln: 5, 5
  tr.add("final_ln", 1, rows(6, 8), 4);       // ln: 7, 8
  tr.add("l0.ffn_io", 0, rows(50, 52), 4, false);  // ffn_io: 51, 52; no kurtosis
  tr.add("l0.out_proj", 0, rows(2, 2), 4);    // attn_out: 2, 2
  tr.add("misc", 0, rows(1, 1), 4);           // other
  auto kind_of = [](const std::string& n) -> std::string {
    if (n.find("fc2") != std::string::npos) return "ffn";
    if (n.find("ffn_io") != std::string::npos) return "ffn_io";
    if (n.find("ln") != std::string::npos) return "ln";
    if (n.find("out_proj") != std::string::npos) return "attn_out";
    if (n == "misc") return "other";
    return "layer";
  };
  const SeedASummary s = tr.summarize(kind_of);
  EXPECT_DOUBLE_EQ(s.max_inf_norm, 51);
  EXPECT_DOUBLE_EQ(s.max_ffn_inf_norm, 3);
  EXPECT_DOUBLE_EQ(s.max_layer_inf_norm, 21);
  EXPECT_DOUBLE_EQ(s.max_ln_inf_norm, 7);
  EXPECT_DOUBLE_EQ(s.max_ffn_io_inf_norm, 51);
  EXPECT_DOUBLE_EQ(s.max_attn_out_inf_norm, 2);
  EXPECT_DOUBLE_EQ(s.peak_inf_norm, 52);
  EXPECT_DOUBLE_EQ(s.peak_ffn_inf_norm, 4);
  EXPECT_DOUBLE_EQ(s.peak_layer_inf_norm, 40);
  EXPECT_DOUBLE_EQ(s.peak_ln_inf_norm, 8);
  EXPECT_DOUBLE_EQ(s.peak_ffn_io_inf_norm, 52);
  EXPECT_DOUBLE_EQ(s.peak_attn_out_inf_norm, 2);
  EXPECT_EQ(s.names, 9);
  EXPECT_EQ(s.kurtosis_names, 8);
  // Kurtosis aggregates over the 8 names with kurtosis rows.
  double sum = 0, mx = -1, mx_layer = -1;
  for (const auto& e : tr.entries()) {
    if (e.kurtosis_rows == 0) {
      EXPECT_TRUE(std::isnan(e.kurtosis_mean));
      continue;
    }
    sum += e.kurtosis_mean;
    mx = std::max(mx, e.kurtosis_mean);
    if (kind_of(e.name) == "layer") mx_layer = std::max(mx_layer, e.kurtosis_mean);
  }
  EXPECT_DOUBLE_EQ(s.avg_kurtosis, sum / 8);
  EXPECT_DOUBLE_EQ(s.max_kurtosis, mx);
  EXPECT_DOUBLE_EQ(s.max_layer_kurtosis, mx_layer);
  // Row (10, -0.5, 0.25, 0): kurtosis by hand.
  expect_rel(tr.find("l0")->kurtosis_mean,
             (naive_kurtosis({10, -0.5, 0.25, 0}) + naive_kurtosis({-30, 0.5, 0, 0.1})) / 2, 1e-12,
             "l0 kurtosis");

  const nlohmann::json j = to_json(s);
  for (const char* k : {"max_inf_norm", "max_ffn_inf_norm", "max_layer_inf_norm", "max_ln_inf_norm",
                        "max_ffn_io_inf_norm", "max_attn_out_inf_norm", "peak_inf_norm",
                        "avg_kurtosis", "max_kurtosis", "max_layer_kurtosis", "names"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_DOUBLE_EQ(j["max_layer_inf_norm"].get<double>(), 21);

  // A kind with no names is null; an unknown kind is an error.
  SeedATracker only_ffn;
  only_ffn.add("x.fc2", 0, rows(1, 2), 4);
  const SeedASummary s2 = only_ffn.summarize(kind_of);
  EXPECT_TRUE(std::isnan(s2.max_layer_inf_norm));
  EXPECT_TRUE(std::isnan(s2.max_layer_kurtosis));
  EXPECT_TRUE(to_json(s2)["max_layer_inf_norm"].is_null());
  EXPECT_THROW(only_ffn.summarize([](const std::string&) { return std::string("fc"); }), Error);
}

// ---------------------------------------------------------------- seed B

TEST(MetricsSeedB, KurtosisOfNeuronRmsMatchesNaive) {
  Rng rng(4);
  for (DType dt : {DType::F64, DType::F32}) {
    Tensor h = randn_t({3, 7, 16}, rng, dt);
    std::vector<double> v = h.to_vector();
    for (int64_t n = 0; n < 21; ++n) v[n * 16 + 5] = 8.0 + v[n * 16 + 5];  // an outlier feature
    h = Tensor::from_vector({3, 7, 16}, v, dt);
    const KurtosisRms k = kurtosis_of_neuron_rms(h);
    const NaiveKurt nk = naive_neuron_kurtosis(h);
    expect_rel(k.kurtosis, nk.kurt, 1e-10, "kurtosis");
    expect_rel(k.var_form, nk.var, 1e-10, "var form");
    EXPECT_EQ(k.tokens, 21);
    EXPECT_EQ(k.d, 16);
    EXPECT_GT(k.kurtosis, 3.0);
    const auto s2 = neuron_mean_squares(h);
    ASSERT_EQ(s2.size(), 16u);
    EXPECT_NEAR(std::accumulate(s2.begin(), s2.end(), 0.0) / 16, 1.0, 1e-7);
  }
}

TEST(MetricsSeedB, KurtosisOfNeuronRmsExtremes) {
  Rng rng(5);
  const int64_t N = 40, d = 64;
  // Every token a balanced +-1 pattern: centred already, every feature has RMS 1 -> exactly 1.
  std::vector<double> v(N * d);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> row(d);
    for (int64_t j = 0; j < d; ++j) row[j] = j < d / 2 ? 1.0 : -1.0;
    for (int64_t j = d - 1; j > 0; --j) std::swap(row[j], row[rng.below(j + 1)]);
    std::copy(row.begin(), row.end(), v.begin() + n * d);
  }
  const KurtosisRms eq = kurtosis_of_neuron_rms(Tensor::from_vector({N, d}, v, DType::F64));
  EXPECT_NEAR(eq.kurtosis, 1.0, 1e-12);
  EXPECT_NEAR(eq.var_form, 0.0, 1e-12);
  // One feature dominates: tokens +-c e_0. After centring, s^2 is proportional to
  // ((d-1)^2, 1, ..., 1) so kurtosis = ((d-1)^3 + 1) / (d (d-1)) = d - 3 + O(1/d).
  std::fill(v.begin(), v.end(), 0.0);
  for (int64_t n = 0; n < N; ++n) v[n * d] = (n % 3 ? 5.0 : -5.0);
  const KurtosisRms one = kurtosis_of_neuron_rms(Tensor::from_vector({N, d}, v, DType::F32));
  const double dd = static_cast<double>(d);
  EXPECT_NEAR(one.kurtosis, (std::pow(dd - 1, 3) + 1) / (dd * (dd - 1)), 1e-9);
  EXPECT_GT(one.kurtosis, 0.95 * d);
  EXPECT_LE(one.kurtosis, d);
}

TEST(MetricsSeedB, VarFormIdentity) {
  // var_unbiased(s^2) = d/(d-1) * (mean s^4 - m^2) = d/(d-1) * m^2 (Kurt - 1), m = mean s^2 ~ 1.
  Rng rng(6);
  for (double scale : {1.0, 1e-3, 40.0}) {
    const int64_t d = 24;
    Tensor h = randn_t({50, d}, rng, DType::F64, scale);
    std::vector<double> v = h.to_vector();
    for (int64_t n = 0; n < 50; ++n) v[n * d + 3] *= 6;
    h = Tensor::from_vector({50, d}, v, DType::F64);
    const KurtosisRms k = kurtosis_of_neuron_rms(h);
    const double dd = static_cast<double>(d);
    expect_rel(k.var_form, dd / (dd - 1) * k.mean_s2 * k.mean_s2 * (k.kurtosis - 1), 1e-12,
               "exact identity");
    // m = ((r - 1e-8) / r)^2: 1 up to 2e-8 / r, so the m = 1 form holds only for r >> 1e-8
    // (at scale 1e-3 the relative gap is ~2e-5).
    const double r0 = k.rms - kSeedBRmsEps;
    expect_rel(k.mean_s2, r0 * r0 / (k.rms * k.rms), 1e-12, "mean s^2");
    if (scale >= 1)
      expect_rel(k.var_form, dd / (dd - 1) * (k.kurtosis - 1), 1e-6, "identity with m = 1");
  }
}

TEST(MetricsSeedB, SignalPropagationMatchesNaive) {
  Rng rng(7);
  struct Case {
    int64_t B, T, d;
    DType dt;
  };
  for (const Case& c : {Case{3, 6, 10, DType::F64}, Case{1, 20, 7, DType::F32},
                        Case{4, 3, 33, DType::F64}}) {
    Tensor h = randn_t({c.B, c.T, c.d}, rng, c.dt);
    std::vector<double> v = h.to_vector();
    for (int64_t n = 0; n < c.B * c.T; ++n) {
      v[n * c.d + 1] += 4.0;                          // feature with a large mean
      v[n * c.d + 2] = 0.5 * v[n * c.d + 0] + 0.1 * v[n * c.d + 2];  // correlated features
    }
    h = Tensor::from_vector({c.B, c.T, c.d}, v, c.dt);
    const SignalProp s = signal_propagation(h, c.B, c.T);
    const SignalProp n = naive_signal(h, c.B, c.T);
    const std::string tag = "B" + std::to_string(c.B) + " T" + std::to_string(c.T);
    expect_rel(s.feat_corr_rms, n.feat_corr_rms, 1e-10, tag + " feat_corr_rms");
    expect_rel(s.feat_cos_rms, n.feat_cos_rms, 1e-10, tag + " feat_cos_rms");
    expect_rel(s.token_corr_mean, n.token_corr_mean, 1e-10, tag + " token_corr_mean");
    expect_rel(s.token_corr_rms, n.token_corr_rms, 1e-10, tag + " token_corr_rms");
    expect_rel(s.token_cos_mean, n.token_cos_mean, 1e-10, tag + " token_cos_mean");
    expect_rel(s.token_cos_rms, n.token_cos_rms, 1e-10, tag + " token_cos_rms");
    // The bundle gives the same numbers.
    const HiddenStateMetrics m = hidden_state_metrics(h, c.B, c.T);
    EXPECT_DOUBLE_EQ(m.signal.token_corr_rms, s.token_corr_rms);
    EXPECT_DOUBLE_EQ(m.kurt.kurtosis, kurtosis_of_neuron_rms(h).kurtosis);
    EXPECT_DOUBLE_EQ(m.max_median_ratio, max_median_ratio(h));
  }
  EXPECT_THROW(signal_propagation(randn_t({2, 3, 4}, rng), 2, 4), Error);
}

TEST(MetricsSeedB, TokenCorrelationIdenticalAndRandom) {
  Rng rng(8);
  const int64_t B = 2, T = 8, d = 32;
  Tensor one = randn_t({d}, rng);
  std::vector<double> v;
  for (int64_t n = 0; n < B * T; ++n) {
    const auto o = one.to_vector();
    v.insert(v.end(), o.begin(), o.end());
  }
  const SignalProp same = signal_propagation(Tensor::from_vector({B, T, d}, v, DType::F64), B, T);
  EXPECT_NEAR(same.token_corr_mean, 1.0, 1e-6);
  EXPECT_NEAR(same.token_corr_rms, 1.0, 1e-6);
  EXPECT_NEAR(same.token_cos_mean, 1.0, 1e-12);
  EXPECT_NEAR(same.token_cos_rms, 1.0, 1e-12);

  const int64_t D = 1024;
  const SignalProp rnd = signal_propagation(randn_t({B, T, D}, rng), B, T);
  EXPECT_NEAR(rnd.token_corr_mean, 0.0, 0.02);
  EXPECT_NEAR(rnd.token_cos_mean, 0.0, 0.02);
  EXPECT_LT(rnd.token_corr_rms, 0.06);  // ~ 1/sqrt(D) = 0.031
  EXPECT_LT(rnd.token_cos_rms, 0.06);
  EXPECT_GT(rnd.token_cos_rms, 0.015);
}

TEST(MetricsSeedB, MaxMedianRatio) {
  // Constant row: 1 without centring (centring makes it 0/0).
  Tensor c = Tensor::from_vector({2, 5}, std::vector<double>(10, 3.0), DType::F32);
  EXPECT_DOUBLE_EQ(max_median_ratio(c, /*centre=*/false), 1.0);
  EXPECT_TRUE(std::isnan(max_median_ratio(c)));
  // +-c pattern with mean 0: 1 with centring too.
  Tensor pm = Tensor::from_vector({1, 6}, {2, -2, 2, -2, 2, -2}, DType::F64);
  EXPECT_DOUBLE_EQ(max_median_ratio(pm), 1.0);
  // Random tensors, even and odd d (lower median for even d).
  Rng rng(9);
  for (int64_t d : {9, 10}) {
    Tensor h = randn_t({4, 3, d}, rng, DType::F32);
    expect_rel(max_median_ratio(h), naive_max_median(h, true), 1e-12, "centred");
    expect_rel(max_median_ratio(h, false), naive_max_median(h, false), 1e-12, "raw");
  }
  // Even d: lower median. Row |x| = (1, 2, 3, 8) -> 8 / 2.
  EXPECT_DOUBLE_EQ(max_median_ratio(Tensor::from_vector({1, 4}, {1, -2, 3, -8}), false), 4.0);
}

// The backend op behind the seed-B metrics: each part alone gives the values it gives among all
// parts, the parts not asked for stay empty, and bad inputs are refused.
TEST(MetricsSeedB, HiddenStateSumsPartsAndInputs) {
  using Sums = ops::HiddenStateSums;
  Rng rng(29);
  const Tensor h = randn_t({3, 11, 7}, rng, DType::F32);
  ops::Backend& be = ops::cpu_backend();
  const Sums all = be.hidden_state_sums(
      h, 3, 11, Sums::kColumns | Sums::kFeatureGram | Sums::kTokenCos | Sums::kMaxMedian, true);
  EXPECT_EQ(all.N, 33);
  EXPECT_EQ(all.d, 7);
  const Sums none = be.hidden_state_sums(h, 3, 11, 0, true);
  EXPECT_EQ(none.row_sq, all.row_sq);
  EXPECT_EQ(none.row_sq2, all.row_sq2);
  EXPECT_TRUE(none.col_sum.empty() && none.col_sq.empty());
  EXPECT_EQ(none.f_off + none.f_diag + none.cos_off + none.cos_sum + none.cos_sq + none.ratio_sum,
            0.0);
  const Sums gram = be.hidden_state_sums(h, 3, 11, Sums::kFeatureGram, true);
  EXPECT_EQ(gram.col_sum, all.col_sum);  // the Gram needs the column means
  EXPECT_EQ(gram.f_off, all.f_off);
  EXPECT_EQ(gram.cos_off, all.cos_off);
  EXPECT_EQ(be.hidden_state_sums(h, 3, 11, Sums::kTokenCos, true).cos_sum, all.cos_sum);
  EXPECT_EQ(be.hidden_state_sums(h, 3, 11, Sums::kMaxMedian, true).ratio_sum, all.ratio_sum);
  // Without centring the sums are those of the raw tokens.
  const std::vector<double> v = h.to_vector();
  double sq = 0;
  for (double x : v) sq += x * x;
  EXPECT_NEAR(be.hidden_state_sums(h, 33, 1, 0, false).row_sq, sq, 1e-12 * sq);
  // Bad inputs.
  EXPECT_THROW(be.hidden_state_sums(h, 3, 10, 0, true), Error);  // 30 != 33 tokens
  EXPECT_THROW(be.hidden_state_sums(Tensor::zeros({4, 3}, DType::I32), 4, 1, 0, true), Error);
  EXPECT_THROW(be.hidden_state_sums(Tensor(), 1, 1, 0, true), Error);
  EXPECT_THROW(be.hidden_state_sums(h, 3, 11, 16, true), Error);  // unknown part
  EXPECT_THROW(max_median_ratio(Tensor::zeros({4, 3}, DType::I32)), Error);
}

TEST(MetricsSeedB, AttentionEntropy) {
  // Uniform causal pattern: row i has 1/(i+1) on keys 0..i -> entropy log(i+1).
  const int64_t B = 2, H = 3, T = 9;
  std::vector<double> v(B * H * T * T, 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j <= i; ++j) v[(bh * T + i) * T + j] = 1.0 / (i + 1);
  Tensor u = Tensor::from_vector({B, H, T, T}, v, DType::F32);
  double want = 0;
  for (int64_t i = 0; i < T; ++i) want += std::log(i + 1.0) / T;
  EXPECT_NEAR(attention_entropy(u, true), want, 1e-6);
  EXPECT_NEAR(attention_entropy(u, false), want, 1e-6);  // masked entries are 0
  for (double e : attention_entropy_per_head(u, true)) EXPECT_NEAR(e, want, 1e-6);

  Rng rng(10);
  for (bool causal : {true, false}) {
    Tensor p = random_probs(2, 4, 7, causal, rng);
    const auto per = attention_entropy_per_head(p, causal);
    const auto ref = naive_entropy_per_head(p, causal);
    ASSERT_EQ(per.size(), 4u);
    for (size_t h = 0; h < 4; ++h) expect_rel(per[h], ref[h], 1e-12, "head " + std::to_string(h));
    expect_rel(attention_entropy(p, causal),
               std::accumulate(ref.begin(), ref.end(), 0.0) / ref.size(), 1e-12, "mean");
  }
  // causal ignores anything above the diagonal.
  std::vector<double> w = v;
  w[1] = 0.5;  // (b0, h0, i0, j1)
  EXPECT_NEAR(attention_entropy(Tensor::from_vector({B, H, T, T}, w), true), want, 1e-6);
  EXPECT_THROW(attention_entropy(Tensor::zeros({2, 3, 4}, DType::F32), false), Error);
  EXPECT_THROW(attention_entropy(Tensor::zeros({1, 1, 3, 4}, DType::F32), true), Error);
}

// AttentionSpec::entropy_rows: the op's per-row entropies add up, in the same order, to the
// metric taken from the probabilities it saves (causal and padding-masked, softmax and clipped
// softmax, whose entropy is that of the softmax before the clip).
TEST(MetricsSeedB, AttentionEntropyRowsFromTheOp) {
  Rng rng(11);
  const int64_t B = 2, T = 7, H = 3, D = 4, C = H * D;
  const Tensor qkv = randn_t({B * T, 3 * C}, rng, DType::F64, 1.3);
  const Tensor mask = Tensor::from_vector({B * T}, {1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0},
                                          DType::I32);
  for (bool causal : {true, false}) {
    for (ops::ProbFn prob : {ops::ProbFn::Softmax, ops::ProbFn::Clipped}) {
      ops::AttentionSpec spec;
      spec.n_head = static_cast<int>(H);
      spec.causal = causal;
      spec.prob = prob;
      spec.gamma = prob == ops::ProbFn::Clipped ? -0.05 : 0.0;
      std::vector<double> rows(static_cast<size_t>(B * H * T), -1.0);
      spec.entropy_rows = rows.data();
      Tensor out = Tensor::empty({B * T, C}, DType::F64), saved;
      ops::cpu_backend().attention_fwd(out, saved, qkv, causal ? Tensor() : mask, B, T, spec);
      EXPECT_EQ(attention_entropy_from_rows(rows, T), attention_entropy(saved, causal));
      const std::vector<double> p = saved.to_vector();
      for (int64_t r = 0; r < B * H * T; r += 5) {
        double e = 0;
        for (int64_t j = 0; j < T; ++j)
          if (p[r * T + j] > 0) e -= p[r * T + j] * std::log(p[r * T + j]);
        EXPECT_NEAR(rows[r], e, 1e-14) << "row " << r;
      }
    }
  }
  EXPECT_THROW(attention_entropy_from_rows(std::vector<double>(10, 0.0), 3), Error);
}

// Host copies of bf16 activations are read in place: the same metrics as their f32 values.
TEST(MetricsSeedB, Bf16HostTensorsMatchTheirF32Values) {
  Rng rng(13);
  const Tensor b = randn_t({2, 6, 16}, rng, DType::F32, 2.0).cast(DType::BF16);
  const Tensor f = b.cast(DType::F32);
  const HiddenStateMetrics mb = hidden_state_metrics(b, 2, 6), mf = hidden_state_metrics(f, 2, 6);
  EXPECT_EQ(mb.kurt.kurtosis, mf.kurt.kurtosis);
  EXPECT_EQ(mb.signal.feat_corr_rms, mf.signal.feat_corr_rms);
  EXPECT_EQ(mb.signal.token_cos_rms, mf.signal.token_cos_rms);
  EXPECT_EQ(mb.max_median_ratio, mf.max_median_ratio);
  EXPECT_EQ(inf_norm(b), inf_norm(f));
  std::vector<double> p(2 * 3 * 4 * 4, 0.0);
  for (size_t i = 0; i < p.size(); ++i) p[i] = 0.25 + 0.01 * double(i % 7);
  const Tensor pb = Tensor::from_vector({2, 3, 4, 4}, p, DType::BF16);
  EXPECT_EQ(attention_entropy(pb, false), attention_entropy(pb.cast(DType::F32), false));
}

TEST(MetricsJson, StableKeys) {
  Rng rng(11);
  Tensor h = randn_t({2, 4, 8}, rng);
  nlohmann::json j;
  put_json(j, "hidden_states.0.", hidden_state_metrics(h, 2, 4));
  put_attention_entropy(j, "attn.0.", 1.5, {1.0, 2.0});
  const std::set<std::string> want = {
      "hidden_states.0.kurtosis",        "hidden_states.0.kurtosis_var",
      "hidden_states.0.x_rms",           "hidden_states.0.feat_corr_rms",
      "hidden_states.0.feat_cos_rms",    "hidden_states.0.token_corr_mean",
      "hidden_states.0.token_corr_rms",  "hidden_states.0.token_cos_mean",
      "hidden_states.0.token_cos_rms",   "hidden_states.0.max_median_ratio",
      "attn.0.entropy",                  "attn.0.entropy_head.0",
      "attn.0.entropy_head.1"};
  std::set<std::string> got;
  for (auto it = j.begin(); it != j.end(); ++it) got.insert(it.key());
  EXPECT_EQ(got, want);
  nlohmann::json n;
  put_attention_entropy(n, "", std::nan(""));
  EXPECT_TRUE(n["entropy"].is_null());
}
