// Fused, memory-efficient cross-entropy of the CUDA backend.
//
//   forward:  losses[n] (f32) = logsumexp(logits[n, :V]) - logits[n, target[n]]
//   backward: dlogits[n, :V] = scale * (softmax(logits[n, :V]) - onehot(target[n]))
//   fwd_grad: both, with scale 1, in one kernel (a training step: the loss and the gradient
//             from one pass of statistics; the scale goes into the consuming matrix products)
// logits / dlogits [N, ld] in the activation dtype (ld >= V: columns >= V are the padding of
// the output layer, ignored by the loss and given a zero gradient), targets i32 [N];
// target < 0 ignores the row (loss 0, zero gradient row). No probability tensor is ever stored:
// the backward recomputes the row statistics (one extra read of the row, mostly from L2) and
// writes the gradient in the same kernel, so dlogits may alias logits (in-place backward, which
// halves the memory of the head). fwd_grad reads the row once (staged in shared memory) or twice
// and writes it once (GPT-2 124M, B*T = 16384 rows of 50304 bf16: 2 x 1.65 GB instead of the
// 4 x 1.65 GB of fwd then bwd).
//
// One 512-thread block per row; rows of up to 110 KiB that are 16-byte aligned (the model's padded
// logits) are first staged in shared memory, so the logits are read once (kStage). Each thread
// keeps an online (max, sum of exp(x - max)) over its share of the row, updated once per 16-byte
// pack (8 x bf16 / 4 x f32): the rescale costs one exp per pack. Rows of odd length V (50257,
// 30522) start at arbitrary 2- or 4-byte offsets, so each row is split into a scalar head up to the
// first 16-byte boundary, the packed body and a scalar tail; every element is visited by the same
// thread in both passes of the backward, which is what makes the in-place update safe. The
// per-thread pairs are merged with warp shuffles and then across warps through shared memory.
// All math is fp32.
//
// A target >= V cannot be checked on the host without a copy: such a row gets a NaN loss (and a
// NaN gradient row) so the trainer's non-finite guard stops the run instead of reading out of
// bounds.
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

constexpr int kCeThreads = 512;
constexpr int kCeWarps = kCeThreads / 32;

// Online softmax statistics: the running max m and s = sum exp(x - m).
struct MaxSum {
  float m, s;
};

// s * exp(m_old - m_new), with an empty state (m_old = -inf) contributing 0.
__device__ __forceinline__ float rescale(float s, float m_old, float m_new) {
  return m_old == -INFINITY ? 0.f : s * __expf(m_old - m_new);
}

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return {m, rescale(a.s, a.m, m) + rescale(b.s, b.m, m)};
}

// Folds kN values into the state: one rescale for the whole group.
template <int kN>
__device__ __forceinline__ void accumulate(MaxSum& st, const float (&x)[kN]) {
  float mx = x[0];
#pragma unroll
  for (int j = 1; j < kN; ++j) mx = fmaxf(mx, x[j]);
  const float m = fmaxf(st.m, mx);
  if (m == -INFINITY) return;  // everything so far is -inf: nothing to add
  float s = rescale(st.s, st.m, m);
#pragma unroll
  for (int j = 0; j < kN; ++j) s += __expf(x[j] - m);
  st = {m, s};
}

// How a row splits for packed access: [0, head) scalar, head + [0, packs * kN) packed,
// [head + packs * kN, V) scalar. The split depends only on the row's address modulo 16.
struct RowSplit {
  int64_t head, packs, tail_begin;
};

template <class T, int kN>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t V) {
  int64_t head = 0;
  if (kN > 1) {
    const int mis = static_cast<int>(reinterpret_cast<uintptr_t>(row) % 16);
    head = mis == 0 ? 0 : (16 - mis) / static_cast<int>(sizeof(T));
    if (head > V) head = V;
  }
  const int64_t packs = (V - head) / kN;
  return {head, packs, head + packs * kN};
}

