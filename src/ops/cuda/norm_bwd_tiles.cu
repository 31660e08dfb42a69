// Staged backward of LayerNorm / RMSNorm for bf16 rows (C % 8 == 0, C <= 4096): the training
// path of every preset (C = 768 ... 2048). See norm_common.cuh for the contract.
//
// A persistent block (one per SM) owns tiles of R consecutive rows (R = 6144 / C, 1..8: 8 rows
// at C = 768).
// Per tile, x, dy and the old dx (when accumulating) [R, C] and the rows' statistics are copied
// into shared memory with 16-byte cp.async, double-buffered: the next tile's copies are in
// flight while this one is computed, so the block never waits on a global load of its own.
//   Phase 1, one warp per row: the row sums (LN: sum g, sum g xhat; RMS: sum g x, sum x^2 with
//     g = dy w, w in shared memory as f32) by shuffles, then the row's coefficients into shared
//     memory.
//   Phase 2, one thread per 8 columns and row group: threads = G * C / 8 (G row groups, the
//     largest divisor of R that keeps threads <= 512: 4 groups of 96 at C = 768); for each of
//     its rows, dx = old + d (16-byte stores) and the thread's fp32 column sums of dy xhat (dw),
//     dy (db) and the stored dx (dsum) in registers.
// Three barriers per tile. After the last tile the row groups' sums meet in shared memory and
// the block writes its partial row [dw | db | dsum]; the blocks that arrive last add the blocks'
// rows in a fixed order (finish_partials: deterministic, no atomics on the values, no second
// launch). dx may alias dy: a tile's rows are in shared memory before any of them is written,
// and tiles are disjoint.
//
// With a per-token gate on the norm's output (layernorm_gate_bwd, an even number Gg <= 32 of
// groups of 8k columns): the tile's rows of dgate and the gate logits come with the stage; phase
// 1 forms each row's dl = dgate * sigmoid'(logit) [Gg] and uses dy + dl[group] * gw wherever dy
// was; phase 2 also sums dl xhat and dl per column, from which the gate weight's gradient
// sum dl y = w sum dl xhat + b sum dl and its bias gradient follow in the partial row
// [dw | db | dsum | dgw | dgb].
//
// It replaced the one-warp-per-row kernel (norm_bwd_warp_kernel) for these rows, which kept a
// row in registers and its dw / db sums in shared memory (121 registers, 52 KiB per 256-thread
// block: two blocks, 16 warps per SM) and reached 58% of the DRAM bandwidth on an H100.
#include <algorithm>

