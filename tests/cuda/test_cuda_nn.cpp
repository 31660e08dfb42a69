// GPU-vs-CPU checks of the CUDA norms (LayerNorm, RMSNorm, QK-norm), activations and the
// attention-variant pieces (grouped linear, head gates, group / causal means, column copies),
// in f32 and bf16, forward and backward, on shapes that are not multiples of the kernels' packs
// or tiles, with accumulate flags, pre-filled parameter gradients (+= semantics) and the
// aliasing the model relies on. CudaNnBench.Timing prints bandwidths and never fails.
#include <cuda_runtime.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "ops/cuda/cuda_common.cuh"

namespace oft::testing {
namespace {

using ops::Activation;

ops::Backend& cpu() { return ops::cpu_backend(); }
ops::Backend& gpu() { return ops::backend(Device::CUDA); }

const DType kDtypes[] = {DType::F32, DType::BF16};

Tensor cpu_empty(const Shape& s) { return Tensor::empty(s, DType::F32); }
// f32 parameter gradient / statistic on the GPU (same values as the CPU tensor).
Tensor gpu_f32(const Tensor& cpu_t) { return cpu_t.to(Device::CUDA); }

// "bf16 37 768 1": the dtype and the case's parameters, for SCOPED_TRACE.
template <class... A>
std::string label(DType dt, const A&... a) {
  std::string s = dtype_label(dt);
  ((s += ' ', s += std::to_string(a)), ...);
  return s;
}

// ------------------------------------------------------------------ LayerNorm / RMSNorm

struct RowShape {
  int64_t N, C;
};
// C: packs of 16 bytes (24, 64, 768, 1000, 2048, 4096), scalar fallbacks (36 for bf16, 1001 and
// 5001 for both), more than one pack per thread (5001, 12000).
const RowShape kRowShapes[] = {{1, 24},   {37, 64}, {1000, 768}, {37, 1000}, {64, 2048},
                               {3, 4096}, {17, 36}, {9, 1001},   {7, 5001},  {5, 12000}};

TEST(CudaNn, LayerNormForward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const RowShape& s : kRowShapes)
      for (bool bias : {true, false}) {
        SCOPED_TRACE(label(dt, s.N, s.C, bias));
        const Tensor x = randn({s.N, s.C}, 2.0), w = randn({s.C}), b = randn({s.C});
        const Tensor xr = rounded(x, dt), wr = rounded(w, dt), br = rounded(b, dt);
        Tensor y = cpu_empty({s.N, s.C}), mean = cpu_empty({s.N}), rstd = cpu_empty({s.N});
        cpu().layernorm_fwd(y, mean, rstd, xr, wr, bias ? br : Tensor(), 1e-5);
        Tensor gy = poisoned({s.N, s.C}, dt), gm = poisoned({s.N}, DType::F32),
               gr = poisoned({s.N}, DType::F32);
        gpu().layernorm_fwd(gy, gm, gr, to_gpu(x, dt), to_gpu(w, dt),
                            bias ? to_gpu(b, dt) : Tensor(), 1e-5);
        EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
        EXPECT_GPU_CLOSE(gm, mean, kTolF32);
        EXPECT_GPU_CLOSE(gr, rstd, kTolF32);
      }
}

// One LayerNorm backward against the CPU backend; with `sum`, also the column sums of dx
// (dsum, the folded bias gradient of the layer whose output gradient dx is).
void check_layernorm_bwd(DType dt, const RowShape& s, bool bias, bool acc, bool sum) {
  const Tensor x = rounded(randn({s.N, s.C}, 2.0), dt), w = rounded(randn({s.C}), dt);
  const Tensor dy = rounded(randn({s.N, s.C}), dt), dx0 = rounded(randn({s.N, s.C}), dt);
  const Tensor dw0 = randn({s.C}), db0 = randn({s.C}), ds0 = randn({s.C});
  Tensor y = cpu_empty({s.N, s.C}), mean = cpu_empty({s.N}), rstd = cpu_empty({s.N});
  cpu().layernorm_fwd(y, mean, rstd, x, w, Tensor(), 1e-5);
  Tensor dx = acc ? dx0.clone() : cpu_empty({s.N, s.C}), dw = dw0.clone(),
         db = bias ? db0.clone() : Tensor(), ds = ds0.clone();
  cpu().layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, acc, sum ? &ds : nullptr);
  Tensor gdx = acc ? to_gpu(dx0, dt) : poisoned({s.N, s.C}, dt), gdw = gpu_f32(dw0),
         gdb = bias ? gpu_f32(db0) : Tensor(), gds = gpu_f32(ds0);
  gpu().layernorm_bwd(gdx, gdw, gdb, to_gpu(dy, dt), to_gpu(x, dt), to_gpu(w, dt),
                      gpu_f32(mean), gpu_f32(rstd), acc, sum ? &gds : nullptr);
  EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
  EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
  if (bias) {
    EXPECT_GPU_CLOSE(gdb, db, tol_for(dt));
  }
  EXPECT_GPU_CLOSE(gds, ds, tol_for(dt));  // untouched without `sum`
}

TEST(CudaNn, LayerNormBackward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const RowShape& s : kRowShapes)
      for (bool bias : {true, false})
        for (bool acc : {false, true}) {
          SCOPED_TRACE(label(dt, s.N, s.C, bias, acc));
          check_layernorm_bwd(dt, s, bias, acc, /*sum=*/bias != acc);
        }
}

