// `oft import-hf` on fixtures the tests write themselves (hf_fixtures.h): every Hugging Face
// tensor lands in the right oft parameter with the right layout (GPT-2 Conv1D transposed, OPT /
// BERT q|k|v fused, OPT's offset-2 position rows dropped, project_in / project_out, BERT's MLM
// head and gamma / beta names), shards and bf16 are read, and every bad input fails with a
// message naming the file, tensor / field and fix.
#include <gtest/gtest.h>

#include <filesystem>

#include "hf/hf.h"
#include "hf_fixtures.h"
#include "io/atomic_file.h"
#include "train/checkpoint.h"

using namespace oft;
using namespace oft::testing;
namespace fs = std::filesystem;

namespace {

hf::ImportReport import(const TempDir& d, const std::string& src = "hf",
                        std::vector<std::string> ov = {}, bool allow_extra = false) {
  hf::ImportOptions o;
  o.src = d.file(src);
  o.run_dir = d.file("run");
  o.overrides = std::move(ov);
  o.allow_extra = allow_extra;
  return hf::import_hf(o);
}

// The imported checkpoint's tensors.
SafetensorsFile ckpt(const TempDir& d) {
  return SafetensorsFile::open(find_checkpoint(d.file("run")) + "/model.safetensors");
}

void expect_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const auto x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]) << what << " element " << i;
}

Tensor transpose(const Tensor& t) {
  const int64_t R = t.dim(0), C = t.dim(1);
  const auto v = t.to_vector();
  std::vector<double> r(v.size());
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) r[size_t(j * R + i)] = v[size_t(i * C + j)];
  return Tensor::from_vector({C, R}, r, DType::F32);
}

Tensor rows(const Tensor& t, int64_t b, int64_t e) { return t.slice(b, e).clone(); }

