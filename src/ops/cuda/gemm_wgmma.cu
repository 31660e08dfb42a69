// Hopper (sm_90a) matrix products with the MLP's GELU-tanh epilogues, bf16 operands and outputs,
// f32 accumulation, replacing cuBLASLt's GELU_AUX_BIAS and DGELU epilogues where they apply:
//   kGeluFwd (fc):      pre[M, N] = x[M, K] w[N, K]^T + b[N],   act = gelu(x w^T + b)
//   kDGelu (fc_out dx): dpre[M, N] = (dout[M, K] w[K, N]) * gelu'(pre[M, N])
// pre is the rounding of the f32 sum and act is computed from the unrounded sum; dpre is the f32
// product times gelu'(pre), rounded once: cuBLASLt's semantics. cuBLASLt writes an epilogue's
// second matrix after each tile's products: at the GPT-2 MLP shape (16384 x 3072 x 768) its
// GELU_AUX_BIAS product took 0.158 ms and its DGELU one 0.152 ms against 0.115 ms for the plain
// product. Here one consumer warpgroup's epilogue runs while the other one computes its next
// tile.
//
// Persistent CTAs, one per SM, of three warpgroups (384 threads):
// - warpgroup 0, the producer (one thread issues): TMA copies of the A and B tiles of each
//   64-wide k step into a ring of kStages stages: A [128 rows][64 k] (128-byte swizzled, the
//   layout sw128_desc describes); B [128 n][64 k] K-major for kGeluFwd, or two boxes of
//   [64 k][64 n] MN-major for kDGelu (w is [K, N] there). full[s] completes on the copies'
//   bytes; empty[s] when the 128 threads of the consumer that read the stage arrive.
// - warpgroups 1 and 2, the consumers: the CTA's output tiles (128 x 128, row-major order of
//   tiles, CTA i takes tiles i, i + grid, ...) alternate between them (ping-pong). Per k step:
//   eight wgmma m64n128k16 (two halves of 64 rows x four k16 slices); once a step's products
//   are done (wgmma wait 1 after the next step's issue) its stage is released.
//   Epilogue, through the consumer's output tile in shared memory ([2 boxes of 64 columns]
//   [128 rows][128 bytes], 128-byte swizzle: 16-byte chunk ^ row % 8, so the warp's eight rows
//   write distinct banks) and TMA stores: kGeluFwd adds the bias (staged in shared memory at the
//   tile's start), stores pre, then act once the TMA has read pre; kDGelu has the TMA load the
//   tile's pre into the output tile as its last products run, and each thread overwrites its
//   own elements with dpre (and, when asked, sums them per column for the bias gradient of the
//   layer that wrote pre: one partial row per warp and row tile, reduce_partials after). (Stores straight from the accumulators, 16 bytes per row per
//   instruction with the bias loaded beside them, left the kernel waiting on L1TEX 72% of the
//   time: 0.42 ms at the GPT-2 shape, against 0.147 ms now.)
// The consumers take turns (order barriers): tile i's products are issued after tile i - 1's,
// so the tensor cores work on one tile while the other consumer stores its previous one, and
// every wait on a stage's full barrier is for its next phase (without the order a consumer could
// wait with the parity of a later use and read a stage before it is refilled).
// setmaxnreg gives the producer 40 registers and the consumers 232 (128 accumulators each).
// Operands past their edges (M, N, K tails) arrive as zeros from the TMA, and the TMA stores
// skip what lies past M and N.
//
// Opt-in (OFT_GEMM_WGMMA=fwd or all; see modes()). Measured on an H100 at the GPT-2 MLP shape:
// GELU forward 0.150-0.152 ms against 0.156-0.158 ms for cuBLASLt, DGELU 0.169 ms against
// 0.152-0.153 ms; the products alone (epilogues skipped) 0.121 / 0.137 ms at 83% of the L2
// throughput, against 0.115 ms for cuBLASLt's plain product. A 128 x 128 tile reads 32 KiB per
// k step for 2 MFLOP, so the epilogue's stores compete with the operand reads in L2; the next
// step is sharing each w tile between the two CTAs of a cluster (TMA multicast: 24 KiB per
// k step). gpt2_124m trained 0.5-0.8% slower with both products on.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "core/tensor.h"
#include "ops/cuda/attention_wgmma.cuh"
#include "ops/cuda/gelu.cuh"
#include "ops/cuda/gemm_wgmma.h"
#include "ops/cuda/partials.cuh"

