// `oft import-hf`: a Hugging Face model directory -> an oft run (see hf.h).
// Steps: config.json -> model.* settings; model.safetensors or the shards of
// model.safetensors.index.json -> every oft parameter through its rule (hf_names.h), with the
// dtype converted to f32 and the shape checked against what config.json implies; tied output
// layers verified; leftovers classified (known buffers / unused heads: noted; anything else: an
// error unless --allow-extra); tokenizer files copied; a step-0 checkpoint written.
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/hf_tokenizer.h"
#include "hf/hf.h"
#include "hf/hf_config.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/run_config.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace oft::hf {

namespace {

const char* convert_hint(Family f) {
  return f == Family::BERT ? "AutoModelForMaskedLM" : "AutoModelForCausalLM";
}

// The tensors of a model directory: model.safetensors, or the shards an index names.
class Weights {
 public:
  Weights(const fs::path& dir, Family f) : dir_(dir) {
    const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
    if (fs::is_regular_file(index)) {
      json j;
      try {
        j = json::parse(read_file(index.string()));
      } catch (const json::exception& e) {
        fail(index.string(), " is not valid JSON (", e.what(), "); re-save the model with "
             "save_pretrained");
      }
      OFT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index.string(),
                ": no \"weight_map\" object (tensor name -> shard file)");
      std::map<std::string, size_t> shard_index;
      for (const auto& [name, file] : j["weight_map"].items()) {
        OFT_CHECK(file.is_string(), index.string(), ": weight_map[\"", name, "\"] is not a file name");
        const std::string fname = file.get<std::string>();
        if (!shard_index.count(fname)) {
          const fs::path p = dir / fname;
          OFT_CHECK(fs::is_regular_file(p), index.string(), " names shard ", fname,
                    " (for tensor ", name, "), but ", p.string(), " does not exist: copy every "
                    "shard of the model into ", dir.string());
          shard_index[fname] = files_.size();
          files_.push_back(open(p));
        }
        const SafetensorsFile& sf = files_[shard_index[fname]];
        OFT_CHECK(sf.contains(name), index.string(), " maps tensor ", name, " to ", fname,
                  ", but that shard does not hold it: the shards and the index do not belong "
                  "together; re-save the model");
        where_[name] = shard_index[fname];
      }
    } else if (fs::is_regular_file(single)) {
      files_.push_back(open(single));
      for (const auto& n : files_[0].names()) where_[n] = 0;
    } else {
      std::string found;
      for (const char* other : {"pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                                "flax_model.msgpack"})
        if (fs::exists(dir / other)) found = other;
      if (!found.empty())
        fail(dir.string(), " holds ", found, " but no model.safetensors: oft reads safetensors "
             "only (no pickle). Convert it with: python3 -c \"import transformers as t; t.",
             convert_hint(f), ".from_pretrained('", dir.string(), "').save_pretrained('",
             dir.string(), "')\"");
      fail(dir.string(), " has no model.safetensors (nor model.safetensors.index.json with its "
           "shards): save the model with model.save_pretrained(DIR)");
    }
  }

  bool contains(const std::string& n) const { return where_.count(n) != 0; }
  const SafetensorsFile& file_of(const std::string& n) const { return files_[where_.at(n)]; }
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    for (const auto& [n, i] : where_) r.push_back(n);
    return r;
  }
  // Host f32 copy; the dtype must be a float type (F32 / F16 / BF16 / F64).
  Tensor load_f32(const std::string& n, std::map<std::string, int64_t>& converted) const {
    const SafetensorsFile& f = file_of(n);
    const std::string dt = f.info(n).dtype;
    OFT_CHECK(dt == "F32" || dt == "F16" || dt == "BF16" || dt == "F64", f.path(), ": tensor ", n,
              " has dtype ", dt, "; oft imports floating-point weights (F32, F16, BF16, F64). "
              "Quantized or integer checkpoints are not supported: save the model in float32, "
              "float16 or bfloat16");
    if (dt != "F32") ++converted[dt];
    return f.load_as(n, DType::F32);
  }

