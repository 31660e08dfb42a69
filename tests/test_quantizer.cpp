// Simulated quantization: grids (asymmetric / signed and unsigned symmetric, edge ranges) against
// hand-computed values, the straight-through gradient, per-channel grids, the range estimators
// (current / running min-max, percentile vs torch.quantile's linear interpolation, MSE search),
// the backends' fake_quant and value_range ops against them, and the AIMET-layout encodings
// export.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "ops/ops.h"
#include "quant/encodings.h"
#include "quant/quantizer.h"
#include "quant/range_estimators.h"

using namespace oft;
using namespace oft::quant;

namespace {

Tensor vec(const std::vector<double>& v, DType t = DType::F64) {
  return Tensor::from_vector({static_cast<int64_t>(v.size())}, v, t);
}

std::vector<double> linspace(double a, double b, int n) {
  std::vector<double> v(n);
  for (int i = 0; i < n; ++i) v[i] = a + (b - a) * i / (n - 1);
  return v;
}

}  // namespace

TEST(Quant, Asymmetric8BitHandValues) {
  // Range [-1, 3]: delta = 4/255, zp = round(63.75) = 64, grid [0, 255].
  const QGrid g = asymmetric_grid(-1.0, 3.0, 8);
  const double d = 4.0 / 255.0;
  EXPECT_FALSE(g.symmetric);
  EXPECT_FALSE(g.is_signed);
  EXPECT_DOUBLE_EQ(g.delta, d);
  EXPECT_EQ(g.zero_point, 64.0);
  EXPECT_EQ(g.qmin, 0.0);
  EXPECT_EQ(g.qmax, 255.0);
  EXPECT_DOUBLE_EQ(g.x_min(), -64 * d);
  EXPECT_DOUBLE_EQ(g.x_max(), 191 * d);

  EXPECT_EQ(quantize_dequantize(0.0, g), 0.0);        // zero is exact
  EXPECT_DOUBLE_EQ(quantize_dequantize(1.0, g), 64 * d);   // 63.75 -> 64
  EXPECT_DOUBLE_EQ(quantize_dequantize(0.5, g), 32 * d);   // 31.875 -> 32
  EXPECT_DOUBLE_EQ(quantize_dequantize(-0.3, g), -19 * d);  // -19.125 -> -19
  EXPECT_DOUBLE_EQ(quantize_dequantize(-1.0, g), -64 * d);  // q = 0: on the grid edge
  EXPECT_DOUBLE_EQ(quantize_dequantize(-2.0, g), -64 * d);  // clamped low
  EXPECT_DOUBLE_EQ(quantize_dequantize(3.0, g), 191 * d);   // q = 255
  EXPECT_DOUBLE_EQ(quantize_dequantize(5.0, g), 191 * d);   // clamped high
  EXPECT_EQ(quantize_to_int(-2.0, g), 0.0);
  EXPECT_EQ(quantize_to_int(5.0, g), 255.0);
  EXPECT_EQ(quantize_to_int(1.0, g), 128.0);
}

TEST(Quant, RoundsHalfToEvenLikeTorch) {
  // delta = 0.25 exactly: x / delta lands on exact ties.
  const QGrid g = asymmetric_grid(0.0, 63.75, 8);
  EXPECT_EQ(g.delta, 0.25);
  EXPECT_EQ(g.zero_point, 0.0);
  EXPECT_EQ(quantize_dequantize(0.125, g), 0.0);   // 0.5 -> 0
  EXPECT_EQ(quantize_dequantize(0.375, g), 0.5);   // 1.5 -> 2
  EXPECT_EQ(quantize_dequantize(0.625, g), 0.5);   // 2.5 -> 2
  EXPECT_EQ(quantize_dequantize(0.875, g), 1.0);   // 3.5 -> 4
  EXPECT_EQ(round_half_even(-2.5), -2.0);
  // Zero point ties too: -x_min/delta = 0.5 * 2k+1 rounds to even.
  const QGrid h = asymmetric_grid(-0.625, 63.125, 8);  // delta 0.25, -x_min/delta = 2.5
  EXPECT_EQ(h.delta, 0.25);
  EXPECT_EQ(h.zero_point, 2.0);
}

