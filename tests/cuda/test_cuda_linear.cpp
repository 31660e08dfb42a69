// linear_fwd (matrix product with the bias in cuBLASLt's epilogue) against the CPU backend's
// matmul + add_bias, in f32 and bf16, with and without a bias, for layer shapes of the presets
// and odd ones; and a misaligned bias view (the non-epilogue fallback). linear_residual_fwd
// (the residual read as the product's C operand) the same way.
//
// linear_act_fwd / linear_act_bwd_dx (the MLP activation, or its derivative, in the epilogue)
// against the CPU backend's composition in f64 on the same (bf16-rounded) inputs, for GELU-tanh
// and ReLU (fused where matmul.cu allows it) and GELU-erf (always composed), f32 and bf16, with
// and without a bias, GPT-2's fc shape and odd ones that force the fallback (width not a multiple
// of 8, misaligned views); which calls fused is checked through act_epilogue_counts().
// The Hopper GELU products (gemm_wgmma.cu) are forced on for HopperGeluProductMatchesCpu and
// HopperDGeluProductMatchesCpu: against the f64 composition on shapes with M, N and K tails of
// their 128 x 128 x 64 tiles, with and without bias. BiasColumnLayoutMatchesCpu checks the
// bias-column layout (ops.h): the LayerNorm writing it, linear_act_fwd reading it with a row
// pitch and linear_wgrad_bias_column. CudaLinearBench.Timing prints the fused ops against their compositions at GPT-2
// 124M's size, and the Hopper GELU product against cuBLASLt's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "cuda/cuda_test_util.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/gemm_wgmma.h"

namespace oft::testing {
namespace {

TEST(CudaLinear, ForwardWithBiasEpilogueMatchesCpu) {
  OFT_REQUIRE_CUDA();
  struct S { int64_t n, in, out; };
  for (DType dt : {DType::F32, DType::BF16})
    for (S s : {S{1, 8, 8}, S{37, 24, 72}, S{256, 768, 2304}, S{129, 768, 3072}, S{64, 3072, 768},
                S{33, 128, 4}})
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE(std::string(dtype_label(dt)) + " n=" + std::to_string(s.n) + " in=" +
                     std::to_string(s.in) + " out=" + std::to_string(s.out) +
                     (with_bias ? " bias" : " no bias"));
        const Tensor x = rounded(randn({s.n, s.in}), dt), w = rounded(randn({s.out, s.in}, 0.05), dt);
        const Tensor b = rounded(randn({s.out}), dt);
        Tensor ref = Tensor::empty({s.n, s.out}, DType::F32);
        ops::cpu_backend().linear_fwd(ref, x, w, with_bias ? b : Tensor());
        Tensor y = poisoned({s.n, s.out}, dt);
        ops::backend(Device::CUDA).linear_fwd(y, to_gpu(x, dt), to_gpu(w, dt),
                                              with_bias ? to_gpu(b, dt) : Tensor());
        EXPECT_GPU_CLOSE(y, ref, tol_for(dt));
      }
}

TEST(CudaLinear, MisalignedBiasView) {
  OFT_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16}) {
    const Tensor x = rounded(randn({17, 64}), dt), w = rounded(randn({40, 64}, 0.1), dt);
    const Tensor b2 = rounded(randn({41}), dt);
    Tensor ref = Tensor::empty({17, 40}, DType::F32);
    ops::cpu_backend().linear_fwd(ref, x, w, b2.slice(1, 41));
    Tensor y = poisoned({17, 40}, dt);
    const Tensor gb = to_gpu(b2, dt);
    ops::backend(Device::CUDA).linear_fwd(y, to_gpu(x, dt), to_gpu(w, dt), gb.slice(1, 41));
    EXPECT_GPU_CLOSE(y, ref, tol_for(dt)) << dtype_label(dt);
  }
}

// y = res + x w^T + b with the residual as cuBLASLt's C operand, against the CPU composition;
// including a misaligned bias view and a residual view (the alignment enters the plan key).
TEST(CudaLinear, ResidualForwardMatchesCpu) {
  OFT_REQUIRE_CUDA();
  struct S { int64_t n, in, out; };
  for (DType dt : {DType::F32, DType::BF16})
    for (S s : {S{1, 8, 8}, S{37, 24, 72}, S{256, 768, 768}, S{129, 3072, 768}})
      for (int bias : {0, 1, 2}) {  // none, aligned, misaligned view
        SCOPED_TRACE(std::string(dtype_label(dt)) + " n=" + std::to_string(s.n) + " in=" +
                     std::to_string(s.in) + " out=" + std::to_string(s.out) +
                     " bias=" + std::to_string(bias));
        const Tensor x = rounded(randn({s.n, s.in}), dt), w = rounded(randn({s.out, s.in}, 0.05), dt);
        const Tensor b2 = rounded(randn({s.out + 1}), dt), res = rounded(randn({s.n, s.out}), dt);
        const Tensor b = bias == 2 ? b2.slice(1, s.out + 1) : b2.slice(0, s.out);
        Tensor ref = Tensor::empty({s.n, s.out}, DType::F32);
        ops::cpu_backend().linear_residual_fwd(ref, x, w, bias ? b : Tensor(), res);
        Tensor y = poisoned({s.n, s.out}, dt);
        const Tensor gb = to_gpu(b2, dt);
        const Tensor gbias = bias == 2 ? gb.slice(1, s.out + 1) : gb.slice(0, s.out);
        ops::backend(Device::CUDA).linear_residual_fwd(y, to_gpu(x, dt), to_gpu(w, dt),
                                                       bias ? gbias : Tensor(), to_gpu(res, dt));
        EXPECT_GPU_CLOSE(y, ref, tol_for(dt));
      }
}

