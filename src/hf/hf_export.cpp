// `oft export-hf`: an oft run -> a Hugging Face model directory (see hf.h).
// Writes model.safetensors (f32, Hugging Face names and layouts; metadata format "pt", which
// transformers requires), config.json (the family's fields plus the "oft" section) and the
// tokenizer files: the run's own tokenizer/ (an imported model's files, as they were), or the
// shipped GPT-2 BPE / WordPiece assets named by data.tokenizer. SentencePiece vocabularies have
// no transformers-native form here and are left out with a note.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/resources.h"
#include "data/hf_tokenizer.h"
#include "data/tokenizer.h"
#include "hf/hf.h"
#include "hf/hf_config.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace oft::hf {

namespace {


Tensor transposed(const Tensor& t) {
  const int64_t R = t.dim(0), C = t.dim(1);
  Tensor r = Tensor::empty({C, R}, DType::F32);
  const float* s = t.data<float>();
  float* d = r.data<float>();
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) d[j * R + i] = s[i * C + j];
  return r;
}

// Part i of 3 of a fused q|k|v tensor [3C, ...] -> [C, ...].
Tensor third(const Tensor& t, int64_t i) {
  Tensor r = Tensor::empty(hf_shape(Layout::ConcatRows, t.shape()), DType::F32);
  const int64_t per = r.numel();
  std::copy_n(t.data<float>() + i * per, per, r.data<float>());
  return r;
}

void copy_over(const fs::path& from, const fs::path& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

// Tokenizer files for the export; returns the tokenizer (null when none) and adds notes.
std::unique_ptr<Tokenizer> write_tokenizer(const std::string& run_dir, const std::string& spec,
                                           Family f, int64_t vocab_size, const fs::path& out,
                                           std::vector<std::string>& notes) {
  const fs::path own = fs::path(run_dir) / "tokenizer";
  const bool has_own = fs::is_directory(own) && !hf_tokenizer_kind(own.string()).empty();
  if (has_own || !spec.empty()) {
    // A tokenizer with more tokens than the model's vocabulary does not belong to it.
    std::unique_ptr<Tokenizer> t;
    try {
      t = has_own ? load_hf_tokenizer(own.string()) : load_tokenizer(spec);
    } catch (const Error&) {
    }
    if (t && t->vocab_size() > vocab_size) {
      notes.push_back("no tokenizer written: " + t->name() + " has " +
                      std::to_string(t->vocab_size()) + " tokens, more than the model's "
                      "vocabulary of " + std::to_string(vocab_size));
      return nullptr;
    }
  }
  if (has_own) {
    for (const auto& file : hf_tokenizer_files(own.string()))
      copy_over(file, out / fs::path(file).filename());
    notes.push_back("tokenizer: the run's imported files (" + hf_tokenizer_kind(own.string()) +
                    "), copied as they are");
    return load_hf_tokenizer(own.string());
  }
  if (spec.empty()) {
    notes.push_back("no tokenizer: the run records none (data.tokenizer is empty)");
    return nullptr;
  }
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_tokenizer(spec);
  } catch (const Error& e) {
    notes.push_back(std::string("no tokenizer written: data.tokenizer=") + spec +
                    " cannot be loaded (" + e.what() + ")");
    return nullptr;
  }
  const std::string name = tok->name();
  json tc;
  if (name == "gpt2" || name.starts_with("gpt2-bpe:")) {
    const fs::path dir = name == "gpt2" ? fs::path(resource_path("data/tokenizers/gpt2"))
                                        : fs::path(name.substr(9));
    copy_over(dir / "encoder.json", out / "vocab.json");
    copy_over(dir / "vocab.bpe", out / "merges.txt");
    tc = {{"tokenizer_class", "GPT2Tokenizer"}, {"add_prefix_space", false},
          {"bos_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"},
          {"unk_token", "<|endoftext|>"}};
  } else if (name == "bert-base-uncased" || name.starts_with("wordpiece:")) {
    const fs::path vocab = name == "bert-base-uncased"
                               ? fs::path(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"))
                               : fs::path(name.substr(10));
    copy_over(vocab, out / "vocab.txt");
    tc = {{"tokenizer_class", "BertTokenizer"}, {"do_lower_case", true},
          {"tokenize_chinese_chars", true}, {"strip_accents", nullptr},
          {"unk_token", "[UNK]"}, {"sep_token", "[SEP]"}, {"pad_token", "[PAD]"},
          {"cls_token", "[CLS]"}, {"mask_token", "[MASK]"}};
  } else if (name.starts_with("hf:")) {
    for (const auto& file : hf_tokenizer_files(name.substr(3)))
      copy_over(file, out / fs::path(file).filename());
    notes.push_back("tokenizer: Hugging Face files of " + name.substr(3));
    return tok;
  } else {
    notes.push_back("no tokenizer written: " + name + " (SentencePiece) has no transformers "
                    "tokenizer form here; tokenize with oft or convert it yourself");
    return nullptr;
  }
  write_file_atomic((out / "tokenizer_config.json").string(), tc.dump(2) + "\n");
  notes.push_back("tokenizer: " + name + " written as " +
                  (f == Family::BERT ? std::string("vocab.txt") : "vocab.json + merges.txt"));
  return tok;
}

}  // namespace

