// CUDA norms: LayerNorm and RMSNorm (seed B form) over rows of C, and QK-norm (RMS over each
// head's D columns of q and k inside a fused qkv buffer). Activations, weights and input
// gradients are the act dtype (f32 or bf16); statistics (mean, rstd, inv) and parameter
// gradients are f32; all arithmetic is fp32.
//
// LayerNorm / RMSNorm (rows of C, C <= 16384):
//   A block owns whole rows; each thread owns fixed columns of the row: K packs of V elements
//   (V = 16 bytes: 4 f32 or 8 bf16, or 1 when C or an address does not allow packs), threads
//   = ceil(C / (K V)) rounded to a warp (<= 1024; __launch_bounds__(1024) keeps registers <= 64,
//   which only makes the rare K > 1 instantiations for C > 8192 spill a little). A row is loaded
//   once into registers; the row sums are block reductions (warp shuffles, then one shared-memory
//   step with double buffering, so one __syncthreads per reduction). Forward statistics are exact
//   two-pass (mean, then the biased variance of the registered values). The grid is persistent (SMs
//   x occupancy blocks, rows strided), so the weights are loaded once per block and the backward's
//   parameter gradients accumulate in registers across the block's rows in a fixed order. The
//   backward writes one partial row per block (dw and db side by side) into scratch; two small
//   kernels sum the partials in a fixed order (up to 32 row splits, then the splits) and add them
//   into dw / db (deterministic, no atomics; the llm.c layernorm_backward scheme). dx may alias dy:
//   a thread reads its columns of dy before it writes the same columns of dx.
//
// QK-norm (head width D, usually 64): a group of GS lanes (a power of two <= 32) per head
//   segment of D values; the group reduces with xor shuffles inside the warp. The backward
//   accumulates dwq / dwk per lane in registers, reduces the groups of a block in shared memory
//   in a fixed order, and a second kernel sums the block partials. v columns are copied with
//   cudaMemcpy2DAsync.
#include <algorithm>
#include <type_traits>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::Pack;
using cuda::ptr;
using cuda::aligned16;
using cuda::load_pack;
using cuda::store_pack;

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

// ------------------------------------------------------------------ LayerNorm / RMSNorm rows

// Forward. x, y [N, C]; w, b [C] (b may be null; unused for RMS); LN: stat0 = mean, stat1 = rstd;
// RMS: stat1 = inv = 1 / (rms + eps) (stat0 unused). Thread t owns packs t + k * blockDim.
template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_fwd_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b, int64_t N,
                    int C, float eps) {
  __shared__ float red[2 * 32];
  int parity = 0;
  const int nvec = C / V;
  float wr[K][V], br[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = br[k][i] = 0.f;
    if (j < nvec) {
      load_pack<T, V>(w + j * V, wr[k]);
      if (b) load_pack<T, V>(b + j * V, br[k]);
    }
  }
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* xr = x + n * C;
    float xv[K][V];
    float s[1] = {0.f};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) s[0] += LN ? xv[k][i] : xv[k][i] * xv[k][i];
    }
    block_sum<1>(s, red, parity);
    float mu = 0.f, r;
    if (LN) {
      mu = s[0] * inv_c;
      float q[1] = {0.f};
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = threadIdx.x + k * blockDim.x;
        if (j < nvec)
#pragma unroll
          for (int i = 0; i < V; ++i) q[0] += (xv[k][i] - mu) * (xv[k][i] - mu);
      }
      block_sum<1>(q, red, parity);
      r = rsqrtf(q[0] * inv_c + eps);  // biased variance
    } else {
      r = 1.f / (sqrtf(s[0] * inv_c) + eps);
    }
    if (threadIdx.x == 0) {
      if (LN) stat0[n] = mu;
      stat1[n] = r;
    }
    T* yr = y + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) o[i] = (xv[k][i] - mu) * r * wr[k][i] + br[k][i];
        store_pack<T, V>(yr + j * V, o);
      }
    }
  }
}