// Enough rows that every block of the staged bf16 kernel (norm_bwd_tiles.cu) runs several
// double-buffered tiles, with a partial last tile: GPT-2 / OPT-125m rows (8 per tile), OPT-350m
// (6), OPT-1.3B (3, two column pairs per thread) and 4096 (four pairs).
TEST(CudaNn, LayerNormBackwardManyTiles) {
  OFT_REQUIRE_CUDA();
  for (const RowShape& s :
       {RowShape{9001, 768}, RowShape{5003, 1024}, RowShape{2501, 2048}, RowShape{1201, 4096}})
    for (bool acc : {false, true}) {
      SCOPED_TRACE(label(DType::BF16, s.N, s.C, true, acc));
      check_layernorm_bwd(DType::BF16, s, true, acc, true);
    }
}

TEST(CudaNn, LayerNormBackwardInPlace) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const RowShape& s : {RowShape{37, 768}, RowShape{5, 1001}, RowShape{4000, 768}}) {
      SCOPED_TRACE(label(dt, s.N, s.C));
      const Tensor x = rounded(randn({s.N, s.C}), dt), w = rounded(randn({s.C}), dt);
      const Tensor dy = rounded(randn({s.N, s.C}), dt), dw0 = randn({s.C}), db0 = randn({s.C});
      Tensor y = cpu_empty({s.N, s.C}), mean = cpu_empty({s.N}), rstd = cpu_empty({s.N});
      cpu().layernorm_fwd(y, mean, rstd, x, w, Tensor(), 1e-5);
      Tensor dx = cpu_empty({s.N, s.C}), dw = dw0.clone(), db = db0.clone();
      Tensor ds = cpu_empty({s.C});
      ops::fill(ds, 0.0);
      cpu().layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, false, &ds);
      Tensor g = to_gpu(dy, dt), gdw = gpu_f32(dw0), gdb = gpu_f32(db0), gds = gpu_f32(ds);
      ops::fill(gds, 0.0);
      gpu().layernorm_bwd(g, gdw, gdb, g, to_gpu(x, dt), to_gpu(w, dt), gpu_f32(mean),
                          gpu_f32(rstd), false, &gds);  // dx aliases dy
      EXPECT_GPU_CLOSE(g, dx, tol_for(dt));
      EXPECT_GPU_CLOSE(gds, ds, tol_for(dt));
      EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
      EXPECT_GPU_CLOSE(gdb, db, tol_for(dt));
    }
}

// LayerNorm with the per-token gate of its output (layernorm_gate_fwd / _bwd): the fused
// kernels (forward one warp per row, C <= 1024 bf16 / 512 f32; backward the staged bf16 kernel,
// an even G <= 32, groups of 8k columns, C <= 3072) and the composition elsewhere (C = 36 bf16,
// G = 48, G = 3, C = 4096, f32 backward), against the CPU backend's composition over y as the GPU stores it, and
// into the bias-column layout (ops.h) against the contiguous output. The fused
// backward adds the gate's input gradient to dy in f32 (the composition rounds the sum to bf16)
// and recomputes y: within the same tolerances.
struct NormGateCase {
  int64_t N, C, G;
};
const NormGateCase kNormGateCases[] = {{1000, 768, 12}, {37, 128, 4},  {9001, 768, 12},
                                       {37, 64, 8},     {5, 1024, 16}, {300, 768, 48},
                                       {17, 36, 3},     {4, 2048, 16}, {37, 120, 3},
                                       {3, 4096, 32}};

