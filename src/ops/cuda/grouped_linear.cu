// CUDA grouped (per-head) linear maps, the gate networks of gated attention:
// y[n, g*O + o] = b[g*O + o] + sum_i x[n, g*I + i] w[g, o, i] for G groups, and its backward.
// Activations are the act dtype (f32 or bf16), parameter gradients f32, arithmetic fp32; the
// parameter-gradient reductions are deterministic (fixed partitions summed in a fixed order).
//
// grouped_linear_fwd: where a group's I values are a power of two of 16-byte packs (<= 32: the
// gates' 64 bf16 values are 8), one thread per pack and the group's lanes reduce with shuffles;
// otherwise one thread per output y[n, g*O + o], a dot product of I values (x rows and w stay
// in L1/L2). Backward dx: one thread per dx[n, g*I + i],
// O terms. dw / db: split-K over rows: block (split, g) stages tiles of RT rows of x[:, g] and
// dy[:, g] in shared memory, each thread owns fixed outputs (o, i) of w[g] and accumulates
// them in shared memory; per-split partials are summed over splits by a second kernel. For
// O <= 4 (gates) one kernel does dx, dw and db in a single pass over the rows instead:
// threads own 16-byte column packs, blocks own row chunks (grouped_linear_bwd_rows_kernel).
// grouped_linear_act_fwd / _bwd (the gates' sigmoid) run the sigmoid in these kernels where the
// pack-per-thread forward and the one-pass backward apply, and compose otherwise.
#include <algorithm>
#include <type_traits>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::ops {
namespace {

using cuda::from_f32;
using cuda::to_f32;
using cuda::ptr;
using cuda::aligned16;
using cuda::load_pack;
using cuda::store_pack;
using cuda::expect_act;
using cuda::expect_shape2;

constexpr int kThreads = 256;

unsigned blocks_for(int64_t threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, cuda::ceil_div(threads, kThreads)));
}

// ------------------------------------------------------------------ grouped linear

// The sigmoid and its derivative as activations.cu computes them (fp32).
__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
__device__ __forceinline__ float sigmoid_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.f - s);
}

// y[n, g*O + o] = b[g*O + o] + sum_i x[n, g*I + i] w[g, o, i]; one thread per output.
template <class T, int V>
__global__ void grouped_linear_fwd_kernel(T* y, const T* x, const T* w, const T* b, int64_t N,
                                          int G, int O, int I) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int GO = G * O;
  if (t >= N * GO) return;
  const int64_t n = t / GO;
  const int go = static_cast<int>(t % GO), g = go / O;
  const T* xr = x + n * G * I + static_cast<int64_t>(g) * I;
  const T* wr = w + static_cast<int64_t>(go) * I;
  float acc = b ? to_f32(b[go]) : 0.f;
  for (int i = 0; i < I; i += V) {
    float xv[V], wv[V];
    load_pack<T, V>(xr + i, xv);
    load_pack<T, V>(wr + i, wv);
#pragma unroll
    for (int k = 0; k < V; ++k) acc += xv[k] * wv[k];
  }
  y[t] = from_f32<T>(acc);
}

// The same with L = I / V lanes per (row, group) (L a power of two <= 32): thread t takes the
// 16-byte pack t of x (row n = t / (G L), group g, lane j), its partial dot products with the
// group's O weight rows, and the group's lanes add them with xor shuffles (groups are aligned
// L-lane segments of a warp, since a row holds G whole groups); lane 0 writes y[n, g*O + o].
// A warp reads 512 contiguous bytes of x per instruction (the one-thread-per-output kernel
// above reads 16 bytes of 32 rows 128 bytes apart).
// SIG (grouped_linear_act_fwd): also act = sigmoid(y), from the unrounded sum.
template <class T, int V, int L, bool SIG>
__global__ void grouped_linear_fwd_lanes_kernel(T* __restrict__ y, T* __restrict__ act,
                                                const T* __restrict__ x,
                                                const T* __restrict__ w,
                                                const T* __restrict__ b, int64_t N, int G, int O,
                                                int I) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t P = static_cast<int64_t>(G) * L;
  const int64_t n = t / P;
  const int p = static_cast<int>(t % P), g = p / L, j = p % L;
  const bool valid = n < N;  // every lane takes part in the shuffles
  float xv[V];
  if (valid) {
    load_pack<T, V>(x + n * G * I + static_cast<int64_t>(g) * I + j * V, xv);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) xv[k] = 0.f;
  }
  for (int o = 0; o < O; ++o) {
    float wv[V];
    load_pack<T, V>(w + (static_cast<int64_t>(g) * O + o) * I + j * V, wv);
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k) acc += xv[k] * wv[k];
#pragma unroll
    for (int off = L / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (valid && j == 0) {
      const int go = g * O + o;
      const float v = acc + (b ? to_f32(b[go]) : 0.f);
      y[n * G * O + go] = from_f32<T>(v);
      if constexpr (SIG) act[n * G * O + go] = from_f32<T>(sigmoid(v));
    }
  }
}