namespace oft::cuda::gemm {
namespace {

using namespace attn::hopper;
using attn::align_smem_1024;
using attn::pack;
using attn::smem_u32;

enum Mode : int { kGeluFwd = 0, kDGelu = 1, kBias = 2, kResidual = 3 };
// Modes whose w is [K, N] (MN-major B); the others read w [N, K]. Modes that load a tile of
// `aux` into the output tile before their epilogue (pre for kDGelu, the residual for kResidual).
constexpr bool mn_major_b(int mode) { return mode == kDGelu; }
constexpr bool loads_aux(int mode) { return mode == kDGelu || mode == kResidual; }

#ifdef OFT_HAVE_WGMMA
// Cluster helpers: this CTA's rank in its cluster; a TMA box into the same shared-memory offset
// of every CTA in `mask` (each one's mbarrier at bar's offset counts the bytes); an arrival on
// the mbarrier at bar's offset in CTA `rank` of the cluster; all threads of the cluster meet
// (divergent threads allowed).
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void tma_load_3d_multicast(void* dst, const CUtensorMap* map,
                                                      uint64_t* bar, int c0, int c1, int c2,
                                                      uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%3, %4, %5}], [%2], %6;\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2),
      "h"(mask)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_u32(bar)),
               "r"(rank));
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote)
               : "memory");
}
// d[128] (+)= A (64 x 16, shared, K-major) * B (16 x 256, shared; TB 0: K-major, stored [n][k];
// TB 1: MN-major, stored [k][n], four 64-wide n chunks the descriptor's leading offset apart);
// scale_d 0 overwrites d.
template <int TB>
__device__ __forceinline__ void wgmma_ss_n256(float (&d)[128], uint64_t da, uint64_t db,
                                              int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, 0, %131;\n}\n"
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
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),
        "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),
        "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]),
        "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
        "+f"(d[126]), "+f"(d[127])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TB));
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
#endif

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 5;
constexpr int kTileBytes = kBM * kBK * 2;  // one [128][64] bf16 tile: 16 KiB (A and B alike)
constexpr int kStageBytes = 2 * kTileBytes;
constexpr int kOutBytes = kBM * kBN * 2;   // a consumer's output tile: two [128][64] boxes
// Stages, two output tiles, two bias rows (float2 [64]), the barriers (full, empty, order,
// pre), alignment slack.
constexpr int kSmemBytes =
    kStages * kStageBytes + 2 * kOutBytes + 2 * 64 * 8 + (2 * kStages + 4) * 8 + 1024;
constexpr int kThreads = 384;

struct Maps {
  CUtensorMap a;    // bf16 [M][K], box [128][64]
  CUtensorMap b;    // kGeluFwd: bf16 [N][K], box [64][64]; kDGelu: bf16 [K][N], box [64][64]
  CUtensorMap out;  // kGeluFwd: pre; kDGelu: dpre. bf16 [M][N], box [128][64]
  CUtensorMap aux;  // kGeluFwd: act (stored); kDGelu: pre (loaded). bf16 [M][N], box [128][64]
};