bool has_note(const hf::ImportReport& r, const std::string& s) {
  for (const auto& n : r.notes)
    if (n.find(s) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(HfImport, Gpt2TensorsAndLayouts) {
  for (const std::string prefix : {"transformer.", ""}) {
    TempDir d("hf_gpt2");
    const HfFixture f = gpt2_fixture(prefix);
    f.write(d.file("hf"));
    const hf::ImportReport r = import(d);
    EXPECT_EQ(r.family, hf::Family::GPT2);
    EXPECT_TRUE(has_note(r, "causal-mask buffers")) << "attn.bias buffers are noted";
    const SafetensorsFile c = ckpt(d);
    const auto& T = f.tensors;
    expect_equal(c.load("wte.weight"), T.at(prefix + "wte.weight"), "wte");
    expect_equal(c.load("wpe.weight"), T.at(prefix + "wpe.weight"), "wpe");
    expect_equal(c.load("h.1.attn.c_attn.weight"), transpose(T.at(prefix + "h.1.attn.c_attn.weight")), "c_attn");
    expect_equal(c.load("h.1.attn.c_attn.bias"), T.at(prefix + "h.1.attn.c_attn.bias"), "c_attn.bias");
    expect_equal(c.load("h.0.mlp.c_fc.weight"), transpose(T.at(prefix + "h.0.mlp.c_fc.weight")), "c_fc");
    expect_equal(c.load("h.0.mlp.c_proj.weight"), transpose(T.at(prefix + "h.0.mlp.c_proj.weight")), "c_proj");
    expect_equal(c.load("ln_f.bias"), T.at(prefix + "ln_f.bias"), "ln_f");
    // The run records the model the config describes.
    const auto st = read_checkpoint_state(find_checkpoint(d.file("run")));
    EXPECT_EQ(st["config"]["model.d_ff"], kF);
    EXPECT_EQ(st["config"]["model.activation"], "gelu");
    EXPECT_EQ(st["config"]["model.max_seq_len"], kPos);
    EXPECT_TRUE(fs::exists(d.file("run/config.yaml")));
  }
}

TEST(HfImport, Opt350mShardedBf16) {
  TempDir d("hf_opt");
  const HfFixture f = opt350m_fixture();
  f.write(d.file("hf"), 3, DType::BF16);
  const hf::ImportReport r = import(d);
  EXPECT_EQ(r.family, hf::Family::OPT);
  EXPECT_TRUE(has_note(r, "BF16 tensor(s) to f32")) << "conversions are reported";
  const SafetensorsFile c = ckpt(d);
  auto hf = [&](const std::string& n) { return f.tensors.at("model.decoder." + n).cast(DType::BF16).cast(DType::F32); };
  const Tensor qkv = c.load("h.1.attn.c_attn.weight");
  expect_equal(rows(qkv, 0, kC), hf("layers.1.self_attn.q_proj.weight"), "q");
  expect_equal(rows(qkv, kC, 2 * kC), hf("layers.1.self_attn.k_proj.weight"), "k");
  expect_equal(rows(qkv, 2 * kC, 3 * kC), hf("layers.1.self_attn.v_proj.weight"), "v");
  expect_equal(c.load("h.1.attn.c_attn.bias").slice(kC, 2 * kC).clone(),
               hf("layers.1.self_attn.k_proj.bias"), "k bias");
  expect_equal(c.load("wpe.weight"), rows(hf("embed_positions.weight"), 2, kPos + 2), "offset 2");
  expect_equal(c.load("project_in.weight"), hf("project_in.weight"), "project_in");
  expect_equal(c.load("project_out.weight"), hf("project_out.weight"), "project_out");
  expect_equal(c.load("h.0.ln_2.weight"), hf("layers.0.final_layer_norm.weight"), "ln_2");
  EXPECT_FALSE(c.contains("ln_f.weight")) << "post-norm OPT has no final LayerNorm";
  const auto st = read_checkpoint_state(find_checkpoint(d.file("run")));
  EXPECT_EQ(st["config"]["model.block"], "post_norm");
  EXPECT_EQ(st["config"]["model.word_embed_proj_dim"], kP);
  EXPECT_EQ(st["config"]["model.arch"], "opt");
}

TEST(HfImport, BertMlmHeadGammaBetaPooler) {
  TempDir d("hf_bert");
  const HfFixture f = bert_fixture();
  f.write(d.file("hf"));
  const hf::ImportReport r = import(d);
  EXPECT_EQ(r.family, hf::Family::BERT);
  EXPECT_TRUE(has_note(r, "pooler")) << "the pooler is noted, not an error";
  const SafetensorsFile c = ckpt(d);
  const auto& T = f.tensors;
  expect_equal(c.load("emb_ln.weight"), T.at("bert.embeddings.LayerNorm.gamma"), "gamma");
  expect_equal(c.load("emb_ln.bias"), T.at("bert.embeddings.LayerNorm.beta"), "beta");
  expect_equal(c.load("wtt.weight"), T.at("bert.embeddings.token_type_embeddings.weight"), "types");
  expect_equal(rows(c.load("h.0.attn.c_attn.weight"), 2 * kC, 3 * kC),
               T.at("bert.encoder.layer.0.attention.self.value.weight"), "value");
  expect_equal(c.load("h.0.ln_1.weight"), T.at("bert.encoder.layer.0.attention.output.LayerNorm.weight"), "ln_1");
  expect_equal(c.load("h.1.ln_2.bias"), T.at("bert.encoder.layer.1.output.LayerNorm.bias"), "ln_2");
  expect_equal(c.load("mlm.dense.weight"), T.at("cls.predictions.transform.dense.weight"), "head");
  expect_equal(c.load("mlm.ln.bias"), T.at("cls.predictions.transform.LayerNorm.bias"), "head ln");
  expect_equal(c.load("mlm.decoder.bias"), T.at("cls.predictions.bias"), "decoder bias");
  const auto st = read_checkpoint_state(find_checkpoint(d.file("run")));
  EXPECT_EQ(st["config"]["model.objective"], "mlm");
  EXPECT_EQ(st["config"]["model.activation"], "gelu_erf");
  EXPECT_DOUBLE_EQ(st["config"]["model.norm_eps"].get<double>(), 1e-12);
}

TEST(HfImport, OverridesAreRecordedButNotModelKeys) {
  TempDir d("hf_ov");
  gpt2_fixture().write(d.file("hf"));
  import(d, "hf", {"data.val=some/val.bin", "data.seq_len=8"});
  const auto st = read_checkpoint_state(find_checkpoint(d.file("run")));
  EXPECT_EQ(st["config"]["data.val"], "some/val.bin");
  EXPECT_EQ(st["config"]["data.seq_len"], 8);
  TempDir e("hf_ov2");
  gpt2_fixture().write(e.file("hf"));
  const std::string err = error_of([&] { import(e, "hf", {"model.n_layer=3"}); });
  EXPECT_NE(err.find("model.n_layer"), std::string::npos) << err;
  EXPECT_NE(err.find("cannot be overridden"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(e.file("run"))) << "a refused import writes nothing";
}

// ---- bad input ----

class HfImportError : public ::testing::Test {
 protected:
  TempDir d{"hf_err"};
  std::string run_import(bool allow_extra = false) {
    return error_of([&] { import(d, "hf", {}, allow_extra); });
  }
  void expect(const std::string& err, const std::vector<std::string>& parts) {
    ASSERT_FALSE(err.empty()) << "expected an error";
    for (const auto& p : parts) EXPECT_NE(err.find(p), std::string::npos) << p << "\n" << err;
  }
};

TEST_F(HfImportError, UnsupportedModelType) {
  HfFixture f = gpt2_fixture();
  f.config["model_type"] = "llama";
  f.config["architectures"] = {"LlamaForCausalLM"};
  f.write(d.file("hf"));
  expect(run_import(), {"config.json", "model_type \"llama\"", "LlamaForCausalLM", "gpt2", "opt", "bert"});
}

TEST_F(HfImportError, UnsupportedArchitecture) {
  HfFixture f = gpt2_fixture();
  f.config["architectures"] = {"GPT2ForSequenceClassification"};
  f.write(d.file("hf"));
  expect(run_import(), {"GPT2ForSequenceClassification", "GPT2LMHeadModel"});
}

TEST_F(HfImportError, UnsupportedOption) {
  HfFixture f = gpt2_fixture();
  f.config["scale_attn_by_inverse_layer_idx"] = true;
  f.write(d.file("hf"));
  expect(run_import(), {"scale_attn_by_inverse_layer_idx"});
  HfFixture g = bert_fixture();
  g.config["position_embedding_type"] = "relative_key";
  TempDir e("hf_err2");
  g.write(e.file("hf"));
  expect(error_of([&] { import(e); }), {"position_embedding_type", "relative_key"});
}

TEST_F(HfImportError, MissingTensor) {
  HfFixture f = opt350m_fixture();
  f.tensors.erase("model.decoder.layers.1.self_attn.k_proj.weight");
  f.write(d.file("hf"));
  expect(run_import(), {"model.decoder.layers.1.self_attn.k_proj.weight", "is missing",
                        "h.1.attn.c_attn.weight", "hidden_size"});
}

TEST_F(HfImportError, ShapeMismatchNamesTensorShapesAndField) {
  HfFixture f = gpt2_fixture();
  f.config["n_inner"] = kF + 8;  // the config no longer matches the weights
  f.write(d.file("hf"));
  expect(run_import(), {"transformer.h.0.mlp.c_fc.weight", "[16, 24]", "[16, 32]", "n_inner"});
}

TEST_F(HfImportError, ExtraTensorIsAnErrorUnlessAllowed) {
  HfFixture f = gpt2_fixture();
  f.add("transformer.h.0.adapter.weight", {4, 4});
  f.write(d.file("hf"));
  expect(run_import(), {"transformer.h.0.adapter.weight", "--allow-extra"});
  hf::ImportReport r;
  EXPECT_NO_THROW(r = import(d, "hf", {}, true));
  EXPECT_TRUE(has_note(r, "transformer.h.0.adapter.weight"));
}

TEST_F(HfImportError, UntiedHead) {
  HfFixture f = gpt2_fixture();
  f.add("lm_head.weight", {kV, kC});
  f.write(d.file("hf"));
  expect(run_import(), {"lm_head.weight", "untied"});
}

TEST_F(HfImportError, BertDecoderBiasCopies) {
  HfFixture f = bert_fixture();
  f.tensors["cls.predictions.decoder.bias"] = f.tensors["cls.predictions.bias"].clone();
  f.write(d.file("hf"));
  EXPECT_EQ(run_import(), "") << "an equal tied copy is accepted";
  TempDir e("hf_err4");
  f.add("cls.predictions.decoder.bias", {kV});
  f.write(e.file("hf"));
  expect(error_of([&] { import(e); }), {"cls.predictions.decoder.bias", "differs"});
}

TEST_F(HfImportError, UnsupportedDtype) {
  HfFixture f = gpt2_fixture();
  std::vector<double> v(kC, 1.0);
  f.tensors["transformer.ln_f.weight"] = Tensor::from_vector({kC}, v, DType::I32);
  f.write(d.file("hf"));
  expect(run_import(), {"transformer.ln_f.weight", "dtype I32", "float32"});
}

TEST_F(HfImportError, TruncatedSafetensors) {
  gpt2_fixture().write(d.file("hf"));
  const std::string p = d.file("hf/model.safetensors");
  const std::string bytes = read_file(p);
  write_file(p, bytes.substr(0, bytes.size() - 100));
  expect(run_import(), {"model.safetensors", "truncated"});
}

TEST_F(HfImportError, MissingConfigJson) {
  gpt2_fixture().write(d.file("hf"));
  fs::remove(d.file("hf/config.json"));
  expect(run_import(), {"config.json", "save_pretrained"});
}

TEST_F(HfImportError, PickleOnly) {
  fs::create_directories(d.file("hf"));
  write_file(d.file("hf/config.json"), gpt2_fixture().config.dump());
  write_file(d.file("hf/pytorch_model.bin"), "not read");
  expect(run_import(), {"pytorch_model.bin", "safetensors", "AutoModelForCausalLM",
                        "save_pretrained"});
}

TEST_F(HfImportError, MissingShard) {
  gpt2_fixture().write(d.file("hf"), 2);
  fs::remove(d.file("hf/model-00002-of-00002.safetensors"));
  expect(run_import(), {"model-00002-of-00002.safetensors", "does not exist"});
}

TEST_F(HfImportError, MissingTokenizerIsANoteAndBrokenTokenizerAnError) {
  gpt2_fixture().write(d.file("hf"));
  hf::ImportReport r;
  EXPECT_NO_THROW(r = import(d));
  EXPECT_TRUE(has_note(r, "no tokenizer files"));
  EXPECT_TRUE(r.tokenizer.empty());
  TempDir e("hf_err3");
  gpt2_fixture().write(e.file("hf"));
  write_file(e.file("hf/tokenizer.json"), R"({"model": {"type": "Unigram", "vocab": {}}})");
  expect(error_of([&] { import(e); }), {"tokenizer.json", "Unigram", "--no-tokenizer"});
  EXPECT_FALSE(fs::exists(e.file("run")));
}

TEST_F(HfImportError, ExistingRunIsNotOverwritten) {
  gpt2_fixture().write(d.file("hf"));
  import(d);
  expect(run_import(), {"already holds checkpoints"});
}