// dx[n, g*I + i] (+)= sum_o dy[n, g*O + o] w[g, o, i]; one thread per dx element.
template <class T>
__global__ void grouped_linear_dx_kernel(T* dx, const T* dy, const T* w, int64_t N, int G, int O,
                                         int I, bool accumulate) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int GI = G * I;
  if (t >= N * GI) return;
  const int64_t n = t / GI;
  const int gi = static_cast<int>(t % GI), g = gi / I, i = gi % I;
  const T* dyr = dy + n * G * O + static_cast<int64_t>(g) * O;
  const T* wg = w + static_cast<int64_t>(g) * O * I + i;
  float acc = 0.f;
  for (int o = 0; o < O; ++o) acc += to_f32(dyr[o]) * to_f32(wg[static_cast<int64_t>(o) * I]);
  if (accumulate) acc += to_f32(dx[t]);
  dx[t] = from_f32<T>(acc);
}

// Split-K partials of dw[g] = dy[:, g]^T x[:, g] and db[g] = sum_n dy[:, g] over the rows
// [split * rows_per_split, ...) of block (split = blockIdx.x, g = blockIdx.y):
// part[(split * G + g) * (O*I + O) + t], t < O*I: (o, i) = (t / I, t % I); t >= O*I: db[o].
// Shared memory: acc [O*I + O] (each entry owned by one thread), x tile [RT][I], dy tile [RT][O].
template <class T>
__global__ void grouped_linear_dw_kernel(float* part, const T* dy, const T* x, int64_t N, int G,
                                         int O, int I, int64_t rows_per_split, int RT) {
  extern __shared__ float sm[];
  const int g = blockIdx.y, OI = O * I, nout = OI + O;
  float* acc = sm;
  float* xs = acc + nout;
  float* gsh = xs + RT * I;
  for (int t = threadIdx.x; t < nout; t += blockDim.x) acc[t] = 0.f;
  const int64_t n0 = blockIdx.x * rows_per_split, n1 = std::min<int64_t>(N, n0 + rows_per_split);
  for (int64_t r0 = n0; r0 < n1; r0 += RT) {
    const int rows = static_cast<int>(std::min<int64_t>(RT, n1 - r0));
    __syncthreads();  // the previous tile is consumed
    for (int e = threadIdx.x; e < rows * I; e += blockDim.x)
      xs[e] = to_f32(x[(r0 + e / I) * G * I + static_cast<int64_t>(g) * I + e % I]);
    for (int e = threadIdx.x; e < rows * O; e += blockDim.x)
      gsh[e] = to_f32(dy[(r0 + e / O) * G * O + static_cast<int64_t>(g) * O + e % O]);
    __syncthreads();
    for (int t = threadIdx.x; t < nout; t += blockDim.x) {
      float a = acc[t];
      if (t < OI) {
        const int o = t / I, i = t % I;
        for (int r = 0; r < rows; ++r) a += gsh[r * O + o] * xs[r * I + i];
      } else {
        const int o = t - OI;
        for (int r = 0; r < rows; ++r) a += gsh[r * O + o];
      }
      acc[t] = a;
    }
  }
  float* dst = part + (static_cast<int64_t>(blockIdx.x) * G + g) * nout;
  for (int t = threadIdx.x; t < nout; t += blockDim.x) dst[t] = acc[t];
}