// ------------------------------------------------------------------ activation epilogues

using ops::Activation;

ops::Backend& gpu() { return ops::backend(Device::CUDA); }
ops::Backend& cpu() { return ops::cpu_backend(); }

const char* act_label(Activation a) {
  switch (a) {
    case Activation::ReLU: return "relu";
    case Activation::GELU_Tanh: return "gelu_tanh";
    case Activation::GELU_Erf: return "gelu_erf";
    case Activation::Sigmoid: return "sigmoid";
  }
  return "?";
}

Tensor f64(const Tensor& t) { return t.cast(DType::F64); }

// A GPU tensor of this shape filled with NaN that starts one element into its allocation (not
// 16-byte aligned).
Tensor poisoned_misaligned(const Shape& s, DType d) {
  const int64_t n = shape_numel(s);
  return poisoned({n + 1, 1}, d).slice(1, n + 1).view(s);
}

struct ActShape {
  int64_t n, in, out;
};
// GPT-2 124M's fc (768 -> 3072) on 256 and on 129 rows, a small aligned layer, and widths that
// are not a multiple of 8 (GELU's epilogue needs one for the pre-activation's ld: composed).
const ActShape kActShapes[] = {
    {256, 768, 3072}, {129, 768, 3072}, {37, 24, 72}, {37, 24, 70}, {33, 128, 4}};
const Activation kMlpActs[] = {Activation::GELU_Tanh, Activation::ReLU, Activation::GELU_Erf};

TEST(CudaLinear, ActForwardMatchesCpu) {
  OFT_REQUIRE_CUDA();
  for (DType dt : {DType::F32, DType::BF16})
    for (Activation a : kMlpActs)
      for (ActShape s : kActShapes)
        for (bool with_bias : {true, false})
          for (bool keep_pre : {true, false}) {
            if (!keep_pre && a != Activation::ReLU) continue;  // only ReLU may drop pre
            SCOPED_TRACE(std::string(dtype_label(dt)) + " " + act_label(a) + " n=" +
                         std::to_string(s.n) + " in=" + std::to_string(s.in) + " out=" +
                         std::to_string(s.out) + (with_bias ? " bias" : " no bias") +
                         (keep_pre ? " pre" : " no pre"));
            const Tensor x = rounded(randn({s.n, s.in}), dt);
            const Tensor w = rounded(randn({s.out, s.in}, 0.05), dt);
            const Tensor b = rounded(randn({s.out}, 0.5), dt);
            Tensor pre_ref = Tensor::empty({s.n, s.out}, DType::F64);
            Tensor act_ref = Tensor::empty({s.n, s.out}, DType::F64);
            cpu().linear_act_fwd(act_ref, pre_ref, f64(x), f64(w), with_bias ? f64(b) : Tensor(), a);
            Tensor act = poisoned({s.n, s.out}, dt);
            Tensor pre = keep_pre ? poisoned({s.n, s.out}, dt) : Tensor();
            gpu().linear_act_fwd(act, pre, to_gpu(x, dt), to_gpu(w, dt),
                                 with_bias ? to_gpu(b, dt) : Tensor(), a);
            EXPECT_GPU_CLOSE(act, act_ref, tol_for(dt));
            if (keep_pre) {
              EXPECT_GPU_CLOSE(pre, pre_ref, tol_for(dt));
              // The stored pre-activation is the one act came from, element by element (the
              // epilogue's auxiliary matrix has act's layout).
              Tensor again = poisoned({s.n, s.out}, dt);
              gpu().activation_fwd(again, pre, a);
              EXPECT_GPU_CLOSE(act, again, tol_for(dt));
            }
          }
}

