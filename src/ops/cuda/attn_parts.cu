// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  fail("CUDA grouped_linear_fwd: not implemented yet");
}

void CudaBackend::grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x, const Tensor& w, bool accumulate_dx) {
  fail("CUDA grouped_linear_bwd: not implemented yet");
}

void CudaBackend::head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate, int64_t rows_per_gate) {
  fail("CUDA head_gate_fwd: not implemented yet");
}

void CudaBackend::head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x, const Tensor& gate, int64_t rows_per_gate) {
  fail("CUDA head_gate_bwd: not implemented yet");
}

void CudaBackend::group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) {
  fail("CUDA group_mean_fwd: not implemented yet");
}

void CudaBackend::group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) {
  fail("CUDA group_mean_bwd: not implemented yet");
}

void CudaBackend::causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) {
  fail("CUDA causal_mean_fwd: not implemented yet");
}

void CudaBackend::causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) {
  fail("CUDA causal_mean_bwd: not implemented yet");
}

void CudaBackend::copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t ncols, bool accumulate) {
  fail("CUDA copy_columns: not implemented yet");
}

}  // namespace oft::ops
