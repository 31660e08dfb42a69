// CUDA per-head pieces of the attention variants: per-head gating, group means, causal running
// means (shaped attention) and column copies (the gates' grouped linear maps are in
// grouped_linear.cu).
// Activations are the act dtype (f32 or bf16), parameter gradients f32, arithmetic fp32. Every
// reduction is deterministic: fixed partitions summed in a fixed order, no atomics.
//
// Shapes of the kernels (all small, memory-bound ops):
// - head_gate: elementwise, one 16-byte pack per thread (packs never straddle heads). dgate:
//   blocks own chunks of at most RC rows inside one gate's rows; threads own columns and sum
//   dout * x down the chunk, a warp per head sums its D columns; a second kernel sums the chunks
//   of each gate (skipped when a gate has one chunk). dx = dout * gate runs after dgate, so dx
//   may alias dout. With one gate per token row (and D a power-of-two number of packs), one
//   kernel does both: the D / V threads of a (row, head) reduce with shuffles
//   (head_gate_bwd_token_kernel).
// - group_mean: one thread per output (fwd) / per input element (bwd).
// - causal_mean: a scan over T in chunks of 32 rows: kernel 1 sums each (sequence, chunk,
//   column pack); kernel 2 adds the sums of the earlier (fwd) or later (bwd) chunks and scans
//   its chunk. In place (y == x, dx == dy) works: a thread reads each element before writing it.
// - copy_columns: one thread per 16-byte pack of columns (= or +=). A kernel, not
//   cudaMemcpy2DAsync: the bias-column layout's dW copy (3072 rows of 3 KiB at GPT-2's fc) took
//   longer as a 2-D copy node in the step's CUDA graph than as this kernel.
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
using cuda::expect_act;
using cuda::expect_shape2;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t threads, int per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, cuda::ceil_div(threads, per_block)));
}

// ------------------------------------------------------------------ head gate

// out[n, c] = x[n, c] * gate[n / rpg, c / D]; one pack of V columns (inside one head) per thread.
template <class T, int V>
__global__ void head_gate_kernel(T* out, const T* x, const T* gate, int64_t N, int C, int H, int D,
                                 int64_t rpg) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int cv = C / V;
  if (t >= N * cv) return;
  const int64_t n = t / cv;
  const int c = static_cast<int>(t % cv) * V;
  const float g = to_f32(gate[(n / rpg) * H + c / D]);
  float f[V];
  load_pack<T, V>(x + n * C + c, f);
#pragma unroll
  for (int i = 0; i < V; ++i) f[i] *= g;
  store_pack<T, V>(out + n * C + c, f);
}

// Chunk q = (gate row r, chunk k): rows [r*rpg + k*RC, min((r+1)*rpg, r*rpg + (k+1)*RC)).
// Sums dout * x over the chunk's rows per column (threads own columns; colsum in shared memory
// [C]), then per head over its D columns (a warp per head). Writes dgate[r, h] directly when a
// gate has one chunk (cpg == 1), else the f32 partial part[q * H + h].
template <class T, int V>
__global__ void head_gate_dgate_kernel(T* dgate, float* part, const T* dout, const T* x, int64_t N,
                                       int C, int H, int D, int64_t rpg, int64_t RC, int64_t cpg) {
  extern __shared__ float colsum[];
  const int64_t q = blockIdx.x, r = q / cpg, k = q % cpg;
  const int64_t n0 = r * rpg + k * RC, n1 = std::min(r * rpg + rpg, n0 + RC);
  for (int j = threadIdx.x; j < C / V; j += blockDim.x) {
    float acc[V] = {};
    for (int64_t n = n0; n < n1; ++n) {
      float a[V], b[V];
      load_pack<T, V>(dout + n * C + j * V, a);
      load_pack<T, V>(x + n * C + j * V, b);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += a[i] * b[i];
    }
#pragma unroll
    for (int i = 0; i < V; ++i) colsum[j * V + i] = acc[i];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int h = warp; h < H; h += nw) {
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += colsum[h * D + d];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) {
      if (cpg == 1)
        dgate[r * H + h] = from_f32<T>(s);
      else
        part[q * H + h] = s;
    }
  }
}

