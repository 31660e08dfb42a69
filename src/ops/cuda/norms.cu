// CUDA norms: LayerNorm and RMSNorm (seed B form) over rows of C. Activations, weights and input
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
//   Narrow packed rows (up to 4 packs per lane of one warp in the forward, 3 in the backward:
//   C <= 1024 bf16 / 512 f32 forward, 384 f32 backward) run one warp per row instead, with no block barrier per row (see
//   norm_fwd_warp_kernel).
//   The bf16 backward of rows with C % 8 == 0, C <= 4096 (every preset's training path) runs the
//   staged kernel of norm_bwd_tiles.cu instead, which can also sum the dx it writes (dsum, a
//   folded bias gradient); the kernels here then serve f32, unaligned and wider rows, and a
//   requested dsum is a bias_grad of dx after them.
//
// QK-norm lives in qk_norm.cu; the partial-row reduction and the argument checks both files use
// are declared in norm_common.cuh.
#include <algorithm>
#include <type_traits>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/norm_common.cuh"
#include "ops/cuda/partials.cuh"

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
using norm::expect_numel;
using norm::norm_bwd_coeffs;
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

// ------------------------------------------------------------------ LayerNorm / RMSNorm rows

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

// One pack of V columns of a row: dx (= old dx + d when accumulating) stored, dw / db sums
// updated.
template <class T, int V, bool LN>
__device__ __forceinline__ void norm_bwd_store_pack(T* dx, bool accumulate, const float (&dy)[V],
                                                    const float (&w)[V], const float (&x)[V],
                                                    float mu, float r, float c0, float c1,
                                                    float (&aw)[V], float (&ab)[V]) {
  float old[V];
  if (accumulate) {
    load_pack<T, V>(dx, old);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) old[i] = 0.f;
  }
  float o[V];
#pragma unroll
  for (int i = 0; i < V; ++i)
    o[i] = old[i] + norm_bwd_elem<LN>(dy[i], w[i], x[i], mu, r, c0, c1, aw[i], ab[i]);
  store_pack<T, V>(dx, o);
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

// The per-token gate a LayerNorm forward computes from its output y (layernorm_gate_fwd):
// logits [N, G] = grouped_linear(y, w [G, 1, D], b [G]) from y as stored, gate = sigmoid of the
// stored logits. part: this warp's shared scratch, one float per pack of a row.
template <class T>
struct RowGate {
  T *gate, *logits;
  const T *w, *b;
  int G, packs_per_group;  // D / V
  float* part;
};

// Forward. x, y [N, C]; w, b [C] (b may be null; unused for RMS); LN: stat0 = mean, stat1 = rstd;
// RMS: stat1 = inv = 1 / (rms + eps) (stat0 unused). The rows of `rows` (K packs of V per
// thread). GATE (one warp per row only): the gate of RowGate too.
template <class T, int V, int K, bool LN, class Rows, bool GATE = false>
__device__ __forceinline__ void norm_fwd_rows(Rows& rows, T* y, float* stat0, float* stat1,
                                              const T* x, const T* w, const T* b, int64_t N, int C,
                                              float eps, const RowGate<T>* gate = nullptr) {
  static_assert(!GATE || std::is_same_v<Rows, WarpRows>, "the fused gate needs one warp per row");
  const int nvec = C / V;
  float wr[K][V], br[K][V], gw[GATE ? K : 1][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = rows.first() + k * rows.step();
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = br[k][i] = 0.f;
    if (j < nvec) {
      load_pack<T, V>(w + j * V, wr[k]);
      if (b) load_pack<T, V>(b + j * V, br[k]);
    }
    if constexpr (GATE) {
#pragma unroll
      for (int i = 0; i < V; ++i) gw[k][i] = 0.f;
      if (j < nvec) load_pack<T, V>(gate->w + j * V, gw[k]);
    }
  }
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const T* xr = x + n * C;
    float xv[K][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) s += LN ? xv[k][i] : xv[k][i] * xv[k][i];
    }
    rows.sum(s);
    float mu = 0.f, r;
    if (LN) {
      mu = s * inv_c;
      float q = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (rows.first() + k * rows.step() < nvec)
#pragma unroll
          for (int i = 0; i < V; ++i) q += (xv[k][i] - mu) * (xv[k][i] - mu);
      rows.sum(q);
      r = rsqrtf(q * inv_c + eps);  // biased variance
    } else {
      r = 1.f / (sqrtf(s * inv_c) + eps);
    }
    if (rows.leader()) {
      if (LN) stat0[n] = mu;
      stat1[n] = r;
    }
    T* yr = y + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) o[i] = (xv[k][i] - mu) * r * wr[k][i] + br[k][i];
        store_pack<T, V>(yr + j * V, o);
        if constexpr (GATE) {
          float p = 0.f;  // this pack's share of its group's logit, from y as stored
#pragma unroll
          for (int i = 0; i < V; ++i) p = fmaf(to_f32(from_f32<T>(o[i])), gw[k][i], p);
          gate->part[j] = p;
        }
      }
    }
    if constexpr (GATE) {
      __syncwarp();
      for (int g = rows.first(); g < gate->G; g += 32) {
        const float* pg = gate->part + g * gate->packs_per_group;
        float l = 0.f;
        for (int q = 0; q < gate->packs_per_group; ++q) l += pg[q];
        const T lt = from_f32<T>(l + to_f32(gate->b[g]));
        gate->logits[n * gate->G + g] = lt;
        gate->gate[n * gate->G + g] = from_f32<T>(1.f / (1.f + __expf(-to_f32(lt))));
      }
      __syncwarp();  // the next row rewrites part
    }
  }
}

