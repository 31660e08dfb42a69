// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::activation_fwd(Tensor& y, const Tensor& x, Activation a) {
  fail("CUDA activation_fwd: not implemented yet");
}

void CudaBackend::activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) {
  fail("CUDA activation_bwd: not implemented yet");
}

}  // namespace oft::ops
