// Finite-difference gradient checking in f64 for the CPU backend: central differences
// (L(x+h) - L(x-h)) / 2h with h = 1e-6 compared against analytic gradients.
// Tolerance: |a - n| <= atol + rtol * max(|a|, |n|), with atol = 1e-7, rtol = 1e-5 by default
// (f64 round-off of a central difference at h = 1e-6 is ~1e-10 / h = 1e-10 relative to L).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/rng.h"
#include "core/tensor.h"

namespace oft::testing {

inline Tensor randn(const Shape& s, Rng& rng, double std = 1.0) {
  std::vector<double> v(static_cast<size_t>(shape_numel(s)));
  for (auto& x : v) x = rng.normal() * std;
  return Tensor::from_vector(s, v, DType::F64);
}

// Checks up to `max_entries` entries of `x` (evenly spread) against `analytic`.
inline void expect_grad(const std::string& what, Tensor x, const Tensor& analytic,
                        const std::function<double()>& loss, int64_t max_entries = 64,
                        double rtol = 1e-5, double atol = 1e-7) {
  ASSERT_EQ(x.numel(), analytic.numel()) << what;
  const double h = 1e-6;
  double* px = x.data<double>();
  const std::vector<double> a = analytic.to_vector();
  const int64_t n = x.numel();
  const int64_t stride = std::max<int64_t>(1, n / max_entries);
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 5; i += stride) {
    const double orig = px[i];
    px[i] = orig + h;
    const double lp = loss();
    px[i] = orig - h;
    const double lm = loss();
    px[i] = orig;
    const double num = (lp - lm) / (2 * h);
    const double tol = atol + rtol * std::max(std::fabs(num), std::fabs(a[i]));
    if (std::fabs(num - a[i]) > tol) {
      ++failures;
      ADD_FAILURE() << what << "[" << i << "]: analytic " << a[i] << " numeric " << num;
    }
  }
}

// sum(out * R): a scalar loss with a random upstream gradient R.
inline double dot(const Tensor& a, const Tensor& b) {
  const double *pa = a.data<double>(), *pb = b.data<double>();
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += pa[i] * pb[i];
  return s;
}

}  // namespace oft::testing
