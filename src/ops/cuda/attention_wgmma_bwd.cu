// Hopper (sm_90a) attention backward for head width 64 in bf16, softmax and softmax1: the
// FlashAttention-2 backward of attention_mma.cu with its five products on warpgroup MMAs (see
// attention_wgmma.cu for the tile layouts and descriptors, attention_wgmma.cuh for the helpers).
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cuda/attention_wgmma.cuh"

namespace oft::cuda::attn {
namespace {

using namespace hopper;

// A CTA of NWG warpgroups owns 64 NWG keys (64 per warpgroup) and loops over the query tiles of 64
// (Q, dO, L, D_i in three stages: tile qt + 2 is copied during tile qt), like the mma.sync
// backward. Per tile and warpgroup:
//   S^T, dP^T [64 keys x 64 queries] = K Q^T, V dO^T   (wgmma SS, both K-major; two groups, so
//                                                        P's exponentials overlap dP^T)
//   P = exp2(x - L) where visible; dS = P (dP - D_i)  (in registers, f32)
//   dV += P^T dO, dK += dS^T Q                          (wgmma RS: P, dS from registers;
//                                                        dO, Q MN-major from shared memory)
//   dS^T -> shared memory (swizzled [keys][queries]), then dQ [64 x 64] = dS K over the
//   warpgroup's 64 keys (wgmma SS: A = dS MN-major, B = K MN-major), added into the f32 dQ
//   accumulator with atomics (as many as the mma.sync kernel's 64-key CTAs make).
// dK, dV (and S^T, dP^T, dQ while in flight) stay in registers: NWG 1 is compiled for three CTAs
// per SM (12 warps, 168 registers, 24 bytes spilled), NWG 2 for one (188 registers).
// OFT_ATTN_WGMMA_BWD_WARPGROUPS=1|2 chooses (bwd_warpgroups()). Measured and dropped (H100,
// GPT-2 shape, whole op 0.468 ms for this kernel): two CTAs per SM without spills 0.550 ms;
// dQ's atomics deferred into the next tile (overlapping its products, or after its proxy fence)
// 0.496-0.558 ms, the longer-lived dQ registers spilling or halving the CTAs per SM.
constexpr int kBwdQ = 64;
constexpr int kQTileBytes = kBwdQ * kD * 2;  // 8 KiB
constexpr int kBwdStages = 3;  // query tiles in shared memory: this one and the next two in flight
// sK, sV, sdS [64 NWG][64]; sQ, sdO [3][64][64]; sL, sD [3][64]; sOk [64 NWG]; + alignment:
// 75 KiB for NWG 1, three CTAs per SM (with the 1 KiB each reserves: 227.3 of 228 KiB).
template <int NWG>
constexpr int bwd_smem_bytes() {
  return 3 * NWG * kQTileBytes + 2 * kBwdStages * kQTileBytes + 2 * kBwdStages * kBwdQ * 4 +
         64 * NWG * 4 + 1024;
}

template <int PROB, int NWG>
__global__ void __launch_bounds__(128 * NWG, NWG == 1 ? 3 : 1) bwd_wgmma_kernel(const Args a) {
  constexpr int kBwdKeys = 64 * NWG, kThr = 128 * NWG;
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(base);
  bf16* sV = sK + kBwdKeys * kD;
  bf16* sdS = sV + kBwdKeys * kD;                 // [keys][64 queries]
  bf16* sQ = sdS + kBwdKeys * kBwdQ;              // [3][64][64]
  bf16* sdO = sQ + kBwdStages * kBwdQ * kD;       // [3][64][64]
  float* sL = reinterpret_cast<float*>(sdO + kBwdStages * kBwdQ * kD);  // [3][64]
  float* sD = sL + kBwdStages * kBwdQ;                                   // [3][64]
  int* sOk = reinterpret_cast<int*>(sD + kBwdStages * kBwdQ);            // [keys]

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int T = a.T, C = a.C;
  const GridTile gt = grid_tile(a, (T + kBwdKeys - 1) / kBwdKeys);
  const int bh = gt.bh, b = bh / a.H, h = bh % a.H;
  const int k0 = gt.tile * kBwdKeys, kw0 = k0 + wg * 64;  // the CTA's / warpgroup's keys
  const HeadRows hr(a, b, h, kD);
  const int64_t stride = hr.stride;
  const bf16 *gQ = hr.q, *gK = hr.k, *gV = hr.v, *gdO = hr.dout;
  const float *gL = hr.L, *gD = hr.Dv;
  const int32_t* mask = hr.mask;
  const int n_qt = (T + kBwdQ - 1) / kBwdQ;
  const int qt0 = a.causal ? k0 / kBwdQ : 0;  // queries before the first key see none of them

  auto load_q_tile = [&](int buf, int qt) {
    const int q0 = qt * kBwdQ;
    load_tile_sw<kBwdQ, kThr>(sQ + buf * kBwdQ * kD, gQ, stride, q0, T, tid);
    load_tile_sw<kBwdQ, kThr>(sdO + buf * kBwdQ * kD, gdO, C, q0, T, tid);
    if (tid < kBwdQ) {
      const int q = q0 + tid;
      cp_async4(sL + buf * kBwdQ + tid, gL + (q < T ? q : 0), q < T);
    } else if (tid < 2 * kBwdQ) {
      const int q = q0 + tid - kBwdQ;
      cp_async4(sD + buf * kBwdQ + tid - kBwdQ, gD + (q < T ? q : 0), q < T);
    }
  };
  load_tile_sw<kBwdKeys, kThr>(sK, gK, stride, k0, T, tid);
  load_tile_sw<kBwdKeys, kThr>(sV, gV, stride, k0, T, tid);
  if (tid < kBwdKeys) {
    const int k = k0 + tid;
    sOk[tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
  }
  if (qt0 < n_qt) load_q_tile(0, qt0);
  cp_async_commit();
  if (qt0 + 1 < n_qt) load_q_tile(1, qt0 + 1);
  cp_async_commit();  // (possibly empty: one group per tile keeps the wait count fixed)

  float dk[32], dv[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dk[i] = dv[i] = 0.f;
  // This thread's keys (warpgroup-local rows of S^T): r and r + 8.
  const int kr[2] = {warp * 16 + g, warp * 16 + g + 8};
  const uint64_t d_k = sw128_desc(sK + wg * 64 * kD), d_v = sw128_desc(sV + wg * 64 * kD);
  bf16* sdS_w = sdS + wg * 64 * kBwdQ;
  const uint64_t d_ds = sw128_desc(sdS_w);

  float* const gdq = a.dq_acc + int64_t(b) * T * C + h * kD + 2 * t4;  // this thread's columns

  for (int qt = qt0, buf = 0; qt < n_qt; ++qt, buf = buf == 2 ? 0 : buf + 1) {
    const int q0 = qt * kBwdQ;
    cp_async_wait<1>();  // tile qt landed (tile qt + 1 may still be in flight)
    fence_proxy_async();
    __syncthreads();  // every warpgroup is done with tile qt - 1, whose buffer takes tile qt + 2
    if (qt + 2 < n_qt) load_q_tile(buf == 0 ? 2 : buf - 1, qt + 2);
    cp_async_commit();
    if (a.causal && kw0 > q0 + kBwdQ - 1) continue;  // every query precedes these keys: dS = 0
    const bf16* cQ = sQ + buf * kBwdQ * kD;
    const bf16* cdO = sdO + buf * kBwdQ * kD;
    const float* cL = sL + buf * kBwdQ;
    const float* cD = sD + buf * kBwdQ;
    const uint64_t d_q = sw128_desc(cQ), d_do = sw128_desc(cdO);

    // S^T = K Q^T and dP^T = V dO^T (this warpgroup's 64 keys x 64 queries).
    // Two groups: P's exponentials run while dP^T is still in the tensor cores.
    float st[32], dpt[32];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n64<0, 0>(st, d_k + 2 * ks, d_q + 2 * ks, ks);
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n64<0, 0>(dpt, d_v + 2 * ks, d_do + 2 * ks, ks);
    wgmma_commit();
    wgmma_wait<1>();
    keep(st);

    // P = exp2(x - L) on visible entries, 0 elsewhere. st[4 nb + e]: key kr[e >> 1], query
    // q0 + 8 nb + 2 t4 + (e & 1).
    const bool need_mask = mask != nullptr || kw0 + 64 > T || q0 + kBwdQ > T ||
                           (a.causal && kw0 + 63 > q0);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int ql = (i >> 2) * 8 + 2 * t4 + (i & 1), kl = kr[(i >> 1) & 1];
      bool vis = true;
      if (need_mask)
        vis = sOk[wg * 64 + kl] != 0 && q0 + ql < T && (!a.causal || kw0 + kl <= q0 + ql);
      st[i] = vis ? exp2f(st[i] * a.scale_log2 - cL[ql]) : 0.f;
    }
    // dV += P^T dO, issued before waiting for dP^T.
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) a_frag(pa[kk], st + 8 * kk, st + 8 * kk + 4);
    keep(dv);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(dv, pa[kk], d_do + kk * (2048 >> 4));
    wgmma_commit();
    wgmma_wait<1>();  // dP^T is complete (dV may still run)
    keep(dpt);
    // dS = P (dp - D_i), as the A fragments of dK += dS^T Q and into shared memory for dQ.
    uint32_t da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      float e[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int idx = 8 * kk + i, ql = (idx >> 2) * 8 + 2 * t4 + (idx & 1);
        e[i] = st[idx] * (dpt[idx] - cD[ql]);
      }
      a_frag(da[kk], e, e + 4);
      // dS^T row kr[r], queries 16 kk + 8 half + 2 t4 (+1): chunk (2 kk + half) of the row,
      // swizzled with the row's index mod 8.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = kr[j & 1], ch = 2 * kk + (j >> 1);
        *reinterpret_cast<uint32_t*>(sdS_w + r * kBwdQ + ((ch ^ (r & 7)) << 3) + 2 * t4) =
            da[kk][j];
      }
    }
    keep(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(dk, da[kk], d_q + kk * (2048 >> 4));
    wgmma_commit();
    fence_proxy_async();
    warpgroup_sync(wg);  // this warpgroup's dS^T is in shared memory
    wgmma_wait<1>();     // dV is complete: P's registers are free for dQ's accumulators
    keep(dv);
    keep(pa);
    // dQ [64 queries x 64] = dS K over this warpgroup's 64 keys: A = dS (stored [key][query]),
    // B = K (stored [key][d]), both MN-major; keys 16 kk.. start 2048 bytes apart.
    float dq[32];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_ss_n64<1, 1>(dq, d_ds + kk * (2048 >> 4), d_k + kk * (2048 >> 4), kk);
    wgmma_commit();
    wgmma_wait_all();
    keep(dq);
    keep(dk);
    keep(da);
    // dq[4 nb + e]: query q0 + 16 warp + g + 8 (e >> 1), column 8 nb + 2 t4 + (e & 1).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + warp * 16 + g + 8 * r;
      if (q >= T) continue;
      float* dst = gdq + int64_t(q) * C;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
        atomicAdd(reinterpret_cast<float2*>(dst + nb * 8),
                  make_float2(dq[4 * nb + 2 * r], dq[4 * nb + 2 * r + 1]));
    }
    warpgroup_sync(wg);  // every warp of the group is done reading sdS (the next tile rewrites it)
  }

