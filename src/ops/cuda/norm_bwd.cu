// CUDA norms, backward: LayerNorm and RMSNorm over rows of C, and LayerNorm with the per-token
// attention gate of its output (layernorm_gate_bwd). Input gradients are the act dtype (f32 or
// bf16), parameter gradients f32; all arithmetic is fp32.
//
// The bf16 backward of rows with C % 8 == 0, C <= 4096 (every preset's training path) runs the
// staged kernel of norm_bwd_tiles.cu, which can also sum the dx it writes (dsum, a folded bias
// gradient) and take the gate. The kernels here serve f32, unaligned and wider rows (a requested
// dsum is then a bias_grad of dx after them; the gated op composes): a block owns whole rows
// (the row plan of norm_rows.cuh), narrow packed f32 rows (C <= 384) one warp per row. The grid
// is persistent, so the parameter gradients accumulate in registers across a block's rows in a
// fixed order; each block writes one partial row (dw and db side by side) into scratch, and the
// kernel's last blocks sum them in a fixed order into dw / db (finish_partials: deterministic,
// no atomics on the values; after the llm.c layernorm_backward scheme). dx may alias dy: a
// thread reads its columns of dy before it writes the same columns of dx.
#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/norm_common.cuh"
#include "ops/cuda/norm_rows.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

using namespace norm;

// Per-element pieces of the norm backward, shared by the block and the warp kernels.
// Row sums: LN: s0 = sum g, s1 = sum g xhat; RMS: s0 = sum g x, s1 = sum x^2 (g = dy * w).
template <bool LN>
__device__ __forceinline__ void norm_bwd_sums(float& s0, float& s1, float g, float x, float mu,
                                              float r) {
  if (LN) {
    const float xh = (x - mu) * r;
    s0 += g;
    s1 += g * xh;
  } else {
    s0 += g * x;
    s1 += x * x;
  }
}
// One element: returns d x (without the accumulated old value) and adds to the parameter
// gradient sums aw (dw) and ab (db, LN only).
template <bool LN>
__device__ __forceinline__ float norm_bwd_elem(float dy, float w, float x, float mu, float r,
                                               float c0, float c1, float& aw, float& ab) {
  const float g = dy * w;
  if (LN) {
    const float xh = (x - mu) * r;
    aw += dy * xh;
    ab += dy;
    return r * g - c0 - c1 * xh;
  }
  aw += dy * x * r;
  return r * g - c1 * x;
}

// One pack of V columns of a row: dx (= old dx + d when accumulating) stored, dw / db sums
// updated.
template <class T, int V, bool LN>
__device__ __forceinline__ void norm_bwd_store_pack(T* dx, bool accumulate, const float (&dy)[V],
                                                    const float (&w)[V], const float (&x)[V],
                                                    float mu, float r, float c0, float c1,
                                                    float (&aw)[V], float (&ab)[V]) {
  float old[V];
  if (accumulate) {
    load_pack<T, V>(dx, old);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) old[i] = 0.f;
  }
  float o[V];
#pragma unroll
  for (int i = 0; i < V; ++i)
    o[i] = old[i] + norm_bwd_elem<LN>(dy[i], w[i], x[i], mu, r, c0, c1, aw[i], ab[i]);
  store_pack<T, V>(dx, o);
}

