// The row machinery the CUDA LayerNorm / RMSNorm kernels share (norms.cu: forward; norm_bwd.cu:
// backward): who owns a row and how its sums are reduced (a whole block, or one warp), the
// launch plan of a row kernel (pack width V, packs per thread K, threads), the dispatch over the
// instantiated (V, K), and the argument checks.
#pragma once

#include <algorithm>
#include <type_traits>

#include "ops/cuda/cuda_common.cuh"

namespace oft::ops::norm {

// The device helpers the norm kernels use, for the files that take this namespace in.
using cuda::aligned16;
using cuda::expect_act;
using cuda::from_f32;
using cuda::load_pack;
using cuda::Pack;
using cuda::ptr;
using cuda::store_pack;
using cuda::to_f32;
using bf16 = __nv_bfloat16;

constexpr int kMaxC = 16384;

// Sums NV values over the whole block (blockDim a multiple of 32); every thread gets the same
// totals, summed in a fixed order. buf: shared [2 * NV * 32] floats; parity alternates between
// calls so that one barrier per call is enough (a buffer is rewritten only after the next
// call's barrier, which every reader of the previous use has passed).
template <int NV>
__device__ __forceinline__ void block_sum(float (&v)[NV], float* buf, int& parity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < NV; ++k)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  float* b = buf + parity * NV * 32;
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < NV; ++k) b[k * 32 + warp] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    float s = 0.f;
    for (int w = 0; w < nw; ++w) s += b[k * 32 + w];
    v[k] = s;
  }
  parity ^= 1;
}

// Who owns a row, and how its sums are reduced. BlockRows: a block owns whole rows (thread t
// holds packs t + k * blockDim; sums are block reductions, one barrier each). WarpRows: one warp
// owns a row (lane l holds packs l + 32 k; sums are warp shuffles, no barrier; eight rows per
// block of kWarpRowThreads in flight). Rows are strided over the persistent grid either way.
constexpr int kWarpRowThreads = 256;

struct BlockRows {
  float* red;  // shared [2 * 2 * 32] (block_sum's double buffer for up to two values)
  int parity = 0;
  __device__ int first() const { return threadIdx.x; }
  __device__ int step() const { return blockDim.x; }
  __device__ int64_t row0() const { return blockIdx.x; }
  __device__ int64_t row_step() const { return gridDim.x; }
  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sum(float& a) {
    float v[1] = {a};
    block_sum<1>(v, red, parity);
    a = v[0];
  }
  __device__ void sum(float& a, float& b) {
    float v[2] = {a, b};
    block_sum<2>(v, red, parity);
    a = v[0];
    b = v[1];
  }
};

__device__ __forceinline__ float warp_allsum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

struct WarpRows {
  __device__ int first() const { return threadIdx.x & 31; }
  __device__ int step() const { return 32; }
  __device__ int64_t row0() const {
    return int64_t(blockIdx.x) * (kWarpRowThreads / 32) + (threadIdx.x >> 5);
  }
  __device__ int64_t row_step() const { return int64_t(gridDim.x) * (kWarpRowThreads / 32); }
  __device__ bool leader() const { return (threadIdx.x & 31) == 0; }
  __device__ void sum(float& a) { a = warp_allsum(a); }
  __device__ void sum(float& a, float& b) {
    a = warp_allsum(a);
    b = warp_allsum(b);
  }
};

// Blocks for a persistent row kernel: as many as fit on the device at once, at most one per row.
template <class Kernel>
int persistent_blocks(Kernel kernel, int threads, int64_t rows) {
  int per_sm = 0;
  OFT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  const int64_t cap = static_cast<int64_t>(std::max(per_sm, 1)) * cuda::sm_count();
  return static_cast<int>(std::max<int64_t>(1, std::min(rows, cap)));
}

// Launch shape of a row kernel: pack width V, packs per thread K, threads per block.
struct RowPlan {
  int V, K, threads;
};

// K is the smallest allowed value (K * V <= 16 values per thread and operand, so registers stay
// bounded) that fits the row in 1024 threads.
inline RowPlan plan_rows(int C, int vec, const char* op) {
  OFT_CHECK(C <= kMaxC, op, ": rows of ", C, " columns are not supported by the CUDA backend (at ",
            "most ", kMaxC, ")");
  const int nvec = C / vec;
  for (int K : {1, 2, 4, 8, 16}) {
    if (K * vec > 16) break;
    const int threads = static_cast<int>(cuda::ceil_div(nvec, K));
    if (threads <= 1024) return {vec, K, static_cast<int>(cuda::ceil_div(threads, 32) * 32)};
  }
  fail(op, ": no launch shape for C = ", C);
}

// Packs per lane of the one-warp-per-row kernels, or 0 when the row is too wide (more than
// max_k packs per lane; the backward keeps three times the registers of the forward) or not
// packed.
template <class T>
int warp_row_packs(int C, bool vec_ok, int max_k) {
  constexpr int V = 16 / sizeof(T);
  if (!vec_ok || C % V != 0) return 0;
  const int K = static_cast<int>(cuda::ceil_div(C / V, 32));
  return K <= max_k ? K : 0;
}

template <int MAXK, class F>
void dispatch_k(int K, F&& f) {
  switch (K) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default:
      if constexpr (MAXK >= 4) return f(std::integral_constant<int, 4>{});
      fail("norm: no one-warp-per-row kernel for ", K, " packs per lane");
  }
}

template <int I>
using IntC = std::integral_constant<int, I>;

// Calls f(IntC<V>, IntC<K>) for the plan's (V, K) among the instantiated combinations: packs of
// 16 bytes with K in {1, 2} (and 4 for f32), or scalars with K in {1, 4, 16}.
template <class T, class F>
void dispatch_vk(const RowPlan& p, F&& f) {
  constexpr int VEC = 16 / sizeof(T);
  if (p.V == VEC) {
    if (p.K == 1) return f(IntC<VEC>{}, IntC<1>{});
    if (p.K == 2) return f(IntC<VEC>{}, IntC<2>{});
    if constexpr (VEC == 4) {
      if (p.K == 4) return f(IntC<4>{}, IntC<4>{});
    }
  } else if (p.V == 1) {
    if (p.K == 1) return f(IntC<1>{}, IntC<1>{});
    if (p.K == 4) return f(IntC<1>{}, IntC<4>{});
    if (p.K == 16) return f(IntC<1>{}, IntC<16>{});
  }
  fail("norm: no kernel for V = ", p.V, ", K = ", p.K);
}

// The instantiated K values: bf16 packs {1, 2}, f32 packs {1, 2, 4}, scalar {1, 4, 16}; a plan
// asking for another K rounds up to the next instantiated one (only costs idle registers).
inline RowPlan plan_rows_for(DType dt, int C, bool vec_ok, const char* op) {
  const int V = vec_ok ? 16 / static_cast<int>(dtype_size(dt)) : 1;
  RowPlan p = plan_rows(C, V, op);
  if (p.V == 1 && p.K > 1) {
    const int K = p.K <= 4 ? 4 : 16;
    p = {1, K, static_cast<int>(cuda::ceil_div(cuda::ceil_div(C, K), 32) * 32)};
  }
  return p;
}

// Shared validation of the row norms; returns N.
inline int64_t check_rows(const Tensor& x, const Tensor& w, const char* op) {
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  const int64_t C = w.numel();
  OFT_CHECK(C > 0 && x.numel() % C == 0 && x.dim(-1) == C, op, ": x ", shape_str(x.shape()),
            " does not have rows of ", C, " (the weight's size)");
  return x.numel() / C;
}

}  // namespace oft::ops::norm
