// fp64 finite-difference gradient checks of every CPU op (tolerances in gradcheck.h).
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/layers.h"
#include "ops/ops.h"

using namespace oft;
using namespace oft::testing;

namespace {
ops::Backend& cpu() { return ops::cpu_backend(); }
}  // namespace

TEST(OpGrad, MatmulAllTransposes) {
  Rng rng(1);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t M = 3, K = 4, N = 5;
      Tensor A = randn(ta ? Shape{K, M} : Shape{M, K}, rng);
      Tensor B = randn(tb ? Shape{N, K} : Shape{K, N}, rng);
      Tensor R = randn({M, N}, rng), C = Tensor::zeros({M, N}, DType::F64);
      auto loss = [&] {
        cpu().matmul(C, A, ta, B, tb, 1.0, 0.0);
        return dot(C, R);
      };
      // dA = R B^T (or its transpose), dB = A^T R: computed with the op itself.
      Tensor dA = Tensor::zeros(A.shape(), DType::F64), dB = Tensor::zeros(B.shape(), DType::F64);
      if (!ta) cpu().matmul(dA, R, false, B, !tb, 1, 0); else cpu().matmul(dA, B, tb, R, true, 1, 0);
      if (!tb) cpu().matmul(dB, A, !ta, R, false, 1, 0); else cpu().matmul(dB, R, true, A, ta, 1, 0);
      expect_grad("dA", A, dA, loss);
      expect_grad("dB", B, dB, loss);
    }
}

TEST(OpGrad, LinearWithBias) {
  Rng rng(2);
  ParamStore ps;
  Linear lin(ps, "lin", 6, 4, true, DType::F64, Device::CPU);
  lin.w.copy_from(randn({4, 6}, rng));
  lin.b.copy_from(randn({4}, rng));
  Tensor x = randn({5, 6}, rng), R = randn({5, 4}, rng), y = Tensor::zeros({5, 4}, DType::F64);
  auto loss = [&] {
    lin.forward(y, x);
    return dot(y, R);
  };
  Tensor dx = Tensor::zeros({5, 6}, DType::F64);
  lin.backward(dx, R, x, false);
  expect_grad("dx", x, dx, loss);
  expect_grad("dW", lin.w, lin.dw, loss);
  expect_grad("db", lin.b, lin.db, loss);
}

class NormGrad : public ::testing::TestWithParam<std::string> {};

TEST_P(NormGrad, InputAndParams) {
  Rng rng(3);
  ParamStore ps;
  const int64_t N = 4, C = 7;
  Norm norm(ps, "n", C, parse_norm(GetParam()), 1e-5, true, DType::F64, Device::CPU);
  if (norm.w.defined()) norm.w.copy_from(randn({C}, rng, 0.5));
  if (norm.b.defined()) norm.b.copy_from(randn({C}, rng, 0.5));
  Tensor x = randn({N, C}, rng, 2.0), R = randn({N, C}, rng);
  NormSaved s;
  auto loss = [&] {
    norm.forward(s, x);
    return dot(s.out, R);
  };
  loss();
  // Accumulate into a non-zero dx to check the accumulate path too.
  Tensor base = randn({N, C}, rng);
  Tensor dx = base.clone();
  // dsum (a folded bias gradient) accumulates the column sums of the dx written.
  Tensor dsum = randn({C}, rng), want = dsum.clone();
  norm.backward(dx, R, x, s, true, &dsum);
  ops::cpu_backend().bias_grad(want, dx);
  for (int64_t c = 0; c < C; ++c) EXPECT_DOUBLE_EQ(dsum.data<double>()[c], want.data<double>()[c]);
  ops::cpu_backend().axpy(dx, base, -1.0);
  expect_grad("dx", x, dx, loss);
  if (norm.w.defined()) expect_grad("dw", norm.w, norm.dw, loss);
  if (norm.b.defined()) expect_grad("db", norm.b, norm.db, loss);
}
INSTANTIATE_TEST_SUITE_P(All, NormGrad, ::testing::Values("layernorm", "rmsnorm", "none"));

