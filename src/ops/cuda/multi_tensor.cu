// AdamW (decoupled weight decay, PyTorch semantics) on f32 master weights, gradients and
// moments, matching CpuBackend::adamw operation for operation:
//   g = grad * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   param = param * (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
// with the same f32 constants and explicitly rounded operations (__fmul_rn, __fsqrt_rn, ...), so
// neither --use_fast_math nor FMA contraction changes the result. The single-tensor op is the
// multi-tensor one with one item. With AdamWStep::stats the kernels take the gradient scale
// (or the decision to skip the step) from the device, where clip_from_stats wrote it.
//
// Multi-tensor ops: the optimizer step, the global gradient norm and zeroing the gradients, each
// in one launch over every parameter instead of one launch per tensor (a 124M-parameter GPT-2
// has 148 tensors: 4 x 148 small launches cost about 5 ms per step). The single-tensor adamw
// and sum_squares_into are their one-item case.
//
// The tensors of one launch are described in a kernel parameter (up to kMaxSegs segments; more
// are split over several launches). Each segment is cut into chunks of kChunk elements; block b
// finds its segment by binary search over the chunk prefix sums and walks its chunk with
// coalesced per-thread strides; AdamW moves four elements per access (16-byte loads and
// stores) where every array of the segment is so aligned, which the parameter arena gives
// (H100, gpt2_124m's 124M parameters: see docs/performance.md). The norm is deterministic:
// per-block partials summed in a fixed order.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per block
constexpr int kMaxSegs = 96;

enum CopyKind : int { kNoCopy = 0, kCopyBF16 = 1, kCopyF32 = 2 };

// One tensor of a launch. AdamW uses p / g / m / v and writes the compute copy `copy` (of
// dtype copy_kind); the single-tensor ops (norm, zeroing) read or write `copy` alone.
struct Seg {
  float* p;
  const float* g;
  float* m;
  float* v;
  void* copy;
  int64_t n;
  float decay;
  int16_t copy_kind;
  int16_t vec4;  // AdamW: p, g, m, v (and the copy) aligned for 4-element accesses
};

struct Segs {
  Seg seg[kMaxSegs];
  int64_t chunk_begin[kMaxSegs + 1];
  int count;
};

struct AdamWConsts {
  float b1, one_minus_b1, b2, one_minus_b2, grad_scale, step_size, inv_sqrt_bc2, eps;
  const double* stats;  // AdamWStep::stats (f64 [4]) or null
};

// AdamWStep::stats: the gradient scale from stats[2]; false (update nothing) when stats[3] marks
// a non-finite step. float(double) rounds as the host's conversion of grad_scale does.
__device__ __forceinline__ bool take_stats(AdamWConsts& k) {
  if (!k.stats) return true;
  if (k.stats[3] != 0.0) return false;
  k.grad_scale = __double2float_rn(k.stats[2]);
  return true;
}

__device__ __forceinline__ int find_seg(const Segs& s, int64_t chunk) {
  int lo = 0, hi = s.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (s.chunk_begin[mid] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// One element's update: m and v in place, returns the new parameter.
__device__ __forceinline__ float adamw_elem(float p, float g, float& m, float& v, float decay,
                                            const AdamWConsts& k) {
  const float gi = __fmul_rn(g, k.grad_scale);
  m = __fadd_rn(__fmul_rn(k.b1, m), __fmul_rn(k.one_minus_b1, gi));
  v = __fadd_rn(__fmul_rn(k.b2, v), __fmul_rn(__fmul_rn(k.one_minus_b2, gi), gi));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), k.inv_sqrt_bc2), k.eps);
  return __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(k.step_size, m), denom));
}

__device__ __forceinline__ void adamw_scalar(const Seg& sg, int64_t i, const AdamWConsts& k) {
  float m = sg.m[i], v = sg.v[i];
  const float p = adamw_elem(sg.p[i], sg.g[i], m, v, sg.decay, k);
  sg.m[i] = m;
  sg.v[i] = v;
  sg.p[i] = p;
  if (sg.copy_kind == kCopyBF16)
    static_cast<__nv_bfloat16*>(sg.copy)[i] = __float2bfloat16_rn(p);
  else if (sg.copy_kind == kCopyF32)
    static_cast<float*>(sg.copy)[i] = p;
}

