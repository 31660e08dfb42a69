// Simulated uniform quantization on CPU tensors (formulas in quantizer.h):
//   q(x) = delta * (clamp(round(x / delta) + zp, qmin, qmax) - zp), round half to even.
#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace oft::quant {

namespace {

void check_bits(int bits, int min_bits, const char* what) {
  OFT_CHECK(bits >= min_bits && bits <= 32, "quantization: ", what, " needs a bit width in [",
            min_bits, ", 32] (got ", bits, ")");
}

void check_cpu_float(const Tensor& t, const char* what) {
  OFT_CHECK(t.defined(), "quantization: ", what, " is an undefined tensor");
  OFT_CHECK(t.device() == Device::CPU, "quantization: ", what,
            " must be a CPU tensor (the CUDA path is separate)");
  OFT_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "quantization: ", what,
            " must be f32 or f64 (got ", dtype_name(t.dtype()), ")");
}

// Calls f(ptr, n) with the tensor's typed pointer.
template <class F>
void with_data(const Tensor& t, F&& f) {
  if (t.dtype() == DType::F32)
    f(t.data<float>(), t.numel());
  else
    f(t.data<double>(), t.numel());
}

template <class T>
void fq_range(T* p, int64_t n, const QGrid& g) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(quantize_dequantize(p[i], g));
}

template <class T>
void grad_range(T* d, const T* x, int64_t n, const QGrid& g) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    if (!inside_grid(x[i], g)) d[i] = T(0);
}

int64_t check_rows(const Tensor& t, size_t n_grids, const char* what) {
  OFT_CHECK(t.ndim() >= 1, "quantization: ", what, " needs at least one dimension");
  OFT_CHECK(static_cast<int64_t>(n_grids) == t.dim(0), "quantization: ", what, " has ", t.dim(0),
            " output channels (rows) but ", n_grids, " grids were given");
  return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0);
}

}  // namespace

double round_half_even(double v) { return std::nearbyint(v); }

QGrid asymmetric_grid(double x_min, double x_max, int bits) {
  check_bits(bits, 1, "an asymmetric grid");
  OFT_CHECK(std::isfinite(x_min) && std::isfinite(x_max),
            "quantization: range [", x_min, ", ", x_max, "] is not finite");
  x_min = std::min(x_min, 0.0);
  x_max = std::max(x_max, kScaleEps);
  QGrid g;
  g.bits = bits;
  g.symmetric = false;
  g.is_signed = false;
  g.qmin = 0.0;
  g.qmax = std::ldexp(1.0, bits) - 1.0;
  const double delta = (x_max - x_min) / g.qmax;
  // + 0.0 turns the -0.0 of x_min = 0 into +0.0.
  g.zero_point = std::clamp(round_half_even(-x_min / delta), g.qmin, g.qmax) + 0.0;
  g.delta = std::max(delta, kScaleEps);
  return g;
}

QGrid symmetric_grid(double x_min, double x_max, int bits) {
  OFT_CHECK(std::isfinite(x_min) && std::isfinite(x_max),
            "quantization: range [", x_min, ", ", x_max, "] is not finite");
  x_min = std::min(x_min, 0.0);
  x_max = std::max(x_max, kScaleEps);
  QGrid g;
  g.bits = bits;
  g.symmetric = true;
  g.is_signed = x_min < 0.0;
  check_bits(bits, g.is_signed ? 2 : 1, g.is_signed ? "a signed symmetric grid" : "a symmetric grid");
  g.qmin = g.is_signed ? -std::ldexp(1.0, bits - 1) : 0.0;
  g.qmax = std::ldexp(1.0, bits - (g.is_signed ? 1 : 0)) - 1.0;
  g.zero_point = 0.0;
  g.delta = std::max(std::max(std::fabs(x_min), x_max) / g.qmax, kScaleEps);
  return g;
}

QGrid make_grid(double x_min, double x_max, int bits, bool symmetric) {
  return symmetric ? symmetric_grid(x_min, x_max, bits) : asymmetric_grid(x_min, x_max, bits);
}

double quantize_to_int(double x, const QGrid& g) {
  return std::clamp(round_half_even(x / g.delta) + g.zero_point, g.qmin, g.qmax);
}

