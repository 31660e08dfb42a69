// The per-op profiler of `oft bench --profile` on the CPU backend: ops are timed with the host
// clock (there is no device stream to mark), attributed to the outermost op, counted per call.
#include <gtest/gtest.h>

#include "ops/ops.h"
#include "ops/profiler.h"

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