// Elements [begin, end) of a segment by the block's threads: groups of four with 16-byte
// accesses from `begin` (a multiple of 4) where the segment allows, then one at a time.
__device__ __forceinline__ void adamw_span(const Seg& sg, int64_t begin, int64_t end,
                                           const AdamWConsts& k) {
  int64_t tail = begin;  // where the scalar loop starts
  if (sg.vec4) {
    const int64_t end4 = begin + ((end - begin) & ~int64_t(3));
    for (int64_t i = begin + 4 * int64_t(threadIdx.x); i < end4; i += 4 * kThreads) {
      float p[4], g[4], m[4], v[4];
      cuda::load_pack<float, 4>(sg.p + i, p);
      cuda::load_pack<float, 4>(sg.g + i, g);
      cuda::load_pack<float, 4>(sg.m + i, m);
      cuda::load_pack<float, 4>(sg.v + i, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) p[e] = adamw_elem(p[e], g[e], m[e], v[e], sg.decay, k);
      cuda::store_pack<float, 4>(sg.m + i, m);
      cuda::store_pack<float, 4>(sg.v + i, v);
      cuda::store_pack<float, 4>(sg.p + i, p);
      if (sg.copy_kind == kCopyBF16)
        cuda::store_pack<__nv_bfloat16, 4>(static_cast<__nv_bfloat16*>(sg.copy) + i, p);
      else if (sg.copy_kind == kCopyF32)
        cuda::store_pack<float, 4>(static_cast<float*>(sg.copy) + i, p);
    }
    tail = end4;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) adamw_scalar(sg, i, k);
}

__global__ void __launch_bounds__(kThreads)
    adamw_multi_kernel(const __grid_constant__ Segs s, AdamWConsts k) {
  if (!take_stats(k)) return;
  const int64_t chunk = blockIdx.x;
  const Seg& sg = s.seg[find_seg(s, chunk)];
  const int64_t begin = (chunk - s.chunk_begin[&sg - s.seg]) * kChunk;
  adamw_span(sg, begin, min(sg.n, begin + kChunk), k);
}

// Some rows of one tensor [n / cols, cols]: block b updates row rows[b].
__global__ void __launch_bounds__(kThreads)
    adamw_rows_kernel(const Seg sg, const int32_t* rows, int64_t cols, AdamWConsts k) {
  if (!take_stats(k)) return;
  const int64_t begin = int64_t(rows[blockIdx.x]) * cols;
  adamw_span(sg, begin, begin + cols, k);
}

// partials[chunk] = sum of x^2 over the chunk (f32 per thread, f64 across the block).
__global__ void __launch_bounds__(kThreads)
    sum_squares_multi_kernel(const __grid_constant__ Segs s, double* partials) {
  const int64_t chunk = blockIdx.x;
  const Seg& sg = s.seg[find_seg(s, chunk)];
  const int64_t begin = (chunk - s.chunk_begin[&sg - s.seg]) * kChunk;
  const int64_t end = min(sg.n, begin + kChunk);
  float acc = 0.f;
  if (sg.copy_kind == kCopyBF16) {
    const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(sg.copy);
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const float t = __bfloat162float(x[i]);
      acc = fmaf(t, t, acc);
    }
  } else {
    const float* x = static_cast<const float*>(sg.copy);
    int64_t tail = begin;
    if (sg.vec4) {  // 16-byte loads over whole groups of four
      const int64_t end4 = begin + ((end - begin) & ~int64_t(3));
      for (int64_t i = begin + 4 * int64_t(threadIdx.x); i < end4; i += 4 * kThreads) {
        float q[4];
        cuda::load_pack<float, 4>(x + i, q);
#pragma unroll
        for (int e = 0; e < 4; ++e) acc = fmaf(q[e], q[e], acc);
      }
      tail = end4;
    }
    for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) acc = fmaf(x[i], x[i], acc);
  }
  double d = acc;
  for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
  __shared__ double warp[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp[threadIdx.x / 32] = d;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kThreads / 32; ++w) t += warp[w];
    partials[chunk] = t;
  }
}

// acc[0] += partials[0..n) in index order (one block).
__global__ void add_in_order(double* acc, const double* partials, int64_t n) {
  __shared__ double part[kThreads];
  const int64_t per = (n + kThreads - 1) / kThreads;
  double t = 0;
  for (int64_t i = threadIdx.x * per; i < min(n, (threadIdx.x + 1) * per); ++i) t += partials[i];
  part[threadIdx.x] = t;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int i = 0; i < kThreads; ++i) s += part[i];
    acc[0] += s;
  }
}

