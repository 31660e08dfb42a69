// Hopper (sm_90a) attention for head width 64 in bf16, softmax and softmax1: the
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
// two-warpgroup CTAs fit an SM (82 KiB of shared memory each). Backward: see bwd_wgmma_kernel.
//
// Tiles are [rows][64] bf16 with the 128-byte swizzle (16-byte chunk c of row r at r * 128 +
// ((c ^ (r % 8)) * 16) bytes, tiles 1024-byte aligned), written by 16-byte cp.async (zero fill
// past T) and described to wgmma by: start address, 128-byte swizzle, 1024 bytes between 8-row
// groups. A K-major operand advances 32 bytes per 16-wide k step, an MN-major one (stored
// [k][m or n]) 2048 bytes.
//
// Inputs and outputs are the mma.sync kernels' (Args): out, the saved copy of O and the
// log2-domain LSE L forward; dK, dV into dqkv and dQ into the f32 accumulator backward. Used for
// D = 64, bf16, non-clipped probabilities on sm_90 (OFT_ATTN_WGMMA: all, the default; fwd;
// bwd; 0 for neither); everything else runs attention_mma.cu. At the GPT-2 shape (B 16, T 1024,
// H 12, causal) on an H100 the forward takes 0.115-0.121 ms (213-224 TFLOP/s) against 0.154 ms
// for the mma.sync kernel; the backward op 0.468-0.471 ms against 0.477 ms (the kernel alone
// 384 us under ncu against 418 us), and `gpt2_124m` trains 2.3% faster with it.
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_ptx.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OFT_HAVE_WGMMA 1
#endif

namespace oft::cuda::attn {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kD = 64;
constexpr int kBN = 128;  // keys per tile
constexpr int kWThreads = 256;
constexpr int kTileBytes = 128 * kD * 2;  // one [128][64] bf16 tile: 16 KiB
constexpr int kBM = 128;  // queries per forward CTA: two warpgroups of 64
// Forward shared memory: Q [128][64], K[2], V[2], then the key flags [2][kBN]; 1 KiB of slack to
// align the base to 1024 bytes.
constexpr int kFwdSmemBytes = 5 * kTileBytes + 2 * kBN * 4 + 1024;

#ifdef OFT_HAVE_WGMMA
// Makes this thread's completed shared-memory writes visible to the async proxy (wgmma reads).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Waits until at most N committed groups are still in flight (the older ones are complete).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps registers that an in-flight wgmma reads or writes from being moved or reused across
// this point (the compiler does not know the asynchronous accesses).
template <int N>
__device__ __forceinline__ void keep(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// Matrix descriptor of a 128-byte-swizzled bf16 tile at p (1024-byte aligned rows groups):
// start address >> 4 (bits 0-13), leading and stride byte offsets >> 4 (bits 16-29, 32-45), the
// 128-byte swizzle mode (bits 62-63 = 1). The stride offset is the distance between groups of 8
// rows of 128 bytes (1024); the leading offset is not used by these layouts (the K extent of
// one instruction, or the 64 columns of V, lie within one 128-byte row) and is set to the same.
__device__ __forceinline__ uint64_t sw128_desc(const void* p) {
  const uint64_t a = (smem_u32(p) & 0x3FFFF) >> 4;
  return a | (uint64_t(1024 >> 4) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// d[64] (+)= A (64 x 16, shared, K-major) * B (16 x 128, shared, K-major: stored [n][k]);
// scale_d 0 overwrites d.
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db,
                                              int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

// d[32] += A (64 x 16 from registers: each warp's m16n8k16 A fragment of its 16 rows) *
// B (16 x 64, shared, MN-major: stored [k][n], n contiguous).
__device__ __forceinline__ void wgmma_rs_n64_t(float (&d)[32], const uint32_t (&a)[4],
                                                uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// d[32] (+)= A (64 x 16, shared) * B (16 x 64, shared); TA / TB: 0 = K-major (stored [m][k] /
// [n][k]), 1 = MN-major (stored [k][m] / [k][n]); scale_d 0 overwrites d.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db,
                                             int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));
}

// Rows r0.. (ROWS of them) of a [rows, stride] bf16 matrix, 64 columns from g, into a swizzled
// [ROWS][64] tile; by THREADS threads.
template <int ROWS = 128, int THREADS = kWThreads>
__device__ __forceinline__ void load_tile_sw(bf16* s, const bf16* g, int64_t stride, int r0, int T,
                                             int tid) {
#pragma unroll
  for (int i = 0; i < ROWS * 8 / THREADS; ++i) {
    const int idx = tid + i * THREADS, row = idx >> 3, ch = idx & 7, gr = r0 + row;
    const bool ok = gr < T;
    cp_async16(s + row * kD + ((ch ^ (row & 7)) << 3), g + int64_t(ok ? gr : 0) * stride + ch * 8,
               ok);
  }
}
// Barrier of one warpgroup (ids 1 and 2; 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_sync(int wg) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(wg + 1) : "memory");
}
#endif  // OFT_HAVE_WGMMA

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
  const int T = a.T, C = a.C, tiles = (T + kBM - 1) / kBM;
  const GridTile gt = grid_tile(a, tiles);
  const int bh = gt.bh, b = bh / a.H, h = bh % a.H;
  const int q0 = (tiles - 1 - gt.tile) * kBM;  // the causally heaviest query tiles first
  const int64_t stride = 3 * int64_t(C);
  const bf16* gQ = static_cast<const bf16*>(a.qkv) + int64_t(b) * T * stride + h * kD;
  const bf16* gK = gQ + C;
  const bf16* gV = gQ + 2 * C;
  const int32_t* mask = a.mask ? a.mask + int64_t(b) * T : nullptr;
  const int n_kt = a.causal ? (min(q0 + kBM, T) - 1) / kBN + 1 : (T + kBN - 1) / kBN;
  const int row[2] = {q0 + wg * 64 + warp * 16 + g, q0 + wg * 64 + warp * 16 + g + 8};

