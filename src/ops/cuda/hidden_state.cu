// CUDA hidden_state_sums (evaluation only): the sufficient statistics of seed B's hidden-state
// metrics (ops.h, HiddenStateSums; finished on the host in analysis/metrics.cpp), computed where
// the hidden state lives so that `oft validate` on a GPU copies no activations to the host.
// The CPU backend's cpu_hidden_state.cpp is the reference; the steps mirror it:
//   1. token_rows: one block per token n centres it over d (f64 block sums), writes x~_n to an
//      f64 copy X~ [N, d] and |x~_n|^2, and for the max / median ratio finds the lower median
//      of |x~_n| exactly by an 8-pass radix select on the bits of the non-negative doubles
//      (8 bits a pass, a 256-bin histogram in shared memory), so any d works without sorting.
//   2. token cosines: per sequence b the Gram S = X~_b X~_b^T [T, T] (cuBLASLt, f64), then one
//      block per row i sums c and c^2 over the pairs k > i (token_cos).
//   3. columns: column sums of x~ and x~^2 in 64-row chunks (col_partials), then the chunks
//      in order (col_reduce).
//   4. feature Gram: Y = X~ - mu in place, G = Y^T Y [d, d] (cuBLASLt, f64), its diagonal and
//      trace (gram_diag), then one block per row i sums F_ij^2 and G_ij^2 / (G_ii G_jj) over
//      j > i (gram_rows).
// Per-token and per-row partials come back to the host and are summed there in order. Sums run
// in another order than the CPU's sequential loops, and the products in another blocking: the
// statistics agree with the CPU's within the 1e-10 relative the GPU test allows (f64); the
// ratio's median and max are exact selections of the same values.
#include <math_constants.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/block_reduce_f64.cuh"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::ptr;
using cuda::to_f32;

// A stored value in f64: f32 and bf16 widen exactly, f64 stays as it is.
template <class T>
__device__ __forceinline__ double as_f64(T x) {
  return double(to_f32(x));
}
template <>
__device__ __forceinline__ double as_f64<double>(double x) {
  return x;
}

constexpr int kThreads = 256;
constexpr int64_t kColChunk = 64;  // rows per column-sum partial

__device__ __forceinline__ double block_sum(double v, double* red) {
  return cuda::block_sum_f64<kThreads>(v, red);
}

// Block-wide max of a non-negative double and OR of a flag (every thread gets both).
__device__ void block_max_or(double& m, int& flag, double* red, int* redf) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    m = fmax(m, __shfl_xor_sync(0xffffffffu, m, o));
    flag |= __shfl_xor_sync(0xffffffffu, flag, o);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    red[threadIdx.x >> 5] = m;
    redf[threadIdx.x >> 5] = flag;
  }
  __syncthreads();
  m = 0;
  flag = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    m = fmax(m, red[w]);
    flag |= redf[w];
  }
}

// Per token n: X[n, :] = x~_n, row_sq[n] = |x~_n|^2 and, when ratio, ratio[n] = max |x~_nj| /
// (lower median of |x~_nj|), NaN when the token holds a NaN.
template <class T>
__global__ void __launch_bounds__(kThreads)
    token_rows_kernel(const T* __restrict__ h, int64_t d, bool centre, double* __restrict__ X,
                      double* __restrict__ row_sq, double* __restrict__ ratio) {
  __shared__ double red[kThreads / 32];
  __shared__ int redf[kThreads / 32];
  const int64_t n = blockIdx.x;
  const T* x = h + n * d;
  double* xo = X + n * d;
  double mean = 0;
  if (centre) {
    double s = 0;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) s += as_f64(x[j]);
    mean = block_sum(s, red) / double(d);
  }
  double sq = 0, mx = 0;
  int nan = 0;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    const double v = as_f64(x[j]) - mean;
    xo[j] = v;
    sq += v * v;
    const double a = fabs(v);
    if (a > mx) mx = a;
    else if (isnan(a)) nan = 1;
  }
  sq = block_sum(sq, red);
  if (threadIdx.x == 0) row_sq[n] = sq;
  if (!ratio) return;
  block_max_or(mx, nan, red, redf);
  if (nan) {
    if (threadIdx.x == 0) ratio[n] = CUDART_NAN;
    return;
  }
  // Radix select of the element of rank k = (d - 1) / 2 among the keys |x~_nj| (a non-negative,
  // non-NaN double orders like its bit pattern), from the top byte down. Values are recomputed
  // from x exactly as above.
  __shared__ unsigned hist[256];
  __shared__ unsigned long long s_prefix;
  __shared__ long long s_rank;
  unsigned long long prefix = 0;
  long long rank = (d - 1) / 2;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    const unsigned long long hi_mask = shift == 56 ? 0ull : (~0ull << (shift + 8));
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      const unsigned long long key =
          static_cast<unsigned long long>(__double_as_longlong(fabs(as_f64(x[j]) - mean)));
      if ((key & hi_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long below = 0;
      int b = 0;
      for (; b < 255; ++b) {
        if (below + hist[b] > rank) break;
        below += hist[b];
      }
      s_prefix = prefix | (static_cast<unsigned long long>(b) << shift);
      s_rank = rank - below;
    }
    __syncthreads();
    prefix = s_prefix;
    rank = s_rank;
  }
  if (threadIdx.x == 0) ratio[n] = mx / __longlong_as_double(static_cast<long long>(prefix));
}

