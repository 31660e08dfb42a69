// Deterministic column sums of per-block partial rows, for the reductions whose blocks each
// write one f32 partial row (parameter gradients of the norms and QK-norm, bias gradients):
// a fixed summation order and no atomics, so a run repeats bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

namespace oft::ops {

// Scratch floats for P partial rows of Ct columns plus the first-level sums of reduce_partials.
size_t partial_floats(int64_t P, int Ct);

// dst0[c] += sum_p part[p, c] (c < C0), dst1[c - C0] += ... (C0 <= c < Ct; dst1 may be null
// when C0 = Ct), summed in a fixed order; part [P, Ct] is the start of a scratch block of
// partial_floats(P, Ct) floats. Enqueued on the backend's stream.
void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct);

}  // namespace oft::ops
