// Range estimators: turn observed calibration batches into a quantization range [x_min, x_max],
// as the source system's quantization/range_estimators.py does (REFERENCE.md §5). Per-tensor.
//
//   current_minmax   range of the last batch: (min x, max x).
//   running_minmax   first batch initialises; then  min <- m * min + (1 - m) * batch_min  (same for
//                    max), m = 0.9 (the source's RunningMinMaxEstimator; the default for activations).
//   percentile       like running_minmax, but each batch contributes its (100 - p)-th and p-th
//                    percentiles instead of its min and max (the source's RunningMinMaxEstimator
//                    with `percentile`, which calls np.percentile: linear interpolation between
//                    the two nearest order statistics, identical to torch.quantile's default).
//                    Exact: nth_element on a copy, no histogram. p = 99.999 by default.
//                    (The source's CurrentMinMaxEstimator with a percentile passes
//                    (p, 100 - p) to np.percentile, i.e. swaps min and max; not reproduced.)
//   mse              the source's MSE_Estimator with its default grid search (num_candidates 100,
//                    range_margin 0.5). On the first batch it fixes:
//                      one_sided = (min x >= 0)
//                      symmetric quantizer or one-sided data (1-D search):
//                        T = max(|min x|, max x) + 0.5, step = T / 100,
//                        candidate k = 1..100: range [-k*step, k*step] ([0, k*step] if one-sided)
//                      asymmetric quantizer, two-sided data (2-D search):
//                        P = max x + 0.5, N = min x - 0.5, step = max(|P|, |N|) / 100,
//                        candidate (k, s, r), k = 1..100, s = 0..2^b/4 - 1, r = 0/1:
//                          d = 2*k*step / (2^b - 1), skew = (-1)^r * s * d,
//                          range [max(-k*step + skew, N), min(k*step + skew, P)]
//                    Each batch ADDS every candidate's summed squared quantization error
//                    sum (x - q(x))^2 (quantizer of the estimator's own kind and bit width) to a
//                    running total (no momentum, search range fixed by the first batch, as in the
//                    source); range() is the candidate with the smallest total (first one on a
//                    tie, like np.argmin). Cost per batch: (#candidates) passes over the batch,
//                    100 for the 1-D search, 100 * 2^b / 2 for the 2-D one (12800 at 8 bits), run
//                    in parallel over candidates (deterministic: one candidate per thread).
//                    2^b/4 is raised to 1 for b = 1.
//
// observe() takes a contiguous CPU f32/f64 tensor of any shape; range() throws oft::Error before
// the first observe(); reset() forgets everything (the MSE estimator also forgets one_sided, which
// the source keeps across reset()).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace oft::quant {

class RangeEstimator {
 public:
  virtual ~RangeEstimator() = default;
  virtual void observe(const Tensor& x) = 0;
  // (x_min, x_max) so far; throws oft::Error if nothing has been observed.
  virtual std::pair<double, double> range() const = 0;
  virtual void reset() { batches_ = 0; }
  virtual std::string name() const = 0;
  // True when observe() uses only the batch's min and max, so a caller may pass those two
  // values instead of the tensor (a GPU activation's backend computes them in place).
  virtual bool min_max_only() const { return false; }
  int64_t num_batches() const { return batches_; }

 protected:
  void require_data() const;
  int64_t batches_ = 0;
};

class CurrentMinMax : public RangeEstimator {
 public:
  void observe(const Tensor& x) override;
  std::pair<double, double> range() const override;
  std::string name() const override { return "current_minmax"; }
  bool min_max_only() const override { return true; }

 private:
  double lo_ = 0, hi_ = 0;
};

class RunningMinMax : public RangeEstimator {
 public:
  explicit RunningMinMax(double momentum = 0.9);
  void observe(const Tensor& x) override;
  std::pair<double, double> range() const override;
  std::string name() const override { return "running_minmax"; }
  bool min_max_only() const override { return true; }
  double momentum() const { return momentum_; }

 protected:
  void update(double batch_lo, double batch_hi);
  double momentum_;
  double lo_ = 0, hi_ = 0;
};

class Percentile : public RunningMinMax {
 public:
  explicit Percentile(double p = 99.999, double momentum = 0.9);
  void observe(const Tensor& x) override;
  std::string name() const override { return "percentile"; }
  bool min_max_only() const override { return false; }  // (each batch's percentiles)
  double p() const { return p_; }

 private:
  double p_;
};

class MseEstimator : public RangeEstimator {
 public:
  MseEstimator(int bits, bool symmetric, int num_candidates = 100, double range_margin = 0.5);
  void observe(const Tensor& x) override;
  std::pair<double, double> range() const override;
  void reset() override;
  std::string name() const override { return "mse"; }
  bool one_sided() const { return one_sided_; }
  // Summed squared error of the best candidate over all batches observed.
  double best_loss() const { return best_loss_; }

 private:
  int bits_;
  bool symmetric_;
  int num_candidates_;
  double range_margin_;
  int max_int_skew_;
  bool one_sided_ = false;
  double max_pos_ = 0, max_neg_ = 0, search_range_ = 0;
  std::vector<double> loss_;  // 1-D: [k]; 2-D: [k][s][r]; k = 0 is +inf (excluded)
  double lo_ = 0, hi_ = 0, best_loss_ = 0;
};

// Quantile q in [0, 1] of `values` with linear interpolation (numpy "linear", torch.quantile's
// default): position q * (n - 1) between the two nearest order statistics. Reorders `values`.
double quantile_linear(std::vector<double>& values, double q);

// Names: current_minmax | running_minmax | percentile | mse (case-insensitive; "MSE" is the
// source's spelling). `bits`/`symmetric` describe the quantizer (used by mse), `percentile` is p
// (used by percentile, in (50, 100]).
std::unique_ptr<RangeEstimator> make_estimator(const std::string& name, int bits, bool symmetric,
                                               double percentile = 99.999);

}  // namespace oft::quant