 private:
  static SafetensorsFile open(const fs::path& p) {
    try {
      return SafetensorsFile::open(p.string());
    } catch (const Error& e) {
      fail(e.what(), " (the file may be truncated or corrupt: copy or save it again)");
    }
  }
  fs::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
};

// dst[rows, cols] = src^T for a 2-D src [cols, rows].
void transpose_into(Tensor& dst, const Tensor& src) {
  const int64_t R = dst.dim(0), C = dst.dim(1);
  const float* s = src.data<float>();
  float* d = dst.data<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) d[r * C + c] = s[c * R + r];
}

void copy_into(Tensor& dst, const Tensor& src, int64_t dst_offset = 0, int64_t src_offset = 0,
               int64_t n = -1) {
  if (n < 0) n = src.numel() - src_offset;
  std::copy_n(src.data<float>() + src_offset, n, dst.data<float>() + dst_offset);
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string r;
  for (const auto& s : v) r += (r.empty() ? "" : sep) + s;
  return r;
}

}  // namespace

ImportReport import_hf(const ImportOptions& opt) {
  const fs::path src(opt.src);
  OFT_CHECK(fs::is_directory(src), "import-hf: ", opt.src, " is not a directory; give a Hugging "
            "Face model directory (what model.save_pretrained(DIR) writes)");
  const fs::path cfg_path = src / "config.json";
  OFT_CHECK(fs::is_regular_file(cfg_path), opt.src, " has no config.json: a Hugging Face model "
            "directory needs config.json next to model.safetensors (save the model with "
            "model.save_pretrained(DIR))");
  json hcfg;
  try {
    hcfg = json::parse(read_file(cfg_path.string()));
  } catch (const json::exception& e) {
    fail(cfg_path.string(), " is not valid JSON (", e.what(), ")");
  }
  ImportReport rep;
  const Family f = family_from_config(hcfg, cfg_path.string());
  rep.family = f;
  const Weights w(src, f);

  // The run's configuration: the model the config describes, then the caller's overrides.
  RunConfig cfg;
  for (const std::string& s : model_settings(f, hcfg, cfg_path.string(), rep.notes)) {
    const auto eq = s.find('=');
    cfg.registry().set(s.substr(0, eq), s.substr(eq + 1), cfg_path.string());
  }
  cfg.data.seq_len = std::min(cfg.data.seq_len, cfg.model.max_seq_len);
  const ModelConfig& mc = cfg.model;
  OFT_CHECK(mc.d_model % mc.n_head == 0, cfg_path.string(), ": the width (", mc.d_model,
            ") is not a multiple of the head count (", mc.n_head, ")");
  TransformerLM model(mc, DType::F32, Device::CPU, cfg.data.seq_len);

  // Base-model prefix: the one under which the token embedding is found.
  std::string prefix;
  bool found = false;
  for (const auto& p : read_prefixes(f))
    if (w.contains(p + embedding_name(f))) prefix = p, found = true;
  if (!found) {
    std::vector<std::string> c;
    for (const auto& p : read_prefixes(f)) c.push_back(p + embedding_name(f));
    fail(opt.src, ": the token embedding is missing (looked for ", join(c, " or "), "); is this a ",
         family_name(f), " checkpoint?");
  }
  const std::string cfgname = cfg_path.string();
  std::set<std::string> used;
  auto resolve = [&](const std::string& part) -> std::string {
    const std::string full = top_level(part) ? part : prefix + part;
    for (const auto& v : name_variants(full))
      if (w.contains(v)) return v;
    return "";
  };
  for (Param& p : model.params().all()) {
    const std::optional<Rule> rule = rule_for(f, p.name);
    if (!rule) {
      const std::string n = "oft." + p.name;
      OFT_CHECK(w.contains(n), opt.src, ": tensor ", n, " is missing. The model config asks for "
                "oft's own parameter ", p.name, " ", shape_str(p.value.shape()),
                ", which only an oft export (oft export-hf) holds; check the oft section of ",
                cfgname);
      const Tensor t = w.load_f32(n, rep.converted);
      OFT_CHECK(t.shape() == p.value.shape(), w.file_of(n).path(), ": tensor ", n, " has shape ",
                shape_str(t.shape()), " but the oft section of config.json implies ",
                shape_str(p.value.shape()));
      p.value.copy_from(t);
      used.insert(n);
      ++rep.tensors;
      continue;
    }
    const Shape part_shape = hf_shape(rule->layout, p.value.shape());
    std::vector<Tensor> parts;
    for (const auto& part : rule->hf) {
      const std::string n = resolve(part);
      OFT_CHECK(!n.empty(), opt.src, ": tensor ", prefix + part, " is missing (oft parameter ",
                p.name, ", shape ", shape_str(part_shape), " from config.json's ", rule->field,
                "). The checkpoint does not match its config.json, or it is another architecture");
      Tensor t = w.load_f32(n, rep.converted);
      OFT_CHECK(t.shape() == part_shape, w.file_of(n).path(), ": tensor ", n, " has shape ",
                shape_str(t.shape()), " but config.json (", rule->field, ") implies ",
                shape_str(part_shape), ": fix config.json or use the checkpoint it belongs to");
      parts.push_back(std::move(t));
      used.insert(n);
      ++rep.tensors;
    }
    switch (rule->layout) {
      case Layout::Copy: p.value.copy_from(parts[0]); break;
      case Layout::Transpose:
        if (p.value.ndim() == 2) transpose_into(p.value, parts[0]);
        else p.value.copy_from(parts[0]);
        break;
      case Layout::ConcatRows:
        for (size_t i = 0; i < 3; ++i) copy_into(p.value, parts[i], int64_t(i) * parts[i].numel());
        break;
      case Layout::PosOffset2:
        copy_into(p.value, parts[0], 0, 2 * p.value.dim(1));
        rep.notes.push_back("OPT positions: rows 0-1 of embed_positions (the offset-2 rows, never "
                            "used) were dropped");
        break;
    }
  }
  model.params().sync_compute();

  // The output layer is tied to the token embedding: a separate head must equal it.
  for (const std::string head : {"lm_head.weight", "cls.predictions.decoder.weight"}) {
    if (!w.contains(head)) continue;
    const std::string emb = prefix + embedding_name(f);
    std::map<std::string, int64_t> scratch;
    const Tensor a = w.load_f32(head, scratch), b = w.load_f32(emb, scratch);
    bool same = a.shape() == b.shape();
    for (int64_t i = 0; same && i < a.numel(); ++i) same = a.data<float>()[i] == b.data<float>()[i];
    OFT_CHECK(same, w.file_of(head).path(), ": ", head, " differs from ", emb, ": an untied output "
              "layer is not supported (oft ties the output layer to the token embedding, as GPT-2, "
              "OPT and BERT do; tie_word_embeddings=", hcfg.value("tie_word_embeddings", true), ")");
    used.insert(head);
  }
  // Older BERT saves hold the decoder bias twice (cls.predictions.bias and its tied copy).
  if (f == Family::BERT && w.contains("cls.predictions.bias") &&
      w.contains("cls.predictions.decoder.bias")) {
    std::map<std::string, int64_t> scratch;
    const Tensor a = w.load_f32("cls.predictions.decoder.bias", scratch),
                 b = w.load_f32("cls.predictions.bias", scratch);
    bool same = a.shape() == b.shape();
    for (int64_t i = 0; same && i < a.numel(); ++i) same = a.data<float>()[i] == b.data<float>()[i];
    OFT_CHECK(same, w.file_of("cls.predictions.decoder.bias").path(), ": cls.predictions.decoder."
              "bias differs from cls.predictions.bias: transformers ties them, oft has one "
              "decoder bias");
    used.insert("cls.predictions.decoder.bias");
  }
  // Leftovers: known buffers and heads the LM does not use are noted, anything else is an error.
  std::map<std::string, int64_t> ignored;
  std::vector<std::string> extra;
  for (const auto& n : w.names()) {
    if (used.count(n)) continue;
    const std::string rel = n.starts_with(prefix) ? n.substr(prefix.size()) : n;
    if (const char* why = ignorable(f, rel)) {
      ++ignored[why];
    } else {
      extra.push_back(n);
    }
  }
  for (const auto& [why, n] : ignored)
    rep.notes.push_back("ignored " + std::to_string(n) + " tensor(s): " + why);
  if (!extra.empty()) {
    std::vector<std::string> show(extra.begin(), extra.begin() + std::min<size_t>(extra.size(), 8));
    const std::string list = join(show) + (extra.size() > 8 ? ", ..." : "");
    OFT_CHECK(opt.allow_extra, opt.src, ": ", extra.size(), " tensor(s) have no place in the ",
              family_name(f), " model config.json describes: ", list, ". They may belong to "
              "another architecture or to an adapter; pass --allow-extra to import without them");
    rep.notes.push_back("skipped " + std::to_string(extra.size()) + " unexpected tensor(s) "
                        "(--allow-extra): " + list);
  }
  for (const auto& [dt, n] : rep.converted)
    rep.notes.push_back("converted " + std::to_string(n) + " " + dt + " tensor(s) to f32 master weights");

  // The run directory: everything is checked before anything is written.
  fs::path run = fs::path(opt.run_dir).lexically_normal();
  if (run.filename().empty()) run = run.parent_path();  // "runs/x/" -> "runs/x"
  OFT_CHECK(!fs::exists(run / "checkpoints" / "latest"), opt.run_dir, " already holds "
            "checkpoints: choose another output directory (--out) or remove it");
  const std::string kind = hf_tokenizer_kind(src.string());
  const fs::path td = run / "tokenizer";
  const bool with_tokenizer = opt.tokenizer && !kind.empty();
  if (with_tokenizer) {
    std::unique_ptr<Tokenizer> tok;
    try {
      tok = load_hf_tokenizer(src.string());
    } catch (const Error& e) {
      fail(e.what(), " (the tokenizer of ", opt.src, "; pass --no-tokenizer to import the "
           "weights without it)");
    }
    OFT_CHECK(tok->vocab_size() <= mc.vocab_size, opt.src, ": the tokenizer (", kind, ") has ",
              tok->vocab_size(), " tokens but config.json's vocab_size is ", mc.vocab_size,
              ": they do not belong together (pass --no-tokenizer to import without it)");
    std::error_code ec;
    const fs::path abs = fs::weakly_canonical(fs::absolute(td), ec);
    rep.tokenizer = "hf:" + (ec ? td.string() : abs.string());  // what the copy's name() is
    rep.notes.push_back("tokenizer: " + kind + " copied to " + td.string() + " (" +
                        std::to_string(tok->vocab_size()) + " tokens)");
  } else {
    rep.notes.push_back(opt.tokenizer ? "no tokenizer files (tokenizer.json, vocab.json + "
                                        "merges.txt, vocab.txt) in " + opt.src +
                                        ": the run has no tokenizer; give one to oft data prepare"
                                      : "tokenizer not imported (--no-tokenizer)");
  }
  cfg.data.tokenizer = rep.tokenizer;
  // The run's config.yaml is the template for continued training: `oft train RUN/config.yaml
  // data.train=... data.val=...` starts from these weights and writes runs/<name>-ft.
  cfg.train.init_from = fs::absolute(run).lexically_normal().string();
  cfg.name = run.filename().string() + "-ft";
  cfg.dir = "";
  const json before = cfg.registry().to_json();
  cfg.registry().apply_overrides(opt.overrides);
  cfg.validate();
  const json after = cfg.registry().to_json();
  for (const auto& [k, v] : after.items())
    OFT_CHECK(!k.starts_with("model.") || before[k] == v, "import-hf: ", k, " comes from ",
              cfgname, " and cannot be overridden (override data.*, train.*, quant.* or run.* "
              "keys; change the model afterwards with oft train ... train.init_from=RUN)");
  fs::create_directories(run);
  if (with_tokenizer) {
    fs::create_directories(td);
    for (const auto& file : hf_tokenizer_files(src.string()))
      fs::copy_file(file, td / fs::path(file).filename(), fs::copy_options::overwrite_existing);
  }
  json state;
  state["config"] = cfg.registry().to_json();
  state["hf_import"] = {{"source", fs::absolute(src).string()}, {"model_type", family_name(f)},
                        {"tensors", rep.tensors}, {"notes", rep.notes}};
  rep.checkpoint = save_checkpoint(run.string(), 0, model, nullptr, state, 1);
  write_file_atomic((run / "config.yaml").string(), cfg.registry().to_yaml());
  write_file_atomic((run / "hf_import.json").string(), state["hf_import"].dump(2) + "\n");
  rep.params = model.params().numel();
  return rep;
}

}  // namespace oft::hf
