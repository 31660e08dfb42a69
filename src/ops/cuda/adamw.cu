// AdamW update of the CUDA backend (decoupled weight decay, PyTorch semantics), on f32 master
// weights, gradients and moments (cuda_backend.h precision contract):
//   g = grad * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   param = param * (1 - lr * weight_decay) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// with bc1 = 1 - beta1^step, bc2 = 1 - beta2^step. This is CpuBackend::adamw operation for
// operation: the same f32 constants (computed in double on the host, then rounded), the same
// evaluation order, and explicitly rounded IEEE operations (__fmul_rn, __fsqrt_rn, __fdiv_rn...)
// so neither --use_fast_math nor FMA contraction changes the result: an f32 GPU step matches the
// CPU step to the last bit or so.
//
// Memory-bound: a grid-stride loop over float4 packs of the four tensors, a scalar loop for the
// tail, and the same kernel with one-element packs when a pointer is not 16-byte aligned.
#include <cmath>
#include <cstdint>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

constexpr int kThreads = 256;

struct AdamWConsts {
  float b1, one_minus_b1, b2, one_minus_b2, grad_scale, step_size, decay, inv_sqrt_bc2, eps;
};

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v,
                                          const AdamWConsts& k) {
  const float gi = __fmul_rn(g, k.grad_scale);
  m = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(k.one_minus_b1, gi));
  v = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(__fmul_rn(k.one_minus_b2, gi), gi));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), k.inv_sqrt_bc2), k.eps);
  p = __fsub_rn(__fmul_rn(p, k.decay), __fdiv_rn(__fmul_rn(k.step_size, m), denom));
}

// kVec4: the four pointers are 16-byte aligned and the body runs on float4 packs.
template <bool kVec4>
__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                             float* __restrict__ m, float* __restrict__ v, int64_t n,
                             AdamWConsts k) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if constexpr (kVec4) {
    const int64_t n4 = n / 4;
    for (int64_t i = tid; i < n4; i += stride) {
      float4 p = reinterpret_cast<const float4*>(param)[i];
      const float4 g = reinterpret_cast<const float4*>(grad)[i];
      float4 mm = reinterpret_cast<const float4*>(m)[i];
      float4 vv = reinterpret_cast<const float4*>(v)[i];
      adamw_one(p.x, g.x, mm.x, vv.x, k);
      adamw_one(p.y, g.y, mm.y, vv.y, k);
      adamw_one(p.z, g.z, mm.z, vv.z, k);
      adamw_one(p.w, g.w, mm.w, vv.w, k);
      reinterpret_cast<float4*>(param)[i] = p;
      reinterpret_cast<float4*>(m)[i] = mm;
      reinterpret_cast<float4*>(v)[i] = vv;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    float p = param[i], mm = m[i], vv = v[i];
    adamw_one(p, grad[i], mm, vv, k);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void CudaBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                        const AdamWStep& h) {
  cuda::expect_dtype(param, DType::F32, "adamw param (master weights are f32)");
  cuda::expect_dtype(grad, DType::F32, "adamw grad (parameter gradients are f32)");
  cuda::expect_dtype(m, DType::F32, "adamw m");
  cuda::expect_dtype(v, DType::F32, "adamw v");
  const int64_t n = param.numel();
  OFT_ASSERT(grad.numel() == n && m.numel() == n && v.numel() == n, "adamw: param ",
             shape_str(param.shape()), ", grad ", shape_str(grad.shape()), ", m ",
             shape_str(m.shape()), ", v ", shape_str(v.shape()), " differ in size");
  OFT_ASSERT(h.step >= 1, "adamw: step is 1-based, got ", h.step);
  if (n == 0) return;
  // The CPU backend's constants, rounded to f32 the same way.
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  AdamWConsts k;
  k.b1 = float(h.beta1);
  k.b2 = float(h.beta2);
  k.one_minus_b1 = 1.0f - k.b1;  // in f32, as the CPU's (T(1) - b1)
  k.one_minus_b2 = 1.0f - k.b2;
  k.grad_scale = float(h.grad_scale);
  k.step_size = float(h.lr / bc1);
  k.decay = float(1.0 - h.lr * h.weight_decay);
  k.inv_sqrt_bc2 = float(1.0 / std::sqrt(bc2));
  k.eps = float(h.eps);

  float *pp = static_cast<float*>(param.raw()), *pm = static_cast<float*>(m.raw()),
        *pv = static_cast<float*>(v.raw());
  const float* pg = static_cast<const float*>(grad.raw());
  const bool vec = aligned16(pp) && aligned16(pg) && aligned16(pm) && aligned16(pv);
  const int64_t cap = int64_t(std::max(cuda::sm_count(), 1)) * 8;
  const int64_t items = vec ? n / 4 + 1 : n;
  const unsigned blocks =
      static_cast<unsigned>(std::max<int64_t>(1, std::min(cuda::ceil_div(items, kThreads), cap)));
  if (vec)
    adamw_kernel<true><<<blocks, kThreads, 0, cuda::stream()>>>(pp, pg, pm, pv, n, k);
  else
    adamw_kernel<false><<<blocks, kThreads, 0, cuda::stream()>>>(pp, pg, pm, pv, n, k);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace oft::ops
