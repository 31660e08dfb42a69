// CUDA per-head pieces of the attention variants: grouped (per-head) linear maps for gates,
// per-head gating, group means, causal running means (shaped attention) and column copies.
// Activations are the act dtype (f32 or bf16), parameter gradients f32, arithmetic fp32. Every
// reduction is deterministic: fixed partitions summed in a fixed order, no atomics.
//
// Shapes of the kernels (all small, memory-bound ops):
// - grouped_linear_fwd: one thread per output y[n, g*O + o], a dot product of I values read in
//   16-byte packs (x rows and w stay in L1/L2). Backward dx: one thread per dx[n, g*I + i],
//   O terms. dw / db: split-K over rows: block (split, g) stages tiles of RT rows of x[:, g] and
//   dy[:, g] in shared memory, each thread owns fixed outputs (o, i) of w[g] and accumulates
//   them in shared memory; per-split partials are summed over splits by a second kernel. For
//   O <= 4 (gates) one kernel does dx, dw and db in a single pass over the rows instead:
//   threads own 16-byte column packs, blocks own row chunks (grouped_linear_bwd_rows_kernel).
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
// - copy_columns: cudaMemcpy2DAsync, or a packed += kernel when accumulating.
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

constexpr int kThreads = 256;

unsigned blocks_for(int64_t threads, int per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, cuda::ceil_div(threads, per_block)));
}

void expect_act(const Tensor& t, DType dt, const char* what) {
  cuda::expect_float(t, what);
  OFT_CHECK(t.dtype() == dt, what, ": expected ", dtype_name(dt), " like the activations, got ",
            dtype_name(t.dtype()));
}

void expect_shape2(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  OFT_CHECK(t.ndim() == 2 && t.dim(0) == rows && t.dim(1) == cols, what, ": expected [", rows, ", ",
            cols, "], got ", shape_str(t.shape()));
}

// ------------------------------------------------------------------ grouped linear

// y[n, g*O + o] = b[g*O + o] + sum_i x[n, g*I + i] w[g, o, i]; one thread per output.
template <class T, int V>
__global__ void grouped_linear_fwd_kernel(T* y, const T* x, const T* w, const T* b, int64_t N,
                                          int G, int O, int I) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int GO = G * O;
  if (t >= N * GO) return;
  const int64_t n = t / GO;
  const int go = static_cast<int>(t % GO), g = go / O;
  const T* xr = x + n * G * I + static_cast<int64_t>(g) * I;
  const T* wr = w + static_cast<int64_t>(go) * I;
  float acc = b ? to_f32(b[go]) : 0.f;
  for (int i = 0; i < I; i += V) {
    float xv[V], wv[V];
    load_pack<T, V>(xr + i, xv);
    load_pack<T, V>(wr + i, wv);
#pragma unroll
    for (int k = 0; k < V; ++k) acc += xv[k] * wv[k];
  }
  y[t] = from_f32<T>(acc);
}

// dx[n, g*I + i] (+)= sum_o dy[n, g*O + o] w[g, o, i]; one thread per dx element.
template <class T>
__global__ void grouped_linear_dx_kernel(T* dx, const T* dy, const T* w, int64_t N, int G, int O,
                                         int I, bool accumulate) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int GI = G * I;
  if (t >= N * GI) return;
  const int64_t n = t / GI;
  const int gi = static_cast<int>(t % GI), g = gi / I, i = gi % I;
  const T* dyr = dy + n * G * O + static_cast<int64_t>(g) * O;
  const T* wg = w + static_cast<int64_t>(g) * O * I + i;
  float acc = 0.f;
  for (int o = 0; o < O; ++o) acc += to_f32(dyr[o]) * to_f32(wg[static_cast<int64_t>(o) * I]);
  if (accumulate) acc += to_f32(dx[t]);
  dx[t] = from_f32<T>(acc);
}