// Backward. dy, x, dx [N, C]; w [C]; LN: stat0 = mean, stat1 = rstd; RMS: stat1 = inv.
// dx = (accumulate ? dx : 0) + d, for the rows of `rows`; aw / ab receive this thread's sums over
// its rows of dy * xhat (LN) or dy * x * inv (RMS), and of dy (LN), for its packs.
// dx may alias dy (each thread reads its columns of the row before writing them).
template <class T, int V, int K, bool LN, class Rows>
__device__ __forceinline__ void norm_bwd_rows(Rows& rows, float (&aw)[K][V], float (&ab)[K][V],
                                              T* dx, const T* dy, const T* x, const T* w,
                                              const float* stat0, const float* stat1, int64_t N,
                                              int C, bool accumulate) {
  const int nvec = C / V;
  const float inv_c = 1.f / static_cast<float>(C);
  float wr[K][V];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = rows.first() + k * rows.step();
#pragma unroll
    for (int i = 0; i < V; ++i) wr[k][i] = aw[k][i] = ab[k][i] = 0.f;
    if (j < nvec) load_pack<T, V>(w + j * V, wr[k]);
  }
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const T *xr = x + n * C, *dyr = dy + n * C;
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float xv[K][V], gv[K][V];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec) {
        load_pack<T, V>(xr + j * V, xv[k]);
        load_pack<T, V>(dyr + j * V, gv[k]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k][i] = gv[k][i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) norm_bwd_sums<LN>(s0, s1, gv[k][i] * wr[k][i], xv[k][i], mu, r);
    }
    rows.sum(s0, s1);
    float c0, c1;
    norm_bwd_coeffs<LN>(s0, s1, r, inv_c, c0, c1);
    T* dxr = dx + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = rows.first() + k * rows.step();
      if (j < nvec)
        norm_bwd_store_pack<T, V, LN>(dxr + j * V, accumulate, gv[k], wr[k], xv[k], mu, r, c0, c1,
                                      aw[k], ab[k]);
    }
  }
}

// Row blockIdx of part [blocks, C or 2C] (scratch, f32) receives the block's parameter-gradient
// sums: dw in columns [0, C), db in [C, 2C) when with_db (LN with a bias).
template <class T, int V, int K, bool LN>
__global__ void __launch_bounds__(1024)
    norm_bwd_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                    const float* stat0, const float* stat1, int64_t N, int C, bool accumulate,
                    const PartialFinish fin) {
  __shared__ float red[2 * 2 * 32];
  BlockRows rows{red};
  float aw[K][V], ab[K][V];
  norm_bwd_rows<T, V, K, LN>(rows, aw, ab, dx, dy, x, w, stat0, stat1, N, C, accumulate);
  const int nvec = C / V;
  float* pwr = part + static_cast<int64_t>(blockIdx.x) * (with_db ? 2 * C : C);
  float* pbr = LN && with_db ? pwr + C : nullptr;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < nvec)
#pragma unroll
      for (int i = 0; i < V; ++i) {
        pwr[j * V + i] = aw[k][i];
        if (pbr) pbr[j * V + i] = ab[k][i];
      }
  }
  finish_partials(fin, part);
}

// One warp per row (C <= 32 * 3 packs): narrow f32 rows (C <= 384; the bf16 ones of the small
// models, C = 768, now run norm_bwd_tiles.cu). The measurements below are from its bf16 days.
// Register arrays for x, dy, w and the dw / db sums (194 registers, 8 warps per SM) left it
// latency-bound, so here a row is held as raw 16-byte packs (4 registers per pack and operand,
// converted on use), the old dx is loaded in the same batch as x and dy, and the weights and
// this warp's dw / db sums live in shared memory, laid out [K * V][32] (slot (k * V + i) * 32 +
// lane for column (lane + 32 k) * V + i: conflict-free, private to the warp). At <= 128
// registers (117 for C = 768 bf16) two blocks, 16 warps, fit an SM. The block then adds its
// warps' sums in warp order into part [gridDim.x, C or 2C] like norm_bwd_kernel
// (deterministic). Dynamic shared memory: warp_bwd_smem_bytes.
template <class T, int K>
constexpr int warp_bwd_slots() {
  return K * 32 * (16 / static_cast<int>(sizeof(T)));
}
template <class T, int K>
size_t warp_bwd_smem_bytes(bool db_too) {
  return sizeof(float) * warp_bwd_slots<T, K>() * (1 + (kWarpRowThreads / 32) * (db_too ? 2 : 1));
}