TEST(Quant, SignedSymmetric8And4Bit) {
  // 8 bit, range [-2, 1]: signed, delta = 2/127, grid [-128, 127], zp 0.
  const QGrid g = symmetric_grid(-2.0, 1.0, 8);
  const double d = 2.0 / 127.0;
  EXPECT_TRUE(g.symmetric);
  EXPECT_TRUE(g.is_signed);
  EXPECT_DOUBLE_EQ(g.delta, d);
  EXPECT_EQ(g.zero_point, 0.0);
  EXPECT_EQ(g.qmin, -128.0);
  EXPECT_EQ(g.qmax, 127.0);
  EXPECT_DOUBLE_EQ(quantize_dequantize(-2.0, g), -127 * d);
  EXPECT_DOUBLE_EQ(quantize_dequantize(-2.02, g), -128 * d);  // -128.27 -> -128: still inside
  EXPECT_TRUE(inside_grid(-2.02, g));
  EXPECT_DOUBLE_EQ(quantize_dequantize(-3.0, g), -128 * d);   // clamped
  EXPECT_FALSE(inside_grid(-3.0, g));
  EXPECT_DOUBLE_EQ(quantize_dequantize(0.5, g), 32 * d);      // 31.75 -> 32
  EXPECT_DOUBLE_EQ(quantize_dequantize(2.5, g), 127 * d);     // clamped at 2.0
  EXPECT_FALSE(inside_grid(2.5, g));
  // The scale uses max(|x_min|, x_max): a larger positive side wins.
  EXPECT_DOUBLE_EQ(symmetric_grid(-1.0, 3.0, 8).delta, 3.0 / 127.0);

  // 4 bit, range [-1, 0.5]: delta = 1/7, grid [-8, 7].
  const QGrid h = symmetric_grid(-1.0, 0.5, 4);
  EXPECT_DOUBLE_EQ(h.delta, 1.0 / 7.0);
  EXPECT_EQ(h.qmin, -8.0);
  EXPECT_EQ(h.qmax, 7.0);
  EXPECT_DOUBLE_EQ(quantize_dequantize(-1.1, h), -8.0 / 7.0);  // -7.7 -> -8, inside
  EXPECT_TRUE(inside_grid(-1.1, h));
  EXPECT_DOUBLE_EQ(quantize_dequantize(-1.3, h), -8.0 / 7.0);  // -9.1 -> -9 -> clamped
  EXPECT_FALSE(inside_grid(-1.3, h));
  EXPECT_DOUBLE_EQ(quantize_dequantize(0.3, h), 2.0 / 7.0);    // 2.1 -> 2
  EXPECT_DOUBLE_EQ(quantize_dequantize(1.2, h), 1.0);          // 8.4 -> 8 -> clamped to 7
}

TEST(Quant, UnsignedSymmetricWhenRangeIsNonNegative) {
  // x_min >= 0: unsigned grid [0, 255], delta = x_max / 255 (x_min is raised to... 0 anyway).
  const QGrid g = symmetric_grid(0.5, 2.0, 8);
  const double d = 2.0 / 255.0;
  EXPECT_TRUE(g.symmetric);
  EXPECT_FALSE(g.is_signed);
  EXPECT_EQ(g.qmin, 0.0);
  EXPECT_EQ(g.qmax, 255.0);
  EXPECT_DOUBLE_EQ(g.delta, d);
  EXPECT_EQ(quantize_dequantize(-0.1, g), 0.0);                  // clamped at 0
  EXPECT_FALSE(inside_grid(-0.1, g));
  EXPECT_DOUBLE_EQ(quantize_dequantize(1.01, g), 129 * d);       // 128.775 -> 129
  EXPECT_DOUBLE_EQ(quantize_dequantize(3.0, g), 255 * d);
  // x_min exactly 0 is unsigned too.
  EXPECT_FALSE(symmetric_grid(0.0, 1.0, 8).is_signed);
}

