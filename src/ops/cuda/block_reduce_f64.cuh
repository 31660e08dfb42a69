// Block-wide f64 reductions shared by the evaluation kernels (row_moments.cu, hidden_state.cu):
// warp shuffles, then the warps' values through shared memory, summed in warp order so every
// thread gets the same result.
#pragma once

#include <cuda_runtime.h>

namespace oft::cuda {

// Sum of v over a block of kThreads threads (every thread gets it); red holds kThreads / 32
// doubles of shared memory. Every thread of the block must call it.
template <int kThreads>
__device__ __forceinline__ double block_sum_f64(double v, double* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // red is free
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) s += red[w];
  return s;
}

}  // namespace oft::cuda
