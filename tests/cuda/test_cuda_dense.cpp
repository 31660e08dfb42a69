// GPU-vs-CPU checks of the dense CUDA ops: fill, add, add_scaled, axpy, scale, dot, convert,
// add_bias, bias_grad, matmul, embedding_fwd/bwd, cross_entropy_fwd/bwd/fwd_grad, adamw. Every op runs on fresh
// random inputs in f32 and bf16 against the CPU backend on the same (bf16-rounded) values, over
// shapes that are not multiples of the kernels' pack / tile sizes, with misaligned views (the
// scalar fallbacks), the aliasing the CPU contract allows, and parameter gradients pre-filled
// with random values (+= semantics).
//
// Tolerances: tol_for(dtype) of the output (cuda_test_util.h). Outputs that are f32 and computed
// from values exactly representable in f32 (parameter gradients from bf16 inputs) use the f32
// tolerance, except the bf16-operand / f32-accumulator matmul (see there).
//
// CudaDenseBench.Timing only prints timings of the GPT-2-sized matmuls and cross-entropy.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda/cuda_test_util.h"

namespace oft::testing {
namespace {

ops::Backend& gpu() { return ops::backend(Device::CUDA); }
ops::Backend& cpu() { return ops::cpu_backend(); }

const DType kDtypes[] = {DType::F32, DType::BF16};

// A GPU copy (dtype d) of a CPU f32 tensor, placed one element past the start of its
// allocation: its address is not 16-byte aligned, so the ops take their scalar paths.
Tensor to_gpu_misaligned(const Tensor& cpu_f32, DType d) {
  const int64_t n = cpu_f32.numel();
  std::vector<double> v(static_cast<size_t>(n + 1), 0.0);
  const std::vector<double> src = cpu_f32.to_vector();
  for (int64_t i = 0; i < n; ++i) v[size_t(i + 1)] = src[size_t(i)];
  const Tensor big = to_gpu(Tensor::from_vector({n + 1}, v, DType::F32), d);
  return big.view({n + 1, 1}).slice(1, n + 1).view(cpu_f32.shape());
}

Tensor gpu_copy(const Tensor& cpu_f32, DType d, bool misaligned) {
  return misaligned ? to_gpu_misaligned(cpu_f32, d) : to_gpu(cpu_f32, d);
}

Tensor constant(const Shape& s, double v) {
  return Tensor::from_vector(s, std::vector<double>(size_t(shape_numel(s)), v));
}

// ---------------------------------------------------------------- elementwise

TEST(CudaDense, Fill) {
  OFT_REQUIRE_CUDA();
  for (DType d : kDtypes)
    for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " n=" << n << " mis=" << mis);
        Tensor x = mis ? to_gpu_misaligned(randn({n}), d) : poisoned({n}, d);
        gpu().fill(x, 0.37);
        EXPECT_GPU_CLOSE(x, rounded(constant({n}, 0.37), d), tol_for(d));
        gpu().fill(x, 0.0);
        EXPECT_EQ(x.to_vector(), std::vector<double>(size_t(n), 0.0));
      }
}

TEST(CudaDense, Scale) {
  OFT_REQUIRE_CUDA();
  for (DType d : kDtypes)
    for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " n=" << n << " mis=" << mis);
        const Tensor x = randn({n});
        Tensor ref = rounded(x, d);
        cpu().scale(ref, -1.7);
        Tensor g = gpu_copy(x, d, mis);
        gpu().scale(g, -1.7);
        EXPECT_GPU_CLOSE(g, ref, tol_for(d));
      }
}

// out = op(a, b) on the GPU against the CPU, with out separate, aliasing a, then aliasing b, on
// aligned and misaligned views; op(backend, out, a, b) runs either backend's op.
template <class Op>
void check_binary_including_in_place(Op op) {
  for (DType d : kDtypes)
    for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " n=" << n << " mis=" << mis);
        const Tensor a = randn({n}), b = randn({n});
        Tensor ref = Tensor::empty({n}, DType::F32);
        op(cpu(), ref, rounded(a, d), rounded(b, d));
        const Tensor ga = gpu_copy(a, d, mis), gb = gpu_copy(b, d, false);
        Tensor out = mis ? to_gpu_misaligned(randn({n}), d) : poisoned({n}, d);
        op(gpu(), out, ga, gb);
        EXPECT_GPU_CLOSE(out, ref, tol_for(d));
        // out aliasing a, then out aliasing b
        Tensor ia = gpu_copy(a, d, mis);
        op(gpu(), ia, ia, gb);
        EXPECT_GPU_CLOSE(ia, ref, tol_for(d));
        Tensor ib = gpu_copy(b, d, mis);
        op(gpu(), ib, ga, ib);
        EXPECT_GPU_CLOSE(ib, ref, tol_for(d));
      }
}

TEST(CudaDense, AddIncludingInPlace) {
  OFT_REQUIRE_CUDA();
  check_binary_including_in_place(
      [](ops::Backend& be, Tensor& out, const Tensor& a, const Tensor& b) { be.add(out, a, b); });
}

TEST(CudaDense, AddScaledIncludingInPlace) {
  OFT_REQUIRE_CUDA();
  check_binary_including_in_place([](ops::Backend& be, Tensor& out, const Tensor& a,
                                     const Tensor& b) { be.add_scaled(out, a, 0.8, b, -1.3); });
  // alpha = 1 (the residual sums) rounds exactly like a copy followed by axpy.
  for (DType d : kDtypes)
    for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " n=" << n << " mis=" << mis);
        const Tensor a = randn({n}), b = randn({n});
        const Tensor ga = gpu_copy(a, d, mis), gb = gpu_copy(b, d, false);
        Tensor want = gpu_copy(a, d, mis), got = poisoned({n}, d);
        gpu().axpy(want, gb, 0.7);
        gpu().add_scaled(got, ga, 1.0, gb, 0.7);
        EXPECT_EQ(got.to_vector(), want.to_vector());
      }
}

