// CUDA row_moments (evaluation only): per row of row_len values, the Pearson kurtosis and the inf
// norm of the seed-A outlier metrics (ops.h; the CPU formulas in ops/row_moments.h), so that
// `oft validate` and the training-time outlier metrics read GPU activations without copying
// them to the host.
//
// One block of 256 threads per row: pass 1 sums the row in f64 and takes max |x| with a NaN
// flag; pass 2 (kurtosis) sums (x - mean)^2 and (x - mean)^4 in f64. The sums run in another
// order than the CPU's sequential loop: results agree to about 1e-15 relative (f64), far below
// what the metrics report. Rows are short (a token: d values) or long (a sequence: T * d), and
// there are B or B * T of them: enough blocks either way for a pass that costs microseconds.
#include <math_constants.h>

#include <cmath>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/block_reduce_f64.cuh"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::ptr;
using cuda::to_f32;

constexpr int kThreads = 256;

__device__ __forceinline__ double block_sum(double v, double* red) {
  return cuda::block_sum_f64<kThreads>(v, red);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    row_moments_kernel(double* __restrict__ out, const T* __restrict__ x, int64_t row_len,
                       bool kurtosis, double eps) {
  __shared__ double red[kThreads / 32];
  const T* row = x + int64_t(blockIdx.x) * row_len;
  double s = 0, m = 0;
  int nan = 0;
  for (int64_t i = threadIdx.x; i < row_len; i += kThreads) {
    const double v = double(to_f32(row[i]));
    s += v;
    const double a = fabs(v);
    if (a > m) m = a;
    else if (isnan(a)) nan = 1;
  }
  const double sum = block_sum(s, red);
  // max |x| and the NaN flag: warp maxima, then the block's through shared memory.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    nan |= __shfl_xor_sync(0xffffffffu, nan, o);
  }
  __shared__ double wmax[kThreads / 32];
  __shared__ int wnan[kThreads / 32];
  if ((threadIdx.x & 31) == 0) {
    wmax[threadIdx.x >> 5] = m;
    wnan[threadIdx.x >> 5] = nan;
  }
  __syncthreads();
  double inf = 0;
  int any_nan = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    inf = fmax(inf, wmax[w]);
    any_nan |= wnan[w];
  }
  double k = CUDART_NAN;
  if (kurtosis) {
    const double mean = sum / double(row_len);
    double s2 = 0, s4 = 0;
    for (int64_t i = threadIdx.x; i < row_len; i += kThreads) {
      const double dv = double(to_f32(row[i])) - mean;
      const double d2 = dv * dv;
      s2 += d2;
      s4 += d2 * d2;
    }
    s2 = block_sum(s2, red);
    s4 = block_sum(s4, red);
    const double var = s2 / double(row_len - 1);
    k = (s4 / double(row_len)) / (var * var + eps);
  }
  if (threadIdx.x == 0) {
    out[2 * int64_t(blockIdx.x)] = k;
    out[2 * int64_t(blockIdx.x) + 1] = any_nan ? CUDART_NAN : inf;
  }
}

}  // namespace

void CudaBackend::row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                              double eps) {
  OFT_ASSERT(row_len >= (kurtosis ? 2 : 1) && x.numel() % row_len == 0,
             "row_moments: rows of ", row_len, " in ", shape_str(x.shape()));
  const int64_t rows = x.numel() / row_len;
  OFT_ASSERT(out.device() == Device::CUDA && out.dtype() == DType::F64 && out.numel() == 2 * rows,
             "row_moments: out must be f64 [", rows, ", 2] on the GPU");
  OFT_CHECK(rows <= int64_t(0x7fffffff), "row_moments: too many rows (", rows, ")");
  if (rows == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "row_moments", {
    row_moments_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, cuda::stream()>>>(
        ptr<double>(out), ptr<T>(x), row_len, kurtosis, eps);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace oft::ops