#include "ops/cuda/attention_ptx.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/norm_common.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops::norm {
namespace {

using bf16 = __nv_bfloat16;
using cuda::attn::cp_async16;
using cuda::attn::cp_async4;
using cuda::attn::cp_async_commit;
using cuda::attn::cp_async_wait_all;

constexpr int kMaxTileC = 4096;
constexpr int kMaxThreads = 512;
// With the gate: at most 384 threads, compiled for two blocks per SM (<= 85 registers, as when
// two were launched per SM; launch_tiles now launches one).
constexpr int kMaxGateThreads = 384;

struct TileArgs {
  bf16* dx;
  float* part;  // [gridDim.x, Ct]: dw | db (with_db) | dsum (with_dsum) | dgw | dgb (gate)
  const bf16 *dy, *x, *w;
  const float *s0, *s1;  // LN: mean, rstd; RMS: s1 = inv
  int64_t N;
  int C, R, G;  // columns, rows per tile, row groups of phase 2 (threads = G * C / 8)
  bool accumulate, with_db, with_dsum;
  // The gate of layernorm_gate_bwd (GATE): per row dl [Gg] = dgate * sigmoid'(logits), added to
  // dy as dl[column / D] * gw; the partial rows also get sum dl * y (dgw, as w sum dl xhat +
  // b sum dl with the norm's bias b, may be null) and sum dl (dgb).
  const bf16 *dgate = nullptr, *logits = nullptr, *gw = nullptr, *b = nullptr;
  int Gg = 0, PD = 0;  // gate groups (even, <= 32), 8-column packs per group (D / 8)
  PartialFinish fin = {};  // the partial rows' columns summed into dw, db, dsum, dgw, dgb
};

// Sums per partial row before the gate's: dw, then db and dsum when present.
__host__ __device__ inline int norm_sums(const TileArgs& a) {
  return 1 + a.with_db + a.with_dsum;
}
// Columns of a partial row.
__host__ __device__ inline int partial_cols(const TileArgs& a, bool gate) {
  return norm_sums(a) * a.C + (gate ? a.C + a.Gg : 0);
}

// Bytes of one stage: x, dy (and the old dx) [R][C] bf16, then the statistics s0 [R], s1 [R],
// then (with a gate of Gg groups) the rows' dgate and logits [R][Gg] bf16.
__host__ __device__ inline size_t stats_bytes(int R) {
  return ((2 * R * sizeof(float) + 15) / 16) * 16;
}
__host__ __device__ inline size_t stage_bytes(int R, int C, bool accumulate, int Gg) {
  const size_t arrays = size_t(accumulate ? 3 : 2) * R * C * sizeof(bf16);
  return arrays + stats_bytes(R) + ((2 * size_t(R) * Gg * sizeof(bf16) + 15) / 16) * 16;
}
// Floats of the gate's shared memory: gw (f32) [C], dl [R][32] and each pack's group [C / 8]
// (bytes, rounded up to 16-byte words so that what follows stays aligned).
__host__ __device__ inline size_t gate_smem_floats(int R, int C, bool gate) {
  return gate ? size_t(C) + 32 * R + 4 * ((C / 8 + 15) / 16) : 0;
}
// Shared memory: w (f32) [C], the gate's (GATE), the row coefficients [R], two stages (which
// also hold the row groups' final sums [G][Ct] f32).
inline size_t tile_smem_bytes(int R, int G, int C, bool accumulate, int Ct, bool gate, int Gg) {
  const size_t stages = std::max(2 * stage_bytes(R, C, accumulate, gate ? Gg : 0),
                                 size_t(G) * Ct * 4);
  return (size_t(C) + gate_smem_floats(R, C, gate)) * 4 + size_t(R) * 16 + stages;
}

__device__ __forceinline__ void cp_async_wait_prev() {
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

// Enqueues the copies of tile t into stage memory `st` (rows past N are zero-filled).
template <bool LN, bool GATE>
__device__ __forceinline__ void load_tile(const TileArgs& a, unsigned char* st, int64_t t) {
  const int C = a.C, R = a.R, per_row = C / 8, chunks = R * per_row;
  const int64_t n0 = t * R;
  const int rows = static_cast<int>(a.N - n0 < R ? a.N - n0 : R);
  const int narr = a.accumulate ? 3 : 2;
  bf16* s = reinterpret_cast<bf16*>(st);
  const int valid = rows * per_row;  // chunks of rows < N
  for (int k = 0; k < narr; ++k) {
    const bf16* src = (k == 0 ? a.x : k == 1 ? a.dy : a.dx) + n0 * C;
    bf16* dst = s + size_t(k) * R * C;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x)
      cp_async16(dst + i * 8, i < valid ? src + i * 8 : a.x, i < valid);
  }
  float* stats = reinterpret_cast<float*>(s + size_t(narr) * R * C);
  if (threadIdx.x < R) {
    const int r = threadIdx.x;
    const bool ok = r < rows;
    const int64_t n = ok ? n0 + r : 0;
    if (LN) cp_async4(stats + r, a.s0 + n, ok);
    cp_async4(stats + R + r, a.s1 + n, ok);
  }
  if constexpr (GATE) {  // dgate then logits [R][Gg], in pairs (Gg is even)
    bf16* gs = reinterpret_cast<bf16*>(reinterpret_cast<unsigned char*>(stats) + stats_bytes(R));
    const int pairs = R * a.Gg / 2, valid_pairs = rows * a.Gg / 2;
    for (int i = threadIdx.x; i < 2 * pairs; i += blockDim.x) {
      const int k = i / pairs, q = i - k * pairs;
      const bf16* src = (k ? a.logits : a.dgate) + n0 * a.Gg + 2 * q;
      cp_async4(gs + size_t(k) * R * a.Gg + 2 * q, q < valid_pairs ? src : a.dgate,
                q < valid_pairs);
    }
  }
}

// Eight bf16 of a 16-byte chunk as floats (bf16 -> f32 is a 16-bit shift).
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

template <bool LN, bool GATE>
__device__ __forceinline__ void norm_bwd_tiles_body(const TileArgs& a, unsigned char* smem) {
  const int C = a.C, R = a.R, U = C / 8, G = a.G;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  // Phase 2's chunk of 8 columns and row group (rows g, g + G, ... of a tile).
  const int u = threadIdx.x % U, g = threadIdx.x / U;
  float* ws = reinterpret_cast<float*>(smem);
  float* gws = ws + C;       // GATE: gw as f32 [C]
  float* dls = gws + C;      // GATE: the tile's rows' dl [R][32]
  unsigned char* hp = reinterpret_cast<unsigned char*>(dls + 32 * R);  // GATE: pack -> group
  float4* coef = reinterpret_cast<float4*>(ws + C + gate_smem_floats(R, C, GATE));
  unsigned char* stages = reinterpret_cast<unsigned char*>(coef + R);
  const size_t sbytes = stage_bytes(R, C, a.accumulate, GATE ? a.Gg : 0);
  const int narr = a.accumulate ? 3 : 2;
  const int64_t ntiles = (a.N + R - 1) / R;

  int64_t t = blockIdx.x;
  load_tile<LN, GATE>(a, stages, t);
  cp_async_commit();
  for (int c = threadIdx.x; c < C; c += blockDim.x) ws[c] = cuda::to_f32(a.w[c]);
  if constexpr (GATE) {
    for (int c = threadIdx.x; c < C; c += blockDim.x) gws[c] = cuda::to_f32(a.gw[c]);
    for (int j = threadIdx.x; j < U; j += blockDim.x) hp[j] = static_cast<unsigned char>(j / a.PD);
  }
  float wr[8], aw[8], ab[8], as[8];
  {
    const uint4 wp = *reinterpret_cast<const uint4*>(a.w + 8 * u);
    unpack8(wp, wr);
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) aw[e] = ab[e] = as[e] = 0.f;
  // GATE: this chunk's group, and its sums of dl * xhat (agx) and dl (agl): the gate weight's
  // gradient sum dl * y is w * agx + b * agl (y = xhat w + b). The chunk's gw is read from
  // shared memory per row (held in registers across the phases it made ptxas spill at the
  // kernel's 80-register bound).
  const int hq = GATE ? u / a.PD : 0;
  float agx[8], agl = 0.f;
  if constexpr (GATE) {
#pragma unroll
    for (int e = 0; e < 8; ++e) agx[e] = 0.f;
  }
  const float inv_c = 1.f / static_cast<float>(C);

  for (int i = 0; t < ntiles; ++i, t += gridDim.x) {
    unsigned char* st = stages + (i & 1) * sbytes;
    if (t + gridDim.x < ntiles) load_tile<LN, GATE>(a, stages + ((i + 1) & 1) * sbytes, t + gridDim.x);
    cp_async_commit();
    cp_async_wait_prev();  // this thread's copies of tile t are done
    __syncthreads();       // everyone's (and ws on the first tile)
    const bf16* X = reinterpret_cast<const bf16*>(st);
    const bf16* Gr = X + size_t(R) * C;
    const bf16* O = Gr + size_t(R) * C;
    const float* stats = reinterpret_cast<const float*>(X + size_t(narr) * R * C);
    const int64_t n0 = t * R;
    const int rows = static_cast<int>(a.N - n0 < R ? a.N - n0 : R);

    // Phase 1: row sums and coefficients, one warp per row. coef = (r, m, c0, c1) such that
    // xh = x r + m and d = dy w r - c0 - c1 xh (RMS: m = c0 = 0, c1 rescaled from x to xh).
    for (int r = warp; r < rows; r += nwarps) {
      const float rr = stats[R + r], m = LN ? -stats[r] * rr : 0.f;
      const uint4* xr = reinterpret_cast<const uint4*>(X + size_t(r) * C);
      const uint4* gr = reinterpret_cast<const uint4*>(Gr + size_t(r) * C);
      const float4* w4 = reinterpret_cast<const float4*>(ws);
      float* dl = dls + 32 * r;
      if constexpr (GATE) {
        if (lane < a.Gg) {
          const bf16* gs = reinterpret_cast<const bf16*>(
              reinterpret_cast<const unsigned char*>(stats) + stats_bytes(R));
          const int q = r * a.Gg + lane;
          const float sg = 1.f / (1.f + __expf(-cuda::to_f32(gs[R * a.Gg + q])));
          dl[lane] = cuda::to_f32(gs[q]) * sg * (1.f - sg);
        }
        __syncwarp();
      }
      float s0 = 0.f, s1 = 0.f;
      for (int j = lane; j < U; j += 32) {
        float xv[8], gv[8];
        unpack8(xr[j], xv);
        unpack8(gr[j], gv);
        if constexpr (GATE) {  // dy + the gate's input gradient
          const float d = dl[hp[j]];
          const float4* g4 = reinterpret_cast<const float4*>(gws);
          const float4 ga = g4[2 * j], gb = g4[2 * j + 1];
          const float gwv[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) gv[e] = fmaf(d, gwv[e], gv[e]);
        }
        const float4 wa = w4[2 * j], wb = w4[2 * j + 1];
        const float wv[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float gw = gv[e] * wv[e];
          if (LN) {
            s0 += gw;
            s1 = fmaf(gw, fmaf(xv[e], rr, m), s1);
          } else {
            s0 = fmaf(gw, xv[e], s0);
            s1 = fmaf(xv[e], xv[e], s1);
          }
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        s0 += __shfl_xor_sync(0xffffffffu, s0, off);
        s1 += __shfl_xor_sync(0xffffffffu, s1, off);
      }
      float c0, c1;
      norm_bwd_coeffs<LN>(s0, s1, rr, inv_c, c0, c1);
      if (!LN) c1 = rr > 0.f ? c1 / rr : 0.f;  // c1 x = (c1 / r) xh
      if (lane == 0) coef[r] = make_float4(rr, m, c0, c1);
    }
    __syncthreads();

    // Phase 2: dx and the column sums, 8 columns per thread.
    if (g < G) {
      for (int r = g; r < rows; r += G) {
        const float4 cf = coef[r];
        const float dlr = GATE ? dls[32 * r + hq] : 0.f;
        if constexpr (GATE) agl += dlr;
        const uint4 xp = reinterpret_cast<const uint4*>(X + r * C)[u];
        const uint4 gp = reinterpret_cast<const uint4*>(Gr + r * C)[u];
        const uint4 op = a.accumulate ? reinterpret_cast<const uint4*>(O + r * C)[u]
                                      : make_uint4(0, 0, 0, 0);
        const uint32_t xw[4] = {xp.x, xp.y, xp.z, xp.w}, gw[4] = {gp.x, gp.y, gp.z, gp.w},
                       ow[4] = {op.x, op.y, op.z, op.w};
        float gwr[8];  // GATE: the chunk's gate weights
        if constexpr (GATE) {
          const float4* g4 = reinterpret_cast<const float4*>(gws) + 2 * u;
          const float4 ga = g4[0], gb = g4[1];
          gwr[0] = ga.x, gwr[1] = ga.y, gwr[2] = ga.z, gwr[3] = ga.w;
          gwr[4] = gb.x, gwr[5] = gb.y, gwr[6] = gb.z, gwr[7] = gb.w;
        }
        uint32_t packed[4];
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
          float d[2];
#pragma unroll
          for (int k = 0; k < 2; ++k) {
            const int h = e / 2;
            const float xv = __uint_as_float(k ? xw[h] & 0xffff0000u : xw[h] << 16);
            float gv = __uint_as_float(k ? gw[h] & 0xffff0000u : gw[h] << 16);
            const float ov = __uint_as_float(k ? ow[h] & 0xffff0000u : ow[h] << 16);
            const float xh = fmaf(xv, cf.x, cf.y);
            if constexpr (GATE) {
              gv = fmaf(dlr, gwr[e + k], gv);
              agx[e + k] = fmaf(dlr, xh, agx[e + k]);
            }
            aw[e + k] = fmaf(gv, xh, aw[e + k]);
            if (LN) ab[e + k] += gv;
            d[k] = fmaf(gv, wr[e + k] * cf.x, fmaf(-cf.w, xh, -cf.z)) + ov;
          }
          const __nv_bfloat162 o2 = __floats2bfloat162_rn(d[0], d[1]);
          packed[e / 2] = *reinterpret_cast<const uint32_t*>(&o2);
        }
        *reinterpret_cast<uint4*>(a.dx + (n0 + r) * C + 8 * u) =
            make_uint4(packed[0], packed[1], packed[2], packed[3]);
        if (a.with_dsum) {
          float sv[8];
          unpack8(make_uint4(packed[0], packed[1], packed[2], packed[3]), sv);
#pragma unroll
          for (int e = 0; e < 8; ++e) as[e] += sv[e];
        }
      }
    }
    __syncthreads();  // the stage is free for the copies issued next iteration
  }

  // The row groups' sums through shared memory (the stages are idle now), then the block's
  // partial row [dw | db | dsum | dgw | dgb] in group order.
  cp_async_wait_all();
  const int nsum = norm_sums(a), Ct = partial_cols(a, GATE);
  float* red = reinterpret_cast<float*>(stages);  // [G][Ct]
  if (g < G) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float* row = red + size_t(g) * Ct + 8 * u + e;
      row[0] = aw[e];
      int k = 1;
      if (a.with_db) row[C * k++] = ab[e];
      if (a.with_dsum) row[C * k] = as[e];
      if constexpr (GATE) {
        const float bv = a.b ? cuda::to_f32(a.b[8 * u + e]) : 0.f;
        row[C * nsum] = fmaf(wr[e], agx[e], bv * agl);
      }
    }
    // The first chunk of each group holds its dl sum (every chunk of the group has the same).
    if (GATE && u % a.PD == 0) red[size_t(g) * Ct + (nsum + 1) * C + hq] = agl;
  }
  __syncthreads();
  float* pr = a.part + static_cast<int64_t>(blockIdx.x) * Ct;
  for (int c = threadIdx.x; c < Ct; c += blockDim.x) {
    float v = 0.f;
    for (int q = 0; q < G; ++q) v += red[size_t(q) * Ct + c];
    pr[c] = v;
  }
  finish_partials(a.fin, a.part);
}

