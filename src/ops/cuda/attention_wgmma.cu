// Hopper (sm_90a) attention for head width 64 in bf16, every probability function: the
// FlashAttention-2 algorithm of attention_mma.cu with its products on warpgroup MMAs
// (wgmma.mma_async) that read their shared-memory operands through matrix descriptors.
//
// Forward: a CTA of two warpgroups (256 threads) owns 128 queries, 64 per warpgroup (16 per
// warp, like the mma.sync kernel's row blocks); keys come in tiles of 128. Per key tile:
//   S [64 x 128] = Q K^T : 4 x wgmma m64n128k16, Q and K from shared memory (K-major);
//   online softmax on the f32 accumulators in registers (the m64nN accumulator of a warp has
//   the m16n8 C-fragment layout, so the softmax code is the mma.sync kernel's);
//   O [64 x 64] += P V   : 8 x wgmma m64n64k16, P from registers (two neighbouring 8-column
//   accumulator blocks are the A fragment), V from shared memory (MN-major: stored [key][d]).
// K and V are double-buffered: the next tile's copies run during this tile's products. Two
// two-warpgroup CTAs fit an SM (82 KiB of shared memory each). Clipped softmax takes two passes
// over the keys (fwd_wgmma_clipped_kernel). Backward: attention_wgmma_bwd.cu.
//
// Tiles are [rows][64] bf16 with the 128-byte swizzle (16-byte chunk c of row r at r * 128 +
// ((c ^ (r % 8)) * 16) bytes, tiles 1024-byte aligned), written by 16-byte cp.async (zero fill
// past T) and described to wgmma by: start address, 128-byte swizzle, 1024 bytes between 8-row
// groups. A K-major operand advances 32 bytes per 16-wide k step, an MN-major one (stored
// [k][m or n]) 2048 bytes.
//
// Inputs and outputs are the mma.sync kernels' (Args): out, the saved copy of O and the
// log2-domain LSE L forward; dK, dV into dqkv and dQ into the f32 accumulator backward. Used for
// D = 64, bf16, on sm_90 (OFT_ATTN_WGMMA: auto, the default, by the
// size rules of wgmma_fwd_enabled / wgmma_bwd_enabled; all; fwd; bwd; 0 for neither);
// everything else runs attention_mma.cu. At the GPT-2 shape (B 16, T 1024,
// H 12, causal) on an H100 the forward takes 0.115-0.121 ms (213-224 TFLOP/s) against 0.154 ms
// for the mma.sync kernel; the backward op 0.468-0.471 ms against 0.477 ms (the kernel alone
// 384 us under ncu against 418 us), and `gpt2_124m` trains 2.3% faster with it.
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

#include "core/env_choice.h"
#include "ops/cuda/attention_wgmma.cuh"

