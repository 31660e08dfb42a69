// CUDA activations: y = f(x) and dx = dy * f'(x) for ReLU, GELU (tanh approximation), GELU
// (erf) and sigmoid, elementwise over tensors of any shape (act dtype: f32 or bf16, fp32 math).
//
// Shape: purely memory-bound, so each thread handles one 16-byte pack (4 f32 or 8 bf16) with one
// vectorised load per operand and one store; the elements past the last whole pack (numel not a
// multiple of the pack, at most 7) are handled by the first threads of the grid. Tensors whose
// base address is not 16-byte aligned take the scalar instantiation (pack of 1).
//
// Precision: the library is compiled with --use_fast_math, which turns tanhf into the hardware
// tanh.approx (about 2^-11 relative error, too coarse for the 1e-5 f32 tolerance). GELU-tanh is
// therefore written through the exact identity 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), which
// needs only exp (ex2.approx with a few ulp) and a division (gelu.cuh). GELU-erf takes
// 1 + erf(x / sqrt 2) as erfc(-x / sqrt 2): 1 + erff cancels for x < 0 (about 12% relative
// error was seen in the tail). erfcf is not affected by fast math.
//
// Aliasing: activation_bwd(d, d, x) is allowed (each element is read before it is written by the
// same thread), so the pointers are not __restrict__.
#include <algorithm>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/gelu.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::Pack;
using cuda::ptr;
using cuda::aligned16;

constexpr int kThreads = 256;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// f(x) in fp32.
template <Activation A>
__device__ __forceinline__ float act_f(float x) {
  if constexpr (A == Activation::ReLU) {
    return x > 0.f ? x : 0.f;
  } else if constexpr (A == Activation::GELU_Tanh) {
    return cuda::gelu_tanh(x);
  } else if constexpr (A == Activation::GELU_Erf) {
    return 0.5f * x * erfcf(-x * kInvSqrt2);  // = 1 + erf(x / sqrt 2), no cancellation for x < 0
  } else {
    return 1.f / (1.f + __expf(-x));
  }
}

// f'(x) in fp32.
template <Activation A>
__device__ __forceinline__ float act_df(float x) {
  if constexpr (A == Activation::ReLU) {
    return x > 0.f ? 1.f : 0.f;
  } else if constexpr (A == Activation::GELU_Tanh) {
    return cuda::gelu_tanh_grad(x);
  } else if constexpr (A == Activation::GELU_Erf) {
    return 0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * __expf(-0.5f * x * x);
  } else {
    const float s = 1.f / (1.f + __expf(-x));
    return s * (1.f - s);
  }
}

// y[i] = f(x[i]); n elements, packs of V. Thread t: pack t, and element nv*V + t of the tail.
template <class T, int V, Activation A>
__global__ void act_fwd_kernel(T* y, const T* x, int64_t n) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  if (t < nv) {
    const Pack<T, V> in = reinterpret_cast<const Pack<T, V>*>(x)[t];
    Pack<T, V> out;
#pragma unroll
    for (int i = 0; i < V; ++i) out.v[i] = from_f32<T>(act_f<A>(to_f32(in.v[i])));
    reinterpret_cast<Pack<T, V>*>(y)[t] = out;
  }
  const int64_t tail = nv * V + t;
  if (t < V && tail < n) y[tail] = from_f32<T>(act_f<A>(to_f32(x[tail])));
}

// dx[i] = dy[i] * f'(x[i]); dx may alias dy.
template <class T, int V, Activation A>
__global__ void act_bwd_kernel(T* dx, const T* dy, const T* x, int64_t n) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  if (t < nv) {
    const Pack<T, V> g = reinterpret_cast<const Pack<T, V>*>(dy)[t];
    const Pack<T, V> in = reinterpret_cast<const Pack<T, V>*>(x)[t];
    Pack<T, V> out;
#pragma unroll
    for (int i = 0; i < V; ++i) out.v[i] = from_f32<T>(to_f32(g.v[i]) * act_df<A>(to_f32(in.v[i])));
    reinterpret_cast<Pack<T, V>*>(dx)[t] = out;
  }
  const int64_t tail = nv * V + t;
  if (t < V && tail < n) dx[tail] = from_f32<T>(to_f32(dy[tail]) * act_df<A>(to_f32(x[tail])));
}