// The bias-column layout (ops.h): layernorm_fwd into [N, C + 8] writes the same rows as into
// [N, C] and the pad 1, 0, ...; linear_act_fwd and linear_fwd read its first C columns with the row pitch
// (cuBLASLt's leading dimension; the same results as from the contiguous rows); and
// linear_wgrad_bias_column gives dW = dy^T y and db = colsum(dy) from one product, against the
// CPU backend in f64 (beta 0, then beta 1 accumulating a second time).
TEST(CudaLinear, BiasColumnLayoutMatchesCpu) {
  OFT_REQUIRE_CUDA();
  struct S { int64_t n, c, f; };
  for (DType dt : {DType::F32, DType::BF16})
    for (S s : {S{37, 24, 72}, S{256, 768, 3072}, S{33, 64, 40}}) {
      SCOPED_TRACE(std::string(dtype_label(dt)) + " n=" + std::to_string(s.n) + " c=" +
                   std::to_string(s.c) + " f=" + std::to_string(s.f));
      const int64_t P = s.c + ops::kBiasColumnPad;
      const Tensor x = rounded(randn({s.n, s.c}, 2.0), dt), lw = rounded(randn({s.c}), dt);
      const Tensor lb = rounded(randn({s.c}), dt);
      Tensor y = poisoned({s.n, s.c}, dt), ye = poisoned({s.n, P}, dt);
      Tensor m = poisoned({s.n}, DType::F32), r = poisoned({s.n}, DType::F32);
      Tensor me = poisoned({s.n}, DType::F32), re = poisoned({s.n}, DType::F32);
      const Tensor gx = to_gpu(x, dt), glw = to_gpu(lw, dt), glb = to_gpu(lb, dt);
      gpu().layernorm_fwd(y, m, r, gx, glw, glb, 1e-5);
      gpu().layernorm_fwd(ye, me, re, gx, glw, glb, 1e-5);
      const std::vector<double> yv = y.to_vector(), yev = ye.to_vector();
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t c = 0; c < P; ++c)
          ASSERT_EQ(yev[size_t(n * P + c)], c < s.c ? yv[size_t(n * s.c + c)] : c == s.c ? 1 : 0)
              << n << "," << c;
      EXPECT_EQ(me.to_vector(), m.to_vector());
      EXPECT_EQ(re.to_vector(), r.to_vector());

      const Tensor w = rounded(randn({s.f, s.c}, 0.05), dt), b = rounded(randn({s.f}, 0.5), dt);
      const Tensor gw = to_gpu(w, dt), gb = to_gpu(b, dt);
      for (Activation a : {Activation::GELU_Tanh, Activation::ReLU}) {
        SCOPED_TRACE(act_label(a));
        Tensor act = poisoned({s.n, s.f}, dt), pre = poisoned({s.n, s.f}, dt);
        Tensor act_e = poisoned({s.n, s.f}, dt), pre_e = poisoned({s.n, s.f}, dt);
        Tensor no_pre;
        gpu().linear_act_fwd(act, a == Activation::ReLU ? no_pre : pre, y, gw, gb, a);
        gpu().linear_act_fwd(act_e, a == Activation::ReLU ? no_pre : pre_e, ye, gw, gb, a);
        EXPECT_GPU_CLOSE(act_e, act, 1e-6);
        if (a != Activation::ReLU) EXPECT_GPU_CLOSE(pre_e, pre, 1e-6);
      }
      for (const Tensor& bias : {gb, Tensor()}) {  // linear_fwd (c_attn's product) likewise
        SCOPED_TRACE(bias.defined() ? "linear_fwd, bias" : "linear_fwd, no bias");
        Tensor o = poisoned({s.n, s.f}, dt), o_e = poisoned({s.n, s.f}, dt);
        gpu().linear_fwd(o, y, gw, bias);
        gpu().linear_fwd(o_e, ye, gw, bias);
        EXPECT_GPU_CLOSE(o_e, o, 1e-6);
      }

      const Tensor dy = rounded(randn({s.n, s.f}), dt);
      Tensor dw_ref = Tensor::zeros({s.f, s.c}, DType::F64), db_ref = Tensor::zeros({s.f}, DType::F64);
      cpu().matmul(dw_ref, f64(dy), true, f64(y.to(Device::CPU).cast(DType::F32)), false, 1, 0);
      cpu().bias_grad(db_ref, f64(dy));
      Tensor dw = poisoned({s.f, s.c}, DType::F32), db = Tensor::zeros({s.f}, DType::F32, Device::CUDA);
      const Tensor gdy = to_gpu(dy, dt);
      gpu().linear_wgrad_bias_column(dw, db, gdy, ye, 0.0);
      EXPECT_GPU_CLOSE(dw, dw_ref, kTolF32);
      EXPECT_GPU_CLOSE(db, db_ref, kTolF32);
      gpu().linear_wgrad_bias_column(dw, db, gdy, ye, 1.0);
      cpu().scale(dw_ref, 2.0);
      cpu().scale(db_ref, 2.0);
      EXPECT_GPU_CLOSE(dw, dw_ref, kTolF32);
      EXPECT_GPU_CLOSE(db, db_ref, kTolF32);
      // Bad layouts are refused with the layout named.
      EXPECT_THROW(gpu().linear_wgrad_bias_column(dw, db, gdy, y, 0.0), std::exception);
      EXPECT_THROW(gpu().linear_wgrad_bias_column(dw, db, gdy, ye, 0.5), std::exception);
    }
}

// Restores the OFT_GEMM_WGMMA choice when a test that forced it ends.
struct GemmModeGuard {
  explicit GemmModeGuard(int mode) { cuda::gemm::set_mode_for_tests(mode); }
  ~GemmModeGuard() { cuda::gemm::set_mode_for_tests(-1); }
};

TEST(CudaLinear, HopperGeluProductMatchesCpu) {
  OFT_REQUIRE_CUDA();
  const GemmModeGuard on(3);
  const DType bf = DType::BF16;
  struct S { int64_t n, in, out; };
  for (S s : {S{300, 200, 392}, S{128, 64, 128}, S{1, 8, 8}, S{129, 768, 3072}, S{2048, 768, 3072},
              S{77, 1000, 136}})
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE("n=" + std::to_string(s.n) + " in=" + std::to_string(s.in) + " out=" +
                   std::to_string(s.out) + (with_bias ? " bias" : " no bias"));
      const Tensor x = rounded(randn({s.n, s.in}), bf);
      const Tensor w = rounded(randn({s.out, s.in}, 0.05), bf);
      const Tensor b = rounded(randn({s.out}, 0.5), bf);
      Tensor pre_ref = Tensor::empty({s.n, s.out}, DType::F64), act_ref = pre_ref.clone();
      cpu().linear_act_fwd(act_ref, pre_ref, f64(x), f64(w), with_bias ? f64(b) : Tensor(),
                           Activation::GELU_Tanh);
      const Tensor gx = to_gpu(x, bf), gw = to_gpu(w, bf), gb = with_bias ? to_gpu(b, bf) : Tensor();
      EXPECT_EQ(cuda::gemm::gelu_fwd_supported(s.n, s.out, s.in, gx.raw(), gw.raw(),
                                               with_bias ? gb.raw() : nullptr, gx.raw(), gx.raw()),
                cuda::gemm::hopper_ready())
          << "the Hopper product should take every such shape on an sm_90a build and GPU";
      Tensor act = poisoned({s.n, s.out}, bf), pre = poisoned({s.n, s.out}, bf);
      gpu().linear_act_fwd(act, pre, gx, gw, gb, Activation::GELU_Tanh);
      EXPECT_GPU_CLOSE(act, act_ref, tol_for(bf));
      EXPECT_GPU_CLOSE(pre, pre_ref, tol_for(bf));
      // pre is the rounding of the sum act came from: gelu(pre) matches act to bf16 rounding.
      Tensor again = poisoned({s.n, s.out}, bf);
      gpu().activation_fwd(again, pre, Activation::GELU_Tanh);
      EXPECT_GPU_CLOSE(act, again, tol_for(bf));
    }
}

