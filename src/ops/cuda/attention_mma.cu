// bf16 tensor-core FlashAttention-2 forward for head widths D in {16, 32, 64, 128} (shared
// pieces and fragment conventions in attention_mma.cuh; the backward is attention_mma_bwd.cu),
// the launch-shape choice (OFT_ATTN_TUNE) and the entry points of both directions.
//
// Forward: grid (B*H, ceil(T/(64 * row blocks))), query tiles in reverse order so the long causal
// rows start first; a 128-query tile for D <= 64 (two row blocks per warp: each K / V fragment
// read from shared memory then feeds two products, fwd_row_blocks()). Softmax / softmax1: one
// pass with the online softmax in registers. Clipped softmax: pass 1 computes the row max and
// normaliser (QK^T only), pass 2 recomputes p = exp2(x - L) exactly, clips it and accumulates
// P'V and the "unclipped part" O2 (see attention_common.cuh). K and V of the next tile are
// prefetched while the current one is multiplied.
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>

#include "ops/cuda/attention_mma.cuh"

namespace oft::cuda::attn {

namespace fa2 {

const Tune& tune() {
  static const Tune t = [] {
    Tune x;
    if (const char* e = std::getenv("OFT_ATTN_TUNE")) {
      const int n = std::sscanf(e, "%d,%d,%d,%d", &x.rb, &x.fwd_minb, &x.bwd_minb, &x.bwd_warps);
      if (n < 3 || x.rb < 0 || x.rb > 2 || x.fwd_minb < 1 || x.fwd_minb > 3 || x.bwd_minb < 1 ||
          x.bwd_minb > 3 || (x.bwd_warps != 4 && x.bwd_warps != 8) ||
          (x.bwd_warps == 8 && x.bwd_minb > 1))
        fail("OFT_ATTN_TUNE='", e, "': expected rb,fwd_minb,bwd_minb[,bwd_warps] with rb in "
             "0..2, minb in 1..3 and bwd_warps 4 or 8 (8 only with bwd_minb 1)");
    }
    return x;
  }();
  return t;
}

}  // namespace fa2

namespace {

using namespace fa2;

template <int D, int RB>
constexpr int fwd_smem_bytes() {
  return (RB + 2) * kTile * (D + 8) * 2 + kTile * 4;
}

// Row blocks per warp of the forward: two (a 128-query tile, each K / V fragment read from
// shared memory feeds two products) where the registers allow it, else one.
template <int D, int PROB>
constexpr int fwd_row_blocks() {
  return (D <= 64 && PROB != kClipped) ? 2 : 1;
}

// ---------------------------------------------------------------- forward
// RB row blocks of 16 queries per warp: warp w owns tile rows (r * 4 + w) * 16 .. + 15 of the
// RB * 64-query tile.
template <int D, int PROB, int RB, int MINB>
__global__ void __launch_bounds__(kThreads, MINB) fwd_mma_kernel(const Args a) {
  constexpr int LD = D + 8, DB = D / 8, KS = D / 16, NB = kTile / 8, TQ = RB * kTile;
  constexpr int RB2 = PROB == kClipped ? RB : 1;  // O2 accumulators only for clipped softmax
  constexpr int DB2 = PROB == kClipped ? DB : 1;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [TQ][LD]
  bf16* sK = sQ + TQ * LD;
  bf16* sV = sK + kTile * LD;
  int* sOk = reinterpret_cast<int*>(sV + kTile * LD);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int T = a.T, C = a.C, bh = blockIdx.x, b = bh / a.H, h = bh % a.H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * TQ;  // the causally heaviest query tiles first
  const HeadRows hr(a, b, h, D);
  const int64_t stride = hr.stride;
  const bf16 *gQ = hr.q, *gK = hr.k, *gV = hr.v;
  const int32_t* mask = hr.mask;
  const int n_kt = a.causal ? (min(q0 + TQ, T) - 1) / kTile + 1 : (T + kTile - 1) / kTile;
  int row[RB][2];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    row[r][0] = q0 + (r * 4 + warp) * 16 + g;
    row[r][1] = row[r][0] + 8;
  }