namespace oft::cuda::attn {
namespace {

using namespace hopper;
constexpr int kBN = 128;  // keys per tile
constexpr int kWThreads = 256;
constexpr int kTileBytes = 128 * kD * 2;  // one [128][64] bf16 tile: 16 KiB
constexpr int kBM = 128;  // queries per forward CTA: two warpgroups of 64
// Forward shared memory: Q [128][64], K[2], V[2], then the key flags [2][kBN]; 1 KiB of slack to
// align the base to 1024 bytes.
constexpr int kFwdSmemBytes = 5 * kTileBytes + 2 * kBN * 4 + 1024;

// Row `row` (this thread's rows g / g + 8 of its warp: accumulator half j) of the output: out =
// f * o (times the gate, Args::gate), the saved copy (f * o, or O2 = os for clipped softmax:
// kO2), both bf16x2 per lane, and L = lse (by the quad's first lane). Rows past T are not
// stored.
template <bool kO2>
__device__ __forceinline__ void store_row(const Args& a, int b, int h, int row, int t4, int j,
                                          const float (&o)[32], float f, const float (&os)[32],
                                          float lse) {
  if (row >= a.T) return;
  bf16* gO = static_cast<bf16*>(a.out);
  bf16* gS = static_cast<bf16*>(a.osave);
  const int64_t off = (int64_t(b) * a.T + row) * a.C + h * kD + 2 * t4;
  const float fg = f * out_gate<bf16>(a, b, row, h);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t ov = pack(o[4 * i + 2 * j] * f, o[4 * i + 2 * j + 1] * f);
    *reinterpret_cast<uint32_t*>(gO + off + i * 8) =
        a.gate ? pack(o[4 * i + 2 * j] * fg, o[4 * i + 2 * j + 1] * fg) : ov;
    if (kO2 || gS != nullptr)  // no copy when the caller keeps `out` (Args::osave null)
      *reinterpret_cast<uint32_t*>(gS + off + i * 8) =
          kO2 ? pack(os[4 * i + 2 * j], os[4 * i + 2 * j + 1]) : ov;
  }
  if (t4 == 0) a.L[(int64_t(b) * a.H + h) * a.T + row] = lse;
}

// Scales S [64 x N] (this thread's N accumulators of one warpgroup's product) into the log2
// domain and masks invisible entries to -inf. s[4 nb + e] is key k0 + 8 nb + 2 t4 + (e & 1)
// (kl of the tile's flags `ok`, from kl0) of row row[e >> 1].
template <int N>
__device__ __forceinline__ void scale_mask(float (&s)[N], const Args& a, const int* ok, int k0,
                                           int kl0, const int (&row)[2], int t4, bool need_mask) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    float x = s[i] * a.scale_log2;
    if (need_mask) {
      const int kl = kl0 + (i >> 2) * 8 + 2 * t4 + (i & 1);
      const bool vis = ok[kl] != 0 && (!a.causal || k0 + kl <= row[(i >> 1) & 1]);
      if (!vis) x = -kInf;
    }
    s[i] = x;
  }
}

