// Whole-model fp64 finite-difference gradient checks of TransformerLM: every parameter tensor,
// for each block type, norm, activation, attention probability function and gate type; and the
// training-step forward (will_backward) against the plain forward + backward.
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/transformer.h"

using namespace oft;
using namespace oft::testing;

namespace {
struct ModelCase {
  const char* name;
  std::vector<std::string> overrides;  // field=value on a small ModelConfig
};
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

ModelConfig small_config(const std::vector<std::string>& ov) {
  ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.d_model = 8;
  cfg.n_head = 2;
  cfg.d_ff = 12;
  cfg.vocab_size = 11;
  cfg.max_seq_len = 6;
  cfg.init_std = 0.3;  // large enough that every path carries gradient
  for (const auto& kv : ov) {
    const auto eq = kv.find('=');
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (k == "norm") cfg.norm = v;
    else if (k == "activation") cfg.activation = v;
    else if (k == "attn_softmax") cfg.attn_softmax = v;
    else if (k == "alpha") cfg.alpha = std::stod(v);
    else if (k == "final_norm") cfg.final_norm = v == "true";
    else if (k == "bias") cfg.bias = v == "true";
    else if (k == "block") cfg.block = v;
    else if (k == "qk_norm") cfg.qk_norm = v == "true";
    else if (k == "branch_gain") cfg.branch_gain = std::stod(v);
    else if (k == "gains_trainable") cfg.gains_trainable = v == "true";
    else if (k == "gate") cfg.attn_gate_type = v;
    else if (k == "gate_mlp") cfg.attn_gate_mlp = v == "true";
    else if (k == "gate_all") cfg.attn_gate_linear_all_features = v == "true";
    else if (k == "objective") cfg.objective = v;
    else if (k == "type_vocab_size") cfg.type_vocab_size = std::stoi(v);
    else if (k == "embed_norm") cfg.embed_norm = v == "true";
    else if (k == "word_embed_proj_dim") cfg.word_embed_proj_dim = std::stoi(v);
    else ADD_FAILURE() << "unknown test override " << k;
  }
  return cfg;
}

class ModelGrad : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelGrad, AllParameters) {
  TransformerLM model(small_config(GetParam().overrides), DType::F64, Device::CPU, 5);
  model.init_weights(42);
  // Perturb norm gains, biases and block gains so their gradients are generic.
  Rng rng(9);
  for (Param& p : model.params().all())
    if (!p.matrix) ops::axpy(p.value, randn(p.value.shape(), rng, 0.2), 1.0);
  const int64_t B = 2, T = 5;
  Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({B, T}, {2, 3, 4, 5, -1, 7, 8, 9, 10, 0}, DType::I32);
  // Masked LM: bidirectional attention with two padding positions in the second sequence.
  Tensor mask;
  if (model.config().objective == "mlm")
    mask = Tensor::from_vector({B, T}, {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, DType::I32);
  model.params().zero_grad();
  model.forward(tok, tgt, mask);
  model.backward(1.0);
  auto loss = [&] { return model.forward(tok, tgt, mask); };
  for (Param& p : model.params().all()) {
    Tensor g = p.grad.clone();
    expect_grad(p.name, p.value, g, loss, 24);
  }
}

const std::vector<ModelCase> kModelCases = {
    ModelCase{"pre_layernorm_gelu", {}},
    ModelCase{"pre_rmsnorm_relu_nobias", {"norm=rmsnorm", "activation=relu", "bias=false"}},
    ModelCase{"pre_nonorm_gelu_erf", {"norm=none", "activation=gelu_erf", "final_norm=false"}},
    ModelCase{"clipped", {"attn_softmax=clipped(-0.1:1.05)"}},
    ModelCase{"clipped_alpha", {"alpha=0.5"}},
    ModelCase{"softmax1", {"attn_softmax=softmax1"}},
    ModelCase{"post_norm", {"block=post_norm", "final_norm=false"}},
    ModelCase{"parallel", {"block=parallel"}},
    ModelCase{"op_block", {"block=op", "qk_norm=true", "branch_gain=0.2"}},
    ModelCase{"op_trainable_gains", {"block=op", "qk_norm=true", "gains_trainable=true"}},
    ModelCase{"pre_trainable_gains", {"gains_trainable=true", "branch_gain=0.7"}},
    ModelCase{"gate_unconditional", {"gate=unconditional_per_head"}},
    ModelCase{"gate_conditional_per_head", {"gate=conditional_per_head"}},
    ModelCase{"gate_per_token_linear", {"gate=conditional_per_token"}},
    ModelCase{"gate_per_token_parallel", {"block=parallel", "gate=conditional_per_token"}},
    ModelCase{"gate_per_token_mlp", {"gate=conditional_per_token", "gate_mlp=true"}},
    ModelCase{"gate_all_features", {"gate=conditional_per_token", "gate_all=true"}},
    ModelCase{"gate_post_norm", {"block=post_norm", "gate=conditional_per_token", "gate_mlp=true"}},
    ModelCase{"skipless", {"block=skipless", "gains_trainable=true"}},
    ModelCase{"skipless_fixed_gains_rms", {"block=skipless", "norm=rmsnorm", "qk_norm=true"}},
    ModelCase{"skipless_parallel_nonorm", {"block=skipless_parallel", "norm=none", "gains_trainable=true"}},
    ModelCase{"opt_project_in_out", {"word_embed_proj_dim=6"}},
    ModelCase{"opt350m_post_norm_project_in_out", {"word_embed_proj_dim=5", "block=post_norm",
                                                    "final_norm=false", "activation=relu"}},
    ModelCase{"bert_mlm", {"objective=mlm", "block=post_norm", "final_norm=false",
                           "activation=gelu_erf", "type_vocab_size=2", "embed_norm=true"}},
    ModelCase{"bert_mlm_gated_clipped", {"objective=mlm", "block=post_norm", "final_norm=false",
                                         "embed_norm=true", "gate=conditional_per_token",
                                         "attn_softmax=clipped(-0.1:1)"}},
};

INSTANTIATE_TEST_SUITE_P(All, ModelGrad, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.name); });