TEST(CudaNn, LayerNormGateForwardBackward) {
  OFT_REQUIRE_CUDA();
  const ops::Activation sig = ops::Activation::Sigmoid;
  for (DType dt : kDtypes)
    for (const NormGateCase& c : kNormGateCases)
      for (bool bias : {true, false})
        for (bool acc : {false, true}) {
          const int64_t N = c.N, C = c.C, G = c.G, D = C / G;
          SCOPED_TRACE(label(dt, N, C, G, bias, acc));
          const Tensor x = rounded(randn({N, C}, 2.0), dt), w = rounded(randn({C}), dt);
          const Tensor b = bias ? rounded(randn({C}), dt) : Tensor();
          const Tensor gw = rounded(randn({G, 1, D}, 0.2), dt), gb = rounded(randn({G}), dt);
          Tensor gy = poisoned({N, C}, dt), gm = poisoned({N}, DType::F32),
                 gr = poisoned({N}, DType::F32), ggate = poisoned({N, G}, dt),
                 glog = poisoned({N, G}, dt);
          const Tensor gx = to_gpu(x, dt), gwt = to_gpu(w, dt), ggw = to_gpu(gw, dt);
          const Tensor gbt = bias ? to_gpu(b, dt) : Tensor();
          gpu().layernorm_gate_fwd(gy, gm, gr, ggate, glog, gx, gwt, gbt, 1e-5, ggw,
                                   to_gpu(gb, dt));
          // Reference: the norm, then the gate from y rounded as the GPU stores it.
          Tensor y = cpu_empty({N, C}), mean = cpu_empty({N}), rstd = cpu_empty({N});
          cpu().layernorm_fwd(y, mean, rstd, x, w, b, 1e-5);
          const Tensor ys = rounded(y, dt);
          Tensor logits = cpu_empty({N, G}), gate = cpu_empty({N, G});
          cpu().grouped_linear_act_fwd(gate, logits, ys, gw, gb, sig);
          EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
          EXPECT_GPU_CLOSE(gm, mean, kTolF32);
          EXPECT_GPU_CLOSE(gr, rstd, kTolF32);
          EXPECT_GPU_CLOSE(glog, logits, tol_for(dt));
          EXPECT_GPU_CLOSE(ggate, gate, tol_for(dt));
          // Into the bias-column layout [N, C + 8] (ops.h): the same rows, gate and logits, and
          // the pad 1, 0...
          Tensor gye = poisoned({N, C + ops::kBiasColumnPad}, dt), gme = poisoned({N}, DType::F32),
                 gre = poisoned({N}, DType::F32), ggate_e = poisoned({N, G}, dt),
                 glog_e = poisoned({N, G}, dt);
          gpu().layernorm_gate_fwd(gye, gme, gre, ggate_e, glog_e, gx, gwt, gbt, 1e-5, ggw,
                                   to_gpu(gb, dt));
          {
            const std::vector<double> yv = gy.to_vector(), yev = gye.to_vector();
            const int64_t P = C + ops::kBiasColumnPad;
            for (int64_t n = 0; n < N; ++n)
              for (int64_t k = 0; k < P; ++k)
                ASSERT_EQ(yev[size_t(n * P + k)], k < C ? yv[size_t(n * C + k)] : k == C ? 1 : 0)
                    << n << "," << k;
          }
          EXPECT_EQ(ggate_e.to_vector(), ggate.to_vector());
          EXPECT_EQ(glog_e.to_vector(), glog.to_vector());
          EXPECT_EQ(gme.to_vector(), gm.to_vector());
          EXPECT_EQ(gre.to_vector(), gr.to_vector());
          // Backward from the GPU's logits, with pre-filled parameter gradients (+=).
          const Tensor lr = glog.to(Device::CPU).cast(DType::F32);
          const Tensor dy = rounded(randn({N, C}), dt), dgate = rounded(randn({N, G}), dt);
          const Tensor dx0 = rounded(randn({N, C}), dt);
          const Tensor dw0 = randn({C}), db0 = randn({C}), dgw0 = randn({G, 1, D}),
                       dgb0 = randn({G}), ds0 = randn({C});
          Tensor dx = acc ? dx0.clone() : cpu_empty({N, C}), dw = dw0.clone(),
                 db = bias ? db0.clone() : Tensor(), dgw = dgw0.clone(), dgb = dgb0.clone(),
                 ds = ds0.clone();
          const bool sum = bias != acc;
          cpu().layernorm_gate_bwd(dx, dw, db, dgw, dgb, dy, dgate, lr, ys, x, w, b, gw, mean,
                                   rstd, acc, sum ? &ds : nullptr);
          Tensor gdx = acc ? to_gpu(dx0, dt) : poisoned({N, C}, dt), gdw = gpu_f32(dw0),
                 gdb = bias ? gpu_f32(db0) : Tensor(), gdgw = gpu_f32(dgw0),
                 gdgb = gpu_f32(dgb0), gds = gpu_f32(ds0);
          gpu().layernorm_gate_bwd(gdx, gdw, gdb, gdgw, gdgb, to_gpu(dy, dt), to_gpu(dgate, dt),
                                   glog, gy, gx, gwt, gbt, ggw, gm, gr, acc,
                                   sum ? &gds : nullptr);
          EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
          EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
          if (bias) {
            EXPECT_GPU_CLOSE(gdb, db, tol_for(dt));
          }
          EXPECT_GPU_CLOSE(gdgw, dgw, tol_for(dt));
          EXPECT_GPU_CLOSE(gdgb, dgb, tol_for(dt));
          EXPECT_GPU_CLOSE(gds, ds, tol_for(dt));  // untouched without `sum`
          // The backward given the forward's output in the bias-column layout (the
          // composition's path reads it): the same gradients.
          Tensor gdx_e = acc ? to_gpu(dx0, dt) : poisoned({N, C}, dt), gdw_e = gpu_f32(dw0),
                 gdb_e = bias ? gpu_f32(db0) : Tensor(), gdgw_e = gpu_f32(dgw0),
                 gdgb_e = gpu_f32(dgb0), gds_e = gpu_f32(ds0);
          gpu().layernorm_gate_bwd(gdx_e, gdw_e, gdb_e, gdgw_e, gdgb_e, to_gpu(dy, dt),
                                   to_gpu(dgate, dt), glog, gye, gx, gwt, gbt, ggw, gm, gr, acc,
                                   sum ? &gds_e : nullptr);
          EXPECT_EQ(gdx_e.to_vector(), gdx.to_vector());
          EXPECT_EQ(gdgw_e.to_vector(), gdgw.to_vector());
          EXPECT_EQ(gdgb_e.to_vector(), gdgb.to_vector());
          EXPECT_EQ(gdw_e.to_vector(), gdw.to_vector());
        }
}

TEST(CudaNn, RmsNormForward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const RowShape& s : kRowShapes) {
      SCOPED_TRACE(label(dt, s.N, s.C));
      const Tensor x = randn({s.N, s.C}, 2.0), w = randn({s.C});
      Tensor y = cpu_empty({s.N, s.C}), inv = cpu_empty({s.N});
      cpu().rmsnorm_fwd(y, inv, rounded(x, dt), rounded(w, dt), 1e-6);
      Tensor gy = poisoned({s.N, s.C}, dt), ginv = poisoned({s.N}, DType::F32);
      gpu().rmsnorm_fwd(gy, ginv, to_gpu(x, dt), to_gpu(w, dt), 1e-6);
      EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
      EXPECT_GPU_CLOSE(ginv, inv, kTolF32);
    }
}

