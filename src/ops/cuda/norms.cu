// CUDA norms, forward: LayerNorm and RMSNorm (seed B form) over rows of C, and LayerNorm with
// the per-token attention gate of its output (layernorm_gate_fwd). Activations, weights and
// outputs are the act dtype (f32 or bf16); statistics (mean, rstd, inv) are f32; all arithmetic
// is fp32. The backward is in norm_bwd.cu (and norm_bwd_tiles.cu), the shared row machinery in
// norm_rows.cuh.
//
// Rows of C <= 16384: a block owns whole rows; each thread owns fixed columns of the row: K packs
// of V elements (V = 16 bytes: 4 f32 or 8 bf16, or 1 when C or an address does not allow packs),
// threads = ceil(C / (K V)) rounded to a warp (<= 1024; __launch_bounds__(1024) keeps registers
// <= 64, which only makes the rare K > 1 instantiations for C > 8192 spill a little). A row is
// loaded once into registers; the row sums are block reductions (warp shuffles, then one
// shared-memory step with double buffering, so one __syncthreads per reduction). Statistics are
// exact two-pass (mean, then the biased variance of the registered values). The grid is
// persistent (SMs x occupancy blocks, rows strided), so the weights are loaded once per block.
// Narrow packed rows (up to 4 packs per lane of one warp: C <= 1024 bf16 / 512 f32) run one warp
// per row instead, with no block barrier per row (norm_fwd_warp_kernel); the fused gate runs
// only there.
//
// QK-norm lives in qk_norm.cu; the partial-row reduction and the argument checks the norm files
// use are declared in norm_common.cuh.
#include <algorithm>
#include <initializer_list>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/norm_common.cuh"
#include "ops/cuda/norm_rows.cuh"

namespace oft::ops {
namespace {

using namespace norm;

// The per-token gate a LayerNorm forward computes from its output y (layernorm_gate_fwd):
// logits [N, G] = grouped_linear(y, w [G, 1, D], b [G]) from y as stored, gate = sigmoid of the
// stored logits. part: this warp's shared scratch, one float per pack of a row.
template <class T>
struct RowGate {
  T *gate, *logits;
  const T *w, *b;
  int G, packs_per_group;  // D / V
  float* part;
};

// Forward. x, y [N, C]; w, b [C] (b may be null; unused for RMS); LN: stat0 = mean, stat1 = rstd;
// RMS: stat1 = inv = 1 / (rms + eps) (stat0 unused). The rows of `rows` (K packs of V per
// thread). GATE (one warp per row only): the gate of RowGate too.
template <class T, int V, int K, bool LN, class Rows, bool GATE = false>
__device__ __forceinline__ void norm_fwd_rows(Rows& rows, T* y, float* stat0, float* stat1,
                                              const T* x, const T* w, const T* b, int64_t N, int C,
                                              float eps, const RowGate<T>* gate = nullptr,
                                              int64_t ldy = 0) {
  static_assert(!GATE || std::is_same_v<Rows, WarpRows>, "the fused gate needs one warp per row");
  const int nvec = C / V;
  float wr[K][V], br[K][V], gw[GATE ? K : 1][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = rows.first() + k * rows.step();
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = br[k][i] = 0.f;
    if (j < nvec) {
      load_pack<T, V>(w + j * V, wr[k]);
      if (b) load_pack<T, V>(b + j * V, br[k]);
    }
    if constexpr (GATE) {
#pragma unroll
      for (int i = 0; i < V; ++i) gw[k][i] = 0.f;
      if (j < nvec) load_pack<T, V>(gate->w + j * V, gw[k]);
    }
  }
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const T* xr = x + n * C;
    float xv[K][V];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) s += LN ? xv[k][i] : xv[k][i] * xv[k][i];
    }
    rows.sum(s);
    float mu = 0.f, r;
    if (LN) {
      mu = s * inv_c;
      float q = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (rows.first() + k * rows.step() < nvec)
#pragma unroll
          for (int i = 0; i < V; ++i) q += (xv[k][i] - mu) * (xv[k][i] - mu);
      rows.sum(q);
      r = rsqrtf(q * inv_c + eps);  // biased variance
    } else {
      r = 1.f / (sqrtf(s * inv_c) + eps);
    }
    if (rows.leader()) {
      if (LN) stat0[n] = mu;
      stat1[n] = r;
    }
    T* yr = y + n * (ldy > C ? ldy : C);
    if (ldy > C && rows.leader())  // the bias-column layout's pad: 1, then zeros
      for (int64_t c = C; c < ldy; ++c) yr[c] = from_f32<T>(c == C ? 1.f : 0.f);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec) {
        float o[V];
#pragma unroll
        for (int i = 0; i < V; ++i) o[i] = (xv[k][i] - mu) * r * wr[k][i] + br[k][i];
        store_pack<T, V>(yr + j * V, o);
        if constexpr (GATE) {
          float p = 0.f;  // this pack's share of its group's logit, from y as stored
#pragma unroll
          for (int i = 0; i < V; ++i) p = fmaf(to_f32(from_f32<T>(o[i])), gw[k][i], p);
          gate->part[j] = p;
        }
      }
    }
    if constexpr (GATE) {
      __syncwarp();
      for (int g = rows.first(); g < gate->G; g += 32) {
        const float* pg = gate->part + g * gate->packs_per_group;
        float l = 0.f;
        for (int q = 0; q < gate->packs_per_group; ++q) l += pg[q];
        const T lt = from_f32<T>(l + to_f32(gate->b[g]));
        gate->logits[n * gate->G + g] = lt;
        gate->gate[n * gate->G + g] = from_f32<T>(1.f / (1.f + __expf(-to_f32(lt))));
      }
      __syncwarp();  // the next row rewrites part
    }
  }
}