ExportReport export_hf(const ExportOptions& opt) {
  const std::string ckpt = find_checkpoint(opt.run);
  RunConfig cfg;
  auto model = load_model_from_checkpoint(ckpt, cfg, {"train.device=cpu", "train.precision=f32"});
  const ModelConfig& mc = cfg.model;
  ExportReport rep;
  const Family f = family_of(mc);
  rep.family = f;
  rep.variant = variant_reasons(f, mc);
  rep.transformers_compatible = rep.variant.empty();

  const fs::path out(opt.out_dir);
  fs::create_directories(out);
  std::vector<std::pair<std::string, Tensor>> tensors;
  const std::string prefix = default_prefix(f);
  auto hf_name = [&](const std::string& n) { return top_level(n) ? n : prefix + n; };
  for (const Param& p : model->params().all()) {
    const Tensor v = p.value.to(Device::CPU);
    const std::optional<Rule> rule = rule_for(f, p.name);
    if (!rule) {
      tensors.emplace_back("oft." + p.name, v);
      rep.oft_tensors.push_back("oft." + p.name);
      continue;
    }
    switch (rule->layout) {
      case Layout::Copy: tensors.emplace_back(hf_name(rule->hf[0]), v); break;
      case Layout::Transpose:
        tensors.emplace_back(hf_name(rule->hf[0]), v.ndim() == 2 ? transposed(v) : v);
        break;
      case Layout::ConcatRows:
        for (int64_t i = 0; i < 3; ++i) tensors.emplace_back(hf_name(rule->hf[size_t(i)]), third(v, i));
        break;
      case Layout::PosOffset2: {
        Tensor t = Tensor::zeros(hf_shape(Layout::PosOffset2, v.shape()), DType::F32);
        std::copy_n(v.data<float>(), v.numel(), t.data<float>() + 2 * v.dim(1));
        tensors.emplace_back(hf_name(rule->hf[0]), t);
        break;
      }
    }
  }
  rep.tensors = static_cast<int64_t>(tensors.size());
  save_safetensors((out / "model.safetensors").string(), tensors, {{"format", "pt"}});
  std::error_code ec;
  fs::remove(out / "model.safetensors.index.json", ec);  // a stale index would shadow the file

  const std::string run_dir = run_dir_of(ckpt);
  auto tok = write_tokenizer(run_dir, cfg.data.tokenizer, f, mc.vocab_size, out, rep.notes);
  json ids = json::object();
  if (tok) {
    if (f == Family::BERT) {
      if (tok->pad_id() >= 0) ids["pad_token_id"] = tok->pad_id();
    } else {
      ids["bos_token_id"] = ids["eos_token_id"] = tok->eot_id();
      if (f == Family::OPT && tok->pad_id() >= 0) ids["pad_token_id"] = tok->pad_id();
    }
  }
  json model_keys = json::object();
  const json all_keys = cfg.registry().to_json();
  for (const auto& [k, v] : all_keys.items())
    if (k.starts_with("model.")) model_keys[k] = v;
  const json c = export_config(f, mc, model_keys, rep.oft_tensors, ids);
  write_file_atomic((out / "config.json").string(), c.dump(2) + "\n");
  if (!rep.transformers_compatible) {
    std::string v;
    for (const auto& r : rep.variant) v += (v.empty() ? "" : ", ") + r;
    rep.notes.push_back("this is an oft variant (" + v + "): transformers' " +
                        family_architecture(f) + " cannot run it as is; the files hold every "
                        "tensor and config.json's \"oft\" section the settings, so oft import-hf "
                        "restores it exactly");
  }
  return rep;
}

}  // namespace oft::hf
