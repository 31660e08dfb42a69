// bf16 tensor-core FlashAttention-2 backward for head widths D in {16, 32, 64, 128} (shared
// pieces and fragment conventions in attention_mma.cuh).
//
// Grid (B*H, ceil(T/NK) key tiles); each CTA of NW warps (NK = 16 NW keys: 64, or 128 for the
// D = 64 launch variant bwd_warps 8) keeps its keys' dK, dV in registers and loops over the
// query tiles (double-buffered Q, dO, L, D_i). Per query tile: S^T = K Q^T, P, dV += P'^T dO,
// dP^T = V dO^T, dS = P (dp - D_i), dK += dS^T Q, and dQ += dS K, accumulated into an f32
// buffer with atomics (dS goes through shared memory once, read back transposed by
// ldmatrix.trans).
#include <cuda_bf16.h>

#include "ops/cuda/attention_mma.cuh"

namespace oft::cuda::attn {
namespace {

using namespace fa2;

// ---------------------------------------------------------------- backward
// NW warps per CTA, each owning 16 keys: a CTA holds NK = 16 NW keys. NW = 8 (128 keys) halves
// the Q / dO tile loads and the dQ atomics per key against NW = 4, at one 256-thread CTA per SM.
template <int D, int NW>
constexpr int bwd_smem_bytes() {
  // sK, sV [NK][D+8], 2 x sQ, 2 x sdO [64][D+8], sdS [NK][72], 2 x sL, 2 x sD, sOk [NK]
  constexpr int NK = 16 * NW;
  return 2 * NK * (D + 8) * 2 + 4 * kTile * (D + 8) * 2 + NK * (kTile + 8) * 2 + 4 * kTile * 4 +
         NK * 4;
}

template <int D, int PROB, int MINB, int NW>
__global__ void __launch_bounds__(32 * NW, MINB) bwd_mma_kernel(const Args a) {
  constexpr int LD = D + 8, LDS = kTile + 8, DB = D / 8, KS = D / 16, NB = kTile / 8;
  constexpr int NK = 16 * NW, NT = 32 * NW;
  // dQ (64 queries x D) over the NW warps: 4 along the queries, NW / 4 along D.
  constexpr int DW = NW / 4, DQB = DB / DW;  // 8-column blocks of dQ per warp
  static_assert(NW % 4 == 0 && DQB % 2 == 0, "dQ split needs 16-column slices");
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [NK][LD]
  bf16* sV = sK + NK * LD;                   // [NK][LD]
  bf16* sQ = sV + NK * LD;                   // [2][64][LD]
  bf16* sdO = sQ + 2 * kTile * LD;           // [2][64][LD]
  bf16* sdS = sdO + 2 * kTile * LD;          // [NK keys][LDS]
  float* sL = reinterpret_cast<float*>(sdS + NK * LDS);  // [2][64]
  float* sD = sL + 2 * kTile;                             // [2][64]
  int* sOk = reinterpret_cast<int*>(sD + 2 * kTile);      // [NK]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int T = a.T, C = a.C, bh = blockIdx.x, b = bh / a.H, h = bh % a.H;
  const int k0 = blockIdx.y * NK;  // the causally heaviest key tiles first
  const int kw0 = k0 + warp * 16;  // this warp's first key
  const HeadRows hr(a, b, h, D);
  const int64_t stride = hr.stride;
  const bf16 *gQ = hr.q, *gK = hr.k, *gV = hr.v, *gdO = hr.dout;
  const float *gL = hr.L, *gD = hr.Dv;
  const int32_t* mask = hr.mask;
  const int n_qt = (T + kTile - 1) / kTile;
  const int qt0 = a.causal ? k0 / kTile : 0;  // queries before the first key see none of them

  auto load_q_tile = [&](int buf, int qt) {
    const int q0 = qt * kTile;
    load_tile<D, kTile, NT>(sQ + buf * kTile * LD, gQ, stride, q0, T, tid);
    load_tile<D, kTile, NT>(sdO + buf * kTile * LD, gdO, C, q0, T, tid);
    if (tid < kTile) {
      const int q = q0 + tid;
      cp_async4(sL + buf * kTile + tid, gL + (q < T ? q : 0), q < T);
    } else if (tid < 2 * kTile) {
      const int q = q0 + tid - kTile;
      cp_async4(sD + buf * kTile + tid - kTile, gD + (q < T ? q : 0), q < T);
    }
  };

  load_tile<D, NK, NT>(sK, gK, stride, k0, T, tid);
  load_tile<D, NK, NT>(sV, gV, stride, k0, T, tid);
  load_key_ok<NK>(sOk, mask, k0, T, tid);
  load_q_tile(0, qt0);
  cp_async_commit();

  float dk[DB][4], dv[DB][4];
#pragma unroll
  for (int i = 0; i < DB; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  const int kl[2] = {warp * 16 + g, warp * 16 + g + 8};  // this thread's keys (tile-local)

  for (int qt = qt0, it = 0; qt < n_qt; ++qt, ++it) {
    const int buf = it & 1, q0 = qt * kTile;
    cp_async_wait_all();
    __syncthreads();  // tile qt landed; every warp is done with tile qt-1 and with sdS
    if (qt + 1 < n_qt) {
      load_q_tile(buf ^ 1, qt + 1);
      cp_async_commit();
    }
    const bf16* cQ = sQ + buf * kTile * LD;
    const bf16* cdO = sdO + buf * kTile * LD;
    const float* cL = sL + buf * kTile;
    const float* cD = sD + buf * kTile;

    if (a.causal && kw0 > q0 + kTile - 1) {
      // Causal: every query of the tile precedes this warp's keys (NW > 4 only), dS = 0.
#pragma unroll
      for (int kk = 0; kk < NB / 2; ++kk)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          *reinterpret_cast<uint32_t*>(sdS + kl[j] * LDS + kk * 16 + 2 * t4) = 0u;
          *reinterpret_cast<uint32_t*>(sdS + kl[j] * LDS + kk * 16 + 8 + 2 * t4) = 0u;
        }
    } else {
      // S^T = K Q^T: this warp's 16 keys x 64 queries.
      float st[NB][4];
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[i][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t ka[4];
        ldsm_x4(ka, a_addr(sK, LD, warp * 16, ks * 16, lane));
#pragma unroll
        for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
          uint32_t qb[4];
          ldsm_x4(qb, bn_addr(cQ, LD, nb2 * 16, ks * 16, lane));
          mma(st[2 * nb2], ka, qb[0], qb[1]);
          mma(st[2 * nb2 + 1], ka, qb[2], qb[3]);
        }
      }
      // P = exp2(x - L) on visible entries, 0 elsewhere.
      const bool need_mask = mask != nullptr || kw0 + 16 > T || q0 + kTile > T ||
                             (a.causal && kw0 + 15 > q0);
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = nb * 8 + 2 * t4 + (e & 1), k = kl[e >> 1];
          bool vis = true;
          if (need_mask)
            vis = sOk[k] != 0 && q0 + ql < T && (!a.causal || k0 + k <= q0 + ql);
          st[nb][e] = vis ? exp2f(st[nb][e] * a.scale_log2 - cL[ql]) : 0.f;
        }
      // Clipped softmax: where raw = span P + gamma < 0 on the whole warp tile, P' = 0 and dp = 0
      // (clipped): the dV and dP products are skipped, dS = -P D_i (warp-uniform branch).
      bool live = PROB != kClipped;
      if (PROB == kClipped) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) live |= a.span * st[nb][e] + a.gamma >= 0.f;
        live = __any_sync(0xffffffffu, live);
      }
      // dV += P'^T dO  (P' = P, or clip(span P + gamma) which is 0 where P = 0 as gamma <= 0).
#pragma unroll
      for (int kk = 0; kk < NB / 2; ++kk) {
        if (!live) break;
        float pc[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float p = st[2 * kk + j][e];
            pc[j][e] = PROB == kClipped ? fminf(fmaxf(a.span * p + a.gamma, 0.f), 1.f) : p;
          }
        uint32_t pa[4];
        a_frag(pa, pc[0], pc[1]);
#pragma unroll
        for (int db2 = 0; db2 < DB / 2; ++db2) {
          uint32_t ob[4];
          ldsm_x4_t(ob, bk_addr(cdO, LD, kk * 16, db2 * 16, lane));
          mma(dv[2 * db2], pa, ob[0], ob[1]);
          mma(dv[2 * db2 + 1], pa, ob[2], ob[3]);
        }
      }
      // dP^T = V dO^T
      float dpt[NB][4];
#pragma unroll
      for (int i = 0; i < NB; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[i][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        if (!live) break;
        uint32_t va[4];
        ldsm_x4(va, a_addr(sV, LD, warp * 16, ks * 16, lane));
#pragma unroll
        for (int nb2 = 0; nb2 < NB / 2; ++nb2) {
          uint32_t ob[4];
          ldsm_x4(ob, bn_addr(cdO, LD, nb2 * 16, ks * 16, lane));
          mma(dpt[2 * nb2], va, ob[0], ob[1]);
          mma(dpt[2 * nb2 + 1], va, ob[2], ob[3]);
        }
      }
      // dS = P (dp - D_i), dp = dP' (times span on the unclipped range for clipped softmax).
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = nb * 8 + 2 * t4 + (e & 1);
          const float p = st[nb][e];
          float dp = dpt[nb][e];
          if (PROB == kClipped) {
            const float raw = a.span * p + a.gamma;
            // Same test as the forward's O2 (Args::clip_hi), or D_i and dp disagree at p = 1.
            dp = (raw >= 0.f && raw <= a.clip_hi) ? dp * a.span : 0.f;
          }
          st[nb][e] = p * (dp - cD[ql]);
        }
      // dK += dS^T Q, and dS^T -> shared memory for dQ.
#pragma unroll
      for (int kk = 0; kk < NB / 2; ++kk) {
        uint32_t da[4];
        a_frag(da, st[2 * kk], st[2 * kk + 1]);
        *reinterpret_cast<uint32_t*>(sdS + kl[0] * LDS + kk * 16 + 2 * t4) = da[0];
        *reinterpret_cast<uint32_t*>(sdS + kl[1] * LDS + kk * 16 + 2 * t4) = da[1];
        *reinterpret_cast<uint32_t*>(sdS + kl[0] * LDS + kk * 16 + 8 + 2 * t4) = da[2];
        *reinterpret_cast<uint32_t*>(sdS + kl[1] * LDS + kk * 16 + 8 + 2 * t4) = da[3];
#pragma unroll
        for (int db2 = 0; db2 < DB / 2; ++db2) {
          uint32_t qb[4];
          ldsm_x4_t(qb, bk_addr(cQ, LD, kk * 16, db2 * 16, lane));
          mma(dk[2 * db2], da, qb[0], qb[1]);
          mma(dk[2 * db2 + 1], da, qb[2], qb[3]);
        }
      }
    }
    __syncthreads();  // sdS complete
    // dQ = dS K = (sdS)^T K: this warp's 16 queries (qw) x DQB * 8 columns (from dc0), over the
    // NK keys, added into the f32 accumulator. Causal: keys past the tile's last query add 0.
    const int qw = warp & 3, dc0 = (warp >> 2) * DQB * 8;
    const int kk_end = a.causal ? min(NK / 16, (q0 + kTile - k0 + 15) / 16) : NK / 16;
    float dq[DQB][4];