TEST(CudaDense, AxpyEveryDtypeMix) {
  OFT_REQUIRE_CUDA();
  for (DType dy : kDtypes)
    for (DType dx : kDtypes)
      for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "y " << dtype_label(dy) << " x " << dtype_label(dx)
                                            << " n=" << n << " mis=" << mis);
          const Tensor y = randn({n}), x = randn({n});
          Tensor ref = rounded(y, dy);
          cpu().axpy(ref, rounded(x, dx), -0.3);
          Tensor gy = gpu_copy(y, dy, mis);
          gpu().axpy(gy, gpu_copy(x, dx, false), -0.3);
          EXPECT_GPU_CLOSE(gy, ref, tol_for(dy));
        }
  // y aliasing x: y += a * y
  for (DType d : kDtypes) {
    const Tensor y = randn({1001});
    Tensor ref = rounded(y, d);
    cpu().scale(ref, 1.25);
    Tensor gy = to_gpu(y, d);
    gpu().axpy(gy, gy, 0.25);
    EXPECT_GPU_CLOSE(gy, ref, tol_for(d)) << dtype_label(d);
  }
}

TEST(CudaDense, ConvertEveryDtypeMixIsExact) {
  OFT_REQUIRE_CUDA();
  for (DType ds : kDtypes)
    for (DType dd : kDtypes)
      for (int64_t n : {1, 7, 4099, (1 << 20) + 3})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_label(ds) << " -> " << dtype_label(dd)
                                            << " n=" << n << " mis=" << mis);
          const Tensor x = randn({n}, 3.0);
          const Tensor ref = rounded(rounded(x, ds), dd);  // round to nearest even, as the CPU
          Tensor out = mis ? to_gpu_misaligned(randn({n}), dd) : poisoned({n}, dd);
          gpu().convert(out, gpu_copy(x, ds, false));
          EXPECT_EQ(out.to_vector(), ref.to_vector());
        }
}

TEST(CudaDense, DotMatchesCpuAndIsDeterministic) {
  OFT_REQUIRE_CUDA();
  for (DType d : kDtypes)
    for (int64_t n : {1, 5, 4099, (1 << 20) + 7, (1 << 23) + 1})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " n=" << n << " mis=" << mis);
        const Tensor a = rounded(randn({n}), d), b = rounded(randn({n}), d);
        const double ref = cpu().dot(a, b);
        const double norm = std::sqrt(cpu().dot(a, a) * cpu().dot(b, b));
        const Tensor ga = gpu_copy(a, d, mis), gb = gpu_copy(b, d, mis);
        const double got = gpu().dot(ga, gb);
        // Inputs are exact in f32 for both dtypes: f32 accumulation error only, measured
        // against ||a|| ||b|| (the dot itself may cancel to almost nothing).
        EXPECT_LE(std::abs(got - ref), kTolF32 * norm) << got << " vs " << ref;
        EXPECT_EQ(gpu().dot(ga, gb), got) << "the same call must give the same bits";
        const double sq = gpu().dot(ga, ga), sq_ref = cpu().dot(a, a);
        EXPECT_LE(std::abs(sq - sq_ref), kTolF32 * sq_ref);
      }
}

TEST(CudaDense, AddBias) {
  OFT_REQUIRE_CUDA();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {3, 7}, {64, 768}, {129, 1000}, {5, 50304}, {33, 8}, {2, 2304}};
  for (DType d : kDtypes)
    for (auto [N, C] : shapes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_label(d) << " N=" << N << " C=" << C << " mis=" << mis);
        const Tensor y = randn({N, C}), b = randn({C});
        Tensor ref = rounded(y, d);
        cpu().add_bias(ref, rounded(b, d));
        Tensor gy = gpu_copy(y, d, mis);
        gpu().add_bias(gy, to_gpu(b, d));
        EXPECT_GPU_CLOSE(gy, ref, tol_for(d));
      }
}

TEST(CudaDense, BiasGradAccumulates) {
  OFT_REQUIRE_CUDA();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 5},       {7, 13},    {100, 768},
                                                           {2049, 1001}, {64, 8},    {16384, 768},
                                                           {300, 50304}, {1, 50304}, {513, 3}};
  for (DType d : kDtypes)
    for (auto [N, C] : shapes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_label(d) << " N=" << N << " C=" << C << " mis=" << mis);
        const Tensor dy = rounded(randn({N, C}), d), db0 = randn({C});
        Tensor ref = db0.clone();
        cpu().bias_grad(ref, dy);
        Tensor gdb = to_gpu(db0, DType::F32);
        gpu().bias_grad(gdb, gpu_copy(dy, d, mis));
        // dbias is f32 and the bf16 inputs are exact in f32: f32 tolerance for both.
        EXPECT_GPU_CLOSE(gdb, ref, kTolF32);
      }
}

// ---------------------------------------------------------------- matmul

struct MM {
  int64_t M, N, K;
};

// Runs C = alpha op(A) op(B) + beta C on both backends and compares.
void check_matmul(const MM& s, bool tA, bool tB, DType dab, DType dc, double alpha, double beta,
                  double tol) {
  SCOPED_TRACE(::testing::Message() << "M=" << s.M << " N=" << s.N << " K=" << s.K << " tA=" << tA
                                    << " tB=" << tB << " AB " << dtype_label(dab) << " C "
                                    << dtype_label(dc) << " alpha=" << alpha << " beta=" << beta);
  const Shape sa = tA ? Shape{s.K, s.M} : Shape{s.M, s.K};
  const Shape sb = tB ? Shape{s.N, s.K} : Shape{s.K, s.N};
  const Tensor a = rounded(randn(sa), dab), b = rounded(randn(sb), dab);
  const Tensor c0 = rounded(randn({s.M, s.N}), dc);
  Tensor ref = beta != 0.0 ? c0.clone() : Tensor::zeros({s.M, s.N}, DType::F32);
  cpu().matmul(ref, a, tA, b, tB, alpha, beta);
  Tensor gc = beta != 0.0 ? to_gpu(c0, dc) : poisoned({s.M, s.N}, dc);
  gpu().matmul(gc, to_gpu(a, dab), tA, to_gpu(b, dab), tB, alpha, beta);
  EXPECT_GPU_CLOSE(gc, ref, tol);
}

