// gather_rows / scatter_rows (the masked-LM head's row selection) against the CPU backend, in
// f32 and bf16, for packed (C * size a multiple of 16) and word-sized rows.
#include "cuda/cuda_test_util.h"

namespace oft::testing {
namespace {

TEST(CudaRows, GatherAndScatterMatchCpu) {
  OFT_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t C : {768, 10, 2}) {
      const int64_t N = 300;
      std::vector<double> ix;
      for (int64_t i = 0; i < N; ++i)
        if (i % 7 == 3 || i % 5 == 0) ix.push_back(double(i));
      const int64_t M = static_cast<int64_t>(ix.size());
      const Tensor idx = Tensor::from_vector({M}, ix, DType::I32);
      const Tensor src = rounded(randn({N, C}), dt), dense = rounded(randn({M, C}), dt);
      Tensor g_ref = Tensor::empty({M, C}, DType::F32);
      ops::cpu_backend().gather_rows(g_ref, src, idx);
      Tensor g = poisoned({M, C}, dt);
      ops::backend(Device::CUDA).gather_rows(g, to_gpu(src, dt), idx.to(Device::CUDA));
      EXPECT_EQ(rel_err(g, g_ref), 0.0) << dtype_label(dt) << " C=" << C;
      Tensor s_ref = src.clone();
      ops::cpu_backend().scatter_rows(s_ref, dense, idx);
      Tensor s = to_gpu(src, dt);
      ops::backend(Device::CUDA).scatter_rows(s, to_gpu(dense, dt), idx.to(Device::CUDA));
      EXPECT_EQ(rel_err(s, s_ref), 0.0) << dtype_label(dt) << " C=" << C;
    }
}

}  // namespace
}  // namespace oft::testing