// LayerNorm with the per-token gate of its output (layernorm_gate_fwd / _bwd through the Norm
// layer): the loss reads both the norm output and the gate, so dx carries both paths.
TEST(OpGrad, LayerNormGate) {
  Rng rng(13);
  ParamStore ps;
  const int64_t N = 5, G = 3, D = 2, C = G * D;
  Norm norm(ps, "n", C, NormKind::LayerNorm, 1e-5, true, DType::F64, Device::CPU);
  norm.w.copy_from(randn({C}, rng, 0.5));
  norm.b.copy_from(randn({C}, rng, 0.5));
  Tensor gw = randn({G, 1, D}, rng), gb = randn({G}, rng);
  Tensor dgw = Tensor::zeros(gw.shape(), DType::F64), dgb = Tensor::zeros({G}, DType::F64);
  Tensor x = randn({N, C}, rng, 2.0), R = randn({N, C}, rng), Rg = randn({N, G}, rng);
  Tensor gate, logits;
  NormGate ng;
  ng.gate = &gate;
  ng.logits = &logits;
  ng.w = &gw;
  ng.b = &gb;
  ng.dw = &dgw;
  ng.db = &dgb;
  ng.dgate = &Rg;
  NormSaved s;
  auto loss = [&] {
    norm.forward(s, x, &ng);
    return dot(s.out, R) + dot(gate, Rg);
  };
  loss();
  // The gate is the grouped layer's sigmoid of the stored output.
  Tensor want_l = Tensor::zeros({N, G}, DType::F64), want_g = Tensor::zeros({N, G}, DType::F64);
  cpu().grouped_linear_act_fwd(want_g, want_l, s.out, gw, gb, ops::Activation::Sigmoid);
  EXPECT_EQ(logits.to_vector(), want_l.to_vector());
  EXPECT_EQ(gate.to_vector(), want_g.to_vector());
  Tensor base = randn({N, C}, rng);
  Tensor dx = base.clone();
  Tensor dsum = randn({C}, rng), want = dsum.clone();
  norm.backward(dx, R, x, s, true, &dsum, &ng);
  cpu().bias_grad(want, dx);
  for (int64_t c = 0; c < C; ++c) EXPECT_DOUBLE_EQ(dsum.data<double>()[c], want.data<double>()[c]);
  cpu().axpy(dx, base, -1.0);
  expect_grad("dx", x, dx, loss);
  expect_grad("dw", norm.w, norm.dw, loss);
  expect_grad("db", norm.b, norm.db, loss);
  expect_grad("dgw", gw, dgw, loss);
  expect_grad("dgb", gb, dgb, loss);
}

// The same norm and gate writing the bias-column layout (Norm::forward's `into`, ops.h): the
// rows, the pad (1, 0...), the gate and every gradient are those of the contiguous output.
TEST(OpGrad, LayerNormGateBiasColumnLayout) {
  Rng rng(18);
  ParamStore ps;
  const int64_t N = 5, G = 3, D = 2, C = G * D, P = C + ops::kBiasColumnPad;
  Norm norm(ps, "n", C, NormKind::LayerNorm, 1e-5, true, DType::F64, Device::CPU);
  norm.w.copy_from(randn({C}, rng, 0.5));
  norm.b.copy_from(randn({C}, rng, 0.5));
  Tensor gw = randn({G, 1, D}, rng), gb = randn({G}, rng);
  const Tensor x = randn({N, C}, rng, 2.0), dy = randn({N, C}, rng), dgate = randn({N, G}, rng);
  struct Run {
    Tensor gate, logits, dgw, dgb, dx, y;
    std::vector<double> dw, db;
  };
  auto run = [&](bool pitched) {
    Run r;
    r.dgw = Tensor::zeros(gw.shape(), DType::F64);
    r.dgb = Tensor::zeros({G}, DType::F64);
    NormGate ng;
    ng.gate = &r.gate;
    ng.logits = &r.logits;
    ng.w = &gw;
    ng.b = &gb;
    ng.dw = &r.dgw;
    ng.db = &r.dgb;
    ng.dgate = &dgate;
    NormSaved s;
    Tensor into = randn({N, P}, rng);  // garbage in the pad before the forward
    norm.forward(s, x, &ng, pitched ? &into : nullptr);
    r.y = s.out;
    ps.zero_grad();
    r.dx = Tensor::zeros({N, C}, DType::F64);
    norm.backward(r.dx, dy, x, s, false, nullptr, &ng);
    r.dw = norm.dw.to_vector();
    r.db = norm.db.to_vector();
    return r;
  };
  const Run plain = run(false), ext = run(true);
  ASSERT_EQ(ext.y.shape(), (Shape{N, P}));
  const std::vector<double> yv = plain.y.to_vector(), yev = ext.y.to_vector();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < P; ++c)
      ASSERT_EQ(yev[size_t(n * P + c)], c < C ? yv[size_t(n * C + c)] : c == C ? 1.0 : 0.0)
          << n << "," << c;
  EXPECT_EQ(ext.gate.to_vector(), plain.gate.to_vector());
  EXPECT_EQ(ext.logits.to_vector(), plain.logits.to_vector());
  EXPECT_EQ(ext.dx.to_vector(), plain.dx.to_vector());
  EXPECT_EQ(ext.dw, plain.dw);
  EXPECT_EQ(ext.db, plain.db);
  EXPECT_EQ(ext.dgw.to_vector(), plain.dgw.to_vector());
  EXPECT_EQ(ext.dgb.to_vector(), plain.dgb.to_vector());
}

class ActGrad : public ::testing::TestWithParam<std::string> {};
TEST_P(ActGrad, Input) {
  Rng rng(4);
  Tensor x = randn({40}, rng, 2.0), R = randn({40}, rng), y = Tensor::zeros({40}, DType::F64);
  // Keep ReLU inputs away from the kink at 0.
  for (int64_t i = 0; i < 40; ++i)
    if (std::fabs(x.data<double>()[i]) < 1e-3) x.data<double>()[i] = 0.5;
  const auto a = ops::parse_activation(GetParam());
  auto loss = [&] {
    cpu().activation_fwd(y, x, a);
    return dot(y, R);
  };
  Tensor dx = Tensor::zeros({40}, DType::F64);
  cpu().activation_bwd(dx, R, x, a);
  expect_grad("dx", x, dx, loss);
}
INSTANTIATE_TEST_SUITE_P(All, ActGrad, ::testing::Values("relu", "gelu", "gelu_erf", "sigmoid"));