TEST(CudaDense, MatmulAllTransposesAndShapes) {
  OFT_REQUIRE_CUDA();
  const std::vector<MM> shapes = {{1, 1, 1},        {7, 5, 3},       {1, 64, 129}, {64, 64, 64},
                                  {129, 65, 257},   {1, 768, 768},   {768, 1, 7},  {33, 2304, 768},
                                  {129, 3072, 768}, {129, 768, 3072}};
  for (DType d : kDtypes)
    for (const MM& s : shapes)
      for (bool tA : {false, true})
        for (bool tB : {false, true}) {
          check_matmul(s, tA, tB, d, d, 1.0, 0.0, tol_for(d));
          check_matmul(s, tA, tB, d, d, 0.75, 0.5, tol_for(d));
        }
}

TEST(CudaDense, MatmulF32AccumulatorFromBf16Operands) {
  OFT_REQUIRE_CUDA();
  // Weight gradients: C (f32) += A^T B from bf16 operands. The operands are exact in f32 and the
  // products exact in the fp32 accumulator, so only the summation order differs from the CPU;
  // 1e-4 leaves room for tensor-core accumulation order / split-K over long K.
  const std::vector<MM> shapes = {
      {1, 1, 1}, {7, 5, 3}, {129, 65, 257}, {768, 2304, 300}, {64, 50, 1000}};
  for (const MM& s : shapes)
    for (bool tA : {false, true})
      for (bool tB : {false, true}) {
        check_matmul(s, tA, tB, DType::BF16, DType::F32, 1.0, 1.0, 1e-4);
        check_matmul(s, tA, tB, DType::BF16, DType::F32, 0.5, 0.0, 1e-4);
      }
}

// f64 products (the evaluation's Gram matrices, hidden_state.cu): CUBLAS_COMPUTE_64F against
// OpenBLAS's dgemm, to f64 rounding (1e-13 relative L2), with a slice view as an operand.
TEST(CudaDense, MatmulF64) {
  OFT_REQUIRE_CUDA();
  const std::vector<MM> shapes = {{1, 1, 1}, {7, 5, 3}, {129, 65, 257}, {70, 70, 1000}};
  for (const MM& s : shapes)
    for (bool tA : {false, true})
      for (bool tB : {false, true})
        for (double beta : {0.0, 0.5}) {
          SCOPED_TRACE(::testing::Message() << "M=" << s.M << " N=" << s.N << " K=" << s.K
                                            << " tA=" << tA << " tB=" << tB << " beta=" << beta);
          const Tensor a = randn(tA ? Shape{s.K, s.M} : Shape{s.M, s.K}).cast(DType::F64);
          const Tensor b = randn(tB ? Shape{s.N, s.K} : Shape{s.K, s.N}).cast(DType::F64);
          const Tensor c0 = randn({s.M, s.N}).cast(DType::F64);
          Tensor ref = c0.clone();
          cpu().matmul(ref, a, tA, b, tB, 0.75, beta);
          Tensor gc = c0.to(Device::CUDA);
          gpu().matmul(gc, a.to(Device::CUDA), tA, b.to(Device::CUDA), tB, 0.75, beta);
          EXPECT_LE(rel_err(gc, ref), 1e-13);
        }
  // A view of rows [3, 3 + 40) of a [50, 17] matrix times its transpose.
  const Tensor x = randn({50, 17}).cast(DType::F64);
  const Tensor xs = x.slice(3, 43);
  Tensor ref = Tensor::zeros({40, 40}, DType::F64);
  cpu().matmul(ref, xs, false, xs, true, 1.0, 0.0);
  const Tensor gx = x.to(Device::CUDA);
  Tensor gc = Tensor::zeros({40, 40}, DType::F64, Device::CUDA);
  gpu().matmul(gc, gx.slice(3, 43), false, gx.slice(3, 43), true, 1.0, 0.0);
  EXPECT_LE(rel_err(gc, ref), 1e-13);
  // f64 takes no mixed dtypes.
  Tensor c32 = Tensor::zeros({40, 40}, DType::F32, Device::CUDA);
  EXPECT_THROW(gpu().matmul(c32, gx.slice(3, 43), false, gx.slice(3, 43), true, 1.0, 0.0), Error);
}

TEST(CudaDense, MatmulRejectsBadShapes) {
  OFT_REQUIRE_CUDA();
  Tensor a = Tensor::zeros({4, 5}, DType::F32, Device::CUDA);
  Tensor b = Tensor::zeros({6, 3}, DType::F32, Device::CUDA);
  Tensor c = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  EXPECT_THROW(gpu().matmul(c, a, false, b, false, 1.0, 0.0), Error);
  Tensor b16 = Tensor::zeros({5, 3}, DType::BF16, Device::CUDA);
  EXPECT_THROW(gpu().matmul(c, a, false, b16, false, 1.0, 0.0), Error);  // A, B dtypes differ
}

// ---------------------------------------------------------------- embedding

