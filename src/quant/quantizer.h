// Simulated (fake) uniform quantization: quantize -> dequantize on CPU tensors, with the
// straight-through gradient. Formulas are those of the source system (Qualcomm's "Quantizable
// Transformers" code, quantization/quantizers/uniform_quantizers.py, AIMET-style), REFERENCE.md §5:
//
//   asymmetric, b bits:  x_min <- min(x_min, 0), x_max <- max(x_max, 1e-8)
//                        delta = (x_max - x_min) / (2^b - 1)
//                        zp    = clamp(round(-x_min / delta), 0, 2^b - 1)     grid [0, 2^b - 1]
//   symmetric, b bits:   same two clamps; signed = (x_min < 0)
//                        delta = max(|x_min|, x_max) / (2^(b - signed) - 1), zp = 0
//                        grid [-2^(b-1), 2^(b-1) - 1] if signed (e.g. [-128, 127] at 8 bits: the
//                        source's int_min/int_max, the AIMET convention), else [0, 2^b - 1]
//   q(x) = delta * (clamp(round(x / delta) + zp, qmin, qmax) - zp)
//
// Details kept from the source:
// - The step actually used is scale = max(delta, 1e-8) (the source's `scale` property, eps 1e-8);
//   the zero point is computed from the unclamped delta. This only matters for ranges narrower
//   than 1e-8 * (2^b - 1) (2.55e-6 at 8 bits). QGrid::delta holds the clamped value.
// - round() is round-half-to-even, like torch.round (std::nearbyint in the default rounding mode).
// - Arithmetic is in double (the source uses float32 tensors), and an f32 result is stored rounded
//   to float. A value exactly on a rounding tie can therefore land on a neighbouring grid point
//   compared with the float32 source; nothing else differs.
//
// Straight-through estimator: d q / d x = 1 where round(x / delta) + zp lies inside [qmin, qmax]
// (boundaries included, like torch.clamp's backward), 0 where the value was clamped. This is the
// source's round_ste followed by torch.clamp.
#pragma once

#include <utility>
#include <vector>

#include "core/tensor.h"

namespace oft::quant {

// One uniform quantization grid. qmin/qmax are the integer grid limits; the representable real
// values are delta * (q - zero_point) for integer q in [qmin, qmax].
struct QGrid {
  int bits = 8;
  bool symmetric = false;
  bool is_signed = false;   // symmetric grids only: grid [-2^(b-1), 2^(b-1) - 1]
  double delta = 1.0;       // step (scale), already clamped to >= 1e-8
  double zero_point = 0.0;  // integer-valued; 0 for symmetric grids
  double qmin = 0.0, qmax = 255.0;

  double x_min() const { return delta * (qmin - zero_point); }  // smallest representable value
  double x_max() const { return delta * (qmax - zero_point); }  // largest representable value
};

// Smallest scale used (the source's eps).
inline constexpr double kScaleEps = 1e-8;

// Grid constructors from a real range (see the header comment for the formulas).
QGrid asymmetric_grid(double x_min, double x_max, int bits);
QGrid symmetric_grid(double x_min, double x_max, int bits);
// Dispatches on `symmetric`.
QGrid make_grid(double x_min, double x_max, int bits, bool symmetric);

// round-half-to-even, like torch.round.
double round_half_even(double v);

// Integer grid index of x (after clamping to [qmin, qmax]).
double quantize_to_int(double x, const QGrid& g);
// delta * (clamp(round(x / delta) + zp, qmin, qmax) - zp)
double quantize_dequantize(double x, const QGrid& g);
// True where round(x / delta) + zp lies inside [qmin, qmax] (the STE passes the gradient).
bool inside_grid(double x, const QGrid& g);

// In-place fake quantization of a contiguous CPU f32/f64 tensor (any shape).
void fake_quant(Tensor& x, const QGrid& g);
// Per-output-channel fake quantization of a weight [out, ...]: row r uses grids[r].
void fake_quant_per_channel(Tensor& w, const std::vector<QGrid>& grids);

// Straight-through gradient: dx (same shape and dtype as x) is left unchanged where x maps inside
// the grid and set to 0 where x was clamped.
void fake_quant_grad(Tensor& dx, const Tensor& x, const QGrid& g);
// Per-channel version of fake_quant_grad (row r of x uses grids[r]).
void fake_quant_grad_per_channel(Tensor& dx, const Tensor& x, const std::vector<QGrid>& grids);

// Min and max of a non-empty CPU f32/f64 tensor: returns the min, writes the max to *max.
double min_max(const Tensor& x, double* max);
// Per-row (leading dimension) min and max of a CPU f32/f64 tensor [rows, ...].
std::vector<std::pair<double, double>> row_min_max(const Tensor& x);
// Mean squared error between x and its fake-quantized version (x is not modified).
double quant_mse(const Tensor& x, const QGrid& g);

}  // namespace oft::quant
