// Elementwise and bias ops of the CUDA backend: fill, add, add_scaled, axpy, scale, dot,
// convert, add_bias, bias_grad.
//
// Shape of the kernels: all of these are memory-bound, so each thread moves 16 bytes per load
// (float4 / 8 x bf16) through grid-stride loops over "packs" of kVec elements, with a scalar
// loop for the tail; when a pointer is not aligned to the pack size (slices, odd offsets) the
// host picks the same kernel with packs of one element. Arithmetic is fp32 whatever the storage
// type; bf16 results are rounded once (nearest even).
//
// dot: per-thread fp32 sums over a fixed grid (kDotBlocks blocks, independent of the device),
// warp-shuffle + shared-memory reduction to one f32 partial per block, then the host sums the
// partials in double in index order: the result is deterministic run to run.
//
// bias_grad: dbias[C] (f32) += column sums of dy[N, C], one launch, no atomics on the values:
// each block takes a tile of 32 x kVec columns and a chunk of rows (8 warps stride over the rows,
// four rows in flight per warp, each lane accumulates kVec columns in registers, the 8 warps are
// combined through shared memory in a fixed order) and writes one f32 partial row per chunk into
// scratch; the last block of each column tile to finish sums the tile's chunk partials in a fixed
// order into dbias (partials.cuh, last_arrival). With a single chunk (small N) the block adds
// straight into dbias. (The separate two-level sum of the partials cost two more launches of
// about 4 us each per call; in one launch, on an H200 at the GPT-2 shape, the step's 48 bias
// gradients take 1.20 against 1.25 ms.)
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::Pack;
using cuda::ptr;

constexpr int kThreads = 256;

// A host float in storage type T (round to nearest even for bf16).
template <class T>
T host_cast(float v) {
  if constexpr (std::is_same_v<T, float>)
    return v;
  else
    return __float2bfloat16_rn(v);
}

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for a grid-stride loop over `items` work items: enough to fill the GPU, no more.
unsigned grid_for(int64_t items) {
  const int64_t cap = int64_t(cuda::sm_count() > 0 ? cuda::sm_count() : 132) * 16;
  const int64_t g = cuda::ceil_div(items, kThreads);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(g, cap)));
}

// ---- fill / scale / add / axpy / convert: one grid-stride pattern ----
// Each functor maps the fp32 values of its inputs at one index to the output value; the kernels
// below only differ in how many tensors they read.

template <class T, int kN>
__global__ void fill_kernel(T* __restrict__ x, T value, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  Pack<T, kN> p;
#pragma unroll
  for (int j = 0; j < kN; ++j) p.v[j] = value;
  for (int64_t i = tid; i < npack; i += stride) reinterpret_cast<Pack<T, kN>*>(x)[i] = p;
  for (int64_t i = npack * kN + tid; i < n; i += stride) x[i] = value;
}

// x *= s
template <class T, int kN>
__global__ void scale_kernel(T* __restrict__ x, float s, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  for (int64_t i = tid; i < npack; i += stride) {
    Pack<T, kN> p = reinterpret_cast<const Pack<T, kN>*>(x)[i];
#pragma unroll
    for (int j = 0; j < kN; ++j) p.v[j] = from_f32<T>(to_f32(p.v[j]) * s);
    reinterpret_cast<Pack<T, kN>*>(x)[i] = p;
  }
  for (int64_t i = npack * kN + tid; i < n; i += stride) x[i] = from_f32<T>(to_f32(x[i]) * s);
}

