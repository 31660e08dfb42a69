// Tensor basics: views, slices, copies and dtype conversion.
#include <gtest/gtest.h>

#include "core/tensor.h"

using namespace oft;

TEST(Tensor, ViewSliceClone) {
  Tensor t = Tensor::from_vector({3, 2}, {1, 2, 3, 4, 5, 6});
  Tensor s = t.slice(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.to_vector(), (std::vector<double>{3, 4, 5, 6}));
  EXPECT_TRUE(s.same_storage(t));
  Tensor c = t.clone();
  c.data<float>()[0] = 9;
  EXPECT_EQ(t.data<float>()[0], 1);
  EXPECT_EQ(t.view({6}).dim(-1), 6);
  EXPECT_EQ(t.cast(DType::F64).to_vector(), t.to_vector());
  EXPECT_THROW(t.view({4}), Error);
}

// CPU tensors are counted against the memory the machine had available: an allocation past it
// fails with an error that names the fix, instead of the out-of-memory killer ending the
// process without a word once the pages are touched (`oft bench gpt2_124m` on a machine without
// a GPU did that).
TEST(Tensor, CpuMemoryLimitFailsWithTheFix) {
  struct Restore {
    ~Restore() { set_cpu_memory_limit(0); }
  } restore;
  const size_t base = cpu_tensor_bytes();
  const size_t mib = size_t(1) << 20;
  {
    Tensor a = Tensor::empty({256, 1024}, DType::F32);  // 1 MiB
    EXPECT_EQ(cpu_tensor_bytes(), base + mib);
    Tensor v = a.view({1024, 256});  // views share the storage: not counted again
    EXPECT_EQ(cpu_tensor_bytes(), base + mib);
  }
  EXPECT_EQ(cpu_tensor_bytes(), base);
  set_cpu_memory_limit(base + 3 * mib);
  Tensor two = Tensor::zeros({512, 1024}, DType::F32);  // 2 MiB: within the limit
  try {
    Tensor::empty({512, 1024}, DType::F32);  // 2 more: past it
    FAIL() << "expected an out-of-memory error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("out of memory"), std::string::npos) << m;
    EXPECT_NE(m.find("[512, 1024]"), std::string::npos) << m;
    EXPECT_NE(m.find("train.batch_size"), std::string::npos) << m;
    EXPECT_NE(m.find("train.device=cuda"), std::string::npos) << m;
  }
  EXPECT_EQ(cpu_tensor_bytes(), base + 2 * mib);  // the failed allocation holds nothing
  EXPECT_THROW(two.clone(), Error);               // copies are counted too
  set_cpu_memory_limit(0);                        // the machine's limit again
  Tensor more = two.clone();
  EXPECT_EQ(cpu_tensor_bytes(), base + 4 * mib);
}
