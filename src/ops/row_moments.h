// Per-row outlier statistics in f64, shared by the CPU backend's ops (row_moments, the
// attention's entropy_rows) and the host metrics of src/analysis (one formula, one summation
// order): the Pearson kurtosis of a row, mean((x - mean)^4) / (var_unbiased^2 + eps), in two
// passes; its inf norm max |x|; and the entropy -sum p log p of a row of probabilities. A NaN
// makes the inf norm and the entropy NaN (a diverged run must not look clean).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace oft::ops {

// n >= 2 (callers check).
template <class T>
double row_kurtosis_f64(const T* x, int64_t n, double eps) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]);
  const double mean = s / static_cast<double>(n);
  double s2 = 0, s4 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double dv = static_cast<double>(x[i]) - mean;
    const double d2 = dv * dv;
    s2 += d2;
    s4 += d2 * d2;
  }
  const double var = s2 / static_cast<double>(n - 1);
  return (s4 / static_cast<double>(n)) / (var * var + eps);
}

// n >= 1 (callers check).
template <class T>
double row_inf_norm_f64(const T* x, int64_t n) {
  double m = 0;
  bool has_nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::fabs(static_cast<double>(x[i]));
    if (a > m) m = a;
    else if (std::isnan(a)) has_nan = true;
  }
  return has_nan ? std::numeric_limits<double>::quiet_NaN() : m;
}

// 0 log 0 = 0; values in key order.
template <class T>
double row_entropy_f64(const T* p, int64_t n) {
  double e = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double v = static_cast<double>(p[j]);
    if (v > 0) e -= v * std::log(v);
    else if (std::isnan(v)) e = std::numeric_limits<double>::quiet_NaN();
  }
  return e;
}

}  // namespace oft::ops