TEST(CudaDense, EmbeddingForward) {
  OFT_REQUIRE_CUDA();
  struct Case {
    int64_t V, C, B, T, P, pos_offset;
    bool with_wpe;
  };
  const std::vector<Case> cases = {{50, 768, 3, 5, 16, 2, true},   {50, 768, 3, 5, 16, 0, false},
                                   {11, 13, 2, 7, 9, 1, true},     {11, 13, 2, 7, 9, 0, false},
                                   {1000, 64, 4, 33, 40, 7, true}, {5, 1, 1, 1, 1, 0, true}};
  for (DType d : kDtypes)
    for (const Case& k : cases)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " V=" << k.V << " C=" << k.C << " T="
                                          << k.T << " wpe=" << k.with_wpe << " mis=" << mis);
        const int64_t N = k.B * k.T;
        const Tensor tokens = randint({k.B, k.T}, 0, int(k.V));
        const Tensor wte = rounded(randn({k.V, k.C}), d), wpe = rounded(randn({k.P, k.C}), d);
        Tensor ref = Tensor::empty({N, k.C}, DType::F32);
        cpu().embedding_fwd(ref, tokens, wte, k.with_wpe ? wpe : Tensor(), k.T, k.pos_offset);
        Tensor out = poisoned({N, k.C}, d);
        gpu().embedding_fwd(out, tokens.to(Device::CUDA), gpu_copy(wte, d, mis),
                            k.with_wpe ? to_gpu(wpe, d) : Tensor(), k.T, k.pos_offset);
        EXPECT_GPU_CLOSE(out, ref, tol_for(d));
      }
}

TEST(CudaDense, EmbeddingOutOfRangeTokenGivesNanRow) {
  OFT_REQUIRE_CUDA();
  const int64_t V = 20, C = 24, T = 4, N = 8;
  std::vector<double> ids = {1, 2, 20, 3, -1, 5, 6, 19};  // rows 2 and 4 are invalid
  const Tensor tokens = Tensor::from_vector({N}, ids, DType::I32);
  std::vector<double> safe = ids;
  safe[2] = 0;
  safe[4] = 0;
  for (DType d : kDtypes) {
    const Tensor wte = rounded(randn({V, C}), d), wpe = rounded(randn({T, C}), d);
    Tensor ref = Tensor::empty({N, C}, DType::F32);
    cpu().embedding_fwd(ref, Tensor::from_vector({N}, safe, DType::I32), wte, wpe, T, 0);
    Tensor out = poisoned({N, C}, d);
    gpu().embedding_fwd(out, tokens.to(Device::CUDA), to_gpu(wte, d), to_gpu(wpe, d), T, 0);
    const std::vector<double> g = out.to_vector(), r = ref.to_vector();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const size_t i = size_t(n * C + c);
        if (n == 2 || n == 4)
          EXPECT_TRUE(std::isnan(g[i])) << dtype_label(d) << " row " << n;
        else
          EXPECT_NEAR(g[i], r[i], 0.02 * (1 + std::abs(r[i]))) << dtype_label(d) << " row " << n;
      }
    // The backward skips those rows instead of writing out of bounds.
    Tensor dwte = Tensor::zeros({V, C}, DType::F32, Device::CUDA);
    Tensor dout = to_gpu(randn({N, C}), d);
    Tensor no_wpe;
    gpu().embedding_bwd(dwte, no_wpe, dout, tokens.to(Device::CUDA), T, 0);
    for (double x : dwte.to_vector()) EXPECT_TRUE(std::isfinite(x));
  }
}

TEST(CudaDense, EmbeddingBackwardAccumulates) {
  OFT_REQUIRE_CUDA();
  struct Case {
    int64_t V, C, N, T, P, pos_offset;
    bool with_wpe;
  };
  // Small vocabularies so tokens repeat (concurrent atomics on one row); N not always a
  // multiple of T (the CPU contract uses t = n % T).
  const std::vector<Case> cases = {
      {7, 768, 15, 5, 16, 2, true},    {7, 768, 15, 5, 16, 0, false},
      {3, 13, 17, 4, 9, 3, true},      {50, 64, 4 * 33, 33, 40, 7, true},
      {1000, 36, 64, 64, 64, 0, true}, {2, 1, 3, 3, 3, 0, true}};
  for (DType d : kDtypes)
    for (const Case& k : cases)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_label(d) << " V=" << k.V << " C=" << k.C << " N=" << k.N
                     << " T=" << k.T << " wpe=" << k.with_wpe << " mis=" << mis);
        const Tensor tokens = randint({k.N}, 0, int(k.V));
        const Tensor dout = rounded(randn({k.N, k.C}), d);
        const Tensor dwte0 = randn({k.V, k.C}), dwpe0 = randn({k.P, k.C});
        Tensor rte = dwte0.clone(), rpe = k.with_wpe ? dwpe0.clone() : Tensor();
        cpu().embedding_bwd(rte, rpe, dout, tokens, k.T, k.pos_offset);
        Tensor gte = to_gpu(dwte0, DType::F32);
        Tensor gpe = k.with_wpe ? to_gpu(dwpe0, DType::F32) : Tensor();
        gpu().embedding_bwd(gte, gpe, gpu_copy(dout, d, mis), tokens.to(Device::CUDA), k.T,
                            k.pos_offset);
        // f32 gradients of values exact in f32: f32 tolerance for both dtypes.
        EXPECT_GPU_CLOSE(gte, rte, kTolF32);
        if (k.with_wpe) {
          EXPECT_GPU_CLOSE(gpe, rpe, kTolF32);
        }
      }
}

// ---------------------------------------------------------------- cross-entropy

struct CE {
  int64_t N, V;
};
const std::vector<CE> kCeShapes = {{1, 1},     {3, 7},     {17, 129},  {5, 1000},
                                   {4, 50257}, {3, 30522}, {2, 50304}, {64, 8}};

