// Column sums of per-block partial rows (see partials.cuh): a first level sums many rows in up
// to kMaxSplits row splits, a second sums the splits into the destination, both with blocks of
// 32 columns x 32 row strides and a fixed order.
#include <algorithm>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

// Column sums of partial rows, part [P, Ct] (f32, row-major), in a fixed order. Block (32, 32):
// threadIdx.x picks the column (coalesced), threadIdx.y strides over the rows
// [blockIdx.y * rows, ...). With out set, the block's sums go to out[blockIdx.y, Ct] (first
// level); otherwise they are added to dst0[c] (c < C0) or dst1[c - C0] (final level).
__global__ void sum_partials_kernel(float* out, float* dst0, float* dst1, int C0, const float* part,
                                    int P, int Ct, int rows) {
  __shared__ float acc[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int p0 = blockIdx.y * rows, p1 = min(P, p0 + rows);
  float s = 0.f;
  if (c < Ct)
    for (int p = p0 + threadIdx.y; p < p1; p += 32) s += part[static_cast<int64_t>(p) * Ct + c];
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < Ct) {
    float t = 0.f;
    for (int y = 0; y < 32; ++y) t += acc[y][threadIdx.x];
    if (out)
      out[static_cast<int64_t>(blockIdx.y) * Ct + c] = t;
    else if (c < C0)
      dst0[c] += t;
    else
      dst1[c - C0] += t;
  }
}

constexpr int kMaxSplits = 32;

}  // namespace

size_t partial_floats(int64_t P, int Ct) {
  return static_cast<size_t>(P + kMaxSplits) * static_cast<size_t>(Ct);
}

// Many partial rows are first summed in up to 32
// row splits (enough blocks to keep the GPU busy even when Ct is a few hundred), then the splits.
void reduce_partials(float* dst0, float* dst1, int C0, float* part, int P, int Ct) {
  const unsigned cblocks = static_cast<unsigned>(cuda::ceil_div(Ct, 32));
  const float* src = part;
  int rows = P;
  if (P > 64) {
    const int splits = static_cast<int>(std::min<int64_t>(kMaxSplits, cuda::ceil_div(P, 32)));
    const int per = static_cast<int>(cuda::ceil_div(P, splits));
    float* level = part + static_cast<int64_t>(P) * Ct;
    sum_partials_kernel<<<dim3(cblocks, static_cast<unsigned>(cuda::ceil_div(P, per))),
                          dim3(32, 32), 0, cuda::stream()>>>(level, nullptr, nullptr, 0, part, P,
                                                             Ct, per);
    OFT_CUDA_LAUNCH_CHECK();
    src = level;
    rows = static_cast<int>(cuda::ceil_div(P, per));
  }
  sum_partials_kernel<<<dim3(cblocks, 1), dim3(32, 32), 0, cuda::stream()>>>(
      nullptr, dst0, dst1, C0, src, rows, Ct, rows);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace oft::ops