template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_fwd_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b, int64_t N,
                    int C, float eps) {
  __shared__ float red[2 * 2 * 32];
  BlockRows rows{red};
  norm_fwd_rows<T, V, K, LN>(rows, y, stat0, stat1, x, w, b, N, C, eps);
}

// Narrow packed rows (C <= 32 * 4 packs: 1024 bf16 or 512 f32 columns): one warp per row. The
// 96-thread blocks the general kernel uses for C = 768 spent most of their time waiting at the
// barrier of each row.
template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    norm_fwd_warp_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b,
                         int64_t N, int C, float eps) {
  WarpRows rows;
  norm_fwd_rows<T, 16 / sizeof(T), K, LN>(rows, y, stat0, stat1, x, w, b, N, C, eps);
}

// LayerNorm with the gate of its output (layernorm_gate_fwd), one warp per row. Shared memory:
// one float per pack of a row and warp.
template <class T, int K>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    layernorm_gate_fwd_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w,
                              const T* b, int64_t N, int C, float eps, RowGate<T> gate) {
  constexpr int V = 16 / sizeof(T);
  __shared__ float part[kWarpRowThreads / 32][32 * K];
  WarpRows rows;
  gate.part = part[threadIdx.x >> 5];
  norm_fwd_rows<T, V, K, true, WarpRows, true>(rows, y, stat0, stat1, x, w, b, N, C, eps, &gate);
}

// Backward. dy, x, dx [N, C]; w [C]; LN: stat0 = mean, stat1 = rstd; RMS: stat1 = inv.
// dx = (accumulate ? dx : 0) + d, for the rows of `rows`; aw / ab receive this thread's sums over
// its rows of dy * xhat (LN) or dy * x * inv (RMS), and of dy (LN), for its packs.
// dx may alias dy (each thread reads its columns of the row before writing them).
template <class T, int V, int K, bool LN, class Rows>
__device__ __forceinline__ void norm_bwd_rows(Rows& rows, float (&aw)[K][V], float (&ab)[K][V],
                                              T* dx, const T* dy, const T* x, const T* w,
                                              const float* stat0, const float* stat1, int64_t N,
                                              int C, bool accumulate) {
  const int nvec = C / V;
  const float inv_c = 1.f / static_cast<float>(C);
  float wr[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = rows.first() + k * rows.step();
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = aw[k][i] = ab[k][i] = 0.f;
    if (j < nvec) load_pack<T, V>(w + j * V, wr[k]);
  }
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const T *xr = x + n * C, *dyr = dy + n * C;
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float xv[K][V], gv[K][V];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
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
    rows.sum(s0, s1);
    float c0, c1;
    norm_bwd_coeffs<LN>(s0, s1, r, inv_c, c0, c1);
    T* dxr = dx + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec)
        norm_bwd_store_pack<T, V, LN>(dxr + j * V, accumulate, gv[k], wr[k], xv[k], mu, r, c0, c1,
                                      aw[k], ab[k]);
    }
  }
}