// Targets in [0, V) with row 1 ignored (-1) when there is one.
Tensor ce_targets(int64_t N, int64_t V) {
  std::vector<double> t = randint({N}, 0, int(V)).to_vector();
  if (N > 1) t[1] = -1;
  return Tensor::from_vector({N}, t, DType::I32);
}

TEST(CudaDense, CrossEntropyForward) {
  OFT_REQUIRE_CUDA();
  for (DType d : kDtypes)
    for (const CE& s : kCeShapes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_label(d) << " N=" << s.N << " V=" << s.V << " mis=" << mis);
        const Tensor logits = rounded(randn({s.N, s.V}, 3.0), d);
        const Tensor tg = ce_targets(s.N, s.V);
        Tensor ref = Tensor::empty({s.N}, DType::F32);
        cpu().cross_entropy_fwd(ref, logits, tg, s.V);
        Tensor losses = poisoned({s.N}, DType::F32);
        gpu().cross_entropy_fwd(losses, gpu_copy(logits, d, mis), tg.to(Device::CUDA), s.V);
        EXPECT_GPU_CLOSE(losses, ref, tol_for(d));
        if (s.N > 1) {
          EXPECT_EQ(losses.to_vector()[1], 0.0) << "ignored row";
        }
      }
}

TEST(CudaDense, CrossEntropyBackwardIncludingInPlace) {
  OFT_REQUIRE_CUDA();
  for (DType d : kDtypes)
    for (const CE& s : kCeShapes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_label(d) << " N=" << s.N << " V=" << s.V << " mis=" << mis);
        const Tensor logits = rounded(randn({s.N, s.V}, 3.0), d);
        const Tensor tg = ce_targets(s.N, s.V), gtg = tg.to(Device::CUDA);
        const double scale = 1.0 / double(s.N);
        Tensor ref = Tensor::empty({s.N, s.V}, DType::F32);
        cpu().cross_entropy_bwd(ref, logits, tg, scale, s.V);
        // Separate output (with mis: logits misaligned, dlogits aligned -> different phase).
        Tensor dl = poisoned({s.N, s.V}, d);
        gpu().cross_entropy_bwd(dl, gpu_copy(logits, d, mis), gtg, scale, s.V);
        EXPECT_GPU_CLOSE(dl, ref, tol_for(d));
        // In place: dlogits aliases logits.
        Tensor inplace = gpu_copy(logits, d, mis);
        gpu().cross_entropy_bwd(inplace, inplace, gtg, scale, s.V);
        EXPECT_GPU_CLOSE(inplace, ref, tol_for(d));
        if (s.N > 1) {
          const std::vector<double> g = inplace.to_vector();
          for (int64_t v = 0; v < s.V; ++v) ASSERT_EQ(g[size_t(s.V + v)], 0.0) << "ignored row";
        }
      }
}

// The fused training-step op against the CPU backend, into a separate buffer and in place,
// with ignored rows and (the model's layout) rows padded to an aligned width ld >= V whose
// padding columns hold random values that must be ignored and get a zero gradient. Its losses
// and gradient must also equal the GPU's cross_entropy_fwd and cross_entropy_bwd at scale 1
// bit for bit on aligned rows (same statistics, same arithmetic), to rounding on misaligned ones.
TEST(CudaDense, CrossEntropyFwdGradIncludingInPlaceAndPadding) {
  OFT_REQUIRE_CUDA();
  struct Padded {
    int64_t N, V, ld;
  };
  std::vector<Padded> shapes = {{16, 50257, 50304}, {5, 30522, 30528}, {7, 301, 320}, {3, 7, 8}};
  for (const CE& c : kCeShapes) shapes.push_back({c.N, c.V, c.V});
  for (DType d : kDtypes)
    for (const Padded& s : shapes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_label(d) << " N=" << s.N << " V=" << s.V
                                          << " ld=" << s.ld << " mis=" << mis);
        const Tensor logits = rounded(randn({s.N, s.ld}, 3.0), d);
        std::vector<double> t = ce_targets(s.N, s.V).to_vector();
        if (s.N > 4) t[4] = -1;  // a second ignored row
        if (s.N > 2) t[2] = double(s.V - 1);  // the last real column
        const Tensor tg = Tensor::from_vector({s.N}, t, DType::I32), gtg = tg.to(Device::CUDA);
        Tensor ref_l = Tensor::empty({s.N}, DType::F32), ref_d = Tensor::empty({s.N, s.ld}, DType::F32);
        cpu().cross_entropy_fwd_grad(ref_l, ref_d, logits, tg, s.V);
        // Separate output (with mis: logits misaligned, dlogits aligned -> different phase).
        const Tensor glogits = gpu_copy(logits, d, mis);
        Tensor losses = poisoned({s.N}, DType::F32), dl = poisoned({s.N, s.ld}, d);
        gpu().cross_entropy_fwd_grad(losses, dl, glogits, gtg, s.V);
        EXPECT_GPU_CLOSE(losses, ref_l, tol_for(d));
        EXPECT_GPU_CLOSE(dl, ref_d, tol_for(d));
        // The two-op path on the GPU gives the same bits on aligned rows. Misaligned rows are
        // summed in an order set by where the vector loads start, which differs between the
        // kernels: equal to rounding there.
        auto expect_same = [&](const Tensor& a, const Tensor& b, const char* what) {
          if (mis)
            EXPECT_GPU_CLOSE(a, b, tol_for(d)) << what;
          else
            EXPECT_EQ(a.to_vector(), b.to_vector()) << what;
        };
        Tensor l2 = poisoned({s.N}, DType::F32), d2 = poisoned({s.N, s.ld}, d);
        gpu().cross_entropy_fwd(l2, glogits, gtg, s.V);
        gpu().cross_entropy_bwd(d2, glogits, gtg, 1.0, s.V);
        expect_same(losses, l2, "two-op losses");
        expect_same(dl, d2, "two-op gradient");
        // In place: dlogits aliases logits.
        Tensor inplace = gpu_copy(logits, d, mis);
        Tensor li = poisoned({s.N}, DType::F32);
        gpu().cross_entropy_fwd_grad(li, inplace, inplace, gtg, s.V);
        expect_same(li, losses, "in place losses");
        expect_same(inplace, dl, "in place gradient");
        // Ignored rows: loss 0 and a zero row; padding columns: zero everywhere.
        const std::vector<double> g = inplace.to_vector(), lv = li.to_vector();
        for (int64_t n = 0; n < s.N; ++n) {
          if (t[size_t(n)] < 0) {
            ASSERT_EQ(lv[size_t(n)], 0.0) << "ignored row " << n;
            for (int64_t v = 0; v < s.V; ++v) ASSERT_EQ(g[size_t(n * s.ld + v)], 0.0) << "ignored row " << n;
          }
          for (int64_t v = s.V; v < s.ld; ++v) ASSERT_EQ(g[size_t(n * s.ld + v)], 0.0) << "padding, row " << n;
        }
      }
}

