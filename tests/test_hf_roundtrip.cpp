// Hugging Face export and round trips: import(export(run)) reproduces every tensor of standard
// and variant oft models bit for bit and gives the same logits; exports of standard models use
// transformers' names and layouts and no oft-only tensors, variants say what they are. Hugging
// Face tokenizer files (tokenizer.json BPE / WordPiece, vocab.json + merges.txt, vocab.txt with
// tokenizer_config.json switches) encode exactly as oft's own tokenizers, and an imported run
// carries its tokenizer.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/resources.h"
#include "data/hf_tokenizer.h"
#include "data/wordpiece.h"
#include "hf/hf.h"
#include "hf_fixtures.h"
#include "io/atomic_file.h"
#include "train/checkpoint.h"
#include "train/logits.h"
#include "train/run_config.h"
#include "train/trainer.h"

using namespace oft;
using namespace oft::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A small oft run of `preset` with random weights (non-matrix parameters perturbed too).
void make_run(const std::string& dir, const std::string& spec) {
  std::istringstream in(spec);
  std::string preset, kv;
  in >> preset;
  std::vector<std::string> ov{"model.n_layer=2", "model.d_model=16", "model.n_head=2",
                              "model.d_ff=24", "model.max_seq_len=16", "data.seq_len=16",
                              "model.vocab_size=50"};
  while (in >> kv) ov.push_back(kv);
  RunConfig cfg;
  cfg.load(preset, ov);
  TransformerLM m(cfg.model, DType::F32, Device::CPU, cfg.data.seq_len);
  m.init_weights(11);
  Rng rng(5);
  for (Param& p : m.params().all()) {
    std::vector<double> v = p.value.to_vector();
    for (auto& x : v) x += 0.05 * rng.normal();
    p.value.copy_from(Tensor::from_vector(p.value.shape(), v, DType::F32));
  }
  json st;
  st["config"] = cfg.registry().to_json();
  save_checkpoint(dir, 3, m, nullptr, st, 1);
}

std::map<std::string, Tensor> weights(const std::string& run) {
  const SafetensorsFile f = SafetensorsFile::open(find_checkpoint(run) + "/model.safetensors");
  std::map<std::string, Tensor> r;
  for (const auto& n : f.names()) r[n] = f.load(n);
  return r;
}

Tensor logits_of(const std::string& run) {
  RunConfig cfg;
  auto m = load_model_from_checkpoint(find_checkpoint(run), cfg, {"train.device=cpu"});
  const Tensor ids = Tensor::from_vector({2, 6}, {1, 5, 9, 13, 17, 21, 49, 0, 3, 3, 7, 2}, DType::I32);
  return compute_logits(*m, ids);
}