template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_fwd_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b, int64_t N,
                    int C, float eps, int64_t ldy) {
  __shared__ float red[2 * 2 * 32];
  BlockRows rows{red};
  norm_fwd_rows<T, V, K, LN>(rows, y, stat0, stat1, x, w, b, N, C, eps, nullptr, ldy);
}

// Narrow packed rows (C <= 32 * 4 packs: 1024 bf16 or 512 f32 columns): one warp per row. The
// 96-thread blocks the general kernel uses for C = 768 spent most of their time waiting at the
// barrier of each row.
template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    norm_fwd_warp_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w, const T* b,
                         int64_t N, int C, float eps, int64_t ldy) {
  WarpRows rows;
  norm_fwd_rows<T, 16 / sizeof(T), K, LN>(rows, y, stat0, stat1, x, w, b, N, C, eps, nullptr, ldy);
}

// LayerNorm with the gate of its output (layernorm_gate_fwd), one warp per row. Shared memory:
// one float per pack of a row and warp.
template <class T, int K>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    layernorm_gate_fwd_kernel(T* y, float* stat0, float* stat1, const T* x, const T* w,
                              const T* b, int64_t N, int C, float eps, RowGate<T> gate,
                              int64_t ldy) {
  constexpr int V = 16 / sizeof(T);
  __shared__ float part[kWarpRowThreads / 32][32 * K];
  WarpRows rows;
  gate.part = part[threadIdx.x >> 5];
  norm_fwd_rows<T, V, K, true, WarpRows, true>(rows, y, stat0, stat1, x, w, b, N, C, eps, &gate,
                                               ldy);
}

template <class T, int V, int K, bool LN>
void launch_norm_fwd(const RowPlan& p, T* y, float* s0, float* s1, const T* x, const T* w,
                     const T* b, int64_t N, int C, float eps, int64_t ldy) {
  auto kernel = norm_fwd_kernel<T, V, K, LN>;
  const int blocks = persistent_blocks(kernel, p.threads, N);
  kernel<<<blocks, p.threads, 0, cuda::stream()>>>(y, s0, s1, x, w, b, N, C, eps, ldy);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int K, bool LN>
void launch_norm_fwd_warp(T* y, float* s0, float* s1, const T* x, const T* w, const T* b,
                          int64_t N, int C, float eps, int64_t ldy) {
  auto kernel = norm_fwd_warp_kernel<T, K, LN>;
  const int blocks = persistent_blocks(kernel, kWarpRowThreads, cuda::ceil_div(N, 8));
  kernel<<<blocks, kWarpRowThreads, 0, cuda::stream()>>>(y, s0, s1, x, w, b, N, C, eps, ldy);
  OFT_CUDA_LAUNCH_CHECK();
}

// The forward's argument checks (norm_fwd's and layernorm_gate_fwd's); returns N. With
// `pitched`, y may also be [N, C + kBiasColumnPad] (the bias-column layout, ops.h).
int64_t check_norm_fwd(const Tensor& y, const Tensor* mean, const Tensor& stat, const Tensor& x,
                       const Tensor& w, const Tensor& b, const char* op, bool pitched = false) {
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  expect_act(y, x.dtype(), op);
  if (!(pitched && y.dim(0) == N && is_bias_column_layout(y, C))) expect_numel(y, x.numel(), op);
  if (mean) {
    cuda::expect_dtype(*mean, DType::F32, op);
    expect_numel(*mean, N, op);
  }
  cuda::expect_dtype(stat, DType::F32, op);
  expect_numel(stat, N, op);
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    expect_numel(b, C, op);
  }
  return N;
}

// The row pitch of a forward output y that check_norm_fwd accepted for x: C, or C +
// kBiasColumnPad in the bias-column layout.
int64_t out_pitch(const Tensor& y, const Tensor& x, int C) {
  return y.numel() == x.numel() ? C : C + kBiasColumnPad;
}

