// STUB: not implemented yet (replaced by the real kernels).
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {

void CudaBackend::fill(Tensor& x, double value) {
  fail("CUDA fill: not implemented yet");
}

void CudaBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  fail("CUDA add: not implemented yet");
}

void CudaBackend::axpy(Tensor& y, const Tensor& x, double alpha) {
  fail("CUDA axpy: not implemented yet");
}

void CudaBackend::scale(Tensor& x, double s) {
  fail("CUDA scale: not implemented yet");
}

double CudaBackend::dot(const Tensor& a, const Tensor& b) {
  fail("CUDA dot: not implemented yet");
}

void CudaBackend::convert(Tensor& dst, const Tensor& src) {
  fail("CUDA convert: not implemented yet");
}

void CudaBackend::add_bias(Tensor& y, const Tensor& bias) {
  fail("CUDA add_bias: not implemented yet");
}

void CudaBackend::bias_grad(Tensor& dbias, const Tensor& dy) {
  fail("CUDA bias_grad: not implemented yet");
}

}  // namespace oft::ops