// out = alpha * a + beta * b (out may alias a or b: every element is read before it is written,
// by one thread). Written as fma(beta, b, alpha * a), so that alpha = 1 rounds exactly like
// copying a and then axpy(out, b, beta), and alpha = beta = 1 is exactly a + b (add).
template <class T, int kN>
__global__ void add_scaled_kernel(T* out, const T* a, const T* b, float alpha, float beta,
                                  int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  for (int64_t i = tid; i < npack; i += stride) {
    const Pack<T, kN> pa = reinterpret_cast<const Pack<T, kN>*>(a)[i];
    const Pack<T, kN> pb = reinterpret_cast<const Pack<T, kN>*>(b)[i];
    Pack<T, kN> po;
#pragma unroll
    for (int j = 0; j < kN; ++j)
      po.v[j] = from_f32<T>(fmaf(beta, to_f32(pb.v[j]), alpha * to_f32(pa.v[j])));
    reinterpret_cast<Pack<T, kN>*>(out)[i] = po;
  }
  for (int64_t i = npack * kN + tid; i < n; i += stride)
    out[i] = from_f32<T>(fmaf(beta, to_f32(b[i]), alpha * to_f32(a[i])));
}

// y += alpha * x (y and x may have different dtypes; no aliasing between distinct tensors
// other than y == x, which is elementwise-safe)
template <class Y, class X, int kN>
__global__ void axpy_kernel(Y* y, const X* x, float alpha, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  for (int64_t i = tid; i < npack; i += stride) {
    Pack<Y, kN> py = reinterpret_cast<const Pack<Y, kN>*>(y)[i];
    const Pack<X, kN> px = reinterpret_cast<const Pack<X, kN>*>(x)[i];
#pragma unroll
    for (int j = 0; j < kN; ++j) py.v[j] = from_f32<Y>(to_f32(py.v[j]) + alpha * to_f32(px.v[j]));
    reinterpret_cast<Pack<Y, kN>*>(y)[i] = py;
  }
  for (int64_t i = npack * kN + tid; i < n; i += stride)
    y[i] = from_f32<Y>(to_f32(y[i]) + alpha * to_f32(x[i]));
}

// dst = src converted (round to nearest even for bf16)
template <class D, class S, int kN>
__global__ void convert_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  for (int64_t i = tid; i < npack; i += stride) {
    const Pack<S, kN> ps = reinterpret_cast<const Pack<S, kN>*>(src)[i];
    Pack<D, kN> pd;
#pragma unroll
    for (int j = 0; j < kN; ++j) pd.v[j] = from_f32<D>(to_f32(ps.v[j]));
    reinterpret_cast<Pack<D, kN>*>(dst)[i] = pd;
  }
  for (int64_t i = npack * kN + tid; i < n; i += stride) dst[i] = from_f32<D>(to_f32(src[i]));
}

// Elements of T in a 16-byte pack.
template <class T>
constexpr int vec_of() {
  return static_cast<int>(16 / sizeof(T));
}

// ---- dot ----
constexpr int kDotBlocks = 1024;  // fixed: the summation order must not depend on the device

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// partial[blockIdx.x] = sum over this block's grid-stride share of a[i] * b[i]
template <class T, int kN>
__global__ void dot_kernel(float* __restrict__ partial, const T* __restrict__ a,
                           const T* __restrict__ b, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t npack = n / kN;
  float s = 0.f;
  for (int64_t i = tid; i < npack; i += stride) {
    const Pack<T, kN> pa = reinterpret_cast<const Pack<T, kN>*>(a)[i];
    const Pack<T, kN> pb = reinterpret_cast<const Pack<T, kN>*>(b)[i];
    float t = 0.f;
#pragma unroll
    for (int j = 0; j < kN; ++j) t = fmaf(to_f32(pa.v[j]), to_f32(pb.v[j]), t);
    s += t;
  }
  for (int64_t i = npack * kN + tid; i < n; i += stride) s = fmaf(to_f32(a[i]), to_f32(b[i]), s);
  __shared__ float warp_part[kThreads / 32];
  s = warp_sum(s);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_part[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kThreads / 32 ? warp_part[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) partial[blockIdx.x] = s;
  }
}

// ---- add_bias ----
// y[N, C] += bias[C]; blockIdx.y strides over rows, threads over the C / kN packs of a row.
template <class T, int kN>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t N,
                                int64_t C) {
  const int64_t cpacks = C / kN;  // the host guarantees C % kN == 0
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    T* row = y + r * C;
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cpacks;
         c += int64_t(gridDim.x) * blockDim.x) {
      Pack<T, kN> py = reinterpret_cast<const Pack<T, kN>*>(row)[c];
      const Pack<T, kN> pb = reinterpret_cast<const Pack<T, kN>*>(bias)[c];
#pragma unroll
      for (int j = 0; j < kN; ++j) py.v[j] = from_f32<T>(to_f32(py.v[j]) + to_f32(pb.v[j]));
      reinterpret_cast<Pack<T, kN>*>(row)[c] = py;
    }
  }
}

