// Global reductions that stay on the GPU: sum_squares_into accumulates sum(x^2) of a tensor into
// a one-element f64 device scalar, so the trainer's global gradient norm over every parameter
// costs one host synchronisation instead of one per tensor.
//
// Two deterministic stages: each block reduces a grid-stride slice in f32 (per thread) and f64
// (across the block) into its slot of a partials buffer; one block then adds the partials in
// index order to acc. No atomics, so the norm (and the clipping it drives) is reproducible.
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// partials[blockIdx.x] = sum over this block's grid-stride slice of x^2.
template <class T>
__global__ void sum_squares_partial(double* partials, const T* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const float v = cuda::to_f32(x[i]);
    s = fmaf(v, v, s);
  }
  const double t = block_sum(double(s));
  if (threadIdx.x == 0) partials[blockIdx.x] = t;
}

// acc[0] += sum of partials[0..n), in a fixed order.
__global__ void add_partials(double* acc, const double* partials, int n) {
  double s = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) acc[0] += s;
}

}  // namespace

void CudaBackend::sum_squares_into(Tensor& acc, const Tensor& x) {
  cuda::expect_dtype(acc, DType::F64, "sum_squares_into acc");
  OFT_ASSERT(acc.numel() == 1, "sum_squares_into: acc must hold one value");
  cuda::expect_float(x, "sum_squares_into x");
  const int64_t n = x.numel();
  if (n == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>(kMaxBlocks, cuda::ceil_div(n, kThreads)));
  auto* partials = static_cast<double*>(cuda::scratch(sizeof(double) * kMaxBlocks));
  OFT_DISPATCH_FLOAT(x.dtype(), "sum_squares_into", {
    sum_squares_partial<T><<<blocks, kThreads, 0, cuda::stream()>>>(
        partials, static_cast<const T*>(x.raw()), n);
  });
  OFT_CUDA_LAUNCH_CHECK();
  add_partials<<<1, kThreads, 0, cuda::stream()>>>(acc.data<double>(), partials, blocks);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace oft::ops
