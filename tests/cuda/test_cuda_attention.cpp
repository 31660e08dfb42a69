// Fused attention on the GPU vs the CPU oracle: forward output and backward dqkv for f32 and
// bf16, every probability function (softmax, softmax1, two clipped softmaxes), causal and
// bidirectional attention with padding masks (including rows that see no key at all), head
// widths on the tensor-core path (16, 32, 64, 128) and off it (8, 24, 256), sequence lengths that
// are not multiples of the 64-row tiles; the evaluation path with fake quantization and range
// capture; the backward's column sums of dqkv (dsum); the backward reading the caller's output
// instead of a saved copy (AttentionSpec::kept_out); `saved` reuse across shapes; the Hopper
// backward's zeroed workspace across shapes and CUDA graphs; hand-built
// inputs that put clipped-softmax
// probabilities exactly on the clamp bound (p = 1, zeta = 1); and a timing report at the GPT-2
// shape.
//
// Tolerances: tol_for(dtype) (1e-5 f32, 1e-2 bf16). For bf16 the kernels also round the
// probabilities and dS to bf16 for the tensor-core products (as FlashAttention does); that adds
// ~1e-3 relative error, well inside 1e-2 even for rows of 300 keys (the rounding errors are
// independent per key and average out). Fake-quantized outputs in f32 are compared at 1e-3:
// a score or probability that lies on a rounding boundary of the quantizer may round the other
// way after a last-bit difference in the dot product, moving one probability by a whole step.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "ops/device_graph.h"