// part[c, 0, j] = sum of x~_nj and part[c, 1, j] = sum of x~_nj^2 over the rows n of chunk c
// (kColChunk rows), in row order. Grid (ceil(d / kThreads), chunks).
__global__ void __launch_bounds__(kThreads)
    col_partials_kernel(const double* __restrict__ X, int64_t N, int64_t d,
                        double* __restrict__ part) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= d) return;
  const int64_t n0 = int64_t(blockIdx.y) * kColChunk;
  const int64_t n1 = n0 + kColChunk < N ? n0 + kColChunk : N;
  double s = 0, q = 0;
  for (int64_t n = n0; n < n1; ++n) {
    const double v = X[n * d + j];
    s += v;
    q += v * v;
  }
  part[(int64_t(blockIdx.y) * 2) * d + j] = s;
  part[(int64_t(blockIdx.y) * 2 + 1) * d + j] = q;
}

// out[0, j], out[1, j] = the chunks' partials of column j summed in chunk order.
__global__ void col_reduce_kernel(const double* __restrict__ part, int64_t chunks, int64_t d,
                                  double* __restrict__ out) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= d) return;
  double s = 0, q = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    s += part[(c * 2) * d + j];
    q += part[(c * 2 + 1) * d + j];
  }
  out[j] = s;
  out[d + j] = q;
}

// X[n, j] -= mu[j].
__global__ void subtract_mean_kernel(double* __restrict__ X, int64_t total, int64_t d,
                                     const double* __restrict__ mu) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads)
    X[i] -= mu[i % d];
}

// One block: diag[j] = G_jj (contiguous for gram_rows) and diag[d] = trace(G) / d * 1e-24, the
// floor below which a feature counts as constant.
__global__ void __launch_bounds__(kThreads)
    gram_diag_kernel(const double* __restrict__ G, int64_t d, double* __restrict__ diag) {
  __shared__ double red[kThreads / 32];
  double tr = 0;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    const double g = G[j * d + j];
    diag[j] = g;
    tr += g;
  }
  tr = block_sum(tr, red);
  if (threadIdx.x == 0) diag[d] = tr / double(d) * 1e-24;
}

// One block per feature row i of G = Y^T Y: out[i] = (sum_{j>i} F_ij^2, F_ii^2,
// sum_{j>i, G_ii, G_jj > floor} G_ij^2 / (G_ii G_jj)), F = G + N mu mu^T; diag from
// gram_diag_kernel.
__global__ void __launch_bounds__(kThreads)
    gram_rows_kernel(const double* __restrict__ G, const double* __restrict__ diag,
                     const double* __restrict__ mu, int64_t d, double Nd,
                     double* __restrict__ out) {
  __shared__ double red[kThreads / 32];
  const int64_t i = blockIdx.x;
  const double floor = diag[d];
  const double gii = diag[i], mui = mu[i];
  double fo = 0, co = 0;
  for (int64_t j = i + 1 + threadIdx.x; j < d; j += kThreads) {
    const double gij = G[i * d + j];
    const double fij = gij + Nd * mui * mu[j];
    fo += fij * fij;
    const double gjj = diag[j];
    if (gii > floor && gjj > floor) {
      const double c = gij / sqrt(gii * gjj);
      co += c * c;
    }
  }
  fo = block_sum(fo, red);
  co = block_sum(co, red);
  if (threadIdx.x == 0) {
    const double fii = gii + Nd * mui * mui;
    out[3 * i] = fo;
    out[3 * i + 1] = fii * fii;
    out[3 * i + 2] = co;
  }
}