TEST(CudaNn, RmsNormBackward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const RowShape& s : kRowShapes)
      for (bool acc : {false, true}) {
        SCOPED_TRACE(label(dt, s.N, s.C, acc));
        const Tensor x = rounded(randn({s.N, s.C}, 2.0), dt), w = rounded(randn({s.C}), dt);
        const Tensor dy = rounded(randn({s.N, s.C}), dt), dx0 = rounded(randn({s.N, s.C}), dt);
        const Tensor dw0 = randn({s.C}), ds0 = randn({s.C});
        Tensor y = cpu_empty({s.N, s.C}), inv = cpu_empty({s.N});
        cpu().rmsnorm_fwd(y, inv, x, w, 1e-6);
        Tensor dx = acc ? dx0.clone() : cpu_empty({s.N, s.C}), dw = dw0.clone(),
               ds = ds0.clone();
        cpu().rmsnorm_bwd(dx, dw, dy, x, w, inv, acc, acc ? &ds : nullptr);
        Tensor gdx = acc ? to_gpu(dx0, dt) : poisoned({s.N, s.C}, dt), gdw = gpu_f32(dw0),
               gds = gpu_f32(ds0);
        gpu().rmsnorm_bwd(gdx, gdw, to_gpu(dy, dt), to_gpu(x, dt), to_gpu(w, dt), gpu_f32(inv),
                          acc, acc ? &gds : nullptr);
        EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
        EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
        EXPECT_GPU_CLOSE(gds, ds, tol_for(dt));
      }
}

// ------------------------------------------------------------------ QK-norm

struct QkCase {
  int64_t N, H, D;
};
// D: 64 (GPT-2 heads), packs smaller than a warp (8, 24), scalar fallbacks (100 for both dtypes,
// 24 for bf16), several packs per lane (256 bf16 / 512 both).
const QkCase kQkCases[] = {{37, 12, 64}, {1, 3, 24},  {300, 2, 100}, {5, 2, 256},
                           {16, 4, 8},   {7, 1, 512}, {1000, 12, 64}};

TEST(CudaNn, QkNormForward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const QkCase& c : kQkCases) {
      SCOPED_TRACE(label(dt, c.N, c.H, c.D));
      const int64_t C = c.H * c.D;
      const Tensor qkv = randn({c.N, 3 * C}, 2.0), wq = randn({c.D}), wk = randn({c.D});
      Tensor out = cpu_empty({c.N, 3 * C}), inv = cpu_empty({c.N, 2 * c.H});
      cpu().qk_norm_fwd(out, inv, rounded(qkv, dt), rounded(wq, dt), rounded(wk, dt), c.H, 1e-6);
      Tensor gout = poisoned({c.N, 3 * C}, dt), ginv = poisoned({c.N, 2 * c.H}, DType::F32);
      gpu().qk_norm_fwd(gout, ginv, to_gpu(qkv, dt), to_gpu(wq, dt), to_gpu(wk, dt), c.H, 1e-6);
      EXPECT_GPU_CLOSE(gout, out, tol_for(dt));
      EXPECT_GPU_CLOSE(ginv, inv, kTolF32);
    }
}

TEST(CudaNn, QkNormBackward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const QkCase& c : kQkCases) {
      SCOPED_TRACE(label(dt, c.N, c.H, c.D));
      const int64_t C = c.H * c.D;
      const Tensor qkv = rounded(randn({c.N, 3 * C}, 2.0), dt);
      const Tensor wq = rounded(randn({c.D}), dt), wk = rounded(randn({c.D}), dt);
      const Tensor dout = rounded(randn({c.N, 3 * C}), dt);
      const Tensor dwq0 = randn({c.D}), dwk0 = randn({c.D});
      Tensor out = cpu_empty({c.N, 3 * C}), inv = cpu_empty({c.N, 2 * c.H});
      cpu().qk_norm_fwd(out, inv, qkv, wq, wk, c.H, 1e-6);
      Tensor dqkv = cpu_empty({c.N, 3 * C}), dwq = dwq0.clone(), dwk = dwk0.clone();
      cpu().qk_norm_bwd(dqkv, dwq, dwk, dout, qkv, wq, wk, inv, c.H);
      Tensor gd = poisoned({c.N, 3 * C}, dt), gdwq = gpu_f32(dwq0), gdwk = gpu_f32(dwk0);
      gpu().qk_norm_bwd(gd, gdwq, gdwk, to_gpu(dout, dt), to_gpu(qkv, dt), to_gpu(wq, dt),
                        to_gpu(wk, dt), gpu_f32(inv), c.H);
      EXPECT_GPU_CLOSE(gd, dqkv, tol_for(dt));
      EXPECT_GPU_CLOSE(gdwq, dwq, tol_for(dt));
      EXPECT_GPU_CLOSE(gdwk, dwk, tol_for(dt));
    }
}

// ------------------------------------------------------------------ activations

const Activation kActs[] = {Activation::ReLU, Activation::GELU_Tanh, Activation::GELU_Erf,
                            Activation::Sigmoid};
// Sizes: not multiples of the pack (1, 7, 4099), whole packs (1000, 65536).
const int64_t kActSizes[] = {1, 7, 1000, 4099, 65536};