// Fast path for small O (gate networks: O = 1 per head): dx, dw and db in one pass over the rows.
// Block `chunk` owns rows [chunk * rpc, ...); thread p owns the V columns p*V.. of every row
// (group g = p*V / I, i0 = p*V % I; packs never straddle groups, I % V == 0) and
//   dx[n, cols] (+)= sum_o dy[n, g*O + o] w[g, o, i0..]            (when dx is given)
// while accumulating dy[n, g*O + o] * x[n, cols] (dw) and dy[n, g*O + o] (db, written by the
// group's first pack) over its rows: the chunk's partial in grouped_linear_dw_kernel's layout.
// One read of x and dy and one read-write of dx (the split-K kernel above re-reads them per
// tile through shared memory with a quarter of its threads busy).
// SIG (grouped_linear_act_bwd): dy is d act and ypre the sigmoid's input; the kernel uses
// dy * sigmoid'(ypre) (f32) wherever the plain kernel uses dy.
template <class T, int V, int O, bool SIG>
__global__ void grouped_linear_bwd_rows_kernel(T* __restrict__ dx, float* __restrict__ part,
                                               const T* __restrict__ dy, const T* __restrict__ ypre,
                                               const T* __restrict__ x,
                                               const T* __restrict__ w, int64_t N, int G, int I,
                                               int64_t rpc, bool accumulate) {
  const int p = threadIdx.x;
  if (p >= G * I / V) return;
  const int c0 = p * V, g = c0 / I, i0 = c0 % I, C = G * I, GO = G * O;
  float wv[O][V];
  if (dx != nullptr) {
#pragma unroll
    for (int o = 0; o < O; ++o) load_pack<T, V>(w + (static_cast<int64_t>(g) * O + o) * I + i0, wv[o]);
  }
  float dw[O][V], db[O];
#pragma unroll
  for (int o = 0; o < O; ++o) {
    db[o] = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k) dw[o][k] = 0.f;
  }
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * rpc, n1 = std::min(N, n0 + rpc);
#pragma unroll 4
  for (int64_t n = n0; n < n1; ++n) {
    float d[O], xv[V];
#pragma unroll
    for (int o = 0; o < O; ++o) {
      d[o] = to_f32(dy[n * GO + g * O + o]);
      if constexpr (SIG) d[o] *= sigmoid_grad(to_f32(ypre[n * GO + g * O + o]));
    }
    load_pack<T, V>(x + n * C + c0, xv);
#pragma unroll
    for (int o = 0; o < O; ++o) {
      db[o] += d[o];
#pragma unroll
      for (int k = 0; k < V; ++k) dw[o][k] += d[o] * xv[k];
    }
    if (dx != nullptr) {
      float r[V];
      if (accumulate) {
        load_pack<T, V>(dx + n * C + c0, r);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] = 0.f;
      }
#pragma unroll
      for (int o = 0; o < O; ++o)
#pragma unroll
        for (int k = 0; k < V; ++k) r[k] += d[o] * wv[o][k];
      store_pack<T, V>(dx + n * C + c0, r);
    }
  }
  const int nout = O * I + O;
  float* dst = part + (static_cast<int64_t>(blockIdx.x) * G + g) * nout;
#pragma unroll
  for (int o = 0; o < O; ++o)
#pragma unroll
    for (int k = 0; k < V; ++k) dst[o * I + i0 + k] = dw[o][k];
  if (i0 == 0) {
#pragma unroll
    for (int o = 0; o < O; ++o) dst[O * I + o] = db[o];
  }
}