// Split-K partials of dw[g] = dy[:, g]^T x[:, g] and db[g] = sum_n dy[:, g] over the rows
// [split * rows_per_split, ...) of block (split = blockIdx.x, g = blockIdx.y):
// part[(split * G + g) * (O*I + O) + t], t < O*I: (o, i) = (t / I, t % I); t >= O*I: db[o].
// Shared memory: acc [O*I + O] (each entry owned by one thread), x tile [RT][I], dy tile [RT][O].
template <class T>
__global__ void grouped_linear_dw_kernel(float* part, const T* dy, const T* x, int64_t N, int G,
                                         int O, int I, int64_t rows_per_split, int RT) {
  extern __shared__ float sm[];
  const int g = blockIdx.y, OI = O * I, nout = OI + O;
  float* acc = sm;
  float* xs = acc + nout;
  float* gsh = xs + RT * I;
  for (int t = threadIdx.x; t < nout; t += blockDim.x) acc[t] = 0.f;
  const int64_t n0 = blockIdx.x * rows_per_split, n1 = std::min<int64_t>(N, n0 + rows_per_split);
  for (int64_t r0 = n0; r0 < n1; r0 += RT) {
    const int rows = static_cast<int>(std::min<int64_t>(RT, n1 - r0));
    __syncthreads();  // the previous tile is consumed
    for (int e = threadIdx.x; e < rows * I; e += blockDim.x)
      xs[e] = to_f32(x[(r0 + e / I) * G * I + static_cast<int64_t>(g) * I + e % I]);
    for (int e = threadIdx.x; e < rows * O; e += blockDim.x)
      gsh[e] = to_f32(dy[(r0 + e / O) * G * O + static_cast<int64_t>(g) * O + e % O]);
    __syncthreads();
    for (int t = threadIdx.x; t < nout; t += blockDim.x) {
      float a = acc[t];
      if (t < OI) {
        const int o = t / I, i = t % I;
        for (int r = 0; r < rows; ++r) a += gsh[r * O + o] * xs[r * I + i];
      } else {
        const int o = t - OI;
        for (int r = 0; r < rows; ++r) a += gsh[r * O + o];
      }
      acc[t] = a;
    }
  }
  float* dst = part + (static_cast<int64_t>(blockIdx.x) * G + g) * nout;
  for (int t = threadIdx.x; t < nout; t += blockDim.x) dst[t] = acc[t];
}

// Fast path for small O (gate networks: O = 1 per head): dx, dw and db in one pass over the rows.
// Block `chunk` owns rows [chunk * rpc, ...); thread p owns the V columns p*V.. of every row
// (group g = p*V / I, i0 = p*V % I; packs never straddle groups, I % V == 0) and
//   dx[n, cols] (+)= sum_o dy[n, g*O + o] w[g, o, i0..]            (when dx is given)
// while accumulating dy[n, g*O + o] * x[n, cols] (dw) and dy[n, g*O + o] (db, written by the
// group's first pack) over its rows: the chunk's partial in grouped_linear_dw_kernel's layout.
// One read of x and dy and one read-write of dx (the split-K kernel above re-reads them per
// tile through shared memory with a quarter of its threads busy).
template <class T, int V, int O>
__global__ void grouped_linear_bwd_rows_kernel(T* __restrict__ dx, float* __restrict__ part,
                                               const T* __restrict__ dy, const T* __restrict__ x,
                                               const T* __restrict__ w, int64_t N, int G, int I,
                                               int64_t rpc, bool accumulate) {
  const int p = threadIdx.x;
  if (p >= G * I / V) return;
  const int c0 = p * V, g = c0 / I, i0 = c0 % I, C = G * I, GO = G * O;
  float wv[O][V];
  if (dx != nullptr) {
#pragma unroll
    for (int o = 0; o < O; ++o) load_pack<T, V>(w + (static_cast<int64_t>(g) * O + o) * I + i0, wv[o]);
  }
  float dw[O][V], db[O];
#pragma unroll
  for (int o = 0; o < O; ++o) {
    db[o] = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k) dw[o][k] = 0.f;
  }
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * rpc, n1 = std::min(N, n0 + rpc);
#pragma unroll 4
  for (int64_t n = n0; n < n1; ++n) {
    float d[O], xv[V];
#pragma unroll
    for (int o = 0; o < O; ++o) d[o] = to_f32(dy[n * GO + g * O + o]);
    load_pack<T, V>(x + n * C + c0, xv);
#pragma unroll
    for (int o = 0; o < O; ++o) {
      db[o] += d[o];
#pragma unroll
      for (int k = 0; k < V; ++k) dw[o][k] += d[o] * xv[k];
    }
    if (dx != nullptr) {
      float r[V];
      if (accumulate) {
        load_pack<T, V>(dx + n * C + c0, r);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] = 0.f;
      }
#pragma unroll
      for (int o = 0; o < O; ++o)
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] += d[o] * wv[o][k];
      store_pack<T, V>(dx + n * C + c0, r);
    }
  }
  const int nout = O * I + O;
  float* dst = part + (static_cast<int64_t>(blockIdx.x) * G + g) * nout;
#pragma unroll
  for (int o = 0; o < O; ++o)
#pragma unroll
    for (int k = 0; k < V; ++k) dst[o * I + i0 + k] = dw[o][k];
  if (i0 == 0) {
#pragma unroll
    for (int o = 0; o < O; ++o) dst[O * I + o] = db[o];
  }
}