TEST(Quant, NonPositiveAndZeroWidthRanges) {
  // x_max <= 0: x_max <- 1e-8, so zero stays representable and the grid ends at 0.
  const QGrid g = asymmetric_grid(-2.0, -1.0, 8);
  const double d = (2.0 + 1e-8) / 255.0;
  EXPECT_DOUBLE_EQ(g.delta, d);
  EXPECT_EQ(g.zero_point, 255.0);
  EXPECT_EQ(g.x_max(), 0.0);
  EXPECT_DOUBLE_EQ(quantize_dequantize(-2.0, g), -255 * d);
  EXPECT_EQ(quantize_dequantize(0.5, g), 0.0);  // clamped to the top (0)
  EXPECT_FALSE(inside_grid(0.5, g));
  const QGrid s = symmetric_grid(-2.0, -1.0, 8);
  EXPECT_TRUE(s.is_signed);
  EXPECT_DOUBLE_EQ(s.delta, 2.0 / 127.0);

  // Zero-width range at 0: x_max <- 1e-8, delta = 1e-8/255 < eps, so the scale is 1e-8 (the
  // source's clamp) and the zero point 0. Everything stays finite.
  const QGrid z = asymmetric_grid(0.0, 0.0, 8);
  EXPECT_EQ(z.delta, kScaleEps);
  EXPECT_EQ(z.zero_point, 0.0);
  EXPECT_EQ(quantize_dequantize(0.0, z), 0.0);
  EXPECT_DOUBLE_EQ(quantize_dequantize(1.0, z), 255e-8);
  EXPECT_TRUE(std::isfinite(quantize_dequantize(-1.0, z)));
  const QGrid zs = symmetric_grid(0.0, 0.0, 8);
  EXPECT_FALSE(zs.is_signed);
  EXPECT_EQ(zs.delta, kScaleEps);
  // Zero-width range away from 0: widened to include 0.
  const QGrid c = asymmetric_grid(2.0, 2.0, 8);
  EXPECT_DOUBLE_EQ(c.delta, 2.0 / 255.0);
  EXPECT_EQ(c.zero_point, 0.0);
  EXPECT_NEAR(quantize_dequantize(2.0, c), 2.0, 1e-12);
  const QGrid n = asymmetric_grid(-3.0, -3.0, 8);
  EXPECT_EQ(n.zero_point, 255.0);
  EXPECT_NEAR(quantize_dequantize(-3.0, n), -3.0, 1e-7);

  EXPECT_THROW(asymmetric_grid(-1, 1, 0), Error);
  EXPECT_THROW(symmetric_grid(-1, 1, 1), Error);  // signed 1-bit grid has no positive level
  EXPECT_THROW(asymmetric_grid(NAN, 1, 8), Error);
}

TEST(Quant, ErrorShrinksWithBits) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> v(20000);
  for (double& e : v) e = u(rng);
  const Tensor x = vec(v);
  const double e16 = quant_mse(x, asymmetric_grid(-1, 1, 16));
  const double e8 = quant_mse(x, asymmetric_grid(-1, 1, 8));
  const double e2 = quant_mse(x, asymmetric_grid(-1, 1, 2));
  const double d16 = 2.0 / 65535, d8 = 2.0 / 255;
  EXPECT_LT(e16, 1.2 * d16 * d16 / 12);  // uniform rounding noise delta^2 / 12
  EXPECT_NEAR(e8, d8 * d8 / 12, 0.1 * d8 * d8 / 12);
  EXPECT_GT(e2, 0.02);
  EXPECT_LT(e16, 1e-9);
  // Symmetric signed 2-bit: levels {-2, -1, 0, 1} * delta, delta = 1: error is large.
  EXPECT_GT(quant_mse(x, symmetric_grid(-1, 1, 2)), 0.05);
}

TEST(Quant, FakeQuantTensorF32AndF64) {
  const QGrid g = asymmetric_grid(-1.0, 3.0, 8);
  const std::vector<double> v = {-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 3.0, 5.0};
  for (DType t : {DType::F32, DType::F64}) {
    Tensor x = vec(v, t);
    fake_quant(x, g);
    const std::vector<double> out = x.to_vector();
    for (size_t i = 0; i < v.size(); ++i) {
      const double in = t == DType::F32 ? double(float(v[i])) : v[i];
      const double want = quantize_dequantize(in, g);
      EXPECT_EQ(out[i], t == DType::F32 ? double(float(want)) : want) << i;
    }
  }
  Tensor bad = Tensor::from_vector({2}, {1, 2}, DType::I32);
  EXPECT_THROW(fake_quant(bad, g), Error);
}