// The Hopper backward products' problems, dpre [n, F] = (dout [n, O] @ w [O, F]) * a'(pre):
// tails of the 128 x 128 x 64 tiles, and the GPT-2 / OPT MLP.
struct ActBwdShape {
  int64_t n, O, F;
  std::string str() const {
    return "n=" + std::to_string(n) + " O=" + std::to_string(O) + " F=" + std::to_string(F);
  }
};
const ActBwdShape kHopperActBwdShapes[] = {{300, 200, 392},  {128, 64, 128},    {1, 8, 8},
                                           {129, 768, 3072}, {2048, 768, 3072}, {77, 1000, 136}};

TEST(CudaLinear, HopperDGeluProductMatchesCpu) {
  OFT_REQUIRE_CUDA();
  const GemmModeGuard on(3);
  const DType bf = DType::BF16;
  for (const ActBwdShape& s : kHopperActBwdShapes) {
    SCOPED_TRACE(s.str());
    const Tensor dout = rounded(randn({s.n, s.O}), bf), w = rounded(randn({s.O, s.F}, 0.05), bf);
    const Tensor pre = rounded(randn({s.n, s.F}, 2.0), bf);
    Tensor ref = Tensor::empty({s.n, s.F}, DType::F64);
    cpu().matmul(ref, f64(dout), false, f64(w), false, 1.0, 0.0);
    cpu().activation_bwd(ref, ref, f64(pre), Activation::GELU_Tanh);
    const Tensor gdout = to_gpu(dout, bf), gw = to_gpu(w, bf), gpre = to_gpu(pre, bf);
    Tensor got = poisoned({s.n, s.F}, bf);
    EXPECT_EQ(cuda::gemm::dgelu_supported(s.n, s.F, s.O, gdout.raw(), gw.raw(), gpre.raw(),
                                          got.raw()),
              cuda::gemm::hopper_ready());
    gpu().linear_act_bwd_dx(got, gdout, gw, gpre, Activation::GELU_Tanh);
    EXPECT_GPU_CLOSE(got, ref, tol_for(bf));
    // With dsum: the column sums of dpre (the fc bias gradient) added to what dsum holds.
    const Tensor dsum0 = randn({s.F});
    Tensor dsum_ref = dsum0.clone();
    cpu().bias_grad(dsum_ref, ref.cast(DType::F32));
    Tensor gdsum = dsum0.to(Device::CUDA), got2 = poisoned({s.n, s.F}, bf);
    gpu().linear_act_bwd_dx(got2, gdout, gw, gpre, Activation::GELU_Tanh, &gdsum);
    EXPECT_GPU_CLOSE(got2, ref, tol_for(bf));
    EXPECT_GPU_CLOSE(gdsum, dsum_ref, tol_for(bf)) << "dsum";
  }
}