// dw[g*O*I + t] += sum_s part[s][g][t] (t < O*I); db[g*O + o] += sum_s part[s][g][O*I + o].
// A block sums 32 consecutive outputs: lane = output, its 8 warps take every 8th split, and the
// 8 warp sums are added in a fixed order (deterministic, coalesced over the outputs).
__global__ void grouped_linear_dw_finish_kernel(float* dw, float* db, const float* part, int S,
                                                int G, int O, int I) {
  __shared__ float red[8][32];
  const int nout = O * I + O, total = G * nout;
  const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
  const int c = blockIdx.x * 32 + lane;
  float s = 0.f;
  if (c < total)
    for (int p = wp; p < S; p += 8) s += part[static_cast<int64_t>(p) * total + c];
  red[wp][lane] = s;
  __syncthreads();
  if (wp != 0 || c >= total) return;
  s = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += red[j][lane];
  const int g = c / nout, t = c % nout;
  if (t < O * I)
    dw[static_cast<int64_t>(g) * O * I + t] += s;
  else if (db)
    db[g * O + (t - O * I)] += s;
}

// The grouped map's sizes from w [G, O, I] and x [N, G*I], with y (or dy) [N, G*O]; all of the
// activations' dtype.
struct GroupedShape {
  int G, O, I;
  int64_t N;
};
GroupedShape check_grouped(const Tensor& x, const Tensor& w, const Tensor& y, const char* op) {
  cuda::expect_float(x, op);
  expect_act(w, x.dtype(), op);
  expect_act(y, x.dtype(), op);
  OFT_CHECK(w.ndim() == 3, op, ": w ", shape_str(w.shape()), " is not [G, O, I]");
  OFT_CHECK(x.ndim() == 2, op, ": x ", shape_str(x.shape()), " is not 2-D");
  const GroupedShape gs{static_cast<int>(w.dim(0)), static_cast<int>(w.dim(1)),
                        static_cast<int>(w.dim(2)), x.dim(0)};
  expect_shape2(x, gs.N, static_cast<int64_t>(gs.G) * gs.I, op);
  expect_shape2(y, gs.N, static_cast<int64_t>(gs.G) * gs.O, op);
  return gs;
}

}  // namespace

namespace {

int lanes_per_group(int I, int vec, bool vectorised) {
  const int L = vectorised ? I / vec : 0;
  return (L == 1 || L == 2 || L == 4 || L == 8 || L == 16 || L == 32) ? L : 0;
}

// y = grouped_linear(x, w, b), and with act: act = sigmoid(y) in the same kernel. Returns false,
// having done nothing, when act is asked for but the pack-per-thread kernel does not apply.
bool grouped_fwd(Tensor& y, Tensor* act, const Tensor& x, const Tensor& w, const Tensor& b,
                 const char* op) {
  const GroupedShape gs = check_grouped(x, w, y, op);
  const int G = gs.G, O = gs.O, I = gs.I;
  const int64_t N = gs.N;
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    OFT_CHECK(b.numel() == static_cast<int64_t>(G) * O, op, ": b ", shape_str(b.shape()),
              " is not [G*O]");
  }
  if (act) {
    expect_act(*act, x.dtype(), op);
    expect_shape2(*act, N, static_cast<int64_t>(G) * O, op);
  }
  if (N * G * O == 0) return true;
  bool done = true;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    const bool vec = I % VEC == 0 && aligned16(x.raw()) && aligned16(w.raw());
    const int L = lanes_per_group(I, VEC, vec);
    auto lanes = [&](auto l, auto sig) {
      constexpr int kL = decltype(l)::value;
      grouped_linear_fwd_lanes_kernel<T, VEC, kL, decltype(sig)::value>
          <<<blocks_for(N * G * kL), kThreads, 0, cuda::stream()>>>(
              ptr<T>(y), act ? ptr<T>(*act) : nullptr, ptr<T>(x), ptr<T>(w), pb, N, G, O, I);
    };
    auto by_lanes = [&](auto sig) {
      switch (L) {
        case 1: return lanes(std::integral_constant<int, 1>{}, sig);
        case 2: return lanes(std::integral_constant<int, 2>{}, sig);
        case 4: return lanes(std::integral_constant<int, 4>{}, sig);
        case 8: return lanes(std::integral_constant<int, 8>{}, sig);
        case 16: return lanes(std::integral_constant<int, 16>{}, sig);
        default: return lanes(std::integral_constant<int, 32>{}, sig);
      }
    };
    const unsigned blocks = blocks_for(N * G * O);
    if (L > 0 && act) {
      by_lanes(std::true_type{});
    } else if (L > 0) {
      by_lanes(std::false_type{});
    } else if (act) {
      done = false;
    } else if (vec) {
      grouped_linear_fwd_kernel<T, VEC><<<blocks, kThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<T>(x), ptr<T>(w), pb, N, G, O, I);
    } else {
      grouped_linear_fwd_kernel<T, 1><<<blocks, kThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<T>(x), ptr<T>(w), pb, N, G, O, I);
    }
    if (done) OFT_CUDA_LAUNCH_CHECK();
  });
  return done;
}

}  // namespace

