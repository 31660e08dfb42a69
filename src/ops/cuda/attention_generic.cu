// CUDA-core attention kernels for f32 activations and for head widths the tensor-core path does
// not cover (any D <= 256, bf16 or f32 storage, f32 arithmetic). Same algorithm and the same
// saved statistics as the tensor-core path (see attention_common.cuh), so the two can be mixed
// between a forward and its backward. Nothing of size T x T is stored.
//
// Shape of the work: warps own rows, lanes own keys (for the scores) or head columns d = lane +
// 32 c, c < NCH = ceil(D / 32) (for the accumulators); 32-key (or 32-query) tiles are staged in
// shared memory as f32 with row stride D + 1, so "lane j reads row j" is bank-conflict free, and
// a probability is broadcast to the lanes with a shuffle for the rank-1 accumulation.
//   forward   grid (B*H, ceil(T/8)), 8 warps = 8 query rows, online softmax per row (clipped
//             softmax: a statistics pass, then the exact clipped pass).
//   dK, dV    grid (B*H, ceil(T/8)), 8 warps = 8 keys, loop over 32-query tiles.
//   dQ        grid (B*H, ceil(T/8)), 8 warps = 8 query rows, loop over 32-key tiles (no atomics:
//             the probabilities are recomputed, which is fine for this path).
#include "ops/cuda/attention_common.cuh"

namespace oft::cuda::attn {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32, kTile = 32;
constexpr float kInf = __builtin_huge_valf();

// rows [r0, r0 + n) of a [*, stride] matrix (columns col..col+D-1) -> s[n][ld] as f32, 0 past T.
template <class T>
__device__ __forceinline__ void stage(float* s, int ld, int n, const T* g, int64_t stride,
                                      int r0, int T_, int D) {
  for (int idx = threadIdx.x; idx < n * D; idx += kThreads) {
    const int r = idx / D, d = idx % D, gr = r0 + r;
    s[r * ld + d] = gr < T_ ? to_f32(g[int64_t(gr) * stride + d]) : 0.f;
  }
}

__device__ __forceinline__ bool key_on(const int32_t* mask, int j, int T) {
  return j < T && (mask == nullptr || mask[j] != 0);
}

// ---------------------------------------------------------------- forward
template <class T, int NCH, int PROB>
__global__ void __launch_bounds__(kThreads) fwd_generic_kernel(const Args a) {
  extern __shared__ float sm[];
  const int D = a.D, LDK = D + 1, T_ = a.T, C = a.C;
  float* sK = sm;                 // [32][D+1]
  float* sV = sK + kTile * LDK;   // [32][D+1]
  float* sQ = sV + kTile * LDK;   // [8][D]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kWarps, i = q0 + warp;
  const int64_t stride = 3 * int64_t(C);
  const T* gQ = static_cast<const T*>(a.qkv) + int64_t(b) * T_ * stride + h * D;
  const int32_t* mask = a.mask ? a.mask + int64_t(b) * T_ : nullptr;
  const bool row_ok = i < T_;
  const int kend = a.causal ? min(T_, q0 + kWarps) : T_;

  stage(sQ, D, kWarps, gQ, stride, q0, T_, D);
  float o[NCH], o2[NCH];
#pragma unroll
  for (int c = 0; c < NCH; ++c) o[c] = o2[c] = 0.f;
  float m = -kInf, l = 0.f, lse = 0.f;

  constexpr int kPasses = PROB == kClipped ? 2 : 1;
  for (int pass = 0; pass < kPasses; ++pass) {
    const bool acc = PROB != kClipped || pass == 1;
    for (int k0 = 0; k0 < kend; k0 += kTile) {
      __syncthreads();
      stage(sK, LDK, kTile, gQ + C, stride, k0, T_, D);
      if (acc) stage(sV, LDK, kTile, gQ + 2 * C, stride, k0, T_, D);
      __syncthreads();
      if (!row_ok || (a.causal && k0 > i)) continue;  // warp-uniform
      const int j = k0 + lane;
      const bool vis = key_on(mask, j, T_) && (!a.causal || j <= i);
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += sQ[warp * D + d] * sK[lane * LDK + d];
      const float x = vis ? dot * a.scale_log2 : -kInf;
      float p, p2 = 0.f;
      if (PROB != kClipped || pass == 0) {
        const float mn = fmaxf(m, warp_max(x));
        const float mu = mn == -kInf ? 0.f : mn;
        const float corr = exp2f(m - mu);
        p = exp2f(x - mu);
        l = l * corr + warp_sum(p);
        m = mn;
        if (!acc) continue;
#pragma unroll
        for (int c = 0; c < NCH; ++c) o[c] *= corr;
      } else {
        const float pe = exp2f(x - lse);
        const float raw = a.span * pe + a.gamma;
        p = fminf(fmaxf(raw, 0.f), 1.f);
        p2 = (raw >= 0.f && raw <= a.clip_hi) ? pe : 0.f;  // see Args::clip_hi
      }
      for (int jj = 0; jj < kTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const float p2j = PROB == kClipped ? __shfl_sync(0xffffffffu, p2, jj) : 0.f;
#pragma unroll
        for (int c = 0; c < NCH; ++c) {
          const int d = lane + 32 * c;
          if (d < D) {
            const float v = sV[jj * LDK + d];
            o[c] += pj * v;
            if (PROB == kClipped) o2[c] += p2j * v;
          }
        }
      }
    }
    if (PROB == kClipped && pass == 0) lse = l > 0.f ? m + log2f(l) : kInf;
  }
  if (!row_ok) return;
  float f = 1.f;
  if (PROB == kSoftmax) {
    lse = l > 0.f ? m + log2f(l) : kInf;
    f = l > 0.f ? 1.f / l : 0.f;
  } else if (PROB == kSoftmax1) {
    const float M = fmaxf(m, 0.f);
    lse = M + log2f(l * exp2f(m - M) + exp2f(-M));
    f = exp2f((m == -kInf ? 0.f : m) - lse);
  }
  const int64_t base = (int64_t(b) * T_ + i) * C + h * D;
  T* gO = static_cast<T*>(a.out);
  T* gS = static_cast<T*>(a.osave);
  const float fg = f * out_gate<T>(a, b, i, h);  // the gate (non-clipped only)
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    const int d = lane + 32 * c;
    if (d < D) {
      gO[base + d] = from_f32<T>(o[c] * fg);
      if (PROB == kClipped || gS != nullptr)  // no copy when the caller keeps `out`
        gS[base + d] = from_f32<T>(PROB == kClipped ? o2[c] : o[c] * f);
    }
  }
  if (lane == 0) a.L[int64_t(bh) * T_ + i] = lse;
}