TEST(CudaDense, CrossEntropyOutOfRangeTargetGivesNan) {
  OFT_REQUIRE_CUDA();
  const int64_t N = 3, V = 10;
  const Tensor tg = Tensor::from_vector({N}, {2, 10, 4}, DType::I32);
  for (DType d : kDtypes) {
    const Tensor logits = to_gpu(randn({N, V}), d);
    Tensor losses = poisoned({N}, DType::F32);
    gpu().cross_entropy_fwd(losses, logits, tg.to(Device::CUDA), logits.dim(1));
    const std::vector<double> l = losses.to_vector();
    EXPECT_TRUE(std::isfinite(l[0]) && std::isfinite(l[2])) << dtype_label(d);
    EXPECT_TRUE(std::isnan(l[1])) << dtype_label(d);
    // The fused op: NaN loss and NaN gradient row for the bad target (padding still 0), in place.
    Tensor padded = to_gpu(randn({N, V + 6}), d), lf = poisoned({N}, DType::F32);
    gpu().cross_entropy_fwd_grad(lf, padded, padded, tg.to(Device::CUDA), V);
    const std::vector<double> fl = lf.to_vector(), g = padded.to_vector();
    EXPECT_TRUE(std::isfinite(fl[0]) && std::isfinite(fl[2])) << dtype_label(d);
    EXPECT_TRUE(std::isnan(fl[1])) << dtype_label(d);
    for (int64_t v = 0; v < V + 6; ++v) {
      const double x = g[size_t((V + 6) + v)];
      if (v < V) {
        EXPECT_TRUE(std::isnan(x)) << dtype_label(d) << " col " << v;
      } else {
        EXPECT_EQ(x, 0.0) << dtype_label(d) << " padding col " << v;
      }
      EXPECT_TRUE(std::isfinite(g[size_t(v)]) && std::isfinite(g[size_t(2 * (V + 6) + v)]));
    }
  }
}

// ---------------------------------------------------------------- adamw

TEST(CudaDense, AdamWSeveralStepsMatchCpu) {
  OFT_REQUIRE_CUDA();
  for (int64_t n : {1, 7, 4099, 1000003})
    for (bool mis : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " mis=" << mis);
      Tensor p = randn({n}), m = randn({n}, 0.1), v;
      {  // v >= 0: squares of N(0, 0.1^2)
        std::vector<double> vv = randn({n}, 0.1).to_vector();
        for (double& x : vv) x = x * x;
        v = Tensor::from_vector({n}, vv);
      }
      Tensor gp = gpu_copy(p, DType::F32, mis), gm = gpu_copy(m, DType::F32, mis),
             gv = gpu_copy(v, DType::F32, mis);
      for (int64_t step = 1; step <= 5; ++step) {
        ops::AdamWStep h;
        h.lr = 3e-3 * double(step);
        h.beta1 = 0.9;
        h.beta2 = 0.95;
        h.eps = 1e-8;
        h.weight_decay = 0.1;
        h.step = step;
        h.grad_scale = step % 2 ? 0.5 : 1.0;
        const Tensor g = randn({n});
        cpu().adamw(p, g, m, v, h);
        gpu().adamw(gp, gpu_copy(g, DType::F32, mis), gm, gv, h);
      }
      // The same f32 operations, which nvcc contracts into FMAs where the CPU build rounds each
      // product: a few ulps per step. m = beta1 m + (1 - beta1) g mixes signs, so its elements
      // near zero carry those ulps as large relative errors (1.09e-6 relative L2 seen on an
      // H100 against 1e-6 for p and v).
      EXPECT_GPU_CLOSE(gp, p, 1e-6);
      EXPECT_GPU_CLOSE(gm, m, 5e-6);
      EXPECT_GPU_CLOSE(gv, v, 1e-6);
    }
}