// Two CTAs per SM. (Four warpgroups per CTA, one CTA per SM reading each K / V tile half as
// often from L2, measured 0.153 against 0.120 ms on an H100.)
template <int PROB>
__global__ void __launch_bounds__(kWThreads, 2) fwd_wgmma_kernel(const Args a) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(base);
  auto sK = [&](int buf) { return sQ + kBM * kD + buf * 128 * kD; };
  auto sV = [&](int buf) { return sQ + kBM * kD + (2 + buf) * 128 * kD; };
  int* sOk = reinterpret_cast<int*>(sQ + kBM * kD + 4 * 128 * kD);  // [2][kBN]

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int T = a.T, tiles = (T + kBM - 1) / kBM;
  const GridTile gt = head_major_tile(tiles);  // head-major: K / V shared in L2
  const int bh = gt.bh, b = bh / a.H, h = bh % a.H;
  const int q0 = (tiles - 1 - gt.tile) * kBM;  // the causally heaviest query tiles first
  const HeadRows hr(a, b, h, kD);
  const int64_t stride = hr.stride;
  const bf16 *gQ = hr.q, *gK = hr.k, *gV = hr.v;
  const int32_t* mask = hr.mask;
  const int n_kt = a.causal ? (min(q0 + kBM, T) - 1) / kBN + 1 : (T + kBN - 1) / kBN;
  const int row[2] = {q0 + wg * 64 + warp * 16 + g, q0 + wg * 64 + warp * 16 + g + 8};

  auto load_kv = [&](int kt, int buf) {
    const int k0 = kt * kBN;
    load_tile_sw<kBN, kWThreads>(sK(buf), gK, stride, k0, T, tid);
    load_tile_sw<kBN, kWThreads>(sV(buf), gV, stride, k0, T, tid);
    if (tid < kBN) {
      const int k = k0 + tid;
      sOk[buf * kBN + tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
    }
  };
  load_tile_sw<kBM, kWThreads>(sQ, gQ, stride, q0, T, tid);
  load_kv(0, 0);
  cp_async_commit();

  float o[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = 0.f;
  float m[2] = {-kInf, -kInf}, l[2] = {0.f, 0.f};
  const uint64_t dq = sw128_desc(sQ + wg * 64 * kD);

  for (int kt = 0; kt < n_kt; ++kt) {
    const int buf = kt & 1, k0 = kt * kBN;
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // tile kt landed; every warpgroup is done with tile kt - 1's buffers
    if (kt + 1 < n_kt) {
      load_kv(kt + 1, buf ^ 1);
      cp_async_commit();
    }
    // S = Q K^T (64 x 128 per warpgroup).
    float s[64];
    const uint64_t dk = sw128_desc(sK(buf));
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n128(s, dq + 2 * ks, dk + 2 * ks, ks);
    wgmma_commit();
    wgmma_wait_all();
    keep(s);

    // Scale into the log2 domain and mask (padding, causal, keys past T).
    const bool need_mask = mask != nullptr || k0 + kBN > T || (a.causal && k0 + kBN - 1 > q0);
    scale_mask(s, a, sOk + buf * kBN, k0, 0, row, t4, need_mask);
    // Online softmax (rows g and g + 8 of the warp; the 4 lanes of a quad share a row).
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nb = 0; nb < 16; ++nb) {
      mx[0] = fmaxf(mx[0], fmaxf(s[4 * nb], s[4 * nb + 1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[4 * nb + 2], s[4 * nb + 3]));
    }
    float mu[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
      mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
      mu[j] = mx[j] == -kInf ? 0.f : mx[j];
      const float corr = exp2f(m[j] - mu[j]);
      l[j] *= corr;
      m[j] = mx[j];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        o[4 * i + 2 * j] *= corr;
        o[4 * i + 2 * j + 1] *= corr;
      }
    }
    uint32_t p[8][4];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      float e[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        e[i] = exp2f(s[8 * kk + i] - mu[(i >> 1) & 1]);
        l[(i >> 1) & 1] += e[i];
      }
      a_frag(p[kk], e, e + 4);
    }
    // O += P V (64 x 64 per warpgroup); V rows kk * 16.. start 2048 bytes apart.
    const uint64_t dv = sw128_desc(sV(buf));
    keep(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wgmma_rs_n64_t(o, p[kk], dv + kk * (2048 >> 4));
    wgmma_commit();
    wgmma_wait_all();
    keep(o);
    keep(p);
  }

  // Normalise, store out and the saved copy (bf16x2 per lane), and L.
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    l[j] += __shfl_xor_sync(0xffffffffu, l[j], 1);
    l[j] += __shfl_xor_sync(0xffffffffu, l[j], 2);
    float lse, f;
    if (PROB == kSoftmax) {
      lse = l[j] > 0.f ? m[j] + log2f(l[j]) : kInf;
      f = l[j] > 0.f ? 1.f / l[j] : 0.f;
    } else {  // softmax1: Z = 1 + sum exp, computed against M = max(m, 0) to avoid overflow
      const float M = fmaxf(m[j], 0.f);
      lse = M + log2f(l[j] * exp2f(m[j] - M) + exp2f(-M));
      f = exp2f((m[j] == -kInf ? 0.f : m[j]) - lse);
    }
    store_row<false>(a, b, h, row[j], t4, j, o, f, o, lse);
  }
#else
  __trap();  // not built for sm_90a: wgmma_fwd_enabled() keeps this kernel from launching
#endif
}