// The MLP's fused ops as the model chains them: pre = x W1^T + b1, act = a(pre) (linear_act_fwd),
// out = act W2^T + b2; dpre = (dout W2) * a'(pre) (linear_act_bwd_dx), then fc's gradients from
// dpre. Checked against finite differences of sum(out * R) for x, W1 and b1. For ReLU also
// without `pre`, the derivative then read from act (as the model does).
struct MlpCase {
  std::string act;
  bool bias, keep_pre;
};
class LinearActGrad : public ::testing::TestWithParam<MlpCase> {};
TEST_P(LinearActGrad, ThroughTheNextLayer) {
  const MlpCase c = GetParam();
  Rng rng(13);
  const int64_t N = 5, C = 4, F = 6;
  const auto a = ops::parse_activation(c.act);
  Tensor x = randn({N, C}, rng), w1 = randn({F, C}, rng), w2 = randn({C, F}, rng);
  Tensor b1 = c.bias ? randn({F}, rng) : Tensor(), b2 = c.bias ? randn({C}, rng) : Tensor();
  Tensor R = randn({N, C}, rng);
  Tensor pre = c.keep_pre ? Tensor::zeros({N, F}, DType::F64) : Tensor();
  Tensor act = Tensor::zeros({N, F}, DType::F64), out = Tensor::zeros({N, C}, DType::F64);
  auto loss = [&] {
    cpu().linear_act_fwd(act, pre, x, w1, b1, a);
    cpu().linear_fwd(out, act, w2, b2);
    return dot(out, R);
  };
  loss();
  // The composition it stands for.
  Tensor pre_ref = Tensor::zeros({N, F}, DType::F64), act_ref = Tensor::zeros({N, F}, DType::F64);
  cpu().linear_fwd(pre_ref, x, w1, b1);
  cpu().activation_fwd(act_ref, pre_ref, a);
  EXPECT_EQ(act.to_vector(), act_ref.to_vector());
  if (c.keep_pre) {
    EXPECT_EQ(pre.to_vector(), pre_ref.to_vector());
  }
  // Keep ReLU's inputs away from its kink (a finite difference across it is meaningless).
  for (double v : pre_ref.to_vector()) ASSERT_GT(std::fabs(v), 1e-3);
  Tensor dpre = Tensor::zeros({N, F}, DType::F64);
  cpu().linear_act_bwd_dx(dpre, R, w2, c.keep_pre ? pre : act, a);
  Tensor dx = Tensor::zeros({N, C}, DType::F64), dw1 = Tensor::zeros({F, C}, DType::F64);
  Tensor db1 = Tensor::zeros({F}, DType::F64);
  cpu().matmul(dx, dpre, false, w1, false, 1, 0);
  cpu().matmul(dw1, dpre, true, x, false, 1, 0);
  cpu().bias_grad(db1, dpre);
  expect_grad("dx", x, dx, loss);
  expect_grad("dW1", w1, dw1, loss);
  if (c.bias) expect_grad("db1", b1, db1, loss);
}
INSTANTIATE_TEST_SUITE_P(
    All, LinearActGrad,
    ::testing::Values(MlpCase{"gelu", true, true}, MlpCase{"gelu", false, true},
                      MlpCase{"relu", true, true}, MlpCase{"relu", true, false},
                      MlpCase{"relu", false, false}, MlpCase{"gelu_erf", true, true},
                      MlpCase{"sigmoid", false, true}),
    [](const ::testing::TestParamInfo<MlpCase>& i) {
      return i.param.act + (i.param.bias ? "_bias" : "_nobias") +
             (i.param.keep_pre ? "_pre" : "_nopre");
    });

TEST(OpGrad, LinearActWithoutPreIsReluOnly) {
  Tensor x = Tensor::zeros({2, 3}, DType::F64), w = Tensor::zeros({4, 3}, DType::F64);
  Tensor act = Tensor::zeros({2, 4}, DType::F64), none;
  EXPECT_THROW(cpu().linear_act_fwd(act, none, x, w, Tensor(), ops::Activation::GELU_Tanh),
               std::exception);
}