// A training step's forward (will_backward: loss and unscaled logits gradient in one op, in
// place; the scale applied in the output layer's matrix products) gives the same loss and
// gradients as forward + backward with cross_entropy_bwd, for every block type and head
// (the masked LM ignores the flag). A plain forward after it restores the plain backward.
class FusedLossGrad : public ::testing::TestWithParam<ModelCase> {};

TEST_P(FusedLossGrad, SameLossAndGradientsAsSeparateOps) {
  TransformerLM model(small_config(GetParam().overrides), DType::F64, Device::CPU, 5);
  model.init_weights(43);
  Rng rng(11);
  for (Param& p : model.params().all())
    if (!p.matrix) ops::axpy(p.value, randn(p.value.shape(), rng, 0.2), 1.0);
  const int64_t B = 2, T = 5;
  Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({B, T}, {2, -1, 4, 5, -1, 7, 8, 9, 10, 0}, DType::I32);
  Tensor mask;
  if (model.config().objective == "mlm")
    mask = Tensor::from_vector({B, T}, {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, DType::I32);
  // loss_scale and a data-parallel style denominator, so the scale is not 1 / count.
  auto step = [&](bool fused_first, bool will_backward, double& loss) {
    model.params().zero_grad();
    if (fused_first) model.forward(tok, tgt, mask, true);
    loss = model.forward(tok, tgt, mask, will_backward);
    model.backward(0.7, 13);
    std::vector<std::vector<double>> g;
    for (Param& p : model.params().all()) g.push_back(p.grad.to_vector());
    return g;
  };
  double l_ref = 0, l_fused = 0, l_reset = 0;
  const auto ref = step(false, false, l_ref);
  const auto fused = step(false, true, l_fused);
  const auto reset = step(true, false, l_reset);
  EXPECT_NEAR(l_fused, l_ref, 1e-12 * std::abs(l_ref));
  EXPECT_EQ(l_reset, l_ref);
  // Per tensor, relative to its norm (floored at 1e-3 of the RMS tensor norm: some gradients
  // are analytically zero and only rounding noise).
  double sumsq = 0;
  std::vector<double> norms;
  for (const auto& g : ref) {
    double s2 = 0;
    for (double x : g) s2 += x * x;
    norms.push_back(std::sqrt(s2));
    sumsq += s2;
  }
  const double floor = 1e-3 * std::sqrt(sumsq / double(ref.size()));
  ASSERT_GT(floor, 0.0);
  for (size_t i = 0; i < ref.size(); ++i) {
    double diff = 0, diff_reset = 0;
    for (size_t k = 0; k < ref[i].size(); ++k) {
      diff += (fused[i][k] - ref[i][k]) * (fused[i][k] - ref[i][k]);
      diff_reset += (reset[i][k] - ref[i][k]) * (reset[i][k] - ref[i][k]);
    }
    const std::string& name = model.params().all()[i].name;
    EXPECT_LE(std::sqrt(diff), 1e-12 * std::max(norms[i], floor)) << name;
    EXPECT_EQ(diff_reset, 0.0) << name << " (plain forward after a fused one)";
  }
}

INSTANTIATE_TEST_SUITE_P(All, FusedLossGrad, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Invariants of REFERENCE.md §1-§3 on whole models.
TEST(ModelInvariants, ConditionalGateWithZeroWeightsOutputsPiInit) {
  ModelConfig cfg = small_config({"gate=conditional_per_token"});
  cfg.attn_gate_init = 0.25;
  Attention att;
  ParamStore ps;
  att = Attention(ps, "a", cfg, 5, true, DType::F64, Device::CPU);
  for (Param& p : ps.all()) {
    if (p.name == "a.gate.weight") ops::fill(p.value, 0.0);
    if (p.matrix && p.name != "a.gate.weight") {
      Rng rng(3);
      p.value.copy_from(randn(p.value.shape(), rng));
    }
  }
  Rng rng(4);
  Tensor x = randn({10, 8}, rng), out = Tensor::zeros({10, 8}, DType::F64);
  AttentionActs acts;
  att.forward(acts, out, x, Tensor(), 2, 5);
  for (double g : acts.gate.to_vector()) EXPECT_NEAR(g, 0.25, 1e-12);
}

TEST(ModelInvariants, OpBlockWithZeroGainIsIdentity) {
  ModelConfig cfg = small_config({"block=op", "qk_norm=true", "branch_gain=0", "final_norm=false"});
  TransformerLM a(cfg, DType::F64, Device::CPU, 5);
  a.init_weights(1);
  // With beta = 0 every block passes its input through: the logits are emb @ wte^T.
  Tensor tok = Tensor::from_vector({1, 5}, {1, 2, 3, 4, 5}, DType::I32);
  a.forward(tok, Tensor());
  Tensor emb = Tensor::zeros({5, 8}, DType::F64), expect = Tensor::zeros({5, 11}, DType::F64);
  ops::cpu_backend().embedding_fwd(emb, tok.view({5}), a.params().find("wte.weight")->value,
                                   a.params().find("wpe.weight")->value, 5, 0);
  ops::matmul(expect, emb, false, a.params().find("wte.weight")->value, true);
  const auto got = a.logits().to_vector(), want = expect.to_vector();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12);
}

TEST(ModelInvariants, ShapedAttentionIsIdentityAtInitialisation) {
  for (int64_t layer : {0, 1}) {
    ModelConfig cfg = small_config({"block=skipless"});
    ParamStore ps;
    Attention att(ps, "a", cfg, 5, true, DType::F64, Device::CPU, true, layer);
    Rng rng(5);
    for (Param& p : ps.all())
      if (p.matrix && !p.fixed_init) p.value.copy_from(randn(p.value.shape(), rng));
    Tensor x = randn({10, 8}, rng), out = Tensor::zeros({10, 8}, DType::F64);
    AttentionActs acts;
    att.forward(acts, out, x, Tensor(), 2, 5);
    const auto got = out.to_vector(), want = x.to_vector();
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "layer " << layer;
  }
}

TEST(ModelInvariants, PostNormBlockOutputRowsHaveUnitVariance) {
  ModelConfig cfg = small_config({"block=post_norm", "final_norm=false"});
  TransformerLM m(cfg, DType::F64, Device::CPU, 5);
  m.init_weights(2);
  Tensor tok = Tensor::from_vector({1, 5}, {1, 2, 3, 4, 5}, DType::I32);
  m.forward(tok, Tensor());
  // Unit norm gains and zero biases: every block output row is N2(...) with mean 0, variance 1.
  for (size_t l = 1; l <= 2; ++l) {
    const auto v = m.hidden(l).to_vector();
    for (int r = 0; r < 5; ++r) {
      double mean = 0, var = 0;
      for (int c = 0; c < 8; ++c) mean += v[r * 8 + c] / 8;
      for (int c = 0; c < 8; ++c) var += (v[r * 8 + c] - mean) * (v[r * 8 + c] - mean) / 8;
      EXPECT_NEAR(mean, 0, 1e-12);
      EXPECT_NEAR(var, 1, 1e-4);  // LayerNorm eps 1e-5 in the variance
    }
  }
}
}  // namespace