// Per-element pieces of the norm backward, shared by the block and the warp kernels.
// Row sums: LN: s0 = sum g, s1 = sum g xhat; RMS: s0 = sum g x, s1 = sum x^2 (g = dy * w).
template <bool LN>
__device__ __forceinline__ void norm_bwd_sums(float& s0, float& s1, float g, float x, float mu,
                                              float r) {
  if (LN) {
    const float xh = (x - mu) * r;
    s0 += g;
    s1 += g * xh;
  } else {
    s0 += g * x;
    s1 += x * x;
  }
}
// From the row sums: dx = r * g - c0 - c1 * (LN ? xhat : x).
template <bool LN>
__device__ __forceinline__ void norm_bwd_coeffs(float s0, float s1, float r, float inv_c,
                                                float& c0, float& c1) {
  if (LN) {
    c0 = r * s0 * inv_c;
    c1 = r * s1 * inv_c;
  } else {
    // d inv / d x_j = -inv^2 x_j / (C rms), rms recomputed from x like the CPU backend.
    const float rms = sqrtf(s1 * inv_c);
    c0 = 0.f;
    c1 = rms > 0.f ? r * r * s0 * inv_c / rms : 0.f;
  }
}
// One element: returns d x (without the accumulated old value) and adds to the parameter
// gradient sums aw (dw) and ab (db, LN only).
template <bool LN>
__device__ __forceinline__ float norm_bwd_elem(float dy, float w, float x, float mu, float r,
                                               float c0, float c1, float& aw, float& ab) {
  const float g = dy * w;
  if (LN) {
    const float xh = (x - mu) * r;
    aw += dy * xh;
    ab += dy;
    return r * g - c0 - c1 * xh;
  }
  aw += dy * x * r;
  return r * g - c1 * x;
}

// Backward. dy, x, dx [N, C]; w [C]; LN: stat0 = mean, stat1 = rstd; RMS: stat1 = inv.
// dx = (accumulate ? dx : 0) + d. Row blockIdx of part [blocks, C or 2C] (scratch, f32) receives
// this block's sums over its rows of dy * xhat (LN) or dy * x * inv (RMS) in columns [0, C), and
// of dy in columns [C, 2C) when with_db (LN with a bias).
// dx may alias dy (each thread reads its columns of the row before writing them).
template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_bwd_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                    const float* stat0, const float* stat1, int64_t N, int C, bool accumulate) {
  __shared__ float red[2 * 2 * 32];
  int parity = 0;
  const int nvec = C / V;
  const float inv_c = 1.f / static_cast<float>(C);
  float wr[K][V], aw[K][V], ab[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = aw[k][i] = ab[k][i] = 0.f;
    if (j < nvec) load_pack<T, V>(w + j * V, wr[k]);
  }
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T *xr = x + n * C, *dyr = dy + n * C;
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float xv[K][V], gv[K][V];
    float s[2] = {0.f, 0.f};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
        load_pack<T, V>(dyr + j * V, gv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = gv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) norm_bwd_sums<LN>(s[0], s[1], gv[k][i] * wr[k][i], xv[k][i], mu, r);
    }
    block_sum<2>(s, red, parity);
    float c0, c1;
    norm_bwd_coeffs<LN>(s[0], s[1], r, inv_c, c0, c1);
    T* dxr = dx + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        float old[V];
        if (accumulate) {
          load_pack<T, V>(dxr + j * V, old);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) old[i] = 0.f;
        }
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i)
          o[i] = old[i] + norm_bwd_elem<LN>(gv[k][i], wr[k][i], xv[k][i], mu, r, c0, c1, aw[k][i],
                                            ab[k][i]);
        store_pack<T, V>(dxr + j * V, o);
      }
    }
  }
  float* pwr = part + static_cast<int64_t>(blockIdx.x) * (with_db ? 2 * C : C);
  float* pbr = LN && with_db ? pwr + C : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < nvec)
#pragma unroll
      for (int i = 0; i < V; ++i) {
        pwr[j * V + i] = aw[k][i];
        if (pbr) pbr[j * V + i] = ab[k][i];
      }
  }
}

// ---- narrow rows: one warp per row (C <= 32 * 4 packs in the forward, 1024 bf16 or 512 f32
// columns, and 32 * 3 packs in the backward) ----
// Same arithmetic as norm_fwd_kernel / norm_bwd_kernel, but a row is owned by one warp (lane l
// holds packs l + 32 k, k < K), so the row sums are warp shuffles with no block barrier and
// eight rows per block are in flight at once; the blocks of 96 threads the general kernels use
// for C = 768 spent most of their time waiting at the barrier of each row. The backward's
// parameter-gradient partials of the block's 8 warps are summed in shared memory in warp order
// (deterministic) and written as one partial row per block, like the general kernel.
constexpr int kWarpRowThreads = 256;

__device__ __forceinline__ float warp_allsum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    norm_fwd_warp_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b,
                         int64_t N, int C, float eps) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x & 31, nvec = C / V;
  const int64_t warps = int64_t(gridDim.x) * (kWarpRowThreads / 32);
  float wr[K][V], br[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = lane + 32 * k;
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = br[k][i] = 0.f;
    if (j < nvec) {
      load_pack<T, V>(w + j * V, wr[k]);
      if (b) load_pack<T, V>(b + j * V, br[k]);
    }
  }
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t n = int64_t(blockIdx.x) * (kWarpRowThreads / 32) + (threadIdx.x >> 5); n < N;
       n += warps) {
    const T* xr = x + n * C;
    float xv[K][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) s += LN ? xv[k][i] : xv[k][i] * xv[k][i];
    }
    s = warp_allsum(s);
    float mu = 0.f, r;
    if (LN) {
      mu = s * inv_c;
      float q = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (lane + 32 * k < nvec)
#pragma unroll
          for (int i = 0; i < V; ++i) q += (xv[k][i] - mu) * (xv[k][i] - mu);
      q = warp_allsum(q);
      r = rsqrtf(q * inv_c + eps);  // biased variance
    } else {
      r = 1.f / (sqrtf(s * inv_c) + eps);
    }
    if (lane == 0) {
      if (LN) stat0[n] = mu;
      stat1[n] = r;
    }
    T* yr = y + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) o[i] = (xv[k][i] - mu) * r * wr[k][i] + br[k][i];
        store_pack<T, V>(yr + j * V, o);
      }
    }
  }
}

