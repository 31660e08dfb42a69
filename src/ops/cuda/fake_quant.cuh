// The fake quantizer's one formula on the GPU (the CPU's is fake_quant_value in
// ops/cpu/cpu_backend.h): delta * (clamp(rint(x / delta) + zp, qmin, qmax) - zp) in f64, rint
// rounding half to even; a NaN stays NaN, as the CPU's clamp keeps it. Used by the fake_quant
// op (fake_quant.cu) and the quantized attention scores and probabilities (attention_quant.cu).
#pragma once

namespace oft::cuda {

__device__ __forceinline__ double fake_quant_value(double x, double delta, double zp,
                                                   double qmin, double qmax) {
  const double v = rint(x / delta) + zp;
  if (isnan(v)) return v;
  return delta * (fmin(fmax(v, qmin), qmax) - zp);
}

}  // namespace oft::cuda
