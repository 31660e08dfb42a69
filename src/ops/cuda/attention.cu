// Fused multi-head attention on the GPU: CudaBackend::attention_fwd / attention_bwd.
//
// Semantics are those of CpuBackend::attention_fwd / bwd (cpu_nn.cpp): S = QK^T / sqrt(D) with
// the causal and padding masks, P = softmax, softmax1 (an extra virtual logit 0) or clipped
// softmax (clip((zeta - gamma) softmax + gamma, 0, 1), gamma <= 0), out = P V; rows without a
// visible key give 0. Unlike the CPU the probabilities are never stored: the forward keeps one
// log-sum-exp per row and a copy of the output (see attention_common.cuh for the layout of
// `saved`), and the backward recomputes P tile by tile (FlashAttention-2).
// With AttentionSpec::gate (per-head gate of any granularity, softmax / softmax1) every kernel
// family stores out = gate * O while the saved copy stays O; the backward's row-term pass then
// takes the gate's gradient r = rowsum(dout * O) (summed over the gate's rows when it has
// several). The kernels take dout as it is: the gate goes into their row statistics instead,
// L' = L - log2(g) and D' = factor * r, since with dO = g dout
//   dV = P^T dO = (g P)^T dout,   dS = P (dP - factor g r) = (g P) (dout V^T - factor r),
// and g P = exp2(x - L'). This replaces a head_gate_fwd and a head_gate_bwd pass (H100,
// gpt2_124m gated: 515.2k -> 519.9k tokens/s, 0.25 GiB less memory: the ungated context is not
// kept), and a gate-scaled copy of dout the row-term pass used to write.
// With AttentionSpec::kept_out (softmax / softmax1) `saved` holds L only and the backward reads
// O from the caller's `out` (r = rowsum(dout * out) / g for a gated output; a zero gate gives
// r = 0, which its gradient multiplies by sigmoid' = 0 anyway): one [B*T, C] store less per
// forward and that much less memory per layer.
//
// Paths:
// - evaluation with fake quantization or range capture: attention_quant.cu (exact CPU mirror);
// - bf16 with D in {16, 32, 64, 128} and 16-byte aligned rows: tensor cores (attention_mma.cu);
// - everything else (f32, other D up to 256): CUDA cores (attention_generic.cu).
// This file validates, manages `saved`, and runs the two cheap backward helpers:
//   row_term_kernel       D_i = factor * sum_d dO[i, d] * O[i, d] per (row, head)   [B*H*T] f32
//                         (with a gate: also dgate and L')
//   gate_grad_sum_kernel  dgate of gates over several rows: the rows' shares summed in order
//   row_term_zero_kernel  the same with 16-byte loads, also zeroing the f32 dQ accumulator
//                         (tensor-core path)
//   dq_store_vec_kernel   dqkv[:, q columns] = dq_acc / sqrt(D) in bf16 (tensor-core path)
//   dq_store_sum_kernel   the same, also the q columns' partial sums for dsum (the qkv bias
//                         gradient; the kernels write the k / v columns' in their epilogues)
// The Hopper backward (attention_wgmma_bwd.cu) needs neither the zeroing nor the dQ store: its
// accumulator lives in a workspace kept at zero (cuda::zeroed_workspace) and the last CTA to add
// into a query tile stores it, with OFT_ATTN_DQ_STORE=fused (opt-in).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/env_choice.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/fake_quant.cuh"
#include "ops/cuda/partials.cuh"