// activation_bwd's ReLU gives exactly the same gradient from relu(x) as from x, in every dtype,
// including at 0, -0, tiny and huge values: relu'(x) = [x > 0] = [relu(x) > 0]. The model relies
// on it to keep no ReLU pre-activation.
TEST(OpGrad, ReluDerivativeFromOutputIsExact) {
  Rng rng(14);
  std::vector<double> xs = {0.0, -0.0, 1e-300, -1e-300, 1e-40, -1e-40, 1e30, -1e30, 3.0, -2.0};
  for (int i = 0; i < 200; ++i) xs.push_back(rng.normal() * 3);
  std::vector<double> dys(xs.size());
  for (auto& v : dys) v = rng.normal();
  for (DType dt : {DType::F64, DType::F32}) {
    const int64_t n = static_cast<int64_t>(xs.size());
    const Tensor x = Tensor::from_vector({n}, xs, dt), dy = Tensor::from_vector({n}, dys, dt);
    Tensor y = Tensor::zeros({n}, dt), d1 = Tensor::zeros({n}, dt), d2 = Tensor::zeros({n}, dt);
    cpu().activation_fwd(y, x, ops::Activation::ReLU);
    cpu().activation_bwd(d1, dy, x, ops::Activation::ReLU);
    cpu().activation_bwd(d2, dy, y, ops::Activation::ReLU);
    EXPECT_EQ(d1.to_vector(), d2.to_vector()) << dtype_name(dt);
  }
}

TEST(OpGrad, Embedding) {
  Rng rng(5);
  const int64_t B = 2, T = 3, V = 5, C = 4, P = 6;
  Tensor tok = Tensor::from_vector({B * T}, {1, 4, 1, 0, 2, 1}, DType::I32);
  Tensor wte = randn({V, C}, rng), wpe = randn({P, C}, rng), R = randn({B * T, C}, rng);
  Tensor out = Tensor::zeros({B * T, C}, DType::F64);
  auto loss = [&] {
    cpu().embedding_fwd(out, tok, wte, wpe, T, 2);
    return dot(out, R);
  };
  Tensor dwte = Tensor::zeros({V, C}, DType::F64), dwpe = Tensor::zeros({P, C}, DType::F64);
  cpu().embedding_bwd(dwte, dwpe, R, tok, T, 2);
  expect_grad("dwte", wte, dwte, loss);
  expect_grad("dwpe", wpe, dwpe, loss);
}

TEST(OpGrad, CrossEntropyWithIgnoredRows) {
  Rng rng(6);
  const int64_t N = 5, V = 7;
  Tensor logits = randn({N, V}, rng, 2.0);
  Tensor tg = Tensor::from_vector({N}, {3, -1, 0, 6, 2}, DType::I32);
  Tensor losses = Tensor::zeros({N}, DType::F64);
  auto loss = [&] {
    cpu().cross_entropy_fwd(losses, logits, tg, logits.dim(1));
    double s = 0;
    for (double v : losses.to_vector()) s += v;
    return s * 0.7;
  };
  loss();
  EXPECT_EQ(losses.data<double>()[1], 0.0);
  Tensor d = Tensor::zeros({N, V}, DType::F64);
  cpu().cross_entropy_bwd(d, logits, tg, 0.7, logits.dim(1));
  expect_grad("dlogits", logits, d, loss);
}

// Padded output layer: columns >= vocab are ignored by the loss and get a zero gradient, so a
// [N, Vp] logits matrix gives exactly the losses and gradients of its first V columns.
TEST(OpGrad, CrossEntropyIgnoresPaddingColumns) {
  Rng rng(7);
  const int64_t N = 4, V = 5, Vp = 8;
  Tensor wide = randn({N, Vp}, rng, 2.0), narrow = Tensor::zeros({N, V}, DType::F64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) narrow.data<double>()[n * V + v] = wide.data<double>()[n * Vp + v];
  Tensor tg = Tensor::from_vector({N}, {4, -1, 0, 2}, DType::I32);
  Tensor lw = Tensor::zeros({N}, DType::F64), ln = Tensor::zeros({N}, DType::F64);
  cpu().cross_entropy_fwd(lw, wide, tg, V);
  cpu().cross_entropy_fwd(ln, narrow, tg, V);
  EXPECT_EQ(lw.to_vector(), ln.to_vector());
  Tensor dw = randn({N, Vp}, rng), dn = Tensor::zeros({N, V}, DType::F64);
  cpu().cross_entropy_bwd(dw, wide, tg, 0.5, V);
  cpu().cross_entropy_bwd(dn, narrow, tg, 0.5, V);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t v = 0; v < V; ++v)
      EXPECT_EQ(dw.data<double>()[n * Vp + v], dn.data<double>()[n * V + v]);
    for (int64_t v = V; v < Vp; ++v) EXPECT_EQ(dw.data<double>()[n * Vp + v], 0.0);
  }
}