template <int MODE, int CL>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_kernel(const __grid_constant__ Maps maps, const bf16* __restrict__ bias,
                     float* __restrict__ bias_part, int M, int N, int K) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  unsigned char* sOut = base + kStages * kStageBytes;  // [2 consumers][2 boxes][128][64] bf16
  float2* sBias = reinterpret_cast<float2*>(sOut + 2 * kOutBytes);  // [2 consumers][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(sBias + 2 * 64);
  uint64_t* empty = full + kStages;
  uint64_t* order = empty + kStages;  // order[c]: the other consumer issued a tile's products
  uint64_t* pre_full = order + 2;     // kDGelu: consumer c's pre tile has arrived
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;
  // Tiles in groups of CL row tiles (the CTAs of a cluster: rank r takes row tile CL * g + r of
  // group g, all with the same columns, whose w tile they share).
  const int tiles_n = (N + kBN - 1) / kBN, tiles_m = (M + kBM - 1) / kBM;
  const int groups = (tiles_m + CL - 1) / CL * tiles_n;
  const int rank = CL > 1 ? int(cluster_rank()) : 0;
  const int cl_id = int(blockIdx.x) / CL, cl_count = int(gridDim.x) / CL;
  const int KT = (K + kBK - 1) / kBK;
  auto tile_of = [&](int g, int& m0, int& n0) {
    m0 = (g / tiles_n * CL + rank) * kBM;
    n0 = g % tiles_n * kBN;
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 4 * CL);  // one arrival per consumer warp of each CTA reading it
    }
    for (int c = 0; c < 2; ++c) {
      mbar_init(&order[c], 1);
      mbar_init(&pre_full[c], 1);
    }
    mbar_init_fence();
  }
  if (CL > 1)
    cluster_sync();  // the peers' barriers are initialised before any copy or arrival reaches them
  else
    __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (tid == 0) {
      int it = 0;
      for (int g = cl_id; g < groups; g += cl_count) {
        int m0, n0;
        tile_of(g, m0, n0);
        for (int kk = 0; kk < KT; ++kk, ++it) {
          const int s = it % kStages, u = it / kStages;
          if (u > 0) mbar_wait(&empty[s], (u - 1) & 1);
          unsigned char* st = base + s * kStageBytes;
          mbar_expect_tx(&full[s], kStageBytes);
          tma_load_3d(st, &maps.a, &full[s], kk * kBK, m0, 0);
          // w's tile in two halves of 64 n: with a cluster, rank r copies half r into every
          // CTA of the cluster.
          for (int h = CL > 1 ? rank : 0; h < (CL > 1 ? rank + 1 : 2); ++h) {
            unsigned char* dst = st + kTileBytes + h * (kTileBytes / 2);
            const int c0 = mn_major_b(MODE) ? n0 + 64 * h : kk * kBK;
            const int c1 = mn_major_b(MODE) ? kk * kBK : n0 + 64 * h;
            if (CL > 1)
              tma_load_3d_multicast(dst, &maps.b, &full[s], c0, c1, 0, uint16_t((1u << CL) - 1));
            else
              tma_load_3d(dst, &maps.b, &full[s], c0, c1, 0);
          }
        }
      }
    }
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int c = wg - 1;
  unsigned char* so = sOut + c * kOutBytes;
  float2* sb = sBias + c * 64;
  float acc[2][64];
  // A stage's release: one arrival per warp on every CTA's barrier that reads it.
  auto release = [&](int s) {
    if (lane == 0) mbar_arrive(&empty[s]);
    if (CL > 1 && lane == 1) mbar_arrive_cluster(&empty[s], uint32_t(rank ^ 1));
  };
  for (int i = c, j = 0;; i += 2, ++j) {
    const int gi = cl_id + i * cl_count;
    if (gi >= groups) break;
    int m0, n0;
    tile_of(gi, m0, n0);
    if (c == 1)
      mbar_wait(&order[1], j & 1);
    else if (j > 0)
      mbar_wait(&order[0], (j - 1) & 1);
    if (MODE != kDGelu) {
      // This tile's bias pairs into shared memory (read in the epilogue, after its barriers).
      if (tid < 64) {
        const int col = n0 + 2 * tid;
        float2 bb = make_float2(0.f, 0.f);
        if (bias && col < N) {
          const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(bias + col);
          bb = make_float2(__low2float(v), __high2float(v));
        }
        sb[tid] = bb;
      }
    }
    int it = i * KT;
    for (int kk = 0; kk < KT; ++kk, ++it) {
      const int s = it % kStages;
      mbar_wait(&full[s], (it / kStages) & 1);
      const unsigned char* st = base + s * kStageBytes;
      const uint64_t da = sw128_desc(st);
      // kDGelu's B is MN-major: its two 64-wide n boxes lie kTileBytes / 2 apart.
      constexpr bool kMN = mn_major_b(MODE);
      const uint64_t db = sw128_desc(st + kTileBytes, kMN ? kTileBytes / 2 : 1024);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        const int scale_d = (kk > 0 || ks > 0) ? 1 : 0;
        // k16 slice ks: 32 bytes along a K-major row, 16 rows (2048 bytes) of an MN-major box.
        const uint64_t dbk = db + (kMN ? 128 * ks : 2 * ks);
        wgmma_ss_n128<kMN ? 1 : 0>(acc[0], da + 2 * ks, dbk, scale_d);
        wgmma_ss_n128<kMN ? 1 : 0>(acc[1], da + (64 * 128 >> 4) + 2 * ks, dbk, scale_d);
      }
      wgmma_commit();
      if (kk > 0) {
        wgmma_wait<1>();
        release((it - 1) % kStages);
      }
    }
    if (tid == 0) {
      mbar_arrive(&order[c ^ 1]);  // the other consumer's next tile may start
      if (loads_aux(MODE)) {
        // This tile's pre (or residual) into the output tile (the previous tile's store, issued a tile ago,
        // has read it by now), while the last products finish. At the tile's start the wait
        // for that store held up the whole warpgroup's first products.
        bulk_wait_read();
        mbar_expect_tx(&pre_full[c], kOutBytes);
        tma_load_3d(so, &maps.aux, &pre_full[c], n0, m0, 0);
        tma_load_3d(so + kOutBytes / 2, &maps.aux, &pre_full[c], n0 + 64, m0, 0);
      }
    }
    wgmma_wait<0>();
    keep(acc[0]);
    keep(acc[1]);
    release((it - 1) % kStages);

    // Epilogue. Element (row, 8 nb + 2 t4 + e) of the tile: acc[h][4 nb + 2 r + e] with
    // row = 64 h + 16 warp + g + 8 r; its bytes in the output tile at out_at(nb, row).
    auto out_at = [&](int nb, int row) {
      return reinterpret_cast<uint32_t*>(so + (nb / 8) * (kOutBytes / 2) + row * 128 +
                                         (((nb % 8) ^ (row & 7)) << 4) + 4 * t4);
    };
    auto store = [&](const CUtensorMap* map) {  // after every thread wrote the tile
      fence_proxy_async();
      warpgroup_sync(wg);
      if (tid == 0) {
        tma_store_3d(map, so, n0, m0, 0);
        tma_store_3d(map, so + kOutBytes / 2, n0 + 64, m0, 0);
        bulk_commit();
      }
    };
    if (MODE == kGeluFwd || MODE == kBias) {
      if (tid == 0) bulk_wait_read();  // the previous tile's last store has read the tile
      warpgroup_sync(wg);              // ... and sb is written
      auto stage = [&](auto gelu) {  // the tile of pre (gelu false) or act (true)
#pragma unroll
        for (int nb = 0; nb < kBN / 8; ++nb) {
          const float2 bb = sb[nb * 4 + t4];
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const int row = h * 64 + warp * 16 + g + 8 * r;
              float v0 = acc[h][4 * nb + 2 * r] + bb.x, v1 = acc[h][4 * nb + 2 * r + 1] + bb.y;
              if constexpr (decltype(gelu)::value) v0 = gelu_tanh(v0), v1 = gelu_tanh(v1);
              *out_at(nb, row) = pack(v0, v1);
            }
        }
      };
      stage(std::false_type{});
      store(&maps.out);
      if (MODE == kGeluFwd) {
        if (tid == 0) bulk_wait_read();  // the TMA has read pre before act overwrites it
        warpgroup_sync(wg);
        stage(std::true_type{});
        store(&maps.aux);
      }
    } else if (MODE == kResidual) {
      warpgroup_sync(wg);  // sb is written
      mbar_wait(&pre_full[c], j & 1);
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) {
        const float2 bb = sb[nb * 4 + t4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            uint32_t* p = out_at(nb, h * 64 + warp * 16 + g + 8 * r);
            const __nv_bfloat162 rv = *reinterpret_cast<const __nv_bfloat162*>(p);
            *p = pack(acc[h][4 * nb + 2 * r] + bb.x + __low2float(rv),
                      acc[h][4 * nb + 2 * r + 1] + bb.y + __high2float(rv));
          }
      }
      store(&maps.out);
    } else {
      mbar_wait(&pre_full[c], j & 1);
      // With bias_part: this warp's column sums of dpre over its 32 rows of the tile, one
      // partial row per (row tile, warp) that reduce_partials adds up.
      float* part = bias_part && m0 < M ? bias_part + (int64_t(m0 / kBM) * 4 + warp) * N : nullptr;
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) {
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            uint32_t* p = out_at(nb, h * 64 + warp * 16 + g + 8 * r);
            const __nv_bfloat162 pv = *reinterpret_cast<const __nv_bfloat162*>(p);
            const float d0 = acc[h][4 * nb + 2 * r] * gelu_tanh_grad(__low2float(pv));
            const float d1 = acc[h][4 * nb + 2 * r + 1] * gelu_tanh_grad(__high2float(pv));
            *p = pack(d0, d1);
            s0 += d0;
            s1 += d1;
          }
        if (part) {
#pragma unroll
          for (int o = 4; o < 32; o <<= 1) {
            s0 += __shfl_xor_sync(0xffffffffu, s0, o);
            s1 += __shfl_xor_sync(0xffffffffu, s1, o);
          }
          const int col = n0 + nb * 8 + 2 * t4;
          if (lane < 4 && col < N) *reinterpret_cast<float2*>(part + col) = make_float2(s0, s1);
        }
      }
      store(&maps.out);
    }
  }
  if (tid == 0) bulk_wait();  // the last stores are done before the CTA ends
  }
  // No CTA of a cluster leaves while a peer may still copy into its stages or arrive on its
  // barriers.
  if (CL > 1) cluster_sync();