// Clipped softmax in two passes over the keys, like the mma.sync kernel: pass 0 takes each row's
// max and normaliser from S = Q K^T alone (K tiles only); pass 1 recomputes S, the exact
// p = exp2(x - L), P' = clip(span p + gamma, 0, 1) and P2 = p where unclipped (the test of
// Args::clip_hi), and accumulates O = P' V and O2 = P2 V (attention_common.cuh). Pass 1 takes
// each 128-key tile in halves of 64 (S [64 x 64] per warpgroup), so that S, O and O2 fit the
// 128 registers of two CTAs per SM; a half whose P' is zero on all of the warpgroup's entries
// (raw < 0: most keys of long rows) skips its PV products (a warpgroup vote). With gamma < 0,
// pass 0 also keeps each row's maximum score per half tile (sMax, for up to kClipMaxTiles
// tiles), and pass 1 skips a half whose rows all stay below the clip threshold by a margin,
// max x - L < log2(-gamma / span) - kClipSkipMargin, before its S product: every P' and P2 of
// such a half is 0 (raw = span p + gamma < 0), so the result is the same bit for bit, without
// the half's product and exponentials. How many halves that skips depends on the data: the
// diffuse attention of an untrained model skips nearly every half off the diagonal, a trained
// one those its few large probabilities leave below the threshold (H100, GPT-2 shape: 0.195 ->
// 0.190 ms with unit-variance scores; `gpt2_124m` clipped 554k -> 568k tokens/s on `oft bench`'s
// untrained model). The two passes
// are one stream of tile steps (step j: tile j % n_kt of pass j / n_kt), double-buffered across
// the pass boundary.
// (Its set-up repeats fwd_wgmma_kernel's on purpose: moving both into a shared struct made the
// softmax kernel spill 36 instead of 16 bytes.)
constexpr int kClipMaxTiles = 16;          // key tiles whose half maxima sMax holds (T <= 2048)
constexpr float kClipSkipMargin = 1.0e-3f;  // log2 units: p at least 0.07% under the threshold
constexpr int kClipSmemBytes = kFwdSmemBytes + kBM * 2 * kClipMaxTiles * 4;
__global__ void __launch_bounds__(kWThreads, 2) fwd_wgmma_clipped_kernel(const Args a) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(base);
  auto sK = [&](int buf) { return sQ + kBM * kD + buf * 128 * kD; };
  auto sV = [&](int buf) { return sQ + kBM * kD + (2 + buf) * 128 * kD; };
  int* sOk = reinterpret_cast<int*>(sQ + kBM * kD + 4 * 128 * kD);  // [2][kBN]
  float* sMax = reinterpret_cast<float*>(sOk + 2 * kBN);  // [kBM rows][2 * kClipMaxTiles]

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int T = a.T, tiles = (T + kBM - 1) / kBM;
  const GridTile gt = head_major_tile(tiles);
  const int bh = gt.bh, b = bh / a.H, h = bh % a.H;
  const int q0 = (tiles - 1 - gt.tile) * kBM;
  const HeadRows hr(a, b, h, kD);
  const int64_t stride = hr.stride;
  const int32_t* mask = hr.mask;
  const int n_kt = a.causal ? (min(q0 + kBM, T) - 1) / kBN + 1 : (T + kBN - 1) / kBN;
  const int n_steps = 2 * n_kt;
  const int row[2] = {q0 + wg * 64 + warp * 16 + g, q0 + wg * 64 + warp * 16 + g + 8};
  const int wg_last_row = q0 + wg * 64 + 63;
  // Pass 1 skips halves below the clip threshold (see above) when gamma < 0 and sMax has room.
  const bool skip_halves = a.gamma < 0.f && n_kt <= kClipMaxTiles;
  const float skip_below = skip_halves ? log2f(-a.gamma / a.span) - kClipSkipMargin : 0.f;
  float* const max_row[2] = {sMax + (row[0] - q0) * 2 * kClipMaxTiles,
                             sMax + (row[1] - q0) * 2 * kClipMaxTiles};

  auto load_step = [&](int j, int buf) {
    const int k0 = (j % n_kt) * kBN;
    load_tile_sw<kBN, kWThreads>(sK(buf), hr.k, stride, k0, T, tid);
    if (j >= n_kt) load_tile_sw<kBN, kWThreads>(sV(buf), hr.v, stride, k0, T, tid);
    if (tid < kBN) {
      const int k = k0 + tid;
      sOk[buf * kBN + tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
    }
  };
  // Waits for step j's tile (and the CTA to be done with step j - 1), then prefetches step j + 1.
  auto begin_step = [&](int j) {
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();
    if (j + 1 < n_steps) {
      load_step(j + 1, (j + 1) & 1);
      cp_async_commit();
    }
  };
  load_tile_sw<kBM, kWThreads>(sQ, hr.q, stride, q0, T, tid);
  load_step(0, 0);
  cp_async_commit();
  const uint64_t dq = sw128_desc(sQ + wg * 64 * kD);

  // Pass 0: the row statistics.
  float m[2] = {-kInf, -kInf}, l[2] = {0.f, 0.f};
  int j = 0;
  for (; j < n_kt; ++j) {
    const int buf = j & 1, k0 = j * kBN;
    begin_step(j);
    float s[64];
    const uint64_t dk = sw128_desc(sK(buf));
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) wgmma_ss_n128(s, dq + 2 * ks, dk + 2 * ks, ks);
    wgmma_commit();
    wgmma_wait_all();
    keep(s);
    const bool need_mask = mask != nullptr || k0 + kBN > T || (a.causal && k0 + kBN - 1 > q0);
    scale_mask(s, a, sOk + buf * kBN, k0, 0, row, t4, need_mask);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float hm[2] = {-kInf, -kInf};  // the row's maxima over the tile's two halves of 64 keys
#pragma unroll
      for (int nb = 0; nb < 16; ++nb)
        hm[nb >> 3] = fmaxf(hm[nb >> 3], fmaxf(s[4 * nb + 2 * r], s[4 * nb + 2 * r + 1]));
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        hm[hf] = fmaxf(hm[hf], __shfl_xor_sync(0xffffffffu, hm[hf], 1));
        hm[hf] = fmaxf(hm[hf], __shfl_xor_sync(0xffffffffu, hm[hf], 2));
      }
      if (skip_halves && t4 == 0) {
        max_row[r][2 * j] = hm[0];
        max_row[r][2 * j + 1] = hm[1];
      }
      const float mx = fmaxf(m[r], fmaxf(hm[0], hm[1]));
      const float mu = mx == -kInf ? 0.f : mx;
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < 16; ++nb)
        sum += exp2f(s[4 * nb + 2 * r] - mu) + exp2f(s[4 * nb + 2 * r + 1] - mu);
      l[r] = l[r] * exp2f(m[r] - mu) + sum;
      m[r] = mx;
    }
  }
  float lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    lse[r] = l[r] > 0.f ? m[r] + log2f(l[r]) : kInf;
  }

  // Pass 1: O = P' V and O2 = P2 V.
  float o[32], o2[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) o[i] = o2[i] = 0.f;
  for (; j < n_steps; ++j) {
    const int buf = j & 1, k0 = (j - n_kt) * kBN;
    begin_step(j);
    const uint64_t dk = sw128_desc(sK(buf)), dv = sw128_desc(sV(buf));
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int kh = k0 + hf * 64;
      if (a.causal && kh > wg_last_row) continue;  // no key of this half is visible to the warpgroup
      if (skip_halves) {  // every row's P' and P2 are 0 on this half: skip it whole
        const int ih = 2 * (j - n_kt) + hf;
        const bool live = max_row[0][ih] - lse[0] >= skip_below ||
                          max_row[1][ih] - lse[1] >= skip_below;
        if (!warpgroup_any(wg, live)) continue;
      }
      float s[32];
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
        wgmma_ss_n64<0, 0>(s, dq + 2 * ks, dk + hf * (8192 >> 4) + 2 * ks, ks);
      wgmma_commit();
      wgmma_wait_all();
      keep(s);
      const bool need_mask = mask != nullptr || kh + 64 > T || (a.causal && kh + 63 > q0);
      scale_mask(s, a, sOk + buf * kBN, k0, hf * 64, row, t4, need_mask);
      uint32_t pa[4][4], pb[4][4];
      bool live = false;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        float e[8], e2[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float p = exp2f(s[8 * kk + i] - lse[(i >> 1) & 1]);
          const float raw = a.span * p + a.gamma;
          e[i] = fminf(fmaxf(raw, 0.f), 1.f);
          e2[i] = (raw >= 0.f && raw <= a.clip_hi) ? p : 0.f;  // see Args::clip_hi
          live |= raw >= 0.f;
        }
        a_frag(pa[kk], e, e + 4);
        a_frag(pb[kk], e2, e2 + 4);
      }
      if (!warpgroup_any(wg, live)) continue;
      keep(o);
      keep(o2);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(o, pa[kk], dv + (hf * 4 + kk) * (2048 >> 4));
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_n64_t(o2, pb[kk], dv + (hf * 4 + kk) * (2048 >> 4));
      wgmma_commit();
      wgmma_wait_all();
      keep(o);
      keep(o2);
      keep(pa);
      keep(pb);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) store_row<true>(a, b, h, row[r], t4, r, o, 1.f, o2, lse[r]);
