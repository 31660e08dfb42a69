// Range estimators (current / running min-max, percentile, MSE grid search); the formulas and the
// choices made are in range_estimators.h.
#include "quant/range_estimators.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "quant/quantizer.h"

namespace oft::quant {

namespace {

void check_input(const Tensor& x, const std::string& who) {
  OFT_CHECK(x.defined() && x.device() == Device::CPU &&
                (x.dtype() == DType::F32 || x.dtype() == DType::F64),
            "range estimator ", who, ": needs a CPU f32/f64 tensor");
  OFT_CHECK(x.numel() > 0, "range estimator ", who, ": cannot observe an empty tensor");
}

std::vector<double> values_of(const Tensor& x) {
  std::vector<double> v(static_cast<size_t>(x.numel()));
  if (x.dtype() == DType::F32) {
    const float* p = x.data<float>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = p[i];
  } else {
    const double* p = x.data<double>();
    std::copy(p, p + v.size(), v.begin());
  }
  for (double e : v)
    OFT_CHECK(!std::isnan(e), "range estimator: NaN in a tensor whose range is being estimated");
  return v;
}

// torch.lerp / numpy _lerp: exact at both ends.
double lerp(double a, double b, double t) {
  return t < 0.5 ? a + t * (b - a) : b - (b - a) * (1.0 - t);
}

template <class T>
double sse(const T* p, int64_t n, const QGrid& g) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = p[i];
    const double e = x - quantize_dequantize(x, g);
    s += e * e;
  }
  return s;
}

double sse_of(const Tensor& x, const QGrid& g) {
  return x.dtype() == DType::F32 ? sse(x.data<float>(), x.numel(), g)
                                 : sse(x.data<double>(), x.numel(), g);
}

}  // namespace

void RangeEstimator::require_data() const {
  OFT_CHECK(batches_ > 0, "range estimator ", name(),
            ": no data observed yet (calibrate on at least one batch before reading the range)");
}

// ---- current / running min-max ----

void CurrentMinMax::observe(const Tensor& x) {
  check_input(x, name());
  lo_ = min_max(x, &hi_);
  ++batches_;
}

std::pair<double, double> CurrentMinMax::range() const {
  require_data();
  return {lo_, hi_};
}

RunningMinMax::RunningMinMax(double momentum) : momentum_(momentum) {
  OFT_CHECK(momentum >= 0.0 && momentum <= 1.0,
            "range estimator running_minmax: momentum must be in [0, 1] (got ", momentum, ")");
}

void RunningMinMax::update(double blo, double bhi) {
  if (batches_ == 0) {
    lo_ = blo;
    hi_ = bhi;
  } else {
    lo_ = (1.0 - momentum_) * blo + momentum_ * lo_;
    hi_ = (1.0 - momentum_) * bhi + momentum_ * hi_;
  }
  ++batches_;
}

void RunningMinMax::observe(const Tensor& x) {
  check_input(x, name());
  double hi = 0;
  const double lo = min_max(x, &hi);
  update(lo, hi);
}

std::pair<double, double> RunningMinMax::range() const {
  require_data();
  return {lo_, hi_};
}

// ---- percentile ----

double quantile_linear(std::vector<double>& v, double q) {
  OFT_CHECK(!v.empty(), "quantile of an empty set");
  OFT_CHECK(q >= 0.0 && q <= 1.0, "quantile q must be in [0, 1] (got ", q, ")");
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const double t = pos - static_cast<double>(lo);
  std::nth_element(v.begin(), v.begin() + lo, v.end());
  const double a = v[lo];
  if (lo + 1 >= v.size()) return a;
  // After nth_element everything past lo is >= v[lo]: the next order statistic is their minimum.
  const double b = *std::min_element(v.begin() + lo + 1, v.end());
  return lerp(a, b, t);
}

Percentile::Percentile(double p, double momentum) : RunningMinMax(momentum), p_(p) {
  OFT_CHECK(p >= 50.0 && p <= 100.0,
            "range estimator percentile: p must be in [50, 100] (got ", p,
            "); p = 99.999 uses the 0.001-th and 99.999-th percentiles");
}