template <bool LN>
void norm_fwd(Tensor& y, Tensor* mean, Tensor& stat, const Tensor& x, const Tensor& w,
              const Tensor& b, double eps, const char* op) {
  const int64_t N = check_norm_fwd(y, mean, stat, x, w, b, op, LN);
  const int C = static_cast<int>(w.numel());
  const int64_t ldy = out_pitch(y, x, C);
  if (N == 0) return;
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(x.raw()) && aligned16(y.raw()) &&
                      aligned16(w.raw()) && (!b.defined() || aligned16(b.raw()));
  const RowPlan p = plan_rows_for(x.dtype(), C, vec_ok, op);
  float* s0 = mean ? ptr<float>(*mean) : nullptr;
  float* s1 = ptr<float>(stat);
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    if (const int K = warp_row_packs<T>(C, vec_ok, 4)) {
      dispatch_k<4>(K, [&](auto k) {
        launch_norm_fwd_warp<T, decltype(k)::value, LN>(ptr<T>(y), s0, s1, ptr<T>(x), ptr<T>(w),
                                                        pb, N, C, static_cast<float>(eps), ldy);
      });
      return;
    }
    dispatch_vk<T>(p, [&](auto v, auto k) {
      launch_norm_fwd<T, decltype(v)::value, decltype(k)::value, LN>(
          p, ptr<T>(y), s0, s1, ptr<T>(x), ptr<T>(w), pb, N, C, static_cast<float>(eps), ldy);
    });
  });
}
}  // namespace

// ---- shared with qk_norm.cu (norm_common.cuh) ----

namespace norm {

void expect_numel(const Tensor& t, int64_t n, const char* what) {
  OFT_CHECK(t.numel() == n, what, ": expected ", n, " elements, got ", shape_str(t.shape()));
}

}  // namespace norm

void CudaBackend::layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                                const Tensor& w, const Tensor& b, double eps) {
  norm_fwd<true>(y, &mean, rstd, x, w, b, eps, "layernorm_fwd");
}

// The gate in the norm's kernel where the row fits one warp in packs (C <= 1024 bf16 / 512 f32)
// and each pack lies in one group (D % V == 0); otherwise Backend's composition.
void CudaBackend::layernorm_gate_fwd(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& gate,
                                     Tensor& logits, const Tensor& x, const Tensor& w,
                                     const Tensor& b, double eps, const Tensor& gw,
                                     const Tensor& gb) {
  constexpr const char* op = "layernorm_gate_fwd";
  const int64_t N = check_norm_fwd(y, &mean, rstd, x, w, b, op, true);
  const int C = static_cast<int>(w.numel());
  const int64_t ldy = out_pitch(y, x, C);
  const int64_t G = gb.numel();
  OFT_CHECK(G > 0 && C % G == 0 && gw.numel() == C, op, ": gate weight ", shape_str(gw.shape()),
            " and bias ", shape_str(gb.shape()), " do not split rows of ", C, " into groups");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gw, &gb, &gate, &logits})
    expect_act(*t, x.dtype(), op);
  expect_numel(gate, N * G, op);
  expect_numel(logits, N * G, op);
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const int D = C / static_cast<int>(G);
  const bool vec_ok = C % vec == 0 && D % vec == 0 && aligned16(x.raw()) && aligned16(y.raw()) &&
                      aligned16(w.raw()) && aligned16(gw.raw()) &&
                      (!b.defined() || aligned16(b.raw()));
  const int K = x.dtype() == DType::BF16 ? warp_row_packs<bf16>(C, vec_ok, 4)
                                         : warp_row_packs<float>(C, vec_ok, 4);
  if (K == 0 || N == 0) {
    Backend::layernorm_gate_fwd(y, mean, rstd, gate, logits, x, w, b, eps, gw, gb);
    return;
  }
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    const T* pb = b.defined() ? ptr<T>(b) : nullptr;
    RowGate<T> rg{ptr<T>(gate), ptr<T>(logits), ptr<T>(gw), ptr<T>(gb), static_cast<int>(G),
                  D / vec, nullptr};
    dispatch_k<4>(K, [&](auto k) {
      auto kernel = layernorm_gate_fwd_kernel<T, decltype(k)::value>;
      const int blocks = persistent_blocks(kernel, kWarpRowThreads, cuda::ceil_div(N, 8));
      kernel<<<blocks, kWarpRowThreads, 0, cuda::stream()>>>(
          ptr<T>(y), ptr<float>(mean), ptr<float>(rstd), ptr<T>(x), ptr<T>(w), pb, N, C,
          static_cast<float>(eps), rg, ldy);
      OFT_CUDA_LAUNCH_CHECK();
    });
  });
}
void CudaBackend::rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w,
                              double eps) {
  norm_fwd<false>(y, nullptr, inv, x, w, Tensor(), eps, "rmsnorm_fwd");
}

}  // namespace oft::ops
