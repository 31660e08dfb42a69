// Deterministic column sums of per-block partial rows, for the reductions whose blocks each
// write one f32 partial row (parameter gradients of the norms and QK-norm, bias gradients):
// a fixed summation order and no atomics on the values, so a run repeats bit for bit. The
// partial rows are finished inside the launch that sums them (or that writes them): the blocks
// count their arrivals per column tile, and the last one to arrive sums all rows of its tile in
// a fixed order, whichever block that is.
#pragma once

#include <cstddef>
#include <cstdint>

namespace oft::ops {

// Scratch floats for P partial rows of Ct columns plus the split sums of reduce_partials.
size_t partial_floats(int64_t P, int Ct);

// dst0[c] += sum_p part[p, c] (c < C0), dst1[c - C0] += ... (C0 <= c < Ct, or C0 <= c < 2 C0
// when dst2 is given), dst2[c - 2 C0] += ... (2 C0 <= c < Ct), summed in a fixed order; dst1
// may be null when C0 = Ct. part [P, Ct] is the start of a scratch block of
// partial_floats(P, Ct) floats. One kernel, enqueued on the backend's stream.
void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct,
                     float* dst2 = nullptr);

// Destinations by column range: columns [end[k - 1], end[k]) of the partial rows (end[-1] = 0)
// are added into dst[k][0 ...] by reduce_partials_to.
struct PartialDsts {
  static constexpr int kMax = 6;
  float* dst[kMax] = {};
  int end[kMax] = {};
  int n = 0;
  // The next `cols` columns go to d (skipped, with d null, when cols is 0).
  void add(float* d, int cols);
  int cols() const { return n ? end[n - 1] : 0; }
};
// As reduce_partials, over Ct = dsts.cols() columns.
void reduce_partials_to(const PartialDsts& dsts, float* part, int P);

// A kernel that finishes its own partial rows (one per block) in two levels of arrivals:
// blocks in groups of `group` (by block index), the last of each group to arrive sums the
// group's rows in block order into level[group index], and the last group to finish sums the
// level rows in order into the destinations. Deterministic; with about sqrt(P) rows read per
// level the finishing blocks add a few microseconds to the kernel instead of a second launch.
struct PartialFinish {
  PartialDsts dsts;
  float* level = nullptr;        // [groups, Ct], after the P partial rows in the scratch block
  unsigned* counters = nullptr;  // [groups + 1], zero between launches
  int group = 1;                 // blocks per group
};
// The plan for P partial rows at part (a scratch block of partial_floats(P, dsts.cols())).
PartialFinish partial_finish(const PartialDsts& dsts, float* part, int P);

// At least n zeroed arrival counters on the device, one per column tile of a kernel that
// finishes its own partial rows (last_arrival); they are zero again when that kernel ends, so
// kernels on the backend's stream share them.
unsigned* tile_counters(int64_t n);

#ifdef __CUDACC__
// After the calling block wrote its partial sums (every thread, before this call): true, on
// every thread of the block, in the last of `arrivals` blocks to arrive at *counter, which it
// resets to 0. That block may then read every block's partial sums (through L2: __ldcg).
__device__ __forceinline__ bool last_arrival(unsigned* counter, unsigned arrivals, bool& last) {
  __threadfence();  // this block's partial sums are visible device-wide before it is counted
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    last = atomicAdd(counter, 1u) == arrivals - 1;
    if (last) *counter = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Adds t into the destination whose column range holds column c.
__device__ __forceinline__ void partial_add(const PartialDsts& d, int c, float t) {
  int begin = 0;
  for (int k = 0; k < d.n; ++k) {
    if (c < d.end[k]) {
      d.dst[k][c - begin] += t;
      return;
    }
    begin = d.end[k];
  }
}

// Called by every thread of every block after the block wrote its part of partial row
// part[blockIdx.x, 0 .. Ct) of P = gridDim.x rows (the blocks of one blockIdx.x, over gridDim.y
// and gridDim.z, together write the row, or earlier kernels on the stream wrote what they do
// not): see PartialFinish.
__device__ __forceinline__ void finish_partials(const PartialFinish& f, const float* part) {
  __shared__ bool last;
  const int P = static_cast<int>(gridDim.x), Ct = f.dsts.n ? f.dsts.end[f.dsts.n - 1] : 0;
  const int per_row = static_cast<int>(gridDim.y * gridDim.z);
  const int threads = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  const int tid = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int groups = (P + f.group - 1) / f.group, grp = static_cast<int>(blockIdx.x) / f.group;
  const int p0 = grp * f.group, p1 = min(P, p0 + f.group);
  if (!last_arrival(f.counters + grp, static_cast<unsigned>((p1 - p0) * per_row), last)) return;
  for (int c = tid; c < Ct; c += threads) {
    float s = 0.f;
    for (int p = p0; p < p1; ++p) s += __ldcg(part + static_cast<int64_t>(p) * Ct + c);
    if (groups == 1)
      partial_add(f.dsts, c, s);
    else
      f.level[static_cast<int64_t>(grp) * Ct + c] = s;
  }
  if (groups == 1 || !last_arrival(f.counters + groups, static_cast<unsigned>(groups), last)) return;
  for (int c = tid; c < Ct; c += threads) {
    float s = 0.f;
    for (int q = 0; q < groups; ++q) s += __ldcg(f.level + static_cast<int64_t>(q) * Ct + c);
    partial_add(f.dsts, c, s);
  }
}
#endif

}  // namespace oft::ops
