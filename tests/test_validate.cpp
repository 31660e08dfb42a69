// oft validate: outlier metrics wired to the right tensors, simulated quantization behaving as
// quantization should (16 bits ~ FP, 2 bits far worse), reports and encodings written.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "analysis/collect.h"
#include "core/resources.h"
#include "io/atomic_file.h"
#include "train/validate.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::prepare_moby;

namespace {

class ValidateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = (fs::temp_directory_path() / ("oft_validate_" + std::to_string(::getpid()))).string();
    prepare_moby(root_ + "/data", resource_path("data/tokenizers/moby_sp2k/moby_sp2k.model"), 300000);
    RunConfig cfg;
    cfg.load("tiny_opt_125m_gated_attention", common({"train.steps=30", "run.dir=" + root_ + "/run"}));
    train(cfg, true);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::vector<std::string> common(std::vector<std::string> extra) {
    std::vector<std::string> v = {"data.train=" + root_ + "/data/train.bin",
                                  "data.val=" + root_ + "/data/val.bin", "data.seq_len=64",
                                  "train.batch_size=8", "train.eval_every=0", "train.eval_batches=4",
                                  "metrics.batches=2", "quant.est_num_batches=4"};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  }
  static inline std::string root_;
};

TEST_F(ValidateTest, SixteenBitsMatchesFloatingPointAndTwoBitsDoesNot) {
  const auto r16 = validate_checkpoint(root_ + "/run", true, {"quant.n_bits=16", "quant.n_bits_act=16"}, true);
  EXPECT_NEAR(r16.quant.ppl / r16.fp.ppl, 1.0, 1e-3) << r16.fp.ppl << " vs " << r16.quant.ppl;
  const auto r2 = validate_checkpoint(root_ + "/run", true, {"quant.n_bits=2", "quant.n_bits_act=2"}, true);
  EXPECT_GT(r2.quant.ppl, 1.5 * r2.fp.ppl) << r2.fp.ppl << " vs " << r2.quant.ppl;
  const auto r8 = validate_checkpoint(root_ + "/run", true, {}, true);
  EXPECT_EQ(r8.quant_label, "W8A8");
  EXPECT_GT(r8.quant.ppl, 0.9 * r8.fp.ppl);
  EXPECT_EQ(r8.fp.ppl, r16.fp.ppl);  // the FP pass is unaffected by quantization runs
}

TEST_F(ValidateTest, ReportsAndEncodingsAreWritten) {
  const auto r = validate_checkpoint(root_ + "/run", true, {"quant.per_channel=true"}, true);
  const auto report = nlohmann::json::parse(read_file(root_ + "/run/validation.json"));
  EXPECT_DOUBLE_EQ(report["fp"]["ppl"].get<double>(), r.fp.ppl);
  EXPECT_TRUE(report["outliers"]["summary"].contains("avg_kurtosis"));
  EXPECT_TRUE(report["outliers"]["seed_b"].contains("embedding"));
  EXPECT_TRUE(report["outliers"]["attention_entropy"].contains("h.0"));
  // Phase times: each present, non-negative, and within the total.
  const auto& secs = report["seconds"];
  double parts = 0;
  for (const char* k : {"load", "fp_metric_batches", "fp_other_batches", "quantize_weights",
                        "calibration", "quantized_batches"}) {
    ASSERT_TRUE(secs.contains(k)) << k;
    EXPECT_GE(secs[k].get<double>(), 0.0) << k;
    parts += secs[k].get<double>();
  }
  EXPECT_GT(secs["fp_metric_batches"].get<double>(), 0.0);
  EXPECT_LE(parts, secs["total"].get<double>() + 1e-9);
  const auto enc = nlohmann::json::parse(read_file(root_ + "/run/encodings.json"));
  EXPECT_TRUE(enc["activation_encodings"].contains("h.0.mlp.c_proj"));
  EXPECT_TRUE(enc["activation_encodings"].contains("h.0.attn.context"));
  EXPECT_FALSE(enc["activation_encodings"].contains("h.0.attn.gated_context"));  // OPT: pre-gate
  EXPECT_TRUE(enc["activation_encodings"].contains("h.0.attn.qkv.scores"));
  EXPECT_TRUE(enc["activation_encodings"].contains("h.0.attn.qkv.probs"));
  // Per-channel weights: one encoding per output row; gates stay FP.
  EXPECT_EQ(enc["param_encodings"]["h.0.mlp.c_fc.weight"].size(), 512u);
  EXPECT_FALSE(enc["param_encodings"].contains("h.0.attn.gate.weight"));
  EXPECT_GT(r.max_inf_norm, 0);
  EXPECT_GT(r.avg_kurtosis, 1);
  const std::string table = validation_table({r, r});
  EXPECT_NE(table.find("W8A8 ppl"), std::string::npos) << table;
}