#pragma unroll
    for (int i = 0; i < DQB; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dq[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < NK / 16; ++kk) {
      if (kk >= kk_end) break;
      // A[q][k] = sdS[k][q]: blocks (q, k), (q+8, k), (q, k+8), (q+8, k+8) read transposed.
      uint32_t sa[4];
      ldsm_x4_t(sa, sdS + (kk * 16 + (lane >> 4) * 8 + (lane & 7)) * LDS + qw * 16 +
                        ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int db2 = 0; db2 < DQB / 2; ++db2) {
        uint32_t kb[4];
        ldsm_x4_t(kb, bk_addr(sK, LD, kk * 16, dc0 + db2 * 16, lane));
        mma(dq[2 * db2], sa, kb[0], kb[1]);
        mma(dq[2 * db2 + 1], sa, kb[2], kb[3]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + qw * 16 + g + 8 * r;
      if (q >= T) continue;
      float* dst = a.dq_acc + (int64_t(b) * T + q) * C + h * D + dc0 + 2 * t4;
#pragma unroll
      for (int i = 0; i < DQB; ++i) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        atomicAdd(reinterpret_cast<float2*>(dst + i * 8), make_float2(dq[i][2 * r], dq[i][2 * r + 1]));
#else
        atomicAdd(dst + i * 8, dq[i][2 * r]);
        atomicAdd(dst + i * 8 + 1, dq[i][2 * r + 1]);
#endif
      }
    }
  }

  // dK (scaled by 1/sqrt(D)) and dV into dqkv's k and v columns.
  bf16* gdqkv = static_cast<bf16*>(a.dqkv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int k = k0 + kl[r];
    if (k >= T) continue;
    bf16* dst = gdqkv + (int64_t(b) * T + k) * stride + C + h * D + 2 * t4;
#pragma unroll
    for (int i = 0; i < DB; ++i) {
      *reinterpret_cast<uint32_t*>(dst + i * 8) =
          pack(dk[i][2 * r] * a.scale, dk[i][2 * r + 1] * a.scale);
      *reinterpret_cast<uint32_t*>(dst + C + i * 8) = pack(dv[i][2 * r], dv[i][2 * r + 1]);
    }
  }
  if (a.bias_part) {  // the CTA's partial column sums of dK and dV (the qkv bias gradient)
    __syncthreads();  // every warp is done reading sK (the last dQ products)
    float* red = reinterpret_cast<float*>(sK);  // [NW][dK D | dV D]
    const bool ok[2] = {k0 + kl[0] < T, k0 + kl[1] < T};
    warp_col_sums<DB>(red + warp * 2 * D, ok, lane,
                      [&](int i, int r, int c) { return dk[i][2 * r + c] * a.scale; });
    warp_col_sums<DB>(red + warp * 2 * D + D, ok, lane,
                      [&](int i, int r, int c) { return dv[i][2 * r + c]; });
    __syncthreads();
    store_bias_parts(a.bias_part + (int64_t(b) * bias_part_rows_per_seq(T) + k0 / 64) * stride +
                         C + h * D,
                     stride, C, D, red, NW, k0, T, tid, NW * 32);
  }
}