// One block per token i of a sequence with Gram S [T, T]: out[i] = (sum c, sum c^2) over
// k > i with c = S_ik / sqrt(q_i q_k), tokens with q = |x~|^2 not above floor (or 0) left out.
__global__ void __launch_bounds__(kThreads)
    token_cos_kernel(const double* __restrict__ S, const double* __restrict__ q, int64_t T,
                     double floor, double* __restrict__ out) {
  __shared__ double red[kThreads / 32];
  const int64_t i = blockIdx.x;
  const double qn = q[i];
  const bool live = qn > floor && qn != 0;  // uniform over the block
  double cs = 0, cq = 0;
  if (live) {
    for (int64_t k = i + 1 + threadIdx.x; k < T; k += kThreads) {
      const double qm = q[k];
      if (!(qm > floor) || qm == 0) continue;
      const double c = S[i * T + k] / sqrt(qn * qm);
      cs += c;
      cq += c * c;
    }
  }
  cs = block_sum(cs, red);
  cq = block_sum(cq, red);
  if (threadIdx.x == 0) {
    out[2 * i] = cs;
    out[2 * i + 1] = cq;
  }
}

unsigned grid_of(int64_t n) { return static_cast<unsigned>(cuda::ceil_div(n, kThreads)); }

}  // namespace