// dgate[r, h] = sum over the cpg chunks of gate row r of part[(r*cpg + k) * H + h].
template <class T>
__global__ void head_gate_dgate_finish_kernel(T* dgate, const float* part, int64_t R, int H,
                                              int64_t cpg) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= R * H) return;
  const int64_t r = t / H;
  const int h = static_cast<int>(t % H);
  float s = 0.f;
  for (int64_t k = 0; k < cpg; ++k) s += part[(r * cpg + k) * H + h];
  dgate[t] = from_f32<T>(s);
}

// One gate per token row (rows_per_gate 1, conditional_per_token): dgate and dx in one pass.
// One thread per pack of V columns; the G = D / V threads of a (row, head) are consecutive lanes
// of one warp (G a power of two <= 32): they sum dout * x over the head with shuffles, the first
// writes dgate[n, h], and each writes its pack of dx = dout * gate[n, h] after reading dout
// (dx may alias dout).
template <class T, int V, int G>
__global__ void head_gate_bwd_token_kernel(T* dx, T* __restrict__ dgate, const T* dout,
                                           const T* __restrict__ x, const T* __restrict__ gate,
                                           int64_t packs) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Lanes past the end stay for the shuffles (packs is a multiple of G: whole groups are out).
  const bool ok = t < packs;
  const int64_t nh = t / G;  // n * H + h
  float a[V] = {}, b[V] = {};
  if (ok) {
    load_pack<T, V>(dout + t * V, a);
    load_pack<T, V>(x + t * V, b);
  }
  float dot = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) dot += a[i] * b[i];
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off, G);
  if (!ok) return;
  if (t % G == 0) dgate[nh] = from_f32<T>(dot);
  const float gv = to_f32(gate[nh]);
#pragma unroll
  for (int i = 0; i < V; ++i) a[i] *= gv;
  store_pack<T, V>(dx + t * V, a);
}

// ------------------------------------------------------------------ group mean

// y[r, h] = mean of x[r*k + i, h], i < k.
template <class T>
__global__ void group_mean_fwd_kernel(T* y, const T* x, int64_t R, int H, int64_t k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= R * H) return;
  const int64_t r = t / H;
  const int h = static_cast<int>(t % H);
  float s = 0.f;
  for (int64_t i = 0; i < k; ++i) s += to_f32(x[(r * k + i) * H + h]);
  y[t] = from_f32<T>(s / static_cast<float>(k));
}

// dx[n, h] = dy[n / k, h] / k.
template <class T>
__global__ void group_mean_bwd_kernel(T* dx, const T* dy, int64_t N, int H, int64_t k,
                                      float inv_k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= N * H) return;
  const int64_t n = t / H;
  const int h = static_cast<int>(t % H);
  dx[t] = from_f32<T>(to_f32(dy[(n / k) * H + h]) * inv_k);
}

// ------------------------------------------------------------------ causal mean

constexpr int kScanChunk = 32;

// Value scanned at row i (0-based inside the sequence): x_i (fwd) or dy_i / (i + 1) (bwd).
template <bool BWD>
__device__ __forceinline__ float scan_term(float v, int64_t i) {
  return BWD ? v / static_cast<float>(i + 1) : v;
}