namespace {
struct Recorder : ActivationHook {
  std::vector<std::string> labels;
  void on_activation(Point p, int64_t layer, Tensor& t, int64_t B, int64_t T) override {
    labels.push_back(point_label(p, layer));
    EXPECT_EQ(t.numel() % (B * T), 0);
  }
};
}  // namespace

TEST(ModelHooks, PointsOfEachBlockTypeInForwardOrder) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"block=pre_norm",
       {"embedding", "h.0.ln_1", "h.0.attn.qkv", "h.0.attn.context", "h.0.attn.c_proj",
        "h.0.residual", "h.0.ln_2", "h.0.mlp.act", "h.0.mlp.c_proj", "h.0.out", "ln_f"}},
      {"block=post_norm",
       {"embedding", "h.0.attn.qkv", "h.0.attn.context", "h.0.attn.c_proj", "h.0.residual",
        "h.0.attn_ln", "h.0.mlp.act", "h.0.mlp.c_proj", "h.0.mlp.residual", "h.0.out", "ln_f"}},
      {"gate=conditional_per_token",
       {"embedding", "h.0.ln_1", "h.0.attn.qkv", "h.0.attn.context", "h.0.attn.gated_context",
        "h.0.attn.c_proj", "h.0.residual", "h.0.ln_2", "h.0.mlp.act", "h.0.mlp.c_proj", "h.0.out",
        "ln_f"}},
  };
  for (const auto& [ov, want] : cases) {
    ModelConfig cfg = small_config({ov});
    cfg.n_layer = 1;
    TransformerLM m(cfg, DType::F64, Device::CPU, 5);
    m.init_weights(1);
    Recorder rec;
    m.set_hook(&rec);
    m.forward(Tensor::from_vector({1, 5}, {1, 2, 3, 4, 5}, DType::I32), Tensor());
    EXPECT_EQ(rec.labels, want) << ov;
    m.set_hook(nullptr);
    rec.labels.clear();
    m.forward(Tensor::from_vector({1, 5}, {1, 2, 3, 4, 5}, DType::I32), Tensor());
    EXPECT_TRUE(rec.labels.empty());
  }
}