TEST(Quant, StraightThroughGradZeroExactlyWhereClamped) {
  const QGrid g = asymmetric_grid(-1.0, 3.0, 8);
  // q = round(x / delta) + 64 must lie in [0, 255]: x in [-64.5 d, 191.5 d] (with tie rules).
  const double d = g.delta;
  const std::vector<double> v = {-2.0, -64.6 * d, -64.4 * d, -1.0, 0.0, 2.0,
                                 191.4 * d, 191.6 * d, 5.0};
  const std::vector<double> want = {0, 0, 7, 7, 7, 7, 7, 0, 0};
  for (DType t : {DType::F32, DType::F64}) {
    const Tensor x = vec(v, t);
    Tensor dx = vec(std::vector<double>(v.size(), 7.0), t);
    fake_quant_grad(dx, x, g);
    EXPECT_EQ(dx.to_vector(), want);
  }
  // Symmetric signed: both ends.
  const QGrid s = symmetric_grid(-1.0, 1.0, 4);  // delta 1/7, grid [-8, 7]
  Tensor dx = vec({1, 1, 1, 1, 1});
  fake_quant_grad(dx, vec({-1.3, -1.1, 0.0, 1.05, 1.2}), s);
  EXPECT_EQ(dx.to_vector(), (std::vector<double>{0, 1, 1, 1, 0}));
  Tensor wrong = vec({1, 1});
  EXPECT_THROW(fake_quant_grad(wrong, vec({1, 2, 3}), s), Error);
}

TEST(Quant, PerChannelGridsDifferPerRow) {
  // Weight [2, 4]: row 0 small, row 1 large. Symmetric per-channel grids from each row's range.
  const std::vector<double> v = {-0.1, 0.033, 0.05, 0.1, -10.0, 3.3, 5.0, 10.0};
  Tensor w = Tensor::from_vector({2, 4}, v, DType::F32);
  const auto rows = row_min_max(w);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_NEAR(rows[0].first, -0.1, 1e-7);
  EXPECT_NEAR(rows[1].second, 10.0, 1e-7);
  std::vector<QGrid> grids;
  for (auto [lo, hi] : rows) grids.push_back(symmetric_grid(lo, hi, 8));
  EXPECT_NEAR(grids[0].delta, 0.1 / 127, 1e-9);
  EXPECT_NEAR(grids[1].delta, 10.0 / 127, 1e-7);
  Tensor per_tensor = w.clone();
  fake_quant_per_channel(w, grids);
  const std::vector<double> out = w.to_vector();
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 4; ++c)
      EXPECT_EQ(out[r * 4 + c], double(float(quantize_dequantize(float(v[r * 4 + c]), grids[r]))));
  // With one per-tensor grid the small row would collapse: 0.033 -> 0 at delta 10/127.
  fake_quant(per_tensor, symmetric_grid(-10, 10, 8));
  EXPECT_EQ(per_tensor.to_vector()[1], 0.0);
  EXPECT_NEAR(out[1], 0.033, 0.1 / 127);
  // Gradient per channel: 0.2 is outside row 0's grid, inside row 1's.
  const Tensor x = Tensor::from_vector({2, 2}, {0.2, 0.05, 0.2, 20.0}, DType::F64);
  Tensor dx = Tensor::from_vector({2, 2}, {1, 1, 1, 1}, DType::F64);
  fake_quant_grad_per_channel(dx, x, grids);
  EXPECT_EQ(dx.to_vector(), (std::vector<double>{0, 1, 1, 0}));
  EXPECT_THROW(fake_quant_per_channel(w, {grids[0]}), Error);
}

TEST(Quant, MinMaxHelper) {
  double hi = 0;
  EXPECT_EQ(min_max(vec({3, -2, 7, 0}), &hi), -2.0);
  EXPECT_EQ(hi, 7.0);
  EXPECT_THROW(min_max(Tensor::zeros({0}, DType::F32), &hi), Error);
}

namespace {
// Values on and around the grid's rounding ties and past both ends, then N(0, 2^2) draws.
std::vector<double> quant_probe_values(const QGrid& g, int draws) {
  std::vector<double> v;
  for (int k = -6; k <= 6; ++k)
    for (double f : {-0.5, 0.5, 0.25, 0.0})
      v.push_back((g.qmin + (g.qmax - g.qmin) * (k + 6) / 12.0 - g.zero_point + f) * g.delta);
  v.push_back((g.qmin - g.zero_point - 3.5) * g.delta);
  v.push_back((g.qmax - g.zero_point + 2.5) * g.delta);
  std::mt19937_64 rng(17);
  std::normal_distribution<double> nd(0.0, 2.0);
  for (int i = 0; i < draws; ++i) v.push_back(nd(rng));
  return v;
}
ops::FakeQuant op_grid(const QGrid& g) { return {true, g.delta, g.zero_point, g.qmin, g.qmax}; }
}  // namespace