#else
  __trap();  // not built for sm_90a: wgmma_fwd_enabled() keeps this kernel from launching
#endif
}

template <int PROB>
void launch_fwd(const Args& a) {
  static bool configured = false;
  launch_kernel(fwd_wgmma_kernel<PROB>, configured, kFwdSmemBytes, head_major_grid(a, kBM),
                kWThreads, a);
}

}  // namespace

namespace {
// Writes 1 where the code running is the sm_90a build with the warpgroup-MMA kernels.
__global__ void wgmma_probe_kernel(int* built) {
#ifdef OFT_HAVE_WGMMA
  *built = 1;
#else
  *built = 0;
#endif
}

// OFT_ATTN_WGMMA: which directions run the Hopper kernels (bit 0 forward, bit 1 backward, bit 2
// "by the size rules below"), on sm_90 with the sm_90a build only.
int wgmma_mode() {
  static const int mode = [] {
    const int m = env_choice(
        "OFT_ATTN_WGMMA", {{"auto", 7}, {"0", 0}, {"fwd", 1}, {"bwd", 2}, {"all", 3}}, 7,
        "auto (the Hopper kernels where they are the faster, the default), all (wherever they "
        "apply), fwd (the forward only), bwd (the backward only) or 0 (the mma.sync kernels)");
    if (m == 0) return 0;
    // The code this GPU runs must be an sm_90a build: a plain sm_90 build (e.g.
    // CMAKE_CUDA_ARCHITECTURES=90 or native), or PTX of another architecture compiled at load
    // time, reports the same binary version but has only the trapping stubs.
    return hopper::sm90a_ready() ? m : 0;
  }();
  return mode;
}
}  // namespace