TEST(CudaNn, ActivationForward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (Activation a : kActs)
      for (int64_t n : kActSizes) {
        SCOPED_TRACE(label(dt, static_cast<int>(a), n));
        const Tensor x = randn({n}, 3.0);
        // The reference runs in f64: the CPU's f32 GELU-tanh, 0.5x(1 + tanh(u)), cancels for
        // negative x (1 + tanh -> 0), while the kernel's x * sigmoid(2u) does not.
        Tensor y = Tensor::empty({n}, DType::F64);
        cpu().activation_fwd(y, rounded(x, dt).cast(DType::F64), a);
        Tensor gy = poisoned({n}, dt);
        gpu().activation_fwd(gy, to_gpu(x, dt), a);
        // Errors are measured against 1e-3 ||x|| at least: a lone input far in GELU's negative
        // tail (x < -5, beyond the accuracy the test below holds the kernels to) has an output
        // of 1e-7 or less, whose relative error in f32 is no measure of the kernel. Without the
        // floor, 10 of 400 runs failed on such single-element cases (H100).
        EXPECT_LE(rel_err(gy, y, 1e-3 * l2_norm(x)), tol_for(dt)) << "relative L2 error of gy";
      }
}

// The negative tails, where 1 + erf and 1 + tanh cancel in f32: each value on its own (a
// relative error over one element). Down to x = -5, where the f64 reference itself is still
// exact to about 1e-9.
TEST(CudaNn, ActivationForwardNegativeTail) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (Activation a : kActs)
      for (double v : {-5.0, -4.0, -3.0, -1.5}) {
        SCOPED_TRACE(label(dt, static_cast<int>(a), 0) + " x = " + std::to_string(v));
        const Tensor x = Tensor::from_vector({1}, {v}, DType::F32);
        Tensor y = Tensor::empty({1}, DType::F64);
        cpu().activation_fwd(y, rounded(x, dt).cast(DType::F64), a);
        Tensor gy = poisoned({1}, dt);
        gpu().activation_fwd(gy, to_gpu(x, dt), a);
        EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
      }
}

TEST(CudaNn, ActivationBackward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (Activation a : kActs)
      for (int64_t n : kActSizes)
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(label(dt, static_cast<int>(a), n, in_place));
          const Tensor x = rounded(randn({n}, 3.0), dt), dy = rounded(randn({n}), dt);
          Tensor dx = cpu_empty({n});
          cpu().activation_bwd(dx, dy, x, a);
          Tensor gx = to_gpu(x, dt);
          // dx = dy f'(x) with |f'| <= about 1: errors are measured against ||dy|| too, since
          // f' crosses zero (GELU near x = -0.75) and a few elements there leave ||dx|| tiny.
          const double floor = l2_norm(dy);
          Tensor gdx = in_place ? to_gpu(dy, dt) : poisoned({n}, dt);
          if (in_place)
            gpu().activation_bwd(gdx, gdx, gx, a);  // the model's activation_bwd(d, d, x)
          else
            gpu().activation_bwd(gdx, to_gpu(dy, dt), gx, a);
          EXPECT_LE(rel_err(gdx, dx, floor), tol_for(dt)) << "relative L2 error of dx";
        }
}

// Tensors that start one element into their storage (not 16-byte aligned): the scalar path.
TEST(CudaNn, ActivationMisaligned) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (Activation a : kActs) {
      SCOPED_TRACE(label(dt, static_cast<int>(a)));
      const int64_t n = 1003;
      const Tensor x = rounded(randn({n + 1}, 3.0), dt), dy = rounded(randn({n + 1}), dt);
      const Tensor xs = x.slice(1, n + 1), dys = dy.slice(1, n + 1);
      Tensor y = cpu_empty({n}), dx = cpu_empty({n});
      cpu().activation_fwd(y, xs, a);
      cpu().activation_bwd(dx, dys, xs, a);
      const Tensor gx = to_gpu(x, dt).slice(1, n + 1), gdy = to_gpu(dy, dt).slice(1, n + 1);
      Tensor gy = poisoned({n + 1}, dt).slice(1, n + 1),
             gdx = poisoned({n + 1}, dt).slice(1, n + 1);
      gpu().activation_fwd(gy, gx, a);
      gpu().activation_bwd(gdx, gdy, gx, a);
      EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
      EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
    }
}

// ------------------------------------------------------------------ grouped linear

struct GlCase {
  int64_t N, G, I, O;
};
// Gate networks: 12 heads of 64 into 1 or a small hidden layer, and odd sizes (scalar path).
// O <= 4 runs the one-pass row kernel (20000 rows: hundreds of row chunks), O = 16 the split-K
// kernels.
const GlCase kGlCases[] = {{1, 12, 64, 1},    {37, 12, 64, 4}, {1000, 3, 5, 2},
                           {500, 12, 64, 16}, {64, 2, 16, 1},  {2000, 12, 8, 1},
                           {20000, 12, 64, 1}, {3000, 4, 64, 3}};

TEST(CudaNn, GroupedLinearForward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const GlCase& c : kGlCases)
      for (bool bias : {true, false}) {
        SCOPED_TRACE(label(dt, c.N, c.G, c.I, c.O, bias));
        const Tensor x = randn({c.N, c.G * c.I}), w = randn({c.G, c.O, c.I}, 0.2),
                     b = randn({c.G * c.O});
        Tensor y = cpu_empty({c.N, c.G * c.O});
        cpu().grouped_linear_fwd(y, rounded(x, dt), rounded(w, dt),
                                 bias ? rounded(b, dt) : Tensor());
        Tensor gy = poisoned({c.N, c.G * c.O}, dt);
        gpu().grouped_linear_fwd(gy, to_gpu(x, dt), to_gpu(w, dt), bias ? to_gpu(b, dt) : Tensor());
        EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
      }
}