__global__ void __launch_bounds__(kThreads) zero_multi_kernel(const __grid_constant__ Segs s) {
  const int64_t chunk = blockIdx.x;
  const Seg& sg = s.seg[find_seg(s, chunk)];
  const int64_t begin = (chunk - s.chunk_begin[&sg - s.seg]) * kChunk;
  const int64_t end = min(sg.n, begin + kChunk);
  if (sg.copy_kind == kCopyBF16) {
    __nv_bfloat16* x = static_cast<__nv_bfloat16*>(sg.copy);
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) x[i] = __float2bfloat16_rn(0.f);
  } else {
    float* x = static_cast<float*>(sg.copy);
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) x[i] = 0.f;
  }
}

// stats [4]: [2] the clipping factor, [3] whether [0] or [1] is not finite (clip_from_stats).
__global__ void clip_from_stats_kernel(double* st, double max_norm) {
  st[2] = clip_factor(max_norm, sqrt(st[0]));
  st[3] = isfinite(st[0]) && isfinite(st[1]) ? 0.0 : 1.0;
}

// A single-tensor segment: the tensor in `copy`, its dtype in copy_kind.
Seg tensor_seg(const Tensor& x) {
  Seg sg{};
  sg.copy = x.raw();
  sg.copy_kind = x.dtype() == DType::BF16 ? kCopyBF16 : kCopyF32;
  sg.n = x.numel();
  sg.vec4 = reinterpret_cast<uintptr_t>(sg.copy) % 16 == 0;
  return sg;
}

// Groups segments into launches of at most kMaxSegs; calls launch(segs, chunks) for each.
template <class Fill, class Launch>
void for_each_launch(size_t n, Fill&& fill, Launch&& launch) {
  for (size_t first = 0; first < n; first += kMaxSegs) {
    Segs s{};
    s.count = 0;
    int64_t chunks = 0;
    for (size_t i = first; i < std::min(n, first + kMaxSegs); ++i) {
      Seg sg{};
      fill(i, sg);
      if (sg.n == 0) continue;
      s.chunk_begin[s.count] = chunks;
      s.seg[s.count++] = sg;
      chunks += (sg.n + kChunk - 1) / kChunk;
    }
    s.chunk_begin[s.count] = chunks;
    if (chunks > 0) launch(s, chunks);
  }
}

}  // namespace

void CudaBackend::adamw_multi(const std::vector<AdamWTensors>& items, const AdamWStep& h) {
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  AdamWConsts k{float(h.beta1),       1.f - float(h.beta1), float(h.beta2),
                1.f - float(h.beta2), float(h.grad_scale),  float(h.lr / bc1),
                float(1.0 / std::sqrt(bc2)), float(h.eps), nullptr};
  if (h.stats) {
    cuda::expect_dtype(*h.stats, DType::F64, "adamw_multi stats");
    OFT_ASSERT(h.stats->numel() == 4 && h.stats->device() == Device::CUDA,
               "adamw_multi: stats must be f64 [4] on the GPU");
    k.stats = h.stats->data<double>();
  }
  for (const AdamWTensors& t : items) {
    cuda::expect_dtype(*t.param, DType::F32, "adamw_multi param (master weights are f32)");
    cuda::expect_dtype(*t.grad, DType::F32, "adamw_multi grad");
    cuda::expect_dtype(*t.m, DType::F32, "adamw_multi m");
    cuda::expect_dtype(*t.v, DType::F32, "adamw_multi v");
    OFT_ASSERT(t.grad->numel() == t.param->numel() && t.m->numel() == t.param->numel() &&
                   t.v->numel() == t.param->numel(),
               "adamw_multi: tensor sizes differ");
  }
  // Items of some rows: one launch each, a block per row; the others together.
  std::vector<const AdamWTensors*> whole, by_rows;
  for (const AdamWTensors& t : items) (t.rows ? by_rows : whole).push_back(&t);
  auto fill = [&](const AdamWTensors& t, Seg& sg) {
    sg.p = static_cast<float*>(t.param->raw());
    sg.g = static_cast<const float*>(t.grad->raw());
    sg.m = static_cast<float*>(t.m->raw());
    sg.v = static_cast<float*>(t.v->raw());
    sg.n = t.param->numel();
    sg.decay = float(1.0 - h.lr * t.weight_decay);
    sg.copy_kind = kNoCopy;
    if (t.compute && !t.compute->same_storage(*t.param)) {
      cuda::expect_float(*t.compute, "adamw_multi compute copy");
      OFT_ASSERT(t.compute->numel() == sg.n, "adamw_multi: compute copy size");
      sg.copy = t.compute->raw();
      sg.copy_kind = t.compute->dtype() == DType::BF16 ? kCopyBF16 : kCopyF32;
    }
    auto aligned = [](const void* q, uintptr_t a) {
      return reinterpret_cast<uintptr_t>(q) % a == 0;
    };
    sg.vec4 = aligned(sg.p, 16) && aligned(sg.g, 16) && aligned(sg.m, 16) &&
              aligned(sg.v, 16) &&
              (sg.copy_kind == kNoCopy || aligned(sg.copy, sg.copy_kind == kCopyBF16 ? 8 : 16));
  };
  for_each_launch(
      whole.size(), [&](size_t i, Seg& sg) { fill(*whole[i], sg); },
      [&](const Segs& s, int64_t chunks) {
        adamw_multi_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, cuda::stream()>>>(s, k);
        OFT_CUDA_LAUNCH_CHECK();
      });
  for (const AdamWTensors* t : by_rows) {
    const Tensor& rows = *t->rows;
    cuda::expect_dtype(rows, DType::I32, "adamw_multi rows");
    OFT_ASSERT(rows.device() == Device::CUDA && rows.ndim() == 1 && t->param->ndim() >= 1,
               "adamw_multi: rows must be an i32 vector on the GPU");
    if (rows.numel() == 0) continue;
    Seg sg{};
    fill(*t, sg);
    const int64_t cols = sg.n / t->param->dim(0);
    sg.vec4 = sg.vec4 && cols % 4 == 0;  // every row starts 16-byte aligned
    adamw_rows_kernel<<<static_cast<unsigned>(rows.numel()), kThreads, 0, cuda::stream()>>>(
        sg, rows.data<int32_t>(), cols, k);
    OFT_CUDA_LAUNCH_CHECK();
  }
}

void CudaBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                        const AdamWStep& h) {
  OFT_ASSERT(h.step >= 1, "adamw: step is 1-based, got ", h.step);
  adamw_multi({AdamWTensors{&param, &grad, &m, &v, nullptr, h.weight_decay}}, h);
}

void CudaBackend::clip_from_stats(Tensor& stats, double max_norm) {
  cuda::expect_dtype(stats, DType::F64, "clip_from_stats stats");
  OFT_ASSERT(stats.numel() == 4, "clip_from_stats: stats must be f64 [4]");
  clip_from_stats_kernel<<<1, 1, 0, cuda::stream()>>>(stats.data<double>(), max_norm);
  OFT_CUDA_LAUNCH_CHECK();
}

void CudaBackend::sum_squares_into(Tensor& acc, const Tensor& x) {
  OFT_ASSERT(acc.numel() == 1, "sum_squares_into: acc must hold one value");
  sum_squares_multi(acc, {&x});
}

void CudaBackend::sum_squares_multi(Tensor& acc, const std::vector<const Tensor*>& xs) {
  cuda::expect_dtype(acc, DType::F64, "sum_squares_multi acc");
  for (const Tensor* x : xs) cuda::expect_float(*x, "sum_squares_multi tensor");
  for_each_launch(
      xs.size(),
      [&](size_t i, Seg& sg) { sg = tensor_seg(*xs[i]); },
      [&](const Segs& s, int64_t chunks) {
        auto* partials = static_cast<double*>(cuda::scratch(sizeof(double) * size_t(chunks)));
        sum_squares_multi_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, cuda::stream()>>>(
            s, partials);
        OFT_CUDA_LAUNCH_CHECK();
        add_in_order<<<1, kThreads, 0, cuda::stream()>>>(acc.data<double>(), partials, chunks);
        OFT_CUDA_LAUNCH_CHECK();
      });
}

void CudaBackend::zero_multi(const std::vector<Tensor*>& xs) {
  for (const Tensor* x : xs) cuda::expect_float(*x, "zero_multi tensor");
  for_each_launch(
      xs.size(),
      [&](size_t i, Seg& sg) { sg = tensor_seg(*xs[i]); },
      [&](const Segs& s, int64_t chunks) {
        zero_multi_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, cuda::stream()>>>(s);
        OFT_CUDA_LAUNCH_CHECK();
      });
}

}  // namespace oft::ops