template <int D, int PROB, int MINB, int NW = 4>
void bwd_launch(const Args& a) {
  constexpr int smem = bwd_smem_bytes<D, NW>(), NK = 16 * NW;
  static bool configured = false;
  if (!configured) {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(bwd_mma_kernel<D, PROB, MINB, NW>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  const dim3 grid = tile_grid(a, NK);
  bwd_mma_kernel<D, PROB, MINB, NW><<<grid, 32 * NW, smem, stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

template <int D, int PROB>
void bwd_tuned(const Args& a) {
  if constexpr (D != 64) {
    bwd_launch<D, PROB, 1>(a);
  } else {
    const Tune& t = tune();
    if (t.bwd_warps == 8) return bwd_launch<D, PROB, 1, 8>(a);
    if (t.bwd_minb == 1) return bwd_launch<D, PROB, 1>(a);
    if (t.bwd_minb == 2) return bwd_launch<D, PROB, 2>(a);
    bwd_launch<D, PROB, 3>(a);
  }
}

template <int D>
void bwd_by_prob(const Args& a) {
  switch (a.prob) {
    case kSoftmax: return bwd_tuned<D, kSoftmax>(a);
    case kClipped: return bwd_tuned<D, kClipped>(a);
    default: return bwd_tuned<D, kSoftmax1>(a);
  }
}

}  // namespace

void launch_bwd_mma(const Args& a) {
  if (wgmma_bwd_enabled(a)) return launch_bwd_wgmma(a);
  switch (a.D) {
    case 16: return bwd_by_prob<16>(a);
    case 32: return bwd_by_prob<32>(a);
    case 64: return bwd_by_prob<64>(a);
    case 128: return bwd_by_prob<128>(a);
    default: fail("attention: no tensor-core kernel for head width ", a.D);
  }
}

}  // namespace oft::cuda::attn