namespace oft::testing {
namespace {

using ops::AttentionSpec;
using ops::ProbFn;

struct Dims {
  int64_t B, T, H, D;
};
struct ProbCase {
  const char* name;
  ProbFn prob;
  double gamma, zeta;
};
const ProbCase kProbs[] = {{"softmax", ProbFn::Softmax, 0.0, 1.0},
                           {"softmax1", ProbFn::Softmax1, 0.0, 1.0},
                           {"clipped(-0.025:1)", ProbFn::Clipped, -0.025, 1.0},
                           {"clipped(-0.1:1.1)", ProbFn::Clipped, -0.1, 1.1}};

enum class Mode { Causal, BidirMasked, CausalMasked };
const char* mode_name(Mode m) {
  return m == Mode::Causal ? "causal" : (m == Mode::BidirMasked ? "bidirectional+mask" : "causal+mask");
}

// Padding mask [B*T]: the last sequence loses its last third and its first key (so with causal
// attention its first row sees nothing), odd sequences lose their tail, even ones random keys.
Tensor make_mask(int64_t B, int64_t T) {
  const std::vector<double> r = randint({B * T}, 0, 100).to_vector();
  std::vector<double> v(static_cast<size_t>(B * T), 1.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      double& x = v[static_cast<size_t>(b * T + t)];
      if (b == B - 1)
        x = (t == 0 || t >= T - T / 3) ? 0 : 1;
      else if (b % 2 == 1)
        x = t >= (2 * T) / 3 + 1 ? 0 : 1;
      else
        x = r[static_cast<size_t>(b * T + t)] < 12 ? 0 : 1;
    }
  return Tensor::from_vector({B * T}, v, DType::I32);
}

AttentionSpec make_spec(const Dims& d, const ProbCase& pc, Mode m) {
  AttentionSpec s;
  s.n_head = static_cast<int>(d.H);
  s.causal = m != Mode::BidirMasked;
  s.prob = pc.prob;
  s.gamma = pc.gamma;
  s.zeta = pc.zeta;
  return s;
}

std::string label(DType dt, const Dims& d, const ProbCase& pc, Mode m) {
  return std::string(dtype_label(dt)) + " B=" + std::to_string(d.B) + " T=" + std::to_string(d.T) +
         " H=" + std::to_string(d.H) + " D=" + std::to_string(d.D) + " " + pc.name + " " +
         mode_name(m);
}

// Forward and backward of one configuration on both backends, on the given inputs (f32 CPU
// tensors; the CPU sees them rounded to dt); `gsaved` is the GPU's state tensor (may come in
// defined, from another shape).
void compare_fwd_bwd(DType dt, const Dims& d, const AttentionSpec& spec, const Tensor& qkv,
                     const Tensor& dout, const Tensor& mask, Tensor& gsaved) {
  const int64_t C = d.H * d.D, N = d.B * d.T;
  const Tensor qkv_r = rounded(qkv, dt), dout_r = rounded(dout, dt);

  auto& cpu = ops::cpu_backend();
  Tensor out_ref = Tensor::empty({N, C}, DType::F32), saved_ref;
  cpu.attention_fwd(out_ref, saved_ref, qkv_r, mask, d.B, d.T, spec);
  Tensor dqkv_ref = Tensor::empty({N, 3 * C}, DType::F32);
  cpu.attention_bwd(dqkv_ref, dout_r, qkv_r, saved_ref, mask, d.B, d.T, spec);

  auto& gpu = ops::backend(Device::CUDA);
  const Tensor gqkv = to_gpu(qkv, dt), gdout = to_gpu(dout, dt);
  const Tensor gmask = mask.defined() ? mask.to(Device::CUDA) : Tensor();
  Tensor gout = poisoned({N, C}, dt);
  gpu.attention_fwd(gout, gsaved, gqkv, gmask, d.B, d.T, spec);
  EXPECT_GPU_CLOSE(gout, out_ref, tol_for(dt));
  Tensor gdqkv = poisoned({N, 3 * C}, dt);
  gpu.attention_bwd(gdqkv, gdout, gqkv, gsaved, gmask, d.B, d.T, spec);
  EXPECT_GPU_CLOSE(gdqkv, dqkv_ref, tol_for(dt));

  // dsum: the column sums of dqkv (the qkv bias gradient) added to what dsum holds; the
  // tensor-core path takes them from its tiles, so they are checked against the oracle's dqkv.
  const Tensor dsum0 = randn({3 * C});
  Tensor dsum_ref = dsum0.clone();
  cpu.bias_grad(dsum_ref, dqkv_ref);
  Tensor gdsum = dsum0.to(Device::CUDA), gdqkv2 = poisoned({N, 3 * C}, dt);
  gpu.attention_bwd(gdqkv2, gdout, gqkv, gsaved, gmask, d.B, d.T, spec, &gdsum);
  EXPECT_GPU_CLOSE(gdsum, dsum_ref, tol_for(dt)) << "attention_bwd dsum";
  EXPECT_GPU_CLOSE(gdqkv2, dqkv_ref, tol_for(dt)) << "dqkv with dsum";

  // AttentionSpec::kept_out: `saved` keeps no copy of the output (softmax / softmax1) and the
  // backward reads the forward's `out` again.
  AttentionSpec kspec = spec;
  Tensor kout = poisoned({N, C}, dt), ksaved;
  kspec.kept_out = &kout;
  gpu.attention_fwd(kout, ksaved, gqkv, gmask, d.B, d.T, kspec);
  EXPECT_GPU_CLOSE(kout, out_ref, tol_for(dt)) << "forward with kept_out";
  if (spec.prob == ProbFn::Clipped)
    EXPECT_EQ(ksaved.numel(), gsaved.numel()) << "clipped softmax keeps O2";
  else
    EXPECT_LT(ksaved.numel(), gsaved.numel()) << "kept_out: L only";
  Tensor kdqkv = poisoned({N, 3 * C}, dt);
  gpu.attention_bwd(kdqkv, gdout, gqkv, ksaved, gmask, d.B, d.T, kspec);
  EXPECT_GPU_CLOSE(kdqkv, dqkv_ref, tol_for(dt)) << "backward with kept_out";
}

// One configuration on fresh random inputs.
void check_fwd_bwd(DType dt, const Dims& d, const ProbCase& pc, Mode m, Tensor& gsaved) {
  SCOPED_TRACE(label(dt, d, pc, m));
  const int64_t C = d.H * d.D, N = d.B * d.T;
  const AttentionSpec spec = make_spec(d, pc, m);
  const Tensor qkv = randn({N, 3 * C}, 1.5), dout = randn({N, C});
  const Tensor mask = m == Mode::Causal ? Tensor() : make_mask(d.B, d.T);
  compare_fwd_bwd(dt, d, spec, qkv, dout, mask, gsaved);
}

// Tensor-core widths (bf16: mma path), an odd width and a tiny / wide one (generic path).
const Dims kShapes[] = {{2, 128, 2, 64}, {1, 77, 3, 32}, {2, 200, 2, 16}, {1, 1, 1, 64},
                        {1, 300, 2, 128}, {2, 50, 2, 24}, {3, 37, 2, 8},  {1, 70, 1, 256}};

void check_all(DType dt) {
  for (const Dims& d : kShapes)
    for (const ProbCase& pc : kProbs)
      for (Mode m : {Mode::Causal, Mode::BidirMasked, Mode::CausalMasked}) {
        Tensor saved;
        check_fwd_bwd(dt, d, pc, m, saved);
      }
}

TEST(CudaAttention, ForwardBackwardMatchCpuF32) {
  OFT_REQUIRE_CUDA();
  check_all(DType::F32);
}

TEST(CudaAttention, ForwardBackwardMatchCpuBF16) {
  OFT_REQUIRE_CUDA();
  check_all(DType::BF16);
}

// Sequence lengths around the 64-row tile (and the 128-key / 128-query tiles of the 8-warp
// backward, OFT_ATTN_TUNE=...,8, and of the Hopper kernels) and multi-tile rows with every
// mask, bf16 fast path. With OFT_ATTN_WGMMA=all on sm_90 (scripts/gpu_check.sh tests), T = 60,
// 100 and 196 (T % 4 == 0, a partial last tile; at 60 the TMA boxes are taller than the tensor)
// run the Hopper backward's TMA kernel.
TEST(CudaAttention, TileBoundariesBF16) {
  OFT_REQUIRE_CUDA();
  for (int64_t T : {60, 63, 64, 65, 100, 127, 129, 192, 196, 255, 320})
    for (Mode m : {Mode::Causal, Mode::BidirMasked, Mode::CausalMasked}) {
      Tensor saved;
      check_fwd_bwd(DType::BF16, {2, T, 2, 64}, kProbs[0], m, saved);
      check_fwd_bwd(DType::BF16, {1, T, 1, 32}, kProbs[3], m, saved);
      // softmax1 over several 128-key tiles of the Hopper forward (D = 64)
      if (T > 128) check_fwd_bwd(DType::BF16, {1, T, 2, 64}, kProbs[1], m, saved);
      // clipped softmax on the Hopper kernels (D = 64): two passes, key halves of 64
      check_fwd_bwd(DType::BF16, {1, T, 2, 64}, kProbs[2], m, saved);
    }
}

// The Hopper clipped forward skips key halves whose rows all stay below the clip threshold
// (attention_wgmma.cu), for up to 16 key tiles of 128 (T <= 2048), with the peaked scores of
// check_fwd_bwd's inputs (some halves live off the diagonal, most not) and with a mask. Under
// the default OFT_ATTN_WGMMA=auto the Hopper forward takes only grids of at least 4 CTAs per SM
// (wgmma_fwd_enabled): 12 x 12 heads of 4 query tiles make 576, enough for 132 SMs. Long rows
// of 1024 keys, and of 2100 (over 16 tiles: no skipping), with a few heads reach it under
// OFT_ATTN_WGMMA=all (scripts/gpu_check.sh).
TEST(CudaAttention, ClippedLongRowsBF16) {
  OFT_REQUIRE_CUDA();
  for (Mode m : {Mode::Causal, Mode::BidirMasked}) {
    Tensor saved;
    check_fwd_bwd(DType::BF16, {12, 512, 12, 64}, kProbs[2], m, saved);
    for (int64_t T : {1024, 2100}) {
      check_fwd_bwd(DType::BF16, {1, T, 2, 64}, kProbs[2], m, saved);
      check_fwd_bwd(DType::BF16, {1, T, 1, 64}, kProbs[3], m, saved);
    }
  }
}

// Clipped softmax with zeta = 1 where a probability is exactly 1: raw = (zeta - gamma) p + gamma
// lands exactly on the upper clamp bound 1. The forward gets p = 1 exactly, the backward
// recomputes p = exp2(x * scale_log2 - L) and, if the compiler fuses that into one FMA, gets
// exp2(rounding residual of x) = 1 + a few ulp for a positive residual. Before the kernels
// stopped testing the vacuous upper bound for zeta <= 1 (Args::clip_hi), that switched dp off
// in the backward but not in the forward's O2 / D_i, so dS = -D_i instead of 0 (relative dqkv
// errors of 0.1 - 0.3 in the random bf16 cases with single-key rows).
// Inputs: T = 3 keys, k_t = b_t e_t, q_t = a_t e_t + noise in dimensions >= T (where every k is
// 0), so q_i . k_j = 0 for i != j and q_t . k_t = a_t b_t exactly (bf16 a, b): the diagonal score
// x = a b scale_log2 lies in [32, 64) and dominates its row (the other keys get p ~ 2^-32, so
// p rounds to 1 on both sides), and (a, b) are chosen so that the rounding residual of x is
// positive and at least a quarter ulp (exp2 of it is 1 + 5 ulp, well above ex2.approx's error).
// Rows: the first causal row (one visible key), a row whose earlier key is padding (one visible
// key under causal+mask), and rows with a dominant diagonal key (every mode).
Tensor clip_boundary_qkv(const Dims& d) {
  const int64_t C = d.H * d.D, N = d.B * d.T;
  const float sl = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(d.D)));
  std::vector<std::pair<double, double>> ab;  // (a, b) on the bf16 grid of [8, 16) (step 1/16)
  for (int i = 0; i < 128 && ab.size() < 64; ++i)
    for (int j = 0; j < 128 && ab.size() < 64; j += 7) {
      const double a = 8 + i / 16.0, b = 8 + j / 16.0;
      const float s = static_cast<float>(a * b);  // exact: 16 significant bits
      const float x = s * sl;
      if (x < 32.f || x >= 64.f) continue;
      const double residual = static_cast<double>(s) * sl - x;  // exact product minus rounded
      if (residual >= 0.25 * std::ldexp(1.0, -18)) ab.emplace_back(a, b);  // ulp(x) = 2^-18
    }
  EXPECT_GE(ab.size(), 16u) << "too few (a, b) pairs with a positive score rounding residual";
  if (ab.empty()) ab.emplace_back(12.0, 12.0);
  std::vector<double> v = randn({N, 3 * C}).to_vector();  // v columns and the q noise stay
  size_t next = 0;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t t = 0; t < d.T; ++t)
      for (int64_t h = 0; h < d.H; ++h) {
        const auto [qa, kb] = ab[next++ % ab.size()];
        double* row = v.data() + (b * d.T + t) * 3 * C;
        for (int64_t e = 0; e < d.D; ++e) {
          double& q = row[h * d.D + e];
          if (e < d.T) q = e == t ? qa : 0.0;
          row[C + h * d.D + e] = e == t ? kb : 0.0;
        }
      }
  return rounded(Tensor::from_vector({N, 3 * C}, v, DType::F32), DType::BF16);
}