// Row blockIdx of part [blocks, C or 2C] (scratch, f32) receives the block's parameter-gradient
// sums: dw in columns [0, C), db in [C, 2C) when with_db (LN with a bias).
template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_bwd_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                    const float* stat0, const float* stat1, int64_t N, int C, bool accumulate) {
  __shared__ float red[2 * 2 * 32];
  BlockRows rows{red};
  float aw[K][V], ab[K][V];
  norm_bwd_rows<T, V, K, LN>(rows, aw, ab, dx, dy, x, w, stat0, stat1, N, C, accumulate);
  const int nvec = C / V;
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

// One warp per row (C <= 32 * 3 packs): narrow f32 rows (C <= 384; the bf16 ones of the small
// models, C = 768, now run norm_bwd_tiles.cu). The measurements below are from its bf16 days.
// Register arrays for x, dy, w and the dw / db sums (194 registers, 8 warps per SM) left it
// latency-bound, so here a row is held as raw 16-byte packs (4 registers per pack and operand,
// converted on use), the old dx is loaded in the same batch as x and dy, and the weights and
// this warp's dw / db sums live in shared memory, laid out [K * V][32] (slot (k * V + i) * 32 +
// lane for column (lane + 32 k) * V + i: conflict-free, private to the warp). At <= 128
// registers (117 for C = 768 bf16) two blocks, 16 warps, fit an SM. The block then adds its
// warps' sums in warp order into part [gridDim.x, C or 2C] like norm_bwd_kernel
// (deterministic). Dynamic shared memory: warp_bwd_smem_bytes.
template <class T, int K>
constexpr int warp_bwd_slots() {
  return K * 32 * (16 / static_cast<int>(sizeof(T)));
}
template <class T, int K>
size_t warp_bwd_smem_bytes(bool db_too) {
  return sizeof(float) * warp_bwd_slots<T, K>() * (1 + (kWarpRowThreads / 32) * (db_too ? 2 : 1));
}

template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    norm_bwd_warp_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                         const float* stat0, const float* stat1, int64_t N, int C,
                         bool accumulate) {
  constexpr int V = 16 / sizeof(T);
  constexpr int S = warp_bwd_slots<T, K>();  // slots per array (>= C)
  constexpr int W = kWarpRowThreads / 32;
  using P = Pack<T, V>;
  extern __shared__ float sm[];  // ws [S], then per warp: dw sums [S] (and db sums [S])
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nvec = C / V;
  const bool db_too = LN && with_db;
  const int per_warp = db_too ? 2 * S : S;
  float* ws = sm;
  float* aw = sm + S + warp * per_warp;
  float* ab = db_too ? aw + S : nullptr;
  for (int s = lane; s < per_warp; s += 32) aw[s] = 0.f;
  for (int s = threadIdx.x; s < S; s += kWarpRowThreads) {
    const int k = s / (32 * V), i = (s / 32) % V, j = (s % 32) + 32 * k;
    ws[s] = j < nvec ? to_f32(w[j * V + i]) : 0.f;
  }
  __syncthreads();
  const float inv_c = 1.f / static_cast<float>(C);
  WarpRows rows;
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const P* xr = reinterpret_cast<const P*>(x + n * C);
    const P* dyr = reinterpret_cast<const P*>(dy + n * C);
    P* dxr = reinterpret_cast<P*>(dx + n * C);
    P xp[K], gp[K], op[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        xp[k] = xr[j];
        gp[k] = dyr[j];
        if (accumulate) op[k] = dxr[j];
      }
    }
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (lane + 32 * k < nvec)
#pragma unroll
        for (int i = 0; i < V; ++i)
          norm_bwd_sums<LN>(s0, s1, to_f32(gp[k].v[i]) * ws[(k * V + i) * 32 + lane],
                            to_f32(xp[k].v[i]), mu, r);
    rows.sum(s0, s1);
    float c0, c1;
    norm_bwd_coeffs<LN>(s0, s1, r, inv_c, c0, c1);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        P o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int s = (k * V + i) * 32 + lane;
          float gw = 0.f, gb = 0.f;
          float d = norm_bwd_elem<LN>(to_f32(gp[k].v[i]), ws[s], to_f32(xp[k].v[i]), mu, r,
                                      c0, c1, gw, gb);
          if (accumulate) d += to_f32(op[k].v[i]);
          o.v[i] = from_f32<T>(d);
          aw[s] += gw;
          if (db_too) ab[s] += gb;
        }
        dxr[j] = o;
      }
    }
  }
  __syncthreads();
  float* pr = part + static_cast<int64_t>(blockIdx.x) * (db_too ? 2 * C : C);
  for (int c = threadIdx.x; c < C; c += kWarpRowThreads) {
    const int j = c / V, i = c % V, s = ((j / 32) * V + i) * 32 + (j % 32);
    float sw = 0.f, sb = 0.f;
    for (int wi = 0; wi < W; ++wi) {
      sw += sm[S + wi * per_warp + s];
      if (db_too) sb += sm[S + wi * per_warp + S + s];
    }
    pr[c] = sw;
    if (db_too) pr[C + c] = sb;
  }
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
  const size_t smem = warp_bwd_smem_bytes<T, K>(with_db);
  static const bool opted_in = [&] {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(warp_bwd_smem_bytes<T, K>(true))));
    return true;
  }();
  (void)opted_in;
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