// Probability, clipped probability and dS of one (query, key) pair given q.k, dO.v, L_i, D_i.
template <int PROB>
__device__ __forceinline__ void pair_grad(const Args& a, bool vis, float qk, float dov, float L,
                                          float Di, float& pc, float& ds) {
  const float p = vis ? exp2f(qk * a.scale_log2 - L) : 0.f;
  float dp = dov;
  pc = p;
  if (PROB == kClipped) {
    const float raw = a.span * p + a.gamma;
    pc = fminf(fmaxf(raw, 0.f), 1.f);
    dp = (raw >= 0.f && raw <= a.clip_hi) ? dov * a.span : 0.f;  // as the forward's O2
  }
  ds = p * (dp - Di);
}

// ---------------------------------------------------------------- backward: dK, dV
template <class T, int NCH, int PROB>
__global__ void __launch_bounds__(kThreads) bwd_dkdv_generic_kernel(const Args a) {
  extern __shared__ float sm[];
  const int D = a.D, LDK = D + 1, T_ = a.T, C = a.C;
  float* sQ = sm;                  // [32][D+1]
  float* sdO = sQ + kTile * LDK;   // [32][D+1]
  float* sKr = sdO + kTile * LDK;  // [8][D]
  float* sVr = sKr + kWarps * D;   // [8][D]
  float* sL = sVr + kWarps * D;    // [32]
  float* sD = sL + kTile;          // [32]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H;
  const int kc0 = blockIdx.y * kWarps, j = kc0 + warp;
  const int64_t stride = 3 * int64_t(C);
  const T* gQ = static_cast<const T*>(a.qkv) + int64_t(b) * T_ * stride + h * D;
  const T* gdO = static_cast<const T*>(a.dout) + int64_t(b) * T_ * C + h * D;
  const int32_t* mask = a.mask ? a.mask + int64_t(b) * T_ : nullptr;
  const bool key_ok = key_on(mask, j, T_);

  stage(sKr, D, kWarps, gQ + C, stride, kc0, T_, D);
  stage(sVr, D, kWarps, gQ + 2 * C, stride, kc0, T_, D);
  float dk[NCH], dv[NCH];
#pragma unroll
  for (int c = 0; c < NCH; ++c) dk[c] = dv[c] = 0.f;

  for (int q0 = a.causal ? kc0 : 0; q0 < T_; q0 += kTile) {
    __syncthreads();
    stage(sQ, LDK, kTile, gQ, stride, q0, T_, D);
    stage(sdO, LDK, kTile, gdO, C, q0, T_, D);
    if (threadIdx.x < kTile) {
      const int q = q0 + threadIdx.x;
      sL[threadIdx.x] = q < T_ ? a.L[int64_t(bh) * T_ + q] : 0.f;
      sD[threadIdx.x] = q < T_ ? a.Dv[int64_t(bh) * T_ + q] : 0.f;
    }
    __syncthreads();
    if (j >= T_) continue;  // warp-uniform
    const int i = q0 + lane;
    const bool vis = key_ok && i < T_ && (!a.causal || j <= i);
    float qk = 0.f, dov = 0.f;
    for (int d = 0; d < D; ++d) {
      qk += sQ[lane * LDK + d] * sKr[warp * D + d];
      dov += sdO[lane * LDK + d] * sVr[warp * D + d];
    }
    float pc, ds;
    pair_grad<PROB>(a, vis, qk, dov, sL[lane], sD[lane], pc, ds);
    for (int ii = 0; ii < kTile; ++ii) {
      const float pci = __shfl_sync(0xffffffffu, pc, ii);
      const float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
      for (int c = 0; c < NCH; ++c) {
        const int d = lane + 32 * c;
        if (d < D) {
          dv[c] += pci * sdO[ii * LDK + d];
          dk[c] += dsi * sQ[ii * LDK + d];
        }
      }
    }
  }
  if (j >= T_) return;
  T* dst = static_cast<T*>(a.dqkv) + (int64_t(b) * T_ + j) * stride + C + h * D;
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    const int d = lane + 32 * c;
    if (d < D) {
      dst[d] = from_f32<T>(dk[c] * a.scale);
      dst[C + d] = from_f32<T>(dv[c]);
    }
  }
}