// The backend op that quantizes activations where they live (QuantSimulator) gives the
// quantizer's bits: f64 as is, f32 rounded once, bf16 through f32 (the host path's roundings).
TEST(Quant, BackendFakeQuantMatchesTheQuantizer) {
  for (const QGrid& g : {asymmetric_grid(-1.3, 2.9, 8), symmetric_grid(-0.7, 0.4, 4),
                         symmetric_grid(0.0, 5.0, 8), asymmetric_grid(-3.0, 0.2, 16)}) {
    std::vector<double> v = quant_probe_values(g, 2000);
    v.push_back(std::numeric_limits<double>::quiet_NaN());
    for (DType t : {DType::F64, DType::F32, DType::BF16}) {
      Tensor x = vec(v, t);
      Tensor ref = t == DType::BF16 ? x.cast(DType::F32) : x.clone();
      fake_quant(ref, g);
      if (t == DType::BF16) ref = ref.cast(DType::BF16);
      ops::cpu_backend().fake_quant(x, op_grid(g));
      const std::vector<double> got = x.to_vector(), want = ref.to_vector();
      for (size_t i = 0; i + 1 < v.size(); ++i)
        ASSERT_EQ(got[i], want[i]) << dtype_name(t) << " value " << v[i] << " bits " << g.bits;
      EXPECT_TRUE(std::isnan(got.back())) << "NaN stays NaN";
    }
  }
  Tensor bad = Tensor::from_vector({2}, {1, 2}, DType::I32);
  EXPECT_THROW(ops::cpu_backend().fake_quant(bad, ops::FakeQuant{}), Error);
}

TEST(Quant, BackendValueRangeMatchesMinMax) {
  for (DType t : {DType::F64, DType::F32, DType::BF16}) {
    const Tensor x = vec({3.25, -2.5, 7.0, 0.0, -0.125}, t);
    const ops::ValueRange r = ops::cpu_backend().value_range(x);
    double hi = 0;
    EXPECT_EQ(r.lo, min_max(x.cast(DType::F64), &hi)) << dtype_name(t);
    EXPECT_EQ(r.hi, hi);
    EXPECT_FALSE(r.nan);
  }
  const ops::ValueRange n =
      ops::cpu_backend().value_range(vec({1.0, std::nan(""), -4.0}, DType::F32));
  EXPECT_TRUE(n.nan);
  EXPECT_EQ(n.lo, -4.0);
  EXPECT_EQ(n.hi, 1.0);
  const ops::ValueRange e = ops::cpu_backend().value_range(Tensor::zeros({0}, DType::F32));
  EXPECT_FALSE(e.nan);
  EXPECT_TRUE(std::isinf(e.lo) && e.lo > 0 && std::isinf(e.hi) && e.hi < 0);
}

TEST(QuantEstimators, CurrentVersusRunningOverThreeBatches) {
  const Tensor b1 = vec({-1.0, 0.0, 2.0}), b2 = vec({-3.0, 1.0}), b3 = vec({0.5, 4.0, 1.0});
  CurrentMinMax cur;
  RunningMinMax run;  // momentum 0.9
  EXPECT_THROW(cur.range(), Error);
  EXPECT_THROW(run.range(), Error);
  for (const Tensor* b : {&b1, &b2, &b3}) {
    cur.observe(*b);
    run.observe(*b);
  }
  EXPECT_EQ(cur.range(), std::make_pair(0.5, 4.0));
  // b1 initialises (-1, 2); b2: (0.9*-1 + 0.1*-3, 0.9*2 + 0.1*1) = (-1.2, 1.9);
  // b3: (0.9*-1.2 + 0.1*0.5, 0.9*1.9 + 0.1*4) = (-1.03, 2.11).
  const double lo2 = 0.9 * -1.0 + 0.1 * -3.0, hi2 = 0.9 * 2.0 + 0.1 * 1.0;
  EXPECT_NEAR(lo2, -1.2, 1e-15);
  const auto [lo, hi] = run.range();
  EXPECT_DOUBLE_EQ(lo, 0.1 * 0.5 + 0.9 * lo2);
  EXPECT_DOUBLE_EQ(hi, 0.1 * 4.0 + 0.9 * hi2);
  EXPECT_NEAR(lo, -1.03, 1e-12);
  EXPECT_NEAR(hi, 2.11, 1e-12);
  EXPECT_EQ(run.num_batches(), 3);
  run.reset();
  EXPECT_THROW(run.range(), Error);
  run.observe(b3);
  EXPECT_EQ(run.range(), std::make_pair(0.5, 4.0));
  RunningMinMax m5(0.5);
  m5.observe(b1);
  m5.observe(b2);
  EXPECT_EQ(m5.range(), std::make_pair(-2.0, 1.5));
}