#else
  __trap();  // not built for sm_90a: the *_supported() checks keep this kernel from launching
#endif
}

// ------------------------------------------------------------------ cooperative 128 x 256 tiles
//
// The same products with 128 x 256 tiles: both consumer warpgroups work on one tile (warpgroup c
// takes rows 64 c .. 64 c + 63, one wgmma m64n256k16 per k16 slice, 128 accumulators), so a k
// step reads 48 KiB for 4 MFLOP (a third less per FLOP than two 128 x 128 tiles, and each wgmma
// reads its A slice once for 256 columns instead of 128). Three 48 KiB stages; each warpgroup
// stages its 64 x 256 output in four [64][64] boxes (32 KiB). The epilogues do not overlap the
// products: the producer fills the next tile's stages meanwhile.
constexpr int kCoopBN = 256, kCoopStages = 3;
constexpr int kCoopATile = kBM * kBK * 2;                       // A [128][64]: 16 KiB
constexpr int kCoopStageBytes = kCoopATile + kCoopBN * kBK * 2;  // + B [256][64]: 48 KiB
constexpr int kCoopOutBytes = 64 * kCoopBN * 2;                 // a warpgroup's output: 32 KiB
constexpr int kCoopSmemBytes = kCoopStages * kCoopStageBytes + 2 * kCoopOutBytes +
                               2 * 128 * 8 + (2 * kCoopStages + 2) * 8 + 1024;