void Percentile::observe(const Tensor& x) {
  check_input(x, name());
  std::vector<double> v = values_of(x);
  const double lo = quantile_linear(v, (100.0 - p_) / 100.0);
  const double hi = quantile_linear(v, p_ / 100.0);
  update(lo, hi);
}

// ---- MSE grid search ----

MseEstimator::MseEstimator(int bits, bool symmetric, int num_candidates, double range_margin)
    : bits_(bits), symmetric_(symmetric), num_candidates_(num_candidates),
      range_margin_(range_margin) {
  OFT_CHECK(bits >= 1 && bits <= 32, "range estimator mse: bits must be in [1, 32] (got ", bits,
            ")");
  OFT_CHECK(num_candidates >= 1, "range estimator mse: num_candidates must be >= 1");
  OFT_CHECK(range_margin >= 0.0, "range estimator mse: range_margin must be >= 0");
  max_int_skew_ = std::max<int>(1, static_cast<int>(std::ldexp(1.0, bits) / 4));
}

void MseEstimator::reset() {
  RangeEstimator::reset();
  loss_.clear();
  one_sided_ = false;
  lo_ = hi_ = best_loss_ = 0;
}

void MseEstimator::observe(const Tensor& x) {
  check_input(x, name());
  const int nc = num_candidates_;
  const bool one_d = [&] {
    if (!loss_.empty()) return one_sided_ || symmetric_;
    double dmax = 0;
    const double dmin = min_max(x, &dmax);
    one_sided_ = dmin >= 0.0;
    if (one_sided_ || symmetric_) {
      max_pos_ = std::max(std::fabs(dmin), dmax) + range_margin_;
      max_neg_ = -max_pos_;
      search_range_ = max_pos_;
      loss_.assign(static_cast<size_t>(nc) + 1, 0.0);
    } else {
      max_pos_ = dmax + range_margin_;
      max_neg_ = dmin - range_margin_;
      search_range_ = std::max(std::fabs(max_pos_), std::fabs(max_neg_));
      loss_.assign((static_cast<size_t>(nc) + 1) * max_int_skew_ * 2, 0.0);
    }
    return one_sided_ || symmetric_;
  }();
  const double step = search_range_ / nc;
  const double levels = std::ldexp(1.0, bits_) - 1.0;
  const int per_k = one_d ? 1 : max_int_skew_ * 2;

  // Candidate with flat index c (k = c / per_k) -> its range.
  auto cand_range = [&](int64_t c) -> std::pair<double, double> {
    const int64_t k = c / per_k;
    if (one_d) return {one_sided_ ? 0.0 : -step * k, step * k};
    const int64_t rest = c % per_k, s = rest / 2, r = rest % 2;
    const double d = 2.0 * step * k / levels;
    const double skew = (r ? -1.0 : 1.0) * s * d;
    return {std::max(-step * k + skew, max_neg_), std::min(step * k + skew, max_pos_)};
  };

  const int64_t total = static_cast<int64_t>(loss_.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t c = per_k; c < total; ++c) {
    const auto [lo, hi] = cand_range(c);
    loss_[c] += sse_of(x, make_grid(lo, hi, bits_, symmetric_));
  }
  int64_t best = -1;
  double best_loss = std::numeric_limits<double>::infinity();
  for (int64_t c = per_k; c < total; ++c)
    if (loss_[c] < best_loss) {
      best_loss = loss_[c];
      best = c;
    }
  OFT_CHECK(best >= 0, "range estimator mse: every candidate range gave a non-finite error");
  std::tie(lo_, hi_) = cand_range(best);
  best_loss_ = best_loss;
  ++batches_;
}

std::pair<double, double> MseEstimator::range() const {
  require_data();
  return {lo_, hi_};
}

// ---- factory ----

std::unique_ptr<RangeEstimator> make_estimator(const std::string& name, int bits, bool symmetric,
                                               double percentile) {
  std::string n = name;
  for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (n == "current_minmax") return std::make_unique<CurrentMinMax>();
  if (n == "running_minmax") return std::make_unique<RunningMinMax>();
  if (n == "percentile") return std::make_unique<Percentile>(percentile);
  if (n == "mse") return std::make_unique<MseEstimator>(bits, symmetric);
  fail("unknown range estimator '", name,
       "': valid names are current_minmax, running_minmax, percentile, mse");
}

}  // namespace oft::quant