// ---- bias_grad ----
constexpr int kBgWarps = 8;  // warps per block (they stride over rows)

// Block (32, kBgWarps); blockIdx.x = column tile of 32 * kN columns, blockIdx.y = chunk of
// `rows_per_chunk` rows. With one chunk the block adds its column sums into dbias; otherwise it
// writes them to part[blockIdx.y * C + c], and the last block of its column tile to arrive
// (last_arrival) adds the tile's chunk sums into dbias in a fixed order (warp w sums chunks
// w, w + kBgWarps, ..., then the warps in order).
template <class T, int kN>
__global__ void bias_grad_kernel(float* __restrict__ dbias, float* part, const T* __restrict__ dy,
                                 int64_t N, int64_t C, int64_t rows_per_chunk,
                                 unsigned* counters) {
  __shared__ float red[kBgWarps][32 * kN];
  __shared__ bool last;
  const int lane = threadIdx.x, warp = threadIdx.y, t = warp * 32 + lane;
  const int chunks = gridDim.y;
  const int64_t c0 = (int64_t(blockIdx.x) * 32 + lane) * kN;  // first column of this lane
  const int64_t r_begin = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t r_end = min(N, r_begin + rows_per_chunk);
  float acc[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) acc[j] = 0.f;
  if (c0 < C) {  // C % kN == 0, so a pack is all in or all out
    // Four rows per step: their loads are issued before any is summed (a warp would otherwise
    // keep one 512-byte load in flight, too few to cover the memory latency).
    constexpr int kU = 4;
    int64_t r = r_begin + warp;
    for (; r + (kU - 1) * kBgWarps < r_end; r += kU * kBgWarps) {
      Pack<T, kN> p[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        p[u] = *reinterpret_cast<const Pack<T, kN>*>(dy + (r + u * kBgWarps) * C + c0);
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int j = 0; j < kN; ++j) acc[j] += to_f32(p[u].v[j]);
    }
    for (; r < r_end; r += kBgWarps) {
      const Pack<T, kN> p = *reinterpret_cast<const Pack<T, kN>*>(dy + r * C + c0);
#pragma unroll
      for (int j = 0; j < kN; ++j) acc[j] += to_f32(p.v[j]);
    }
  }
  // The warps' sums combined in a fixed order: thread t finishes columns t, t + 256, ... of the
  // tile, into dbias (one chunk) or its chunk's partial row.
  auto combine = [&](bool into_dbias) {
#pragma unroll
    for (int j = 0; j < kN; ++j) red[warp][lane * kN + j] = acc[j];
    __syncthreads();
    for (int k = t; k < 32 * kN; k += 32 * kBgWarps) {
      const int64_t c = int64_t(blockIdx.x) * 32 * kN + k;
      if (c >= C) continue;
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kBgWarps; ++w) s += red[w][k];
      if (into_dbias)
        dbias[c] += s;
      else
        part[int64_t(blockIdx.y) * C + c] = s;
    }
  };
  combine(chunks == 1);
  if (chunks == 1 || !last_arrival(counters + blockIdx.x, chunks, last)) return;
  // Last block of the tile: acc = this lane's columns summed over chunks warp, warp + 8, ...