template <int MODE, int CL>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_coop_kernel(const __grid_constant__ Maps maps, const bf16* __restrict__ bias,
                     float* __restrict__ bias_part, int M, int N, int K) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  unsigned char* sOut = base + kCoopStages * kCoopStageBytes;  // [2 wg][4 boxes][64][64] bf16
  float2* sBias = reinterpret_cast<float2*>(sOut + 2 * kCoopOutBytes);  // [2 wg][128]
  uint64_t* full = reinterpret_cast<uint64_t*>(sBias + 2 * 128);
  uint64_t* empty = full + kCoopStages;
  uint64_t* aux_full = empty + kCoopStages;  // [2 wg]: the warpgroup's aux tile has arrived
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;
  const int tiles_n = (N + kCoopBN - 1) / kCoopBN, tiles_m = (M + kBM - 1) / kBM;
  const int groups = (tiles_m + CL - 1) / CL * tiles_n;
  const int rank = CL > 1 ? int(cluster_rank()) : 0;
  const int cl_id = int(blockIdx.x) / CL, cl_count = int(gridDim.x) / CL;
  const int KT = (K + kBK - 1) / kBK;
  auto tile_of = [&](int g, int& m0, int& n0) {
    m0 = (g / tiles_n * CL + rank) * kBM;
    n0 = g % tiles_n * kCoopBN;
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kCoopStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8 * CL);  // one arrival per consumer warp of each CTA reading it
    }
    for (int c = 0; c < 2; ++c) mbar_init(&aux_full[c], 1);
    mbar_init_fence();
  }
  if (CL > 1)
    cluster_sync();
  else
    __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (tid == 0) {
      int it = 0;
      for (int g = cl_id; g < groups; g += cl_count) {
        int m0, n0;
        tile_of(g, m0, n0);
        for (int kk = 0; kk < KT; ++kk, ++it) {
          const int s = it % kCoopStages, u = it / kCoopStages;
          if (u > 0) mbar_wait(&empty[s], (u - 1) & 1);
          unsigned char* st = base + s * kCoopStageBytes;
          mbar_expect_tx(&full[s], kCoopStageBytes);
          tma_load_3d(st, &maps.a, &full[s], kk * kBK, m0, 0);
          // w's tile in four boxes of 64 n; with a cluster, rank r copies boxes 2 r and 2 r + 1
          // into every CTA of the cluster.
          for (int h = CL > 1 ? 2 * rank : 0; h < (CL > 1 ? 2 * rank + 2 : 4); ++h) {
            unsigned char* dst = st + kCoopATile + h * (kTileBytes / 2);
            const int c0 = mn_major_b(MODE) ? n0 + 64 * h : kk * kBK;
            const int c1 = mn_major_b(MODE) ? kk * kBK : n0 + 64 * h;
            if (CL > 1)
              tma_load_3d_multicast(dst, &maps.b, &full[s], c0, c1, 0, uint16_t((1u << CL) - 1));
            else
              tma_load_3d(dst, &maps.b, &full[s], c0, c1, 0);
          }
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
    const int c = wg - 1;  // this warpgroup's rows of the tile: 64 c .. 64 c + 63
    unsigned char* so = sOut + c * kCoopOutBytes;
    float2* sb = sBias + c * 128;
    float acc[128];
    auto release = [&](int s) {
      if (lane == 0) mbar_arrive(&empty[s]);
      if (CL > 1 && lane == 1) mbar_arrive_cluster(&empty[s], uint32_t(rank ^ 1));
    };
    int it = 0;
    for (int gi = cl_id, j = 0; gi < groups; gi += cl_count, ++j) {
      int m0, n0;
      tile_of(gi, m0, n0);
      const int r0 = m0 + 64 * c;  // this warpgroup's first row
      warpgroup_sync(wg);  // the previous tile's epilogue has read sb
      if (MODE != kDGelu) {
        const int col = n0 + 2 * tid;
        float2 bb = make_float2(0.f, 0.f);
        if (bias && col < N) {
          const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(bias + col);
          bb = make_float2(__low2float(v), __high2float(v));
        }
        sb[tid] = bb;
      }
      for (int kk = 0; kk < KT; ++kk, ++it) {
        const int s = it % kCoopStages;
        mbar_wait(&full[s], (it / kCoopStages) & 1);
        const unsigned char* st = base + s * kCoopStageBytes;
        const uint64_t da = sw128_desc(st + c * (64 * 128));
        constexpr bool kMN = mn_major_b(MODE);
        const uint64_t db = sw128_desc(st + kCoopATile, kMN ? kTileBytes / 2 : 1024);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBK / 16; ++ks)
          wgmma_ss_n256<kMN ? 1 : 0>(acc, da + 2 * ks, db + (kMN ? 128 * ks : 2 * ks),
                                     (kk > 0 || ks > 0) ? 1 : 0);
        wgmma_commit();
        if (kk > 0) {
          wgmma_wait<1>();
          release((it - 1) % kCoopStages);
        }
        // The aux tile (pre or the residual) into the output tile, once the previous tile's
        // store has read it, while this tile's products run.
        if (loads_aux(MODE) && tid == 0 && kk == (KT > 2 ? 2 : KT - 1)) {
          bulk_wait_read();
          mbar_expect_tx(&aux_full[c], kCoopOutBytes);
          for (int b = 0; b < 4; ++b)
            tma_load_3d(so + b * (kCoopOutBytes / 4), &maps.aux, &aux_full[c], n0 + 64 * b, r0, 0);
        }
      }
      wgmma_wait<0>();
      keep(acc);
      release((it - 1) % kCoopStages);

      // Element (row, 8 nb + 2 t4 + e) of the warpgroup's 64 x 256: acc[4 nb + 2 r + e] with
      // row = 16 warp + g + 8 r; its bytes in the output boxes at out_at(nb, row).
      auto out_at = [&](int nb, int row) {
        return reinterpret_cast<uint32_t*>(so + (nb / 8) * (kCoopOutBytes / 4) + row * 128 +
                                           (((nb % 8) ^ (row & 7)) << 4) + 4 * t4);
      };
      auto store = [&](const CUtensorMap* map) {  // after every thread wrote the tile
        fence_proxy_async();
        warpgroup_sync(wg);
        if (tid == 0) {
          for (int b = 0; b < 4; ++b)
            tma_store_3d(map, so + b * (kCoopOutBytes / 4), n0 + 64 * b, r0, 0);
          bulk_commit();
        }
      };
      if (MODE == kGeluFwd || MODE == kBias) {
        if (tid == 0) bulk_wait_read();  // the previous tile's last store has read the boxes
        warpgroup_sync(wg);              // ... and sb is written
        auto stage = [&](auto gelu) {   // the tile of pre (gelu false) or act (true)
#pragma unroll
          for (int nb = 0; nb < kCoopBN / 8; ++nb) {
            const float2 bb = sb[nb * 4 + t4];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              float v0 = acc[4 * nb + 2 * r] + bb.x, v1 = acc[4 * nb + 2 * r + 1] + bb.y;
              if constexpr (decltype(gelu)::value) v0 = gelu_tanh(v0), v1 = gelu_tanh(v1);
              *out_at(nb, warp * 16 + g + 8 * r) = pack(v0, v1);
            }
          }
        };
        stage(std::false_type{});
        store(&maps.out);
        if (MODE == kGeluFwd) {
          if (tid == 0) bulk_wait_read();  // the TMA has read pre before act overwrites it
          warpgroup_sync(wg);
          stage(std::true_type{});
          store(&maps.aux);
        }
      } else if (MODE == kResidual) {
        warpgroup_sync(wg);  // sb is written
        mbar_wait(&aux_full[c], j & 1);
#pragma unroll
        for (int nb = 0; nb < kCoopBN / 8; ++nb) {
          const float2 bb = sb[nb * 4 + t4];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            uint32_t* p = out_at(nb, warp * 16 + g + 8 * r);
            const __nv_bfloat162 rv = *reinterpret_cast<const __nv_bfloat162*>(p);
            *p = pack(acc[4 * nb + 2 * r] + bb.x + __low2float(rv),
                      acc[4 * nb + 2 * r + 1] + bb.y + __high2float(rv));
          }
        }
        store(&maps.out);
      } else {
        mbar_wait(&aux_full[c], j & 1);
        // With bias_part: this warp's column sums of dpre over its 16 rows of the tile, one
        // partial row per (row tile, warpgroup, warp) that reduce_partials adds up.
        // (Rows past M sum zeros: their pre and products are zero.)
        float* part = bias_part && m0 < M
                          ? bias_part + ((int64_t(m0 / kBM) * 2 + c) * 4 + warp) * N
                          : nullptr;
#pragma unroll
        for (int nb = 0; nb < kCoopBN / 8; ++nb) {
          float s0 = 0.f, s1 = 0.f;
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            uint32_t* p = out_at(nb, warp * 16 + g + 8 * r);
            const __nv_bfloat162 pv = *reinterpret_cast<const __nv_bfloat162*>(p);
            const float d0 = acc[4 * nb + 2 * r] * gelu_tanh_grad(__low2float(pv));
            const float d1 = acc[4 * nb + 2 * r + 1] * gelu_tanh_grad(__high2float(pv));
            *p = pack(d0, d1);
            s0 += d0;
            s1 += d1;
          }
          if (part) {
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) {
              s0 += __shfl_xor_sync(0xffffffffu, s0, o);
              s1 += __shfl_xor_sync(0xffffffffu, s1, o);
            }
            const int col = n0 + nb * 8 + 2 * t4;
            if (lane < 4 && col < N) *reinterpret_cast<float2*>(part + col) = make_float2(s0, s1);
          }
        }
        store(&maps.out);
      }
    }
    if (tid == 0) bulk_wait();  // the last stores are done before the CTA ends
  }
  if (CL > 1) cluster_sync();
