// CUDA simulated quantization of activations (evaluation only): fake_quant in place on f32 or
// bf16 tensors, and value_range, the min / max / NaN scan a min-max range estimator calibrates
// from. With them `oft validate --quantize` keeps every activation on the GPU; before, each
// quantized activation made a round trip through an f32 host copy.
//
// fake_quant computes the CPU backend's formula in f64 (fake_quant.cuh, cpu_backend.h): q =
// clamp(rint(x / delta) + zp, qmin, qmax) (rint rounds half to even), x' = delta (q - zp), then
// rounds to f32 and from there to bf16, as the host path did (f64 -> f32 -> bf16), so both
// backends give the same bits. NaN stays NaN (the host's std::clamp keeps it). Memory-bound:
// 16-byte packs where the tensor is aligned; the f64 arithmetic (one division per element)
// stays below the bandwidth on H100-class GPUs (64-67 f64 TFLOP/s).
//
// value_range: a grid-stride scan with each thread's min / max in f32 (exact: the values are
// f32 or bf16), NaNs counted apart, warp shuffles, then one 64-bit atomicMin / atomicMax per
// warp on order-preserving integer keys of the doubles (the attention_quant.cu scheme) and an
// atomicAdd of the NaN count. min and max are exact whatever the order, so the result is
// deterministic. The three words come back to the host (one synchronisation).
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/fake_quant.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::ptr;
using cuda::to_f32;

constexpr int kThreads = 256;

__device__ __forceinline__ float fq_value(float x, const FakeQuant& g) {
  return static_cast<float>(
      cuda::fake_quant_value(double(x), g.delta, g.zero_point, g.qmin, g.qmax));
}

unsigned blocks_for(int64_t items) {
  const int64_t cap = int64_t(cuda::sm_count() > 0 ? cuda::sm_count() : 132) * 8;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(cuda::ceil_div(items, kThreads), cap)));
}

// x[i] = fq(x[i]) for i < n, V elements per access (V = 1: any alignment).
template <class T, int V>
__global__ void __launch_bounds__(kThreads) fake_quant_kernel(T* __restrict__ x, int64_t n,
                                                              const FakeQuant g) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t np = n / V;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < np; i += stride) {
    if constexpr (V == 1) {
      x[i] = from_f32<T>(fq_value(to_f32(x[i]), g));
    } else {
      float v[V];
      cuda::load_pack<T, V>(x + i * V, v);
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] = fq_value(v[k], g);
      cuda::store_pack<T, V>(x + i * V, v);
    }
  }
  if constexpr (V > 1) {  // the tail past the last whole pack
    const int64_t t = np * V + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t < n) x[t] = from_f32<T>(fq_value(to_f32(x[t]), g));
  }
}

// out[0] = min key, out[1] = max key, out[2] = NaN count (initialised by the host).
template <class T>
__global__ void __launch_bounds__(kThreads) value_range_kernel(const T* __restrict__ x, int64_t n,
                                                               unsigned long long* out) {
  float lo = INFINITY, hi = -INFINITY;
  unsigned long long nans = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = to_f32(x[i]);
    if (isnan(v)) {
      ++nans;
    } else {
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    nans += __shfl_xor_sync(0xffffffffu, nans, o);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMin(out, cuda::order_key(double(lo)));
    atomicMax(out + 1, cuda::order_key(double(hi)));
    if (nans) atomicAdd(out + 2, nans);
  }
}

void check_quant_tensor(const Tensor& x, const char* op) {
  OFT_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::BF16, op,
            " on the GPU needs an f32 or bf16 tensor, got ", dtype_name(x.dtype()));
}

}  // namespace

void CudaBackend::fake_quant(Tensor& x, const FakeQuant& q) {
  check_quant_tensor(x, "fake_quant");
  const int64_t n = x.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "fake_quant", {
    constexpr int V = 16 / sizeof(T);
    T* p = ptr<T>(x);
    if (cuda::aligned16(p))
      fake_quant_kernel<T, V><<<blocks_for(n / V + 1), kThreads, 0, cuda::stream()>>>(p, n, q);
    else
      fake_quant_kernel<T, 1><<<blocks_for(n), kThreads, 0, cuda::stream()>>>(p, n, q);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

ValueRange CudaBackend::value_range(const Tensor& x) {
  check_quant_tensor(x, "value_range");
  ValueRange r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
               false};
  const int64_t n = x.numel();
  if (n == 0) return r;
  auto* dev = static_cast<unsigned long long*>(cuda::scratch(3 * sizeof(unsigned long long)));
  const unsigned long long init[3] = {cuda::order_key(r.lo), cuda::order_key(r.hi), 0ull};
  OFT_CUDA_CHECK(cudaMemcpyAsync(dev, init, sizeof init, cudaMemcpyHostToDevice, cuda::stream()));
  OFT_DISPATCH_FLOAT(x.dtype(), "value_range", {
    value_range_kernel<T><<<blocks_for(n), kThreads, 0, cuda::stream()>>>(ptr<T>(x), n, dev);
    OFT_CUDA_LAUNCH_CHECK();
  });
  unsigned long long got[3];
  OFT_CUDA_CHECK(cudaMemcpyAsync(got, dev, sizeof got, cudaMemcpyDeviceToHost, cuda::stream()));
  cuda::synchronize();
  r.lo = cuda::from_order_key(got[0]);
  r.hi = cuda::from_order_key(got[1]);
  r.nan = got[2] != 0;
  return r;
}

}  // namespace oft::ops