// The multi-tensor step as training runs it: several tensors in one launch, with bf16 and f32
// compute copies, sizes around the 4-element groups and the 8192-element chunks, and misaligned
// views (the 16-byte path then falls back per segment); and the gradient norm over the same
// tensors (f32 and bf16).
TEST(CudaDense, AdamWMultiAndNormMatchCpu) {
  OFT_REQUIRE_CUDA();
  const int64_t sizes[] = {1, 7, 4096, 4099, 8195, 70001};
  std::vector<Tensor> p, g, m, v, c, gp, gg, gm, gv, gc;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    const int64_t n = sizes[i];
    const bool mis = i % 3 == 2;
    const DType cd = i % 2 ? DType::F32 : DType::BF16;
    p.push_back(randn({n}));
    g.push_back(randn({n}));
    m.push_back(randn({n}, 0.1));
    std::vector<double> vv = randn({n}, 0.1).to_vector();
    for (double& x : vv) x = x * x;
    v.push_back(Tensor::from_vector({n}, vv));
    c.push_back(Tensor::zeros({n}, cd));
    gp.push_back(gpu_copy(p[i], DType::F32, mis));
    gg.push_back(gpu_copy(g[i], DType::F32, mis));
    gm.push_back(gpu_copy(m[i], DType::F32, mis));
    gv.push_back(gpu_copy(v[i], DType::F32, false));
    gc.push_back(gpu_copy(c[i], cd, mis));
  }
  std::vector<ops::AdamWTensors> cpu_items, gpu_items;
  for (size_t i = 0; i < p.size(); ++i) {
    cpu_items.push_back({&p[i], &g[i], &m[i], &v[i], &c[i], i % 2 ? 0.1 : 0.0});
    gpu_items.push_back({&gp[i], &gg[i], &gm[i], &gv[i], &gc[i], i % 2 ? 0.1 : 0.0});
  }
  for (int64_t step = 1; step <= 3; ++step) {
    ops::AdamWStep h;
    h.lr = 1e-3 * double(step);
    h.beta2 = 0.95;
    h.step = step;
    h.grad_scale = 0.75;
    cpu().adamw_multi(cpu_items, h);
    gpu().adamw_multi(gpu_items, h);
  }
  for (size_t i = 0; i < p.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "tensor " << i << " n=" << sizes[i]);
    EXPECT_GPU_CLOSE(gp[i], p[i], 1e-6);
    EXPECT_GPU_CLOSE(gm[i], m[i], 1e-6);
    EXPECT_GPU_CLOSE(gv[i], v[i], 1e-6);
    EXPECT_GPU_CLOSE(gc[i], c[i], c[i].dtype() == DType::BF16 ? 4e-3 : 1e-6) << "compute copy";
  }
  // The norm of the gradients (f32) and of the compute copies (bf16 / f32).
  for (bool copies : {false, true}) {
    std::vector<const Tensor*> xs, cxs;
    double want = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      const Tensor& x = copies ? c[i] : g[i];
      for (double e : x.to_vector()) want += e * e;
      xs.push_back(copies ? &gc[i] : &gg[i]);
    }
    Tensor acc = Tensor::zeros({1}, DType::F64, Device::CUDA);
    gpu().sum_squares_multi(acc, xs);
    EXPECT_NEAR(acc.to(Device::CPU).to_vector()[0], want, 1e-5 * want) << (copies ? "copies" : "grads");
  }
}

// ---------------------------------------------------------------- timing (prints only)