// ---------------------------------------------------------------- backward: dQ
template <class T, int NCH, int PROB>
__global__ void __launch_bounds__(kThreads) bwd_dq_generic_kernel(const Args a) {
  extern __shared__ float sm[];
  const int D = a.D, LDK = D + 1, T_ = a.T, C = a.C;
  float* sK = sm;                 // [32][D+1]
  float* sV = sK + kTile * LDK;   // [32][D+1]
  float* sQ = sV + kTile * LDK;   // [8][D]
  float* sdO = sQ + kWarps * D;   // [8][D]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kWarps, i = q0 + warp;
  const int64_t stride = 3 * int64_t(C);
  const T* gQ = static_cast<const T*>(a.qkv) + int64_t(b) * T_ * stride + h * D;
  const T* gdO = static_cast<const T*>(a.dout) + int64_t(b) * T_ * C + h * D;
  const int32_t* mask = a.mask ? a.mask + int64_t(b) * T_ : nullptr;
  const bool row_ok = i < T_;
  const int kend = a.causal ? min(T_, q0 + kWarps) : T_;
  const float Li = row_ok ? a.L[int64_t(bh) * T_ + i] : 0.f;
  const float Di = row_ok ? a.Dv[int64_t(bh) * T_ + i] : 0.f;

  stage(sQ, D, kWarps, gQ, stride, q0, T_, D);
  stage(sdO, D, kWarps, gdO, C, q0, T_, D);
  float dq[NCH];
#pragma unroll
  for (int c = 0; c < NCH; ++c) dq[c] = 0.f;

  for (int k0 = 0; k0 < kend; k0 += kTile) {
    __syncthreads();
    stage(sK, LDK, kTile, gQ + C, stride, k0, T_, D);
    stage(sV, LDK, kTile, gQ + 2 * C, stride, k0, T_, D);
    __syncthreads();
    if (!row_ok || (a.causal && k0 > i)) continue;  // warp-uniform
    const int j = k0 + lane;
    const bool vis = key_on(mask, j, T_) && (!a.causal || j <= i);
    float qk = 0.f, dov = 0.f;
    for (int d = 0; d < D; ++d) {
      qk += sQ[warp * D + d] * sK[lane * LDK + d];
      dov += sdO[warp * D + d] * sV[lane * LDK + d];
    }
    float pc, ds;
    pair_grad<PROB>(a, vis, qk, dov, Li, Di, pc, ds);
    for (int jj = 0; jj < kTile; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
      for (int c = 0; c < NCH; ++c) {
        const int d = lane + 32 * c;
        if (d < D) dq[c] += dsj * sK[jj * LDK + d];
      }
    }
  }
  if (!row_ok) return;
  T* dst = static_cast<T*>(a.dqkv) + (int64_t(b) * T_ + i) * stride + h * D;
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    const int d = lane + 32 * c;
    if (d < D) dst[d] = from_f32<T>(dq[c] * a.scale);
  }
}

