// Pieces shared by the CUDA norm files (norms.cu: LayerNorm / RMSNorm rows; norm_bwd_tiles.cu:
// their staged backward for bf16 rows; qk_norm.cu: QK-norm): the argument checks and the
// per-element arithmetic of the backward. (The partial-row reduction of their parameter
// gradients is in partials.cuh.)
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>

#include "core/tensor.h"

namespace oft::ops::norm {

// t has n elements. (The dtype check, cuda::expect_act, is in cuda_common.cuh.)
void expect_numel(const Tensor& t, int64_t n, const char* what);

// Staged backward of LayerNorm (ln) or RMSNorm over bf16 rows (norm_bwd_tiles.cu): dx [N, C]
// = (accumulate ? dx : 0) + the norm's input gradient; dw [C] += its weight gradient, db [C]
// (LayerNorm, may be null) += its bias gradient, dsum [C] (may be null) += the column sums of the
// dx written (bf16 values as stored). s0 = mean (LayerNorm), s1 = rstd or inv. Returns false,
// having done nothing, for rows it does not cover (C % 8 != 0, C > 4096, an operand not
// 16-byte aligned); the caller then runs the general kernels.
bool norm_bwd_tiles(bool ln, __nv_bfloat16* dx, float* dw, float* db, float* dsum,
                    const __nv_bfloat16* dy, const __nv_bfloat16* x, const __nv_bfloat16* w,
                    const float* s0, const float* s1, int64_t N, int C, bool accumulate);

#ifdef __CUDACC__
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
#endif  // __CUDACC__

}  // namespace oft::ops::norm
