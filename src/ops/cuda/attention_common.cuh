// Shared declarations of the fused attention kernels (attention.cu is the op entry point):
// the argument block every kernel takes, the launchers of the three kernel families, and the
// small device helpers they share.
//
//   attention_mma.cu      bf16 tensor-core FlashAttention-2 forward (D = 16..128),
//   attention_mma_bwd.cu  and its backward (shared pieces in attention_mma.cuh)
//   attention_wgmma.cu    its Hopper forward on warpgroup MMAs (D = 64, softmax / softmax1),
//   attention_wgmma_bwd.cu  and the Hopper backward (helpers in attention_wgmma.cuh)
//   attention_generic.cu  CUDA-core tiled forward / backward for f32 and any D <= 256
//   attention_quant.cu    evaluation-only forward with fake quantization and range capture
//
// Layout (all kernels): qkv [B*T, 3C] (q | k | v, head h at columns h*D of each third),
// out / dout [B*T, C], dqkv like qkv. Row statistics live in the backend-owned `saved` tensor:
//   L  [B*H*T] f32: log2-domain log-sum-exp of the scaled scores x = (q.k) * log2(e) / sqrt(D),
//      so p = exp2(x - L) is the exact probability (softmax1 folds in its virtual zero logit;
//      +inf marks a softmax row with no visible key, so p = 0 there);
//   O  [B*T, C] in the activation dtype: a copy of the output for softmax / softmax1, and for
//      clipped softmax O2 = sum_j p_j [0 <= (zeta-gamma) p_j + gamma <= clip_hi] v_j, so that the
//      backward's row term D_i = sum_j p_j dp_j is factor * rowsum(dO * O) for every ProbFn
//      (factor = zeta - gamma for clipped, 1 otherwise) without another pass over the keys.
//      For softmax / softmax1 with AttentionSpec::kept_out (the caller keeps `out` unchanged
//      until the backward) there is no copy: `saved` holds L only, the forward's kernels get
//      osave = null and skip the store, and the backward reads `out` itself (dividing the gate
//      out of a gated output).
//
// Clipped softmax pass-through test (forward O2 and backward dp must agree on it key by key,
// or dS = p (dp - D_i) keeps a term of D_i that dp lacks): raw = (zeta-gamma) p + gamma passes
// the gradient when 0 <= raw <= clip_hi. clip_hi is 1, except for zeta <= 1, where the upper
// clamp can never bind (p <= 1 gives raw <= zeta <= 1) and clip_hi = kNoClipHi (no upper test).
// This matters at p = 1, where raw = zeta = 1 sits exactly on the bound: rows with one visible
// key (the first causal row, rows whose earlier keys are padding) or one dominant key have
// p = 1 in the forward, while the backward recomputes p = exp2(x - L) from separately compiled
// arithmetic (the compiler may fuse x * scale_log2 - L into one FMA, which keeps the rounding
// residual of x) and can get p = 1 + 2^-23, raw > 1. A literal `raw <= 1` then switched dp off
// in the backward while O2 / D_i kept it: dS = -D_i instead of 0 on those rows. The CPU oracle
// (CpuBackend::attention_bwd) uses the same rule.
#pragma once

#include <cstdint>

#include "ops/cuda/cuda_common.cuh"

