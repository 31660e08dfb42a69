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
