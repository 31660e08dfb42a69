// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& h) {
  fail("CUDA adamw: not implemented yet");
}

}  // namespace oft::ops