namespace oft::ops {
namespace {

using cuda::aligned16;

using cuda::attn::Args;

// The backward's row term D_i = factor * rowsum(dO * osave) per (token row, head). With a gate
// (Gate::g non-null: the forward stored g * O), dout is the gradient of the gated output:
// r = rowsum(dout * O) is the row's share of the gate's gradient, D_i = factor * r, and the
// row's L' = L - log2(g) goes to Lg for the kernels (see the file comment). One gate per row: r
// is dgate itself; otherwise r goes to r_rows and gate_grad_sum_kernel adds the rows of each
// gate.
template <class T>
struct Gate {
  const T* g = nullptr;        // [rows / per, H]
  int64_t per = 1;             // rows per gate
  T* dg = nullptr;             // [rows / per, H]
  float* r_rows = nullptr;     // [rows, H] when per > 1
  const float* L = nullptr;    // [B*H*T] the forward's L
  float* Lg = nullptr;         // [B*H*T] L - log2(g)
  bool out_gated = false;      // osave is the gated output g * O (AttentionSpec::kept_out)
  __device__ float gate(int64_t n, int h, int H) const {
    return cuda::to_f32(g[n / per * H + h]);
  }
  // r from s = rowsum(dout * osave).
  __device__ float r_of(float s, float gv) const {
    return out_gated ? (gv > 0.f ? s / gv : 0.f) : s;
  }
  __device__ void put(int64_t n, int h, int H, float r) const {
    if (per == 1)
      dg[n * H + h] = cuda::from_f32<T>(r);
    else
      r_rows[n * H + h] = r;
  }
};

// dgate[q, h] = sum of r_rows[n, h] over the gate's rows n in [q per, (q + 1) per), in row order:
// one warp per (gate, head), lanes strided over the rows, then a fixed shuffle tree.
template <class T>
__global__ void gate_grad_sum_kernel(T* __restrict__ dg, const float* __restrict__ r_rows,
                                     int64_t gates, int64_t per, int H) {
  const int lane = threadIdx.x & 31;
  const int64_t w = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (w >= gates * H) return;
  const int64_t q = w / H;
  const int h = int(w % H);
  float s = 0.f;
  for (int64_t n = q * per + lane; n < (q + 1) * per; n += 32) s += r_rows[n * H + h];
  s = cuda::attn::warp_sum(s);
  if (lane == 0) dg[q * H + h] = cuda::from_f32<T>(s);
}

template <class T>
Gate<T> gate_args(const Tensor* gate, const AttentionSpec& spec, Tensor& r_rows, const float* L,
                  Tensor& Lg, bool out_gated) {
  Gate<T> gt;
  if (gate) {
    gt.g = static_cast<const T*>(gate->raw());
    gt.per = spec.gate_rows;
    gt.dg = static_cast<T*>(spec.dgate->raw());
    gt.r_rows = r_rows.defined() ? static_cast<float*>(r_rows.raw()) : nullptr;
    gt.L = L;
    gt.Lg = static_cast<float*>(Lg.raw());
    gt.out_gated = out_gated;
  }
  return gt;
}

// Row n's term for head h from s = rowsum(dout * osave): D_i, and with a gate dgate's share and
// L' (see Gate).
template <class T>
__device__ __forceinline__ void store_row_term(float* Dv, const Gate<T>& gate, int64_t n, int h,
                                               int H, int T_, float factor, float s) {
  const int64_t b = n / T_, t = n % T_, i = (b * H + h) * T_ + t;
  if (gate.g) {
    const float g = gate.gate(n, h, H);
    s = gate.r_of(s, g);
    gate.Lg[i] = gate.L[i] - log2f(g);
    gate.put(n, h, H, s);
  }
  Dv[i] = factor * s;
}

// One warp per (token row, head): grid-stride over B*T*H warps.
template <class T>
__global__ void row_term_kernel(const T* __restrict__ dout, const T* __restrict__ osave,
                                float* __restrict__ Dv, int64_t rows, int T_, int H, int D,
                                float factor, Gate<T> gate) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t w = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); w < rows * H;
       w += warps) {
    const int64_t n = w / H;  // token row b*T + t
    const int h = int(w % H);
    const int64_t off = n * int64_t(H) * D + int64_t(h) * D;
    float s = 0.f;
    for (int d = lane; d < D; d += 32)
      s += cuda::to_f32(dout[off + d]) * cuda::to_f32(osave[off + d]);
    s = cuda::attn::warp_sum(s);
    if (lane == 0) store_row_term(Dv, gate, n, h, H, T_, factor, s);
  }
}

