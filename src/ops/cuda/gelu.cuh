// GELU with the tanh approximation in fp32 on the device, shared by the elementwise activations
// (activations.cu) and the Hopper matrix products' epilogues (gemm_wgmma.cu), so both compute
// the same values. The library is compiled with --use_fast_math, which turns tanhf into the
// hardware tanh.approx (about 2^-11 relative error); these use the exact identity
// 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)) instead: x * sigmoid(2u), and its derivative
// s + 2 x u' s (1 - s) with 1 - s = e * s computed without cancellation.
#pragma once

namespace oft::cuda {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;

// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  // exp argument clamped so 1 + e never overflows to inf (the result is 0 or x there anyway).
  const float e = __expf(fminf(fmaxf(-2.f * u, -80.f), 80.f));
  return x / (1.f + e);
}

// gelu'(x) for the same approximation.
__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  const float du = kSqrt2OverPi * (1.f + 3.f * kGeluC * x * x);
  const float e = __expf(fminf(fmaxf(-2.f * u, -80.f), 80.f));
  const float s = 1.f / (1.f + e);  // sigmoid(2u) = 0.5 (1 + tanh u)
  const float one_minus_s = e * s;
  // d/dx [x s(2u)] = s + x * 2 s (1 - s) * du  (= 0.5 (1 + t) + 0.5 x (1 - t^2) du)
  return s + 2.f * x * du * s * one_minus_s;
}

}  // namespace oft::cuda
