// CUDA QK-norm: RMS over each head's D columns of q and k inside a fused qkv buffer [N, 3C],
// with learned per-channel weights w_q, w_k [D]; v columns pass through.
//
// A group of GS lanes (a power of two <= 32) per head segment of D values; the group reduces
// with xor shuffles inside the warp. The backward accumulates dwq / dwk per lane in registers,
// reduces the groups of a block in shared memory in a fixed order, and the last blocks to
// finish sum the block partials in a fixed order (finish_partials, partials.cuh). v columns are copied with cudaMemcpy2DAsync.
#include <algorithm>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/norm_common.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::ptr;
using cuda::aligned16;
using cuda::load_pack;
using cuda::store_pack;
using cuda::expect_act;
using norm::expect_numel;

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
                       const float* inv, int64_t N, int H, int D, int gs,
                       const PartialFinish fin) {
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
  finish_partials(fin, part);  // the q (y = 0) and k (y = 1) blocks of a row write its halves
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
  PartialDsts dsts;
  dsts.add(ptr<float>(dwq), s.D);
  dsts.add(ptr<float>(dwk), s.D);
  const PartialFinish fin = partial_finish(dsts, part, blocks);
  OFT_DISPATCH_FLOAT(qkv.dtype(), op, {
    constexpr int VV = 16 / sizeof(T);
    auto args = [&](auto kernel) {
      kernel<<<grid, kQkThreads, smem, cuda::stream()>>>(ptr<T>(dqkv), part, ptr<T>(dout),
                                                         ptr<T>(qkv), ptr<T>(wq), ptr<T>(wk),
                                                         ptr<float>(inv), s.N, s.H, s.D, gs,
                                                         fin);
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
  copy_v(dqkv, dout, s);
}

}  // namespace oft::ops