// The Hopper ReLU-derivative product (on by default): dpre = (dout @ w) * [act > 0] from the
// forward's act = relu(pre), with and without the fc bias sums, against the CPU backend and
// against the composed cuBLASLt path (OFT_GEMM_WGMMA=0), which it matches exactly where dsum is
// not asked for (both round the f32 product once and multiply by 0 or 1).
TEST(CudaLinear, HopperDReluProductMatchesCpu) {
  OFT_REQUIRE_CUDA();
  const DType bf = DType::BF16;
  for (const ActBwdShape& s : kHopperActBwdShapes) {
    SCOPED_TRACE(s.str());
    const Tensor dout = rounded(randn({s.n, s.O}), bf), w = rounded(randn({s.O, s.F}, 0.05), bf);
    Tensor pre = rounded(randn({s.n, s.F}, 2.0), bf);
    {  // exact zeros and negative zeros among the pre-activations: relu' is 0 there
      std::vector<double> v = pre.to_vector();
      for (size_t i = 0; i < v.size(); i += 7) v[i] = (i % 2) ? 0.0 : -0.0;
      pre = Tensor::from_vector({s.n, s.F}, v, bf);
    }
    Tensor ref = Tensor::empty({s.n, s.F}, DType::F64);
    cpu().matmul(ref, f64(dout), false, f64(w), false, 1.0, 0.0);
    cpu().activation_bwd(ref, ref, f64(pre), Activation::ReLU);
    const Tensor gdout = to_gpu(dout, bf), gw = to_gpu(w, bf), gpre = to_gpu(pre, bf);
    Tensor gact = poisoned({s.n, s.F}, bf);
    gpu().activation_fwd(gact, gpre, Activation::ReLU);
    Tensor got = poisoned({s.n, s.F}, bf), composed = poisoned({s.n, s.F}, bf);
    {
      const GemmModeGuard on(4);
      EXPECT_EQ(cuda::gemm::drelu_supported(s.n, s.F, s.O, gdout.raw(), gw.raw(), gact.raw(),
                                            got.raw()),
                cuda::gemm::hopper_ready());
      gpu().linear_act_bwd_dx(got, gdout, gw, gact, Activation::ReLU);
    }
    {
      const GemmModeGuard off(0);
      EXPECT_FALSE(cuda::gemm::drelu_supported(s.n, s.F, s.O, gdout.raw(), gw.raw(), gact.raw(),
                                               got.raw()));
      gpu().linear_act_bwd_dx(composed, gdout, gw, gact, Activation::ReLU);
    }
    EXPECT_GPU_CLOSE(got, ref, tol_for(bf));
    {  // zero exactly where act is not positive
      const std::vector<double> a = gact.to_vector(), d = got.to_vector();
      int64_t bad = 0;
      for (size_t i = 0; i < a.size(); ++i) bad += (a[i] <= 0.0 && d[i] != 0.0);
      EXPECT_EQ(bad, 0) << "dpre nonzero where relu(pre) = 0";
    }
    // cuBLASLt and the own product may sum in other orders: equal up to one bf16 rounding.
    EXPECT_GPU_CLOSE(got, composed, tol_for(bf));
    // With dsum: the column sums of dpre added to what dsum holds.
    const Tensor dsum0 = randn({s.F});
    Tensor dsum_ref = dsum0.clone();
    cpu().bias_grad(dsum_ref, ref.cast(DType::F32));
    Tensor gdsum = dsum0.to(Device::CUDA), got2 = poisoned({s.n, s.F}, bf);
    {
      const GemmModeGuard on(4);
      gpu().linear_act_bwd_dx(got2, gdout, gw, gact, Activation::ReLU, &gdsum);
    }
    EXPECT_GPU_CLOSE(got2, ref, tol_for(bf));
    EXPECT_GPU_CLOSE(gdsum, dsum_ref, tol_for(bf)) << "dsum";
  }
}

// linear_act_bwd_dx's dsum must be f32 [F]: other shapes and dtypes are refused.
TEST(CudaLinear, ActBackwardDsumChecked) {
  OFT_REQUIRE_CUDA();
  const DType bf = DType::BF16;
  const Tensor dout = to_gpu(randn({16, 8}), bf), w = to_gpu(randn({8, 24}, 0.1), bf);
  const Tensor pre = to_gpu(randn({16, 24}), bf);
  Tensor dpre = poisoned({16, 24}, bf);
  Tensor short_sum = Tensor::zeros({8}, DType::F32, Device::CUDA);
  EXPECT_THROW(gpu().linear_act_bwd_dx(dpre, dout, w, pre, Activation::GELU_Tanh, &short_sum),
               Error);
  Tensor bf_sum = Tensor::zeros({24}, bf, Device::CUDA);
  EXPECT_THROW(gpu().linear_act_bwd_dx(dpre, dout, w, pre, Activation::GELU_Tanh, &bf_sum), Error);
}

TEST(CudaLinear, ActForwardMisalignedViews) {
  OFT_REQUIRE_CUDA();
  const int64_t n = 64, in = 96, out = 256;
  for (DType dt : {DType::F32, DType::BF16})
    for (Activation a : kMlpActs)
      for (int which : {0, 1}) {  // 0: misaligned pre (and act), 1: misaligned bias
        SCOPED_TRACE(std::string(dtype_label(dt)) + " " + act_label(a) + " which=" +
                     std::to_string(which));
        const Tensor x = rounded(randn({n, in}), dt), w = rounded(randn({out, in}, 0.1), dt);
        const Tensor b2 = rounded(randn({out + 1}, 0.5), dt);
        Tensor pre_ref = Tensor::empty({n, out}, DType::F64), act_ref = pre_ref.clone();
        cpu().linear_act_fwd(act_ref, pre_ref, f64(x), f64(w), f64(b2.slice(1, out + 1)), a);
        const Tensor gb2 = to_gpu(b2, dt);
        const Tensor gb = which == 1 ? gb2.slice(1, out + 1) : to_gpu(b2.slice(1, out + 1), dt);
        Tensor act = which == 0 ? poisoned_misaligned({n, out}, dt) : poisoned({n, out}, dt);
        Tensor pre = which == 0 ? poisoned_misaligned({n, out}, dt) : poisoned({n, out}, dt);
        gpu().linear_act_fwd(act, pre, to_gpu(x, dt), to_gpu(w, dt), gb, a);
        EXPECT_GPU_CLOSE(act, act_ref, tol_for(dt));
        EXPECT_GPU_CLOSE(pre, pre_ref, tol_for(dt));
        if (a == Activation::ReLU) {  // and without pre
          Tensor act2 = which == 0 ? poisoned_misaligned({n, out}, dt) : poisoned({n, out}, dt);
          Tensor none;
          gpu().linear_act_fwd(act2, none, to_gpu(x, dt), to_gpu(w, dt), gb, a);
          EXPECT_GPU_CLOSE(act2, act_ref, tol_for(dt));
        }
      }
}