TEST(QuantEstimators, QuantileMatchesTorchLinear) {
  // torch.quantile(torch.arange(1000.), q): q * 999 between neighbours.
  std::vector<double> v(1000);
  std::iota(v.begin(), v.end(), 0.0);
  std::shuffle(v.begin(), v.end(), std::mt19937(3));
  std::vector<double> c = v;
  EXPECT_NEAR(quantile_linear(c, 0.01), 9.99, 1e-12);
  c = v;
  EXPECT_NEAR(quantile_linear(c, 0.99), 989.01, 1e-12);
  c = v;
  EXPECT_EQ(quantile_linear(c, 0.0), 0.0);
  c = v;
  EXPECT_EQ(quantile_linear(c, 1.0), 999.0);
  std::vector<double> s = {4, 1, 3, 2};
  EXPECT_EQ(quantile_linear(s, 0.5), 2.5);   // torch.quantile([1,2,3,4], 0.5)
  s = {4, 1, 3, 2};
  EXPECT_EQ(quantile_linear(s, 0.25), 1.75);
  s = {5};
  EXPECT_EQ(quantile_linear(s, 0.3), 5.0);
}

TEST(QuantEstimators, PercentilePerBatchThenRunningMean) {
  std::vector<double> v(1000);
  std::iota(v.begin(), v.end(), 0.0);
  std::shuffle(v.begin(), v.end(), std::mt19937(5));
  Percentile p99(99.0);
  p99.observe(vec(v, DType::F32));
  auto [lo, hi] = p99.range();
  EXPECT_NEAR(lo, 9.99, 1e-9);
  EXPECT_NEAR(hi, 989.01, 1e-9);
  // Second batch shifted by +1000: percentiles 1009.99 / 1989.01, combined with momentum 0.9.
  for (double& e : v) e += 1000.0;
  p99.observe(vec(v));
  std::tie(lo, hi) = p99.range();
  EXPECT_NEAR(lo, 0.9 * 9.99 + 0.1 * 1009.99, 1e-9);
  EXPECT_NEAR(hi, 0.9 * 989.01 + 0.1 * 1989.01, 1e-9);
  // Default p = 99.999 on 0..999: 0.00999 and 998.99001.
  Percentile def;
  EXPECT_EQ(def.p(), 99.999);
  std::vector<double> w(1000);
  std::iota(w.begin(), w.end(), 0.0);
  def.observe(vec(w));
  std::tie(lo, hi) = def.range();
  EXPECT_NEAR(lo, 0.00999, 1e-9);
  EXPECT_NEAR(hi, 998.99001, 1e-9);
  // p = 100 is min-max.
  Percentile full(100.0);
  full.observe(vec({3, -1, 2}));
  EXPECT_EQ(full.range(), std::make_pair(-1.0, 3.0));
  EXPECT_THROW(Percentile(30.0), Error);
}

TEST(QuantEstimators, MseFullRangeOnUniformData) {
  // Symmetric 8-bit, dense uniform data on [-1, 1]: the best candidate is (about) the full range.
  // Candidates are k * 1.5 / 100 (max|x| + 0.5 = 1.5).
  MseEstimator est(8, true);
  const Tensor x = vec(linspace(-1.0, 1.0, 10001));
  est.observe(x);
  auto [lo, hi] = est.range();
  EXPECT_FALSE(est.one_sided());
  EXPECT_DOUBLE_EQ(lo, -hi);
  EXPECT_GE(hi, 0.97);
  EXPECT_LE(hi, 1.02);
  const double k = hi / 0.015;
  EXPECT_NEAR(k, std::round(k), 1e-9);  // on the candidate grid
  // It is the grid's minimiser: neighbours are no better.
  const double best = quant_mse(x, symmetric_grid(lo, hi, 8));
  EXPECT_LE(best, quant_mse(x, symmetric_grid(-(hi + 0.015), hi + 0.015, 8)));
  EXPECT_LE(best, quant_mse(x, symmetric_grid(-(hi - 0.015), hi - 0.015, 8)));
  EXPECT_NEAR(est.best_loss(), best * x.numel(), 1e-9 * best * x.numel());
  // Losses accumulate over batches (no momentum): the same batch twice doubles the best loss.
  const double one = est.best_loss();
  est.observe(x);
  EXPECT_NEAR(est.best_loss(), 2 * one, 1e-12 * one);
  EXPECT_EQ(est.range(), std::make_pair(lo, hi));
}