#pragma unroll
  for (int j = 0; j < kN; ++j) acc[j] = 0.f;
  if (c0 < C) {
    // kN % 4 == 0 (bf16 8, f32 4): 16-byte loads (C % kN == 0 keeps them aligned), four chunks
    // in flight per step.
    int q = warp;
    if constexpr (kN % 4 == 0) {
      constexpr int kU = 4;
      for (; q + (kU - 1) * kBgWarps < chunks; q += kU * kBgWarps) {
        float4 v[kU][kN / 4];
#pragma unroll
        for (int u = 0; u < kU; ++u)
#pragma unroll
          for (int j = 0; j < kN / 4; ++j)
            v[u][j] = __ldcg(reinterpret_cast<const float4*>(part + int64_t(q + u * kBgWarps) * C + c0) + j);
#pragma unroll
        for (int u = 0; u < kU; ++u)
#pragma unroll
          for (int j = 0; j < kN / 4; ++j) {
            acc[4 * j] += v[u][j].x;
            acc[4 * j + 1] += v[u][j].y;
            acc[4 * j + 2] += v[u][j].z;
            acc[4 * j + 3] += v[u][j].w;
          }
      }
    }
    for (; q < chunks; q += kBgWarps)
#pragma unroll
      for (int j = 0; j < kN; ++j) acc[j] += __ldcg(part + int64_t(q) * C + c0 + j);
  }
  combine(true);  // red is free: last_arrival's barriers follow every read of the first use
}

