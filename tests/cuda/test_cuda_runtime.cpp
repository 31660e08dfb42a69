// CUDA runtime plumbing: allocation through the caching allocator, host <-> device copies in
// every dtype (small uploads through the staging slots), memory statistics, the clear error
// when no GPU is usable, and the update stream's ordering (train.overlap_update).
#include "cuda/cuda_test_util.h"
#include "ops/device_graph.h"

namespace oft::testing {
namespace {

TEST(CudaRuntime, CopiesRoundTripEveryDtype) {
  OFT_REQUIRE_CUDA();
  for (DType d : {DType::F32, DType::BF16, DType::F64, DType::I32}) {
    const Tensor host = d == DType::I32 ? randint({7, 13}, -50, 50) : randn({7, 13}).cast(d);
    const Tensor dev = host.to(Device::CUDA);
    EXPECT_EQ(dev.device(), Device::CUDA);
    Tensor dev2 = Tensor::empty({7, 13}, d, Device::CUDA);
    dev2.copy_from(dev);  // device -> device
    EXPECT_EQ(dev2.to_vector(), host.to_vector()) << dtype_name(d);
  }
}

// Small uploads go through pinned staging slots without waiting for the GPU: more uploads in a
// row than there are slots, each host buffer overwritten as soon as its copy call returns, and
// one upload past the slot size (the waiting path), all arrive intact.
TEST(CudaRuntime, UploadsDoNotDependOnTheHostBufferAfterTheCall) {
  OFT_REQUIRE_CUDA();
  std::vector<Tensor> dev;
  std::vector<std::vector<double>> want;
  for (int i = 0; i < 21; ++i) {
    const int64_t n = i == 20 ? (int64_t(1) << 19) : 1000 + 37 * i;  // the last: 2 MiB of f32
    Tensor host = randn({n});
    want.push_back(host.to_vector());
    Tensor d = Tensor::empty({n}, DType::F32, Device::CUDA);
    d.copy_from(host);
    std::fill(host.data<float>(), host.data<float>() + n, -7.0f);  // reuse the host buffer at once
    dev.push_back(d);
  }
  for (size_t i = 0; i < dev.size(); ++i) EXPECT_EQ(dev[i].to_vector(), want[i]) << "upload " << i;
}

TEST(CudaRuntime, AllocatorReusesFreedBlocksAndTracksPeak) {
  OFT_REQUIRE_CUDA();
  ops::reset_peak_device_memory();
  const size_t before = ops::device_memory().in_use;
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1 << 20}, DType::F32, Device::CUDA);
    first = a.raw();
    EXPECT_GE(ops::device_memory().in_use, before + (4u << 20));
  }
  EXPECT_EQ(ops::device_memory().in_use, before);
  EXPECT_GE(ops::device_memory().peak, before + (4u << 20));
  Tensor b = Tensor::empty({1 << 20}, DType::F32, Device::CUDA);
  EXPECT_EQ(b.raw(), first) << "a freed block of the same size class is handed out again";
}

TEST(CudaRuntime, UnavailableGpuGivesAClearError) {
  if (ops::cuda_available()) GTEST_SKIP() << "a GPU is present";
  try {
    ops::backend(Device::CUDA);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("device=cpu"), std::string::npos) << e.what();
  }
}

// The update stream (ops.h): work queued there before update_stage_done(s) is complete before
// compute-stream work queued after compute_wait_update_stage(s), eagerly and in a CUDA graph
// recorded before the update was queued (its wait node waits for the stage's latest mark at
// each replay); host reads wait for the whole update. The update is made slow (a 64 MiB
// tensor filled 30 times, milliseconds) so that a missing wait would show the older values.
TEST(CudaUpdateStream, StageWaitsOrderComputeAfterTheUpdate) {
  OFT_REQUIRE_CUDA();
  const int64_t n = int64_t(1) << 24;
  Tensor a = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor late = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor seen = Tensor::zeros({n}, DType::F32, Device::CUDA);
  auto update = [&](double v) {  // stage 0: a = v (slowly); then late = v
    ops::update_stream_begin();
    for (int k = 0; k < 30; ++k) ops::fill(a, v - 29 + k);
    ops::update_stage_done(0);
    for (int k = 0; k < 30; ++k) ops::fill(late, v - 29 + k);
    ops::update_stream_end();
  };
  auto all_equal = [](const Tensor& t, double v) {
    for (double x : t.to_vector())
      if (x != v) return false;
    return true;
  };
  // Eager.
  update(100);
  EXPECT_TRUE(ops::update_pending());
  ops::compute_wait_update_stage(0);
  seen.copy_from(a);
  EXPECT_TRUE(all_equal(seen, 100));
  EXPECT_TRUE(all_equal(late, 100));  // the host read waited for the whole update
  EXPECT_FALSE(ops::update_pending());
  // Recorded before the updates it waits for, replayed after each.
  ops::DeviceGraph g;
  g.begin_capture();
  ops::compute_wait_update_stage(0);
  seen.copy_from(a);
  g.end_capture();
  ASSERT_TRUE(g.ready());
  for (double v : {200.0, 300.0}) {
    update(v);
    g.launch();
    ops::compute_wait_update();
    EXPECT_TRUE(all_equal(seen, v)) << v;
  }
}

}  // namespace
}  // namespace oft::testing