template <class T, int K, bool LN>
__global__ void __launch_bounds__(kWarpRowThreads, 2)
    norm_bwd_warp_kernel(T* dx, float* part, bool with_db, const T* dy, const T* x, const T* w,
                         const float* stat0, const float* stat1, int64_t N, int C,
                         bool accumulate, const PartialFinish fin) {
  constexpr int V = 16 / sizeof(T);
  constexpr int S = warp_bwd_slots<T, K>();  // slots per array (>= C)
  constexpr int W = kWarpRowThreads / 32;
  using P = Pack<T, V>;
  extern __shared__ float sm[];  // ws [S], then per warp: dw sums [S] (and db sums [S])
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nvec = C / V;
  const bool db_too = LN && with_db;
  const int per_warp = db_too ? 2 * S : S;
  float* ws = sm;
  float* aw = sm + S + warp * per_warp;
  float* ab = db_too ? aw + S : nullptr;
  for (int s = lane; s < per_warp; s += 32) aw[s] = 0.f;
  for (int s = threadIdx.x; s < S; s += kWarpRowThreads) {
    const int k = s / (32 * V), i = (s / 32) % V, j = (s % 32) + 32 * k;
    ws[s] = j < nvec ? to_f32(w[j * V + i]) : 0.f;
  }
  __syncthreads();
  const float inv_c = 1.f / static_cast<float>(C);
  WarpRows rows;
  for (int64_t n = rows.row0(); n < N; n += rows.row_step()) {
    const P* xr = reinterpret_cast<const P*>(x + n * C);
    const P* dyr = reinterpret_cast<const P*>(dy + n * C);
    P* dxr = reinterpret_cast<P*>(dx + n * C);
    P xp[K], gp[K], op[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        xp[k] = xr[j];
        gp[k] = dyr[j];
        if (accumulate) op[k] = dxr[j];
      }
    }
    const float mu = LN ? stat0[n] : 0.f, r = stat1[n];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (lane + 32 * k < nvec)
#pragma unroll
        for (int i = 0; i < V; ++i)
          norm_bwd_sums<LN>(s0, s1, to_f32(gp[k].v[i]) * ws[(k * V + i) * 32 + lane],
                            to_f32(xp[k].v[i]), mu, r);
    rows.sum(s0, s1);
    float c0, c1;
    norm_bwd_coeffs<LN>(s0, s1, r, inv_c, c0, c1);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = lane + 32 * k;
      if (j < nvec) {
        P o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int s = (k * V + i) * 32 + lane;
          float gw = 0.f, gb = 0.f;
          float d = norm_bwd_elem<LN>(to_f32(gp[k].v[i]), ws[s], to_f32(xp[k].v[i]), mu, r,
                                      c0, c1, gw, gb);
          if (accumulate) d += to_f32(op[k].v[i]);
          o.v[i] = from_f32<T>(d);
          aw[s] += gw;
          if (db_too) ab[s] += gb;
        }
        dxr[j] = o;
      }
    }
  }
  __syncthreads();
  float* pr = part + static_cast<int64_t>(blockIdx.x) * (db_too ? 2 * C : C);
  for (int c = threadIdx.x; c < C; c += kWarpRowThreads) {
    const int j = c / V, i = c % V, s = ((j / 32) * V + i) * 32 + (j % 32);
    float sw = 0.f, sb = 0.f;
    for (int wi = 0; wi < W; ++wi) {
      sw += sm[S + wi * per_warp + s];
      if (db_too) sb += sm[S + wi * per_warp + S + s];
    }
    pr[c] = sw;
    if (db_too) pr[C + c] = sb;
  }
  finish_partials(fin, part);
}

// The partial rows [dw | db (with_db)] of `blocks` blocks summed into dw and db by the kernel's
// last blocks.
PartialFinish param_grads(float* dw, float* db, bool with_db, int C, float* part, int blocks) {
  PartialDsts d;
  d.add(dw, C);
  if (with_db) d.add(db, C);
  return partial_finish(d, part, blocks);
}

