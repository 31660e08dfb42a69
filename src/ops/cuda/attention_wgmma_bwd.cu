// Hopper (sm_90a) attention backward for head width 64 in bf16, every ProbFn: the
// FlashAttention-2 backward of attention_mma_bwd.cu with its five products on warpgroup MMAs and its
// copies on the TMA (see attention_wgmma.cu for the tile layouts and descriptors,
// attention_wgmma.cuh for the helpers).
#include <cuda_bf16.h>

#include "ops/cuda/attention_wgmma.cuh"

namespace oft::cuda::attn {
namespace {

using namespace hopper;

constexpr int kBwdQ = 64;                     // queries per tile
constexpr int kQTileBytes = kBwdQ * kD * 2;  // one [64][64] bf16 tile: 8 KiB

// A CTA (one warpgroup, 128 threads) owns 64 keys and loops over the query tiles of 64 from the
// first one the causal mask lets see its keys. Per tile:
//   S^T, dP^T [64 keys x 64 queries] = K Q^T, V dO^T   (wgmma SS, both K-major; two groups, so
//                                                        P's exponentials overlap dP^T)
//   P = exp2(x - L) where visible; dS = P (dP - D_i)  (in registers, f32)
//   dV += P^T dO, dK += dS^T Q                          (wgmma RS: P, dS from registers;
//                                                        dO, Q MN-major from shared memory)
//   dS^T -> shared memory (swizzled [keys][queries]), then dQ [64 x 64] = dS K (wgmma SS:
//   A = dS MN-major, B = K MN-major).
// The memory traffic runs on the tensor memory accelerator (TMA):
//   K, V, and per query tile Q, dO (3-D tensor maps over [B][T][cols], 128-byte swizzle, zeros
//   past T) and L, D_i (bulk copies) arrive on mbarriers, two query-tile stages (tile qt + 1 is
//   copied during tile qt). No cp.async, so no proxy fence before the products: its MEMBAR
//   waited for the thread's outstanding dQ atomics;
//   dQ goes to shared memory (f32, 128-byte swizzled [2 halves][64 rows][32]) and each warp adds
//   its 16 rows into the f32 dQ accumulator with two TMA reduce-adds, which run while the
//   warpgroup goes on (a warp only waits for its previous reduce to have read its rows).
// Fused dQ store (TmaMaps::dq_count, OFT_ATTN_DQ_STORE=fused): the accumulator and a counter per (sequence,
//   head, query tile) live in a workspace that is all zero between backward calls. When a CTA
//   is done (all its reduce-adds complete), it arrives on the counter of every query tile it
//   added into, all at once (one release atomic per thread); for each tile where it arrived
//   last (every contributing key tile's adds have landed) it converts the tile: dqkv's q
//   columns = dQ / sqrt(D) in bf16, the columns' sums into bias_part, and the accumulator rows
//   and the counter back to zero. This replaces the zeroing of the accumulator in the row-term
//   pass and the separate dQ store pass (a [B*T, C] f32 read and bf16 write). Arriving per
//   tile inside the loop instead cost 1.4 us per tile (the release atomics' fences, one per
//   tile): 0.388 ms against 0.326 ms with the separate passes (H100, GPT-2 shape), while the
//   kernel without any arrival ran 0.293 ms.
// dK, dV (and S^T, dP^T, dQ while in flight) stay in registers: 164, no spills; three CTAs per
// SM (shared memory: sK, sV, sdS, sQ [2], sdO [2], sdQ = nine 8 KiB tiles, plus L, D_i, the key
// flags and 3 mbarriers: 74.3 KiB with alignment slack). The grid is head-major: one head's key
// tiles on consecutive CTAs, so the dQ accumulator rows being added into stay in L2 (tile-major,
// every head's 256 KiB of f32 dQ was in flight at once: 63% of the DRAM bandwidth, 55% L2 hits).
// Needs T % 4 == 0 (16-byte aligned L / D_i rows: wgmma_bwd_enabled()); the mma.sync backward
// runs otherwise.
// Measured on an H100 at the GPT-2 shape (whole op, D_i and dQ helpers included): 0.293 ms
// (220 TFLOP/s; tile-major 0.455 ms) against 0.478 ms for the mma.sync backward and 0.470 ms
// for the same products with cp.async copies and per-thread dQ atomics (three query stages),
// which this kernel replaced; that kernel's variants (two CTAs per SM, two warpgroups of 64 keys
// per CTA, dQ atomics deferred into the next tile) measured 0.457-0.558 ms.
struct TmaMaps {
  CUtensorMap qkv;   // bf16 [B][T][3C], box [1][64][64]
  CUtensorMap dout;  // bf16 [B][T][C], box [1][64][64]
  CUtensorMap dq;    // f32 [B][T][C], box [1][16][32]
  int* dq_count;     // [B*H][ceil(T / 64)] arrival counters (fused dQ store), or null
};
// sK, sV, sdS, sQ [2], sdO [2], sdQ (two tiles' bytes): nine 8 KiB tiles; then sL, sD, sOk, the
// mbarriers, the count of tiles to finish (fused dQ store), and the alignment slack.
constexpr int kTmaSmemBytes = 9 * kQTileBytes + 2 * 2 * kBwdQ * 4 + 64 * 4 + 3 * 8 + 16 + 1024;

template <int PROB>
__global__ void __launch_bounds__(128, 3)
    bwd_tma_kernel(const Args a, const __grid_constant__ TmaMaps maps) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  bf16* sK = reinterpret_cast<bf16*>(base);
  bf16* sV = sK + 64 * kD;
  bf16* sdS = sV + 64 * kD;                      // [64 keys][64 queries]
  bf16* sQ = sdS + 64 * kBwdQ;                   // [2][64][64]
  bf16* sdO = sQ + 2 * kBwdQ * kD;               // [2][64][64]
  float* sdQ = reinterpret_cast<float*>(sdO + 2 * kBwdQ * kD);  // [2][64][32]
  float* sL = sdQ + 2 * kBwdQ * 32;                              // [2][64]
  float* sD = sL + 2 * kBwdQ;                                    // [2][64]
  int* sOk = reinterpret_cast<int*>(sD + 2 * kBwdQ);             // [64]
  uint64_t* bar = reinterpret_cast<uint64_t*>(sOk + 64);         // full[2], kv
  int* sNfin = reinterpret_cast<int*>(bar + 3);  // fused dQ store: tiles this CTA finishes

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int T = a.T, C = a.C;
  // Head-major: the CTAs in flight cover few heads, whose f32 dQ rows take the reduce-adds in L2.
  const GridTile gt = head_major_tile((T + 63) / 64);
  const int bh = gt.bh, b = bh / a.H, h = bh % a.H;
  const int k0 = gt.tile * 64;  // the causally heaviest key tiles of the head first
  const HeadRows hr(a, b, h, kD);
  const float *gL = hr.L, *gD = hr.Dv;
  const int32_t* mask = hr.mask;
  const int n_qt = (T + kBwdQ - 1) / kBwdQ;
  const int qt0 = a.causal ? k0 / kBwdQ : 0;  // queries before the first key see none of them
  const bool fused = maps.dq_count != nullptr;
  int* const count = fused ? maps.dq_count + int64_t(bh) * n_qt : nullptr;