TEST(QuantEstimators, MseClipsOneHugeOutlier) {
  // 100001 values on [-1, 1] plus one at 100. The widest candidate is max|x| + 0.5 = 100.5.
  std::vector<double> v = linspace(-1.0, 1.0, 100001);
  v.push_back(100.0);
  const Tensor x = vec(v, DType::F32);
  // 4 bit: the full range (delta = 100.5/7) rounds all the bulk to 0 (MSE ~ 1/3); the search
  // clips close to the bulk and pays for the one outlier instead.
  MseEstimator e4(4, true);
  e4.observe(x);
  auto [lo, hi] = e4.range();
  EXPECT_DOUBLE_EQ(lo, -hi);
  EXPECT_GT(hi, 1.0);
  EXPECT_LT(hi, 10.0);
  const double full4 = quant_mse(x, symmetric_grid(-100.5, 100.5, 4));
  EXPECT_GT(full4, 0.3);
  EXPECT_LT(quant_mse(x, symmetric_grid(lo, hi, 4)), 0.5 * full4);
  // 8 bit: the bulk survives the full range better, but clipping still wins (about 60 here).
  MseEstimator e8(8, true);
  e8.observe(x);
  std::tie(lo, hi) = e8.range();
  EXPECT_GT(hi, 1.0);
  EXPECT_LT(hi, 0.8 * 100.0);
  EXPECT_LT(quant_mse(x, symmetric_grid(lo, hi, 8)),
            quant_mse(x, symmetric_grid(-100.5, 100.5, 8)));
}

TEST(QuantEstimators, MseAsymmetricTwoDimensionalAndOneSided) {
  // Asymmetric 8-bit on dense uniform [-1, 3]: the 2-D (range, skew) search recovers ~[-1, 3].
  MseEstimator est(8, false);
  est.observe(vec(linspace(-1.0, 3.0, 2001)));
  auto [lo, hi] = est.range();
  EXPECT_NEAR(lo, -1.0, 0.06);
  EXPECT_NEAR(hi, 3.0, 0.06);
  EXPECT_GE(lo, -1.5);  // never beyond min - 0.5 / max + 0.5
  EXPECT_LE(hi, 3.5);
  // One-sided data (min >= 0) uses the 1-D search with x_min = 0.
  MseEstimator one(8, false);
  one.observe(vec(linspace(0.0, 4.0, 4001)));
  std::tie(lo, hi) = one.range();
  EXPECT_TRUE(one.one_sided());
  EXPECT_EQ(lo, 0.0);
  EXPECT_NEAR(hi, 4.0, 0.1);
  one.reset();
  EXPECT_THROW(one.range(), Error);
}

TEST(QuantEstimators, FactoryNamesAndUnknownNameError) {
  EXPECT_EQ(make_estimator("current_minmax", 8, true, 99.999)->name(), "current_minmax");
  EXPECT_EQ(make_estimator("running_minmax", 8, false, 99.999)->name(), "running_minmax");
  auto p = make_estimator("percentile", 8, false, 99.9);
  EXPECT_EQ(p->name(), "percentile");
  EXPECT_EQ(dynamic_cast<Percentile&>(*p).p(), 99.9);
  EXPECT_EQ(make_estimator("MSE", 8, true, 99.999)->name(), "mse");
  try {
    make_estimator("minmax_typo", 8, true, 99.999);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("minmax_typo"), std::string::npos);
    for (const char* n : {"current_minmax", "running_minmax", "percentile", "mse"})
      EXPECT_NE(m.find(n), std::string::npos) << n;
  }
}

// The estimators that say they use only each batch's min and max give the same range from
// those two values as from the whole batch (what the simulator feeds them for GPU activations);
// percentile and MSE do not say so.
TEST(QuantEstimators, MinMaxOnlyEstimatorsNeedJustTheBatchRange) {
  std::mt19937_64 rng(23);
  std::normal_distribution<double> nd(0.0, 1.5);
  for (const char* name : {"current_minmax", "running_minmax", "percentile", "mse"}) {
    auto whole = make_estimator(name, 8, false, 99.0);
    auto two = make_estimator(name, 8, false, 99.0);
    if (!whole->min_max_only()) {
      EXPECT_TRUE(std::string(name) == "percentile" || std::string(name) == "mse") << name;
      continue;
    }
    for (int batch = 0; batch < 3; ++batch) {
      std::vector<double> v(200);
      for (double& x : v) x = nd(rng) + batch;
      const Tensor t = vec(v);
      whole->observe(t);
      double hi = 0;
      const double lo = min_max(t, &hi);
      two->observe(vec({lo, hi}));
    }
    EXPECT_EQ(two->range(), whole->range()) << name;
  }
}

