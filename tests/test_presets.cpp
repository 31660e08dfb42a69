// Every preset resolves, and every tiny_* preset (the CPU twin of a source-system script)
// trains on the embedded corpus with its validation loss falling.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "core/resources.h"
#include "gradcheck.h"
#include "train/trainer.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::prepare_moby;

namespace {

std::vector<std::string> tiny_presets() {
  std::vector<std::string> r;
  for (const auto& p : list_presets())
    if (p.starts_with("tiny_")) r.push_back(p);
  return r;
}

class TinyPreset : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    root_ = (fs::temp_directory_path() / ("oft_presets_" + std::to_string(::getpid()))).string();
    prepare_moby(root_ + "/clm", resource_path("data/tokenizers/moby_sp2k/moby_sp2k.model"), 300000);
    // Masked-LM twins: WordPiece [CLS] paragraph [SEP] documents.
    prepare_moby(root_ + "/mlm", "bert-base-uncased", 300000, "blank_lines");
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static inline std::string root_;
};

TEST_P(TinyPreset, TrainsAndValidationLossFalls) {
  const std::string name = GetParam();
  const std::string data = root_ + (name.starts_with("tiny_bert") ? "/mlm" : "/clm");
  RunConfig cfg;
  cfg.load(name, {"data.train=" + data + "/train.bin", "data.val=" + data + "/val.bin",
                  "data.seq_len=64", "train.batch_size=8", "train.steps=40", "train.eval_every=0",
                  "train.eval_batches=8", "run.dir=" + root_ + "/" + name});
  TrainResult r = train(cfg, true);
  EXPECT_LT(r.final_val.loss, r.initial_val.loss - 0.5)
      << name << ": " << r.initial_val.loss << " -> " << r.final_val.loss;
}

INSTANTIATE_TEST_SUITE_P(All, TinyPreset, ::testing::ValuesIn(tiny_presets()),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '.', '_');
                           return s;
                         });

TEST(Presets, EverySourceScriptHasAPresetAndATinyTwin) {
  const auto all = list_presets();
  auto has = [&](const std::string& p) { return std::find(all.begin(), all.end(), p) != all.end(); };
  for (const char* p : {"bert_base_vanilla", "bert_base_clipped_softmax", "bert_base_gated_attention",
                        "opt_125m_vanilla", "opt_125m_clipped_softmax", "opt_125m_gated_attention",
                        "opt_350m_vanilla", "opt_350m_gated_attention", "opt_1.3b_vanilla",
                        "opt_1.3b_gated_attention", "gpt2_default", "gpt2_parallel", "gpt2_skipless",
                        "gpt2_skipless_parallel", "gpt2_op"}) {
    EXPECT_TRUE(has(p)) << p;
    EXPECT_TRUE(has(std::string("tiny_") + p)) << "tiny_" << p;
    RunConfig c;
    EXPECT_NO_THROW(c.load(p, {})) << p;
  }
  RunConfig opt;
  opt.load("opt_125m_clipped_softmax", {});
  EXPECT_DOUBLE_EQ(-opt.model.alpha / double(opt.data.seq_len), -0.0234375);
  RunConfig bert;
  bert.load("bert_base_gated_attention", {});
  EXPECT_EQ(bert.model.objective, "mlm");
  EXPECT_EQ(bert.model.block, "post_norm");
  EXPECT_TRUE(bert.model.attn_gate_mlp);
}

}  // namespace

namespace {
// fp64 finite-difference check of the whole model each tiny preset builds (shrunk to 2 x 8 so it
// runs in milliseconds; every method switch of the preset is kept).
class PresetGrad : public ::testing::TestWithParam<std::string> {};

TEST_P(PresetGrad, WholeModelGradientsMatchFiniteDifferences) {
  RunConfig cfg;
  cfg.load(GetParam(), {"model.n_layer=2", "model.d_model=8", "model.n_head=2", "model.d_ff=12",
                        "model.max_seq_len=6", "model.attn_gate_hidden=3", "data.seq_len=5"});
  cfg.model.vocab_size = 13;
  cfg.model.init_std = 0.3;
  TransformerLM model(cfg.model, DType::F64, Device::CPU, 5);
  model.init_weights(7);
  Rng rng(17);
  for (Param& p : model.params().all())
    if (!p.matrix || p.fixed_init) ops::axpy(p.value, oft::testing::randn(p.value.shape(), rng, 0.2), 1.0);
  Tensor tok = Tensor::from_vector({2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, DType::I32);
  Tensor tgt = Tensor::from_vector({2, 5}, {2, -1, 4, 5, 6, 7, 8, -1, 10, 12}, DType::I32);
  model.params().zero_grad();
  model.forward(tok, tgt);
  model.backward(1.0);
  for (Param& p : model.params().all())
    oft::testing::expect_grad(GetParam() + ":" + p.name, p.value, p.grad.clone(),
                              [&] { return model.forward(tok, tgt); }, 8);
}

INSTANTIATE_TEST_SUITE_P(All, PresetGrad, ::testing::ValuesIn(tiny_presets()),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '.', '_');
                           return s;
                         });
}  // namespace