// part [gridDim.x, C or 2C] like norm_bwd_kernel; dynamic shared memory: (with_db ? 2C : C)
// floats. dx may alias dy.
template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, K <= 2 ? 2 : 1)
    norm_bwd_warp_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                         const float* stat0, const float* stat1, int64_t N, int C,
                         bool accumulate) {
  constexpr int V = 16 / sizeof(T);
  extern __shared__ float sacc[];  // [C] dw partial, then [C] db partial
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nvec = C / V;
  const int64_t warps = int64_t(gridDim.x) * (kWarpRowThreads / 32);
  const float inv_c = 1.f / static_cast<float>(C);
  float wr[K][V], aw[K][V], ab[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = lane + 32 * k;
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = aw[k][i] = ab[k][i] = 0.f;
    if (j < nvec) load_pack<T, V>(w + j * V, wr[k]);
  }
  for (int64_t n = int64_t(blockIdx.x) * (kWarpRowThreads / 32) + warp; n < N; n += warps) {
    const T *xr = x + n * C, *dyr = dy + n * C;
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float xv[K][V], gv[K][V];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
        load_pack<T, V>(dyr + j * V, gv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = gv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) norm_bwd_sums<LN>(s0, s1, gv[k][i] * wr[k][i], xv[k][i], mu, r);
    }
    s0 = warp_allsum(s0);
    s1 = warp_allsum(s1);
    float c0, c1;
    norm_bwd_coeffs<LN>(s0, s1, r, inv_c, c0, c1);
    T* dxr = dx + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        float old[V];
        if (accumulate) {
          load_pack<T, V>(dxr + j * V, old);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) old[i] = 0.f;
        }
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i)
          o[i] = old[i] + norm_bwd_elem<LN>(gv[k][i], wr[k][i], xv[k][i], mu, r, c0, c1, aw[k][i],
                                            ab[k][i]);
        store_pack<T, V>(dxr + j * V, o);
      }
    }
  }
  // The block's partial: warps add their sums into shared memory one after another.
  const bool db_too = LN && with_db;
  for (int wi = 0; wi < kWarpRowThreads / 32; ++wi) {
    if (warp == wi) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = lane + 32 * k;
        if (j < nvec)
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const int c = j * V + i;
            sacc[c] = wi == 0 ? aw[k][i] : sacc[c] + aw[k][i];
            if (db_too) sacc[C + c] = wi == 0 ? ab[k][i] : sacc[C + c] + ab[k][i];
          }
      }
    }
    __syncthreads();
  }
  float* pr = part + static_cast<int64_t>(blockIdx.x) * (db_too ? 2 * C : C);
  for (int c = threadIdx.x; c < (db_too ? 2 * C : C); c += kWarpRowThreads) pr[c] = sacc[c];
}

// Column sums of partial rows, part [P, Ct] (f32, row-major), in a fixed order. Block (32, 32):
// threadIdx.x picks the column (coalesced), threadIdx.y strides over the rows
// [blockIdx.y * rows, ...). With out set, the block's sums go to out[blockIdx.y, Ct] (first
// level); otherwise they are added to dst0[c] (c < C0) or dst1[c - C0] (final level).
__global__ void sum_partials_kernel(float* out, float* dst0, float* dst1, int C0, const float* part,
                                    int P, int Ct, int rows) {
  __shared__ float acc[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int p0 = blockIdx.y * rows, p1 = min(P, p0 + rows);
  float s = 0.f;
  if (c < Ct)
    for (int p = p0 + threadIdx.y; p < p1; p += 32) s += part[static_cast<int64_t>(p) * Ct + c];
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < Ct) {
    float t = 0.f;
    for (int y = 0; y < 32; ++y) t += acc[y][threadIdx.x];
    if (out)
      out[static_cast<int64_t>(blockIdx.y) * Ct + c] = t;
    else if (c < C0)
      dst0[c] += t;
    else
      dst1[c - C0] += t;
  }
}

constexpr int kMaxSplits = 32;