double quantize_dequantize(double x, const QGrid& g) {
  return g.delta * (quantize_to_int(x, g) - g.zero_point);
}

bool inside_grid(double x, const QGrid& g) {
  const double q = round_half_even(x / g.delta) + g.zero_point;
  return q >= g.qmin && q <= g.qmax;
}

void fake_quant(Tensor& x, const QGrid& g) {
  check_cpu_float(x, "fake_quant input");
  with_data(x, [&](auto* p, int64_t n) { fq_range(p, n, g); });
}

void fake_quant_per_channel(Tensor& w, const std::vector<QGrid>& grids) {
  check_cpu_float(w, "fake_quant_per_channel weight");
  const int64_t cols = check_rows(w, grids.size(), "fake_quant_per_channel weight");
  with_data(w, [&](auto* p, int64_t) {
    for (size_t r = 0; r < grids.size(); ++r) fq_range(p + r * cols, cols, grids[r]);
  });
}

void fake_quant_grad(Tensor& dx, const Tensor& x, const QGrid& g) {
  check_cpu_float(dx, "fake_quant_grad gradient");
  check_cpu_float(x, "fake_quant_grad input");
  OFT_CHECK(dx.dtype() == x.dtype() && dx.numel() == x.numel(),
            "quantization: fake_quant_grad gradient (", shape_str(dx.shape()), " ",
            dtype_name(dx.dtype()), ") must match its input (", shape_str(x.shape()), " ",
            dtype_name(x.dtype()), ")");
  if (x.dtype() == DType::F32)
    grad_range(dx.data<float>(), x.data<float>(), x.numel(), g);
  else
    grad_range(dx.data<double>(), x.data<double>(), x.numel(), g);
}

void fake_quant_grad_per_channel(Tensor& dx, const Tensor& x, const std::vector<QGrid>& grids) {
  check_cpu_float(dx, "fake_quant_grad_per_channel gradient");
  check_cpu_float(x, "fake_quant_grad_per_channel input");
  OFT_CHECK(dx.dtype() == x.dtype() && dx.numel() == x.numel(),
            "quantization: fake_quant_grad_per_channel gradient must match its input");
  const int64_t cols = check_rows(x, grids.size(), "fake_quant_grad_per_channel input");
  for (size_t r = 0; r < grids.size(); ++r) {
    if (x.dtype() == DType::F32)
      grad_range(dx.data<float>() + r * cols, x.data<float>() + r * cols, cols, grids[r]);
    else
      grad_range(dx.data<double>() + r * cols, x.data<double>() + r * cols, cols, grids[r]);
  }
}

double min_max(const Tensor& x, double* max) {
  check_cpu_float(x, "min_max input");
  OFT_CHECK(x.numel() > 0, "quantization: cannot take the range of an empty tensor");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  with_data(x, [&](auto* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const double v = p[i];
      OFT_CHECK(!std::isnan(v), "quantization: NaN in a tensor whose range is being estimated");
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  });
  if (max) *max = hi;
  return lo;
}

std::vector<std::pair<double, double>> row_min_max(const Tensor& x) {
  check_cpu_float(x, "row_min_max input");
  OFT_CHECK(x.ndim() >= 1 && x.dim(0) > 0 && x.numel() > 0,
            "quantization: row_min_max needs a non-empty tensor [rows, ...]");
  std::vector<std::pair<double, double>> out;
  out.reserve(x.dim(0));
  for (int64_t r = 0; r < x.dim(0); ++r) {
    double hi = 0;
    const double lo = min_max(x.slice(r, r + 1), &hi);
    out.emplace_back(lo, hi);
  }
  return out;
}

double quant_mse(const Tensor& x, const QGrid& g) {
  check_cpu_float(x, "quant_mse input");
  OFT_CHECK(x.numel() > 0, "quantization: quant_mse of an empty tensor");
  double s = 0;
  with_data(x, [&](auto* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const double e = double(p[i]) - quantize_dequantize(p[i], g);
      s += e * e;
    }
  });
  return s / static_cast<double>(x.numel());
}

}  // namespace oft::quant