TEST(CudaLinear, ActBackwardMatchesCpu) {
  OFT_REQUIRE_CUDA();
  // dpre [n, F] = (dout [n, O] @ w [O, F]) * a'(pre): fc_out's input gradient (O = d_model).
  struct S {
    int64_t n, O, F;
  };
  for (DType dt : {DType::F32, DType::BF16})
    for (Activation a : kMlpActs)
      for (S s : {S{256, 768, 3072}, S{129, 768, 3072}, S{37, 24, 72}, S{37, 24, 70},
                  S{33, 128, 4}}) {
        SCOPED_TRACE(std::string(dtype_label(dt)) + " " + act_label(a) + " n=" +
                     std::to_string(s.n) + " O=" + std::to_string(s.O) + " F=" +
                     std::to_string(s.F));
        const Tensor dout = rounded(randn({s.n, s.O}), dt), w = rounded(randn({s.O, s.F}, 0.05), dt);
        const Tensor pre = rounded(randn({s.n, s.F}, 2.0), dt);
        Tensor ref = Tensor::empty({s.n, s.F}, DType::F64);
        cpu().matmul(ref, f64(dout), false, f64(w), false, 1.0, 0.0);
        cpu().activation_bwd(ref, ref, f64(pre), a);
        const Tensor gdout = to_gpu(dout, dt), gw = to_gpu(w, dt), gpre = to_gpu(pre, dt);
        Tensor got = poisoned({s.n, s.F}, dt);
        gpu().linear_act_bwd_dx(got, gdout, gw, gpre, a);
        EXPECT_GPU_CLOSE(got, ref, tol_for(dt));
        {  // dsum += colsum(dpre)
          const Tensor dsum0 = randn({s.F});
          Tensor dsum_ref = dsum0.clone();
          cpu().bias_grad(dsum_ref, ref.cast(DType::F32));
          Tensor gdsum = dsum0.to(Device::CUDA), got_s = poisoned({s.n, s.F}, dt);
          gpu().linear_act_bwd_dx(got_s, gdout, gw, gpre, a, &gdsum);
          // The composed path sums dpre after its bf16 rounding, whose errors scale with
          // colsum(|dpre|), not with the (possibly cancelling) sums: measure against that.
          std::vector<double> mag = dsum0.to_vector(), r = ref.to_vector();
          for (double& m : mag) m = std::abs(m);
          for (size_t i = 0; i < r.size(); ++i) mag[i % size_t(s.F)] += std::abs(r[i]);
          const double floor = l2_norm(Tensor::from_vector({s.F}, mag, DType::F64));
          EXPECT_LE(rel_err(gdsum, dsum_ref, floor), tol_for(dt)) << "dsum";
        }
        if (a == Activation::ReLU) {
          // The model hands ReLU its output instead of pre.
          Tensor gact = poisoned({s.n, s.F}, dt), got2 = poisoned({s.n, s.F}, dt);
          gpu().activation_fwd(gact, gpre, a);
          gpu().linear_act_bwd_dx(got2, gdout, gw, gact, a);
          EXPECT_GPU_CLOSE(got2, ref, tol_for(dt));
        }
        // A misaligned saved tensor composes.
        Tensor saved_mis = poisoned_misaligned({s.n, s.F}, dt);
        saved_mis.copy_from(gpre);
        Tensor got3 = poisoned({s.n, s.F}, dt);
        gpu().linear_act_bwd_dx(got3, gdout, gw, saved_mis, a);
        EXPECT_GPU_CLOSE(got3, ref, tol_for(dt));
      }
}

// activation_bwd's ReLU on the GPU gives exactly the same gradient from relu(x) as from x
// (0, -0, tiny and huge inputs included), and the same as the CPU backend's. (No subnormal
// inputs: the kernels are built with --use_fast_math, which flushes them to zero, so there the
// GPU's relu' is 0 where the CPU's is 1; from x or from relu(x) alike.)
TEST(CudaLinear, ReluDerivativeFromOutputIsExact) {
  OFT_REQUIRE_CUDA();
  std::vector<double> xs = {0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 3.0, -2.0};
  const std::vector<double> r = randn({4099}, 3.0).to_vector();
  xs.insert(xs.end(), r.begin(), r.end());
  const int64_t n = static_cast<int64_t>(xs.size());
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_label(dt));
    const Tensor x = Tensor::from_vector({n}, xs, DType::F32);
    const Tensor dy = rounded(randn({n}), dt);
    const Tensor gx = to_gpu(x, dt), gdy = to_gpu(dy, dt);
    Tensor gy = poisoned({n}, dt), d1 = poisoned({n}, dt), d2 = poisoned({n}, dt);
    gpu().activation_fwd(gy, gx, Activation::ReLU);
    gpu().activation_bwd(d1, gdy, gx, Activation::ReLU);
    gpu().activation_bwd(d2, gdy, gy, Activation::ReLU);
    EXPECT_EQ(d1.to_vector(), d2.to_vector());
    Tensor ref = Tensor::empty({n}, DType::F32);
    cpu().activation_bwd(ref, dy, rounded(x, dt), Activation::ReLU);
    EXPECT_EQ(d1.to_vector(), ref.to_vector());
  }
}