// Scratch floats for P partial rows of Ct columns plus the first-level sums of reduce_partials.
size_t partial_floats(int64_t P, int Ct) {
  return static_cast<size_t>(P + kMaxSplits) * static_cast<size_t>(Ct);
}

// dst0[c] += sum_p part[p, c] (c < C0), dst1[c - C0] += ... (C0 <= c < Ct); part is the start of
// a scratch block of partial_floats(P, Ct). Many partial rows are first summed in up to 32
// row splits (enough blocks to keep the GPU busy even when Ct is a few hundred), then the splits.
void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct) {
  const unsigned cblocks = static_cast<unsigned>(cuda::ceil_div(Ct, 32));
  const float* src = part;
  int rows = P;
  if (P > 64) {
    const int splits = static_cast<int>(std::min<int64_t>(kMaxSplits, cuda::ceil_div(P, 32)));
    const int per = static_cast<int>(cuda::ceil_div(P, splits));
    float* level = part + static_cast<int64_t>(P) * Ct;
    sum_partials_kernel<<<dim3(cblocks, static_cast<unsigned>(cuda::ceil_div(P, per))),
                          dim3(32, 32), 0, cuda::stream()>>>(level, nullptr, nullptr, 0, part, P,
                                                             Ct, per);
    OFT_CUDA_LAUNCH_CHECK();
    src = level;
    rows = static_cast<int>(cuda::ceil_div(P, per));
  }
  sum_partials_kernel<<<dim3(cblocks, 1), dim3(32, 32), 0, cuda::stream()>>>(
      nullptr, dst0, dst1, C0, src, rows, Ct, rows);
  OFT_CUDA_LAUNCH_CHECK();
}

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
RowPlan plan_rows(int C, int vec, const char* op) {
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

template <class T, int V, int K, bool LN>
void launch_norm_fwd(const RowPlan& p, T* y, float* s0, float* s1, const T* x, const T* w,
                     const T* b, int64_t N, int C, float eps) {
  auto kernel = norm_fwd_kernel<T, V, K, LN>;
  const int blocks = persistent_blocks(kernel, p.threads, N);
  kernel<<<blocks, p.threads, 0, cuda::stream()>>>(y, s0, s1, x, w, b, N, C, eps);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int V, int K, bool LN>
void launch_norm_bwd(const RowPlan& p, T* dx, float* dw, float* db, const T* dy, const T* x,
                     const T* w, const float* s0, const float* s1, int64_t N, int C,
                     bool accumulate) {
  auto kernel = norm_bwd_kernel<T, V, K, LN>;
  const int blocks = persistent_blocks(kernel, p.threads, N);
  const bool with_db = LN && db;
  const int Ct = with_db ? 2 * C : C;
  float* part = static_cast<float*>(cuda::scratch(partial_floats(blocks, Ct) * sizeof(float)));
  kernel<<<blocks, p.threads, 0, cuda::stream()>>>(dx, part, with_db, dy, x, w, s0, s1, N, C,
                                                   accumulate);
  OFT_CUDA_LAUNCH_CHECK();
  reduce_partials(dw, db, C, part, blocks, Ct);
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

template <class T, int K, bool LN>
void launch_norm_fwd_warp(T* y, float* s0, float* s1, const T* x, const T* w, const T* b,
                          int64_t N, int C, float eps) {
  auto kernel = norm_fwd_warp_kernel<T, K, LN>;
  const int blocks = persistent_blocks(kernel, kWarpRowThreads, cuda::ceil_div(N, 8));
  kernel<<<blocks, kWarpRowThreads, 0, cuda::stream()>>>(y, s0, s1, x, w, b, N, C, eps);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int K, bool LN>
void launch_norm_bwd_warp(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w,
                          const float* s0, const float* s1, int64_t N, int C, bool accumulate) {
  auto kernel = norm_bwd_warp_kernel<T, K, LN>;
  const bool with_db = LN && db;
  const int Ct = with_db ? 2 * C : C;
  const size_t smem = static_cast<size_t>(Ct) * sizeof(float);
  int per_sm = 0;
  OFT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarpRowThreads,
                                                               smem));
  const int blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(cuda::ceil_div(N, 8), int64_t(std::max(per_sm, 1)) * cuda::sm_count())));
  float* part = static_cast<float*>(cuda::scratch(partial_floats(blocks, Ct) * sizeof(float)));
  kernel<<<blocks, kWarpRowThreads, smem, cuda::stream()>>>(dx, part, with_db, dy, x, w, s0, s1,
                                                            N, C, accumulate);
  OFT_CUDA_LAUNCH_CHECK();
  reduce_partials(dw, db, C, part, blocks, Ct);
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
RowPlan plan_rows_for(DType dt, int C, bool vec_ok, const char* op) {
  const int V = vec_ok ? 16 / static_cast<int>(dtype_size(dt)) : 1;
  RowPlan p = plan_rows(C, V, op);
  if (p.V == 1 && p.K > 1) {
    const int K = p.K <= 4 ? 4 : 16;
    p = {1, K, static_cast<int>(cuda::ceil_div(cuda::ceil_div(C, K), 32) * 32)};
  }
  return p;
}

void expect_act(const Tensor& t, DType dt, const char* what) {
  cuda::expect_float(t, what);
  OFT_CHECK(t.dtype() == dt, what, ": expected ", dtype_name(dt), " like the activations, got ",
            dtype_name(t.dtype()));
}

void expect_numel(const Tensor& t, int64_t n, const char* what) {
  OFT_CHECK(t.numel() == n, what, ": expected ", n, " elements, got ", shape_str(t.shape()));
}

// Shared validation of the row norms; returns N.
int64_t check_rows(const Tensor& x, const Tensor& w, const char* op) {
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  const int64_t C = w.numel();
  OFT_CHECK(C > 0 && x.numel() % C == 0 && x.dim(-1) == C, op, ": x ", shape_str(x.shape()),
            " does not have rows of ", C, " (the weight's size)");
  return x.numel() / C;
}

template <bool LN>
void norm_fwd(Tensor& y, Tensor* mean, Tensor& stat, const Tensor& x, const Tensor& w,
              const Tensor& b, double eps, const char* op) {
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  expect_act(y, x.dtype(), op);
  expect_numel(y, x.numel(), op);
  if (mean) {
    cuda::expect_dtype(*mean, DType::F32, op);
    expect_numel(*mean, N, op);
  }
  cuda::expect_dtype(stat, DType::F32, op);
  expect_numel(stat, N, op);
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    expect_numel(b, C, op);
  }
  if (N == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(x.raw()) && aligned16(y.raw()) &&
                      aligned16(w.raw()) && (!b.defined() || aligned16(b.raw()));
  const RowPlan p = plan_rows_for(x.dtype(), C, vec_ok, op);
  float* s0 = mean ? ptr<float>(*mean) : nullptr;
  float* s1 = ptr<float>(stat);
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    if (const int K = warp_row_packs<T>(C, vec_ok, 4)) {
      dispatch_k<4>(K, [&](auto k) {
        launch_norm_fwd_warp<T, decltype(k)::value, LN>(ptr<T>(y), s0, s1, ptr<T>(x), ptr<T>(w),
                                                        pb, N, C, static_cast<float>(eps));
      });
      return;
    }
    dispatch_vk<T>(p, [&](auto v, auto k) {
      launch_norm_fwd<T, decltype(v)::value, decltype(k)::value, LN>(
          p, ptr<T>(y), s0, s1, ptr<T>(x), ptr<T>(w), pb, N, C, static_cast<float>(eps));
    });
  });
}