  float o[RB][DB][4], o2[RB2][DB2][4];
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int i = 0; i < DB; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[r][i][e] = 0.f;
#pragma unroll
  for (int r = 0; r < RB2; ++r)
#pragma unroll
    for (int i = 0; i < DB2; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o2[r][i][e] = 0.f;
  float m[RB][2], l[RB][2], lse[RB][2];
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int j = 0; j < 2; ++j) m[r][j] = -kInf, l[r][j] = 0.f, lse[r][j] = 0.f;

#pragma unroll
  for (int r = 0; r < RB; ++r) load_tile<D>(sQ + r * kTile * LD, gQ, stride, q0 + r * kTile, T, tid);
  constexpr int kPasses = PROB == kClipped ? 2 : 1;
  for (int pass = 0; pass < kPasses; ++pass) {
    const bool with_v = PROB != kClipped || pass == 1;
    // Every warp has passed the last barrier of the previous pass, so sK / sOk are free.
    load_tile<D>(sK, gK, stride, 0, T, tid);
    load_key_ok(sOk, mask, 0, T, tid);
    cp_async_commit();
    for (int kt = 0; kt < n_kt; ++kt) {
      const int k0 = kt * kTile;
      cp_async_wait_all();
      __syncthreads();  // K[kt] (and Q) landed; every warp is done with V[kt-1]
      if (with_v) {
        load_tile<D>(sV, gV, stride, k0, T, tid);
        cp_async_commit();
      }
      // S = Q K^T for this warp's RB x 16 rows x 64 keys; each K fragment serves RB products.
      float s[RB][NB][4];
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int i = 0; i < NB; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[r][i][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t qa[RB][4];
#pragma unroll
        for (int r = 0; r < RB; ++r) ldsm_x4(qa[r], a_addr(sQ, LD, (r * 4 + warp) * 16, ks * 16, lane));
#pragma unroll
        for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
          uint32_t kb[4];
          ldsm_x4(kb, bn_addr(sK, LD, nb2 * 16, ks * 16, lane));
#pragma unroll
          for (int r = 0; r < RB; ++r) {
            mma(s[r][2 * nb2], qa[r], kb[0], kb[1]);
            mma(s[r][2 * nb2 + 1], qa[r], kb[2], kb[3]);
          }
        }
      }
      // Scale into the log2 domain and mask (padding, causal, keys past T).
      const bool need_mask = mask != nullptr || k0 + kTile > T || (a.causal && k0 + kTile - 1 > q0);
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[r][nb][e] * a.scale_log2;
            if (need_mask) {
              const int kl = nb * 8 + 2 * t4 + (e & 1);
              const bool vis = sOk[kl] != 0 && (!a.causal || k0 + kl <= row[r][e >> 1]);
              if (!vis) x = -kInf;
            }
            s[r][nb][e] = x;
          }

      if (PROB != kClipped || pass == 0) {
        // Online softmax statistics (rows g and g + 8; the 4 lanes of a quad share a row).
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          float mx[2] = {m[r][0], m[r][1]};
#pragma unroll
          for (int nb = 0; nb < NB; ++nb) {
            mx[0] = fmaxf(mx[0], fmaxf(s[r][nb][0], s[r][nb][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[r][nb][2], s[r][nb][3]));
          }
          float mu[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
            mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
            mu[j] = mx[j] == -kInf ? 0.f : mx[j];
            const float corr = exp2f(m[r][j] - mu[j]);
            l[r][j] *= corr;
            m[r][j] = mx[j];
            if (PROB != kClipped) {
#pragma unroll
              for (int i = 0; i < DB; ++i) {
                o[r][i][2 * j] *= corr;
                o[r][i][2 * j + 1] *= corr;
              }
            }
          }
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float p = exp2f(s[r][nb][e] - mu[e >> 1]);
              l[r][e >> 1] += p;
              s[r][nb][e] = p;
            }
        }
      }

      cp_async_wait_all();
      __syncthreads();  // V[kt] landed; every warp is done with K[kt] and sOk
      if (kt + 1 < n_kt) {
        load_tile<D>(sK, gK, stride, k0 + kTile, T, tid);
        load_key_ok(sOk, mask, k0 + kTile, T, tid);
        cp_async_commit();
      }
      if (!with_v) continue;