template <bool LN>
__global__ void __launch_bounds__(kMaxThreads) norm_bwd_tile_kernel(const TileArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  norm_bwd_tiles_body<LN, false>(a, smem);
}
__global__ void __launch_bounds__(kMaxGateThreads, 2) norm_gate_bwd_tile_kernel(const TileArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  norm_bwd_tiles_body<true, true>(a, smem);
}

// Rows per tile: 8 at C <= 768, fewer for wider rows so that two stages stay near 75 KiB.
// Measured at C = 768 (H100, accumulate): 4, 6, 8, 12 rows within 5% of each other; 2 rows 30%
// slower (the per-tile barriers and row reductions); at one block per SM, 2 and 4 rows slower
// than 8.
int tile_rows(int C) { return std::clamp(6144 / C, 1, 8); }


template <bool LN, bool GATE>
void launch_tiles(TileArgs a, int threads, float* dw, float* db, float* dsum, float* dgw,
                  float* dgb) {
  auto kernel = GATE ? norm_gate_bwd_tile_kernel : norm_bwd_tile_kernel<LN>;
  const int Ct = partial_cols(a, GATE);
  const size_t smem = tile_smem_bytes(a.R, a.G, a.C, a.accumulate, Ct, GATE, a.Gg);
  const int64_t ntiles = cuda::ceil_div(a.N, a.R);
  static size_t opted = 0;  // raised once per instantiation and size
  if (smem > opted) {
    OFT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    opted = smem;
  }
  // One block per SM, although two fit at C = 768: fewer partial rows to finish and fewer copies
  // competing in flight. Measured on an H100 (both against two per SM, same call): 16384 x 768
  // 41.5 against 45.4 us, accumulating with the dsum sums 56.6 against 60.4 us, at OPT's 8192
  // rows 30.8 against 33.1 us, with the gate 65.4 against 70.0 us.
  const int blocks =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ntiles, cuda::sm_count())));
  a.part = static_cast<float*>(cuda::scratch(partial_floats(blocks, Ct) * sizeof(float)));
  PartialDsts d;
  d.add(dw, a.C);
  if (a.with_db) d.add(db, a.C);
  if (a.with_dsum) d.add(dsum, a.C);
  if (GATE) {
    d.add(dgw, a.C);
    d.add(dgb, a.Gg);
  }
  a.fin = partial_finish(d, a.part, blocks);
  kernel<<<blocks, threads, smem, cuda::stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace

bool norm_bwd_tiles(bool ln, bf16* dx, float* dw, float* db, float* dsum, const bf16* dy,
                    const bf16* x, const bf16* w, const float* s0, const float* s1, int64_t N,
                    int C, bool accumulate, const TileGate* gate) {
  if (C <= 0 || C % 8 != 0 || C > kMaxTileC || !cuda::aligned16(dx) || !cuda::aligned16(dy) ||
      !cuda::aligned16(x) || !cuda::aligned16(w))
    return false;
  // (The gate kernel runs at most kMaxGateThreads threads, one per 8 columns of a row group.)
  if (gate && (!ln || C / 8 > kMaxGateThreads || gate->G < 2 || gate->G > 32 ||
               gate->G % 2 != 0 || C % gate->G != 0 ||
               (C / gate->G) % 8 != 0 || !cuda::aligned16(gate->gw) ||
               (gate->b && !cuda::aligned16(gate->b))))
    return false;
  if (N == 0) return true;
  static const int max_smem = [] {
    int dev = 0, v = 0;
    OFT_CUDA_CHECK(cudaGetDevice(&dev));
    OFT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return v;
  }();
  TileArgs a{dx, nullptr, dy, x, w, s0, s1, N, C, tile_rows(C), 1, accumulate,
             ln && db != nullptr, dsum != nullptr};
  if (gate) {
    a.dgate = gate->dgate;
    a.logits = gate->logits;
    a.gw = gate->gw;
    a.b = gate->b;
    a.Gg = gate->G;
    a.PD = C / gate->G / 8;
  }
  const int Ct = partial_cols(a, gate != nullptr);
  if (!ln) db = nullptr;
  // Row groups: the largest divisor of R with G * C / 8 <= 512 threads (384 with the gate).
  const int U = C / 8;
  auto groups = [&] {
    int G = 1;
    for (int q = 1; q <= a.R; ++q)
      if (a.R % q == 0 && q * U <= (gate ? kMaxGateThreads : kMaxThreads)) G = q;
    return G;
  };
  a.G = groups();
  while (a.R > 1 &&
         tile_smem_bytes(a.R, a.G, C, accumulate, Ct, gate, a.Gg) > size_t(max_smem)) {
    --a.R;
    a.G = groups();
  }
  const int threads = static_cast<int>(cuda::ceil_div(int64_t(a.G) * U, 32) * 32);
  if (gate)
    launch_tiles<true, true>(a, threads, dw, db, dsum, gate->dgw, gate->dgb);
  else if (ln)
    launch_tiles<true, false>(a, threads, dw, db, dsum, nullptr, nullptr);
  else
    launch_tiles<false, false>(a, threads, dw, db, dsum, nullptr, nullptr);
  return true;
}

}  // namespace oft::ops::norm