struct Case {
  const char* name;
  const char* spec;
  bool standard;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class HfRoundTrip : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(HfRoundTrip, ImportOfExportIsBitExact) {
  TempDir d("hf_rt");
  make_run(d.file("run"), GetParam().spec);
  const hf::ExportReport ex = hf::export_hf({d.file("run"), d.file("hf")});
  EXPECT_EQ(ex.transformers_compatible, GetParam().standard);
  if (GetParam().standard) {
    EXPECT_TRUE(ex.oft_tensors.empty()) << "standard exports have no oft.* tensors";
  }
  const json cfg = json::parse(read_file(d.file("hf/config.json")));
  EXPECT_EQ(cfg["oft"]["transformers_compatible"], GetParam().standard);
  EXPECT_EQ(cfg["oft"]["variant"].empty(), GetParam().standard);
  EXPECT_EQ(cfg["architectures"][0], hf::family_architecture(ex.family));
  const SafetensorsFile out = SafetensorsFile::open(d.file("hf/model.safetensors"));
  EXPECT_EQ(out.metadata().at("format"), "pt") << "transformers requires format=pt";
  for (const auto& n : out.names()) {
    const bool oft_only = n.starts_with("oft.");
    EXPECT_TRUE(oft_only || n.starts_with(hf::default_prefix(ex.family)) || n.starts_with("cls."))
        << n;
  }

  hf::ImportOptions io;
  io.src = d.file("hf");
  io.run_dir = d.file("back");
  hf::import_hf(io);
  const auto a = weights(d.file("run")), b = weights(d.file("back"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [n, t] : a) {
    ASSERT_TRUE(b.count(n)) << n;
    const std::string x = serialize_safetensors({{"t", t}}), y = serialize_safetensors({{"t", b.at(n)}});
    EXPECT_EQ(x, y) << n << " differs after the round trip";
  }
  const std::vector<double> la = logits_of(d.file("run")).to_vector(),
                            lb = logits_of(d.file("back")).to_vector();
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) ASSERT_EQ(la[i], lb[i]) << "logit " << i;
}

INSTANTIATE_TEST_SUITE_P(
    All, HfRoundTrip,
    ::testing::Values(
        Case{"gpt2", "tiny model.activation=gelu", true},
        Case{"gpt2_gelu_erf", "tiny model.activation=gelu_erf", true},
        Case{"opt_pre_norm", "tiny_opt_125m_vanilla", true},
        Case{"opt_pre_norm_no_final_norm", "tiny_opt_125m_vanilla model.final_norm=false", true},
        Case{"opt350m", "tiny_opt_350m_vanilla model.block=post_norm model.final_norm=false "
                        "model.word_embed_proj_dim=8", true},
        Case{"bert", "tiny_bert_base_vanilla", true},
        Case{"opt_clipped_softmax", "tiny_opt_125m_clipped_softmax", false},
        Case{"opt_gated", "tiny_opt_125m_gated_attention", false},
        Case{"opt_all_features_gate", "tiny_opt_1.3b_gated_attention", false},
        Case{"bert_gated_mlp", "tiny_bert_base_gated_attention", false},
        Case{"gpt2_op", "tiny_gpt2_op", false},
        Case{"gpt2_skipless", "tiny_gpt2_skipless model.gains_trainable=true", false},
        Case{"gpt2_parallel_rmsnorm", "tiny_gpt2_parallel", false}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(HfExport, StandardLayouts) {
  TempDir d("hf_ex");
  make_run(d.file("gpt2"), "tiny");
  hf::export_hf({d.file("gpt2"), d.file("g")});
  const SafetensorsFile g = SafetensorsFile::open(d.file("g/model.safetensors"));
  EXPECT_EQ(g.info("transformer.h.0.attn.c_attn.weight").shape, (Shape{16, 48})) << "Conv1D [in, out]";
  EXPECT_EQ(g.info("transformer.h.1.mlp.c_fc.weight").shape, (Shape{16, 24}));
  EXPECT_FALSE(g.contains("lm_head.weight")) << "tied: transformers re-ties it";
  const json gc = json::parse(read_file(d.file("g/config.json")));
  EXPECT_EQ(gc["model_type"], "gpt2");
  EXPECT_EQ(gc["n_inner"], 24);
  EXPECT_EQ(gc["activation_function"], "gelu_new");

  make_run(d.file("opt"), "tiny_opt_350m_vanilla model.block=post_norm model.final_norm=false "
                          "model.word_embed_proj_dim=8");
  hf::export_hf({d.file("opt"), d.file("o")});
  const SafetensorsFile o = SafetensorsFile::open(d.file("o/model.safetensors"));
  const Tensor pos = o.load("model.decoder.embed_positions.weight");
  EXPECT_EQ(pos.shape(), (Shape{18, 16})) << "max_position_embeddings + 2 rows";
  for (int i = 0; i < 32; ++i) EXPECT_EQ(pos.data<float>()[i], 0.0f) << "the offset rows are zero";
  EXPECT_EQ(o.info("model.decoder.layers.0.self_attn.q_proj.weight").shape, (Shape{16, 16}));
  EXPECT_EQ(o.info("model.decoder.embed_tokens.weight").shape, (Shape{50, 8}));
  const json oc = json::parse(read_file(d.file("o/config.json")));
  EXPECT_EQ(oc["do_layer_norm_before"], false);
  EXPECT_EQ(oc["word_embed_proj_dim"], 8);

  make_run(d.file("bert"), "tiny_bert_base_vanilla model.vocab_size=30522");
  hf::export_hf({d.file("bert"), d.file("b")});
  const SafetensorsFile b = SafetensorsFile::open(d.file("b/model.safetensors"));
  EXPECT_TRUE(b.contains("bert.encoder.layer.1.attention.self.key.bias"));
  EXPECT_TRUE(b.contains("cls.predictions.bias"));
  EXPECT_TRUE(b.contains("cls.predictions.transform.LayerNorm.weight"));
  EXPECT_TRUE(fs::exists(d.file("b/vocab.txt"))) << "the WordPiece vocabulary is exported";
  const json bc = json::parse(read_file(d.file("b/config.json")));
  EXPECT_EQ(bc["hidden_act"], "gelu");
  EXPECT_EQ(bc["pad_token_id"], 0);
}

// ---- tokenizers ----

namespace {

const char* kMixed =
    "Hello world! It's 2024: naïve café, Ångström, résumé; ÉCOLE  spaces   and\ttabs\n"
    "CJK 中文字符 and かな, emoji 🙂👍🏽, math ≤ ≥ ±, code: x = f(y) + 3.14e-5; done...";

// tokenizer.json of the shipped GPT-2 BPE assets (merges as strings or as pairs).
void write_bpe_tokenizer_json(const std::string& dir, bool pairs) {
  const json enc = json::parse(read_file(resource_path("data/tokenizers/gpt2/encoder.json")));
  const std::string bpe = read_file(resource_path("data/tokenizers/gpt2/vocab.bpe"));
  json merges = json::array();
  std::istringstream in(bpe);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.starts_with("#version")) continue;
    const size_t sp = line.find(' ');
    if (pairs) merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
    else merges.push_back(line);
  }
  json t;
  t["normalizer"] = nullptr;
  t["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  t["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", enc}, {"merges", merges}};
  t["added_tokens"] = {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}};
  write_file(dir + "/tokenizer.json", t.dump());
}

std::vector<std::string> vocab_lines() {
  std::vector<std::string> r;
  std::istringstream in(read_file(resource_path("data/tokenizers/bert-base-uncased/vocab.txt")));
  std::string l;
  while (std::getline(in, l)) r.push_back(l);
  return r;
}

}  // namespace

TEST(HfTokenizer, Gpt2FormatsMatchTheShippedBpe) {
  const auto ref = load_tokenizer("gpt2")->encode(kMixed);
  for (int form = 0; form < 3; ++form) {
    TempDir d("hf_tok");
    if (form < 2) {
      write_bpe_tokenizer_json(d.path.string(), form == 1);
    } else {
      fs::copy_file(resource_path("data/tokenizers/gpt2/encoder.json"), d.file("vocab.json"));
      fs::copy_file(resource_path("data/tokenizers/gpt2/vocab.bpe"), d.file("merges.txt"));
    }
    auto t = load_tokenizer(d.path.string());
    EXPECT_EQ(t->encode(kMixed), ref) << "form " << form;
    EXPECT_EQ(t->eot_id(), 50256);
    EXPECT_EQ(t->decode(ref), kMixed);
    EXPECT_EQ(t->name().rfind("hf:", 0), 0u);
  }
}

TEST(HfTokenizer, OptStyleEndOfTextFromTokenizerConfig) {
  TempDir d("hf_tok_opt");
  json enc = json::parse(read_file(resource_path("data/tokenizers/gpt2/encoder.json")));
  const auto id = enc["<|endoftext|>"];
  enc.erase("<|endoftext|>");
  enc["</s>"] = id;
  write_file(d.file("vocab.json"), enc.dump());
  fs::copy_file(resource_path("data/tokenizers/gpt2/vocab.bpe"), d.file("merges.txt"));
  write_file(d.file("tokenizer_config.json"), R"({"eos_token": {"content": "</s>"}})");
  EXPECT_EQ(load_hf_tokenizer(d.path.string())->eot_id(), 50256);
}

TEST(HfTokenizer, WordPieceFormatsAndSwitches) {
  const auto ref = load_tokenizer("bert-base-uncased")->encode(kMixed);
  const std::vector<std::string> lines = vocab_lines();
  {
    TempDir d("hf_wp");
    json vocab = json::object();
    for (size_t i = 0; i < lines.size(); ++i) vocab[lines[i]] = i;
    json t;
    t["normalizer"] = {{"type", "BertNormalizer"}, {"clean_text", true},
                       {"handle_chinese_chars", true}, {"strip_accents", nullptr},
                       {"lowercase", true}};
    t["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
    t["model"] = {{"type", "WordPiece"}, {"unk_token", "[UNK]"},
                  {"continuing_subword_prefix", "##"}, {"max_input_chars_per_word", 100},
                  {"vocab", vocab}};
    write_file(d.file("tokenizer.json"), t.dump());
    EXPECT_EQ(load_tokenizer(d.path.string())->encode(kMixed), ref);
  }
  auto words = [&](const std::string& cfg) {
    TempDir d("hf_wp2");
    fs::copy_file(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"), d.file("vocab.txt"));
    write_file(d.file("tokenizer_config.json"), cfg);
    auto t = load_hf_tokenizer(d.path.string());
    return dynamic_cast<const WordPieceTokenizer&>(*t).basic_tokenize("Héllo WORLD 中文");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(words("{}"), (V{"hello", "world", "中", "文"}));
  EXPECT_EQ(words(R"({"do_lower_case": false})"), (V{"Héllo", "WORLD", "中", "文"}));
  EXPECT_EQ(words(R"({"do_lower_case": false, "strip_accents": true})"), (V{"Hello", "WORLD", "中", "文"}));
  EXPECT_EQ(words(R"({"do_lower_case": true, "strip_accents": false})"), (V{"héllo", "world", "中", "文"}));
  EXPECT_EQ(words(R"({"tokenize_chinese_chars": false})"), (V{"hello", "world", "中文"}));
}

TEST(HfTokenizer, ImportedRunCarriesItsTokenizer) {
  TempDir d("hf_tok_run");
  gpt2_fixture("transformer.", 50257).write(d.file("hf"));
  write_bpe_tokenizer_json(d.file("hf"), false);
  hf::ImportOptions o;
  o.src = d.file("hf");
  o.run_dir = d.file("run");
  const hf::ImportReport r = hf::import_hf(o);
  EXPECT_TRUE(fs::exists(d.file("run/tokenizer/tokenizer.json")));
  EXPECT_EQ(load_tokenizer(d.file("run"))->encode(kMixed), load_tokenizer("gpt2")->encode(kMixed));
  EXPECT_EQ(r.tokenizer.rfind("hf:", 0), 0u);
  // The export carries the same files, byte for byte.
  hf::export_hf({d.file("run"), d.file("out")});
  EXPECT_EQ(read_file(d.file("out/tokenizer.json")), read_file(d.file("hf/tokenizer.json")));
  // A tokenizer larger than the model's vocabulary does not belong to it.
  TempDir e("hf_tok_run2");
  gpt2_fixture().write(e.file("hf"));
  write_bpe_tokenizer_json(e.file("hf"), false);
  o.src = e.file("hf");
  o.run_dir = e.file("run");
  const std::string err = error_of([&] { hf::import_hf(o); });
  EXPECT_NE(err.find("50257 tokens"), std::string::npos) << err;
  EXPECT_NE(err.find("vocab_size is 40"), std::string::npos) << err;
}

TEST(Logits, ReadTokenIdsFiles) {
  TempDir d("logits_ids");
  write_file(d.file("ids.txt"), "1 2 3\n4, 5, 6\n\n");
  const Tensor t = read_token_ids(d.file("ids.txt"));
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.to_vector(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  write_file(d.file("bad.txt"), "1 2 3\n4 5\n");
  EXPECT_NE(error_of([&] { read_token_ids(d.file("bad.txt")); }).find("line 2"), std::string::npos);
  write_file(d.file("nan.txt"), "1 x 3\n");
  EXPECT_NE(error_of([&] { read_token_ids(d.file("nan.txt")); }).find("\"x\""), std::string::npos);
  save_safetensors(d.file("ids.safetensors"),
                   {{"input_ids", Tensor::from_vector({4}, {7, 8, 9, 10}, DType::I32)}});
  EXPECT_EQ(read_token_ids(d.file("ids.safetensors")).shape(), (Shape{1, 4}));
}