// Shared validation of the row norms; returns N.
int64_t check_rows(const Tensor& x, const Tensor& w, const char* op) {
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  const int64_t C = w.numel();
  OFT_CHECK(C > 0 && x.numel() % C == 0 && x.dim(-1) == C, op, ": x ", shape_str(x.shape()),
            " does not have rows of ", C, " (the weight's size)");
  return x.numel() / C;
}

// checks_only: validate the arguments and return (a fused variant launches its own kernel).
template <bool LN>
void norm_fwd(Tensor& y, Tensor* mean, Tensor& stat, const Tensor& x, const Tensor& w,
              const Tensor& b, double eps, const char* op, bool checks_only = false) {
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
  if (N == 0 || checks_only) return;
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

// Returns whether dsum (the column sums of dx, requested when defined) was computed too; the
// caller sums dx itself otherwise.
// With a gate (layernorm_gate_bwd): only the staged kernel, returning whether it ran (the
// caller composes the op otherwise).
template <bool LN>
bool norm_bwd(Tensor& dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
              const Tensor& w, const Tensor* mean, const Tensor& stat, bool accumulate,
              Tensor* dsum, const char* op, const norm::TileGate* gate = nullptr) {
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
  if (dsum) {
    cuda::expect_dtype(*dsum, DType::F32, op);
    expect_numel(*dsum, C, op);
  }
  if (N == 0) return true;
  const float* s0 = mean ? ptr<float>(*mean) : nullptr;
  const float* s1 = ptr<float>(stat);
  float* pdb = db ? ptr<float>(*db) : nullptr;
  if (x.dtype() == DType::BF16 &&
      norm::norm_bwd_tiles(LN, ptr<bf16>(dx), ptr<float>(dw), pdb,
                           dsum ? ptr<float>(*dsum) : nullptr, ptr<bf16>(dy),
                           ptr<bf16>(x), ptr<bf16>(w), s0, s1, N, C, accumulate, gate))
    return true;
  if (gate) return false;
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(x.raw()) && aligned16(dx.raw()) &&
                      aligned16(dy.raw()) && aligned16(w.raw());
  const RowPlan p = plan_rows_for(x.dtype(), C, vec_ok, op);
  [&] {  // (the dispatch's cases return from this lambda)
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    // (bf16 rows that fit it are all taken by norm_bwd_tiles above.)
    if constexpr (std::is_same_v<T, float>) {
      if (const int K = warp_row_packs<T>(C, vec_ok, 3)) {
        dispatch_k<3>(K, [&](auto k) {
          launch_norm_bwd_warp<T, decltype(k)::value, LN>(ptr<T>(dx), ptr<float>(dw), pdb,
                                                          ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0,
                                                          s1, N, C, accumulate);
        });
        return;
      }
    }
    dispatch_vk<T>(p, [&](auto v, auto k) {
      launch_norm_bwd<T, decltype(v)::value, decltype(k)::value, LN>(
          p, ptr<T>(dx), ptr<float>(dw), pdb, ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0, s1, N, C,
          accumulate);
    });
  });
  }();
  return dsum == nullptr;
}

}  // namespace

// ---- shared with qk_norm.cu (norm_common.cuh) ----

namespace norm {

void expect_numel(const Tensor& t, int64_t n, const char* what) {
  OFT_CHECK(t.numel() == n, what, ": expected ", n, " elements, got ", shape_str(t.shape()));
}

}  // namespace norm

// ---------------------------------------------------------------------- ops

void CudaBackend::layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                                const Tensor& w, const Tensor& b, double eps) {
  norm_fwd<true>(y, &mean, rstd, x, w, b, eps, "layernorm_fwd");
}