// Tensor-core path versions of the two helpers: 16-byte accesses, one thread per 8 columns.
// row_term_zero_kernel also zeroes the f32 dQ accumulator unless acc is null (instead of a
// separate memset): the D / 8 threads of a (row, head) are consecutive lanes of one warp and
// reduce with shuffles.
// Needs D in {16, 32, 64, 128} and 16-byte aligned dout / osave / acc.
__global__ void row_term_zero_kernel(const __nv_bfloat16* __restrict__ dout,
                                     const __nv_bfloat16* __restrict__ osave,
                                     float* __restrict__ Dv, float* __restrict__ acc, int64_t rows,
                                     int T_, int H, int D, float factor,
                                     Gate<__nv_bfloat16> gate) {
  const int C8 = H * D / 8, group = D / 8, lane = threadIdx.x & 31;
  const int64_t total = rows * C8;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;  // a multiple of 32
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + (threadIdx.x & ~31); base < total;
       base += stride) {
    const int64_t idx = base + lane;
    const bool ok = idx < total;
    float s = 0.f;
    if (ok) {
      float a[8], o[8];
      cuda::load_pack<__nv_bfloat16, 8>(dout + idx * 8, a);
      cuda::load_pack<__nv_bfloat16, 8>(osave + idx * 8, o);
#pragma unroll
      for (int j = 0; j < 8; ++j) s += a[j] * o[j];
      if (acc != nullptr) {
        const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
        reinterpret_cast<float4*>(acc + idx * 8)[0] = z;
        reinterpret_cast<float4*>(acc + idx * 8)[1] = z;
      }
    }
    for (int o = 1; o < group; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (ok && (idx % group) == 0) {
      const int64_t n = idx / C8;
      store_row_term(Dv, gate, n, int(idx % C8) / group, H, T_, factor, s);
    }
  }
}

// Columns c..c+7 of dQ row n: f = acc[n, c..c+7] * scale, stored to dqkv's q columns in bf16.
__device__ __forceinline__ void store_dq8(__nv_bfloat16* dqkv, const float* acc, int64_t n, int c,
                                          int C, float scale, float (&f)[8]) {
  cuda::load_pack<float, 8>(acc + n * C + c, f);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] *= scale;
  cuda::store_pack<__nv_bfloat16, 8>(dqkv + n * 3 * C + c, f);
}

// dqkv[:, q columns] = acc / sqrt(D) in bf16, 8 columns per thread.
__global__ void dq_store_vec_kernel(__nv_bfloat16* __restrict__ dqkv, const float* __restrict__ acc,
                                    int64_t rows, int C, float scale) {
  const int C8 = C / 8;
  const int64_t total = rows * C8;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    float f[8];
    store_dq8(dqkv, acc, idx / C8, int(idx % C8) * 8, C, scale, f);
  }
}