HiddenStateSums CudaBackend::hidden_state_sums(const Tensor& h, int64_t B, int64_t T,
                                               unsigned parts, bool centre) {
  check_hidden_state_sums_args(h, B, T, parts);
  cuda::expect_cuda(h, "hidden_state_sums h");
  HiddenStateSums s;
  const int64_t d = h.dim(-1), N = h.numel() / d;
  s.N = N;
  s.d = d;
  // (Column partials put 64-row chunks on grid.y: at most 65535 of them.)
  OFT_CHECK(N <= 65535 * kColChunk && d <= int64_t(0x7fffffff),
            "hidden_state_sums: too many tokens or features (", N, " x ", d, ")");
  const bool ratio = parts & HiddenStateSums::kMaxMedian;
  const bool gram = parts & HiddenStateSums::kFeatureGram;
  const bool columns = gram || (parts & HiddenStateSums::kColumns);
  const bool tokens = (parts & HiddenStateSums::kTokenCos) && T >= 2;

  // 1. X~, |x~_n|^2 and the ratios.
  Tensor X = Tensor::empty({N, d}, DType::F64, Device::CUDA);
  Tensor per_token = Tensor::empty({ratio ? 2 : 1, N}, DType::F64, Device::CUDA);
  double* row_sq_dev = ptr<double>(per_token);
  auto token_rows = [&](auto* values) {
    using V = std::remove_const_t<std::remove_pointer_t<decltype(values)>>;
    token_rows_kernel<V><<<static_cast<unsigned>(N), kThreads, 0, cuda::stream()>>>(
        values, d, centre, ptr<double>(X), row_sq_dev, ratio ? row_sq_dev + N : nullptr);
    OFT_CUDA_LAUNCH_CHECK();
  };
  if (h.dtype() == DType::F64)
    token_rows(ptr<const double>(h));
  else if (h.dtype() == DType::F32)
    token_rows(ptr<const float>(h));
  else
    token_rows(ptr<const __nv_bfloat16>(h));
  const std::vector<double> pt = per_token.to_vector();  // waits
  for (int64_t n = 0; n < N; ++n) {
    const double v = pt[static_cast<size_t>(n)];
    s.row_sq += v;
    s.row_sq2 += v * v;
  }
  if (ratio)
    for (int64_t n = 0; n < N; ++n) s.ratio_sum += pt[static_cast<size_t>(N + n)];

  // 2. Token cosines within each sequence (before X~ is centred over the tokens in step 4).
  if (tokens) {
    const double floor = s.row_sq / static_cast<double>(N) * 1e-24;
    Tensor S = Tensor::empty({T, T}, DType::F64, Device::CUDA);
    Tensor cos = Tensor::empty({N, 2}, DType::F64, Device::CUDA);
    for (int64_t b = 0; b < B; ++b) {
      const Tensor Xb = X.slice(b * T, (b + 1) * T);
      matmul(S, Xb, false, Xb, true, 1.0, 0.0);
      token_cos_kernel<<<static_cast<unsigned>(T), kThreads, 0, cuda::stream()>>>(
          ptr<double>(S), row_sq_dev + b * T, T, floor, ptr<double>(cos) + 2 * b * T);
      OFT_CUDA_LAUNCH_CHECK();
    }
    const std::vector<double> c = cos.to_vector();
    for (int64_t n = 0; n < N; ++n) {
      s.cos_sum += c[static_cast<size_t>(2 * n)];
      s.cos_sq += c[static_cast<size_t>(2 * n + 1)];
    }
  }

  // 3. Column sums.
  if (columns) {
    const int64_t chunks = cuda::ceil_div(N, kColChunk);
    Tensor part = Tensor::empty({chunks, 2, d}, DType::F64, Device::CUDA);
    Tensor cols = Tensor::empty({2, d}, DType::F64, Device::CUDA);
    col_partials_kernel<<<dim3(grid_of(d), static_cast<unsigned>(chunks)), kThreads, 0,
                          cuda::stream()>>>(ptr<double>(X), N, d, ptr<double>(part));
    OFT_CUDA_LAUNCH_CHECK();
    col_reduce_kernel<<<grid_of(d), kThreads, 0, cuda::stream()>>>(ptr<double>(part), chunks, d,
                                                                   ptr<double>(cols));
    OFT_CUDA_LAUNCH_CHECK();
    const std::vector<double> cv = cols.to_vector();
    s.col_sum.assign(cv.begin(), cv.begin() + d);
    s.col_sq.assign(cv.begin() + d, cv.end());
  }

  // 4. The feature Gram of the column-centred tokens.
  if (gram) {
    const double Nd = static_cast<double>(N);
    std::vector<double> mu(s.col_sum);
    for (double& v : mu) v /= Nd;
    const Tensor mu_dev = Tensor::from_vector({d}, mu, DType::F64).to(Device::CUDA);
    subtract_mean_kernel<<<static_cast<unsigned>(std::min<int64_t>(grid_of(N * d), 8192)),
                           kThreads, 0, cuda::stream()>>>(ptr<double>(X), N * d, d,
                                                          ptr<double>(mu_dev));
    OFT_CUDA_LAUNCH_CHECK();
    Tensor G = Tensor::empty({d, d}, DType::F64, Device::CUDA);
    matmul(G, X, true, X, false, 1.0, 0.0);
    Tensor diag = Tensor::empty({d + 1}, DType::F64, Device::CUDA);
    gram_diag_kernel<<<1, kThreads, 0, cuda::stream()>>>(ptr<double>(G), d, ptr<double>(diag));
    OFT_CUDA_LAUNCH_CHECK();
    Tensor rows = Tensor::empty({d, 3}, DType::F64, Device::CUDA);
    gram_rows_kernel<<<static_cast<unsigned>(d), kThreads, 0, cuda::stream()>>>(
        ptr<double>(G), ptr<double>(diag), ptr<double>(mu_dev), d, Nd, ptr<double>(rows));
    OFT_CUDA_LAUNCH_CHECK();
    const std::vector<double> g = rows.to_vector();
    for (int64_t i = 0; i < d; ++i) {
      s.f_off += g[static_cast<size_t>(3 * i)];
      s.f_diag += g[static_cast<size_t>(3 * i + 1)];
      s.cos_off += g[static_cast<size_t>(3 * i + 2)];
    }
  }
  return s;
}

}  // namespace oft::ops