  // finish (every thread, on the last arrival): query tile qt's dQ into dqkv (times 1/sqrt(D),
  // bf16), its column sums into bias_part, its accumulator rows and counter back to zero.
  // Thread: 4 columns (tid % 16) of rows tid / 16 + 8 i; L2 loads (__ldcg: the rows were
  // written by other SMs).
  auto finish = [&](int qt) {
    const int q0 = qt * kBwdQ, c4 = (tid & 15) * 4, r0 = tid >> 4;
    float* acc = a.dq_acc + (int64_t(b) * T + q0) * C + h * kD + c4;
    bf16* dst = static_cast<bf16*>(a.dqkv) + (int64_t(b) * T + q0) * hr.stride + h * kD + c4;
    float cs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int half = 0; half < 2; ++half) {  // four rows' loads in flight (registers are scarce)
      float4 v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = r0 + 32 * half + 8 * i;
        v[i] = q0 + r < T ? __ldcg(reinterpret_cast<const float4*>(acc + r * C))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = r0 + 32 * half + 8 * i;
        if (q0 + r >= T) continue;
        __stcg(reinterpret_cast<float4*>(acc + r * C), make_float4(0.f, 0.f, 0.f, 0.f));
        const float f[4] = {v[i].x * a.scale, v[i].y * a.scale, v[i].z * a.scale,
                            v[i].w * a.scale};
        *reinterpret_cast<uint2*>(dst + int64_t(r) * hr.stride) =
            make_uint2(pack(f[0], f[1]), pack(f[2], f[3]));
#pragma unroll
        for (int k = 0; k < 4; ++k) cs[k] += f[k];
      }
    }
    if (a.bias_part) {  // sums over the warp's two row lanes, then the 4 warps through sdS
#pragma unroll
      for (int k = 0; k < 4; ++k) cs[k] += __shfl_xor_sync(0xffffffffu, cs[k], 16);
      float* red = reinterpret_cast<float*>(sdS);  // [4 warps][64]: sdS is idle between tiles
      if (lane < 16)
        *reinterpret_cast<float4*>(red + warp * 64 + c4) = make_float4(cs[0], cs[1], cs[2], cs[3]);
      warpgroup_sync(0);
      if (tid < 64)
        a.bias_part[(int64_t(b) * bias_part_rows_per_seq(T) + qt) * hr.stride + h * kD + tid] =
            red[tid] + red[64 + tid] + red[128 + tid] + red[192 + tid];
      warpgroup_sync(0);  // red is read before the next tile's dS goes into sdS
    }
    if (tid == 0) count[qt] = 0;
  };

  // Stage `st` takes query tile qt: Q, dO, L, D_i, all on full[st].
  auto issue_tile = [&](int st, int qt) {
    const int q0 = qt * kBwdQ, nrow = min(kBwdQ, T - q0);
    mbar_expect_tx(&bar[st], 2 * kQTileBytes + 2 * nrow * 4);
    tma_load_3d(sQ + st * kBwdQ * kD, &maps.qkv, &bar[st], h * kD, q0, b);
    tma_load_3d(sdO + st * kBwdQ * kD, &maps.dout, &bar[st], h * kD, q0, b);
    bulk_load(sL + st * kBwdQ, gL + q0, nrow * 4, &bar[st]);
    bulk_load(sD + st * kBwdQ, gD + q0, nrow * 4, &bar[st]);
  };
  if (tid == 0) {
    mbar_init(&bar[0], 1);
    mbar_init(&bar[1], 1);
    mbar_init(&bar[2], 1);
    mbar_init_fence();
  }
  // L / D_i past T are never copied: those entries hold zeros or an earlier tile's finite
  // values, which only meet P = 0 (masked by the select) and dP = 0 (dO past T is zero-filled).
  sL[tid] = 0.f;
  sD[tid] = 0.f;
  if (tid < 64) {
    const int k = k0 + tid;
    sOk[tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
  }
  if (tid == 0) *sNfin = 0;
  fence_proxy_async();  // the zeros before the TMA writes that may follow them
  __syncthreads();
  if (tid == 0) {
    mbar_expect_tx(&bar[2], 2 * kQTileBytes);
    tma_load_3d(sK, &maps.qkv, &bar[2], C + h * kD, k0, b);
    tma_load_3d(sV, &maps.qkv, &bar[2], 2 * C + h * kD, k0, b);
    if (qt0 < n_qt) issue_tile(0, qt0);
  }

  float dk[32], dv[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) dk[i] = dv[i] = 0.f;
  const int kr[2] = {warp * 16 + g, warp * 16 + g + 8};  // this thread's keys (rows of S^T)
  const uint64_t d_k = sw128_desc(sK), d_v = sw128_desc(sV), d_ds = sw128_desc(sdS);
  // This warp's 16 dQ rows in each half of sdQ (2 KiB apart: 1024-byte aligned boxes).
  float* sdQ_w = sdQ + warp * 16 * 32;
  mbar_wait(&bar[2], 0);

  for (int qt = qt0, j = 0; qt < n_qt; ++qt, ++j) {
    const int st = j & 1, q0 = qt * kBwdQ;
    __syncthreads();  // every warp is done with tile qt - 1, whose stage takes tile qt + 1
    if (tid == 0 && qt + 1 < n_qt) issue_tile(st ^ 1, qt + 1);
    mbar_wait(&bar[st], (j >> 1) & 1);
    const bf16* cQ = sQ + st * kBwdQ * kD;
    const bf16* cdO = sdO + st * kBwdQ * kD;
    const float* cL = sL + st * kBwdQ;
    const float* cD = sD + st * kBwdQ;
    const uint64_t d_q = sw128_desc(cQ), d_do = sw128_desc(cdO);

    // S^T = K Q^T and dP^T = V dO^T in two groups (P's exponentials overlap dP^T).
    float sT[32], dpt[32];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n64<0, 0>(sT, d_k + 2 * ks, d_q + 2 * ks, ks);
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n64<0, 0>(dpt, d_v + 2 * ks, d_do + 2 * ks, ks);
    wgmma_commit();
    wgmma_wait<1>();
    keep(sT);

    // P = exp2(x - L) on visible entries, 0 elsewhere. sT[4 nb + e]: key kr[e >> 1], query
    // q0 + 8 nb + 2 t4 + (e & 1).
    const bool need_mask =
        mask != nullptr || k0 + 64 > T || q0 + kBwdQ > T || (a.causal && k0 + 63 > q0);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int ql = (i >> 2) * 8 + 2 * t4 + (i & 1), kl = kr[(i >> 1) & 1];
      bool vis = true;
      if (need_mask)
        vis = sOk[kl] != 0 && q0 + ql < T && (!a.causal || k0 + kl <= q0 + ql);
      sT[i] = vis ? exp2f(sT[i] * a.scale_log2 - cL[ql]) : 0.f;
    }
    // dV += P'^T dO, issued before waiting for dP^T (P' = P, or for clipped softmax
    // clip(span P + gamma, 0, 1), which is 0 where P = 0 as gamma <= 0).
    // (Skipping the product where P' is 0 on the whole tile, as the mma.sync kernel does, made
    // this kernel spill: 0.375 against 0.308 ms at the GPT-2 shape.)
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if constexpr (PROB == kClipped) {
        float pc[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) pc[i] = fminf(fmaxf(a.span * sT[8 * kk + i] + a.gamma, 0.f), 1.f);
        a_frag(pa[kk], pc, pc + 4);
      } else {
        a_frag(pa[kk], sT + 8 * kk, sT + 8 * kk + 4);
      }
    }
    keep(dv);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(dv, pa[kk], d_do + kk * (2048 >> 4));
    wgmma_commit();
    wgmma_wait<1>();  // dP^T is complete (dV may still run)
    keep(dpt);
    // dS = P (dp - D_i), as the A fragments of dK += dS^T Q and into shared memory for dQ;
    // dp = dP' (times span on the unclipped range for clipped softmax).
    uint32_t da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      float e[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int idx = 8 * kk + i, ql = (idx >> 2) * 8 + 2 * t4 + (idx & 1);
        float dp = dpt[idx];
        if constexpr (PROB == kClipped) {
          const float raw = a.span * sT[idx] + a.gamma;
          // Same test as the forward's O2 (Args::clip_hi), or D_i and dp disagree at p = 1.
          dp = (raw >= 0.f && raw <= a.clip_hi) ? dp * a.span : 0.f;
        }
        e[i] = sT[idx] * (dp - cD[ql]);
      }
      a_frag(da[kk], e, e + 4);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int r = kr[jj & 1], ch = 2 * kk + (jj >> 1);
        *reinterpret_cast<uint32_t*>(sdS + r * kBwdQ + ((ch ^ (r & 7)) << 3) + 2 * t4) =
            da[kk][jj];
      }
    }
    keep(dk);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(dk, da[kk], d_q + kk * (2048 >> 4));
    wgmma_commit();
    fence_proxy_async();
    warpgroup_sync(0);  // dS^T is in shared memory
    wgmma_wait<1>();    // dV is complete: P's registers are free for dQ's accumulators
    keep(dv);
    keep(pa);
    // dQ [64 queries x 64] = dS K: A = dS (stored [key][query]), B = K (stored [key][d]).
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
    // This warp's rows of dQ into sdQ once its previous reduce has read them. dq[4 nb + e]:
    // row 16 warp + g + 8 (e >> 1), column 8 nb + 2 t4 + (e & 1): half nb / 4, 16-byte chunk
    // 2 (nb % 4) + t4 / 2 of the 128-byte row, swizzled with the row mod 8.
    if (lane == 0) bulk_wait_read();
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = g + 8 * r;  // within the warp's 16 (the box's swizzle rows: row mod 8)
#pragma unroll
      for (int nb = 0; nb < 8; ++nb) {
        const int ch = 2 * (nb & 3) + (t4 >> 1);
        *reinterpret_cast<float2*>(sdQ_w + (nb >> 2) * kBwdQ * 32 + row * 32 +
                                   ((ch ^ (row & 7)) << 2) + 2 * (t4 & 1)) =
            make_float2(dq[4 * nb + 2 * r], dq[4 * nb + 2 * r + 1]);
      }
    }
    fence_proxy_async();
    __syncwarp();
    if (lane == 0) {
      tma_reduce_add_3d(&maps.dq, sdQ_w, h * kD, q0 + warp * 16, b);
      tma_reduce_add_3d(&maps.dq, sdQ_w + kBwdQ * 32, h * kD + 32, q0 + warp * 16, b);
      bulk_commit();
    }
    warpgroup_sync(0);  // every warp is done reading sdS (the next tile rewrites it)
  }
  if (lane == 0) {  // the reduces have read sdQ (and landed) before the CTA ends
    bulk_wait();
    if (fused) fence_proxy_async_global();
  }
  if (fused) {
    // Every warp's reduce-adds are complete and fenced: arrive on each query tile this CTA added
    // into (qt0 .. n_qt - 1; thread i takes qt0 + i, qt0 + i + 128, ...). A tile where the
    // arrival is the last of its key tiles (causal: 0..qt) goes on the list (in the free sQ
    // stage), after an acquire fence for the other CTAs' adds.
    int* fin = reinterpret_cast<int*>(sQ);
    __syncthreads();
    for (int qt = qt0 + tid; qt < n_qt; qt += 128) {
      const int need = a.causal ? qt + 1 : n_qt;
      if (atom_add_release_gpu(count + qt, 1) == need - 1) {
        fence_acq_rel_gpu();
        fin[atomicAdd(sNfin, 1)] = qt;
      }
    }
    __syncthreads();
    for (int i = 0; i < *sNfin; ++i) finish(fin[i]);
  }

  // dK (scaled by 1/sqrt(D)) and dV into dqkv's k and v columns.
  bf16* gdqkv = static_cast<bf16*>(a.dqkv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int k = k0 + kr[r];
    if (k >= T) continue;
    bf16* dst = gdqkv + (int64_t(b) * T + k) * hr.stride + C + h * kD + 2 * t4;
#pragma unroll
    for (int nb = 0; nb < 8; ++nb) {
      *reinterpret_cast<uint32_t*>(dst + nb * 8) =
          pack(dk[4 * nb + 2 * r] * a.scale, dk[4 * nb + 2 * r + 1] * a.scale);
      *reinterpret_cast<uint32_t*>(dst + C + nb * 8) =
          pack(dv[4 * nb + 2 * r], dv[4 * nb + 2 * r + 1]);
    }
  }
  if (a.bias_part) {  // the CTA's partial column sums of dK and dV (the qkv bias gradient)
    float* red = reinterpret_cast<float*>(sK);  // [4 warps][dK 64 | dV 64]: sK is read no more
    const bool ok[2] = {k0 + kr[0] < T, k0 + kr[1] < T};
    warp_col_sums<8>(red + warp * 128, ok, lane,
                     [&](int nb, int r, int c) { return dk[4 * nb + 2 * r + c] * a.scale; });
    warp_col_sums<8>(red + warp * 128 + 64, ok, lane,
                     [&](int nb, int r, int c) { return dv[4 * nb + 2 * r + c]; });
    __syncthreads();
    store_bias_parts(a.bias_part + (int64_t(b) * bias_part_rows_per_seq(T) + k0 / 64) * hr.stride +
                         C + h * kD,
                     hr.stride, C, kD, red, 4, k0, T, tid, 128);
  }
