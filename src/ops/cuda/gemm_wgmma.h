// Hopper (sm_90a) matrix products of this library's own, for the products whose epilogue
// cuBLASLt runs after its tile products or not at all (see gemm_wgmma.cu): the MLP's first layer
// with the GELU-tanh epilogue (pre = x w^T + b and act = gelu(pre) in one kernel), and the input
// gradient of its second layer with GELU-tanh's or ReLU's derivative.
#pragma once

#include <cstdint>

namespace oft::cuda::gemm {

// Whether the Hopper GELU product takes this problem: an sm_90 GPU with the sm_90a build,
// OFT_GEMM_WGMMA fwd or all, bf16 [M, K] x [N, K] with K, N multiples of 8, K > 0, and 16-byte
// aligned x, w, pre, act (and bias, when given).
bool gelu_fwd_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const void* bias, const void* pre, const void* act);
// pre[M, N] = x[M, K] w[N, K]^T + bias[N] (bias may be null), act = gelu_tanh(pre); bf16, f32
// accumulation, act from the unrounded sum. On the backend's stream.
void gelu_fwd(void* act, void* pre, const void* x, const void* w, const void* bias, int64_t M,
              int64_t N, int64_t K);

// An sm_90 GPU running the sm_90a build (where the Hopper products can run at all).
bool hopper_ready();

// Whether the Hopper DGELU product takes this problem (OFT_GEMM_WGMMA all, and the other
// conditions of gelu_fwd_supported, for dout [M, K], w [K, N], pre and dpre [M, N]).
bool dgelu_supported(int64_t M, int64_t N, int64_t K, const void* dout, const void* w,
                     const void* pre, const void* dpre);
// dpre[M, N] = (dout[M, K] w[K, N]) * gelu_tanh'(pre[M, N]); bf16, f32 accumulation, the
// unrounded product times the derivative, rounded once; dsum (f32 [N], may be null) +=
// colsum(dpre) (of the unrounded values). On the backend's stream.
void dgelu(void* dpre, const void* dout, const void* w, const void* pre, int64_t M, int64_t N,
           int64_t K, float* dsum = nullptr);

// Whether the Hopper ReLU-derivative product takes this problem (OFT_GEMM_WGMMA auto, fwd or
// all, and the other conditions of gelu_fwd_supported, for dout [M, K], w [K, N], act and
// dpre [M, N]).
bool drelu_supported(int64_t M, int64_t N, int64_t K, const void* dout, const void* w,
                     const void* act, const void* dpre);
// dpre[M, N] = (dout[M, K] w[K, N]) * [act[M, N] > 0] with act = relu(pre) (relu'(pre) =
// [act > 0]); bf16, f32 accumulation, rounded once; dsum (f32 [N], may be null) +=
// colsum(dpre) of the unrounded values. On the backend's stream.
void drelu(void* dpre, const void* dout, const void* w, const void* act, int64_t M, int64_t N,
           int64_t K, float* dsum = nullptr);

// Tests and benchmarks: force the Hopper products on or off by bits (1: the GELU forward, 2: the
// DGELU backward, 4: the ReLU backward; 0: none), or back to OFT_GEMM_WGMMA (-1).
void set_mode_for_tests(int mode);

}  // namespace oft::cuda::gemm
