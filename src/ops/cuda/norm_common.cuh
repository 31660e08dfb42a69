// Pieces shared by the CUDA norm files (norms.cu: LayerNorm / RMSNorm rows; qk_norm.cu:
// QK-norm): the deterministic two-level reduction of per-block partial rows into parameter
// gradients, and the argument checks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/tensor.h"

namespace oft::ops::norm {

// Scratch floats for P partial rows of Ct columns plus the first-level sums of reduce_partials.
size_t partial_floats(int64_t P, int Ct);

// dst0[c] += sum_p part[p, c] (c < C0), dst1[c - C0] += ... (C0 <= c < Ct), summed in a fixed
// order (deterministic, no atomics); part is the start of a scratch block of
// partial_floats(P, Ct) floats, enqueued on the backend's stream.
void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct);

// t is a float CUDA tensor of dtype dt (the activations'); t has n elements.
void expect_act(const Tensor& t, DType dt, const char* what);
void expect_numel(const Tensor& t, int64_t n, const char* what);

}  // namespace oft::ops::norm