// This thread's (max, sum) over its share of row[0, V), then merged over the block; every
// thread returns the row's statistics. Contains __syncthreads: call from all threads.
template <class T, int kN>
__device__ MaxSum row_stats(const T* row, int64_t V, const RowSplit& sp) {
  MaxSum st{-INFINITY, 0.f};
  const int tid = threadIdx.x;
  for (int64_t i = tid; i < sp.head; i += kCeThreads) {
    const float x[1] = {to_f32(row[i])};
    accumulate<1>(st, x);
  }
  const Pack<T, kN>* body = reinterpret_cast<const Pack<T, kN>*>(row + sp.head);
  for (int64_t k = tid; k < sp.packs; k += kCeThreads) {
    const Pack<T, kN> p = body[k];
    float x[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) x[j] = to_f32(p.v[j]);
    accumulate<kN>(st, x);
  }
  for (int64_t i = sp.tail_begin + tid; i < V; i += kCeThreads) {
    const float x[1] = {to_f32(row[i])};
    accumulate<1>(st, x);
  }
  // Warp merge, then across warps.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = merge(st, other);
  }
  __shared__ MaxSum warp_st[kCeWarps];
  __shared__ MaxSum row_st;
  const int lane = tid % 32, warp = tid / 32;
  if (lane == 0) warp_st[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kCeWarps ? warp_st[lane] : MaxSum{-INFINITY, 0.f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      MaxSum other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
      st = merge(st, other);
    }
    if (lane == 0) row_st = st;
  }
  __syncthreads();
  return row_st;
}

// losses[n] = m + log(s) - logits[n, target]; grid = N blocks.
template <class T, int kN>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_fwd_kernel(float* __restrict__ losses, const T* __restrict__ logits,
                             const int32_t* __restrict__ targets, int64_t V, int64_t ld) {
  const int64_t n = blockIdx.x;
  const int64_t tgt = targets[n];
  if (tgt < 0) {  // uniform across the block: no thread reaches a barrier
    if (threadIdx.x == 0) losses[n] = 0.f;
    return;
  }
  const T* row = logits + n * ld;
  const RowSplit sp = split_row<T, kN>(row, V);
  const MaxSum st = row_stats<T, kN>(row, V, sp);
  if (threadIdx.x == 0) losses[n] = tgt < V ? st.m + __logf(st.s) - to_f32(row[tgt]) : NAN;
}