// Which calls run in the epilogue: GELU-tanh (bf16) forward and backward, ReLU without pre, and
// (on Hopper) the bf16 ReLU backward at the model's shapes; everything matmul.cu documents as a
// fallback composes.
TEST(CudaLinear, ActEpilogueTakenWhereExpected) {
  OFT_REQUIRE_CUDA();
  const int64_t n = 128, C = 768, F = 3072;
  const DType bf = DType::BF16, f32 = DType::F32;
  struct Gpu {
    Tensor x, w1, b1, dout, w2;
  };
  auto make = [&](DType dt) {
    return Gpu{to_gpu(randn({n, C}), dt), to_gpu(randn({F, C}, 0.05), dt),
               to_gpu(randn({F}, 0.5), dt), to_gpu(randn({n, C}), dt),
               to_gpu(randn({C, F}, 0.05), dt)};
  };
  const Gpu g = make(bf), g32 = make(f32);
  // (fused, composed) calls made by fn.
  auto count = [](const std::function<void()>& fn) {
    const ops::ActEpilogueCounts a = ops::act_epilogue_counts();
    fn();
    const ops::ActEpilogueCounts b = ops::act_epilogue_counts();
    return std::make_pair(b.fused - a.fused, b.composed - a.composed);
  };
  const auto fused = std::make_pair(int64_t(1), int64_t(0));
  const auto composed = std::make_pair(int64_t(0), int64_t(1));
  Tensor act = poisoned({n, F}, bf), pre = poisoned({n, F}, bf), none;
  Tensor act32 = poisoned({n, F}, f32), pre32 = poisoned({n, F}, f32), dpre32 = poisoned({n, F}, f32);
  const Tensor nob;
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, pre, g.x, g.w1, g.b1, Activation::GELU_Tanh); }),
            fused) << "bf16 GELU forward with bias";
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, pre, g.x, g.w1, nob, Activation::GELU_Tanh); }),
            fused) << "bf16 GELU forward without bias";
  Tensor dpre = poisoned({n, F}, bf);
  EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre, g.dout, g.w2, pre, Activation::GELU_Tanh); }),
            fused) << "bf16 GELU backward";
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, none, g.x, g.w1, g.b1, Activation::ReLU); }),
            fused) << "bf16 ReLU forward with bias";
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, none, g.x, g.w1, nob, Activation::ReLU); }),
            fused) << "bf16 ReLU forward without bias";
  // Composed by design.
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, pre, g.x, g.w1, g.b1, Activation::ReLU); }),
            composed) << "ReLU with pre";
  // The ReLU backward runs in the Hopper product by default (sm_90a), else composes.
  EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre, g.dout, g.w2, act, Activation::ReLU); }),
            cuda::gemm::hopper_ready() ? fused : composed) << "bf16 ReLU backward";
  {
    const GemmModeGuard off(0);
    EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre, g.dout, g.w2, act, Activation::ReLU); }),
              composed) << "bf16 ReLU backward, OFT_GEMM_WGMMA=0";
  }
  EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre32, g32.dout, g32.w2, act32, Activation::ReLU); }),
            composed) << "f32 ReLU backward";
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, pre, g.x, g.w1, g.b1, Activation::GELU_Erf); }),
            composed) << "GELU-erf forward";
  EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre, g.dout, g.w2, pre, Activation::GELU_Erf); }),
            composed) << "GELU-erf backward";
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act32, pre32, g32.x, g32.w1, g32.b1, Activation::GELU_Tanh); }),
            composed) << "f32 GELU forward";
  EXPECT_EQ(count([&] { gpu().linear_act_bwd_dx(dpre32, g32.dout, g32.w2, pre32, Activation::GELU_Tanh); }),
            composed) << "f32 GELU backward";
  Tensor pre_mis = poisoned_misaligned({n, F}, bf);
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, pre_mis, g.x, g.w1, g.b1, Activation::GELU_Tanh); }),
            composed) << "misaligned pre";
  const Tensor b_mis = to_gpu(randn({F + 1}), bf).slice(1, F + 1);
  EXPECT_EQ(count([&] { gpu().linear_act_fwd(act, none, g.x, g.w1, b_mis, Activation::ReLU); }),
            composed) << "misaligned bias";
  // f32 ReLU may fuse or not (whatever the heuristic offers); either way it is correct (above).
  const auto r32 = count([&] { gpu().linear_act_fwd(act32, none, g32.x, g32.w1, g32.b1, Activation::ReLU); });
  std::printf("[ info ] f32 ReLU forward: %s\n", r32.first ? "epilogue" : "composed");
}

// ------------------------------------------------------------------ timing (prints only)

