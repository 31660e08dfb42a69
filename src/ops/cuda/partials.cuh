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

// Sum of rows p0 .. p1 - 1 (in that order) of column c of a [rows, Ct] f32 matrix in L2, by
// batches of 8 rows whose loads are all in flight before the adds; scalar or, with V = 4, four
// columns c .. c + 3 (16-byte aligned rows).
template <int V>
struct PartialCols;
template <>
struct PartialCols<1> {
  using T = float;
  static __device__ __forceinline__ T zero() { return 0.f; }
  static __device__ __forceinline__ T load(const float* m, int64_t p, int Ct, int c) {
    return __ldcg(m + p * Ct + c);
  }
  static __device__ __forceinline__ void add(T& s, const T& v) { s += v; }
  static __device__ __forceinline__ float get(const T& s, int) { return s; }
};
template <>
struct PartialCols<4> {
  using T = float4;
  static __device__ __forceinline__ T zero() { return make_float4(0.f, 0.f, 0.f, 0.f); }
  static __device__ __forceinline__ T load(const float* m, int64_t p, int Ct, int c) {
    return __ldcg(reinterpret_cast<const float4*>(m + p * Ct + c));
  }
  static __device__ __forceinline__ void add(T& s, const T& v) {
    s.x += v.x;
    s.y += v.y;
    s.z += v.z;
    s.w += v.w;
  }
  static __device__ __forceinline__ float get(const T& s, int k) {
    return k == 0 ? s.x : k == 1 ? s.y : k == 2 ? s.z : s.w;
  }
};

// Rows p0 .. p1 - 1 of `m` [rows, Ct] summed per column in row order, V columns per thread step;
// each column's sum goes to out(c, sum). (Summing one row at a time kept one L2 round trip per
// few rows on the critical path: at P = 264 partial rows of 2304 columns the two levels took
// 14 us of the LayerNorm backward's 65.)
template <int V, class Out>
__device__ __forceinline__ void sum_partial_rows(const float* m, int p0, int p1, int Ct, int tid,
                                                 int threads, Out out) {
  using C = PartialCols<V>;
  for (int c = V * tid; c < Ct; c += V * threads) {
    typename C::T s = C::zero();
    for (int p = p0; p < p1; p += 8) {
      typename C::T v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = p + k < p1 ? C::load(m, p + k, Ct, c) : C::zero();
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (p + k < p1) C::add(s, v[k]);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) out(c + k, C::get(s, k));
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
  // Four columns per step where the rows are 16-byte aligned (level follows the P rows).
  const bool vec = Ct % 4 == 0 && (reinterpret_cast<uintptr_t>(part) & 15) == 0;
  auto to_level = [&](int c, float s) {
    if (groups == 1)
      partial_add(f.dsts, c, s);
    else
      f.level[static_cast<int64_t>(grp) * Ct + c] = s;
  };
  if (vec)
    sum_partial_rows<4>(part, p0, p1, Ct, tid, threads, to_level);
  else
    sum_partial_rows<1>(part, p0, p1, Ct, tid, threads, to_level);
  if (groups == 1 || !last_arrival(f.counters + groups, static_cast<unsigned>(groups), last)) return;
  auto to_dst = [&](int c, float s) { partial_add(f.dsts, c, s); };
  if (vec)
    sum_partial_rows<4>(f.level, 0, groups, Ct, tid, threads, to_dst);
  else
    sum_partial_rows<1>(f.level, 0, groups, Ct, tid, threads, to_dst);
}
#endif

}  // namespace oft::ops