TEST(CudaAttention, ClippedGradientAtProbabilityOne) {
  OFT_REQUIRE_CUDA();
  const ProbCase pc = kProbs[2];  // clipped(-0.025:1): zeta = 1
  for (DType dt : {DType::F32, DType::BF16})
    // bf16: tensor-core (32, and 64: the Hopper kernels with T = 4 under OFT_ATTN_WGMMA=all)
    // and CUDA-core (24) kernels
    for (int64_t D : {32, 24, 64})
      for (Mode m : {Mode::Causal, Mode::BidirMasked, Mode::CausalMasked}) {
        const Dims d{2, D == 64 ? 4 : 3, 2, D};
        SCOPED_TRACE(label(dt, d, pc, m));
        // Sequence 1 loses key 0: causal+mask row 0 sees nothing, row 1 only its own key.
        std::vector<double> keep(static_cast<size_t>(d.B * d.T), 1.0);
        keep[static_cast<size_t>(d.T)] = 0.0;
        const Tensor mask = m == Mode::Causal
                                ? Tensor()
                                : Tensor::from_vector({d.B * d.T}, keep, DType::I32);
        Tensor saved;
        compare_fwd_bwd(dt, d, make_spec(d, pc, m), clip_boundary_qkv(d),
                        randn({d.B * d.T, d.H * d.D}), mask, saved);
      }
}

