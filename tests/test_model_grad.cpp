// Whole-model fp64 finite-difference gradient check of TransformerLM: every parameter tensor,
// for each norm kind, activation and attention probability function.
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/transformer.h"

using namespace oft;
using namespace oft::testing;

namespace {
struct ModelCase {
  const char* name;
  const char* norm;
  const char* act;
  const char* softmax;
  bool final_norm, bias;
};

class ModelGrad : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelGrad, AllParameters) {
  const ModelCase& c = GetParam();
  ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.d_model = 8;
  cfg.n_head = 2;
  cfg.d_ff = 12;
  cfg.vocab_size = 11;
  cfg.max_seq_len = 6;
  cfg.norm = c.norm;
  cfg.activation = c.act;
  cfg.attn_softmax = c.softmax;
  cfg.final_norm = c.final_norm;
  cfg.bias = c.bias;
  cfg.init_std = 0.3;  // large enough that every path carries gradient
  TransformerLM model(cfg, DType::F64, Device::CPU);
  model.init_weights(42);
  // Perturb norm gains and biases away from 1 / 0 so their gradients are generic.
  Rng rng(9);
  for (Param& p : model.params().all())
    if (!p.matrix) ops::axpy(p.value, randn(p.value.shape(), rng, 0.2), 1.0);
  const int64_t B = 2, T = 5;
  Tensor tok = Tensor::from_vector({B, T}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({B, T}, {2, 3, 4, 5, -1, 7, 8, 9, 10, 0}, DType::I32);
  model.params().zero_grad();
  model.forward(tok, tgt);
  model.backward(1.0);
  auto loss = [&] { return model.forward(tok, tgt); };
  for (Param& p : model.params().all()) {
    Tensor g = p.grad.clone();
    expect_grad(p.name, p.value, g, loss, 24);
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, ModelGrad,
    ::testing::Values(ModelCase{"layernorm_gelu", "layernorm", "gelu", "softmax", true, true},
                      ModelCase{"rmsnorm_relu", "rmsnorm", "relu", "softmax", true, false},
                      ModelCase{"nonorm_gelu_erf", "none", "gelu_erf", "softmax", false, true},
                      ModelCase{"clipped", "layernorm", "gelu", "clipped(-0.1:1.05)", true, true},
                      ModelCase{"softmax1", "layernorm", "gelu", "softmax1", true, true}),
    [](const auto& info) { return std::string(info.param.name); });
}  // namespace