// dlogits[n, v] = scale * (exp(x - m) / s - [v == target]); dlogits may alias logits (same
// element, same thread, read before written). Zero row for target < 0, NaN row for target >= V.
// kLoss (fwd_grad): also losses[n] exactly as cross_entropy_fwd_kernel (the target's logit is
// read by thread 0 before row_stats' barriers, so before any thread overwrites it in place).
// kStage: the row [0, V) is first copied into shared memory (16-byte cp.async; the row must be
// 16-byte aligned), and both passes read it there: one read of the logits from device memory
// instead of two (the second pass otherwise re-reads the row, partly from L2). The dynamic
// shared memory holds V elements rounded up to 16 bytes.
template <class T, int kN, bool kLoss, bool kStage = false>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_bwd_kernel(float* losses, T* dlogits, const T* logits,
                             const int32_t* __restrict__ targets, int64_t V, int64_t ld,
                             float scale) {
  const int64_t n = blockIdx.x;
  const int64_t tgt = targets[n];
  const T* row = logits + n * ld;
  T* drow = dlogits + n * ld;
  if constexpr (kStage) {
    extern __shared__ __align__(16) unsigned char ce_smem[];
    if (tgt >= 0 && tgt < V) {  // block-uniform: other rows never read their logits
      const int64_t chunks = (V * int64_t(sizeof(T)) + 15) / 16;
      for (int64_t c = threadIdx.x; c < chunks; c += kCeThreads) {
        const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(ce_smem + c * 16));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst),
                     "l"(reinterpret_cast<const unsigned char*>(row) + c * 16));
      }
      asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
      __syncthreads();
      row = reinterpret_cast<const T*>(ce_smem);
    }
  }
  for (int64_t i = V + threadIdx.x; i < ld; i += kCeThreads) drow[i] = from_f32<T>(0.f);  // padding
  const RowSplit sp = split_row<T, kN>(row, V);  // same split for drow (checked by the host)
  const int tid = threadIdx.x;
  float m = 0.f, inv = 0.f, fixed = 0.f;
  bool use_fixed = true;  // the whole row gets `fixed` (ignored or invalid target)
  if (tgt < 0) {
    fixed = 0.f;
    if (kLoss && tid == 0) losses[n] = 0.f;
  } else if (tgt >= V) {
    fixed = NAN;
    if (kLoss && tid == 0) losses[n] = NAN;
  } else {
    const float x_target = kLoss && tid == 0 ? to_f32(row[tgt]) : 0.f;
    const MaxSum st = row_stats<T, kN>(row, V, sp);  // block-uniform branch: barriers are safe
    m = st.m;
    inv = scale / st.s;
    use_fixed = false;
    if (kLoss && tid == 0) losses[n] = st.m + __logf(st.s) - x_target;
  }
  auto grad = [&](float x, int64_t v) {
    if (use_fixed) return fixed;
    const float p = __expf(x - m) * inv;
    return v == tgt ? p - scale : p;
  };
  for (int64_t i = tid; i < sp.head; i += kCeThreads)
    drow[i] = from_f32<T>(grad(to_f32(row[i]), i));
  const Pack<T, kN>* body = reinterpret_cast<const Pack<T, kN>*>(row + sp.head);
  Pack<T, kN>* dbody = reinterpret_cast<Pack<T, kN>*>(drow + sp.head);
  for (int64_t k = tid; k < sp.packs; k += kCeThreads) {
    const Pack<T, kN> p = body[k];
    Pack<T, kN> d;
    const int64_t v0 = sp.head + k * kN;
#pragma unroll
    for (int j = 0; j < kN; ++j) d.v[j] = from_f32<T>(grad(to_f32(p.v[j]), v0 + j));
    dbody[k] = d;
  }
  for (int64_t i = sp.tail_begin + tid; i < V; i += kCeThreads)
    drow[i] = from_f32<T>(grad(to_f32(row[i]), i));
}

// Rows up to this many bytes are staged in shared memory (two blocks per SM still fit:
// GPT-2's 50304 bf16 logits are 98 KiB).
constexpr int64_t kCeStageBytes = 110 * 1024;