template <class T, int V, int K, bool LN>
void launch_norm_bwd(const RowPlan& p, T* dx, float* dw, float* db, const T* dy, const T* x,
                     const T* w, const float* s0, const float* s1, int64_t N, int C,
                     bool accumulate) {
  auto kernel = norm_bwd_kernel<T, V, K, LN>;
  const int blocks = persistent_blocks(kernel, p.threads, N);
  const bool with_db = LN && db;
  const int Ct = with_db ? 2 * C : C;
  float* part = static_cast<float*>(cuda::scratch(partial_floats(blocks, Ct) * sizeof(float)));
  kernel<<<blocks, p.threads, 0, cuda::stream()>>>(dx, part, with_db, dy, x, w, s0, s1, N, C,
                                                   accumulate,
                                                   param_grads(dw, db, with_db, C, part, blocks));
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int K, bool LN>
void launch_norm_bwd_warp(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w,
                          const float* s0, const float* s1, int64_t N, int C, bool accumulate) {
  auto kernel = norm_bwd_warp_kernel<T, K, LN>;
  const bool with_db = LN && db;
  const int Ct = with_db ? 2 * C : C;
  const size_t smem = warp_bwd_smem_bytes<T, K>(with_db);
  static const bool opted_in = [&] {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(warp_bwd_smem_bytes<T, K>(true))));
    return true;
  }();
  (void)opted_in;
  int per_sm = 0;
  OFT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarpRowThreads,
                                                               smem));
  const int blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(cuda::ceil_div(N, 8), int64_t(std::max(per_sm, 1)) * cuda::sm_count())));
  float* part = static_cast<float*>(cuda::scratch(partial_floats(blocks, Ct) * sizeof(float)));
  kernel<<<blocks, kWarpRowThreads, smem, cuda::stream()>>>(dx, part, with_db, dy, x, w, s0, s1,
                                                            N, C, accumulate,
                                                            param_grads(dw, db, with_db, C, part,
                                                                        blocks));
  OFT_CUDA_LAUNCH_CHECK();
}

// Returns whether dsum (the column sums of dx, requested when defined) was computed too; the
// caller sums dx itself otherwise.
// With a gate (layernorm_gate_bwd): only the staged kernel, returning whether it ran (the
// caller composes the op otherwise).
template <bool LN>
bool norm_bwd(Tensor& dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
              const Tensor& w, const Tensor* mean, const Tensor& stat, bool accumulate,
              Tensor* dsum, const char* op, const norm::TileGate* gate = nullptr) {
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  expect_act(dx, x.dtype(), op);
  expect_numel(dx, x.numel(), op);
  expect_act(dy, x.dtype(), op);
  expect_numel(dy, x.numel(), op);
  cuda::expect_dtype(dw, DType::F32, op);
  expect_numel(dw, C, op);
  if (db) {
    cuda::expect_dtype(*db, DType::F32, op);
    expect_numel(*db, C, op);
  }
  if (mean) {
    cuda::expect_dtype(*mean, DType::F32, op);
    expect_numel(*mean, N, op);
  }
  cuda::expect_dtype(stat, DType::F32, op);
  expect_numel(stat, N, op);
  if (dsum) {
    cuda::expect_dtype(*dsum, DType::F32, op);
    expect_numel(*dsum, C, op);
  }
  if (N == 0) return true;
  const float* s0 = mean ? ptr<float>(*mean) : nullptr;
  const float* s1 = ptr<float>(stat);
  float* pdb = db ? ptr<float>(*db) : nullptr;
  if (x.dtype() == DType::BF16 &&
      norm::norm_bwd_tiles(LN, ptr<bf16>(dx), ptr<float>(dw), pdb,
                           dsum ? ptr<float>(*dsum) : nullptr, ptr<bf16>(dy),
                           ptr<bf16>(x), ptr<bf16>(w), s0, s1, N, C, accumulate, gate))
    return true;
  if (gate) return false;
  const int vec = 16 / static_cast<int>(dtype_size(x.dtype()));
  const bool vec_ok = C % vec == 0 && aligned16(x.raw()) && aligned16(dx.raw()) &&
                      aligned16(dy.raw()) && aligned16(w.raw());
  const RowPlan p = plan_rows_for(x.dtype(), C, vec_ok, op);
  [&] {  // (the dispatch's cases return from this lambda)
  OFT_DISPATCH_FLOAT(x.dtype(), op, {
    // (bf16 rows that fit it are all taken by norm_bwd_tiles above.)
    if constexpr (std::is_same_v<T, float>) {
      if (const int K = warp_row_packs<T>(C, vec_ok, 3)) {
        dispatch_k<3>(K, [&](auto k) {
          launch_norm_bwd_warp<T, decltype(k)::value, LN>(ptr<T>(dx), ptr<float>(dw), pdb,
                                                          ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0,
                                                          s1, N, C, accumulate);
        });
        return;
      }
    }
    dispatch_vk<T>(p, [&](auto v, auto k) {
      launch_norm_bwd<T, decltype(v)::value, decltype(k)::value, LN>(
          p, ptr<T>(dx), ptr<float>(dw), pdb, ptr<T>(dy), ptr<T>(x), ptr<T>(w), s0, s1, N, C,
          accumulate);
    });
  });
  }();
  return dsum == nullptr;
}
}  // namespace

