// Shared pieces of the bf16 tensor-core FlashAttention-2 kernels (forward in attention_mma.cu,
// backward in attention_mma_bwd.cu) for head widths D in {16, 32, 64, 128}. Nothing of size
// T x T touches global memory.
//
// Shapes: one CTA of 4 warps (8 in one backward variant); every warp owns 16 rows (one "row
// block") of the tile's M dimension per product, or two row blocks in the forward for D <= 64.
// Keys come in tiles of 64. Products use mma.sync.m16n8k16 (bf16 in, f32 accumulate) with
// operands fetched by ldmatrix from padded shared memory (row stride D + 8 elements, so the
// eight 16-byte rows of one 8x8 ldmatrix block fall into distinct bank groups). Global -> shared
// copies are 16-byte cp.async with zero fill past T.
//
// Fragment conventions of m16n8k16 (lane = 4 * g + t, g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                           reg3 = A[g+8][2t+8..]
//   B (16 x 8, "col"):      reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g]
//   C (16 x 8, f32):        c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// so the C fragments of two neighbouring 8-column blocks are exactly the A fragment of the
// next product (P of QK^T feeds PV without shared memory).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_ptx.cuh"

namespace oft::cuda::attn::fa2 {

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
// The launch shape in effect (OFT_ATTN_TUNE, read once). Defined in attention_mma.cu.
const Tune& tune();

}  // namespace oft::cuda::attn::fa2