#else
  __trap();
#endif
}

int g_test_mode = -1;

// Which products run here (bit 0: the GELU forward, bit 1: the DGELU backward, bit 2: the bias
// and residual forwards), from OFT_GEMM_WGMMA: 0 (none, the default), fwd (bits 0 and 2) or all;
// on an sm_90a build and GPU only.
int modes() {
  if (g_test_mode >= 0) return sm90a_ready() ? g_test_mode : 0;
  static const int on = [] {
    int m = 0;
    if (const char* e = std::getenv("OFT_GEMM_WGMMA")) {
      if (std::strcmp(e, "all") == 0)
        m = kAllProducts;
      else if (std::strcmp(e, "fwd") == 0)
        m = kGeluForward | kLinearForward;
      else if (std::strcmp(e, "0") != 0)
        fail("OFT_GEMM_WGMMA='", e, "': expected 0 (every product through cuBLASLt, the "
             "default), fwd (the Hopper forward products: GELU, bias, residual) or all (also "
             "the DGELU backward product)");
    }
    return m != 0 && sm90a_ready() ? m : 0;
  }();
  return on;
}

bool shapes_ok(int mode_bit, int64_t M, int64_t N, int64_t K,
               std::initializer_list<const void*> ptrs) {
  constexpr int64_t kMax = int64_t(1) << 30;
  if (M <= 0 || N <= 0 || K <= 0 || M >= kMax || N >= kMax || K >= kMax) return false;
  if (K % 8 != 0 || N % 8 != 0) return false;  // 16-byte row strides for the TMA
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return (modes() & mode_bit) != 0;
}