TEST(CudaNn, GroupedLinearBackward) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const GlCase& c : kGlCases)
      for (int mode : {0, 1, 2}) {  // 0: dx overwritten, 1: dx accumulated, 2: no dx, no db
        SCOPED_TRACE(label(dt, c.N, c.G, c.I, c.O, mode));
        const Tensor x = rounded(randn({c.N, c.G * c.I}), dt);
        const Tensor w = rounded(randn({c.G, c.O, c.I}, 0.2), dt);
        const Tensor dy = rounded(randn({c.N, c.G * c.O}), dt);
        const Tensor dx0 = rounded(randn({c.N, c.G * c.I}), dt);
        const Tensor dw0 = randn({c.G, c.O, c.I}), db0 = randn({c.G * c.O});
        const bool acc = mode == 1, with_dx = mode != 2, with_db = mode != 2;
        Tensor dx = !with_dx ? Tensor() : acc ? dx0.clone() : cpu_empty({c.N, c.G * c.I});
        Tensor dw = dw0.clone(), db = with_db ? db0.clone() : Tensor();
        cpu().grouped_linear_bwd(dx, dw, db, dy, x, w, acc);
        Tensor gdx = !with_dx ? Tensor() : acc ? to_gpu(dx0, dt) : poisoned({c.N, c.G * c.I}, dt);
        Tensor gdw = gpu_f32(dw0), gdb = with_db ? gpu_f32(db0) : Tensor();
        gpu().grouped_linear_bwd(gdx, gdw, gdb, to_gpu(dy, dt), to_gpu(x, dt), to_gpu(w, dt), acc);
        if (with_dx) {
          EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
        }
        EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
        if (with_db) {
          EXPECT_GPU_CLOSE(gdb, db, tol_for(dt));
        }
      }
}

// The gates' last layer with its sigmoid: the fused kernels (pack-per-thread forward, one-pass
// backward) where they apply, the composition elsewhere (odd I, O = 16), against the CPU
// backend's composition. The fused backward forms dact * sigmoid'(y) in f32 without the bf16
// rounding of the composed dlogits: within the same tolerances.
TEST(CudaNn, GroupedLinearSigmoidForwardBackward) {
  OFT_REQUIRE_CUDA();
  const ops::Activation sig = ops::Activation::Sigmoid;
  for (DType dt : kDtypes)
    for (const GlCase& c : kGlCases)
      for (bool acc : {false, true}) {
        SCOPED_TRACE(label(dt, c.N, c.G, c.I, c.O, acc));
        const Tensor x = rounded(randn({c.N, c.G * c.I}), dt);
        const Tensor w = rounded(randn({c.G, c.O, c.I}, 0.2), dt), b = rounded(randn({c.G * c.O}), dt);
        Tensor y = cpu_empty({c.N, c.G * c.O}), act = cpu_empty({c.N, c.G * c.O});
        cpu().grouped_linear_act_fwd(act, y, x, w, b, sig);
        Tensor gy = poisoned({c.N, c.G * c.O}, dt), gact = poisoned({c.N, c.G * c.O}, dt);
        gpu().grouped_linear_act_fwd(gact, gy, to_gpu(x, dt), to_gpu(w, dt), to_gpu(b, dt), sig);
        EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
        EXPECT_GPU_CLOSE(gact, act, tol_for(dt));
        // Backward from the GPU's own y (so that both take the sigmoid' of the same values).
        const Tensor yr = gy.to(Device::CPU).cast(DType::F32);
        const Tensor dact = rounded(randn({c.N, c.G * c.O}), dt);
        const Tensor dx0 = rounded(randn({c.N, c.G * c.I}), dt);
        const Tensor dw0 = randn({c.G, c.O, c.I}), db0 = randn({c.G * c.O});
        Tensor dx = acc ? dx0.clone() : cpu_empty({c.N, c.G * c.I}), dw = dw0.clone(), db = db0.clone();
        cpu().grouped_linear_act_bwd(dx, dw, db, dact, yr, x, w, acc, sig);
        Tensor gdx = acc ? to_gpu(dx0, dt) : poisoned({c.N, c.G * c.I}, dt);
        Tensor gdw = gpu_f32(dw0), gdb = gpu_f32(db0);
        gpu().grouped_linear_act_bwd(gdx, gdw, gdb, to_gpu(dact, dt), gy, to_gpu(x, dt),
                                     to_gpu(w, dt), acc, sig);
        EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
        EXPECT_GPU_CLOSE(gdw, dw, tol_for(dt));
        EXPECT_GPU_CLOSE(gdb, db, tol_for(dt));
      }
}

// ------------------------------------------------------------------ head gate

struct GateCase {
  int64_t B, T, H, D;
};
// {2, 37, 3, 64} and {3, 21, 5, 32}: the per-token backward's last warp is partly past the end.
const GateCase kGateCases[] = {{1, 1, 12, 64},   {3, 37, 12, 64}, {2, 37, 3, 5},
                               {4, 250, 12, 64}, {1, 1000, 2, 12}, {2, 37, 3, 64},
                               {3, 21, 5, 32}};