// sums[(b * nq + q) * C + c] = sum of the scanned terms of rows [q*L, min(T, (q+1)*L)) of
// sequence b, column c; one thread per (b, q, pack of V columns). in: [B*T, C].
template <class T, int V, bool BWD>
__global__ void causal_chunk_sums_kernel(float* sums, const T* in, int64_t B, int64_t Tlen, int C,
                                         int64_t nq) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int cv = C / V;
  if (t >= B * nq * cv) return;
  const int j = static_cast<int>(t % cv);
  const int64_t bq = t / cv, q = bq % nq, b = bq / nq;
  const int64_t i0 = q * kScanChunk, i1 = std::min<int64_t>(Tlen, i0 + kScanChunk);
  float acc[V] = {};
  for (int64_t i = i0; i < i1; ++i) {
    float f[V];
    load_pack<T, V>(in + (b * Tlen + i) * C + j * V, f);
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] += scan_term<BWD>(f[k], i);
  }
#pragma unroll
  for (int k = 0; k < V; ++k) sums[bq * C + j * V + k] = acc[k];
}

// fwd: out[b*T + i] = (sum_{j <= i} in[b*T + j]) / (i + 1); bwd: out[b*T + j] =
// sum_{i >= j} in[b*T + i] / (i + 1). Each thread starts from the sums of the other chunks
// (earlier ones for fwd, later ones for bwd) and scans its own chunk. out may alias in.
template <class T, int V, bool BWD>
__global__ void causal_scan_kernel(T* out, const T* in, const float* sums, int64_t B, int64_t Tlen,
                                   int C, int64_t nq) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int cv = C / V;
  if (t >= B * nq * cv) return;
  const int j = static_cast<int>(t % cv);
  const int64_t bq = t / cv, q = bq % nq, b = bq / nq;
  float s[V] = {};
  const int64_t qa = BWD ? q + 1 : 0, qb = BWD ? nq : q;
  for (int64_t p = qa; p < qb; ++p)
#pragma unroll
    for (int k = 0; k < V; ++k) s[k] += sums[(b * nq + p) * C + j * V + k];
  const int64_t i0 = q * kScanChunk, i1 = std::min<int64_t>(Tlen, i0 + kScanChunk);
  for (int64_t step = 0; step < i1 - i0; ++step) {
    const int64_t i = BWD ? i1 - 1 - step : i0 + step;
    const int64_t off = (b * Tlen + i) * C + j * V;
    float f[V];
    load_pack<T, V>(in + off, f);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      s[k] += scan_term<BWD>(f[k], i);
      f[k] = BWD ? s[k] : s[k] / static_cast<float>(i + 1);
    }
    store_pack<T, V>(out + off, f);
  }
}

template <class T, int V, bool BWD>
void causal_scan(T* out, const T* in, int64_t B, int64_t Tlen, int C) {
  const int64_t nq = cuda::ceil_div(Tlen, kScanChunk);
  const int64_t threads = B * nq * (C / V);
  float* sums = static_cast<float*>(cuda::scratch(static_cast<size_t>(B * nq) * C * sizeof(float)));
  causal_chunk_sums_kernel<T, V, BWD>
      <<<blocks_for(threads), kThreads, 0, cuda::stream()>>>(sums, in, B, Tlen, C, nq);
  OFT_CUDA_LAUNCH_CHECK();
  causal_scan_kernel<T, V, BWD>
      <<<blocks_for(threads), kThreads, 0, cuda::stream()>>>(out, in, sums, B, Tlen, C, nq);
  OFT_CUDA_LAUNCH_CHECK();
}