template <bool LN>
void norm_bwd(Tensor& dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
              const Tensor& w, const Tensor* mean, const Tensor& stat, bool accumulate,
              const char* op) {
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  expect_act(dx, x.dtype(), op);
  expect_numel(dx, x.numel(), op);
  expect_act(dy, x.dtype(), op);
  expect_numel(dy, x.numel(), op);
  cuda::expect_dtype(dw, DType::F32, op);
  expect_numel(dw, C, op);
  if (db) {
    cuda::expect_dtype(*db, DType::F32, op);
    expect_numel(*db, C, op);
  }
  if (mean) {
    cuda::expect_dtype(*mean, DType::F32, op);
    expect_numel(*mean, N, op);
  }
  cuda::expect_dtype(stat, DType::F32, op);
  expect_numel(stat, N, op);
  if (N == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(x.raw()) && aligned16(dx.raw()) &&
                      aligned16(dy.raw()) && aligned16(w.raw());
  const RowPlan p = plan_rows_for(x.dtype(), C, vec_ok, op);
  const float* s0 = mean ? ptr<float>(*mean) : nullptr;
  const float* s1 = ptr<float>(stat);
  float* pdb = db ? ptr<float>(*db) : nullptr;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    if (const int K = warp_row_packs<T>(C, vec_ok, 3)) {
      dispatch_k<3>(K, [&](auto k) {
        launch_norm_bwd_warp<T, decltype(k)::value, LN>(ptr<T>(dx), ptr<float>(dw), pdb,
                                                        ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0, s1,
                                                        N, C, accumulate);
      });
      return;
    }
    dispatch_vk<T>(p, [&](auto v, auto k) {
      launch_norm_bwd<T, decltype(v)::value, decltype(k)::value, LN>(
          p, ptr<T>(dx), ptr<float>(dw), pdb, ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0, s1, N, C,
          accumulate);
    });
  });
}

// ------------------------------------------------------------------ QK-norm

// Lanes per head segment: the packs of a segment rounded up to a power of two, at most 32.
int group_size(int packs) {
  int gs = 1;
  while (gs < packs && gs < 32) gs *= 2;
  return gs;
}