// One launch of the kernel above: staged in shared memory when every row is 16-byte aligned
// (the model's padded logits) and short enough; else packed access when dlogits and logits have
// the same address modulo 16 (always true in place); else one element at a time.
template <bool kLoss>
void launch_ce_bwd(float* losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                   int64_t V, float scale, const char* what) {
  const int64_t N = logits.dim(0), ld = logits.dim(1);
  const bool same_phase = reinterpret_cast<uintptr_t>(dlogits.raw()) % 16 ==
                          reinterpret_cast<uintptr_t>(logits.raw()) % 16;
  const unsigned grid = static_cast<unsigned>(N);
  OFT_DISPATCH_FLOAT(logits.dtype(), what, {
    constexpr int kV = static_cast<int>(16 / sizeof(T));
    const int64_t row_bytes = (V * int64_t(sizeof(T)) + 15) / 16 * 16;
    const bool stage = same_phase && cuda::aligned16(logits.raw()) &&
                       (ld * int64_t(sizeof(T))) % 16 == 0 && row_bytes <= kCeStageBytes;
    if (stage) {
      auto kernel = cross_entropy_bwd_kernel<T, kV, kLoss, true>;
      static bool configured = false;
      if (!configured) {
        OFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(kCeStageBytes)));
        configured = true;
      }
      kernel<<<grid, kCeThreads, size_t(row_bytes), cuda::stream()>>>(
          losses, ptr<T>(dlogits), ptr<T>(logits), ptr<int32_t>(targets), V, ld, scale);
    } else if (same_phase)
      cross_entropy_bwd_kernel<T, kV, kLoss><<<grid, kCeThreads, 0, cuda::stream()>>>(
          losses, ptr<T>(dlogits), ptr<T>(logits), ptr<int32_t>(targets), V, ld, scale);
    else
      cross_entropy_bwd_kernel<T, 1, kLoss><<<grid, kCeThreads, 0, cuda::stream()>>>(
          losses, ptr<T>(dlogits), ptr<T>(logits), ptr<int32_t>(targets), V, ld, scale);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void check_ce_args(const Tensor& logits, const Tensor& targets, const char* what) {
  cuda::expect_float(logits, what);
  cuda::expect_dtype(targets, DType::I32, what);
  OFT_ASSERT(logits.ndim() == 2, what, ": logits must be [N, V], got ", shape_str(logits.shape()));
  OFT_ASSERT(targets.numel() == logits.dim(0), what, ": ", targets.numel(), " targets for ",
             logits.dim(0), " rows");
  OFT_ASSERT(logits.dim(0) <= int64_t(0x7fffffff), what, ": too many rows");
}

void check_ce_grad(const Tensor& dlogits, const Tensor& logits, const char* what) {
  cuda::expect_float(dlogits, what);
  OFT_ASSERT(dlogits.shape() == logits.shape() && dlogits.dtype() == logits.dtype(), what,
             ": dlogits ", shape_str(dlogits.shape()), " ", dtype_name(dlogits.dtype()),
             " vs logits ", shape_str(logits.shape()), " ", dtype_name(logits.dtype()));
}

// The per-row losses of a forward: f32 [N]; a vocabulary of 1..ld columns (N > 0).
void check_ce_losses(const Tensor& losses, const Tensor& logits, int64_t V, const char* what) {
  cuda::expect_dtype(losses, DType::F32, what);
  const int64_t N = logits.dim(0), ld = logits.dim(1);
  OFT_ASSERT(V <= ld, what, ": vocab ", V, " exceeds the logits width ", ld);
  OFT_ASSERT(losses.numel() == N, what, ": losses has ", losses.numel(), " elements for ", N,
             " rows (per-row losses are f32)");
  OFT_ASSERT(N == 0 || V > 0, what, ": empty vocabulary");
}

}  // namespace

void CudaBackend::cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets,
                                    int64_t vocab) {
  check_ce_args(logits, targets, "cross_entropy_fwd");
  check_ce_losses(losses, logits, vocab, "cross_entropy_fwd");
  const int64_t N = logits.dim(0), ld = logits.dim(1), V = vocab;
  if (N == 0) return;
  OFT_DISPATCH_FLOAT(logits.dtype(), "cross_entropy_fwd", {
    constexpr int kV = static_cast<int>(16 / sizeof(T));
    cross_entropy_fwd_kernel<T, kV><<<static_cast<unsigned>(N), kCeThreads, 0, cuda::stream()>>>(
        static_cast<float*>(losses.raw()), ptr<T>(logits), ptr<int32_t>(targets), V, ld);
    OFT_CUDA_LAUNCH_CHECK();
  });
}

void CudaBackend::cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                    double scale, int64_t vocab) {
  check_ce_args(logits, targets, "cross_entropy_bwd");
  check_ce_grad(dlogits, logits, "cross_entropy_bwd");
  const int64_t N = logits.dim(0), ld = logits.dim(1), V = vocab;
  OFT_ASSERT(V <= ld, "cross_entropy_bwd: vocab ", V, " exceeds the logits width ", ld);
  if (N == 0 || V == 0) return;
  launch_ce_bwd<false>(nullptr, dlogits, logits, targets, V, float(scale), "cross_entropy_bwd");
}

void CudaBackend::cross_entropy_fwd_grad(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                                         const Tensor& targets, int64_t vocab) {
  check_ce_args(logits, targets, "cross_entropy_fwd_grad");
  check_ce_grad(dlogits, logits, "cross_entropy_fwd_grad");
  check_ce_losses(losses, logits, vocab, "cross_entropy_fwd_grad");
  if (logits.dim(0) == 0) return;
  launch_ce_bwd<true>(static_cast<float*>(losses.raw()), dlogits, logits, targets, vocab, 1.f,
                      "cross_entropy_fwd_grad");
}

}  // namespace oft::ops