void CudaBackend::grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
  grouped_fwd(y, nullptr, x, w, b, "grouped_linear_fwd");
}

void CudaBackend::grouped_linear_act_fwd(Tensor& act, Tensor& y, const Tensor& x, const Tensor& w,
                                         const Tensor& b, Activation a) {
  if (a != Activation::Sigmoid || !grouped_fwd(y, &act, x, w, b, "grouped_linear_act_fwd"))
    Backend::grouped_linear_act_fwd(act, y, x, w, b, a);
}

namespace {

// grouped_linear_bwd from dy, or with ypre from dy = dact * sigmoid'(ypre) formed in the one-pass
// row kernel. Returns false, having done nothing, when ypre is given but that kernel does not
// apply.
bool grouped_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor* ypre,
                 const Tensor& x, const Tensor& w, bool accumulate_dx, const char* op) {
  const GroupedShape gs = check_grouped(x, w, dy, op);
  if (ypre) {
    expect_act(*ypre, x.dtype(), op);
    OFT_CHECK(ypre->shape() == dy.shape(), op, ": y ", shape_str(ypre->shape()), " for dact ",
              shape_str(dy.shape()));
  }
  const int G = gs.G, O = gs.O, I = gs.I;
  const int64_t N = gs.N;
  cuda::expect_dtype(dw, DType::F32, op);
  OFT_CHECK(dw.numel() == w.numel(), op, ": dw ", shape_str(dw.shape()), " vs w ",
            shape_str(w.shape()));
  if (db.defined()) {
    cuda::expect_dtype(db, DType::F32, op);
    OFT_CHECK(db.numel() == static_cast<int64_t>(G) * O, op, ": db ", shape_str(db.shape()),
              " is not [G*O]");
  }
  if (dx.defined()) {
    expect_act(dx, x.dtype(), op);
    expect_shape2(dx, N, static_cast<int64_t>(G) * I, op);
  }
  if (N == 0 || G * O * I == 0) return true;
  int64_t splits = 0;
  float* part = nullptr;
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec = I % VEC == 0 && aligned16(x.raw()) && aligned16(w.raw()) &&
                     (!dx.defined() || aligned16(dx.raw()));
    const int V = vec ? VEC : 1;
    const int64_t packs = static_cast<int64_t>(G) * I / V;
    if (O <= 4 && packs <= 1024) {
      // One pass over the rows (grouped_linear_bwd_rows_kernel): about eight blocks per SM, each
      // thread moving 16 bytes per row. (At the GPT-2 shape on an H100: 35 us per call, against
      // 38 us with four blocks per SM, 40 us with sixteen and 190 us for the split-K kernels.)
      const int64_t rpc = std::max<int64_t>(8, cuda::ceil_div(N, 8 * int64_t(cuda::sm_count())));
      splits = cuda::ceil_div(N, rpc);
      part = static_cast<float*>(
          cuda::scratch(static_cast<size_t>(splits) * G * (O * I + O) * sizeof(float)));
      const unsigned threads = static_cast<unsigned>(cuda::ceil_div(packs, 32) * 32);
      T* pdx = dx.defined() ? ptr<T>(dx) : nullptr;
      const T* py = ypre ? ptr<T>(*ypre) : nullptr;
      auto launch = [&](auto v, auto o) {
        if (ypre)
          grouped_linear_bwd_rows_kernel<T, decltype(v)::value, decltype(o)::value, true>
              <<<static_cast<unsigned>(splits), threads, 0, cuda::stream()>>>(
                  pdx, part, ptr<T>(dy), py, ptr<T>(x), ptr<T>(w), N, G, I, rpc, accumulate_dx);
        else
          grouped_linear_bwd_rows_kernel<T, decltype(v)::value, decltype(o)::value, false>
              <<<static_cast<unsigned>(splits), threads, 0, cuda::stream()>>>(
                  pdx, part, ptr<T>(dy), py, ptr<T>(x), ptr<T>(w), N, G, I, rpc, accumulate_dx);
      };
      using V1 = std::integral_constant<int, 1>;
      using VV = std::integral_constant<int, VEC>;
      auto by_o = [&](auto v) {
        switch (O) {
          case 1: return launch(v, std::integral_constant<int, 1>{});
          case 2: return launch(v, std::integral_constant<int, 2>{});
          case 3: return launch(v, std::integral_constant<int, 3>{});
          default: return launch(v, std::integral_constant<int, 4>{});
        }
      };
      if (vec)
        by_o(VV{});
      else
        by_o(V1{});
      OFT_CUDA_LAUNCH_CHECK();
    } else {
      if (ypre) return false;
      // General O: dx one thread per element, dw / db split-K through shared memory
      // (accumulators [O*I + O] and tiles of RT rows).
      const int nout = O * I + O;
      const int RT = std::max(1, std::min(32, 4096 / (I + O)));
      const size_t smem = (static_cast<size_t>(nout) + static_cast<size_t>(RT) * (I + O)) * 4;
      OFT_CHECK(smem <= 48 * 1024, op, ": groups of ", O, " x ", I,
                " weights are too large for the CUDA kernel (shared memory)");
      const int64_t want = std::max<int64_t>(1, cuda::ceil_div(2 * cuda::sm_count(), G));
      splits = std::min<int64_t>(want, cuda::ceil_div(N, RT));
      const int64_t rows_per_split = cuda::ceil_div(N, splits);
      splits = cuda::ceil_div(N, rows_per_split);
      part = static_cast<float*>(
          cuda::scratch(static_cast<size_t>(splits) * G * nout * sizeof(float)));
      if (dx.defined()) {
        grouped_linear_dx_kernel<T><<<blocks_for(N * G * I), kThreads, 0, cuda::stream()>>>(
            ptr<T>(dx), ptr<T>(dy), ptr<T>(w), N, G, O, I, accumulate_dx);
        OFT_CUDA_LAUNCH_CHECK();
      }
      grouped_linear_dw_kernel<T>
          <<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(G)), kThreads, smem,
             cuda::stream()>>>(part, ptr<T>(dy), ptr<T>(x), N, G, O, I, rows_per_split, RT);
      OFT_CUDA_LAUNCH_CHECK();
    }
  });
  const int64_t outputs = static_cast<int64_t>(G) * (O * I + O);
  grouped_linear_dw_finish_kernel<<<static_cast<unsigned>(cuda::ceil_div(outputs, 32)), 256, 0,
                                    cuda::stream()>>>(ptr<float>(dw),
                                                      db.defined() ? ptr<float>(db) : nullptr, part,
                                                      static_cast<int>(splits), G, O, I);
  OFT_CUDA_LAUNCH_CHECK();
  return true;
}

}  // namespace

void CudaBackend::grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                     const Tensor& x, const Tensor& w, bool accumulate_dx) {
  grouped_bwd(dx, dw, db, dy, nullptr, x, w, accumulate_dx, "grouped_linear_bwd");
}

void CudaBackend::grouped_linear_act_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dact,
                                         const Tensor& y, const Tensor& x, const Tensor& w,
                                         bool accumulate_dx, Activation a) {
  if (a != Activation::Sigmoid ||
      !grouped_bwd(dx, dw, db, dact, &y, x, w, accumulate_dx, "grouped_linear_act_bwd"))
    Backend::grouped_linear_act_bwd(dx, dw, db, dact, y, x, w, accumulate_dx, a);
}

}  // namespace oft::ops