  // dK (scaled by 1/sqrt(D)) and dV into dqkv's k and v columns. dk[4 nb + e]: key kr[e >> 1],
  // column 8 nb + 2 t4 + (e & 1).
  bf16* gdqkv = static_cast<bf16*>(a.dqkv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int k = kw0 + kr[r];
    if (k >= T) continue;
    bf16* dst = gdqkv + (int64_t(b) * T + k) * stride + C + h * kD + 2 * t4;
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
      *reinterpret_cast<uint32_t*>(dst + nb * 8) =
          pack(dk[4 * nb + 2 * r] * a.scale, dk[4 * nb + 2 * r + 1] * a.scale);
      *reinterpret_cast<uint32_t*>(dst + C + nb * 8) =
          pack(dv[4 * nb + 2 * r], dv[4 * nb + 2 * r + 1]);
    }
  }
#else
  __trap();  // not built for sm_90a: wgmma_bwd_enabled() keeps this kernel from launching
#endif
}

template <int PROB, int NWG>
void launch_bwd(const Args& a) {
  static bool configured = false;
  launch_kernel(bwd_wgmma_kernel<PROB, NWG>, configured, bwd_smem_bytes<NWG>(), 64 * NWG,
                128 * NWG, a);
}

// Warpgroups per CTA from the environment variable `name`: `first` (the default) or `second`.
int warpgroups_from_env(const char* name, int first, int second) {
  const char* e = std::getenv(name);
  if (e == nullptr || std::strcmp(e, std::to_string(first).c_str()) == 0) return first;
  if (std::strcmp(e, std::to_string(second).c_str()) == 0) return second;
  fail(name, "='", e, "': expected ", first, " (the default) or ", second);
}
int bwd_warpgroups() {
  static const int n = warpgroups_from_env("OFT_ATTN_WGMMA_BWD_WARPGROUPS", 1, 2);
  return n;
}


}  // namespace

void launch_bwd_wgmma(const Args& a) {
  const bool two = bwd_warpgroups() == 2;
  if (a.prob == kSoftmax) return two ? launch_bwd<kSoftmax, 2>(a) : launch_bwd<kSoftmax, 1>(a);
  two ? launch_bwd<kSoftmax1, 2>(a) : launch_bwd<kSoftmax1, 1>(a);
}

}  // namespace oft::cuda::attn
