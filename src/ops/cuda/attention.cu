// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv, const Tensor& key_mask, int64_t B, int64_t T, const AttentionSpec& spec) {
  fail("CUDA attention_fwd: not implemented yet");
}

void CudaBackend::attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& saved, const Tensor& key_mask, int64_t B, int64_t T, const AttentionSpec& spec) {
  fail("CUDA attention_bwd: not implemented yet");
}

}  // namespace oft::ops