// The head gate in the epilogue (AttentionSpec::gate) against the CPU composition attention ->
// head_gate_fwd, and its backward head_gate_bwd -> attention_bwd: the gated output, dqkv and
// dgate, for a gate per token, per sequence and per head (one for all rows). Tensor-core widths
// (64: the Hopper kernels under OFT_ATTN_WGMMA=all; 32) and CUDA-core ones (24), f32 and bf16,
// softmax and softmax1, causal and masked, with the ungated copy in `saved` and with kept_out
// (the backward divides the gate out of the gated output). Gates are sigmoid outputs, in
// (0, 1), as in the models, and with one gate per row every seventh is 0: a closed gate's rows
// get no gradient into qkv, and with kept_out dgate = 0 there (the CPU oracle's dgate is set to 0
// on those rows). Negative gates are outside the op's contract (ops.h) and give NaN gradients.
TEST(CudaAttention, GateInEpilogueMatchesSeparateGate) {
  OFT_REQUIRE_CUDA();
  auto& cpu = ops::cpu_backend();
  auto& gpu = ops::backend(Device::CUDA);
  const Dims shapes[] = {{2, 130, 2, 64}, {1, 77, 3, 32}, {2, 50, 2, 24}};
  for (DType dt : {DType::F32, DType::BF16})
    for (const Dims& d : shapes)
      for (const ProbCase& pc : {kProbs[0], kProbs[1]})
        for (Mode m : {Mode::Causal, Mode::BidirMasked})
          for (int64_t per : {int64_t(1), d.T, d.B * d.T})
            for (bool kept : {false, true}) {
              SCOPED_TRACE(label(dt, d, pc, m) + " rows per gate " + std::to_string(per) +
                           (kept ? " kept_out" : ""));
              const int64_t C = d.H * d.D, N = d.B * d.T, R = N / per;
              AttentionSpec spec = make_spec(d, pc, m);
              ASSERT_TRUE(gpu.gate_in_epilogue(spec, dt));
              const Tensor qkv = rounded(randn({N, 3 * C}, 1.5), dt);
              const Tensor dout = rounded(randn({N, C}), dt);
              Tensor gate;
              {
                std::vector<double> gv = randn({R, d.H}).to_vector();
                for (size_t i = 0; i < gv.size(); ++i)  // sigmoid gates, some closed
                  gv[i] = (per == 1 && i % 7 == 0) ? 0.0 : 1.0 / (1.0 + std::exp(-gv[i]));
                gate = rounded(Tensor::from_vector({R, d.H}, gv, DType::F32), dt);
              }
              const Tensor mask = m == Mode::Causal ? Tensor() : make_mask(d.B, d.T);
              // CPU: the separate gate.
              Tensor ctx = Tensor::empty({N, C}, DType::F32), saved, out = ctx.clone();
              cpu.attention_fwd(ctx, saved, qkv, mask, d.B, d.T, spec);
              cpu.head_gate_fwd(out, ctx, gate, per);
              Tensor dctx = Tensor::empty({N, C}, DType::F32);
              Tensor dgate = Tensor::empty({R, d.H}, DType::F32);
              // dgate from the context as the GPU keeps it (rounded to dt): with one gate for
              // many rows it is a sum of N * D products of random sign, whose cancellation would
              // magnify the rounding of O well past tol_for(dt).
              cpu.head_gate_bwd(dctx, dgate, dout, rounded(ctx, dt), gate, per);
              if (kept) {
                // A closed gate's gradient is taken as 0 with kept_out (sigmoid' = 0 there).
                std::vector<double> gv = gate.to_vector(), dg = dgate.to_vector();
                for (size_t i = 0; i < gv.size(); ++i)
                  if (gv[i] == 0.0) dg[i] = 0.0;
                dgate = Tensor::from_vector({R, d.H}, dg, DType::F32);
              }
              Tensor dqkv = Tensor::empty({N, 3 * C}, DType::F32);
              cpu.attention_bwd(dqkv, dctx, qkv, saved, mask, d.B, d.T, spec);
              // GPU: the gate in the epilogue.
              const Tensor ggate = to_gpu(gate, dt), gqkv = to_gpu(qkv, dt);
              const Tensor gmask = mask.defined() ? mask.to(Device::CUDA) : Tensor();
              Tensor gout = poisoned({N, C}, dt), gsaved, gdgate = poisoned({R, d.H}, dt);
              spec.gate = &ggate;
              spec.dgate = &gdgate;
              spec.gate_rows = per;
              if (kept) spec.kept_out = &gout;
              gpu.attention_fwd(gout, gsaved, gqkv, gmask, d.B, d.T, spec);
              EXPECT_GPU_CLOSE(gout, out, tol_for(dt));
              Tensor gdqkv = poisoned({N, 3 * C}, dt);
              gpu.attention_bwd(gdqkv, to_gpu(dout, dt), gqkv, gsaved, gmask, d.B, d.T, spec);
              EXPECT_GPU_CLOSE(gdqkv, dqkv, tol_for(dt));
              EXPECT_GPU_CLOSE(gdgate, dgate, tol_for(dt));
            }
  // Clipped softmax saves O2, not the output: no gate in its epilogue, and a clear refusal.
  AttentionSpec clipped = make_spec({1, 8, 1, 32}, kProbs[2], Mode::Causal);
  EXPECT_FALSE(gpu.gate_in_epilogue(clipped, DType::BF16));
  const Tensor ggate = to_gpu(Tensor::zeros({8, 1}, DType::F32), DType::BF16);
  clipped.gate = &ggate;
  Tensor gout = poisoned({8, 32}, DType::BF16), gsaved;
  EXPECT_THROW(gpu.attention_fwd(gout, gsaved, to_gpu(randn({8, 96}), DType::BF16), Tensor(), 1,
                                 8, clipped),
               Error);
  // A negative gate (outside the contract: gates are sigmoid outputs) poisons its rows'
  // gradients with NaN instead of giving wrong finite values.
  {
    const Dims d{1, 16, 1, 32};
    AttentionSpec neg = make_spec(d, kProbs[0], Mode::Causal);
    std::vector<double> gv(16, 0.5);
    gv[5] = -0.5;
    const Tensor gneg = to_gpu(Tensor::from_vector({16, 1}, gv, DType::F32), DType::F32);
    Tensor gdg = poisoned({16, 1}, DType::F32), nout = poisoned({16, 32}, DType::F32), nsaved;
    neg.gate = &gneg;
    neg.dgate = &gdg;
    const Tensor nqkv = to_gpu(randn({16, 96}), DType::F32);
    gpu.attention_fwd(nout, nsaved, nqkv, Tensor(), 1, 16, neg);
    Tensor ndqkv = poisoned({16, 96}, DType::F32);
    gpu.attention_bwd(ndqkv, to_gpu(randn({16, 32}), DType::F32), nqkv, nsaved, Tensor(), 1, 16,
                      neg);
    EXPECT_FALSE(std::isfinite(rel_err(ndqkv, Tensor::zeros({16, 96}, DType::F32))));
  }
  // Rows per gate other than 1 (per token), T (per sequence) or B*T (one per head).
  AttentionSpec odd = make_spec({1, 8, 1, 32}, kProbs[0], Mode::Causal);
  odd.gate = &ggate;
  odd.gate_rows = 3;
  EXPECT_THROW(gpu.attention_fwd(gout, gsaved, to_gpu(randn({8, 96}), DType::BF16), Tensor(), 1,
                                 8, odd),
               Error);
}