// The gate in the norm's kernel where the row fits one warp in packs (C <= 1024 bf16 / 512 f32)
// and each pack lies in one group (D % V == 0); otherwise Backend's composition.
void CudaBackend::layernorm_gate_fwd(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& gate,
                                     Tensor& logits, const Tensor& x, const Tensor& w,
                                     const Tensor& b, double eps, const Tensor& gw,
                                     const Tensor& gb) {
  constexpr const char* op = "layernorm_gate_fwd";
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  const int64_t G = gb.numel();
  OFT_CHECK(G > 0 && C % G == 0 && gw.numel() == C, op, ": gate weight ", shape_str(gw.shape()),
            " and bias ", shape_str(gb.shape()), " do not split rows of ", C, " into groups");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gw, &gb, &gate, &logits})
    expect_act(*t, x.dtype(), op);
  expect_numel(gate, N * G, op);
  expect_numel(logits, N * G, op);
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const int D = C / static_cast<int>(G);
  const bool vec_ok = C % vec == 0 && D % vec == 0 && aligned16(x.raw()) && aligned16(y.raw()) &&
                      aligned16(w.raw()) && aligned16(gw.raw()) &&
                      (!b.defined() || aligned16(b.raw()));
  const int K = x.dtype() == DType::BF16 ? warp_row_packs<bf16>(C, vec_ok, 4)
                                         : warp_row_packs<float>(C, vec_ok, 4);
  if (K == 0 || N == 0) {
    Backend::layernorm_gate_fwd(y, mean, rstd, gate, logits, x, w, b, eps, gw, gb);
    return;
  }
  norm_fwd<true>(y, &mean, rstd, x, w, b, eps, op, /*checks_only=*/true);
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    RowGate<T> rg{ptr<T>(gate), ptr<T>(logits), ptr<T>(gw), ptr<T>(gb), static_cast<int>(G),
                  D / vec, nullptr};
    dispatch_k<4>(K, [&](auto k) {
      auto kernel = layernorm_gate_fwd_kernel<T, decltype(k)::value>;
      const int blocks = persistent_blocks(kernel, kWarpRowThreads, cuda::ceil_div(N, 8));
      kernel<<<blocks, kWarpRowThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<float>(mean), ptr<float>(rstd), ptr<T>(x), ptr<T>(w), pb, N, C,
          static_cast<float>(eps), rg);
      OFT_CUDA_LAUNCH_CHECK();
    });
  });
}

// The gate's gradients in the staged backward's kernel (bf16 rows it covers); otherwise
// Backend's composition.
void CudaBackend::layernorm_gate_bwd(Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgw,
                                     Tensor& dgb, const Tensor& dy, const Tensor& dgate,
                                     const Tensor& logits, const Tensor& y, const Tensor& x,
                                     const Tensor& w, const Tensor& b, const Tensor& gw,
                                     const Tensor& mean, const Tensor& rstd, bool accumulate,
                                     Tensor* dsum) {
  constexpr const char* op = "layernorm_gate_bwd";
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  const int64_t G = dgb.numel();
  OFT_CHECK(G > 0 && C % G == 0 && gw.numel() == C && dgw.numel() == C, op, ": gate weight ",
            shape_str(gw.shape()), " and bias gradient ", shape_str(dgb.shape()),
            " do not split rows of ", C, " into groups");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gw, &dgate, &logits})
    expect_act(*t, x.dtype(), op);
  expect_numel(dgate, N * G, op);
  expect_numel(logits, N * G, op);
  cuda::expect_dtype(dgw, DType::F32, op);
  cuda::expect_dtype(dgb, DType::F32, op);
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    expect_numel(b, C, op);
  }
  if (x.dtype() == DType::BF16) {
    const norm::TileGate tg{ptr<bf16>(dgate),     ptr<bf16>(logits),
                            ptr<bf16>(gw),        b.defined() ? ptr<bf16>(b) : nullptr,
                            ptr<float>(dgw),      ptr<float>(dgb),
                            static_cast<int>(G)};
    if (norm_bwd<true>(dx, dw, db.defined() ? &db : nullptr, dy, x, w, &mean, rstd, accumulate,
                       dsum, op, &tg))
      return;
  }
  Backend::layernorm_gate_bwd(dx, dw, db, dgw, dgb, dy, dgate, logits, y, x, w, b, gw, mean,
                              rstd, accumulate, dsum);
}

void CudaBackend::layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                const Tensor& x, const Tensor& w, const Tensor& mean,
                                const Tensor& rstd, bool accumulate, Tensor* dsum) {
  if (!norm_bwd<true>(dx, dw, db.defined() ? &db : nullptr, dy, x, w, &mean, rstd, accumulate,
                      dsum, "layernorm_bwd"))
    bias_grad(*dsum, dx);
}

void CudaBackend::rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w,
                              double eps) {
  norm_fwd<false>(y, nullptr, inv, x, w, Tensor(), eps, "rmsnorm_fwd");
}

void CudaBackend::rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                              const Tensor& w, const Tensor& inv, bool accumulate, Tensor* dsum) {
  if (!norm_bwd<false>(dx, dw, nullptr, dy, x, w, nullptr, inv, accumulate, dsum,
                       "rmsnorm_bwd"))
    bias_grad(*dsum, dx);
}

}  // namespace oft::ops