// ---------------------------------------------------------------------- ops

// The gate's gradients in the staged backward's kernel (bf16 rows it covers); otherwise
// Backend's composition.
void CudaBackend::layernorm_gate_bwd(Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgw,
                                     Tensor& dgb, const Tensor& dy, const Tensor& dgate,
                                     const Tensor& logits, const Tensor& y, const Tensor& x,
                                     const Tensor& w, const Tensor& b, const Tensor& gw,
                                     const Tensor& mean, const Tensor& rstd, bool accumulate,
                                     Tensor* dsum) {
  constexpr const char* op = "layernorm_gate_bwd";
  const int64_t N = check_rows(x, w, op);
  const int C = static_cast<int>(w.numel());
  const int64_t G = dgb.numel();
  OFT_CHECK(G > 0 && C % G == 0 && gw.numel() == C && dgw.numel() == C, op, ": gate weight ",
            shape_str(gw.shape()), " and bias gradient ", shape_str(dgb.shape()),
            " do not split rows of ", C, " into groups");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gw, &dgate, &logits})
    expect_act(*t, x.dtype(), op);
  expect_numel(dgate, N * G, op);
  expect_numel(logits, N * G, op);
  cuda::expect_dtype(dgw, DType::F32, op);
  cuda::expect_dtype(dgb, DType::F32, op);
  if (b.defined()) {
    expect_act(b, x.dtype(), op);
    expect_numel(b, C, op);
  }
  if (x.dtype() == DType::BF16) {
    const norm::TileGate tg{ptr<bf16>(dgate),     ptr<bf16>(logits),
                            ptr<bf16>(gw),        b.defined() ? ptr<bf16>(b) : nullptr,
                            ptr<float>(dgw),      ptr<float>(dgb),
                            static_cast<int>(G)};
    if (norm_bwd<true>(dx, dw, db.defined() ? &db : nullptr, dy, x, w, &mean, rstd, accumulate,
                       dsum, op, &tg))
      return;
  }
  Backend::layernorm_gate_bwd(dx, dw, db, dgw, dgb, dy, dgate, logits, y, x, w, b, gw, mean,
                              rstd, accumulate, dsum);
}

void CudaBackend::layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                const Tensor& x, const Tensor& w, const Tensor& mean,
                                const Tensor& rstd, bool accumulate, Tensor* dsum) {
  if (!norm_bwd<true>(dx, dw, db.defined() ? &db : nullptr, dy, x, w, &mean, rstd, accumulate,
                      dsum, "layernorm_bwd"))
    bias_grad(*dsum, dx);
}

void CudaBackend::rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                              const Tensor& w, const Tensor& inv, bool accumulate, Tensor* dsum) {
  if (!norm_bwd<false>(dx, dw, nullptr, dy, x, w, nullptr, inv, accumulate, dsum,
                       "rmsnorm_bwd"))
    bias_grad(*dsum, dx);
}

}  // namespace oft::ops
