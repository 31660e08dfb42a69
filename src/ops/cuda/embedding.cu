// Token + position embeddings of the CUDA backend.
//
// Forward: out[N, C] = wte[tokens[n]] + wpe[pos_offset + n % T]   (N = B*T rows; wpe optional)
//   One warp per output row (8 rows per 256-thread block); lanes stride over the row in 16-byte
//   packs (8 x bf16 / 4 x f32), with a one-element fallback when C or a pointer does not allow
//   packs. Token ids are only known on the GPU and cannot be checked cheaply from the host: a
//   row whose id is outside [0, V) is filled with NaN instead of being read out of bounds (a
//   clamp would silently train on the wrong token). The loss then becomes NaN and the trainer's
//   non-finite guard stops the run.
//
// Backward (parameter gradients are f32 and accumulate):
//   dwte[V, C] += scatter-add of dout rows by token: one warp per row, atomicAdd into dwte
//   (float4 vector atomics on sm_90 when C allows). Rows sharing a token are added in an
//   unspecified order, so dwte is not bitwise deterministic run to run (fp32 sums differ in the
//   last bits); rows with an out-of-range id are skipped (the forward already made the loss NaN).
//   dwpe[pos_offset + t, C] += sum over the batch of dout[b*T + t] : one thread per (t, column)
//   looping over the batch in order, deterministic and without atomics.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::Pack;
using cuda::ptr;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// out[n] = wte[tok[n]] (+ wpe[pos_offset + n % T]); wpe may be null. C % kN == 0.
template <class T, int kN>
__global__ void embedding_fwd_kernel(T* __restrict__ out, const int32_t* __restrict__ tok,
                                     const T* __restrict__ wte, const T* __restrict__ wpe,
                                     int64_t N, int64_t C, int64_t V, int64_t T_,
                                     int64_t pos_offset) {
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  const int64_t cpacks = C / kN;
  Pack<T, kN>* o = reinterpret_cast<Pack<T, kN>*>(out + n * C);
  const int64_t id = tok[n];
  if (id < 0 || id >= V) {
    Pack<T, kN> nan;
#pragma unroll
    for (int j = 0; j < kN; ++j) nan.v[j] = from_f32<T>(NAN);
    for (int64_t c = lane; c < cpacks; c += 32) o[c] = nan;
    return;
  }
  const Pack<T, kN>* e = reinterpret_cast<const Pack<T, kN>*>(wte + id * C);
  if (wpe) {
    const Pack<T, kN>* p = reinterpret_cast<const Pack<T, kN>*>(wpe + (pos_offset + n % T_) * C);
    for (int64_t c = lane; c < cpacks; c += 32) {
      const Pack<T, kN> a = e[c], b = p[c];
      Pack<T, kN> r;
#pragma unroll
      for (int j = 0; j < kN; ++j) r.v[j] = from_f32<T>(to_f32(a.v[j]) + to_f32(b.v[j]));
      o[c] = r;
    }
  } else {
    for (int64_t c = lane; c < cpacks; c += 32) o[c] = e[c];
  }
}

// dwte[tok[n]] += dout[n] with atomics; one warp per row. C % kN == 0; kN = 4 uses float4
// atomics (dwte 16-byte aligned, checked by the host).
template <class T, int kN>
__global__ void embedding_bwd_wte_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                                         const int32_t* __restrict__ tok, int64_t N, int64_t C,
                                         int64_t V) {
  const int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int64_t id = tok[n];
  if (id < 0 || id >= V) return;
  const int lane = threadIdx.x % 32;
  const int64_t cpacks = C / kN;
  const Pack<T, kN>* d = reinterpret_cast<const Pack<T, kN>*>(dout + n * C);
  float* e = dwte + id * C;
  for (int64_t c = lane; c < cpacks; c += 32) {
    const Pack<T, kN> g = d[c];
    if constexpr (kN == 4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float4*>(e) + c,
                make_float4(to_f32(g.v[0]), to_f32(g.v[1]), to_f32(g.v[2]), to_f32(g.v[3])));
#else
#pragma unroll
      for (int j = 0; j < kN; ++j) atomicAdd(e + c * kN + j, to_f32(g.v[j]));
#endif
    } else {
#pragma unroll
      for (int j = 0; j < kN; ++j) atomicAdd(e + c * kN + j, to_f32(g.v[j]));
    }
  }
}

// dwpe[pos_offset + t, c] += sum_{n = t, t + T, ... < N} dout[n, c]; one thread per (t, c).
template <class T>
__global__ void embedding_bwd_wpe_kernel(float* __restrict__ dwpe, const T* __restrict__ dout,
                                         int64_t N, int64_t C, int64_t T_, int64_t pos_offset) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t rows = N < T_ ? N : T_;
  if (i >= rows * C) return;
  const int64_t t = i / C, c = i % C;
  float s = 0.f;
  for (int64_t n = t; n < N; n += T_) s += to_f32(dout[n * C + c]);
  dwpe[(pos_offset + t) * C + c] += s;
}

}  // namespace