// Milliseconds per call of f over `iters` calls after warm-up, by CUDA events on the stream.
TEST(CudaDenseBench, Timing) {
  OFT_REQUIRE_CUDA();
  const DType bf = DType::BF16;
  const int64_t N = 16384, C = 768, F = 3072, V = 50304;
  struct Mat {
    const char* name;
    Tensor *c, *a, *b;
    bool ta, tb;
    double beta;
  };
  Tensor x = gpu_random(N, C, bf, 1.0), h = gpu_random(N, F, bf, 1.0);
  Tensor wqkv = gpu_random(3 * C, C, bf, 0.02), wfc = gpu_random(F, C, bf, 0.02),
         wproj = gpu_random(C, F, bf, 0.02), wte = gpu_random(V, C, bf, 0.02);
  Tensor qkv = Tensor::empty({N, 3 * C}, bf, Device::CUDA),
         fc = Tensor::empty({N, F}, bf, Device::CUDA),
         proj = Tensor::empty({N, C}, bf, Device::CUDA),
         logits = Tensor::empty({N, V}, bf, Device::CUDA);
  Tensor dx = Tensor::empty({N, C}, bf, Device::CUDA);
  Tensor dwqkv = Tensor::zeros({3 * C, C}, DType::F32, Device::CUDA),
         dwfc = Tensor::zeros({F, C}, DType::F32, Device::CUDA),
         dwproj = Tensor::zeros({C, F}, DType::F32, Device::CUDA),
         dwte = Tensor::zeros({V, C}, DType::F32, Device::CUDA);
  // Model layouts (layers.cpp / transformer.cpp): y = x w^T, dx = dy w, dw += dy^T x.
  const std::vector<Mat> mats = {
      {"qkv     [N,768]x[2304,768]^T", &qkv, &x, &wqkv, false, true, 0.0},
      {"fc      [N,768]x[3072,768]^T", &fc, &x, &wfc, false, true, 0.0},
      {"proj    [N,3072]x[768,3072]^T", &proj, &h, &wproj, false, true, 0.0},
      {"head    [N,768]x[50304,768]^T", &logits, &x, &wte, false, true, 0.0},
      {"dx fc   [N,3072]x[3072,768]", &dx, &h, &wfc, false, false, 0.0},
      {"dhead   [N,50304]x[50304,768]", &dx, &logits, &wte, false, false, 0.0},
      {"dW qkv  f32 += [N,2304]^T[N,768]", &dwqkv, &qkv, &x, true, false, 1.0},
      {"dW fc   f32 += [N,3072]^T[N,768]", &dwfc, &fc, &x, true, false, 1.0},
      {"dW proj f32 += [N,768]^T[N,3072]", &dwproj, &proj, &h, true, false, 1.0},
      {"dwte    f32 += [N,50304]^T[N,768]", &dwte, &logits, &x, true, false, 1.0},
  };
  std::printf("[ timing ] bf16 matmuls, N = %lld rows (cuBLASLt, fp32 accumulation)\n",
              static_cast<long long>(N));
  for (const Mat& m : mats) {
    const int64_t M = m.c->dim(0), NN = m.c->dim(1), K = m.ta ? m.a->dim(0) : m.a->dim(1);
    const double ms = time_ms([&] { gpu().matmul(*m.c, *m.a, m.ta, *m.b, m.tb, 1.0, m.beta); });
    std::printf("[ timing ]   %-36s %8.3f ms  %6.1f TFLOP/s\n", m.name, ms,
                2.0 * double(M) * double(NN) * double(K) / (ms * 1e-3) / 1e12);
  }
  // Free the head tensors before the cross-entropy buffers.
  logits = Tensor();
  dwte = Tensor();
  const int64_t Vce = 50257;
  Tensor ce_logits = gpu_random(N, Vce, bf, 3.0);
  const Tensor targets = randint({N}, 0, int(Vce)).to(Device::CUDA);
  Tensor losses = Tensor::empty({N}, DType::F32, Device::CUDA);
  const double fwd = time_ms([&] { gpu().cross_entropy_fwd(losses, ce_logits, targets, ce_logits.dim(1)); });
  Tensor dlogits = Tensor::empty({N, Vce}, bf, Device::CUDA);
  const double bwd =
      time_ms([&] { gpu().cross_entropy_bwd(dlogits, ce_logits, targets, 1.0 / double(N), ce_logits.dim(1)); });
  const double gb = double(N) * double(Vce) * 2 / 1e9;
  std::printf(
      "[ timing ] cross-entropy bf16 [%lld, %lld]: fwd %.3f ms (%.0f GB/s), bwd %.3f ms "
      "(%.0f GB/s incl. re-read), fwd+bwd %.3f ms\n",
      static_cast<long long>(N), static_cast<long long>(Vce), fwd, gb / (fwd * 1e-3), bwd,
      3 * gb / (bwd * 1e-3), fwd + bwd);
  const double other = time_ms([&] {
    gpu().cross_entropy_fwd(losses, ce_logits, targets, ce_logits.dim(1));
    gpu().cross_entropy_bwd(ce_logits, ce_logits, targets, 1e-30, ce_logits.dim(1));  // in place, stays finite
  });
  std::printf("[ timing ]   fwd + in-place bwd: %.3f ms\n", other);
  // The model's layout: rows padded to 50304, fwd + in-place bwd vs the fused op (in place; its
  // output is a gradient in [-1, 1], so repeating it on its own output stays finite).
  ce_logits = Tensor();
  dlogits = Tensor();
  const int64_t Vp = 50304;
  Tensor padded = gpu_random(N, Vp, bf, 3.0);
  const double two_ops = time_ms([&] {
    gpu().cross_entropy_fwd(losses, padded, targets, Vce);
    gpu().cross_entropy_bwd(padded, padded, targets, 1e-30, Vce);
  });
  const double fused = time_ms([&] { gpu().cross_entropy_fwd_grad(losses, padded, padded, targets, Vce); });
  std::printf("[ timing ] cross-entropy bf16 [%lld, %lld of %lld]: fwd + in-place bwd %.3f ms, "
              "fwd_grad in place %.3f ms (%.0f GB/s incl. re-read)\n",
              static_cast<long long>(N), static_cast<long long>(Vce), static_cast<long long>(Vp),
              two_ops, fused, 3 * double(N) * double(Vp) * 2 / 1e9 / (fused * 1e-3));
  // Small ops at training sizes, for reference.
  Tensor db = Tensor::zeros({F}, DType::F32, Device::CUDA);
  const Tensor bias = to_gpu(randn({F}), bf);
  const double t_bg = time_ms([&] { gpu().bias_grad(db, fc); });
  const double t_ab = time_ms([&] { gpu().add_bias(fc, bias); });
  std::printf("[ timing ] bias_grad [%lld,%d] bf16: %.3f ms; add_bias: %.3f ms\n",
              static_cast<long long>(N), int(F), t_bg, t_ab);
  // The optimizer step and the gradient norm over 124M parameters in 12 x 4 + 2 tensors of
  // GPT-2 124M's matrix sizes (bf16 compute copies): 30 bytes per parameter for AdamW.
  padded = Tensor();
  {
    std::vector<Tensor> ps, gs, ms, vs, cs;
    std::vector<int64_t> sizes;
    for (int l = 0; l < 12; ++l)
      for (int64_t n : {3 * C * C, C * C, F * C, F * C}) sizes.push_back(n);
    sizes.push_back(V * C);
    sizes.push_back(1024 * C);
    int64_t total = 0;
    for (int64_t n : sizes) {
      ps.push_back(Tensor::zeros({n}, DType::F32, Device::CUDA));
      gs.push_back(Tensor::zeros({n}, DType::F32, Device::CUDA));
      ms.push_back(Tensor::zeros({n}, DType::F32, Device::CUDA));
      vs.push_back(Tensor::zeros({n}, DType::F32, Device::CUDA));
      cs.push_back(Tensor::zeros({n}, bf, Device::CUDA));
      total += n;
    }
    std::vector<ops::AdamWTensors> items;
    std::vector<const Tensor*> grads;
    for (size_t i = 0; i < sizes.size(); ++i) {
      items.push_back({&ps[i], &gs[i], &ms[i], &vs[i], &cs[i], 0.1});
      grads.push_back(&gs[i]);
    }
    ops::AdamWStep h;
    const double t_adam = time_ms([&] { gpu().adamw_multi(items, h); });
    Tensor acc = Tensor::zeros({1}, DType::F64, Device::CUDA);
    const double t_norm = time_ms([&] { gpu().sum_squares_multi(acc, grads); });
    std::printf("[ timing ] adamw_multi %.1fM params: %.3f ms (%.0f GB/s); gradient norm %.3f ms "
                "(%.0f GB/s)\n",
                double(total) / 1e6, t_adam, 30.0 * double(total) / 1e9 / (t_adam * 1e-3), t_norm,
                4.0 * double(total) / 1e9 / (t_norm * 1e-3));
  }
  SUCCEED();
}

}  // namespace
}  // namespace oft::testing