TEST(CudaNn, HeadGate) {
  OFT_REQUIRE_CUDA();
  for (DType dt : kDtypes)
    for (const GateCase& c : kGateCases) {
      const int64_t N = c.B * c.T, C = c.H * c.D;
      for (int64_t rpg : {int64_t{1}, c.T, N})
        for (bool alias : {false, true}) {
          SCOPED_TRACE(label(dt, c.B, c.T, c.H, c.D, rpg, alias));
          const int64_t R = N / rpg;
          const Tensor x = rounded(randn({N, C}), dt), gate = rounded(randn({R, c.H}), dt);
          const Tensor dout = rounded(randn({N, C}), dt);
          Tensor out = cpu_empty({N, C}), dx = cpu_empty({N, C}), dgate = cpu_empty({R, c.H});
          cpu().head_gate_fwd(out, x, gate, rpg);
          cpu().head_gate_bwd(dx, dgate, dout, x, gate, rpg);
          const Tensor gx = to_gpu(x, dt), gg = to_gpu(gate, dt);
          Tensor gout = poisoned({N, C}, dt), gdgate = poisoned({R, c.H}, dt);
          gpu().head_gate_fwd(gout, gx, gg, rpg);
          EXPECT_GPU_CLOSE(gout, out, tol_for(dt));
          Tensor gdout = to_gpu(dout, dt);
          Tensor gdx = alias ? gdout : poisoned({N, C}, dt);
          gpu().head_gate_bwd(gdx, gdgate, gdout, gx, gg, rpg);
          EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
          EXPECT_GPU_CLOSE(gdgate, dgate, tol_for(dt));
        }
    }
}

// ------------------------------------------------------------------ group mean, causal mean

TEST(CudaNn, GroupMean) {
  OFT_REQUIRE_CUDA();
  struct Case {
    int64_t R, k, H;
  };
  for (DType dt : kDtypes)
    for (const Case& c : {Case{1, 1, 12}, Case{3, 37, 12}, Case{16, 100, 5}, Case{1, 1000, 3}}) {
      SCOPED_TRACE(label(dt, c.R, c.k, c.H));
      const Tensor x = rounded(randn({c.R * c.k, c.H}), dt), dy = rounded(randn({c.R, c.H}), dt);
      Tensor y = cpu_empty({c.R, c.H}), dx = cpu_empty({c.R * c.k, c.H});
      cpu().group_mean_fwd(y, x, c.k);
      cpu().group_mean_bwd(dx, dy, c.k);
      Tensor gy = poisoned({c.R, c.H}, dt), gdx = poisoned({c.R * c.k, c.H}, dt);
      gpu().group_mean_fwd(gy, to_gpu(x, dt), c.k);
      gpu().group_mean_bwd(gdx, to_gpu(dy, dt), c.k);
      EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
      EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
    }
}

TEST(CudaNn, CausalMean) {
  OFT_REQUIRE_CUDA();
  struct Case {
    int64_t B, T, C;
  };
  // T: one row, less than / not a multiple of the 32-row scan chunk; C: packs and scalars.
  for (DType dt : kDtypes)
    for (const Case& c :
         {Case{1, 1, 24}, Case{2, 37, 64}, Case{3, 100, 768}, Case{2, 70, 5}, Case{1, 1024, 36}})
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(label(dt, c.B, c.T, c.C, in_place));
        const int64_t N = c.B * c.T;
        const Tensor x = rounded(randn({N, c.C}), dt), dy = rounded(randn({N, c.C}), dt);
        Tensor y = cpu_empty({N, c.C}), dx = cpu_empty({N, c.C});
        cpu().causal_mean_fwd(y, x, c.T);
        cpu().causal_mean_bwd(dx, dy, c.T);
        Tensor gx = to_gpu(x, dt), gdy = to_gpu(dy, dt);
        Tensor gy = in_place ? gx : poisoned({N, c.C}, dt);
        Tensor gdx = in_place ? gdy : poisoned({N, c.C}, dt);
        gpu().causal_mean_fwd(gy, gx, c.T);
        gpu().causal_mean_bwd(gdx, gdy, c.T);
        EXPECT_GPU_CLOSE(gy, y, tol_for(dt));
        EXPECT_GPU_CLOSE(gdx, dx, tol_for(dt));
      }
}

// ------------------------------------------------------------------ copy columns

TEST(CudaNn, CopyColumns) {
  OFT_REQUIRE_CUDA();
  struct Case {
    int64_t N, Wd, Ws, dc, sc, n;
  };
  // Packed (all offsets multiples of 8), and odd offsets / widths (scalar path).
  for (DType dt : kDtypes)
    for (const Case& c : {Case{37, 192, 64, 64, 0, 64}, Case{5, 10, 7, 3, 1, 5},
                          Case{1, 2304, 2304, 1536, 1536, 768}, Case{100, 33, 40, 0, 8, 32}})
      for (bool acc : {false, true}) {
        SCOPED_TRACE(label(dt, c.N, c.Wd, c.Ws, c.dc, c.sc, c.n, acc));
        const Tensor dst0 = rounded(randn({c.N, c.Wd}), dt), src = rounded(randn({c.N, c.Ws}), dt);
        Tensor dst = dst0.clone();
        cpu().copy_columns(dst, c.dc, src, c.sc, c.n, acc);
        Tensor gdst = to_gpu(dst0, dt);
        gpu().copy_columns(gdst, c.dc, to_gpu(src, dt), c.sc, c.n, acc);
        EXPECT_GPU_CLOSE(gdst, dst, tol_for(dt));
      }
}

// ------------------------------------------------------------------ timing (prints only)

void report(const char* what, double ms, double bytes) {
  std::printf("[ timing   ] %-28s %8.1f us  %7.0f GB/s\n", what, ms * 1e3,
              bytes / (ms * 1e-3) / 1e9);
}