// Sum over the GS lanes of a group (groups are aligned inside the warp; all lanes call it).
__device__ __forceinline__ float group_sum(float v, int gs) {
  for (int off = gs >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Forward over segments s = (n, ph), ph = p * H + h (p: 0 = q, 1 = k): out = x * inv * w_p,
// inv[n, ph] = 1 / (rms + eps). qkv, out [N, 3C]; w_q, w_k [D]; inv [N, 2H]. Warps iterate in
// lockstep so the shuffles never see a partial warp.
template <class T, int V>
__global__ void __launch_bounds__(256)
    qk_norm_fwd_kernel(T* out, float* inv, const T* qkv, const T* wq, const T* wk, int64_t N, int H,
                       int D, int gs, float eps) {
  const int lane = threadIdx.x & 31, gl = lane & (gs - 1), gpw = 32 / gs;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t total = N * 2 * H;
  const int nv = D / V, C = H * D;
  for (int64_t s0 = warp * gpw; s0 < total; s0 += nwarps * gpw) {
    const int64_t s = s0 + lane / gs;
    const bool valid = s < total;
    const int64_t n = valid ? s / (2 * H) : 0;
    const int ph = valid ? static_cast<int>(s % (2 * H)) : 0;
    const int p = ph / H, h = ph % H;
    const int64_t off = n * 3 * C + static_cast<int64_t>(p) * C + static_cast<int64_t>(h) * D;
    float ss = 0.f;
    if (valid)
      for (int j = gl; j < nv; j += gs) {
        float f[V];
        load_pack<T, V>(qkv + off + j * V, f);
#pragma unroll
        for (int i = 0; i < V; ++i) ss += f[i] * f[i];
      }
    ss = group_sum(ss, gs);
    if (!valid) continue;
    const float iv = 1.f / (sqrtf(ss / static_cast<float>(D)) + eps);
    if (gl == 0) inv[s] = iv;
    const T* w = p == 0 ? wq : wk;
    for (int j = gl; j < nv; j += gs) {
      float f[V], wv[V];
      load_pack<T, V>(qkv + off + j * V, f);
      load_pack<T, V>(w + j * V, wv);
#pragma unroll
      for (int i = 0; i < V; ++i) f[i] = f[i] * iv * wv[i];
      store_pack<T, V>(out + off + j * V, f);
    }
  }
}

// Backward for part p = blockIdx.y (0: q with wq, 1: k with wk) over segments s = (n, h):
// dqkv = inv * dout * w - kk * x (kk from d inv / dx); dw partial of this block
// part[blockIdx.x, p * D + d] (rows of 2D) = sum over its segments of dout * x * inv.
// Lanes hold their columns' dw in registers (at most MAXJ packs per lane); the block's groups are
// summed through shared memory [groups][D] in group order.
template <class T, int V, int MAXJ>
__global__ void __launch_bounds__(256)
    qk_norm_bwd_kernel(T* dqkv, float* part, const T* dout, const T* qkv, const T* wq, const T* wk,
                       const float* inv, int64_t N, int H, int D, int gs) {
  extern __shared__ float sm[];  // [blockDim.x / gs][D]
  const int p = blockIdx.y;
  const int lane = threadIdx.x & 31, gl = lane & (gs - 1), gpw = 32 / gs;
  const int group = threadIdx.x / gs;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t total = N * H;
  const int nv = D / V, C = H * D;
  const T* w = p == 0 ? wq : wk;
  float wr[MAXJ][V], acc[MAXJ][V];
#pragma unroll
  for (int m = 0; m < MAXJ; ++m) {
    const int j = gl + m * gs;
#pragma unroll
    for (int i = 0; i < V; ++i) wr[m][i] = acc[m][i] = 0.f;
    if (j < nv) load_pack<T, V>(w + j * V, wr[m]);
  }
  for (int64_t s0 = warp * gpw; s0 < total; s0 += nwarps * gpw) {
    const int64_t s = s0 + lane / gs;
    const bool valid = s < total;
    const int64_t n = valid ? s / H : 0;
    const int h = valid ? static_cast<int>(s % H) : 0;
    const int64_t off = n * 3 * C + static_cast<int64_t>(p) * C + static_cast<int64_t>(h) * D;
    float xv[MAXJ][V], gv[MAXJ][V];
    float gx = 0.f, ss = 0.f;
#pragma unroll
    for (int m = 0; m < MAXJ; ++m) {
      const int j = gl + m * gs;
      if (valid && j < nv) {
        load_pack<T, V>(qkv + off + j * V, xv[m]);
        load_pack<T, V>(dout + off + j * V, gv[m]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[m][i] = gv[m][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) {
        gx += gv[m][i] * wr[m][i] * xv[m][i];
        ss += xv[m][i] * xv[m][i];
      }
    }
    gx = group_sum(gx, gs);
    ss = group_sum(ss, gs);
    if (!valid) continue;
    const float iv = inv[n * 2 * H + static_cast<int64_t>(p) * H + h];
    const float rms = sqrtf(ss / static_cast<float>(D));
    const float kk = rms > 0.f ? iv * iv * gx / (static_cast<float>(D) * rms) : 0.f;
#pragma unroll
    for (int m = 0; m < MAXJ; ++m) {
      const int j = gl + m * gs;
      if (j < nv) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) {
          o[i] = iv * gv[m][i] * wr[m][i] - kk * xv[m][i];
          acc[m][i] += gv[m][i] * xv[m][i] * iv;
        }
        store_pack<T, V>(dqkv + off + j * V, o);
      }
    }
  }
  // Block reduction of the per-group dw partials, in group order.
  float* mine = sm + static_cast<int64_t>(group) * D;
#pragma unroll
  for (int m = 0; m < MAXJ; ++m) {
    const int j = gl + m * gs;
    if (j < nv)
#pragma unroll
      for (int i = 0; i < V; ++i) mine[j * V + i] = acc[m][i];
  }
  __syncthreads();
  const int groups = blockDim.x / gs;
  float* dst = part + static_cast<int64_t>(blockIdx.x) * 2 * D + static_cast<int64_t>(p) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float t = 0.f;
    for (int g = 0; g < groups; ++g) t += sm[g * D + d];
    dst[d] = t;
  }
}

struct QkShape {
  int64_t N;
  int H, D, C;
};

QkShape check_qk(const Tensor& qkv, const Tensor& wq, const Tensor& wk, int64_t H, const char* op) {
  cuda::expect_float(qkv, op);
  OFT_CHECK(qkv.ndim() == 2 && qkv.dim(1) % 3 == 0 && H > 0 && (qkv.dim(1) / 3) % H == 0, op,
            ": qkv ", shape_str(qkv.shape()), " is not [N, 3C] with C divisible by H = ", H);
  QkShape s{qkv.dim(0), static_cast<int>(H), static_cast<int>(qkv.dim(1) / 3 / H),
            static_cast<int>(qkv.dim(1) / 3)};
  expect_act(wq, qkv.dtype(), op);
  expect_act(wk, qkv.dtype(), op);
  expect_numel(wq, s.D, op);
  expect_numel(wk, s.D, op);
  return s;
}

// dst[:, 2C:3C] = src[:, 2C:3C] for [N, 3C] buffers (the v part, untouched by QK-norm).
void copy_v(Tensor& dst, const Tensor& src, const QkShape& s) {
  if (dst.raw() == src.raw() || s.N == 0) return;
  const size_t es = dtype_size(src.dtype());
  const size_t pitch = static_cast<size_t>(3) * s.C * es;
  const size_t off = static_cast<size_t>(2) * s.C * es;
  OFT_CUDA_CHECK(cudaMemcpy2DAsync(
      static_cast<char*>(dst.raw()) + off, pitch, static_cast<const char*>(src.raw()) + off, pitch,
      s.C * es, static_cast<size_t>(s.N), cudaMemcpyDeviceToDevice, cuda::stream()));
}

constexpr int kQkThreads = 256;

}  // namespace

