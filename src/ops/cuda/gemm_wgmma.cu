// Hopper (sm_90a) matrix products with the MLP's GELU-tanh epilogues, bf16 operands and outputs,
// f32 accumulation, replacing cuBLASLt's GELU_AUX_BIAS and DGELU epilogues where they apply:
//   kGeluFwd (fc):      pre[M, N] = x[M, K] w[N, K]^T + b[N],   act = gelu(x w^T + b)
//   kDGelu (fc_out dx): dpre[M, N] = (dout[M, K] w[K, N]) * gelu'(pre[M, N])
//   kDRelu (fc_out dx): dpre[M, N] = act[M, N] > 0 ? dout[M, K] w[K, N] : 0, act = relu(pre)
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
// The GELU products are opt-in (OFT_GEMM_WGMMA=fwd or all; see modes()); the ReLU backward is
// on by default: cuBLASLt has no ReLU derivative without RELU_AUX's bit mask (slower, see
// docs/performance.md), so its path is the plain product, an activation_bwd pass and a
// bias_grad pass. Measured on an H100 at the GPT-2 MLP shape:
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

#include "core/env_choice.h"
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

enum Mode : int { kGeluFwd = 0, kDGelu = 1, kDRelu = 2 };

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
  CUtensorMap b;    // kGeluFwd: bf16 [N][K], box [128][64]; kD*: bf16 [K][N], box [64][64]
  CUtensorMap out;  // kGeluFwd: pre; kD*: dpre. bf16 [M][N], box [128][64]
  CUtensorMap aux;  // kGeluFwd: act (stored); kDGelu: pre, kDRelu: act (loaded). [M][N], [128][64]
};