#else
  __trap();  // not built for sm_90a: wgmma_bwd_enabled() keeps this kernel from launching
#endif
}

// ---- host side ----
template <int PROB>
void launch_bwd_tma(const Args& a, int* dq_count) {
  static bool configured = false;
  if (!configured) {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(bwd_tma_kernel<PROB>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        kTmaSmemBytes));
    configured = true;
  }
  TmaMaps maps;
  maps.qkv = tensor_map(a.qkv, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, 3 * a.C, 3 * int64_t(a.C),
                        a.T, a.B, kD, kBwdQ);
  maps.dout = tensor_map(a.dout, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a.C, a.C, a.T, a.B, kD,
                         kBwdQ);
  maps.dq = tensor_map(a.dq_acc, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, a.C, a.C, a.T, a.B, 32, 16);
  maps.dq_count = dq_count;
  bwd_tma_kernel<PROB><<<head_major_grid(a, 64), 128, kTmaSmemBytes, stream()>>>(a, maps);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, found through the runtime (no libcuda link).
static EncodeTiledFn encode_tiled() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
    OFT_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                    cudaEnableDefault, &q));
#else
    OFT_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q));
#endif
    if (f == nullptr || q != cudaDriverEntryPointSuccess)
      fail("the CUDA driver has no cuTensorMapEncodeTiled (needed by the Hopper attention "
           "backward and matrix products); update the driver, or set OFT_ATTN_WGMMA=fwd and "
           "OFT_GEMM_WGMMA=0");
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