// The same, also writing the q columns' partial column sums (Args::bias_part). Block (32, 8) per
// (partial row p: 64 token rows of one sequence, 256 columns): thread (x, y) takes columns
// 8x..8x+7 of rows y, y + 8, ...; the eight row lanes' sums meet in shared memory.
__global__ void __launch_bounds__(256)
    dq_store_sum_kernel(__nv_bfloat16* __restrict__ dqkv, const float* __restrict__ acc,
                        float* __restrict__ part, int T, int C, float scale,
                        const PartialFinish fin) {
  __shared__ float red[8][256];
  const int p = blockIdx.x, per_seq = int(cuda::attn::bias_part_rows_per_seq(T));
  const int b = p / per_seq, t0 = (p % per_seq) * 64, t1 = min(T, t0 + 64);
  const int c0 = blockIdx.y * 256, c = c0 + threadIdx.x * 8;
  float sum[8] = {};
  if (c < C) {
#pragma unroll 2
    for (int t = t0 + int(threadIdx.y); t < t1; t += 8) {
      float f[8];
      store_dq8(dqkv, acc, int64_t(b) * T + t, c, C, scale, f);
#pragma unroll
      for (int i = 0; i < 8; ++i) sum[i] += f[i];
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) red[threadIdx.y][threadIdx.x * 8 + i] = sum[i];
  __syncthreads();
  const int j = threadIdx.y * 32 + threadIdx.x;  // the block's column this thread finishes
  if (c0 + j < C) {
    float v = 0.f;
#pragma unroll
    for (int y = 0; y < 8; ++y) v += red[y][j];
    part[int64_t(p) * 3 * C + c0 + j] = v;
  }
  // The attention kernel wrote the k and v columns of every partial row before this launch.
  finish_partials(fin, part);
}

// OFT_ATTN_DQ_STORE: `pass` (the default: a zeroed accumulator and a separate dQ store pass, as
// every other backward kernel does) or `fused` (the Hopper backward stores dQ from the last CTA
// per query tile; opt-in until it has been measured faster, docs/performance.md).
bool fused_dq_store() {
  static const bool fused =
      env_choice("OFT_ATTN_DQ_STORE", {{"pass", 0}, {"fused", 1}}, 0,
                 "pass (a separate dQ store pass, the default) or fused (the Hopper attention "
                 "backward stores dQ itself)") != 0;
  return fused;
}

int grid_for(int64_t work, int per_block) {
  const int64_t want = (work + per_block - 1) / per_block;
  const int64_t cap = int64_t(cuda::sm_count()) * 32;
  return int(std::max<int64_t>(1, std::min(want, cap)));
}

// Words of f32 in `saved`: L (padded to 16 bytes), then O in the activation dtype unless the
// caller keeps `out` (AttentionSpec::kept_out).
struct SavedLayout {
  int64_t l_words, o_words;
  int64_t total() const { return l_words + o_words; }
};
SavedLayout saved_layout(int64_t B, int64_t T, int64_t H, int64_t C, DType dt, bool kept) {
  const int64_t l = (B * H * T + 3) / 4 * 4;
  const int64_t o_bytes = kept ? 0 : B * T * C * int64_t(dtype_size(dt));
  return {l, (o_bytes + 15) / 16 * 4};
}

struct Geometry {
  int64_t C, H, D;
};

Geometry check_common(const char* op, const Tensor& qkv, const Tensor& key_mask, int64_t B,
                      int64_t T, const AttentionSpec& spec) {
  cuda::expect_float(qkv, op);
  OFT_CHECK(B >= 1 && T >= 1, op, ": B and T must be positive (got B = ", B, ", T = ", T, ")");
  OFT_CHECK(qkv.ndim() == 2 && qkv.dim(0) == B * T && qkv.dim(1) % 3 == 0, op,
            ": qkv must be [B*T, 3C] = [", B * T, ", 3C]");
  const int64_t C = qkv.dim(1) / 3, H = spec.n_head;
  OFT_CHECK(H >= 1 && C % H == 0, op, ": model width ", C, " is not divisible by n_head = ", H);
  OFT_CHECK(B * H <= INT32_MAX && T <= INT32_MAX / 2 && B * T * 3 * C < (int64_t(1) << 40), op,
            ": problem too large");
  if (key_mask.defined()) {
    cuda::expect_dtype(key_mask, DType::I32, "attention key_mask");
    OFT_CHECK(key_mask.numel() == B * T, op, ": key_mask must have B*T = ", B * T,
              " entries, got ", key_mask.numel());
  }
  if (spec.prob == ProbFn::Clipped)
    OFT_CHECK(spec.gamma <= 0.0, op, ": clipped softmax needs gamma <= 0 (got ", spec.gamma, ")");
  return {C, H, C / H};
}

void expect_like(const Tensor& t, const Tensor& qkv, const Shape& shape, const char* what) {
  cuda::expect_float(t, what);
  OFT_CHECK(t.dtype() == qkv.dtype(), what, ": dtype ", dtype_name(t.dtype()),
            " differs from qkv's ", dtype_name(qkv.dtype()));
  OFT_CHECK(t.shape() == shape, what, ": wrong shape");
}

Args make_args(const Tensor& qkv, const Tensor& key_mask, int64_t B, int64_t T, const Geometry& g,
               const AttentionSpec& spec) {
  Args a;
  a.qkv = qkv.raw();
  a.mask = key_mask.defined() ? static_cast<const int32_t*>(key_mask.raw()) : nullptr;
  a.B = int(B);
  a.T = int(T);
  a.H = int(g.H);
  a.D = int(g.D);
  a.C = int(g.C);
  a.causal = spec.causal;
  a.prob = spec.prob == ProbFn::Clipped    ? cuda::attn::kClipped
           : spec.prob == ProbFn::Softmax1 ? cuda::attn::kSoftmax1
                                           : cuda::attn::kSoftmax;
  a.gamma = float(spec.gamma);
  a.span = float(spec.zeta - spec.gamma);
  // zeta <= 1: the upper clamp never binds (see attention_common.cuh), so never test it.
  a.clip_hi = spec.zeta <= 1.0 ? cuda::attn::kNoClipHi : 1.f;
  a.scale = float(1.0 / std::sqrt(double(g.D)));
  a.scale_log2 = float(1.4426950408889634 / std::sqrt(double(g.D)));
  return a;
}

bool quantized(const AttentionSpec& spec) {
  return spec.score_quant.enabled || spec.prob_quant.enabled || spec.score_range != nullptr ||
         spec.prob_range != nullptr;
}

// The gate of spec (null when none), checked against the problem.
const Tensor* checked_gate(const char* op, const AttentionSpec& spec, const Tensor& qkv,
                           int64_t rows, int64_t T, int64_t H) {
  if (!spec.gate) return nullptr;
  OFT_CHECK(spec.prob != ProbFn::Clipped && !quantized(spec), op,
            ": the head gate in the epilogue needs softmax or softmax1 and no quantization "
            "(see gate_in_epilogue)");
  OFT_CHECK(spec.gate_rows == 1 || spec.gate_rows == T || spec.gate_rows == rows, op,
            ": gate_rows = ", spec.gate_rows, " must be 1 (per token), T = ", T,
            " (per sequence) or B*T = ", rows, " (one gate per head)");
  expect_like(*spec.gate, qkv, {rows / spec.gate_rows, H}, "attention gate");
  return spec.gate;
}


}  // namespace

