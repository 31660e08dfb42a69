// linear_fwd (matrix product with the bias in cuBLASLt's epilogue) against the CPU backend's
// matmul + add_bias, in f32 and bf16, with and without a bias, for layer shapes of the presets
// and odd ones; and a misaligned bias view (the non-epilogue fallback).
#include "cuda/cuda_test_util.h"

namespace oft::testing {
namespace {

TEST(CudaLinear, ForwardWithBiasEpilogueMatchesCpu) {
  OFT_REQUIRE_CUDA();
  struct S { int64_t n, in, out; };
  for (DType dt : {DType::F32, DType::BF16})
    for (S s : {S{1, 8, 8}, S{37, 24, 72}, S{256, 768, 2304}, S{129, 768, 3072}, S{64, 3072, 768},
                S{33, 128, 4}})
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE(std::string(dtype_label(dt)) + " n=" + std::to_string(s.n) + " in=" +
                     std::to_string(s.in) + " out=" + std::to_string(s.out) +
                     (with_bias ? " bias" : " no bias"));
        const Tensor x = rounded(randn({s.n, s.in}), dt), w = rounded(randn({s.out, s.in}, 0.05), dt);
        const Tensor b = rounded(randn({s.out}), dt);
        Tensor ref = Tensor::empty({s.n, s.out}, DType::F32);
        ops::cpu_backend().linear_fwd(ref, x, w, with_bias ? b : Tensor());
        Tensor y = poisoned({s.n, s.out}, dt);
        ops::backend(Device::CUDA).linear_fwd(y, to_gpu(x, dt), to_gpu(w, dt),
                                              with_bias ? to_gpu(b, dt) : Tensor());
        EXPECT_GPU_CLOSE(y, ref, tol_for(dt));
      }
}

TEST(CudaLinear, MisalignedBiasView) {
  OFT_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    const Tensor x = rounded(randn({17, 64}), dt), w = rounded(randn({40, 64}, 0.1), dt);
    const Tensor b2 = rounded(randn({41}), dt);
    Tensor ref = Tensor::empty({17, 40}, DType::F32);
    ops::cpu_backend().linear_fwd(ref, x, w, b2.slice(1, 41));
    Tensor y = poisoned({17, 40}, dt);
    const Tensor gb = to_gpu(b2, dt);
    ops::backend(Device::CUDA).linear_fwd(y, to_gpu(x, dt), to_gpu(w, dt), gb.slice(1, 41));
    EXPECT_GPU_CLOSE(y, ref, tol_for(dt)) << dtype_label(dt);
  }
}

}  // namespace
}  // namespace oft::testing
