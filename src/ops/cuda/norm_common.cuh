// Pieces shared by the CUDA norm files (norms.cu / norm_bwd.cu: LayerNorm / RMSNorm rows, forward
// and backward; norm_bwd_tiles.cu: their staged backward for bf16 rows; qk_norm.cu: QK-norm): the
// argument checks and the backward's row coefficients. (The partial-row reduction of their
// parameter gradients is in partials.cuh, the row kernels' launch machinery in norm_rows.cuh.)
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
// With a gate (LayerNorm only; layernorm_gate_bwd): dy plus the per-token gate's input
// gradient, and the gate's parameter gradients; rows it does not cover also include an odd
// number of groups or more than 32, groups not a multiple of 8 columns wide, and C > 3072.
struct TileGate {
  const __nv_bfloat16 *dgate, *logits;  // [N, G]
  const __nv_bfloat16 *gw, *b;          // gate weight [C], the norm's bias [C] (may be null)
  float *dgw, *dgb;                     // [C], [G] (+=)
  int G;
};
bool norm_bwd_tiles(bool ln, __nv_bfloat16* dx, float* dw, float* db, float* dsum,
                    const __nv_bfloat16* dy, const __nv_bfloat16* x, const __nv_bfloat16* w,
                    const float* s0, const float* s1, int64_t N, int C, bool accumulate,
                    const TileGate* gate = nullptr);

#ifdef __CUDACC__
// The backward's row coefficients, shared by norm_bwd.cu and norm_bwd_tiles.cu: from the row sums
// (LN: s0 = sum g, s1 = sum g xhat; RMS: s0 = sum g x, s1 = sum x^2, with g = dy * w),
// dx = r * g - c0 - c1 * (LN ? xhat : x).
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
#endif  // __CUDACC__

}  // namespace oft::ops::norm
