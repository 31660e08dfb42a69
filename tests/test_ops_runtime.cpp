// Op-layer runtime helpers on the CPU backend: the per-op profiler of `oft bench --profile` (ops
// timed with the host clock, attributed to the outermost op, counted per call) and Readback (the
// training loop's queued loss copies).
#include <gtest/gtest.h>

#include "ops/ops.h"
#include "ops/profiler.h"
#include "ops/readback.h"

using namespace oft;

TEST(Profiler, TimesCpuOpsWithTheHostClock) {
  const int64_t n = 192;
  const Tensor a = Tensor::zeros({n, n}, DType::F64), b = Tensor::zeros({n, n}, DType::F64);
  Tensor c = Tensor::zeros({n, n}, DType::F64);
  ops::Profiler::start();
  for (int i = 0; i < 3; ++i) ops::backend(Device::CPU).matmul(c, a, false, b, false, 1.0, 0.0);
  ops::backend(Device::CPU).scale(c, 2.0);
  const std::vector<ops::ProfileRow> rows = ops::Profiler::stop();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].name, "matmul");  // sorted by time: three 192^3 products before one scale
  EXPECT_EQ(rows[0].calls, 3);
  EXPECT_GT(rows[0].total_ms, 0.0);
  EXPECT_EQ(rows[1].name, "scale");
  EXPECT_EQ(rows[1].calls, 1);
  // Stopped: ops run unwrapped again and nothing more is recorded.
  EXPECT_EQ(ops::Profiler::active(Device::CPU), nullptr);
}

TEST(Readback, CopiesAtQueueTimeAndReusesSlots) {
  ops::Readback rb;
  Tensor a = Tensor::from_vector({3}, {1.5, -2.0, 3.25});
  const Tensor b = Tensor::from_vector({2, 2}, {1, 2, 3, 4}, DType::F64);
  const int ia = rb.queue(a), ib = rb.queue(b);
  ops::backend(Device::CPU).fill(a, 7.0);  // later work overwrites the source
  EXPECT_EQ(rb.values(ia), (std::vector<double>{1.5, -2.0, 3.25}));
  EXPECT_EQ(rb.values(ib), (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(rb.size(), 2);
  rb.clear();
  EXPECT_EQ(rb.size(), 0);
  EXPECT_THROW(rb.values(0), Error);  // cleared: nothing to read
  // A reused slot that must grow, and an empty tensor (a masked LM step with no masked rows).
  const Tensor big = Tensor::from_vector({5}, {5, 4, 3, 2, 1}, DType::BF16);
  EXPECT_EQ(rb.queue(big), 0);
  EXPECT_EQ(rb.queue(Tensor::empty({0}, DType::F32)), 1);
  EXPECT_EQ(rb.values(0), (std::vector<double>{5, 4, 3, 2, 1}));
  EXPECT_TRUE(rb.values(1).empty());
}