namespace oft::cuda::attn {

enum Prob : int { kSoftmax = 0, kClipped = 1, kSoftmax1 = 2 };
// Args::clip_hi when the upper clamp cannot bind (FLT_MAX: above every finite raw).
constexpr float kNoClipHi = 3.402823466e+38f;

// Kept at 128 bytes (static_assert below): one field more (a 64-bit one, or two ints) made ptxas
// spill 68 bytes instead of 16 in the Hopper forward (fwd_wgmma_kernel), which then took
// 0.142 ms instead of 0.114 ms at the GPT-2 shape. Fields used by one direction only share
// storage (out / bias_part), and the gate's granularity sits in the padding after `causal`.
struct Args {
  const void* qkv = nullptr;   // [B*T, 3C] act dtype
  union {
    void* out = nullptr;       // forward: [B*T, C] act dtype
    // backward (tensor-core paths), f32 [B * ceil(T / 64), 3C] or null: partial column sums of
    // dqkv, one row per 64 token rows of a sequence (bias_part_rows_per_seq); the kernels write
    // the k and v columns, the dQ store the q columns, and the dQ store's last blocks
    // (finish_partials; reduce_partials after the fused dQ store) sum them into the qkv bias
    // gradient.
    float* bias_part;
  };
  const void* dout = nullptr;  // [B*T, C] act dtype (backward)
  void* dqkv = nullptr;        // [B*T, 3C] act dtype (backward)
  const int32_t* mask = nullptr;  // [B*T] or null; 0 = padding key
  float* L = nullptr;          // [B*H*T] log2-domain LSE
  void* osave = nullptr;       // [B*T, C] act dtype (O or O2); forward: null = no copy
  float* Dv = nullptr;         // [B*H*T] backward row term D_i
  float* dq_acc = nullptr;     // [B*T, C] f32 dQ accumulator (tensor-core backward)
  // [gates, H] act dtype or null: the forward stores out = gate[n, h] * O for token t of sequence
  // b, n = b T + t (gate_kind kGatePerToken), b (kGatePerSequence) or 0 (kGatePerHead); osave
  // stays ungated (softmax / softmax1 only). The backward's dout is then already scaled by the
  // gate.
  const void* gate = nullptr;
  int B = 0, T = 0, H = 0, D = 0, C = 0;
  bool causal = true;
  int8_t gate_kind = 0;
  int prob = kSoftmax;
  float gamma = 0.f, span = 1.f;  // clipped: p' = clip(span * p + gamma, 0, 1), span = zeta-gamma
  float clip_hi = 1.f;  // clipped: gradient passes on 0 <= raw <= clip_hi (see above)
  float scale = 1.f;              // 1 / sqrt(D)
  float scale_log2 = 1.f;         // log2(e) / sqrt(D)
};
static_assert(sizeof(Args) == 128, "attention Args grew past 128 bytes: see the note above it");
enum GateKind : int8_t { kGatePerToken = 0, kGatePerSequence = 1, kGatePerHead = 2 };

// Fake quantization and range capture of the evaluation-only forward (doubles as on the CPU).
struct QuantArgs {
  bool score_q = false, prob_q = false, score_range = false, prob_range = false;
  double s_delta = 1, s_zp = 0, s_qmin = 0, s_qmax = 255;
  double p_delta = 1, p_zp = 0, p_qmin = 0, p_qmax = 255;
  double gamma = 0, zeta = 1;
  // AttentionSpec::entropy_rows on the device ([B * H * T] f64), or null; skip_out: compute only
  // the entropy (and ranges), not the output (an extra pass beside the fast forward).
  double* entropy = nullptr;
  bool skip_out = false;
};

// Tensor-core path (bf16, D in {16, 32, 64, 128}, 16-byte aligned rows).
bool mma_supported(int D);
void launch_fwd_mma(const Args& a);
// launch_bwd_mma needs a.Dv and a zeroed a.dq_acc; writes k, v of dqkv (and, with a.bias_part,
// their partial column sums).
void launch_bwd_mma(const Args& a);
// Hopper kernels (attention_wgmma.cu, attention_wgmma_bwd.cu): D = 64, softmax / softmax1 (the
// backward also T % 4 == 0), on sm_90 where OFT_ATTN_WGMMA enables them (by default where the
// shape makes them the faster); launch_fwd_mma / launch_bwd_mma take them where enabled.
bool wgmma_fwd_enabled(const Args& a);
void launch_fwd_wgmma(const Args& a);
bool wgmma_bwd_enabled(const Args& a);
// Same contract as launch_bwd_mma, or with dq_count (the fused dQ store): a.dq_acc and dq_count
// [dq_counters(a)] all zero on entry, and left so; the kernel also writes dqkv's q columns (and
// their partial sums), so no dQ store pass follows.
void launch_bwd_wgmma(const Args& a, int* dq_count = nullptr);
int64_t dq_counters(const Args& a);

// CUDA-core path (f32 or bf16, any D <= kGenericMaxD).
constexpr int kGenericMaxD = 256;
void launch_fwd_generic(const Args& a, DType dt);
void launch_bwd_generic(const Args& a, DType dt);  // needs a.Dv; writes all of dqkv

// Evaluation path: exact CPU semantics, one block per query row. ranges[4] holds order-preserving
// integer keys of (score min, score max, prob min, prob max), initialised by the caller.
void launch_fwd_quant(const Args& a, const QuantArgs& q, unsigned long long* ranges, DType dt);

// ---- device helpers ----
// The global rows of one (batch, head) pair of the bf16 tensor-core kernels: q / k / v columns
// of qkv (row stride 3C), dO (stride C; backward), the head's L and D_i rows and the batch
// row's padding mask (null when unmasked).
struct HeadRows {
  const __nv_bfloat16 *q, *k, *v, *dout;
  const float *L, *Dv;
  const int32_t* mask;
  int64_t stride;  // 3C
  __device__ HeadRows(const Args& a, int b, int h, int D)
      : q(static_cast<const __nv_bfloat16*>(a.qkv) + int64_t(b) * a.T * 3 * a.C + h * D),
        k(q + a.C),
        v(q + 2 * a.C),
        dout(a.dout ? static_cast<const __nv_bfloat16*>(a.dout) + int64_t(b) * a.T * a.C + h * D
                    : nullptr),
        L(a.L + (int64_t(b) * a.H + h) * a.T),
        Dv(a.Dv ? a.Dv + (int64_t(b) * a.H + h) * a.T : nullptr),
        mask(a.mask ? a.mask + int64_t(b) * a.T : nullptr),
        stride(3 * int64_t(a.C)) {}
};

// Grids of the tensor-core kernels, one CTA per (batch * head, tile of rows). Tile-major
// (tile_grid: blockIdx.x = batch * head, blockIdx.y = tile) starts tile 0 of every head first:
// with the heaviest causal tiles first, the last wave is short. Head-major (head_major_grid,
// one-dimensional, head_major_tile) gives one head's tiles consecutive CTAs, so the CTAs in
// flight share few heads' rows in L2. Measured on an H100 at the GPT-2 shape: the Hopper kernels
// run faster head-major (forward 0.120 against 0.129 ms; the TMA backward, whose f32 dQ
// reduce-adds then hit L2, 0.293 against 0.455 ms), the mma.sync kernels tile-major (forward
// 0.153 against 0.163 ms, backward 0.478 against 0.490 ms).
dim3 tile_grid(const Args& a, int rows_per_tile);
dim3 head_major_grid(const Args& a, int rows_per_tile);
struct GridTile {
  int bh, tile;
};
__device__ __forceinline__ GridTile head_major_tile(int tiles) {
  const int i = int(blockIdx.x);
  return {i / tiles, i % tiles};
}

// The output factor of token row `row` of sequence b, head h: the gate (Args::gate) or 1.
template <class T>
__device__ __forceinline__ float out_gate(const Args& a, int b, int row, int h) {
  if (a.gate == nullptr) return 1.f;
  const int64_t n = a.gate_kind == kGatePerToken ? int64_t(b) * a.T + row
                                                 : (a.gate_kind == kGatePerSequence ? b : 0);
  return to_f32(static_cast<const T*>(a.gate)[n * a.H + h]);
}

// Partial column sums of dqkv (Args::bias_part): the row of sequence b's token rows
// [64 j, 64 j + 64) is b * ceil(T / 64) + j.
__host__ __device__ __forceinline__ int64_t bias_part_rows_per_seq(int T) { return (T + 63) / 64; }

// The backward epilogue's k / v column sums, step 1: a warp holding 16 key rows of an mma /
// wgmma accumulator fragment (lane (g, t4) has rows g and g + 8, valid: ok[0], ok[1], and
// columns 8 nb + 2 t4 + c as get(nb, r, c)) sums them over its rows (shuffles over g); lanes
// 0-3 write the NB * 8 column sums to red (shared memory).
template <int NB, class Get>
__device__ __forceinline__ void warp_col_sums(float* red, const bool (&ok)[2], int lane, Get get) {
  const int t4 = lane & 3;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      float v = (ok[0] ? get(nb, 0, c) : 0.f) + (ok[1] ? get(nb, 1, c) : 0.f);
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane < 4) red[nb * 8 + 2 * t4 + c] = v;
    }
}

// Step 2, after a barrier: red holds [warps][2 * W] sums (W = the head width: dK's columns,
// then dV's) of the CTA's warps, 16 keys each from k0 (a multiple of 64). Each group of four
// warps (64 keys) is one partial row: dst = that row's first k column of this head (dV's are C
// further on), rows `stride` floats apart; groups wholly past T have no row.
__device__ __forceinline__ void store_bias_parts(float* dst, int64_t stride, int C, int W,
                                                 const float* red, int warps, int k0, int T,
                                                 int tid, int threads) {
  for (int grp = 0; grp < warps / 4 && k0 + 64 * grp < T; ++grp)
    for (int col = tid; col < 2 * W; col += threads) {
      const float* r = red + grp * 4 * 2 * W + col;
      const float v = (r[0] + r[2 * W]) + (r[4 * W] + r[6 * W]);
      dst[grp * stride + (col < W ? col : C + col - W)] = v;
    }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace oft::cuda::attn