// Clusters of this many CTAs share each w tile (OFT_GEMM_CLUSTER 1 or 2, default 2; tests
// choose through set_cluster_for_tests).
int g_test_cluster = 0, g_test_max_clusters = 0, g_test_tile = 0, g_last_max_clusters = 0;

// Clusters of this many CTAs share each w tile: OFT_GEMM_CLUSTER 1 or 2 (default 1).
int cluster_size() {
  if (g_test_cluster > 0) return g_test_cluster;
  static const int cl = [] {
    const char* e = std::getenv("OFT_GEMM_CLUSTER");
    if (!e || std::strcmp(e, "1") == 0) return 1;
    if (std::strcmp(e, "2") == 0) return 2;
    fail("OFT_GEMM_CLUSTER='", e, "': expected 1 (the default: each CTA copies its own w "
         "tiles) or 2 (two CTAs share each w tile through TMA multicast)");
  }();
  return cl;
}

// Output tile width: OFT_GEMM_TILE 128 (ping-pong 128 x 128 tiles) or 256 (the default:
// cooperative 128 x 256 tiles).
int tile_width() {
  if (g_test_tile > 0) return g_test_tile;
  static const int tn = [] {
    const char* e = std::getenv("OFT_GEMM_TILE");
    if (!e || std::strcmp(e, "256") == 0) return 256;
    if (std::strcmp(e, "128") == 0) return 128;
    fail("OFT_GEMM_TILE='", e, "': expected 256 (the default: 128 x 256 tiles, both consumer "
         "warpgroups on one tile) or 128 (128 x 128 tiles, the two warpgroups alternating)");
  }();
  return tn;
}

// Launches kernel on as many clusters of CL CTAs as fit on the GPU at once (at most one per
// group of CL row tiles and one column tile).
template <int CL>
void launch_persistent(void (*kernel)(Maps, const bf16*, float*, int, int, int), int smem,
                       int& max_clusters, const Maps& maps, const void* bias, float* bias_part,
                       int64_t M, int64_t N, int64_t K, int tile_n) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = CL;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = size_t(smem);
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (max_clusters == 0) {
    OFT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    cfg.gridDim = dim3(unsigned(sm_count() / CL * CL));
    int n = 0;
    OFT_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &cfg));
    max_clusters = std::max(1, n);
  }
  g_last_max_clusters = max_clusters;
  const int64_t groups = ceil_div(ceil_div(M, kBM), CL) * ceil_div(N, tile_n);
  const int cap = g_test_max_clusters > 0 ? g_test_max_clusters : max_clusters;
  cfg.gridDim = dim3(unsigned(std::min<int64_t>(groups, cap) * CL));
  cfg.stream = stream();
  OFT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, maps, static_cast<const bf16*>(bias), bias_part,
                                    int(M), int(N), int(K)));
}