void CudaBackend::attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv,
                                const Tensor& key_mask, int64_t B, int64_t T,
                                const AttentionSpec& spec) {
  const char* op = "attention_fwd";
  const Geometry g = check_common(op, qkv, key_mask, B, T, spec);
  expect_like(out, qkv, {B * T, g.C}, "attention_fwd out");
  Args a = make_args(qkv, key_mask, B, T, g, spec);
  a.out = out.raw();
  if (const Tensor* gate = checked_gate(op, spec, qkv, B * T, T, g.H)) {
    a.gate = gate->raw();
    a.gate_kind = spec.gate_rows == 1
                      ? cuda::attn::kGatePerToken
                      : (spec.gate_rows == T ? cuda::attn::kGatePerSequence : cuda::attn::kGatePerHead);
  }

  // The rows' entropy (an outlier metric) on the device, copied to spec.entropy_rows after the
  // evaluation kernel wrote it.
  Tensor entropy;
  auto entropy_to_host = [&] {
    OFT_CUDA_CHECK(cudaMemcpyAsync(spec.entropy_rows, entropy.raw(), entropy.nbytes(),
                                   cudaMemcpyDeviceToHost, cuda::stream()));
    cuda::synchronize();
  };
  if (spec.entropy_rows) entropy = Tensor::empty({B * g.H * T}, DType::F64, Device::CUDA);

  if (quantized(spec)) {
    // Evaluation-only: no backward follows, so `saved` is left alone.
    cuda::attn::QuantArgs q;
    if (spec.entropy_rows) q.entropy = static_cast<double*>(entropy.raw());
    q.score_q = spec.score_quant.enabled;
    q.prob_q = spec.prob_quant.enabled;
    q.score_range = spec.score_range != nullptr;
    q.prob_range = spec.prob_range != nullptr;
    q.s_delta = spec.score_quant.delta;
    q.s_zp = spec.score_quant.zero_point;
    q.s_qmin = spec.score_quant.qmin;
    q.s_qmax = spec.score_quant.qmax;
    q.p_delta = spec.prob_quant.delta;
    q.p_zp = spec.prob_quant.zero_point;
    q.p_qmin = spec.prob_quant.qmin;
    q.p_qmax = spec.prob_quant.qmax;
    q.gamma = spec.gamma;
    q.zeta = spec.zeta;
    Tensor keys = Tensor::empty({4}, DType::F64, Device::CUDA);  // 4 x 64-bit keys
    const unsigned long long init[4] = {~0ull, 0ull, ~0ull, 0ull};
    OFT_CUDA_CHECK(cudaMemcpyAsync(keys.raw(), init, sizeof init, cudaMemcpyHostToDevice,
                                   cuda::stream()));
    auto* dkeys = static_cast<unsigned long long*>(keys.raw());
    cuda::attn::launch_fwd_quant(a, q, dkeys, qkv.dtype());
    if (spec.score_range || spec.prob_range) {
      unsigned long long host[4];
      OFT_CUDA_CHECK(cudaMemcpyAsync(host, dkeys, sizeof host, cudaMemcpyDeviceToHost,
                                     cuda::stream()));
      cuda::synchronize();
      if (spec.score_range) {
        spec.score_range[0] = cuda::from_order_key(host[0]);
        spec.score_range[1] = cuda::from_order_key(host[1]);
      }
      if (spec.prob_range) {
        spec.prob_range[0] = cuda::from_order_key(host[2]);
        spec.prob_range[1] = cuda::from_order_key(host[3]);
      }
    }
    if (spec.entropy_rows) entropy_to_host();
    return;
  }
  if (spec.entropy_rows) {  // a pass of the evaluation kernel for the entropy alone
    cuda::attn::QuantArgs q;
    q.gamma = spec.gamma;
    q.zeta = spec.zeta;
    q.entropy = static_cast<double*>(entropy.raw());
    q.skip_out = true;
    cuda::attn::launch_fwd_quant(a, q, nullptr, qkv.dtype());
    entropy_to_host();
  }

  // Clipped softmax saves O2, which `out` cannot stand in for.
  const bool kept = spec.kept_out != nullptr && spec.prob != ProbFn::Clipped;
  if (spec.kept_out)
    OFT_CHECK(spec.kept_out->raw() == out.raw(), op,
              ": AttentionSpec::kept_out must be the forward's own `out`");
  const SavedLayout sl = saved_layout(B, T, g.H, g.C, qkv.dtype(), kept);
  if (!saved.defined() || saved.device() != Device::CUDA || saved.dtype() != DType::F32 ||
      saved.shape() != Shape{sl.total()})
    saved = Tensor::empty({sl.total()}, DType::F32, Device::CUDA);
  float* sbase = static_cast<float*>(saved.raw());
  a.L = sbase;
  a.osave = kept ? nullptr : sbase + sl.l_words;

  if (qkv.dtype() == DType::BF16 && cuda::attn::mma_supported(a.D) && aligned16(qkv.raw()) &&
      aligned16(out.raw()) && (kept || aligned16(a.osave)))
    cuda::attn::launch_fwd_mma(a);
  else
    cuda::attn::launch_fwd_generic(a, qkv.dtype());
}