// ---------------------------------------------------------------- launchers
template <class Kernel>
void launch(Kernel k, const Args& a, size_t smem) {
  OFT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(a.B * a.H, (a.T + kWarps - 1) / kWarps);
  k<<<grid, kThreads, smem, stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

template <class T, int NCH, int PROB>
void fwd_t(const Args& a) {
  launch(fwd_generic_kernel<T, NCH, PROB>, a,
         sizeof(float) * (2 * kTile * (a.D + 1) + kWarps * a.D));
}
template <class T, int NCH, int PROB>
void bwd_t(const Args& a) {
  launch(bwd_dkdv_generic_kernel<T, NCH, PROB>, a,
         sizeof(float) * (2 * kTile * (a.D + 1) + 2 * kWarps * a.D + 2 * kTile));
  launch(bwd_dq_generic_kernel<T, NCH, PROB>, a,
         sizeof(float) * (2 * kTile * (a.D + 1) + 2 * kWarps * a.D));
}

// Dispatch over (NCH, PROB) for one storage type; BWD picks the backward pair.
template <class T, bool BWD, int NCH>
void by_prob(const Args& a) {
  switch (a.prob) {
    case kSoftmax: return BWD ? bwd_t<T, NCH, kSoftmax>(a) : fwd_t<T, NCH, kSoftmax>(a);
    case kClipped: return BWD ? bwd_t<T, NCH, kClipped>(a) : fwd_t<T, NCH, kClipped>(a);
    default: return BWD ? bwd_t<T, NCH, kSoftmax1>(a) : fwd_t<T, NCH, kSoftmax1>(a);
  }
}
template <class T, bool BWD>
void by_width(const Args& a) {
  OFT_CHECK(a.D >= 1 && a.D <= kGenericMaxD, "attention: head width D = ", a.D,
            " is not supported by the CUDA backend (at most ", kGenericMaxD, ")");
  if (a.D <= 32) return by_prob<T, BWD, 1>(a);
  if (a.D <= 64) return by_prob<T, BWD, 2>(a);
  if (a.D <= 128) return by_prob<T, BWD, 4>(a);
  return by_prob<T, BWD, 8>(a);
}

}  // namespace

void launch_fwd_generic(const Args& a, DType dt) {
  OFT_DISPATCH_FLOAT(dt, "attention_fwd", by_width<T, false>(a));
}
void launch_bwd_generic(const Args& a, DType dt) {
  OFT_DISPATCH_FLOAT(dt, "attention_bwd", by_width<T, true>(a));
}

}  // namespace oft::cuda::attn