// dw[g*O*I + t] += sum_s part[s][g][t] (t < O*I); db[g*O + o] += sum_s part[s][g][O*I + o].
// A block sums 32 consecutive outputs: lane = output, its 8 warps take every 8th split, and the
// 8 warp sums are added in a fixed order (deterministic, coalesced over the outputs).
__global__ void grouped_linear_dw_finish_kernel(float* dw, float* db, const float* part, int S,
                                                int G, int O, int I) {
  __shared__ float red[8][32];
  const int nout = O * I + O, total = G * nout;
  const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
  const int c = blockIdx.x * 32 + lane;
  float s = 0.f;
  if (c < total)
    for (int p = wp; p < S; p += 8) s += part[static_cast<int64_t>(p) * total + c];
  red[wp][lane] = s;
  __syncthreads();
  if (wp != 0 || c >= total) return;
  s = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += red[j][lane];
  const int g = c / nout, t = c % nout;
  if (t < O * I)
    dw[static_cast<int64_t>(g) * O * I + t] += s;
  else if (db)
    db[g * O + (t - O * I)] += s;
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
                                           int64_t packs, int H) {
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

// dst[n, dc + c] += src[n, sc + c], c < ncols; one pack per thread.
template <class T, int V>
__global__ void add_columns_kernel(T* dst, int64_t ldd, const T* src, int64_t lds, int64_t N,
                                   int64_t ncols) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t cv = ncols / V;
  if (t >= N * cv) return;
  const int64_t n = t / cv, c = (t % cv) * V;
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

void CudaBackend::grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  const char* op = "grouped_linear_fwd";
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  expect_act(y, x.dtype(), op);
  OFT_CHECK(w.ndim() == 3, op, ": w ", shape_str(w.shape()), " is not [G, O, I]");
  const int G = static_cast<int>(w.dim(0)), O = static_cast<int>(w.dim(1)),
            I = static_cast<int>(w.dim(2));
  OFT_CHECK(x.ndim() == 2, op, ": x ", shape_str(x.shape()), " is not 2-D");
  const int64_t N = x.dim(0);
  expect_shape2(x, N, static_cast<int64_t>(G) * I, op);
  expect_shape2(y, N, static_cast<int64_t>(G) * O, op);
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    OFT_CHECK(b.numel() == static_cast<int64_t>(G) * O, op, ": b ", shape_str(b.shape()),
              " is not [G*O]");
  }
  if (N * G * O == 0) return;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    const unsigned blocks = blocks_for(N * G * O);
    if (I % VEC == 0 && aligned16(x.raw()) && aligned16(w.raw()))
      grouped_linear_fwd_kernel<T, VEC><<<blocks, kThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<T>(x), ptr<T>(w), pb, N, G, O, I);
    else
      grouped_linear_fwd_kernel<T, 1><<<blocks, kThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<T>(x), ptr<T>(w), pb, N, G, O, I);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                     const Tensor& x, const Tensor& w, bool accumulate_dx) {
  const char* op = "grouped_linear_bwd";
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  expect_act(dy, x.dtype(), op);
  OFT_CHECK(w.ndim() == 3, op, ": w ", shape_str(w.shape()), " is not [G, O, I]");
  const int G = static_cast<int>(w.dim(0)), O = static_cast<int>(w.dim(1)),
            I = static_cast<int>(w.dim(2));
  OFT_CHECK(x.ndim() == 2, op, ": x ", shape_str(x.shape()), " is not 2-D");
  const int64_t N = x.dim(0);
  expect_shape2(x, N, static_cast<int64_t>(G) * I, op);
  expect_shape2(dy, N, static_cast<int64_t>(G) * O, op);
  cuda::expect_dtype(dw, DType::F32, op);
  OFT_CHECK(dw.numel() == w.numel(), op, ": dw ", shape_str(dw.shape()), " vs w ",
            shape_str(w.shape()));
  if (db.defined()) {
    cuda::expect_dtype(db, DType::F32, op);
    OFT_CHECK(db.numel() == static_cast<int64_t>(G) * O, op, ": db ", shape_str(db.shape()),
              " is not [G*O]");
  }
  if (dx.defined()) {
    expect_act(dx, x.dtype(), op);
    expect_shape2(dx, N, static_cast<int64_t>(G) * I, op);
  }
  if (N == 0 || G * O * I == 0) return;
  int64_t splits = 0;
  float* part = nullptr;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec = I % VEC == 0 && aligned16(x.raw()) && aligned16(w.raw()) &&
                     (!dx.defined() || aligned16(dx.raw()));
    const int V = vec ? VEC : 1;
    const int64_t packs = static_cast<int64_t>(G) * I / V;
    if (O <= 4 && packs <= 1024) {
      // One pass over the rows (grouped_linear_bwd_rows_kernel): about eight blocks per SM, each
      // thread moving 16 bytes per row. (At the GPT-2 shape on an H100: 35 us per call, against
      // 38 us with four blocks per SM, 40 us with sixteen and 190 us for the split-K kernels.)
      const int64_t rpc = std::max<int64_t>(8, cuda::ceil_div(N, 8 * int64_t(cuda::sm_count())));
      splits = cuda::ceil_div(N, rpc);
      part = static_cast<float*>(
          cuda::scratch(static_cast<size_t>(splits) * G * (O * I + O) * sizeof(float)));
      const unsigned threads = static_cast<unsigned>(cuda::ceil_div(packs, 32) * 32);
      T* pdx = dx.defined() ? ptr<T>(dx) : nullptr;
      auto launch = [&](auto v, auto o) {
        grouped_linear_bwd_rows_kernel<T, decltype(v)::value, decltype(o)::value>
            <<<static_cast<unsigned>(splits), threads, 0, cuda::stream()>>>(
                pdx, part, ptr<T>(dy), ptr<T>(x), ptr<T>(w), N, G, I, rpc, accumulate_dx);
      };
      using V1 = std::integral_constant<int, 1>;
      using VV = std::integral_constant<int, VEC>;
      auto by_o = [&](auto v) {
        switch (O) {
          case 1: return launch(v, std::integral_constant<int, 1>{});
          case 2: return launch(v, std::integral_constant<int, 2>{});
          case 3: return launch(v, std::integral_constant<int, 3>{});
          default: return launch(v, std::integral_constant<int, 4>{});
        }
      };
      if (vec)
        by_o(VV{});
      else
        by_o(V1{});
      OFT_CUDA_LAUNCH_CHECK();
    } else {
      // General O: dx one thread per element, dw / db split-K through shared memory
      // (accumulators [O*I + O] and tiles of RT rows).
      const int nout = O * I + O;
      const int RT = std::max(1, std::min(32, 4096 / (I + O)));
      const size_t smem = (static_cast<size_t>(nout) + static_cast<size_t>(RT) * (I + O)) * 4;
      OFT_CHECK(smem <= 48 * 1024, op, ": groups of ", O, " x ", I,
                " weights are too large for the CUDA kernel (shared memory)");
      const int64_t want = std::max<int64_t>(1, cuda::ceil_div(2 * cuda::sm_count(), G));
      splits = std::min<int64_t>(want, cuda::ceil_div(N, RT));
      const int64_t rows_per_split = cuda::ceil_div(N, splits);
      splits = cuda::ceil_div(N, rows_per_split);
      part = static_cast<float*>(
          cuda::scratch(static_cast<size_t>(splits) * G * nout * sizeof(float)));
      if (dx.defined()) {
        grouped_linear_dx_kernel<T><<<blocks_for(N * G * I), kThreads, 0, cuda::stream()>>>(
            ptr<T>(dx), ptr<T>(dy), ptr<T>(w), N, G, O, I, accumulate_dx);
        OFT_CUDA_LAUNCH_CHECK();
      }
      grouped_linear_dw_kernel<T>
          <<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(G)), kThreads, smem,
             cuda::stream()>>>(part, ptr<T>(dy), ptr<T>(x), N, G, O, I, rows_per_split, RT);
      OFT_CUDA_LAUNCH_CHECK();
    }
  });
  const int64_t outputs = static_cast<int64_t>(G) * (O * I + O);
  grouped_linear_dw_finish_kernel<<<static_cast<unsigned>(cuda::ceil_div(outputs, 32)), 256, 0,
                                    cuda::stream()>>>(ptr<float>(dw),
                                                      db.defined() ? ptr<float>(db) : nullptr, part,
                                                      static_cast<int>(splits), G, O, I);
  OFT_CUDA_LAUNCH_CHECK();
}

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
                  ptr<T>(dx), ptr<T>(dgate), ptr<T>(dout), ptr<T>(x), ptr<T>(gate), packs, s.H);
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
  if (!accumulate) {
    if (pd == ps && Wd == Ws) return;
    OFT_CUDA_CHECK(cudaMemcpy2DAsync(pd, Wd * es, ps, Ws * es, ncols * es, N,
                                     cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  OFT_DISPATCH_FLOAT(dst.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec =
        ncols % VEC == 0 && Wd % VEC == 0 && Ws % VEC == 0 && aligned16(pd) && aligned16(ps);
    if (vec)
      add_columns_kernel<T, VEC><<<blocks_for(N * (ncols / VEC)), kThreads, 0, cuda::stream()>>>(
          reinterpret_cast<T*>(pd), Wd, reinterpret_cast<const T*>(ps), Ws, N, ncols);
    else
      add_columns_kernel<T, 1><<<blocks_for(N * ncols), kThreads, 0, cuda::stream()>>>(
          reinterpret_cast<T*>(pd), Wd, reinterpret_cast<const T*>(ps), Ws, N, ncols);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace oft::ops
