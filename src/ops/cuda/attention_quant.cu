// Evaluation-only attention forward with simulated quantization, range capture and the rows'
// attention entropy (AttentionSpec.score_quant / prob_quant / score_range / prob_range /
// entropy_rows; QuantArgs::skip_out computes the entropy alone, beside the fast forward). Speed
// matters little here; matching the CPU oracle (cpu_nn.cpp) operation by operation matters a lot, because a
// quantizer turns a last-bit difference into a whole quantization step. So this kernel mirrors
// the CPU: the q.k dot product as a sequential f32 fma chain, the scaled score and both fake
// quantizers in double, exp of the f32 difference rounded to f32, the normaliser in double,
// p = f32(e / denom), clip in f32, and the P V sum as a sequential f32 fma chain per column.
//
// One block of 128 threads per (query row, batch x head): grid (B*H, T). Shared memory holds
// the row's T scores (double) and the query row (f32), never more than one row.
// Ranges: min / max of every score of the call (all T x T, before the mask) and of every
// probability after the probability function (masked entries included, as on the CPU), merged
// across blocks with 64-bit atomicMin / atomicMax on order-preserving integer keys of doubles.
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/fake_quant.cuh"

namespace oft::cuda::attn {
namespace {

constexpr int kThreads = 128;

using cuda::fake_quant_value;
using cuda::order_key;


enum RedOp { kMin, kMax, kSum };
template <RedOp OP>
__device__ __forceinline__ double combine(double x, double y) {
  return OP == kMin ? fmin(x, y) : (OP == kMax ? fmax(x, y) : x + y);
}
// Block-wide reduction of one double (all threads get the result).
template <RedOp OP>
__device__ double block_reduce(double v, double* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = combine<OP>(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // scratch is free
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = combine<OP>(r, scratch[w]);
  return r;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    fwd_quant_kernel(const Args a, const QuantArgs qa, unsigned long long* ranges) {
  extern __shared__ double srow[];  // [T] scores, later probabilities; then [D] f32 query row
  __shared__ double scratch[kThreads / 32];
  const int T_ = a.T, C = a.C, D = a.D;
  float* sq = reinterpret_cast<float*>(srow + T_);
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H, i = blockIdx.y, tid = threadIdx.x;
  const int64_t stride = 3 * int64_t(C);
  const T* gQ = static_cast<const T*>(a.qkv) + int64_t(b) * T_ * stride + h * D;
  const int32_t* mask = a.mask ? a.mask + int64_t(b) * T_ : nullptr;
  const double inv_sqrt_d = 1.0 / sqrt(double(D));
  const double kInf = __longlong_as_double(0x7ff0000000000000ll);
  const bool all_scores = qa.score_q || qa.score_range;
  const bool track_p = qa.prob_q || qa.prob_range;

  for (int d = tid; d < D; d += kThreads) sq[d] = to_f32(gQ[int64_t(i) * stride + d]);
  __syncthreads();

  double smin = kInf, smax = -kInf, mx = -kInf;
  for (int j = tid; j < T_; j += kThreads) {
    const bool vis = (!a.causal || j <= i) && (mask == nullptr || mask[j] != 0);
    if (!vis && !all_scores) {
      srow[j] = -kInf;
      continue;
    }
    const T* kj = gQ + int64_t(j) * stride + C;
    float dot = 0.f;
    for (int d = 0; d < D; ++d) dot = __fmaf_rn(sq[d], to_f32(kj[d]), dot);
    double sc = double(dot) * inv_sqrt_d;
    if (all_scores) {
      smin = fmin(smin, sc);
      smax = fmax(smax, sc);
      if (qa.score_q) sc = fake_quant_value(sc, qa.s_delta, qa.s_zp, qa.s_qmin, qa.s_qmax);
    }
    srow[j] = vis ? sc : -kInf;
    if (vis) mx = fmax(mx, sc);
  }
  mx = block_reduce<kMax>(mx, scratch);  // (its barriers also publish srow)

  double den = 0;
  for (int j = tid; j < T_; j += kThreads) {
    const double s = srow[j];
    const double e = isinf(s) ? 0.0 : double(float(exp(double(float(s - mx)))));
    srow[j] = e;
    den += e;
  }
  den = block_reduce<kSum>(den, scratch);
  if (a.prob == kSoftmax1) den += isinf(mx) ? 1.0 : exp(-mx);

  const float span = float(qa.zeta - qa.gamma), gamma = float(qa.gamma);
  double pmin = kInf, pmax = -kInf;
  double ent = 0;  // -sum p log p of the softmax before clipping and quantization (as the CPU)
  bool ent_nan = false;
  for (int j = tid; j < T_; j += kThreads) {
    float p = den > 0 ? float(srow[j] / den) : 0.f;
    if (qa.entropy) {
      const double v = double(p);
      if (v > 0) ent -= v * log(v);
      else if (isnan(v)) ent_nan = true;
    }
    if (a.prob == kClipped) {
      const float c = __fmaf_rn(span, p, gamma);
      p = c < 0.f ? 0.f : (c > 1.f ? 1.f : c);
    }
    if (track_p) {
      pmin = fmin(pmin, double(p));
      pmax = fmax(pmax, double(p));
      if (qa.prob_q) p = float(fake_quant_value(p, qa.p_delta, qa.p_zp, qa.p_qmin, qa.p_qmax));
    }
    srow[j] = p;
  }
  __syncthreads();
  if (qa.entropy) {
    ent = block_reduce<kSum>(ent_nan ? __longlong_as_double(0x7ff8000000000000ll) : ent, scratch);
    if (tid == 0) qa.entropy[int64_t(bh) * T_ + i] = ent;
  }

  T* gO = static_cast<T*>(a.out) + (int64_t(b) * T_ + i) * C + h * D;
  for (int d = qa.skip_out ? D : tid; d < D; d += kThreads) {
    float acc = 0.f;
    const T* vcol = gQ + 2 * C + d;
    for (int j = 0; j < T_; ++j) {
      const float p = float(srow[j]);
      if (p != 0.f) acc = __fmaf_rn(p, to_f32(vcol[int64_t(j) * stride]), acc);
    }
    gO[d] = from_f32<T>(acc);
  }

  if (qa.score_range) {
    smin = block_reduce<kMin>(smin, scratch);
    smax = block_reduce<kMax>(smax, scratch);
    if (tid == 0) {
      atomicMin(&ranges[0], order_key(smin));
      atomicMax(&ranges[1], order_key(smax));
    }
  }
  if (qa.prob_range) {
    pmin = block_reduce<kMin>(pmin, scratch);
    pmax = block_reduce<kMax>(pmax, scratch);
    if (tid == 0) {
      atomicMin(&ranges[2], order_key(pmin));
      atomicMax(&ranges[3], order_key(pmax));
    }
  }
}

template <class T>
void launch_t(const Args& a, const QuantArgs& q, unsigned long long* ranges) {
  const size_t smem = sizeof(double) * a.T + sizeof(float) * a.D + 16;
  OFT_CHECK(smem <= 200 * 1024, "attention with quantization / range capture: T = ", a.T,
            " is too long for one row in shared memory");
  OFT_CUDA_CHECK(cudaFuncSetAttribute(fwd_quant_kernel<T>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  OFT_CHECK(a.T <= 65535, "attention with quantization: T = ", a.T, " exceeds the grid limit");
  const dim3 grid(a.B * a.H, a.T);
  fwd_quant_kernel<T><<<grid, kThreads, smem, stream()>>>(a, q, ranges);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void launch_fwd_quant(const Args& a, const QuantArgs& q, unsigned long long* ranges, DType dt) {
  OFT_DISPATCH_FLOAT(dt, "attention_fwd", launch_t<T>(a, q, ranges));
}

}  // namespace oft::cuda::attn
