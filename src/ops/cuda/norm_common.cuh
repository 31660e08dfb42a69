// Pieces shared by the CUDA norm files (norms.cu: LayerNorm / RMSNorm rows; qk_norm.cu:
// QK-norm): the argument checks. (The partial-row reduction of their parameter gradients is in
// partials.cuh.)
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/tensor.h"

namespace oft::ops::norm {

// t is a float CUDA tensor of dtype dt (the activations'); t has n elements.
void expect_act(const Tensor& t, DType dt, const char* what);
void expect_numel(const Tensor& t, int64_t n, const char* what);

}  // namespace oft::ops::norm