// The fused training-step op: losses and the unscaled gradient equal cross_entropy_fwd and
// cross_entropy_bwd at scale 1 (same arithmetic: bit for bit), written to a separate buffer or
// in place over the logits, with ignored rows (zero loss and gradient) and padding columns
// >= vocab (ignored, zero gradient; filled with random values here, so a leak would show).
TEST(OpGrad, CrossEntropyFwdGradEqualsForwardAndBackward) {
  Rng rng(8);
  const int64_t N = 6, V = 7;
  const Tensor tg = Tensor::from_vector({N}, {3, -1, 0, 6, -1, 2}, DType::I32);
  for (DType dt : {DType::F64, DType::F32})
    for (int64_t ld : {V, V + 5}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " ld=" << ld);
      const Tensor logits = randn({N, ld}, rng, 2.0).cast(dt);
      Tensor want_l = Tensor::zeros({N}, dt), want_d = randn({N, ld}, rng).cast(dt);
      cpu().cross_entropy_fwd(want_l, logits, tg, V);
      cpu().cross_entropy_bwd(want_d, logits, tg, 1.0, V);
      Tensor l = randn({N}, rng).cast(dt), d = randn({N, ld}, rng).cast(dt);
      cpu().cross_entropy_fwd_grad(l, d, logits, tg, V);
      EXPECT_EQ(l.to_vector(), want_l.to_vector());
      EXPECT_EQ(d.to_vector(), want_d.to_vector());
      Tensor inplace = logits.clone(), l2 = randn({N}, rng).cast(dt);
      cpu().cross_entropy_fwd_grad(l2, inplace, inplace, tg, V);
      EXPECT_EQ(l2.to_vector(), want_l.to_vector()) << "in place";
      EXPECT_EQ(inplace.to_vector(), want_d.to_vector()) << "in place";
      const std::vector<double> g = inplace.to_vector(), lv = l2.to_vector();
      for (int64_t n = 0; n < N; ++n) {
        double row_sum = 0;
        for (int64_t v = 0; v < ld; ++v) {
          const double x = g[size_t(n * ld + v)];
          if (v >= V || tg.data<int32_t>()[n] < 0) {
            EXPECT_EQ(x, 0.0) << "row " << n << " col " << v;
          }
          if (v < V) row_sum += x;
        }
        EXPECT_NEAR(row_sum, 0.0, dt == DType::F64 ? 1e-14 : 1e-6) << "softmax - onehot sums to 0";
        if (tg.data<int32_t>()[n] < 0) {
          EXPECT_EQ(lv[size_t(n)], 0.0);
        }
      }
    }
  // The unscaled gradient is d(sum of losses)/d logits (finite differences, f64, padded).
  Tensor logits = randn({N, V + 2}, rng, 2.0), losses = Tensor::zeros({N}, DType::F64);
  auto loss = [&] {
    cpu().cross_entropy_fwd(losses, logits, tg, V);
    double s = 0;
    for (double v : losses.to_vector()) s += v;
    return s;
  };
  Tensor d = Tensor::zeros({N, V + 2}, DType::F64);
  cpu().cross_entropy_fwd_grad(losses, d, logits, tg, V);
  expect_grad("dlogits", logits, d, loss);
  // A target outside the vocabulary fails before anything is written.
  const Tensor bad = Tensor::from_vector({2}, {1, int(V)}, DType::I32);
  Tensor two = randn({2, V}, rng), l2 = Tensor::zeros({2}, DType::F64);
  const std::vector<double> before = two.to_vector();
  EXPECT_THROW(cpu().cross_entropy_fwd_grad(l2, two, two, bad, V), Error);
  EXPECT_EQ(two.to_vector(), before);
}

// out = alpha a + beta b, also with out aliasing a or b; alpha = 1 equals copy + axpy exactly.
TEST(OpGrad, AddScaled) {
  Rng rng(10);
  const Tensor a = randn({3, 7}, rng), b = randn({3, 7}, rng);
  Tensor out = Tensor::zeros({3, 7}, DType::F64);
  cpu().add_scaled(out, a, -0.6, b, 1.7);
  const std::vector<double> va = a.to_vector(), vb = b.to_vector(), vo = out.to_vector();
  for (size_t i = 0; i < vo.size(); ++i) EXPECT_NEAR(vo[i], -0.6 * va[i] + 1.7 * vb[i], 1e-15);
  Tensor ia = a.clone(), ib = b.clone();
  cpu().add_scaled(ia, ia, -0.6, b, 1.7);
  cpu().add_scaled(ib, a, -0.6, ib, 1.7);
  EXPECT_EQ(ia.to_vector(), vo);
  EXPECT_EQ(ib.to_vector(), vo);
  for (DType dt : {DType::F64, DType::F32}) {
    const Tensor x = a.cast(dt), y = b.cast(dt);
    Tensor want = x.clone(), got = Tensor::zeros({3, 7}, dt);
    cpu().axpy(want, y, 0.3);
    cpu().add_scaled(got, x, 1.0, y, 0.3);
    EXPECT_EQ(got.to_vector(), want.to_vector()) << dtype_name(dt);
  }
}

struct AttnCase {
  const char* name;
  ops::ProbFn prob;
  double gamma, zeta;
  bool causal, masked;
};

