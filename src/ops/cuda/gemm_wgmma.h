// Hopper (sm_90a) matrix products of this library's own, for the products whose epilogue
// cuBLASLt runs after its tile products (see gemm_wgmma.cu): the MLP's first layer with the
// GELU-tanh epilogue (pre = x w^T + b and act = gelu(pre) in one kernel), and the input gradient
// of its second layer with GELU-tanh's derivative.
#pragma once

#include <cstdint>

namespace oft::cuda::gemm {

// The products of this file, as bits of set_mode_for_tests' mode (and of OFT_GEMM_WGMMA).
enum Products : int {
  kGeluForward = 1,   // gelu_fwd
  kGeluBackward = 2,  // dgelu
  kLinearForward = 4, // linear (bias, residual)
  kAllProducts = 7,
};

// Whether the Hopper GELU product takes this problem: an sm_90 GPU with the sm_90a build,
// OFT_GEMM_WGMMA fwd or all, bf16 [M, K] x [N, K] with K, N multiples of 8, K > 0, and 16-byte
// aligned x, w, pre, act (and bias, when given).
bool gelu_fwd_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const void* bias, const void* pre, const void* act);
// pre[M, N] = x[M, K] w[N, K]^T + bias[N] (bias may be null), act = gelu_tanh(pre); bf16, f32
// accumulation, act from the unrounded sum. On the backend's stream.
void gelu_fwd(void* act, void* pre, const void* x, const void* w, const void* bias, int64_t M,
              int64_t N, int64_t K);

// Whether the Hopper plain product takes this problem (OFT_GEMM_WGMMA fwd or all, and the other
// conditions of gelu_fwd_supported, for x [M, K], w [N, K], bias [N], res and y [M, N]; bias and
// res may be null).
bool linear_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                      const void* bias, const void* res, const void* y);
// y[M, N] = x[M, K] w[N, K]^T (+ bias[N]) (+ res[M, N]); bf16, f32 accumulation, rounded once.
// y must not alias res. On the backend's stream.
void linear(void* y, const void* x, const void* w, const void* bias, const void* res, int64_t M,
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

// Tests and benchmarks: force the Hopper products of these Products bits on (0: every product
// through cuBLASLt), or back to OFT_GEMM_WGMMA (-1).
void set_mode_for_tests(int mode);
// Tests and benchmarks: clusters of 1 or 2 CTAs (0: back to OFT_GEMM_CLUSTER), at most
// max_clusters of them (0: as many as fit on the GPU at once), output tiles 128 or 256 wide (0:
// back to OFT_GEMM_TILE).
void set_cluster_for_tests(int cluster, int max_clusters = 0, int tile = 0);
// The clusters that fit on the GPU at once for the last launch (its occupancy query).
int max_clusters_seen();

}  // namespace oft::cuda::gemm