template <bool BWD>
void causal_mean(Tensor& out, const Tensor& in, int64_t seq, const char* op) {
  cuda::expect_float(in, op);
  expect_act(out, in.dtype(), op);
  OFT_CHECK(in.ndim() == 2 && seq > 0 && in.dim(0) % seq == 0, op, ": input ",
            shape_str(in.shape()), " is not [B*T, C] with T = ", seq);
  expect_shape2(out, in.dim(0), in.dim(1), op);
  const int64_t B = in.dim(0) / seq;
  const int C = static_cast<int>(in.dim(1));
  if (B == 0 || C == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(in.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(in.raw()) && aligned16(out.raw());
  OFT_DISPATCH_FLOAT(in.dtype(), op, {
    if (vec_ok)
      causal_scan<T, 16 / sizeof(T), BWD>(ptr<T>(out), ptr<T>(in), B, seq, C);
    else
      causal_scan<T, 1, BWD>(ptr<T>(out), ptr<T>(in), B, seq, C);
  });
}

// ------------------------------------------------------------------ copy columns

// dst[n, dc + c] = (ACC: +=) src[n, sc + c], c < ncols; one pack per thread.
template <class T, int V, bool ACC>
__global__ void copy_columns_kernel(T* dst, int64_t ldd, const T* src, int64_t lds, int64_t N,
                                    int64_t ncols) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t cv = ncols / V;
  if (t >= N * cv) return;
  const int64_t n = t / cv, c = (t % cv) * V;
  if constexpr (!ACC) {
    if constexpr (V * sizeof(T) == 16)
      *reinterpret_cast<uint4*>(dst + n * ldd + c) =
          *reinterpret_cast<const uint4*>(src + n * lds + c);
    else
      dst[n * ldd + c] = src[n * lds + c];
    return;
  }
  float a[V], b[V];
  load_pack<T, V>(dst + n * ldd + c, a);
  load_pack<T, V>(src + n * lds + c, b);
#pragma unroll
  for (int i = 0; i < V; ++i) a[i] += b[i];
  store_pack<T, V>(dst + n * ldd + c, a);
}

// Common checks of head_gate_fwd / bwd; returns {N, C, H, D}.
struct GateShape {
  int64_t N;
  int C, H, D;
  int64_t R;
};

GateShape check_gate(const Tensor& x, const Tensor& gate, int64_t rpg, const char* op) {
  cuda::expect_float(x, op);
  expect_act(gate, x.dtype(), op);
  OFT_CHECK(x.ndim() == 2 && gate.ndim() == 2, op, ": x ", shape_str(x.shape()), " and gate ",
            shape_str(gate.shape()), " must be 2-D");
  GateShape s{x.dim(0), static_cast<int>(x.dim(1)), static_cast<int>(gate.dim(1)), 0, gate.dim(0)};
  OFT_CHECK(s.H > 0 && s.C % s.H == 0, op, ": ", s.C, " columns do not split into ", s.H, " heads");
  s.D = s.C / s.H;
  OFT_CHECK(rpg > 0 && s.R * rpg == s.N, op, ": gate rows ", s.R, " x rows_per_gate ", rpg,
            " != ", s.N, " rows");
  return s;
}

template <class T>
void launch_head_gate(T* out, const T* x, const T* gate, const GateShape& s, int64_t rpg) {
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = s.D % VEC == 0 && aligned16(out) && aligned16(x);
  if (vec)
    head_gate_kernel<T, VEC><<<blocks_for(s.N * (s.C / VEC)), kThreads, 0, cuda::stream()>>>(
        out, x, gate, s.N, s.C, s.H, s.D, rpg);
  else
    head_gate_kernel<T, 1><<<blocks_for(s.N * s.C), kThreads, 0, cuda::stream()>>>(
        out, x, gate, s.N, s.C, s.H, s.D, rpg);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace

// ---------------------------------------------------------------------- ops

void CudaBackend::head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate,
                                int64_t rows_per_gate) {
  const char* op = "head_gate_fwd";
  const GateShape s = check_gate(x, gate, rows_per_gate, op);
  expect_act(out, x.dtype(), op);
  expect_shape2(out, s.N, s.C, op);
  if (s.N == 0 || s.C == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    launch_head_gate<T>(ptr<T>(out), ptr<T>(x), ptr<T>(gate), s, rows_per_gate);
  });
}