class AttnGrad : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttnGrad, QKV) {
  const AttnCase& c = GetParam();
  Rng rng(7);
  const int64_t B = 2, T = 5, H = 2, D = 3, C = H * D;
  ops::AttentionSpec spec{static_cast<int>(H), c.causal, c.prob, c.gamma, c.zeta};
  Tensor qkv = randn({B * T, 3 * C}, rng, 1.5), R = randn({B * T, C}, rng);
  Tensor mask;
  if (c.masked) mask = Tensor::from_vector({B * T}, {1, 1, 1, 0, 0, 1, 0, 1, 1, 1}, DType::I32);
  Tensor out = Tensor::zeros({B * T, C}, DType::F64), saved;
  auto loss = [&] {
    cpu().attention_fwd(out, saved, qkv, mask, B, T, spec);
    return dot(out, R);
  };
  loss();
  Tensor dqkv = Tensor::zeros({B * T, 3 * C}, DType::F64);
  cpu().attention_bwd(dqkv, R, qkv, saved, mask, B, T, spec);
  expect_grad("dqkv", qkv, dqkv, loss, 200);
}

INSTANTIATE_TEST_SUITE_P(
    All, AttnGrad,
    ::testing::Values(AttnCase{"softmax_causal", ops::ProbFn::Softmax, 0, 1, true, false},
                      AttnCase{"softmax_bidir_masked", ops::ProbFn::Softmax, 0, 1, false, true},
                      AttnCase{"clipped_causal", ops::ProbFn::Clipped, -0.1, 1.1, true, false},
                      AttnCase{"clipped_masked", ops::ProbFn::Clipped, -0.05, 1.0, false, true},
                      AttnCase{"softmax1_causal", ops::ProbFn::Softmax1, 0, 1, true, false},
                      AttnCase{"softmax1_masked", ops::ProbFn::Softmax1, 0, 1, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(OpGrad, ClippedSoftmaxWithZeroGammaEqualsSoftmax) {
  Rng rng(8);
  const int64_t B = 1, T = 6, C = 4;
  Tensor qkv = randn({B * T, 3 * C}, rng);
  Tensor o1 = Tensor::zeros({B * T, C}, DType::F64), o2 = o1.clone(), s1, s2;
  cpu().attention_fwd(o1, s1, qkv, Tensor(), B, T, {2, true, ops::ProbFn::Softmax, 0, 1});
  cpu().attention_fwd(o2, s2, qkv, Tensor(), B, T, {2, true, ops::ProbFn::Clipped, 0, 1});
  EXPECT_EQ(o1.to_vector(), o2.to_vector());
}

TEST(OpGrad, AdamWMatchesClosedForm) {
  // One step from zero moments: m = (1-b1) g, v = (1-b2) g^2, update = lr * g/|g| (bias corrected).
  Tensor p = Tensor::from_vector({2}, {1.0, -2.0}, DType::F64);
  Tensor g = Tensor::from_vector({2}, {0.5, -0.25}, DType::F64);
  Tensor m = Tensor::zeros({2}, DType::F64), v = Tensor::zeros({2}, DType::F64);
  ops::AdamWStep h;
  h.lr = 0.1;
  h.weight_decay = 0.01;
  h.eps = 0;
  cpu().adamw(p, g, m, v, h);
  EXPECT_NEAR(p.data<double>()[0], 1.0 * (1 - 0.1 * 0.01) - 0.1, 1e-12);
  EXPECT_NEAR(p.data<double>()[1], -2.0 * (1 - 0.1 * 0.01) + 0.1, 1e-12);
}

TEST(OpGrad, GroupedLinear) {
  Rng rng(10);
  const int64_t N = 4, G = 3, I = 5, O = 2;
  Tensor x = randn({N, G * I}, rng), w = randn({G, O, I}, rng), b = randn({G * O}, rng);
  Tensor R = randn({N, G * O}, rng), y = Tensor::zeros({N, G * O}, DType::F64);
  auto loss = [&] {
    cpu().grouped_linear_fwd(y, x, w, b);
    return dot(y, R);
  };
  Tensor dx = Tensor::zeros(x.shape(), DType::F64), dw = Tensor::zeros(w.shape(), DType::F64),
         db = Tensor::zeros(b.shape(), DType::F64);
  cpu().grouped_linear_bwd(dx, dw, db, R, x, w, false);
  expect_grad("dx", x, dx, loss);
  expect_grad("dw", w, dw, loss);
  expect_grad("db", b, db, loss);
}

// The gates' last layer with its sigmoid (grouped_linear_act_fwd / _bwd), with dx accumulated.
TEST(OpGrad, GroupedLinearSigmoid) {
  Rng rng(12);
  const int64_t N = 5, G = 3, I = 4, O = 1;
  Tensor x = randn({N, G * I}, rng), w = randn({G, O, I}, rng), b = randn({G * O}, rng);
  Tensor R = randn({N, G * O}, rng), y = Tensor::zeros({N, G * O}, DType::F64);
  Tensor act = Tensor::zeros({N, G * O}, DType::F64);
  auto loss = [&] {
    cpu().grouped_linear_act_fwd(act, y, x, w, b, ops::Activation::Sigmoid);
    return dot(act, R);
  };
  loss();
  Tensor y_ref = Tensor::zeros({N, G * O}, DType::F64);
  cpu().grouped_linear_fwd(y_ref, x, w, b);
  EXPECT_EQ(y.to_vector(), y_ref.to_vector()) << "y is the grouped layer's output";
  const Tensor dx0 = randn(x.shape(), rng);
  Tensor dx = dx0.clone(), dw = Tensor::zeros(w.shape(), DType::F64),
         db = Tensor::zeros(b.shape(), DType::F64);
  cpu().grouped_linear_act_bwd(dx, dw, db, R, y, x, w, /*accumulate_dx=*/true,
                               ops::Activation::Sigmoid);
  ops::add_scaled(dx, dx, 1.0, dx0, -1.0);  // the accumulated part
  expect_grad("dx", x, dx, loss);
  expect_grad("dw", w, dw, loss);
  expect_grad("db", b, db, loss);
}

class HeadGateGrad : public ::testing::TestWithParam<int64_t> {};
TEST_P(HeadGateGrad, PerTokenSequenceGlobal) {
  Rng rng(11);
  const int64_t N = 6, H = 2, D = 3, C = H * D, rows = GetParam();
  Tensor x = randn({N, C}, rng), g = randn({N / rows, H}, rng), R = randn({N, C}, rng);
  Tensor out = Tensor::zeros({N, C}, DType::F64);
  auto loss = [&] {
    cpu().head_gate_fwd(out, x, g, rows);
    return dot(out, R);
  };
  Tensor dx = R.clone(), dg = Tensor::zeros(g.shape(), DType::F64);
  cpu().head_gate_bwd(dx, dg, dx, x, g, rows);  // dx aliases dout, as the model uses it
  expect_grad("dx", x, dx, loss);
  expect_grad("dgate", g, dg, loss);
}
INSTANTIATE_TEST_SUITE_P(All, HeadGateGrad, ::testing::Values(1, 3, 6));

TEST(OpGrad, GroupMean) {
  Rng rng(12);
  Tensor x = randn({6, 2}, rng), R = randn({2, 2}, rng), y = Tensor::zeros({2, 2}, DType::F64);
  auto loss = [&] {
    cpu().group_mean_fwd(y, x, 3);
    return dot(y, R);
  };
  Tensor dx = Tensor::zeros({6, 2}, DType::F64);
  cpu().group_mean_bwd(dx, R, 3);
  expect_grad("dx", x, dx, loss);
}

TEST(OpGrad, QKNorm) {
  Rng rng(13);
  const int64_t N = 3, H = 2, D = 4, C = H * D;
  Tensor qkv = randn({N, 3 * C}, rng, 2.0), wq = randn({D}, rng), wk = randn({D}, rng);
  Tensor R = randn({N, 3 * C}, rng), out = Tensor::zeros({N, 3 * C}, DType::F64);
  Tensor inv = Tensor::zeros({N, 2 * H}, DType::F64);
  auto loss = [&] {
    cpu().qk_norm_fwd(out, inv, qkv, wq, wk, H, 1e-5);
    return dot(out, R);
  };
  loss();
  Tensor dx = Tensor::zeros(qkv.shape(), DType::F64), dwq = Tensor::zeros({D}, DType::F64),
         dwk = Tensor::zeros({D}, DType::F64);
  cpu().qk_norm_bwd(dx, dwq, dwk, R, qkv, wq, wk, inv, H);
  expect_grad("dqkv", qkv, dx, loss, 100);
  expect_grad("dwq", wq, dwq, loss);
  expect_grad("dwk", wk, dwk, loss);
}

TEST(OpGrad, CausalMean) {
  Rng rng(14);
  const int64_t B = 2, T = 4, C = 3;
  Tensor x = randn({B * T, C}, rng), R = randn({B * T, C}, rng), y = Tensor::zeros({B * T, C}, DType::F64);
  auto loss = [&] {
    cpu().causal_mean_fwd(y, x, T);
    return dot(y, R);
  };
  loss();
  EXPECT_NEAR(y.data<double>()[C * 1], (x.data<double>()[0] + x.data<double>()[C]) / 2, 1e-15);
  Tensor dx = Tensor::zeros(x.shape(), DType::F64);
  cpu().causal_mean_bwd(dx, R, T);
  expect_grad("dx", x, dx, loss);
}

TEST(OpGrad, CopyColumns) {
  Rng rng(15);
  Tensor src = randn({3, 5}, rng), dst = randn({3, 7}, rng), R = randn({3, 7}, rng);
  const Tensor base = dst.clone();
  auto loss = [&] {
    dst.copy_from(base);
    cpu().copy_columns(dst, 4, src, 1, 3, true);
    return dot(dst, R);
  };
  // d src[:, 1:4] = R[:, 4:7]
  Tensor ds = Tensor::zeros({3, 5}, DType::F64);
  cpu().copy_columns(ds, 1, R, 4, 3, false);
  expect_grad("dsrc", src, ds, loss);
}

// The bias-column layout (ops.h, kBiasColumnPad): layernorm_fwd writes x_ext = [y | 1 | 0...],
// linear_act_fwd and linear_fwd read its first C columns, and linear_wgrad_bias_column's one product over it
// gives the weight and the bias gradient, checked against finite differences.
TEST(OpGrad, BiasColumnLayout) {
  Rng rng(16);
  const int64_t N = 5, C = 4, F = 6, P = C + ops::kBiasColumnPad;
  Tensor x = randn({N, C}, rng), lw = randn({C}, rng), lb = randn({C}, rng);
  Tensor y = Tensor::zeros({N, C}, DType::F64), ye = randn({N, P}, rng);
  Tensor mean = Tensor::zeros({N}, DType::F64), rstd = Tensor::zeros({N}, DType::F64);
  Tensor mean_e = Tensor::zeros({N}, DType::F64), rstd_e = Tensor::zeros({N}, DType::F64);
  cpu().layernorm_fwd(y, mean, rstd, x, lw, lb, 1e-5);
  cpu().layernorm_fwd(ye, mean_e, rstd_e, x, lw, lb, 1e-5);  // over garbage in the pad
  EXPECT_EQ(mean_e.to_vector(), mean.to_vector());
  EXPECT_EQ(rstd_e.to_vector(), rstd.to_vector());
  const std::vector<double> yv = y.to_vector(), yev = ye.to_vector();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < P; ++c)
      ASSERT_EQ(yev[size_t(n * P + c)], c < C ? yv[size_t(n * C + c)] : c == C ? 1.0 : 0.0)
          << n << "," << c;

  // linear_act_fwd reads the layout's first C columns.
  Tensor w = randn({F, C}, rng), b = randn({F}, rng);
  Tensor pre = Tensor::zeros({N, F}, DType::F64), act = Tensor::zeros({N, F}, DType::F64);
  Tensor pre_e = Tensor::zeros({N, F}, DType::F64), act_e = Tensor::zeros({N, F}, DType::F64);
  cpu().linear_act_fwd(act, pre, y, w, b, ops::Activation::GELU_Tanh);
  cpu().linear_act_fwd(act_e, pre_e, ye, w, b, ops::Activation::GELU_Tanh);
  EXPECT_EQ(act_e.to_vector(), act.to_vector());
  EXPECT_EQ(pre_e.to_vector(), pre.to_vector());
  // So does linear_fwd, with and without a bias.
  for (const Tensor& bias : {b, Tensor()}) {
    Tensor o = Tensor::zeros({N, F}, DType::F64), o_e = Tensor::zeros({N, F}, DType::F64);
    cpu().linear_fwd(o, y, w, bias);
    cpu().linear_fwd(o_e, ye, w, bias);
    EXPECT_EQ(o_e.to_vector(), o.to_vector()) << (bias.defined() ? "bias" : "no bias");
  }

  // Gradients of sum(R * (x W^T + b)) through a Linear layer fed the layout.
  ParamStore ps;
  Linear lin(ps, "lin", C, F, true, DType::F64, Device::CPU);
  lin.w.copy_from(w);
  lin.b.copy_from(b);
  Tensor R = randn({N, F}, rng), out = Tensor::zeros({N, F}, DType::F64);
  auto loss = [&] {
    lin.forward(out, y);
    return dot(out, R);
  };
  ASSERT_TRUE(lin.takes_bias_column(ye));
  ASSERT_FALSE(lin.takes_bias_column(y));
  lin.bias_grad_elsewhere = true;  // the layout's db is taken anyway (layers.h)
  ps.zero_grad();
  Tensor none;
  lin.backward(none, R, ye, false);
  expect_grad("dW", lin.w, lin.dw, loss);
  expect_grad("db", lin.b, lin.db, loss);
  // A second backward accumulates both (beta 1 into dW, db +=).
  const std::vector<double> dw1 = lin.dw.to_vector(), db1 = lin.db.to_vector();
  lin.backward(none, R, ye, false);
  const std::vector<double> dw2 = lin.dw.to_vector(), db2 = lin.db.to_vector();
  for (size_t i = 0; i < dw1.size(); ++i) ASSERT_EQ(dw2[i], 2 * dw1[i]);
  for (size_t i = 0; i < db1.size(); ++i) ASSERT_EQ(db2[i], 2 * db1[i]);
}

TEST(OpGrad, BiasColumnLayoutRejectsOtherShapes) {
  Rng rng(17);
  Tensor dw = Tensor::zeros({3, 4}, DType::F64), db = Tensor::zeros({3}, DType::F64);
  Tensor dy = randn({5, 3}, rng);
  try {
    cpu().linear_wgrad_bias_column(dw, db, dy, randn({5, 4 + 3}, rng), 0.0);
    FAIL() << "a pad of 3 columns was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("bias-column layout"), std::string::npos) << e.what();
  }
  const Tensor x_ext = randn({5, 4 + ops::kBiasColumnPad}, rng);
  EXPECT_THROW(cpu().linear_wgrad_bias_column(dw, db, dy, x_ext, 0.5), std::exception);
  Tensor db_short = Tensor::zeros({2}, DType::F64);
  EXPECT_THROW(cpu().linear_wgrad_bias_column(dw, db_short, dy, x_ext, 1.0), std::exception);
}