// attention_bwd's dsum must be f32 [3C]: other shapes and dtypes are refused before any kernel.
TEST(CudaAttention, BackwardDsumChecked) {
  OFT_REQUIRE_CUDA();
  auto& gpu = ops::backend(Device::CUDA);
  const int64_t B = 1, T = 8, H = 1, D = 32, C = H * D;
  const AttentionSpec spec = make_spec({B, T, H, D}, kProbs[0], Mode::Causal);
  const Tensor qkv = to_gpu(randn({B * T, 3 * C}), DType::BF16);
  Tensor out = poisoned({B * T, C}, DType::BF16), saved;
  gpu.attention_fwd(out, saved, qkv, Tensor(), B, T, spec);
  Tensor dqkv = poisoned({B * T, 3 * C}, DType::BF16);
  const Tensor dout = to_gpu(randn({B * T, C}), DType::BF16);
  Tensor short_sum = Tensor::zeros({C}, DType::F32, Device::CUDA);
  EXPECT_THROW(gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec, &short_sum), Error);
  Tensor bf_sum = Tensor::zeros({3 * C}, DType::BF16, Device::CUDA);
  EXPECT_THROW(gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec, &bf_sum), Error);
}

// kept_out must be the forward's own output, and a backward whose `saved` has no copy of the
// output must be given it: both are refused with a message before any kernel runs.
TEST(CudaAttention, KeptOutChecked) {
  OFT_REQUIRE_CUDA();
  auto& gpu = ops::backend(Device::CUDA);
  const int64_t B = 1, T = 8, H = 1, D = 32, C = H * D;
  AttentionSpec spec = make_spec({B, T, H, D}, kProbs[0], Mode::Causal);
  const Tensor qkv = to_gpu(randn({B * T, 3 * C}), DType::BF16);
  Tensor out = poisoned({B * T, C}, DType::BF16), other = poisoned({B * T, C}, DType::BF16), saved;
  spec.kept_out = &other;
  EXPECT_THROW(gpu.attention_fwd(out, saved, qkv, Tensor(), B, T, spec), Error);
  spec.kept_out = &out;
  gpu.attention_fwd(out, saved, qkv, Tensor(), B, T, spec);
  Tensor dqkv = poisoned({B * T, 3 * C}, DType::BF16);
  const Tensor dout = to_gpu(randn({B * T, C}), DType::BF16);
  spec.kept_out = nullptr;
  try {
    gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec);
    ADD_FAILURE() << "a backward without kept_out after a kept forward ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kept_out"), std::string::npos) << e.what();
  }
}

