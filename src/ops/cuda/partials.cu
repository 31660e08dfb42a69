// Column sums of per-block partial rows (see partials.cuh) in one launch: blocks of 32 columns x
// 32 row strides sum row splits, and the last block of each column tile to finish adds the
// splits, in split order, into the destination. Also the arrival counters that let a kernel's
// last block finish such a reduction (tile_counters).
#include <algorithm>
#include <cmath>

#include "core/tensor.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

constexpr int kMaxSplits = 32;

// Column sums of partial rows, part [P, Ct] (f32, row-major), in a fixed order. Block (32, 32):
// threadIdx.x picks the column (coalesced), threadIdx.y strides over the rows
// [blockIdx.y * rows, ...). With one split the block adds its sums to the destination whose
// column range holds c (PartialDsts, see partials.cuh); otherwise it writes them to
// level[blockIdx.y, Ct], and the last block of its column tile to arrive (counters[blockIdx.x])
// sums the splits in order and adds them.
__global__ void sum_partials_kernel(const PartialDsts dsts, const float* part, float* level,
                                    int P, int Ct, int rows, unsigned* counters) {
  __shared__ float acc[32][33];
  __shared__ bool last;
  const int c = blockIdx.x * 32 + threadIdx.x, splits = gridDim.y;
  const int p0 = blockIdx.y * rows, p1 = min(P, p0 + rows);
  float s = 0.f;
  if (c < Ct)
    for (int p = p0 + threadIdx.y; p < p1; p += 32) s += part[static_cast<int64_t>(p) * Ct + c];
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  float t = 0.f;
  if (threadIdx.y == 0 && c < Ct) {
    for (int y = 0; y < 32; ++y) t += acc[y][threadIdx.x];
    if (splits == 1)
      partial_add(dsts, c, t);
    else
      level[static_cast<int64_t>(blockIdx.y) * Ct + c] = t;
  }
  if (splits == 1) return;
  if (!last_arrival(counters + blockIdx.x, splits, last)) return;
  s = 0.f;
  if (c < Ct)
    for (int q = threadIdx.y; q < splits; q += 32) s += __ldcg(level + static_cast<int64_t>(q) * Ct + c);
  acc[threadIdx.y][threadIdx.x] = s;  // every reader of the first sums passed last_arrival's barriers
  __syncthreads();
  if (threadIdx.y == 0 && c < Ct) {
    t = 0.f;
    for (int y = 0; y < 32; ++y) t += acc[y][threadIdx.x];
    partial_add(dsts, c, t);
  }
}

}  // namespace

unsigned* tile_counters(int64_t n) {
  static Tensor* buf = new Tensor();  // never destroyed: kernels may use it until exit
  if (!buf->defined() || buf->numel() < n) {
    if (buf->defined()) cuda::synchronize();
    *buf = Tensor::empty({std::max<int64_t>(n, 4096)}, DType::I32, Device::CUDA);
    OFT_CUDA_CHECK(cudaMemsetAsync(buf->raw(), 0, size_t(buf->numel()) * 4, cuda::stream()));
  }
  return static_cast<unsigned*>(buf->raw());
}

size_t partial_floats(int64_t P, int Ct) {
  return static_cast<size_t>(P + kMaxSplits) * static_cast<size_t>(Ct);
}

void PartialDsts::add(float* d, int c) {
  if (c == 0) return;
  OFT_ASSERT(n < kMax && d, "PartialDsts: at most ", kMax, " destinations, none null");
  dst[n] = d;
  end[n] = cols() + c;
  ++n;
}

void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct, float* dst2) {
  PartialDsts d;
  d.add(dst0, C0);
  if (dst2) {
    d.add(dst1, C0);
    d.add(dst2, Ct - 2 * C0);
  } else {
    d.add(dst1, Ct - C0);
  }
  reduce_partials_to(d, part, P);
}

PartialFinish partial_finish(const PartialDsts& dsts, float* part, int P) {
  PartialFinish f;
  f.dsts = dsts;
  // About sqrt(P) rows per level; at most kMaxSplits groups fit the scratch after the rows.
  f.group = std::max(1, static_cast<int>(std::ceil(std::sqrt(double(std::max(P, 1))))));
  f.group = std::max<int>(f.group, static_cast<int>(cuda::ceil_div(P, kMaxSplits)));
  f.level = part + static_cast<int64_t>(P) * dsts.cols();
  f.counters = tile_counters(cuda::ceil_div(P, f.group) + 1);
  return f;
}

// Up to 32 row splits (enough blocks to keep the GPU busy even when Ct is a few hundred).
void reduce_partials_to(const PartialDsts& dsts, float* part, int P) {
  const int Ct = dsts.cols();
  const unsigned cblocks = static_cast<unsigned>(cuda::ceil_div(Ct, 32));
  const int splits = P > 64 ? static_cast<int>(std::min<int64_t>(kMaxSplits, cuda::ceil_div(P, 32))) : 1;
  const int per = static_cast<int>(cuda::ceil_div(P, splits));
  const unsigned grid_y = static_cast<unsigned>(cuda::ceil_div(P, per));
  float* level = part + static_cast<int64_t>(P) * Ct;
  sum_partials_kernel<<<dim3(cblocks, grid_y), dim3(32, 32), 0, cuda::stream()>>>(
      dsts, part, level, P, Ct, per,
      grid_y > 1 ? tile_counters(cblocks) : nullptr);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace oft::ops