TEST(QuantEncodings, AimetLayoutAndRoundNumbers) {
  // Asymmetric 8-bit [-32, 95.5]: delta 0.5, zp 64 -> offset -64.
  const QGrid a = asymmetric_grid(-32.0, 95.5, 8);
  const Encoding ea = encoding_of("bert.embeddings.sum", a);
  EXPECT_EQ(ea.scale, 0.5);
  EXPECT_EQ(ea.offset, -64.0);
  EXPECT_EQ(ea.min, -32.0);
  EXPECT_EQ(ea.max, 95.5);
  EXPECT_FALSE(ea.symmetric);
  // Signed symmetric 4-bit [-3.5, 3.5]: delta 0.5, AIMET offset -2^(b-1) = -8, min -4, max 3.5.
  const QGrid s4 = symmetric_grid(-3.5, 3.5, 4);
  const Encoding es = encoding_of("w", s4);
  EXPECT_EQ(es.scale, 0.5);
  EXPECT_EQ(es.offset, -8.0);
  EXPECT_EQ(es.min, -4.0);
  EXPECT_EQ(es.max, 3.5);
  // Unsigned symmetric: offset 0.
  EXPECT_EQ(encoding_of("u", symmetric_grid(0.0, 127.5, 8)).offset, 0.0);
  // Per-channel weight: two rows -> two entries under one name.
  const std::vector<Encoding> wq = encodings_of(
      "layer.0.fc1.weight", {symmetric_grid(-63.5, 63.5, 8), symmetric_grid(-0.25, 0.25, 2)});
  const nlohmann::json j = encodings_json({ea}, wq);
  EXPECT_EQ(j["version"], "0.6.1");
  ASSERT_TRUE(j["activation_encodings"].contains("bert.embeddings.sum"));
  const nlohmann::json& act = j["activation_encodings"]["bert.embeddings.sum"];
  ASSERT_TRUE(act.is_array());
  ASSERT_EQ(act.size(), 1u);
  EXPECT_EQ(act[0]["bitwidth"], 8);
  EXPECT_EQ(act[0]["dtype"], "int");
  EXPECT_EQ(act[0]["is_symmetric"], "False");
  EXPECT_EQ(act[0]["offset"], -64);
  EXPECT_TRUE(act[0]["offset"].is_number_integer());
  EXPECT_EQ(act[0]["scale"], 0.5);
  EXPECT_EQ(act[0]["min"], -32.0);
  EXPECT_EQ(act[0]["max"], 95.5);
  const nlohmann::json& par = j["param_encodings"]["layer.0.fc1.weight"];
  ASSERT_EQ(par.size(), 2u);
  EXPECT_EQ(par[0]["is_symmetric"], "True");
  EXPECT_EQ(par[0]["scale"], 0.5);
  EXPECT_EQ(par[0]["offset"], -128);
  EXPECT_EQ(par[0]["min"], -64.0);
  EXPECT_EQ(par[0]["max"], 63.5);
  EXPECT_EQ(par[1]["bitwidth"], 2);
  EXPECT_EQ(par[1]["scale"], 0.25);   // 0.25 / (2^1 - 1)
  EXPECT_EQ(par[1]["offset"], -2);
  EXPECT_EQ(par[1]["min"], -0.5);
  EXPECT_EQ(par[1]["max"], 0.25);
  EXPECT_EQ(par[0].size(), 7u);  // bitwidth dtype is_symmetric max min offset scale
  EXPECT_EQ(j.dump().find("\"offset\":-64") != std::string::npos, true);
  // An activation listed twice is an error; empty lists give empty objects.
  EXPECT_THROW(encodings_json({ea, ea}, {}), Error);
  const nlohmann::json empty = encodings_json({}, {});
  EXPECT_TRUE(empty["activation_encodings"].is_object());
  EXPECT_TRUE(empty["param_encodings"].empty());
}