// `saved` handed back in with another shape / dtype / probability function is reallocated.
TEST(CudaAttention, SavedIsReusedAcrossShapes) {
  OFT_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor saved;
    check_fwd_bwd(dt, {2, 64, 2, 32}, kProbs[0], Mode::Causal, saved);
    ASSERT_TRUE(saved.defined());
    const int64_t first = saved.numel();
    check_fwd_bwd(dt, {1, 100, 2, 64}, kProbs[2], Mode::BidirMasked, saved);
    EXPECT_NE(saved.numel(), first);
    check_fwd_bwd(dt, {2, 64, 2, 32}, kProbs[1], Mode::CausalMasked, saved);
    EXPECT_EQ(saved.numel(), first);
    check_fwd_bwd(dt, {2, 64, 2, 32}, kProbs[3], Mode::Causal, saved);  // same shape: reused
  }
}

// The Hopper backward's fused dQ store keeps its accumulator and tile counters in a workspace
// that every call must leave at zero: backwards of shapes that grow and shrink the workspace, in
// every mask mode, must each match the CPU; so must a backward recorded into a CUDA graph while
// the workspace would have to grow (it takes the two-pass path then), one recorded when it fits
// (replayed several times: each replay starts from the zeros the last one left), and a replay
// of that graph after an eager call grew the workspace again (the recorded buffer is kept).
// (Shapes with D = 64 and T >= 256 run the Hopper backward on sm_90, with the workspace under
// OFT_ATTN_DQ_STORE=fused, as scripts/gpu_check.sh runs it; elsewhere this checks the same
// sequence on the other paths.)
TEST(CudaAttention, BackwardWorkspaceAcrossCallsAndGraphs) {
  OFT_REQUIRE_CUDA();
  const Dims small{2, 260, 2, 64}, large{2, 512, 3, 64};
  for (const Dims& d : {small, large, small})
    for (Mode m : {Mode::Causal, Mode::BidirMasked, Mode::CausalMasked}) {
      Tensor saved;
      check_fwd_bwd(DType::BF16, d, kProbs[0], m, saved);
    }
  auto& cpu = ops::cpu_backend();
  auto& gpu = ops::backend(Device::CUDA);
  // One recorded backward at shape d, replayed `replays` times, each compared with the CPU.
  struct Recorded {
    ops::DeviceGraph graph;
    Tensor gqkv, gdout, gsaved, gdqkv, ref;
  };
  auto record = [&](const Dims& d, Recorded& r) {
    const int64_t C = d.H * d.D, N = d.B * d.T;
    const AttentionSpec spec = make_spec(d, kProbs[0], Mode::Causal);
    const Tensor qkv = rounded(randn({N, 3 * C}, 1.5), DType::BF16);
    const Tensor dout = rounded(randn({N, C}), DType::BF16);
    Tensor out_ref = Tensor::empty({N, C}, DType::F32), saved_ref;
    cpu.attention_fwd(out_ref, saved_ref, qkv, Tensor(), d.B, d.T, spec);
    r.ref = Tensor::empty({N, 3 * C}, DType::F32);
    cpu.attention_bwd(r.ref, dout, qkv, saved_ref, Tensor(), d.B, d.T, spec);
    r.gqkv = to_gpu(qkv, DType::BF16);
    r.gdout = to_gpu(dout, DType::BF16);
    Tensor gout = poisoned({N, C}, DType::BF16);
    gpu.attention_fwd(gout, r.gsaved, r.gqkv, Tensor(), d.B, d.T, spec);
    r.gdqkv = poisoned({N, 3 * C}, DType::BF16);
    r.graph.begin_capture();
    gpu.attention_bwd(r.gdqkv, r.gdout, r.gqkv, r.gsaved, Tensor(), d.B, d.T, spec);
    r.graph.end_capture();
  };
  auto replay = [&](Recorded& r, int times, const char* what) {
    for (int i = 0; i < times; ++i) {
      gpu.fill(r.gdqkv, std::nan(""));
      r.graph.launch();
      EXPECT_GPU_CLOSE(r.gdqkv, r.ref, tol_for(DType::BF16)) << what << ", replay " << i;
    }
  };
  Recorded grown, fits;
  record({2, 1024, 4, 64}, grown);  // past every earlier shape: no workspace inside the recording
  replay(grown, 2, "recorded where the workspace would have had to grow");
  record(small, fits);
  replay(fits, 3, "recorded with the workspace");
  Tensor saved;
  check_fwd_bwd(DType::BF16, {3, 1024, 4, 64}, kProbs[0], Mode::Causal, saved);  // grows it
  replay(fits, 2, "replayed after the workspace grew");
}

