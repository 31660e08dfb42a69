// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe, int64_t T, int64_t pos_offset) {
  fail("CUDA embedding_fwd: not implemented yet");
}

void CudaBackend::embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout, const Tensor& tokens, int64_t T, int64_t pos_offset) {
  fail("CUDA embedding_bwd: not implemented yet");
}

}  // namespace oft::ops