CUtensorMap hopper::tensor_map(const void* base, CUtensorMapDataType dt, int elem_bytes, int cols,
                       int64_t ld, int T, int B, int box_cols, int box_rows) {
  CUtensorMap m;
  const cuuint64_t dims[3] = {cuuint64_t(cols), cuuint64_t(T), cuuint64_t(B)};
  const cuuint64_t strides[2] = {cuuint64_t(ld) * elem_bytes, cuuint64_t(ld) * elem_bytes * T};
  const cuuint32_t box[3] = {cuuint32_t(box_cols), cuuint32_t(box_rows), 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUresult r = encode_tiled()(&m, dt, 3, const_cast<void*>(base), dims, strides, box,
                                    elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    fail("cuTensorMapEncodeTiled failed (error ", int(r), ") for a [", B, "][", T,
         "][", cols, "] tensor");
  return m;
}

void launch_bwd_wgmma(const Args& a, int* dq_count) {
  if (a.prob == kClipped) return launch_bwd_tma<kClipped>(a, dq_count);
  if (a.prob == kSoftmax) return launch_bwd_tma<kSoftmax>(a, dq_count);
  launch_bwd_tma<kSoftmax1>(a, dq_count);
}

int64_t dq_counters(const Args& a) { return int64_t(a.B) * a.H * ((a.T + kBwdQ - 1) / kBwdQ); }

}  // namespace oft::cuda::attn