// Evaluation path: fake quantization of scores / probabilities and range capture.
TEST(CudaAttention, QuantizedAndRangeForwardMatchCpu) {
  OFT_REQUIRE_CUDA();
  const Dims shapes[] = {{2, 70, 2, 32}, {1, 45, 3, 24}, {1, 1, 1, 16}};
  const ProbCase probs[] = {kProbs[0], kProbs[1], kProbs[3]};
  for (DType dt : {DType::F32, DType::BF16})
    for (const Dims& d : shapes)
      for (const ProbCase& pc : probs)
        for (Mode m : {Mode::Causal, Mode::BidirMasked})
          for (int variant = 0; variant < 3; ++variant) {
            // 0: both quantizers + both ranges; 1: ranges only; 2: probability quantizer only
            SCOPED_TRACE(label(dt, d, pc, m) + " variant " + std::to_string(variant));
            const int64_t C = d.H * d.D, N = d.B * d.T;
            AttentionSpec spec = make_spec(d, pc, m);
            if (variant == 0) spec.score_quant = {true, 1.0 / 16, 0.0, -64.0, 63.0};
            if (variant != 1) spec.prob_quant = {true, 1.0 / 256, 0.0, 0.0, 255.0};
            double sr_cpu[2] = {0, 0}, pr_cpu[2] = {0, 0}, sr_gpu[2] = {0, 0}, pr_gpu[2] = {0, 0};
            const Tensor qkv = randn({N, 3 * C}, 1.5);
            const Tensor mask = m == Mode::Causal ? Tensor() : make_mask(d.B, d.T);
            Tensor out_ref = Tensor::empty({N, C}, DType::F32), saved_ref;
            if (variant != 2) {
              spec.score_range = sr_cpu;
              spec.prob_range = pr_cpu;
            }
            ops::cpu_backend().attention_fwd(out_ref, saved_ref, rounded(qkv, dt), mask, d.B,
                                             d.T, spec);
            if (variant != 2) {
              spec.score_range = sr_gpu;
              spec.prob_range = pr_gpu;
            }
            Tensor gout = poisoned({N, C}, dt), gsaved;
            ops::backend(Device::CUDA)
                .attention_fwd(gout, gsaved, to_gpu(qkv, dt),
                               mask.defined() ? mask.to(Device::CUDA) : Tensor(), d.B, d.T, spec);
            const double tol = variant == 1 ? tol_for(dt) : std::max(tol_for(dt), 1e-3);
            EXPECT_GPU_CLOSE(gout, out_ref, tol);
            if (variant != 2) {
              for (int k = 0; k < 2; ++k) {
                EXPECT_NEAR(sr_gpu[k], sr_cpu[k], tol_for(dt) * std::max(1.0, std::fabs(sr_cpu[k])))
                    << "score range " << k;
                EXPECT_NEAR(pr_gpu[k], pr_cpu[k], tol_for(dt) * std::max(1.0, std::fabs(pr_cpu[k])))
                    << "prob range " << k;
              }
            }
          }
}