bool hopper::sm90a_ready() {
  static const bool ready = [] {
    int dev = 0, major = 0;
    OFT_CUDA_CHECK(cudaGetDevice(&dev));
    OFT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major != 9) return false;
    int* d = static_cast<int*>(scratch(sizeof(int)));
    int built = 0;
    wgmma_probe_kernel<<<1, 1, 0, stream()>>>(d);
    OFT_CUDA_LAUNCH_CHECK();
    OFT_CUDA_CHECK(cudaMemcpyAsync(&built, d, sizeof(int), cudaMemcpyDeviceToHost, stream()));
    OFT_CUDA_CHECK(cudaStreamSynchronize(stream()));
    return built == 1;
  }();
  return ready;
}

// Size rules (OFT_ATTN_WGMMA=auto), measured on an H100:
// - forward: at least two full waves of its 128-query CTAs (two per SM). BERT-base's 128 tokens
//   (B 32, H 12) make 384 CTAs, under two waves, where the mma.sync kernel (three 128-query
//   CTAs per SM: one wave) trained 1% faster;
// - backward: T >= 256. With 128 keys the TMA kernel's per-CTA setup is spread over two query
//   tiles only (BERT-base: 0.6% slower than the mma.sync backward).
bool wgmma_fwd_enabled(const Args& a) {
  const int mode = wgmma_mode();
  if (!(mode & 1) || a.D != kD) return false;
  const int64_t ctas = int64_t(a.B) * a.H * ((a.T + kBM - 1) / kBM);
  return !(mode & 4) || ctas >= 4 * int64_t(sm_count());
}

bool wgmma_bwd_enabled(const Args& a) {
  // T % 4 == 0 and aligned bases: the TMA copies of L / D_i rows and the dQ reduce-adds need
  // 16-byte aligned addresses.
  const int mode = wgmma_mode();
  if (!(mode & 2) || a.D != kD || a.T % 4 != 0) return false;
  if (!aligned16(a.L) || !aligned16(a.Dv) || !aligned16(a.dq_acc)) return false;
  return !(mode & 4) || a.T >= 256;
}

void launch_fwd_wgmma(const Args& a) {
  if (a.prob == kClipped) {
    static bool configured = false;
    return launch_kernel(fwd_wgmma_clipped_kernel, configured, kClipSmemBytes,
                         head_major_grid(a, kBM), kWThreads, a);
  }
  if (a.prob == kSoftmax) return launch_fwd<kSoftmax>(a);
  launch_fwd<kSoftmax1>(a);
}

}  // namespace oft::cuda::attn