template <int MODE, int CL>
void launch_cl(const Maps& maps, const void* bias, float* bias_part, int64_t M, int64_t N,
               int64_t K) {
  if (tile_width() == 256) {
    static int fit = 0;
    launch_persistent<CL>(gemm_coop_kernel<MODE, CL>, kCoopSmemBytes, fit, maps, bias, bias_part,
                          M, N, K, kCoopBN);
  } else {
    static int fit = 0;
    launch_persistent<CL>(gemm_kernel<MODE, CL>, kSmemBytes, fit, maps, bias, bias_part, M, N, K,
                          kBN);
  }
}

template <int MODE>
void launch(const Maps& maps, const void* bias, float* bias_part, int64_t M, int64_t N,
            int64_t K) {
  if (cluster_size() == 2)
    launch_cl<MODE, 2>(maps, bias, bias_part, M, N, K);
  else
    launch_cl<MODE, 1>(maps, bias, bias_part, M, N, K);
}

// A bf16 [rows][cols] row-major matrix as a tensor map with [box_rows][box_cols] boxes.
CUtensorMap matrix_map(const void* p, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  return tensor_map(p, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, int(cols), cols, int(rows), 1,
                    box_cols, box_rows);
}
// An output (or aux) matrix [M][N]: boxes of 64 columns and the rows a consumer warpgroup
// stores (128 in the ping-pong kernel, 64 in the cooperative one).
CUtensorMap out_map(const void* p, int64_t M, int64_t N) {
  return matrix_map(p, M, N, tile_width() == 256 ? 64 : kBM, 64);
}

}  // namespace

void set_mode_for_tests(int mode) { g_test_mode = mode; }

void set_cluster_for_tests(int cluster, int max_clusters, int tile) {
  g_test_cluster = cluster;
  g_test_max_clusters = max_clusters;
  g_test_tile = tile;
}

int max_clusters_seen() { return g_last_max_clusters; }

bool hopper_ready() { return sm90a_ready(); }

bool gelu_fwd_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const void* bias, const void* pre, const void* act) {
  return shapes_ok(kGeluForward, M, N, K, {x, w, bias, pre, act});
}

void gelu_fwd(void* act, void* pre, const void* x, const void* w, const void* bias, int64_t M,
              int64_t N, int64_t K) {
  Maps maps;
  maps.a = matrix_map(x, M, K, kBM, kBK);
  maps.b = matrix_map(w, N, K, 64, kBK);  // two boxes of 64 n per tile
  maps.out = out_map(pre, M, N);
  maps.aux = out_map(act, M, N);
  launch<kGeluFwd>(maps, bias, nullptr, M, N, K);
}

bool linear_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                      const void* bias, const void* res, const void* y) {
  return shapes_ok(kLinearForward, M, N, K, {x, w, bias, res, y});
}

void linear(void* y, const void* x, const void* w, const void* bias, const void* res, int64_t M,
            int64_t N, int64_t K) {
  Maps maps;
  maps.a = matrix_map(x, M, K, kBM, kBK);
  maps.b = matrix_map(w, N, K, 64, kBK);
  maps.out = out_map(y, M, N);
  if (res) {
    maps.aux = out_map(res, M, N);
    launch<kResidual>(maps, bias, nullptr, M, N, K);
  } else {
    maps.aux = maps.out;
    launch<kBias>(maps, bias, nullptr, M, N, K);
  }
}

bool dgelu_supported(int64_t M, int64_t N, int64_t K, const void* dout, const void* w,
                     const void* pre, const void* dpre) {
  return shapes_ok(kGeluBackward, M, N, K, {dout, w, pre, dpre});
}

void dgelu(void* dpre, const void* dout, const void* w, const void* pre, int64_t M, int64_t N,
           int64_t K, float* dsum) {
  Maps maps;
  maps.a = matrix_map(dout, M, K, kBM, kBK);
  maps.b = matrix_map(w, K, N, kBK, 64);
  maps.out = out_map(dpre, M, N);
  maps.aux = out_map(pre, M, N);
  Tensor part;
  // Partial rows: one per (row tile, consumer warp).
  const int64_t P = ceil_div(M, kBM) * (tile_width() == 256 ? 8 : 4);
  if (dsum)
    part = Tensor::empty({int64_t(ops::partial_floats(P, int(N)))}, DType::F32, Device::CUDA);
  launch<kDGelu>(maps, nullptr, dsum ? static_cast<float*>(part.raw()) : nullptr, M, N, K);
  if (dsum)
    ops::reduce_partials(dsum, nullptr, int(N), static_cast<float*>(part.raw()), int(P), int(N));
}

}  // namespace oft::cuda::gemm