// Timing at the GPT-2 small shape (B=16, T=1024, H=12, D=64, causal, bf16). Prints only.
TEST(CudaAttentionBench, Timing) {
  OFT_REQUIRE_CUDA();
  const int64_t B = 16, T = 1024, H = 12, D = 64, C = H * D, N = B * T;
  const Tensor qkv = to_gpu(randn({N, 3 * C}), DType::BF16);
  const Tensor dout = to_gpu(randn({N, C}), DType::BF16);
  Tensor out = Tensor::empty({N, C}, DType::BF16, Device::CUDA);
  Tensor dqkv = Tensor::empty({N, 3 * C}, DType::BF16, Device::CUDA);
  Tensor saved;
  auto& gpu = ops::backend(Device::CUDA);
  const double fwd_flops = 2.0 * 2.0 * B * H * double(T) * T * D / 2.0, bwd_flops = 2.5 * fwd_flops;
  cudaEvent_t start, stop;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  const int iters = 20;
  // Mean time of `iters` runs of f on the op stream, in ms.
  auto time_ms = [&](auto&& f) {
    float ms = 0;
    EXPECT_EQ(cudaEventRecord(start, cuda::stream()), cudaSuccess);
    for (int i = 0; i < iters; ++i) f();
    EXPECT_EQ(cudaEventRecord(stop, cuda::stream()), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(stop), cudaSuccess);
    EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
    return ms / iters;
  };
  Tensor dsum = Tensor::zeros({3 * C}, DType::F32, Device::CUDA);
  for (const ProbCase& pc : {kProbs[0], kProbs[2]}) {
    AttentionSpec spec = make_spec({B, T, H, D}, pc, Mode::Causal);
    gpu.attention_fwd(out, saved, qkv, Tensor(), B, T, spec);  // warm-up
    gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec);
    gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec, &dsum);
    ops::device_synchronize();
    const float ms_fwd = time_ms([&] { gpu.attention_fwd(out, saved, qkv, Tensor(), B, T, spec); });
    const float ms_bwd = time_ms([&] { gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec); });
    const float ms_sum =
        time_ms([&] { gpu.attention_bwd(dqkv, dout, qkv, saved, Tensor(), B, T, spec, &dsum); });
    const float ms_bias = time_ms([&] { gpu.bias_grad(dsum, dqkv); });
    std::printf("[attention bench] B=%lld T=%lld H=%lld D=%lld causal bf16 %-18s fwd %.3f ms "
                "(%.1f TFLOP/s)  bwd %.3f ms (%.1f TFLOP/s)\n",
                static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(H),
                static_cast<long long>(D), pc.name, ms_fwd, fwd_flops / (ms_fwd * 1e-3) / 1e12,
                ms_bwd, bwd_flops / (ms_bwd * 1e-3) / 1e12);
    std::printf("[attention bench]   bwd with the column sums of dqkv (dsum) %.3f ms; bwd + a "
                "separate bias_grad over dqkv %.3f ms\n", ms_sum, ms_bwd + ms_bias);
    const std::vector<double> o = out.to_vector();
    bool finite = true;
    for (double x : o) finite = finite && std::isfinite(x);
    EXPECT_TRUE(finite) << "non-finite attention output in the timing run";
  }
  // The clipped forward skips the key halves below its clip threshold (attention_wgmma.cu): how
  // many depends on how peaked the scores are. Scores with 2.25x the spread above (q, k scaled
  // 1.5x) leave more halves live, as trained models' peaked attention does.
  {
    const Tensor peaked = to_gpu(randn({N, 3 * C}, 1.5), DType::BF16);
    AttentionSpec spec = make_spec({B, T, H, D}, kProbs[2], Mode::Causal);
    gpu.attention_fwd(out, saved, peaked, Tensor(), B, T, spec);
    ops::device_synchronize();
    const float ms = time_ms([&] { gpu.attention_fwd(out, saved, peaked, Tensor(), B, T, spec); });
    std::printf("[attention bench]   clipped forward, peaked scores (q, k x1.5) %.3f ms\n", ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

}  // namespace
}  // namespace oft::testing