      if (PROB != kClipped) {
        // O += P V; each V fragment serves RB products.
#pragma unroll
        for (int kk = 0; kk < NB / 2; ++kk) {
          uint32_t pa[RB][4];
#pragma unroll
          for (int r = 0; r < RB; ++r) {
            a_frag(pa[r], s[r][2 * kk], s[r][2 * kk + 1]);
          }
#pragma unroll
          for (int db2 = 0; db2 < DB / 2; ++db2) {
            uint32_t vb[4];
            ldsm_x4_t(vb, bk_addr(sV, LD, kk * 16, db2 * 16, lane));
#pragma unroll
            for (int r = 0; r < RB; ++r) {
              mma(o[r][2 * db2], pa[r], vb[0], vb[1]);
              mma(o[r][2 * db2 + 1], pa[r], vb[2], vb[3]);
            }
          }
        }
      } else {
        // Clipped pass 2: exact p, P' = clip(span p + gamma, 0, 1), P2 = p where unclipped.
        // Where every probability of the warp's rows in this key tile is clipped to 0 (raw < 0,
        // p < -gamma / span: most keys of long rows), P' and P2 are zero and the tile's
        // products are skipped (a warp-uniform branch).
#pragma unroll
        for (int r = 0; r < RB2; ++r) {
          float p2[NB][4];
          bool live = false;
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float p = exp2f(s[r][nb][e] - lse[r][e >> 1]);
              const float raw = a.span * p + a.gamma;
              s[r][nb][e] = fminf(fmaxf(raw, 0.f), 1.f);
              p2[nb][e] = (raw >= 0.f && raw <= a.clip_hi) ? p : 0.f;  // see Args::clip_hi
              live |= raw >= 0.f;
            }
          if (!__any_sync(0xffffffffu, live)) continue;
#pragma unroll
          for (int kk = 0; kk < NB / 2; ++kk) {
            uint32_t pa[4], pb[4];
            a_frag(pa, s[r][2 * kk], s[r][2 * kk + 1]);
            a_frag(pb, p2[2 * kk], p2[2 * kk + 1]);
#pragma unroll
            for (int db2 = 0; db2 < DB / 2; ++db2) {
              uint32_t vb[4];
              ldsm_x4_t(vb, bk_addr(sV, LD, kk * 16, db2 * 16, lane));
              mma(o[r][2 * db2], pa, vb[0], vb[1]);
              mma(o[r][2 * db2 + 1], pa, vb[2], vb[3]);
              mma(o2[r][2 * db2], pb, vb[0], vb[1]);
              mma(o2[r][2 * db2 + 1], pb, vb[2], vb[3]);
            }
          }
        }
      }
    }
    if (PROB == kClipped && pass == 0) {
#pragma unroll
      for (int r = 0; r < RB; ++r)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          l[r][j] += __shfl_xor_sync(0xffffffffu, l[r][j], 1);
          l[r][j] += __shfl_xor_sync(0xffffffffu, l[r][j], 2);
          lse[r][j] = l[r][j] > 0.f ? m[r][j] + log2f(l[r][j]) : kInf;
        }
    }
  }

  // Normalise, store out and the saved copy (bf16x2 per lane), and L.
  bf16* gO = static_cast<bf16*>(a.out);
  bf16* gS = static_cast<bf16*>(a.osave);
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float f = 1.f;
      if (PROB != kClipped) {
        l[r][j] += __shfl_xor_sync(0xffffffffu, l[r][j], 1);
        l[r][j] += __shfl_xor_sync(0xffffffffu, l[r][j], 2);
        if (PROB == kSoftmax) {
          lse[r][j] = l[r][j] > 0.f ? m[r][j] + log2f(l[r][j]) : kInf;
          f = l[r][j] > 0.f ? 1.f / l[r][j] : 0.f;
        } else {  // softmax1: Z = 1 + sum exp, computed against M = max(m, 0) to avoid overflow
          const float M = fmaxf(m[r][j], 0.f);
          lse[r][j] = M + log2f(l[r][j] * exp2f(m[r][j] - M) + exp2f(-M));
          f = exp2f((m[r][j] == -kInf ? 0.f : m[r][j]) - lse[r][j]);
        }
      }
      if (row[r][j] >= T) continue;
      const int64_t base = (int64_t(b) * T + row[r][j]) * C + h * D + 2 * t4;
      const float fg = f * out_gate<bf16>(a, b, row[r][j], h);  // the gate (non-clipped only)
