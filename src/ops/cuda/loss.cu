// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets) {
  fail("CUDA cross_entropy_fwd: not implemented yet");
}

void CudaBackend::cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets, double scale) {
  fail("CUDA cross_entropy_bwd: not implemented yet");
}

}  // namespace oft::ops