TEST(CudaNnBench, Timing) {
  OFT_REQUIRE_CUDA();
  const int64_t N = 16384, C = 768, F = 3072;
  const DType dt = DType::BF16;
  const double es = 2;  // bytes per bf16
  Tensor x = to_gpu(randn({N, C}), dt), w = to_gpu(randn({C}), dt), b = to_gpu(randn({C}), dt);
  Tensor y = poisoned({N, C}, dt), dy = to_gpu(randn({N, C}), dt), dx = poisoned({N, C}, dt);
  Tensor mean = poisoned({N}, DType::F32), rstd = poisoned({N}, DType::F32);
  Tensor dw = Tensor::zeros({C}, DType::F32).to(Device::CUDA), db = dw.clone();
  report("layernorm_fwd 16384x768",
         time_ms([&] { gpu().layernorm_fwd(y, mean, rstd, x, w, b, 1e-5); }),
         2.0 * N * C * es + 8.0 * N);
  report("layernorm_bwd 16384x768",
         time_ms([&] { gpu().layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, false, nullptr); }),
         3.0 * N * C * es + 8.0 * N);
  report("layernorm_bwd accumulate",  // the training path: dx += (residual stream)
         time_ms([&] { gpu().layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, true, nullptr); }),
         4.0 * N * C * es + 8.0 * N);
  Tensor ds = dw.clone();
  report("layernorm_bwd accumulate + dsum",  // with the folded bias gradient
         time_ms([&] { gpu().layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, true, &ds); }),
         4.0 * N * C * es + 8.0 * N);
  {  // OPT-125m's micro-batch (16 x 512 rows), where the fixed cost is about half of the call.
    const int64_t Nh = N / 2;
    Tensor xh = x.slice(0, Nh), dyh = dy.slice(0, Nh), dxh = dx.slice(0, Nh);
    Tensor mh = mean.slice(0, Nh), rh = rstd.slice(0, Nh);
    report("layernorm_bwd acc + dsum 8192 rows",
           time_ms([&] { gpu().layernorm_bwd(dxh, dw, db, dyh, xh, w, mh, rh, true, &ds); }),
           4.0 * Nh * C * es + 8.0 * Nh);
  }
  {  // Four times the rows: the difference to the 16384-row call is the streaming cost of the
     // extra rows, the rest the launch's fixed cost (first copies, the column sums' finish).
    const int64_t N4 = 4 * N;
    Tensor x4 = to_gpu(randn({N4, C}), dt), dy4 = to_gpu(randn({N4, C}), dt);
    Tensor dx4 = to_gpu(randn({N4, C}), dt);
    Tensor m4 = Tensor::zeros({N4}, DType::F32).to(Device::CUDA), r4 = m4.clone();
    report("layernorm_bwd acc + dsum x4 rows",
           time_ms([&] { gpu().layernorm_bwd(dx4, dw, db, dy4, x4, w, m4, r4, true, &ds); }),
           4.0 * N4 * C * es + 8.0 * N4);
  }
  // The per-token attention gate of OPT-125m (12 groups of 64) in the norm's kernels, against
  // the norm and the gate's own grouped kernels.
  const int64_t G = 12;
  Tensor gw = to_gpu(randn({G, 1, C / G}, 0.2), dt), gb = to_gpu(randn({G}), dt);
  Tensor gate = poisoned({N, G}, dt), logits = poisoned({N, G}, dt);
  Tensor dgate = to_gpu(randn({N, G}), dt);
  Tensor dgw = Tensor::zeros({G, 1, C / G}, DType::F32).to(Device::CUDA);
  Tensor dgb = Tensor::zeros({G}, DType::F32).to(Device::CUDA);
  const double fused_fwd = time_ms([&] {
    gpu().layernorm_gate_fwd(y, mean, rstd, gate, logits, x, w, b, 1e-5, gw, gb);
  });
  const double split_fwd = time_ms([&] {
    gpu().layernorm_fwd(y, mean, rstd, x, w, b, 1e-5);
    gpu().grouped_linear_act_fwd(gate, logits, y, gw, gb, Activation::Sigmoid);
  });
  const double fused_bwd = time_ms([&] {
    gpu().layernorm_gate_bwd(dx, dw, db, dgw, dgb, dy, dgate, logits, y, x, w, b, gw, mean, rstd,
                             true, &ds);
  });
  Tensor dyg = poisoned({N, C}, dt);
  const double split_bwd = time_ms([&] {
    dyg.copy_from(dy);
    gpu().grouped_linear_act_bwd(dyg, dgw, dgb, dgate, logits, y, gw, true, Activation::Sigmoid);
    gpu().layernorm_bwd(dx, dw, db, dyg, x, w, mean, rstd, true, &ds);
  });
  std::printf("[ timing   ] layernorm + gate 16384x768, 12 groups: fwd %.1f us (norm, then the "
              "grouped gate: %.1f us), bwd accumulate + dsum %.1f us (%.1f us)\n",
              1e3 * fused_fwd, 1e3 * split_fwd, 1e3 * fused_bwd, 1e3 * split_bwd);
  Tensor h = to_gpu(randn({N, F}), dt), hy = poisoned({N, F}, dt), hd = to_gpu(randn({N, F}), dt);
  Tensor hdx = poisoned({N, F}, dt);
  report("gelu_fwd 16384x3072",
         time_ms([&] { gpu().activation_fwd(hy, h, Activation::GELU_Tanh); }), 2.0 * N * F * es);
  report("gelu_bwd 16384x3072",
         time_ms([&] { gpu().activation_bwd(hdx, hd, h, Activation::GELU_Tanh); }),
         3.0 * N * F * es);
}

}  // namespace
}  // namespace oft::testing