#pragma unroll
      for (int i = 0; i < DB; ++i) {
        const uint32_t ov = pack(o[r][i][2 * j] * f, o[r][i][2 * j + 1] * f);
        *reinterpret_cast<uint32_t*>(gO + base + i * 8) =
            a.gate ? pack(o[r][i][2 * j] * fg, o[r][i][2 * j + 1] * fg) : ov;
        if constexpr (PROB == kClipped)
          *reinterpret_cast<uint32_t*>(gS + base + i * 8) = pack(o2[r][i][2 * j], o2[r][i][2 * j + 1]);
        else if (gS != nullptr)  // no copy when the caller keeps `out`
          *reinterpret_cast<uint32_t*>(gS + base + i * 8) = ov;
      }
      if (t4 == 0) a.L[int64_t(bh) * T + row[r][j]] = lse[r][j];
    }
}

template <int D, int PROB, int RB, int MINB>
void fwd_launch(const Args& a) {
  constexpr int smem = fwd_smem_bytes<D, RB>();
  static bool configured = false;
  if (!configured) {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(fwd_mma_kernel<D, PROB, RB, MINB>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  const dim3 grid = tile_grid(a, RB * kTile);
  fwd_mma_kernel<D, PROB, RB, MINB><<<grid, kThreads, smem, stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

template <int D, int PROB>
void fwd_tuned(const Args& a) {
  constexpr int RB0 = fwd_row_blocks<D, PROB>();
  if constexpr (D != 64) {
    fwd_launch<D, PROB, RB0, 1>(a);
  } else {
    const Tune& t = tune();
    const int rb = PROB == kClipped ? 1 : (t.rb ? t.rb : RB0);  // clipped: one row block only
    if (rb == 1) {
      if (t.fwd_minb == 1) return fwd_launch<D, PROB, 1, 1>(a);
      if (t.fwd_minb == 2) return fwd_launch<D, PROB, 1, 2>(a);
      return fwd_launch<D, PROB, 1, 3>(a);
    }
    if constexpr (PROB != kClipped) {
      if (t.fwd_minb == 1) return fwd_launch<D, PROB, 2, 1>(a);
      if (t.fwd_minb == 2) return fwd_launch<D, PROB, 2, 2>(a);
      return fwd_launch<D, PROB, 2, 3>(a);
    }
  }
}

template <int D>
void fwd_by_prob(const Args& a) {
  switch (a.prob) {
    case kSoftmax: return fwd_tuned<D, kSoftmax>(a);
    case kClipped: return fwd_tuned<D, kClipped>(a);
    default: return fwd_tuned<D, kSoftmax1>(a);
  }
}

}  // namespace

dim3 tile_grid(const Args& a, int rows_per_tile) {
  const int tiles = (a.T + rows_per_tile - 1) / rows_per_tile;
  OFT_CHECK(tiles <= 65535, "attention: ", a.T, " tokens make ", tiles,
            " tiles, more than a CUDA grid holds; use a shorter sequence");
  return dim3(unsigned(a.B * a.H), unsigned(tiles));
}

dim3 head_major_grid(const Args& a, int rows_per_tile) {
  const int64_t ctas = int64_t(a.B) * a.H * ((a.T + rows_per_tile - 1) / rows_per_tile);
  OFT_CHECK(ctas <= 0x7fffffff, "attention: batch ", a.B, " x heads ", a.H, " x ", a.T,
            " tokens needs ", ctas, " thread blocks, more than a CUDA grid holds; use a smaller "
            "batch");
  return dim3(unsigned(ctas));
}

bool mma_supported(int D) { return D == 16 || D == 32 || D == 64 || D == 128; }

void launch_fwd_mma(const Args& a) {
  if (wgmma_fwd_enabled(a)) return launch_fwd_wgmma(a);
  switch (a.D) {
    case 16: return fwd_by_prob<16>(a);
    case 32: return fwd_by_prob<32>(a);
    case 64: return fwd_by_prob<64>(a);
    case 128: return fwd_by_prob<128>(a);
    default: fail("attention: no tensor-core kernel for head width ", a.D);
  }
}

}  // namespace oft::cuda::attn