TEST_F(ValidateTest, TrainingLogsOutlierMetricsEveryNSteps) {
  RunConfig cfg;
  cfg.load("tiny_gpt2_op", common({"train.steps=4", "metrics.every=2", "run.dir=" + root_ + "/m"}));
  train(cfg, true);
  std::ifstream in(root_ + "/m/metrics.jsonl");
  std::string line;
  std::vector<int64_t> steps;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("summary")) {
      steps.push_back(j["step"].get<int64_t>());
      EXPECT_TRUE(j["seed_b"].contains("embedding"));
      EXPECT_GE(j["seed_b"]["embedding"]["kurtosis"].get<double>(), 1.0);
    }
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 4}));
}

TEST_F(ValidateTest, BadQuantizationOptionsAreExplained) {
  auto error_of = [&](const std::vector<std::string>& ov) {
    try {
      validate_checkpoint(root_ + "/run", true, ov, true);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"quant_setup=int4"}).find("quant.quant_setup: must be one of all, fp32_head"),
            std::string::npos);
  EXPECT_NE(error_of({"ranges_acts=minmax2"}).find("quant.ranges_acts"), std::string::npos);
  EXPECT_NE(error_of({"n_bits=1"}).find("quant.n_bits: must be in [2, 16]"), std::string::npos);
  EXPECT_NE(error_of({"est_num_batches=0"}).find("quant.est_num_batches"), std::string::npos);
  EXPECT_NE(error_of({"percentile=101"}).find("quant.percentile"), std::string::npos);
}

TEST(OutlierCollector, TracksTheSourceSystemsTensors) {
  for (const std::string objective : {"clm", "mlm"}) {
    ModelConfig cfg;
    cfg.n_layer = 2;
    cfg.d_model = 8;
    cfg.n_head = 2;
    cfg.d_ff = 16;
    cfg.vocab_size = 20;
    cfg.max_seq_len = 8;
    cfg.objective = objective;
    if (objective == "mlm") {
      cfg.block = "post_norm";
      cfg.final_norm = false;
      cfg.embed_norm = true;
    }
    TransformerLM m(cfg, DType::F32, Device::CPU, 8);
    m.init_weights(3);
    analysis::OutlierCollector c(cfg, false);
    m.set_hook(&c);
    m.forward(Tensor::from_vector({1, 8}, {1, 2, 3, 4, 5, 6, 7, 8}, DType::I32), Tensor());
    c.after_forward(m);
    const auto j = c.to_json();
    std::vector<std::string> names;
    for (const auto& [k, v] : j["seed_a"].items()) names.push_back(k);
    std::sort(names.begin(), names.end());
    const std::vector<std::string> want =
        objective == "clm"
            ? std::vector<std::string>{"h.0.attn.c_proj", "h.0.ln_1", "h.0.ln_2", "h.0.mlp.c_proj",
                                       "h.0.out", "h.1.attn.c_proj", "h.1.ln_1", "h.1.ln_2",
                                       "h.1.mlp.c_proj", "h.1.out", "ln_f"}
            : std::vector<std::string>{"h.0.mlp.c_proj", "h.0.mlp.residual", "h.0.out",
                                       "h.1.mlp.c_proj", "h.1.mlp.residual", "h.1.out"};
    EXPECT_EQ(names, want) << objective;
    EXPECT_EQ(j["seed_b"].size(), objective == "clm" ? 4u : 3u) << j["seed_b"].dump();
  }
}

}  // namespace