void CudaBackend::head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x,
                                const Tensor& gate, int64_t rows_per_gate) {
  const char* op = "head_gate_bwd";
  const GateShape s = check_gate(x, gate, rows_per_gate, op);
  expect_act(dx, x.dtype(), op);
  expect_act(dout, x.dtype(), op);
  expect_act(dgate, x.dtype(), op);
  expect_shape2(dx, s.N, s.C, op);
  expect_shape2(dout, s.N, s.C, op);
  expect_shape2(dgate, s.R, s.H, op);
  if (s.N == 0 || s.C == 0) return;
  if (rows_per_gate == 1) {
    bool done = false;
    OFT_DISPATCH_FLOAT(x.dtype(), op, {
      constexpr int VEC = 16 / sizeof(T);
      const int G = s.D / VEC;
      if (s.D % VEC == 0 && G <= 32 && (G & (G - 1)) == 0 && aligned16(dout.raw()) &&
          aligned16(x.raw()) && aligned16(dx.raw())) {
        const int64_t packs = s.N * s.C / VEC;
        auto launch = [&](auto g) {
          head_gate_bwd_token_kernel<T, VEC, decltype(g)::value>
              <<<blocks_for(packs), kThreads, 0, cuda::stream()>>>(
                  ptr<T>(dx), ptr<T>(dgate), ptr<T>(dout), ptr<T>(x), ptr<T>(gate), packs);
        };
        switch (G) {
          case 1: launch(std::integral_constant<int, 1>{}); break;
          case 2: launch(std::integral_constant<int, 2>{}); break;
          case 4: launch(std::integral_constant<int, 4>{}); break;
          case 8: launch(std::integral_constant<int, 8>{}); break;
          case 16: launch(std::integral_constant<int, 16>{}); break;
          default: launch(std::integral_constant<int, 32>{}); break;
        }
        OFT_CUDA_LAUNCH_CHECK();
        done = true;
      }
    });
    if (done) return;
  }
  OFT_CHECK(static_cast<size_t>(s.C) * sizeof(float) <= 48 * 1024, op, ": rows of ", s.C,
            " columns are too wide for the CUDA kernel (at most 12288)");
  // Chunks of at most RC rows, inside one gate's rows, so that about 4 blocks per SM run.
  const int64_t RC = std::max<int64_t>(
      1, std::min(rows_per_gate, cuda::ceil_div(s.N, 4 * static_cast<int64_t>(cuda::sm_count()))));
  const int64_t cpg = cuda::ceil_div(rows_per_gate, RC), chunks = s.R * cpg;
  float* part =
      cpg > 1
          ? static_cast<float*>(cuda::scratch(static_cast<size_t>(chunks) * s.H * sizeof(float)))
          : nullptr;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec = s.C % VEC == 0 && aligned16(dout.raw()) && aligned16(x.raw());
    const int V = vec ? VEC : 1;
    const int threads =
        static_cast<int>(std::clamp<int64_t>(cuda::ceil_div(s.C / V, 32) * 32, 32, kThreads));
    const size_t smem = static_cast<size_t>(s.C) * sizeof(float);
    if (vec)
      head_gate_dgate_kernel<T, VEC>
          <<<static_cast<unsigned>(chunks), threads, smem, cuda::stream()>>>(
              ptr<T>(dgate), part, ptr<T>(dout), ptr<T>(x), s.N, s.C, s.H, s.D, rows_per_gate, RC,
              cpg);
    else
      head_gate_dgate_kernel<T, 1>
          <<<static_cast<unsigned>(chunks), threads, smem, cuda::stream()>>>(
              ptr<T>(dgate), part, ptr<T>(dout), ptr<T>(x), s.N, s.C, s.H, s.D, rows_per_gate, RC,
              cpg);
    OFT_CUDA_LAUNCH_CHECK();
    if (cpg > 1) {
      head_gate_dgate_finish_kernel<T><<<blocks_for(s.R * s.H), kThreads, 0, cuda::stream()>>>(
          ptr<T>(dgate), part, s.R, s.H, cpg);
      OFT_CUDA_LAUNCH_CHECK();
    }
    // After dgate (stream order): dx may alias dout.
    launch_head_gate<T>(ptr<T>(dx), ptr<T>(dout), ptr<T>(gate), s, rows_per_gate);
  });
}