// ---------------------------------------------------------------------- ops

void CudaBackend::layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                                const Tensor& w, const Tensor& b, double eps) {
  norm_fwd<true>(y, &mean, rstd, x, w, b, eps, "layernorm_fwd");
}

void CudaBackend::layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                const Tensor& x, const Tensor& w, const Tensor& mean,
                                const Tensor& rstd, bool accumulate) {
  norm_bwd<true>(dx, dw, db.defined() ? &db : nullptr, dy, x, w, &mean, rstd, accumulate,
                 "layernorm_bwd");
}

void CudaBackend::rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w,
                              double eps) {
  norm_fwd<false>(y, nullptr, inv, x, w, Tensor(), eps, "rmsnorm_fwd");
}

void CudaBackend::rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                              const Tensor& w, const Tensor& inv, bool accumulate) {
  norm_bwd<false>(dx, dw, nullptr, dy, x, w, nullptr, inv, accumulate, "rmsnorm_bwd");
}

void CudaBackend::qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq,
                              const Tensor& wk, int64_t H, double eps) {
  const char* op = "qk_norm_fwd";
  const QkShape s = check_qk(qkv, wq, wk, H, op);
  expect_act(out, qkv.dtype(), op);
  OFT_CHECK(out.shape() == qkv.shape(), op, ": out ", shape_str(out.shape()), " vs qkv ",
            shape_str(qkv.shape()));
  cuda::expect_dtype(inv, DType::F32, op);
  expect_numel(inv, s.N * 2 * s.H, op);
  if (s.N == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(qkv.dtype()));
  const bool vec_ok = s.D % vec == 0 && aligned16(qkv.raw()) && aligned16(out.raw()) &&
                      aligned16(wq.raw()) && aligned16(wk.raw());
  const int V = vec_ok ? vec : 1;
  const int gs = group_size(s.D / V);
  const int64_t segments = s.N * 2 * s.H;
  const int64_t warps = cuda::ceil_div(segments, 32 / gs);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(
      cuda::ceil_div(warps, kQkThreads / 32), static_cast<int64_t>(cuda::sm_count()) * 16));
  OFT_DISPATCH_FLOAT(qkv.dtype(), op, {
    if (vec_ok)
      qk_norm_fwd_kernel<T, 16 / sizeof(T)><<<blocks, kQkThreads, 0, cuda::stream()>>>(
          ptr<T>(out), ptr<float>(inv), ptr<T>(qkv), ptr<T>(wq), ptr<T>(wk), s.N, s.H, s.D, gs,
          static_cast<float>(eps));
    else
      qk_norm_fwd_kernel<T, 1><<<blocks, kQkThreads, 0, cuda::stream()>>>(
          ptr<T>(out), ptr<float>(inv), ptr<T>(qkv), ptr<T>(wq), ptr<T>(wk), s.N, s.H, s.D, gs,
          static_cast<float>(eps));
    OFT_CUDA_LAUNCH_CHECK();
  });
  copy_v(out, qkv, s);
}