void CudaBackend::embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte,
                                const Tensor& wpe, int64_t T, int64_t pos_offset) {
  cuda::expect_float(wte, "embedding_fwd wte");
  cuda::expect_float(out, "embedding_fwd out");
  cuda::expect_dtype(tokens, DType::I32, "embedding_fwd tokens");
  OFT_ASSERT(wte.ndim() == 2, "embedding_fwd: wte must be [V, C], got ", shape_str(wte.shape()));
  const int64_t N = tokens.numel(), V = wte.dim(0), C = wte.dim(1);
  OFT_ASSERT(out.shape() == Shape({N, C}), "embedding_fwd out: expected ",
             shape_str(Shape{N, C}), " got ", shape_str(out.shape()));
  OFT_ASSERT(out.dtype() == wte.dtype(), "embedding_fwd: out is ", dtype_name(out.dtype()),
             ", wte is ", dtype_name(wte.dtype()));
  OFT_ASSERT(T > 0, "embedding_fwd: T must be positive, got ", T);
  if (wpe.defined()) {
    cuda::expect_dtype(wpe, wte.dtype(), "embedding_fwd wpe");
    OFT_ASSERT(wpe.ndim() == 2 && wpe.dim(1) == C, "embedding_fwd: wpe must be [P, ", C,
               "], got ", shape_str(wpe.shape()));
    OFT_ASSERT(pos_offset >= 0 && pos_offset + std::min(T, N) <= wpe.dim(0),
               "embedding_fwd: positions ", pos_offset, "..", pos_offset + std::min(T, N) - 1,
               " outside the ", wpe.dim(0), " position embeddings");
  }
  if (N == 0 || C == 0) return;
  const unsigned blocks = static_cast<unsigned>(cuda::ceil_div(N, kRowsPerBlock));
  const int64_t seq = T;  // inside the dispatch, T names the storage type
  OFT_DISPATCH_FLOAT(wte.dtype(), "embedding_fwd", {
    constexpr int kV = static_cast<int>(16 / sizeof(T));
    T* po = ptr<T>(out);
    const T* pe = ptr<T>(wte);
    const T* pp = wpe.defined() ? ptr<T>(wpe) : nullptr;
    const bool vec =
        C % kV == 0 && aligned(po, 16) && aligned(pe, 16) && (!pp || aligned(pp, 16));
    if (vec)
      embedding_fwd_kernel<T, kV><<<blocks, kThreads, 0, cuda::stream()>>>(
          po, ptr<int32_t>(tokens), pe, pp, N, C, V, seq, pos_offset);
    else
      embedding_fwd_kernel<T, 1><<<blocks, kThreads, 0, cuda::stream()>>>(
          po, ptr<int32_t>(tokens), pe, pp, N, C, V, seq, pos_offset);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout,
                                const Tensor& tokens, int64_t T, int64_t pos_offset) {
  cuda::expect_dtype(dwte, DType::F32, "embedding_bwd dwte (parameter gradients are f32)");
  cuda::expect_float(dout, "embedding_bwd dout");
  cuda::expect_dtype(tokens, DType::I32, "embedding_bwd tokens");
  OFT_ASSERT(dwte.ndim() == 2, "embedding_bwd: dwte must be [V, C], got ",
             shape_str(dwte.shape()));
  const int64_t N = tokens.numel(), V = dwte.dim(0), C = dwte.dim(1);
  OFT_ASSERT(dout.numel() == N * C, "embedding_bwd dout: expected ", shape_str(Shape{N, C}),
             " got ", shape_str(dout.shape()));
  OFT_ASSERT(T > 0, "embedding_bwd: T must be positive, got ", T);
  if (dwpe.defined()) {
    cuda::expect_dtype(dwpe, DType::F32, "embedding_bwd dwpe (parameter gradients are f32)");
    OFT_ASSERT(dwpe.ndim() == 2 && dwpe.dim(1) == C, "embedding_bwd: dwpe must be [P, ", C,
               "], got ", shape_str(dwpe.shape()));
    OFT_ASSERT(pos_offset >= 0 && pos_offset + std::min(T, N) <= dwpe.dim(0),
               "embedding_bwd: positions ", pos_offset, "..", pos_offset + std::min(T, N) - 1,
               " outside the ", dwpe.dim(0), " position embeddings");
  }
  if (N == 0 || C == 0) return;
  const int64_t seq = T;  // inside the dispatch, T names the storage type
  OFT_DISPATCH_FLOAT(dout.dtype(), "embedding_bwd", {
    const T* pd = ptr<T>(dout);
    float* pe = ptr<float>(dwte);
    const unsigned blocks = static_cast<unsigned>(cuda::ceil_div(N, kRowsPerBlock));
    // Packs of 4: float4 atomics into dwte, 8 or 16-byte loads of dout.
    const bool vec = C % 4 == 0 && aligned(pe, 16) && aligned(pd, 4 * sizeof(T));
    if (vec)
      embedding_bwd_wte_kernel<T, 4><<<blocks, kThreads, 0, cuda::stream()>>>(
          pe, pd, ptr<int32_t>(tokens), N, C, V);
    else
      embedding_bwd_wte_kernel<T, 1><<<blocks, kThreads, 0, cuda::stream()>>>(
          pe, pd, ptr<int32_t>(tokens), N, C, V);
    OFT_CUDA_LAUNCH_CHECK();
    if (dwpe.defined()) {
      const int64_t work = std::min(seq, N) * C;
      embedding_bwd_wpe_kernel<T>
          <<<static_cast<unsigned>(cuda::ceil_div(work, kThreads)), kThreads, 0,
             cuda::stream()>>>(ptr<float>(dwpe), pd, N, C, seq, pos_offset);
      OFT_CUDA_LAUNCH_CHECK();
    }
  });
}

}  // namespace oft::ops
