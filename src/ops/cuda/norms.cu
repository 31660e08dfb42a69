// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  fail("CUDA layernorm_fwd: not implemented yet");
}

void CudaBackend::layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, bool accumulate) {
  fail("CUDA layernorm_bwd: not implemented yet");
}

void CudaBackend::rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w, double eps) {
  fail("CUDA rmsnorm_fwd: not implemented yet");
}

void CudaBackend::rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& inv, bool accumulate) {
  fail("CUDA rmsnorm_bwd: not implemented yet");
}

void CudaBackend::qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq, const Tensor& wk, int64_t H, double eps) {
  fail("CUDA qk_norm_fwd: not implemented yet");
}

void CudaBackend::qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout, const Tensor& qkv, const Tensor& wq, const Tensor& wk, const Tensor& inv, int64_t H) {
  fail("CUDA qk_norm_bwd: not implemented yet");
}

}  // namespace oft::ops