// Typed device pointer (dtype checked by the caller; Tensor::data<T> has no bf16 overload).
// Grid covering max(packs, V) threads (the tail needs up to V threads).
unsigned grid_for(int64_t n, int V) {
  const int64_t threads = std::max<int64_t>(n / V, V);
  return static_cast<unsigned>(cuda::ceil_div(threads, kThreads));
}

// Launches the forward / backward kernel with the activation as a compile-time constant.
template <class T, int V>
void launch_fwd(Activation a, T* y, const T* x, int64_t n) {
  const unsigned grid = grid_for(n, V);
  cudaStream_t st = cuda::stream();
  switch (a) {
    case Activation::ReLU:
      act_fwd_kernel<T, V, Activation::ReLU><<<grid, kThreads, 0, st>>>(y, x, n);
      break;
    case Activation::GELU_Tanh:
      act_fwd_kernel<T, V, Activation::GELU_Tanh><<<grid, kThreads, 0, st>>>(y, x, n);
      break;
    case Activation::GELU_Erf:
      act_fwd_kernel<T, V, Activation::GELU_Erf><<<grid, kThreads, 0, st>>>(y, x, n);
      break;
    case Activation::Sigmoid:
      act_fwd_kernel<T, V, Activation::Sigmoid><<<grid, kThreads, 0, st>>>(y, x, n);
      break;
    default:
      fail("CUDA activation_fwd: unknown activation ", static_cast<int>(a));
  }
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int V>
void launch_bwd(Activation a, T* dx, const T* dy, const T* x, int64_t n) {
  const unsigned grid = grid_for(n, V);
  cudaStream_t st = cuda::stream();
  switch (a) {
    case Activation::ReLU:
      act_bwd_kernel<T, V, Activation::ReLU><<<grid, kThreads, 0, st>>>(dx, dy, x, n);
      break;
    case Activation::GELU_Tanh:
      act_bwd_kernel<T, V, Activation::GELU_Tanh><<<grid, kThreads, 0, st>>>(dx, dy, x, n);
      break;
    case Activation::GELU_Erf:
      act_bwd_kernel<T, V, Activation::GELU_Erf><<<grid, kThreads, 0, st>>>(dx, dy, x, n);
      break;
    case Activation::Sigmoid:
      act_bwd_kernel<T, V, Activation::Sigmoid><<<grid, kThreads, 0, st>>>(dx, dy, x, n);
      break;
    default:
      fail("CUDA activation_bwd: unknown activation ", static_cast<int>(a));
  }
  OFT_CUDA_LAUNCH_CHECK();
}

void expect_like(const Tensor& t, const Tensor& ref, const char* what) {
  cuda::expect_float(t, what);
  OFT_CHECK(t.numel() == ref.numel() && t.dtype() == ref.dtype(), what, ": ", shape_str(t.shape()),
            " ", dtype_name(t.dtype()), " does not match ", shape_str(ref.shape()), " ",
            dtype_name(ref.dtype()));
}

}  // namespace

void CudaBackend::activation_fwd(Tensor& y, const Tensor& x, Activation a) {
  cuda::expect_float(x, "activation_fwd x");
  expect_like(y, x, "activation_fwd y");
  const int64_t n = x.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "activation_fwd", {
    constexpr int V = 16 / sizeof(T);
    T* py = ptr<T>(y);
    const T* px = ptr<T>(x);
    const bool vec = aligned16(py) && aligned16(px);
    if (vec)
      launch_fwd<T, V>(a, py, px, n);
    else
      launch_fwd<T, 1>(a, py, px, n);
  });
}

void CudaBackend::activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) {
  cuda::expect_float(x, "activation_bwd x");
  expect_like(dx, x, "activation_bwd dx");
  expect_like(dy, x, "activation_bwd dy");
  const int64_t n = x.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "activation_bwd", {
    constexpr int V = 16 / sizeof(T);
    T* pdx = ptr<T>(dx);
    const T* pdy = ptr<T>(dy);
    const T* px = ptr<T>(x);
    const bool vec = aligned16(pdx) && aligned16(pdy) && aligned16(px);
    if (vec)
      launch_bwd<T, V>(a, pdx, pdy, px, n);
    else
      launch_bwd<T, 1>(a, pdx, pdy, px, n);
  });
}

}  // namespace oft::ops
