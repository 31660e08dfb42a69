// The fake quantizer's one formula on the GPU (the CPU's is fake_quant_value in
// ops/cpu/cpu_backend.h): delta * (clamp(rint(x / delta) + zp, qmin, qmax) - zp) in f64, rint
// rounding half to even; a NaN stays NaN, as the CPU's clamp keeps it. Used by the fake_quant
// op (fake_quant.cu) and the quantized attention scores and probabilities (attention_quant.cu).
// Also the order-preserving integer keys of doubles through which range captures merge their
// min / max with 64-bit atomicMin / atomicMax (value_range, the attention's ranges).
#pragma once

#include <cstring>

namespace oft::cuda {

__device__ __forceinline__ double fake_quant_value(double x, double delta, double zp,
                                                   double qmin, double qmax) {
  const double v = rint(x / delta) + zp;
  if (isnan(v)) return v;
  return delta * (fmin(fmax(v, qmin), qmax) - zp);
}

// Doubles -> unsigned keys with the same order (negative values flip all bits), and back.
__host__ __device__ __forceinline__ unsigned long long order_key(double x) {
  unsigned long long u;
  memcpy(&u, &x, sizeof u);
  return (u >> 63) ? ~u : (u | (1ull << 63));
}
__host__ __device__ __forceinline__ double from_order_key(unsigned long long k) {
  const unsigned long long u = (k >> 63) ? (k & ~(1ull << 63)) : ~k;
  double x;
  memcpy(&x, &u, sizeof x);
  return x;
}

}  // namespace oft::cuda