template <int MODE>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_gelu_kernel(const __grid_constant__ Maps maps, const bf16* __restrict__ bias,
                     float* __restrict__ bias_part, int M, int N, int K) {
#ifdef OFT_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = align_smem_1024(smem_raw);
  unsigned char* sOut = base + kStages * kStageBytes;  // [2 consumers][2 boxes][128][64] bf16
  float2* sBias = reinterpret_cast<float2*>(sOut + 2 * kOutBytes);  // [2 consumers][64]
  uint64_t* full = reinterpret_cast<uint64_t*>(sBias + 2 * 64);
  uint64_t* empty = full + kStages;
  uint64_t* order = empty + kStages;  // order[c]: the other consumer issued a tile's products
  uint64_t* pre_full = order + 2;     // kD*: consumer c's pre (or act) tile has arrived
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;
  const int tiles_n = (N + kBN - 1) / kBN, tiles = (M + kBM - 1) / kBM * tiles_n;
  const int KT = (K + kBK - 1) / kBK;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 128);
    }
    for (int c = 0; c < 2; ++c) {
      mbar_init(&order[c], 1);
      mbar_init(&pre_full[c], 1);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (tid != 0) return;
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int m0 = t / tiles_n * kBM, n0 = t % tiles_n * kBN;
      for (int kk = 0; kk < KT; ++kk, ++it) {
        const int s = it % kStages, u = it / kStages;
        if (u > 0) mbar_wait(&empty[s], (u - 1) & 1);
        unsigned char* st = base + s * kStageBytes;
        mbar_expect_tx(&full[s], kStageBytes);
        tma_load_3d(st, &maps.a, &full[s], kk * kBK, m0, 0);
        if (MODE == kGeluFwd) {
          tma_load_3d(st + kTileBytes, &maps.b, &full[s], kk * kBK, n0, 0);
        } else {
          tma_load_3d(st + kTileBytes, &maps.b, &full[s], n0, kk * kBK, 0);
          tma_load_3d(st + kTileBytes + kTileBytes / 2, &maps.b, &full[s], n0 + 64, kk * kBK, 0);
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int c = wg - 1;
  unsigned char* so = sOut + c * kOutBytes;
  float2* sb = sBias + c * 64;
  float acc[2][64];
  for (int i = c, j = 0;; i += 2, ++j) {
    const int t = int(blockIdx.x) + i * int(gridDim.x);
    if (t >= tiles) break;
    const int m0 = t / tiles_n * kBM, n0 = t % tiles_n * kBN;
    if (c == 1)
      mbar_wait(&order[1], j & 1);
    else if (j > 0)
      mbar_wait(&order[0], (j - 1) & 1);
    if (MODE == kGeluFwd) {
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
      // kD*'s B is MN-major: its two 64-wide n boxes lie kTileBytes / 2 apart.
      const uint64_t db = sw128_desc(st + kTileBytes, MODE == kGeluFwd ? 1024 : kTileBytes / 2);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        const int scale_d = (kk > 0 || ks > 0) ? 1 : 0;
        // k16 slice ks: 32 bytes along a K-major row, 16 rows (2048 bytes) of an MN-major box.
        const uint64_t dbk = db + (MODE == kGeluFwd ? 2 * ks : 128 * ks);
        wgmma_ss_n128<MODE == kGeluFwd ? 0 : 1>(acc[0], da + 2 * ks, dbk, scale_d);
        wgmma_ss_n128<MODE == kGeluFwd ? 0 : 1>(acc[1], da + (64 * 128 >> 4) + 2 * ks, dbk,
                                                 scale_d);
      }
      wgmma_commit();
      if (kk > 0) {
        wgmma_wait<1>();
        mbar_arrive(&empty[(it - 1) % kStages]);
      }
    }
    if (tid == 0) {
      mbar_arrive(&order[c ^ 1]);  // the other consumer's next tile may start
      if (MODE != kGeluFwd) {
        // This tile's pre (kDRelu: act) into the output tile (the previous tile's store, issued
        // a tile ago, has read it by now), while the last products finish. At the tile's start the wait
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
    mbar_arrive(&empty[(it - 1) % kStages]);

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
    if (MODE == kGeluFwd) {
      if (tid == 0) bulk_wait_read();  // the previous tile's act store has read the tile
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
      if (tid == 0) bulk_wait_read();  // the TMA has read pre before act overwrites it
      warpgroup_sync(wg);
      stage(std::true_type{});
      store(&maps.aux);
    } else {
      mbar_wait(&pre_full[c], j & 1);
      // With bias_part: this warp's column sums of dpre over its 32 rows of the tile, one
      // partial row per (row tile, warp) that reduce_partials adds up.
      float* part = bias_part ? bias_part + (int64_t(m0 / kBM) * 4 + warp) * N : nullptr;
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb) {
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            uint32_t* p = out_at(nb, h * 64 + warp * 16 + g + 8 * r);
            const __nv_bfloat162 pv = *reinterpret_cast<const __nv_bfloat162*>(p);
            float d0, d1;
            if constexpr (MODE == kDGelu) {
              d0 = acc[h][4 * nb + 2 * r] * gelu_tanh_grad(__low2float(pv));
              d1 = acc[h][4 * nb + 2 * r + 1] * gelu_tanh_grad(__high2float(pv));
            } else {  // relu'(pre) = [act > 0], multiplied as activation_bwd does (NaN stays)
              d0 = acc[h][4 * nb + 2 * r] * (__low2float(pv) > 0.f ? 1.f : 0.f);
              d1 = acc[h][4 * nb + 2 * r + 1] * (__high2float(pv) > 0.f ? 1.f : 0.f);
            }
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
#else
  __trap();  // not built for sm_90a: the *_supported() checks keep this kernel from launching
#endif
}

int g_test_mode = -1;
constexpr int kBitGeluFwd = 1, kBitDGelu = 2, kBitDRelu = 4;

// Which products run here (bit 0: the GELU forward, bit 1: the DGELU backward, bit 2: the ReLU
// backward), from OFT_GEMM_WGMMA: auto (the default: the ReLU backward, which beats cuBLASLt's
// product + activation_bwd + bias_grad), 0 (none), fwd (auto and the GELU forward) or all; on
// an sm_90a build and GPU only.
int modes() {
  if (g_test_mode >= 0) return sm90a_ready() ? g_test_mode : 0;
  static const int on = [] {
    const int m = env_choice(
        "OFT_GEMM_WGMMA",
        {{"auto", kBitDRelu}, {"0", 0}, {"fwd", kBitGeluFwd | kBitDRelu},
         {"all", kBitGeluFwd | kBitDGelu | kBitDRelu}},
        kBitDRelu,
        "auto (the default: the ReLU MLP's input gradient on the Hopper product, everything "
        "else through cuBLASLt), 0 (every product through cuBLASLt), fwd (auto and the Hopper "
        "GELU forward product) or all (also the DGELU backward product)");
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

template <int MODE>
void launch(const Maps& maps, const void* bias, float* bias_part, int64_t M, int64_t N,
            int64_t K) {
  static bool configured = false;
  if (!configured) {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(gemm_gelu_kernel<MODE>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    configured = true;
  }
  const int64_t tiles = ceil_div(M, kBM) * ceil_div(N, kBN);
  const int grid = int(std::min<int64_t>(tiles, sm_count()));
  gemm_gelu_kernel<MODE><<<grid, kThreads, kSmemBytes, stream()>>>(
      maps, static_cast<const bf16*>(bias), bias_part, int(M), int(N), int(K));
  OFT_CUDA_LAUNCH_CHECK();
}

// A bf16 [rows][cols] row-major matrix as a tensor map with [box_rows][box_cols] boxes.
CUtensorMap matrix_map(const void* p, int64_t rows, int64_t cols, int box_rows, int box_cols) {
  return tensor_map(p, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, int(cols), cols, int(rows), 1,
                    box_cols, box_rows);
}

}  // namespace

void set_mode_for_tests(int mode) { g_test_mode = mode; }

bool hopper_ready() { return sm90a_ready(); }

bool gelu_fwd_supported(int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                        const void* bias, const void* pre, const void* act) {
  return shapes_ok(kBitGeluFwd, M, N, K, {x, w, bias, pre, act});
}

void gelu_fwd(void* act, void* pre, const void* x, const void* w, const void* bias, int64_t M,
              int64_t N, int64_t K) {
  Maps maps;
  maps.a = matrix_map(x, M, K, kBM, kBK);
  maps.b = matrix_map(w, N, K, kBN, kBK);
  maps.out = matrix_map(pre, M, N, kBM, 64);
  maps.aux = matrix_map(act, M, N, kBM, 64);
  launch<kGeluFwd>(maps, bias, nullptr, M, N, K);
}

bool dgelu_supported(int64_t M, int64_t N, int64_t K, const void* dout, const void* w,
                     const void* pre, const void* dpre) {
  return shapes_ok(kBitDGelu, M, N, K, {dout, w, pre, dpre});
}

namespace {
// kDGelu / kDRelu: dpre = (dout w) * a'(saved), dsum += colsum(dpre) when given.
template <int MODE>
void act_bwd(void* dpre, const void* dout, const void* w, const void* saved, int64_t M,
             int64_t N, int64_t K, float* dsum) {
  Maps maps;
  maps.a = matrix_map(dout, M, K, kBM, kBK);
  maps.b = matrix_map(w, K, N, kBK, 64);
  maps.out = matrix_map(dpre, M, N, kBM, 64);
  maps.aux = matrix_map(saved, M, N, kBM, 64);
  Tensor part;
  const int64_t P = ceil_div(M, kBM) * 4;  // partial rows: one per (row tile, consumer warp)
  if (dsum)
    part = Tensor::empty({int64_t(ops::partial_floats(P, int(N)))}, DType::F32, Device::CUDA);
  launch<MODE>(maps, nullptr, dsum ? static_cast<float*>(part.raw()) : nullptr, M, N, K);
  if (dsum)
    ops::reduce_partials(dsum, nullptr, int(N), static_cast<float*>(part.raw()), int(P), int(N));
}
}  // namespace

void dgelu(void* dpre, const void* dout, const void* w, const void* pre, int64_t M, int64_t N,
           int64_t K, float* dsum) {
  act_bwd<kDGelu>(dpre, dout, w, pre, M, N, K, dsum);
}

bool drelu_supported(int64_t M, int64_t N, int64_t K, const void* dout, const void* w,
                     const void* act, const void* dpre) {
  return shapes_ok(kBitDRelu, M, N, K, {dout, w, act, dpre});
}

void drelu(void* dpre, const void* dout, const void* w, const void* act, int64_t M, int64_t N,
           int64_t K, float* dsum) {
  act_bwd<kDRelu>(dpre, dout, w, act, M, N, K, dsum);
}

}  // namespace oft::cuda::gemm