void CudaBackend::group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) {
  const char* op = "group_mean_fwd";
  cuda::expect_float(x, op);
  expect_act(y, x.dtype(), op);
  OFT_CHECK(y.ndim() == 2 && k > 0, op, ": y ", shape_str(y.shape()), " is not [R, H] (k = ", k,
            ")");
  const int64_t R = y.dim(0);
  const int H = static_cast<int>(y.dim(1));
  expect_shape2(x, R * k, H, op);
  if (R * H == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    group_mean_fwd_kernel<T>
        <<<blocks_for(R * H), kThreads, 0, cuda::stream()>>>(ptr<T>(y), ptr<T>(x), R, H, k);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) {
  const char* op = "group_mean_bwd";
  cuda::expect_float(dy, op);
  expect_act(dx, dy.dtype(), op);
  OFT_CHECK(dy.ndim() == 2 && k > 0, op, ": dy ", shape_str(dy.shape()), " is not [R, H] (k = ", k,
            ")");
  const int64_t R = dy.dim(0);
  const int H = static_cast<int>(dy.dim(1));
  expect_shape2(dx, R * k, H, op);
  if (R * H == 0) return;
  OFT_DISPATCH_FLOAT(dy.dtype(), op, {
    group_mean_bwd_kernel<T><<<blocks_for(R * k * H), kThreads, 0, cuda::stream()>>>(
        ptr<T>(dx), ptr<T>(dy), R * k, H, k, static_cast<float>(1.0 / static_cast<double>(k)));
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) {
  causal_mean<false>(y, x, T, "causal_mean_fwd");
}

void CudaBackend::causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) {
  causal_mean<true>(dx, dy, T, "causal_mean_bwd");
}

void CudaBackend::copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col,
                               int64_t ncols, bool accumulate) {
  const char* op = "copy_columns";
  cuda::expect_float(dst, op);
  expect_act(src, dst.dtype(), op);
  OFT_CHECK(dst.ndim() == 2 && src.ndim() == 2 && dst.dim(0) == src.dim(0), op, ": dst ",
            shape_str(dst.shape()), " and src ", shape_str(src.shape()),
            " must be 2-D with the same rows");
  const int64_t N = dst.dim(0), Wd = dst.dim(1), Ws = src.dim(1);
  OFT_CHECK(
      ncols >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + ncols <= Wd && src_col + ncols <= Ws,
      op, ": columns [", dst_col, ", +", ncols, ") of ", Wd, " / [", src_col, ", +", ncols, ") of ",
      Ws, " out of range");
  if (N == 0 || ncols == 0) return;
  const size_t es = dtype_size(dst.dtype());
  char* pd = static_cast<char*>(dst.raw()) + dst_col * es;
  const char* ps = static_cast<const char*>(src.raw()) + src_col * es;
  if (!accumulate && pd == ps && Wd == Ws) return;
  OFT_DISPATCH_FLOAT(dst.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec =
        ncols % VEC == 0 && Wd % VEC == 0 && Ws % VEC == 0 && aligned16(pd) && aligned16(ps);
    auto launch = [&](auto v, auto acc) {
      constexpr int V = decltype(v)::value;
      copy_columns_kernel<T, V, decltype(acc)::value>
          <<<blocks_for(N * (ncols / V)), kThreads, 0, cuda::stream()>>>(
              reinterpret_cast<T*>(pd), Wd, reinterpret_cast<const T*>(ps), Ws, N, ncols);
    };
    using Acc = std::true_type;
    using Set = std::false_type;
    if (vec)
      accumulate ? launch(std::integral_constant<int, VEC>{}, Acc{})
                 : launch(std::integral_constant<int, VEC>{}, Set{});
    else
      accumulate ? launch(std::integral_constant<int, 1>{}, Acc{})
                 : launch(std::integral_constant<int, 1>{}, Set{});
    OFT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace oft::ops
