// bf16 tensor-core FlashAttention-2 kernels (forward and backward) for head widths
// D in {16, 32, 64, 128}. Nothing of size T x T touches global memory.
//
// Shapes: one CTA of 4 warps; every warp owns 16 rows (one "row block") of the tile's M
// dimension per product, or two row blocks in the forward for D <= 64 (a 128-query tile: each
// K / V fragment read from shared memory then feeds two products, fwd_row_blocks()). Keys come
// in tiles of 64. Products use mma.sync.m16n8k16 (bf16 in, f32 accumulate) with operands
// fetched by ldmatrix from padded shared memory (row stride D + 8 elements, so the eight 16-byte
// rows of one 8x8 ldmatrix block fall into distinct bank groups). Global -> shared copies are
// 16-byte cp.async with zero fill past T.
//
// Fragment conventions of m16n8k16 (lane = 4 * g + t, g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                           reg3 = A[g+8][2t+8..]
//   B (16 x 8, "col"):      reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// so the C fragments of two neighbouring 8-column blocks are exactly the A fragment of the
// next product (P of QK^T feeds PV without shared memory).
//
// Forward: grid (B*H, ceil(T/(64 * row blocks))), query tiles in reverse order so the long causal rows start
// first. Softmax / softmax1: one pass with the online softmax in registers. Clipped softmax:
// pass 1 computes the row max and normaliser (QK^T only), pass 2 recomputes p = exp2(x - L)
// exactly, clips it and accumulates P'V and the "unclipped part" O2 (see attention_common.cuh).
// K and V of the next tile are prefetched while the current one is multiplied.
//
// Backward (FA2): grid (B*H, ceil(T/NK) key tiles); each CTA of NW warps (NK = 16 NW keys: 64,
// or 128 for the D = 64 launch variant bwd_warps 8) keeps its keys' dK, dV in registers and loops over the query tiles (double-buffered Q, dO, L, D_i). Per query tile:
// S^T = K Q^T, P, dV += P'^T dO, dP^T = V dO^T, dS = P (dp - D_i), dK += dS^T Q, and
// dQ += dS K, accumulated into an f32 buffer with atomics (dS goes through shared memory
// once, read back transposed by ldmatrix.trans).
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_ptx.cuh"

namespace oft::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kTile = 64;      // query rows and keys per tile
constexpr int kThreads = 128;  // 4 warps x 16 rows

// ---- PTX wrappers (the cp.async ones and the fragment packing are in attention_ptx.cuh) ----
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// c += a * b (16x8x16, bf16 inputs, f32 accumulators).
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- ldmatrix addressing (lane l supplies the row address of 8x8 block l / 8) ----
// A operand 16x16 at (row0, col0) of a row-major [rows][ld] tile: blocks (r, c), (r+8, c),
// (r, c+8), (r+8, c+8).
__device__ __forceinline__ const bf16* a_addr(const bf16* s, int ld, int row0, int col0,
                                              int lane) {
  return s + (row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + col0 + (lane >> 4) * 8;
}
// Two B operands (n-blocks n0, n0+8; k = col0..col0+15) where B[k][n] = S[n][k], i.e. the
// tile is stored [n][k] (K for QK^T): r0, r1 -> n-block n0; r2, r3 -> n-block n0 + 8.
__device__ __forceinline__ const bf16* bn_addr(const bf16* s, int ld, int n0, int k0, int lane) {
  return s + (n0 + (lane >> 4) * 8 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
// Two B operands where B[k][n] = S[k][n] (tile stored [k][n], e.g. V for PV), loaded with
// .trans: k = k0..k0+15, n-blocks n0 (r0, r1) and n0 + 8 (r2, r3).
__device__ __forceinline__ const bf16* bk_addr(const bf16* s, int ld, int k0, int n0, int lane) {
  return s + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ld + n0 + (lane >> 4) * 8;
}

// ROWS rows x D columns of a [rows, stride] bf16 matrix (rows r0.. of g) into s[ROWS][D + 8],
// by THREADS threads.
template <int D, int ROWS = kTile, int THREADS = kThreads>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int64_t stride, int r0, int T,
                                          int tid) {
  constexpr int CH = D / 8, LD = D + 8;
  for (int idx = tid; idx < ROWS * CH; idx += THREADS) {
    const int row = idx / CH, ch = idx % CH, gr = r0 + row;
    const bool ok = gr < T;
    cp_async16(s + row * LD + ch * 8, g + int64_t(ok ? gr : 0) * stride + ch * 8, ok);
  }
}
// Key validity flags of keys k0..k0+NK-1 (0 past T or where the padding mask is 0).
template <int NK = kTile>
__device__ __forceinline__ void load_key_ok(int* s_ok, const int32_t* mask, int k0, int T,
                                            int tid) {
  if (tid < NK) {
    const int k = k0 + tid;
    s_ok[tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
  }
}

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
        else
          *reinterpret_cast<uint32_t*>(gS + base + i * 8) = ov;
      }
      if (t4 == 0) a.L[int64_t(bh) * T + row[r][j]] = lse[r][j];
    }
}

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

// ---------------------------------------------------------------- launchers
// Launch shape of the D = 64 kernels (GPT-2, OPT, BERT heads): forward row blocks per warp, the
// minimum resident CTAs per SM each kernel is compiled for (a register cap: 65536 / (threads x
// MINB) registers per thread), and the backward's warps per CTA (4: 64 keys, 8: 128 keys).
// OFT_ATTN_TUNE="rb,fwd_minb,bwd_minb[,bwd_warps]" overrides the defaults for measurements (the
// clipped-softmax forward always has one row block); other head widths always use
// fwd_row_blocks(), MINB 1 and 4 backward warps. Measured defaults for D = 64 in Tune.
struct Tune {
  // bwd_minb 3 (168 registers, 12 warps per SM): 0.480 ms against 0.552 ms for MINB 1 (234
  // registers, 8 warps) at the GPT-2 shape on an H100; the 8-warp variant took 0.540 ms.
  // fwd_minb 3: softmax 0.173 -> 0.154 ms, clipped softmax 0.383 -> 0.280 ms (same machine).
  int rb = 0, fwd_minb = 3, bwd_minb = 3, bwd_warps = 4;  // rb 0: fwd_row_blocks()
};
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
void fwd_by_prob(const Args& a) {
  switch (a.prob) {
    case kSoftmax: return fwd_tuned<D, kSoftmax>(a);
    case kClipped: return fwd_tuned<D, kClipped>(a);
    default: return fwd_tuned<D, kSoftmax1>(a);
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
