// Row selection for the masked-LM head: gather the masked positions' hidden rows into a dense
// [M, C] block, and scatter their gradients back. One warp per row, 16-byte packs when the rows
// allow it (C * sizeof(T) a multiple of 16 and aligned bases), else 4-byte words.
#include <cstdint>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::aligned16;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

// dense[i] <-> sparse[idx[i]] rows of `words` units of W (uint4 or uint32_t).
template <class W, bool kGather>
__global__ void rows_kernel(W* dense, W* sparse, const int32_t* __restrict__ idx, int64_t M,
                            int64_t words) {
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (i >= M) return;
  const int64_t j = idx[i];
  W* d = dense + i * words;
  W* s = sparse + j * words;
  for (int64_t k = threadIdx.x % 32; k < words; k += 32) {
    if constexpr (kGather)
      d[k] = s[k];
    else
      s[k] = d[k];
  }
}

template <bool kGather>
void launch_rows(const Tensor& dense, const Tensor& sparse, const Tensor& idx, const char* what) {
  cuda::expect_cuda(dense, what);
  cuda::expect_cuda(sparse, what);
  cuda::expect_dtype(idx, DType::I32, what);
  OFT_ASSERT(dense.ndim() == 2 && sparse.ndim() == 2 && dense.dim(1) == sparse.dim(1) &&
                 dense.dtype() == sparse.dtype() && idx.numel() == dense.dim(0),
             what, ": rows ", shape_str(dense.shape()), " / ", shape_str(sparse.shape()), " with ",
             idx.numel(), " indices");
  const int64_t M = dense.dim(0);
  if (M == 0) return;
  const int64_t bytes = dense.dim(1) * int64_t(dtype_size(dense.dtype()));
  const unsigned blocks = static_cast<unsigned>(cuda::ceil_div(M, kRowsPerBlock));
  const bool vec = bytes % 16 == 0 && aligned16(dense.raw()) && aligned16(sparse.raw());
  OFT_ASSERT(bytes % 4 == 0, what, ": rows of ", bytes, " bytes (need a multiple of 4)");
  if (vec)
    rows_kernel<uint4, kGather><<<blocks, kThreads, 0, cuda::stream()>>>(
        static_cast<uint4*>(dense.raw()), static_cast<uint4*>(sparse.raw()),
        idx.data<int32_t>(), M, bytes / 16);
  else
    rows_kernel<uint32_t, kGather><<<blocks, kThreads, 0, cuda::stream()>>>(
        static_cast<uint32_t*>(dense.raw()), static_cast<uint32_t*>(sparse.raw()),
        idx.data<int32_t>(), M, bytes / 4);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace

// Indices come from the host (positions with a target), so they are in range by construction.
void CudaBackend::gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  launch_rows<true>(dst, src, idx, "gather_rows");
}

void CudaBackend::scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  launch_rows<false>(src, dst, idx, "scatter_rows");
}

}  // namespace oft::ops