void CudaBackend::qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout,
                              const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                              const Tensor& inv, int64_t H) {
  const char* op = "qk_norm_bwd";
  const QkShape s = check_qk(qkv, wq, wk, H, op);
  expect_act(dqkv, qkv.dtype(), op);
  expect_act(dout, qkv.dtype(), op);
  OFT_CHECK(dqkv.shape() == qkv.shape() && dout.shape() == qkv.shape(), op, ": dqkv ",
            shape_str(dqkv.shape()), " and dout ", shape_str(dout.shape()), " must be ",
            shape_str(qkv.shape()));
  cuda::expect_dtype(inv, DType::F32, op);
  expect_numel(inv, s.N * 2 * s.H, op);
  cuda::expect_dtype(dwq, DType::F32, op);
  cuda::expect_dtype(dwk, DType::F32, op);
  expect_numel(dwq, s.D, op);
  expect_numel(dwk, s.D, op);
  if (s.N == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(qkv.dtype()));
  const bool vec_ok = s.D % vec == 0 && aligned16(qkv.raw()) && aligned16(dqkv.raw()) &&
                      aligned16(dout.raw()) && aligned16(wq.raw()) && aligned16(wk.raw());
  const int V = vec_ok ? vec : 1;
  const int nv = s.D / V;
  const int gs = group_size(nv);
  const int maxj = static_cast<int>(cuda::ceil_div(nv, gs));
  OFT_CHECK(maxj <= 4, op, ": head width D = ", s.D, " is too large for the CUDA kernel (at most ",
            32 * 4 * V, " for this dtype and alignment)");
  const int64_t segments = s.N * s.H;
  const int64_t warps = cuda::ceil_div(segments, 32 / gs);
  const int blocks = static_cast<int>(std::min<int64_t>(
      cuda::ceil_div(warps, kQkThreads / 32), static_cast<int64_t>(cuda::sm_count()) * 4));
  const size_t smem = static_cast<size_t>(kQkThreads / gs) * s.D * sizeof(float);
  float* part = static_cast<float*>(cuda::scratch(partial_floats(blocks, 2 * s.D) * sizeof(float)));
  const dim3 grid(static_cast<unsigned>(blocks), 2);
  OFT_DISPATCH_FLOAT(qkv.dtype(), op, {
    constexpr int VV = 16 / sizeof(T);
    auto args = [&](auto kernel) {
      kernel<<<grid, kQkThreads, smem, cuda::stream()>>>(ptr<T>(dqkv), part, ptr<T>(dout),
                                                         ptr<T>(qkv), ptr<T>(wq), ptr<T>(wk),
                                                         ptr<float>(inv), s.N, s.H, s.D, gs);
    };
    if (vec_ok && maxj == 1)
      args(qk_norm_bwd_kernel<T, VV, 1>);
    else if (vec_ok)
      args(qk_norm_bwd_kernel<T, VV, 4>);
    else if (maxj == 1)
      args(qk_norm_bwd_kernel<T, 1, 1>);
    else
      args(qk_norm_bwd_kernel<T, 1, 4>);
    OFT_CUDA_LAUNCH_CHECK();
  });
  reduce_partials(ptr<float>(dwq), ptr<float>(dwk), s.D, part, blocks, 2 * s.D);
  copy_v(dqkv, dout, s);
}

}  // namespace oft::ops
