// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB, double alpha, double beta) {
  fail("CUDA matmul: not implemented yet");
}

}  // namespace oft::ops
