// Pieces shared by the CUDA norm files (norms.cu: LayerNorm / RMSNorm rows; qk_norm.cu:
// QK-norm): the argument checks. (The partial-row reduction of their parameter gradients is in
// partials.cuh.)
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/tensor.h"

namespace oft::ops::norm {

// t has n elements. (The dtype check, cuda::expect_act, is in cuda_common.cuh.)
void expect_numel(const Tensor& t, int64_t n, const char* what);

}  // namespace oft::ops::norm