void CudaBackend::attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                                const Tensor& saved, const Tensor& key_mask, int64_t B, int64_t T,
                                const AttentionSpec& spec, Tensor* dsum) {
  const char* op = "attention_bwd";
  const Geometry g = check_common(op, qkv, key_mask, B, T, spec);
  expect_like(dqkv, qkv, {B * T, 3 * g.C}, "attention_bwd dqkv");
  expect_like(dout, qkv, {B * T, g.C}, "attention_bwd dout");
  const SavedLayout sl = saved_layout(B, T, g.H, g.C, qkv.dtype(), false);
  const SavedLayout sl_kept = saved_layout(B, T, g.H, g.C, qkv.dtype(), true);
  cuda::expect_dtype(saved, DType::F32, "attention_bwd saved");
  const bool kept = saved.shape() == Shape{sl_kept.total()};
  OFT_CHECK(kept || saved.shape() == Shape{sl.total()}, op,
            ": `saved` does not come from an attention_fwd of this shape and dtype (or that "
            "forward used quantization / range capture)");
  if (kept) {
    OFT_CHECK(spec.kept_out != nullptr, op,
              ": `saved` holds no copy of the output (its forward had AttentionSpec::kept_out): "
              "pass the forward's output as kept_out again");
    expect_like(*spec.kept_out, qkv, {B * T, g.C}, "attention_bwd kept_out");
  }
  OFT_CHECK(!dqkv.same_storage(qkv) && !dqkv.same_storage(dout), op,
            ": dqkv must not alias qkv or dout");
  if (dsum) {
    cuda::expect_dtype(*dsum, DType::F32, "attention_bwd dsum");
    OFT_CHECK(dsum->shape() == Shape{3 * g.C}, op, ": dsum must be [3C] = [", 3 * g.C, "]");
  }

  Args a = make_args(qkv, key_mask, B, T, g, spec);
  a.dout = dout.raw();
  a.dqkv = dqkv.raw();
  float* sbase = static_cast<float*>(saved.raw());
  a.L = sbase;
  a.osave = kept ? const_cast<void*>(spec.kept_out->raw()) : sbase + sl.l_words;
  Tensor Dv = Tensor::empty({B * g.H * T}, DType::F32, Device::CUDA);
  a.Dv = static_cast<float*>(Dv.raw());
  const float factor = spec.prob == ProbFn::Clipped ? a.span : 1.f;
  const int64_t rows = B * T;
  // With the gate, dout is the gated output's gradient: the row-term pass writes dgate and
  // L' = L - log2(g), which the kernels read instead of L.
  const Tensor* gate = checked_gate(op, spec, qkv, rows, T, g.H);
  Tensor Lg, r_rows;
  if (gate) {
    OFT_CHECK(spec.dgate != nullptr, op, ": a gate needs spec.dgate");
    expect_like(*spec.dgate, qkv, {rows / spec.gate_rows, g.H}, "attention dgate");
    Lg = Tensor::empty({sl.l_words}, DType::F32, Device::CUDA);
    if (spec.gate_rows > 1) r_rows = Tensor::empty({rows, g.H}, DType::F32, Device::CUDA);
  }
  const float* L = a.L;
  if (gate) a.L = static_cast<float*>(Lg.raw());
  // Several rows per gate: their shares of dgate, summed after the row-term pass.
  auto sum_gate_rows = [&] {
    if (!r_rows.defined()) return;
    const int64_t gates = rows / spec.gate_rows;
    OFT_DISPATCH_FLOAT(qkv.dtype(), op, {
      gate_grad_sum_kernel<T><<<grid_for(gates * g.H, 8), 256, 0, cuda::stream()>>>(
          static_cast<T*>(spec.dgate->raw()), static_cast<const float*>(r_rows.raw()), gates,
          spec.gate_rows, int(g.H));
      OFT_CUDA_LAUNCH_CHECK();
    });
  };

  const bool mma = qkv.dtype() == DType::BF16 && cuda::attn::mma_supported(a.D) &&
                   aligned16(qkv.raw()) && aligned16(dout.raw()) && aligned16(dqkv.raw()) &&
                   aligned16(a.osave);
  if (!mma) {
    OFT_DISPATCH_FLOAT(qkv.dtype(), op, {
      row_term_kernel<T><<<grid_for(rows * g.H, 8), 256, 0, cuda::stream()>>>(
          static_cast<const T*>(a.dout), static_cast<const T*>(a.osave), a.Dv, rows, a.T, a.H,
          a.D, factor, gate_args<T>(gate, spec, r_rows, L, Lg, kept));
      OFT_CUDA_LAUNCH_CHECK();
    });
    sum_gate_rows();
    cuda::attn::launch_bwd_generic(a, qkv.dtype());
    if (dsum) bias_grad(*dsum, dqkv);
    return;
  }
  // The Hopper kernel with the fused dQ store: the accumulator and tile counters come from the
  // zeroed workspace, which the kernel leaves zero, and the kernel stores dQ itself. Otherwise
  // D_i and a zeroed dQ accumulator in one pass, the kernel, then dQ into dqkv.
  Tensor acc;
  int* dq_count = nullptr;
  // (dq_acc is still null here, which passes wgmma_bwd_enabled's alignment test as the
  // workspace will: the workspace is only sized for calls that use it.)
  if (fused_dq_store() && cuda::attn::wgmma_bwd_enabled(a)) {
    const size_t acc_bytes = static_cast<size_t>(rows * g.C) * sizeof(float);
    if (void* ws = cuda::zeroed_workspace(acc_bytes + cuda::attn::dq_counters(a) * sizeof(int))) {
      a.dq_acc = static_cast<float*>(ws);
      dq_count = reinterpret_cast<int*>(static_cast<unsigned char*>(ws) + acc_bytes);
    }
  }
  if (dq_count == nullptr) {
    acc = Tensor::empty({rows, g.C}, DType::F32, Device::CUDA);
    a.dq_acc = static_cast<float*>(acc.raw());
  }
  using Bf = __nv_bfloat16;
  row_term_zero_kernel<<<grid_for(rows * g.C / 8, 256), 256, 0, cuda::stream()>>>(
      static_cast<const Bf*>(a.dout), static_cast<const Bf*>(a.osave), a.Dv,
      dq_count ? nullptr : a.dq_acc, rows, a.T, a.H, a.D, factor,
      gate_args<Bf>(gate, spec, r_rows, L, Lg, kept));
  OFT_CUDA_LAUNCH_CHECK();
  sum_gate_rows();
  // dsum: the kernels and the dQ store write partial column sums per 64 token rows (dqkv is not
  // read back); the dQ store's last blocks add them up (finish_partials), or, with the fused dQ
  // store, one reduction.
  Tensor part;
  const int64_t P = B * cuda::attn::bias_part_rows_per_seq(a.T);
  if (dsum) {
    part = Tensor::empty({int64_t(partial_floats(P, int(3 * g.C)))}, DType::F32, Device::CUDA);
    a.bias_part = static_cast<float*>(part.raw());
  }
  if (dq_count != nullptr) {
    cuda::attn::launch_bwd_wgmma(a, dq_count);
    if (dsum)
      reduce_partials(static_cast<float*>(dsum->raw()), nullptr, int(3 * g.C), a.bias_part,
                      int(P), int(3 * g.C));
    return;
  }
  cuda::attn::launch_bwd_mma(a);
  if (dsum) {
    PartialDsts d;
    d.add(static_cast<float*>(dsum->raw()), int(3 * g.C));
    dq_store_sum_kernel<<<dim3(unsigned(P), unsigned(cuda::ceil_div(g.C, 256))), dim3(32, 8), 0,
                          cuda::stream()>>>(static_cast<Bf*>(a.dqkv), a.dq_acc, a.bias_part, a.T,
                                            a.C, a.scale, partial_finish(d, a.bias_part, int(P)));
    OFT_CUDA_LAUNCH_CHECK();
    return;
  }
  dq_store_vec_kernel<<<grid_for(rows * g.C / 8, 256), 256, 0, cuda::stream()>>>(
      static_cast<Bf*>(a.dqkv), a.dq_acc, rows, a.C, a.scale);
  OFT_CUDA_LAUNCH_CHECK();
}

bool CudaBackend::gate_in_epilogue(const AttentionSpec& spec, DType dt) const {
  (void)dt;
  return spec.prob != ProbFn::Clipped && !quantized(spec);
}

}  // namespace oft::ops