// With no activation hook, pre_norm / op blocks take their residual sums inside the output
// layers' products (linear_residual_fwd) and keep no branch outputs, and the linear per-token
// attention gate runs in the LayerNorm before the attention (layernorm_gate_fwd / _bwd); a hook
// switches back to the separate sums and the attention's own gate network. Both paths give the
// same loss and gradients on the CPU backend for every model case (the others never fuse): bit
// for bit, except that a parallel block adds the gate's input gradient to the MLP's and the
// projection's in another order, and that without a hook a pre_norm block's fc and c_attn take
// their weight and bias gradients from one product over ln_2's / ln_1's output in the
// bias-column layout (ops.h) instead of a product and a column sum (f64 rounding, 1e-12 of the
// largest gradient).
class ResidualFusion : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ResidualFusion, HookedAndFusedPathsAgree) {
  TransformerLM model(small_config(GetParam().overrides), DType::F64, Device::CPU, 5);
  model.init_weights(7);
  const int64_t B = 2, T = 5;
  Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({B, T}, {2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, DType::I32);
  Tensor mask;
  if (model.config().objective == "mlm")
    mask = Tensor::from_vector({B, T}, {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, DType::I32);
  Recorder rec;
  auto step = [&](bool hooked, double& loss) {
    model.set_hook(hooked ? &rec : nullptr);
    model.params().zero_grad();
    loss = model.forward(tok, tgt, mask, true);
    model.backward(1.0);
    std::vector<std::vector<double>> g;
    for (Param& p : model.params().all()) g.push_back(p.grad.to_vector());
    return g;
  };
  double l_plain = 0, l_hooked = 0, l_again = 0;
  const auto plain = step(false, l_plain);
  const auto hooked = step(true, l_hooked);
  const auto again = step(false, l_again);
  EXPECT_FALSE(rec.labels.empty());
  EXPECT_EQ(l_hooked, l_plain);
  EXPECT_EQ(l_again, l_plain);
  for (size_t i = 0; i < plain.size(); ++i) {
    const std::string& name = model.params().all()[i].name;
    EXPECT_EQ(again[i], plain[i]) << name;
    const bool exact = model.config().block != "parallel" &&
                       !(model.config().block == "pre_norm" &&
                         (name.find("mlp.c_fc.") != std::string::npos ||
                          name.find(".c_attn.") != std::string::npos));
    if (exact) {
      EXPECT_EQ(hooked[i], plain[i]) << name;
      continue;
    }
    double scale = 0;
    for (double v : plain[i]) scale = std::max(scale, std::abs(v));
    for (size_t k = 0; k < plain[i].size(); ++k)
      ASSERT_NEAR(hooked[i][k], plain[i][k], 1e-12 * scale) << name << "[" << k << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(All, ResidualFusion, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.name); });

// zero_grad() leaves the weight gradients whose first write is one product (Linear layers, the
// tied output layer) as they are and marks them pending; their first write overwrites. With
// garbage in every gradient beforehand, a step gives the gradients of a step from true zeros;
// two accumulated micro-steps give twice them; and a masked-LM batch with no masked position
// (no layer writes a gradient) leaves every gradient zero.
class GradientZeroing : public ::testing::TestWithParam<ModelCase> {};

TEST_P(GradientZeroing, StaleGradientsNeverLeak) {
  TransformerLM model(small_config(GetParam().overrides), DType::F64, Device::CPU, 5);
  model.init_weights(5);
  const int64_t B = 2, T = 5;
  Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({B, T}, {2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, DType::I32);
  const bool mlm = model.config().objective == "mlm";
  Tensor mask = mlm ? Tensor::from_vector({B, T}, {1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, DType::I32)
                    : Tensor();
  auto grads = [&] {
    std::vector<std::vector<double>> g;
    for (Param& p : model.params().all()) g.push_back(p.grad.to_vector());
    return g;
  };
  auto poison = [&] {
    for (Param& p : model.params().all()) ops::fill(p.grad, 1e3);
  };
  // Reference: gradients zeroed for real (no parameter pending).
  for (Param& p : model.params().all()) ops::fill(p.grad, 0.0);
  model.forward(tok, tgt, mask, true);
  model.backward(1.0);
  const auto ref = grads();
  bool any_pending = false;
  for (const Param& p : model.params().all()) any_pending = any_pending || p.first_write_overwrites;
  EXPECT_TRUE(any_pending) << "no parameter skips the zeroing";

  poison();
  model.params().zero_grad();
  model.forward(tok, tgt, mask, true);
  model.backward(1.0);
  const auto once = grads();
  poison();
  model.params().zero_grad();
  for (int micro = 0; micro < 2; ++micro) {
    model.forward(tok, tgt, mask, true);
    model.backward(1.0);
  }
  const auto twice = grads();
  for (size_t i = 0; i < ref.size(); ++i) {
    const std::string& name = model.params().all()[i].name;
    for (size_t j = 0; j < ref[i].size(); ++j) {
      ASSERT_NEAR(once[i][j], ref[i][j], 1e-12 * (1 + std::abs(ref[i][j]))) << name << "[" << j << "]";
      ASSERT_NEAR(twice[i][j], 2 * ref[i][j], 1e-12 * (1 + std::abs(ref[i][j]))) << name << "[" << j << "]";
    }
  }
  if (mlm) {  // no masked position: the output layer and everything below it write nothing
    Tensor none_tgt = Tensor::from_vector({B, T}, std::vector<double>(B * T, -1.0), DType::I32);
    poison();
    model.params().zero_grad();
    model.forward(tok, none_tgt, mask, true);
    model.backward(1.0);
    for (const auto& g : grads())
      for (double v : g) ASSERT_EQ(v, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(All, GradientZeroing, ::testing::ValuesIn(kModelCases),
                         [](const auto& info) { return std::string(info.param.name); });

// forward(read_loss = false) leaves the loss for last_loss(), which a training step reads after
// queueing the backward: the same value, and the same gradients, as reading it at once.
// Every parameter gradient of the model, in parameter order, as one vector.
std::vector<double> flat_grads(TransformerLM& model) {
  std::vector<double> g;
  for (Param& p : model.params().all())
    for (double v : p.grad.to_vector()) g.push_back(v);
  return g;
}

TEST(DeferredLoss, SameLossAndGradientsAsReadingAtOnce) {
  for (const char* obj : {"clm", "mlm"}) {
    SCOPED_TRACE(obj);
    TransformerLM model(small_config({std::string("objective=") + obj}), DType::F64,
                        Device::CPU, 5);
    model.init_weights(7);
    const int64_t B = 2, T = 5;
    Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
    Tensor tgt = Tensor::from_vector({B, T}, {2, 3, -1, 5, 6, 7, 8, 9, 10, 0}, DType::I32);
    auto grads = [&] { return flat_grads(model); };
    model.params().zero_grad();
    const double now = model.forward(tok, tgt, Tensor(), true);
    model.backward(1.0);
    const auto g_now = grads();
    model.params().zero_grad();
    EXPECT_EQ(model.forward(tok, tgt, Tensor(), true, /*read_loss=*/false), 0.0);
    model.backward(1.0);
    EXPECT_DOUBLE_EQ(model.last_loss(), now);
    EXPECT_EQ(grads(), g_now);
    EXPECT_GT(now, 0.0);
  }
}

// forward(..., known_targets) takes the caller's count of the targets instead of counting them
// (a recorded step cannot read them back): the same loss and gradients as counting.
TEST(KnownTargets, SameLossAndGradientsAsCounting) {
  TransformerLM model(small_config({}), DType::F64, Device::CPU, 5);
  model.init_weights(3);
  Tensor tok = Tensor::from_vector({1, 5}, {1, 2, 3, 4, 5}, DType::I32);
  Tensor tgt = Tensor::from_vector({1, 5}, {2, 3, 4, 5, 6}, DType::I32);
  auto grads = [&] { return flat_grads(model); };
  model.params().zero_grad();
  const double counted = model.forward(tok, tgt, Tensor(), true);
  model.backward(1.0);
  const auto g_counted = grads();
  const auto flags = model.params().pending_flags();
  model.params().zero_grad();
  EXPECT_NE(model.params().pending_flags(), flags);  // zero_grad marks the products' gradients
  EXPECT_DOUBLE_EQ(model.forward(tok, tgt, Tensor(), true, true, 5), counted);
  model.backward(1.0);
  EXPECT_EQ(grads(), g_counted);
  EXPECT_EQ(model.params().pending_flags(), flags);
  const uint64_t gen = model.buffer_generation();
  model.reserve_batch(1, 5);
  EXPECT_EQ(model.buffer_generation(), gen);
  model.reserve_batch(2, 5);
  EXPECT_EQ(model.buffer_generation(), gen + 1);
  EXPECT_THROW(model.forward(tok, tgt, Tensor(), true, true, 6), Error);  // more than there are
}