// GPT-2 124M's MLP at 16384 tokens, bf16: the fc layer with its activation, and fc_out's input
// gradient with the activation's derivative, as separate ops (before) and fused (now).
TEST(CudaLinearBench, Timing) {
  OFT_REQUIRE_CUDA();
  const DType bf = DType::BF16;
  const int64_t M = 16384, K = 768, N = 3072;
  const Tensor x = gpu_random(M, K, bf, 1.0), w1 = gpu_random(N, K, bf, 0.02);
  const Tensor b1 = gpu_random(1, N, bf, 0.1).view({N});
  const Tensor dout = gpu_random(M, K, bf, 1.0), w2 = gpu_random(K, N, bf, 0.02);
  Tensor pre = Tensor::empty({M, N}, bf, Device::CUDA), act = Tensor::empty({M, N}, bf, Device::CUDA);
  Tensor dpre = Tensor::empty({M, N}, bf, Device::CUDA), none;
  const Activation G = Activation::GELU_Tanh, R = Activation::ReLU;
  const double flop = 2.0 * double(M) * double(N) * double(K);
  auto line = [&](const char* what, double ms) {
    std::printf("[ timing ]   %-52s %8.3f ms  %6.1f TFLOP/s\n", what, ms, flop / (ms * 1e-3) / 1e12);
  };
  std::printf("[ timing ] MLP activation epilogues, bf16, M = %lld, K = %lld, N = %lld\n",
              static_cast<long long>(M), static_cast<long long>(K), static_cast<long long>(N));
  const ops::ActEpilogueCounts c0 = ops::act_epilogue_counts();
  // Forward, GELU-tanh.
  const double lf = time_ms([&] { gpu().linear_fwd(pre, x, w1, b1); });
  const double af = time_ms([&] { gpu().activation_fwd(act, pre, G); });
  const double gf_sep = time_ms([&] {
    gpu().linear_fwd(pre, x, w1, b1);
    gpu().activation_fwd(act, pre, G);
  });
  const double gf_fused = time_ms([&] { gpu().linear_act_fwd(act, pre, x, w1, b1, G); });
  line("linear_fwd (bias epilogue)", lf);
  std::printf("[ timing ]   %-52s %8.3f ms\n", "activation_fwd gelu", af);
  line("gelu fwd: linear_fwd + activation_fwd", gf_sep);
  line("gelu fwd: linear_act_fwd (default product)", gf_fused);
  {
    const GemmModeGuard off(0);
    line("gelu fwd: cuBLASLt GELU_AUX_BIAS", time_ms([&] { gpu().linear_act_fwd(act, pre, x, w1, b1, G); }));
  }
  if (cuda::gemm::hopper_ready()) {
    const GemmModeGuard on(3);
    line("gelu fwd: Hopper product (gemm_wgmma.cu)", time_ms([&] { gpu().linear_act_fwd(act, pre, x, w1, b1, G); }));
  }
  // Backward, GELU-tanh: dpre = (dout @ w2) * gelu'(pre).
  const double mm = time_ms([&] { gpu().matmul(dpre, dout, false, w2, false, 1.0, 0.0); });
  const double ab = time_ms([&] { gpu().activation_bwd(dpre, dpre, pre, G); });
  const double gb_sep = time_ms([&] {
    gpu().matmul(dpre, dout, false, w2, false, 1.0, 0.0);
    gpu().activation_bwd(dpre, dpre, pre, G);
  });
  const double gb_fused = time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, pre, G); });
  line("matmul dout @ w2", mm);
  std::printf("[ timing ]   %-52s %8.3f ms\n", "activation_bwd gelu (in place)", ab);
  line("gelu bwd: matmul + activation_bwd", gb_sep);
  line("gelu bwd: linear_act_bwd_dx (default product)", gb_fused);
  Tensor db1 = Tensor::zeros({N}, DType::F32, Device::CUDA);
  {
    const GemmModeGuard off(0);
    line("gelu bwd: cuBLASLt DGELU", time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, pre, G); }));
    line("gelu bwd + fc bias grad: cuBLASLt DGELU + bias_grad",
         time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, pre, G, &db1); }));
  }
  if (cuda::gemm::hopper_ready()) {
    const GemmModeGuard on(3);
    line("gelu bwd: Hopper product (gemm_wgmma.cu)", time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, pre, G); }));
    line("gelu bwd + fc bias grad: Hopper product, sums in its epilogue",
         time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, pre, G, &db1); }));
  }
  // Forward, ReLU (OPT): no pre-activation kept.
  const double rf_sep = time_ms([&] {
    gpu().linear_fwd(act, x, w1, b1);
    gpu().activation_fwd(act, act, R);
  });
  const double rf_fused = time_ms([&] { gpu().linear_act_fwd(act, none, x, w1, b1, R); });
  line("relu fwd: linear_fwd + activation_fwd (in place)", rf_sep);
  line("relu fwd: linear_act_fwd (RELU_BIAS)", rf_fused);
  // Backward, ReLU from the forward's act, with the fc bias sums (what the OPT step runs). The
  // composition it replaces is timed through the separate ops (no composed-call count).
  line("relu bwd + fc bias grad: matmul + activation_bwd + bias_grad", time_ms([&] {
         gpu().matmul(dpre, dout, false, w2, false, 1.0, 0.0);
         gpu().activation_bwd(dpre, dpre, act, R);
         gpu().bias_grad(db1, dpre);
       }));
  if (cuda::gemm::hopper_ready()) {
    const GemmModeGuard on(4);
    line("relu bwd: Hopper product (gemm_wgmma.cu)", time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, act, R); }));
    line("relu bwd + fc bias grad: Hopper product, sums in its epilogue",
         time_ms([&] { gpu().linear_act_bwd_dx(dpre, dout, w2, act, R, &db1); }));
  }
  const ops::ActEpilogueCounts c1 = ops::act_epilogue_counts();
  std::printf(
      "[ timing ] per GELU layer: fwd %.3f -> %.3f ms, bwd %.3f -> %.3f ms, saved %.3f ms "
      "(x 12 layers: %.2f ms per step); ReLU fwd %.3f -> %.3f ms\n",
      gf_sep, gf_fused, gb_sep, gb_fused, gf_sep + gb_sep - gf_fused - gb_fused,
      12 * (gf_sep + gb_sep - gf_fused - gb_fused), rf_sep, rf_fused);
  std::printf("[ timing ] fused calls %lld, composed calls %lld (composed should be 0)\n",
              static_cast<long long>(c1.fused - c0.fused),
              static_cast<long long>(c1.composed - c0.composed));
  EXPECT_EQ(c1.composed, c0.composed) << "an epilogue fell back to the composition";
}

}  // namespace
}  // namespace oft::testing