  auto load_kv = [&](int kt, int buf) {
    const int k0 = kt * kBN;
    load_tile_sw<kBN>(sK(buf), gK, stride, k0, T, tid);
    load_tile_sw<kBN>(sV(buf), gV, stride, k0, T, tid);
    if (tid < kBN) {
      const int k = k0 + tid;
      sOk[buf * kBN + tid] = (k < T && (mask == nullptr || mask[k] != 0)) ? 1 : 0;
    }
  };
  load_tile_sw<kBM>(sQ, gQ, stride, q0, T, tid);
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

    // Scale into the log2 domain and mask (padding, causal, keys past T). s[4 nb + e] is key
    // k0 + 8 nb + 2 t4 + (e & 1) of row row[e >> 1].
    const int* ok = sOk + buf * kBN;
    const bool need_mask = mask != nullptr || k0 + kBN > T || (a.causal && k0 + kBN - 1 > q0);
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      float x = s[i] * a.scale_log2;
      if (need_mask) {
        const int kl = (i >> 2) * 8 + 2 * t4 + (i & 1);
        const bool vis = ok[kl] != 0 && (!a.causal || k0 + kl <= row[(i >> 1) & 1]);
        if (!vis) x = -kInf;
      }
      s[i] = x;
    }
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
  bf16* gO = static_cast<bf16*>(a.out);
  bf16* gS = static_cast<bf16*>(a.osave);
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
    if (row[j] >= T) continue;
    const int64_t off = (int64_t(b) * T + row[j]) * C + h * kD + 2 * t4;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t ov = pack(o[4 * i + 2 * j] * f, o[4 * i + 2 * j + 1] * f);
      *reinterpret_cast<uint32_t*>(gO + off + i * 8) = ov;
      *reinterpret_cast<uint32_t*>(gS + off + i * 8) = ov;
    }
    if (t4 == 0) a.L[int64_t(bh) * T + row[j]] = lse;
  }
#else
  __trap();  // not built for sm_90a: wgmma_fwd_enabled() keeps this kernel from launching
#endif
}

// ---------------------------------------------------------------- backward
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

// Launches one of this file's kernels on B * H * ceil(T / rows) CTAs (tile_grid); the first call
// of a kernel raises its dynamic shared-memory limit to smem.
void launch_kernel(void (*kernel)(Args), bool& configured, int smem, int rows, int threads,
                   const Args& a) {
  if (!configured) {
    OFT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  kernel<<<tile_grid(a, rows), threads, smem, stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

template <int PROB>
void launch_fwd(const Args& a) {
  static bool configured = false;
  launch_kernel(fwd_wgmma_kernel<PROB>, configured, kFwdSmemBytes, kBM, kWThreads, a);
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

namespace {
// OFT_ATTN_WGMMA: which directions run the Hopper kernels (bit 0 forward, bit 1 backward), on
// sm_90 with the sm_90a build only.
int wgmma_mode() {
  static const int mode = [] {
    int m = 3;
    if (const char* e = std::getenv("OFT_ATTN_WGMMA")) {
      if (std::strcmp(e, "0") == 0) m = 0;
      else if (std::strcmp(e, "fwd") == 0) m = 1;
      else if (std::strcmp(e, "bwd") == 0) m = 2;
      else if (std::strcmp(e, "all") == 0) m = 3;
      else
        fail("OFT_ATTN_WGMMA='", e, "': expected all (the Hopper forward and backward, the "
             "default), fwd (the forward only), bwd (the backward only) or 0 (the mma.sync "
             "kernels)");
    }
    if (m == 0) return 0;
    int dev = 0, major = 0;
    OFT_CUDA_CHECK(cudaGetDevice(&dev));
    OFT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major != 9) return 0;
    // The machine code this GPU runs must be the sm_90a build (a build for other architectures
    // only has the trapping stubs, e.g. PTX of compute_80 compiled for the H100 at load time).
    cudaFuncAttributes fa{};
    OFT_CUDA_CHECK(cudaFuncGetAttributes(&fa, fwd_wgmma_kernel<kSoftmax>));
    return fa.binaryVersion == 90 ? m : 0;
  }();
  return mode;
}
}  // namespace

bool wgmma_fwd_enabled(const Args& a) {
  return (wgmma_mode() & 1) && a.D == kD && a.prob != kClipped;
}

bool wgmma_bwd_enabled(const Args& a) {
  return (wgmma_mode() & 2) && a.D == kD && a.prob != kClipped;
}

void launch_bwd_wgmma(const Args& a) {
  const bool two = bwd_warpgroups() == 2;
  if (a.prob == kSoftmax) return two ? launch_bwd<kSoftmax, 2>(a) : launch_bwd<kSoftmax, 1>(a);
  two ? launch_bwd<kSoftmax1, 2>(a) : launch_bwd<kSoftmax1, 1>(a);
}

void launch_fwd_wgmma(const Args& a) {
  if (a.prob == kSoftmax) return launch_fwd<kSoftmax>(a);
  launch_fwd<kSoftmax1>(a);
}

}  // namespace oft::cuda::attn