template <class T, int kN>
void bias_grad_launch(float* dbias, const T* dy, int64_t N, int64_t C) {
  const int64_t tiles = cuda::ceil_div(C, 32 * kN);
  const int64_t target = int64_t(std::max(cuda::sm_count(), 1)) * 4;
  // Enough chunks to fill the GPU, but at least 64 rows (8 per warp) in each.
  int64_t chunks =
      std::max<int64_t>(1, std::min(cuda::ceil_div(target, tiles), cuda::ceil_div(N, 64)));
  chunks = std::min<int64_t>(chunks, 65535);
  const int64_t rows_per_chunk = cuda::ceil_div(N, chunks);
  chunks = cuda::ceil_div(N, rows_per_chunk);
  const dim3 block(32, kBgWarps);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
  float* part = chunks > 1 ? static_cast<float*>(cuda::scratch(size_t(chunks) * C * sizeof(float)))
                           : nullptr;
  unsigned* counters = chunks > 1 ? tile_counters(tiles) : nullptr;
  bias_grad_kernel<T, kN>
      <<<grid, block, 0, cuda::stream()>>>(dbias, part, dy, N, C, rows_per_chunk, counters);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T>
void bias_grad_impl(float* dbias, const T* dy, int64_t N, int64_t C) {
  constexpr int kV = vec_of<T>();
  if (C % kV == 0 && aligned(dy, 16))
    bias_grad_launch<T, kV>(dbias, dy, N, C);
  else
    bias_grad_launch<T, 1>(dbias, dy, N, C);
}

template <class A, class B>
constexpr int pack_of() {
  // 16 bytes of the wider type: f32 with anything -> 4, bf16 only -> 8.
  return vec_of<A>() < vec_of<B>() ? vec_of<A>() : vec_of<B>();
}

template <class Y, class X>
void axpy_impl(const Tensor& y, const Tensor& x, float alpha) {
  constexpr int kN = pack_of<Y, X>();
  const int64_t n = y.numel();
  Y* py = ptr<Y>(y);
  const X* px = ptr<X>(x);
  const bool vec = aligned(py, sizeof(Y) * kN) && aligned(px, sizeof(X) * kN);
  if (vec)
    axpy_kernel<Y, X, kN><<<grid_for(n / kN + 1), kThreads, 0, cuda::stream()>>>(py, px, alpha, n);
  else
    axpy_kernel<Y, X, 1><<<grid_for(n), kThreads, 0, cuda::stream()>>>(py, px, alpha, n);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class D, class S>
void convert_impl(const Tensor& dst, const Tensor& src) {
  constexpr int kN = pack_of<D, S>();
  const int64_t n = dst.numel();
  D* pd = ptr<D>(dst);
  const S* ps = ptr<S>(src);
  const bool vec = aligned(pd, sizeof(D) * kN) && aligned(ps, sizeof(S) * kN);
  if (vec)
    convert_kernel<D, S, kN><<<grid_for(n / kN + 1), kThreads, 0, cuda::stream()>>>(pd, ps, n);
  else
    convert_kernel<D, S, 1><<<grid_for(n), kThreads, 0, cuda::stream()>>>(pd, ps, n);
  OFT_CUDA_LAUNCH_CHECK();
}

void expect_same_cuda(const Tensor& a, const Tensor& b, const char* what) {
  cuda::expect_float(a, what);
  cuda::expect_float(b, what);
  OFT_ASSERT(a.numel() == b.numel() && a.dtype() == b.dtype(), what, ": ", shape_str(a.shape()),
             " ", dtype_name(a.dtype()), " vs ", shape_str(b.shape()), " ",
             dtype_name(b.dtype()));
}

}  // namespace

void CudaBackend::fill(Tensor& x, double value) {
  cuda::expect_float(x, "fill");
  const int64_t n = x.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "fill", {
    constexpr int kN = vec_of<T>();
    T* p = ptr<T>(x);
    const T v = host_cast<T>(float(value));
    if (aligned(p, 16))
      fill_kernel<T, kN><<<grid_for(n / kN + 1), kThreads, 0, cuda::stream()>>>(p, v, n);
    else
      fill_kernel<T, 1><<<grid_for(n), kThreads, 0, cuda::stream()>>>(p, v, n);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  add_scaled(out, a, 1.0, b, 1.0);
}

void CudaBackend::add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                             double beta) {
  expect_same_cuda(out, a, "add_scaled");
  expect_same_cuda(out, b, "add_scaled");
  const int64_t n = out.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(out.dtype(), "add_scaled", {
    constexpr int kN = vec_of<T>();
    T* po = ptr<T>(out);
    const T *pa = ptr<T>(a), *pb = ptr<T>(b);
    const float al = float(alpha), be = float(beta);
    const bool vec = aligned(po, 16) && aligned(pa, 16) && aligned(pb, 16);
    if (vec)
      add_scaled_kernel<T, kN>
          <<<grid_for(n / kN + 1), kThreads, 0, cuda::stream()>>>(po, pa, pb, al, be, n);
    else
      add_scaled_kernel<T, 1><<<grid_for(n), kThreads, 0, cuda::stream()>>>(po, pa, pb, al, be, n);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::axpy(Tensor& y, const Tensor& x, double alpha) {
  cuda::expect_float(y, "axpy y");
  cuda::expect_float(x, "axpy x");
  OFT_ASSERT(y.numel() == x.numel(), "axpy: y ", shape_str(y.shape()), " vs x ",
             shape_str(x.shape()));
  if (y.numel() == 0) return;
  const float al = float(alpha);
  const bool yf = y.dtype() == DType::F32, xf = x.dtype() == DType::F32;
  if (yf && xf) axpy_impl<float, float>(y, x, al);
  else if (yf) axpy_impl<float, __nv_bfloat16>(y, x, al);
  else if (xf) axpy_impl<__nv_bfloat16, float>(y, x, al);
  else axpy_impl<__nv_bfloat16, __nv_bfloat16>(y, x, al);
}

void CudaBackend::scale(Tensor& x, double s) {
  cuda::expect_float(x, "scale");
  const int64_t n = x.numel();
  if (n == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), "scale", {
    constexpr int kN = vec_of<T>();
    T* p = ptr<T>(x);
    if (aligned(p, 16))
      scale_kernel<T, kN><<<grid_for(n / kN + 1), kThreads, 0, cuda::stream()>>>(p, float(s), n);
    else
      scale_kernel<T, 1><<<grid_for(n), kThreads, 0, cuda::stream()>>>(p, float(s), n);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

double CudaBackend::dot(const Tensor& a, const Tensor& b) {
  expect_same_cuda(a, b, "dot");
  const int64_t n = a.numel();
  if (n == 0) return 0.0;
  float* partial = static_cast<float*>(cuda::scratch(kDotBlocks * sizeof(float)));
  OFT_DISPATCH_FLOAT(a.dtype(), "dot", {
    constexpr int kN = vec_of<T>();
    const T *pa = ptr<T>(a), *pb = ptr<T>(b);
    if (aligned(pa, 16) && aligned(pb, 16))
      dot_kernel<T, kN><<<kDotBlocks, kThreads, 0, cuda::stream()>>>(partial, pa, pb, n);
    else
      dot_kernel<T, 1><<<kDotBlocks, kThreads, 0, cuda::stream()>>>(partial, pa, pb, n);
    OFT_CUDA_LAUNCH_CHECK();
  });
  thread_local std::vector<float> host(kDotBlocks);
  OFT_CUDA_CHECK(cudaMemcpyAsync(host.data(), partial, kDotBlocks * sizeof(float),
                                 cudaMemcpyDeviceToHost, cuda::stream()));
  cuda::synchronize();
  double total = 0.0;
  for (float s : host) total += double(s);
  return total;
}

void CudaBackend::convert(Tensor& dst, const Tensor& src) {
  cuda::expect_float(dst, "convert dst");
  cuda::expect_float(src, "convert src");
  OFT_ASSERT(dst.numel() == src.numel(), "convert: ", shape_str(dst.shape()), " <- ",
             shape_str(src.shape()));
  if (dst.numel() == 0) return;
  const bool df = dst.dtype() == DType::F32, sf = src.dtype() == DType::F32;
  if (dst.dtype() == src.dtype()) {
    if (dst.raw() != src.raw())
      OFT_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                                     cuda::stream()));
  } else if (df && !sf) {
    convert_impl<float, __nv_bfloat16>(dst, src);
  } else {
    convert_impl<__nv_bfloat16, float>(dst, src);
  }
}

void CudaBackend::add_bias(Tensor& y, const Tensor& bias) {
  cuda::expect_float(y, "add_bias y");
  cuda::expect_float(bias, "add_bias bias");
  OFT_ASSERT(y.dtype() == bias.dtype(), "add_bias: y is ", dtype_name(y.dtype()), ", bias is ",
             dtype_name(bias.dtype()));
  const int64_t C = bias.numel();
  OFT_ASSERT(C > 0 && y.numel() % C == 0, "add_bias: y ", shape_str(y.shape()),
             " is not a whole number of rows of bias ", shape_str(bias.shape()));
  const int64_t N = y.numel() / C;
  if (N == 0) return;
  OFT_DISPATCH_FLOAT(y.dtype(), "add_bias", {
    constexpr int kV = vec_of<T>();
    T* py = ptr<T>(y);
    const T* pb = ptr<T>(bias);
    const bool vec = C % kV == 0 && aligned(py, 16) && aligned(pb, 16);
    const int kN = vec ? kV : 1;
    const int64_t cpacks = C / kN;
    // Threads per block: the packs of one row rounded up to a warp, at most kThreads.
    const int threads = static_cast<int>(std::min<int64_t>(kThreads, (cpacks + 31) / 32 * 32));
    const int64_t gx = cuda::ceil_div(cpacks, threads);
    const int64_t want = int64_t(std::max(cuda::sm_count(), 1)) * 2048 / threads;
    const int64_t gy =
        std::max<int64_t>(1, std::min({N, cuda::ceil_div(want, gx), int64_t(65535)}));
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
    if (vec)
      add_bias_kernel<T, kV><<<grid, threads, 0, cuda::stream()>>>(py, pb, N, C);
    else
      add_bias_kernel<T, 1><<<grid, threads, 0, cuda::stream()>>>(py, pb, N, C);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::bias_grad(Tensor& dbias, const Tensor& dy) {
  cuda::expect_dtype(dbias, DType::F32, "bias_grad dbias (parameter gradients are f32)");
  cuda::expect_float(dy, "bias_grad dy");
  const int64_t C = dbias.numel();
  OFT_ASSERT(C > 0 && dy.numel() % C == 0, "bias_grad: dy ", shape_str(dy.shape()),
             " is not a whole number of rows of dbias ", shape_str(dbias.shape()));
  const int64_t N = dy.numel() / C;
  if (N == 0) return;
  OFT_DISPATCH_FLOAT(dy.dtype(), "bias_grad",
                     { bias_grad_impl<T>(ptr<float>(dbias), ptr<T>(dy), N, C); });
}

}  // namespace oft::ops
