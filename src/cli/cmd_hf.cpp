// `oft import-hf`, `oft export-hf` (Hugging Face interop, src/hf/) and `oft logits` (the output
// of one forward pass for given ids or text, to compare with other implementations or inspect
// predictions).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "cli/commands.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "hf/hf.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/logits.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace oft::cli {

namespace {


// The tokenizer of a run: its tokenizer/ folder (imported models), else data.tokenizer.
std::unique_ptr<Tokenizer> run_tokenizer(const std::string& run_dir, const RunConfig& cfg) {
  if (fs::is_directory(fs::path(run_dir) / "tokenizer")) return load_tokenizer(run_dir);
  OFT_CHECK(!cfg.data.tokenizer.empty(), run_dir, " records no tokenizer (data.tokenizer is "
            "empty): pass token ids with --ids FILE, or data.tokenizer=SPEC");
  return load_tokenizer(cfg.data.tokenizer);
}

// Ids of `text` as the model sees them: masked LMs get [CLS] ... [SEP] and every literal
// "[MASK]" becomes the mask token; causal LMs get the plain encoding.
std::vector<int32_t> encode_for_model(const Tokenizer& tok, const std::string& text, bool mlm) {
  if (!mlm) return tok.encode(text);
  std::vector<int32_t> ids;
  if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  size_t pos = 0;
  for (;;) {
    const size_t m = tok.mask_id() >= 0 ? text.find("[MASK]", pos) : std::string::npos;
    const auto part = tok.encode(text.substr(pos, m == std::string::npos ? std::string::npos : m - pos));
    ids.insert(ids.end(), part.begin(), part.end());
    if (m == std::string::npos) break;
    ids.push_back(tok.mask_id());
    pos = m + 6;
  }
  ids.push_back(tok.eot_id());
  return ids;
}

void print_top(const Tensor& logits, const Tensor& ids, int64_t b, int64_t t, int k,
               const Tokenizer* tok) {
  const int64_t T = logits.dim(1), V = logits.dim(2);
  const float* row = logits.data<float>() + (b * T + t) * V;
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  k = static_cast<int>(std::min<int64_t>(k, V));
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t c) { return row[a] > row[c]; });
  double mx = row[order[0]], z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
  std::printf("sequence %lld position %lld (token %d):", (long long)b, (long long)t,
              ids.data<int32_t>()[b * ids.dim(1) + t]);
  for (int i = 0; i < k; ++i) {
    const int32_t id = order[size_t(i)];
    std::string s;
    if (tok) {
      try {
        s = tok->decode({id});
      } catch (const Error&) {
      }
    }
    std::printf("  %d %s%s%s %.3f", id, tok ? "'" : "", s.c_str(), tok ? "'" : "",
                std::exp(double(row[id]) - mx) / z);
  }
  std::printf("\n");
}

}  // namespace

void register_hf(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand(
        "import-hf", "Import a Hugging Face GPT-2 / OPT / BERT model directory as an oft run");
    auto opt = std::make_shared<hf::ImportOptions>();
    auto args = std::make_shared<std::vector<std::string>>();
    auto no_tok = std::make_shared<bool>(false);
    cmd->add_option("dir", opt->src, "model directory (config.json, model.safetensors or shards, "
                                     "tokenizer files)")->required();
    cmd->add_option("overrides", *args, "key=value settings recorded in the run (data.train=..., "
                                        "data.val=..., data.seq_len=...)");
    cmd->add_option("-o,--out", opt->run_dir, "run directory to create (default runs/<DIR name>)");
    cmd->add_flag("--no-tokenizer", *no_tok, "do not copy the tokenizer files");
    cmd->add_flag("--allow-extra", opt->allow_extra,
                  "import even when the checkpoint holds tensors the model has no place for "
                  "(they are listed and skipped)");
    cmd->callback([=] {
      for (const auto& a : *args)
        OFT_CHECK(a.find('=') != std::string::npos, "import-hf: unexpected argument '", a,
                  "': give one model directory, then key=value settings");
      opt->overrides = *args;
      opt->tokenizer = !*no_tok;
      if (opt->run_dir.empty())
        opt->run_dir = "runs/" + fs::path(opt->src).lexically_normal().filename().string();
      const hf::ImportReport r = hf::import_hf(*opt);
      std::printf("imported %s (%s, %lld parameters from %lld tensors) -> %s\n", opt->src.c_str(),
                  hf::family_name(r.family), (long long)r.params, (long long)r.tensors,
                  r.checkpoint.c_str());
      for (const auto& n : r.notes) std::printf("  note: %s\n", n.c_str());
      const std::string run = opt->run_dir;
      std::printf("next:\n");
      if (!r.tokenizer.empty()) {
        std::printf("  oft tokenizer encode -t %s \"some text\"\n", run.c_str());
        std::printf("  oft data prepare FILES -t %s -o data/cache/NAME\n", run.c_str());
      }
      std::printf("  oft logits %s --text \"...\"   (or --ids FILE --out logits.safetensors)\n",
                  run.c_str());
      std::printf("  oft validate %s data.val=data/cache/NAME/val.bin [--quantize]\n", run.c_str());
      std::printf("  oft train %s/config.yaml data.train=data/cache/NAME/train.bin "
                  "data.val=data/cache/NAME/val.bin   (continued training from these weights, "
                  "into runs/%s-ft)\n",
                  run.c_str(), fs::path(run).filename().c_str());
    });
  }
  {
    auto* cmd = app.add_subcommand(
        "export-hf", "Write an oft run as a Hugging Face model directory (from_pretrained)");
    auto opt = std::make_shared<hf::ExportOptions>();
    cmd->add_option("run", opt->run, "run directory or checkpoint")->required();
    cmd->add_option("dir", opt->out_dir, "output directory")->required();
    cmd->callback([=] {
      const hf::ExportReport r = hf::export_hf(*opt);
      std::printf("exported %s -> %s (%s, %s, %lld tensors)\n", opt->run.c_str(),
                  opt->out_dir.c_str(), hf::family_name(r.family), hf::family_architecture(r.family),
                  (long long)r.tensors);
      for (const auto& n : r.notes) std::printf("  note: %s\n", n.c_str());
      if (r.transformers_compatible) {
        std::printf("load it with transformers: %s.from_pretrained(\"%s\")\n",
                    hf::family_architecture(r.family), opt->out_dir.c_str());
      } else {
        std::fprintf(stderr, "oft: warning: transformers cannot run this model as is: it is an "
                             "oft variant (%zu oft-only tensors, listed in config.json's "
                             "\"oft\" section)\n", r.oft_tensors.size());
      }
    });
  }
  {
    auto* cmd = app.add_subcommand(
        "logits", "Logits of a run for token ids or text: save them, print the top predictions");
    auto target = std::make_shared<std::string>();
    auto args = std::make_shared<std::vector<std::string>>();
    auto ids_file = std::make_shared<std::string>();
    auto texts = std::make_shared<std::vector<std::string>>();
    auto out = std::make_shared<std::string>();
    auto top = std::make_shared<int>(5);
    cmd->add_option("run", *target, "run directory or checkpoint")->required();
    cmd->add_option("overrides", *args, "key=value (train.device=cpu|cuda, train.precision=f32|bf16)");
    cmd->add_option("--ids", *ids_file, "token ids: FILE.safetensors (input_ids [B, T]) or a text "
                                        "file, one sequence per line");
    cmd->add_option("--text", *texts, "text(s) to tokenize with the run's tokenizer (masked LM: "
                                      "[CLS] ... [SEP], \"[MASK]\" marks masked positions)");
    cmd->add_option("--out", *out, "write logits [B, T, V] f32 and input_ids to this .safetensors");
    cmd->add_option("--top", *top, "top predictions to print (0 = none)")->capture_default_str();
    cmd->callback([=] {
      OFT_CHECK(ids_file->empty() != texts->empty(), "oft logits: give --ids FILE or --text TEXT "
                "(one of them)");
      const std::string ckpt = find_checkpoint(*target);
      RunConfig cfg;
      auto model = load_model_from_checkpoint(ckpt, cfg, *args);
      const bool mlm = cfg.model.objective == "mlm";
      std::unique_ptr<Tokenizer> tok;
      Tensor ids;
      if (!texts->empty()) {
        tok = run_tokenizer(run_dir_of(ckpt), cfg);
        std::vector<std::vector<int32_t>> seqs;
        size_t T = 0;
        for (const auto& t : *texts) {
          seqs.push_back(encode_for_model(*tok, t, mlm));
          T = std::max(T, seqs.back().size());
        }
        OFT_CHECK(T > 0, "oft logits: the text encodes to no tokens");
        for (auto& s : seqs)
          OFT_CHECK(s.size() == T, "oft logits: the texts encode to different lengths (", s.size(),
                    " and ", T, " tokens): give one text, or ids of equal length with --ids");
        std::vector<double> flat;
        for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
        ids = Tensor::from_vector({int64_t(seqs.size()), int64_t(T)}, flat, DType::I32);
      } else {
        ids = read_token_ids(*ids_file);
        try {
          tok = run_tokenizer(run_dir_of(ckpt), cfg);
        } catch (const Error&) {
          tok.reset();  // printing ids only
        }
      }
      const Tensor logits = compute_logits(*model, ids);
      std::fprintf(stderr, "logits [%lld, %lld, %lld] on %s (%s)\n", (long long)logits.dim(0),
                   (long long)logits.dim(1), (long long)logits.dim(2),
                   device_name(model->device()), dtype_name(model->dtype()));
      if (!out->empty()) {
        save_safetensors(*out, {{"logits", logits}, {"input_ids", ids}},
                         {{"run", ckpt}, {"device", device_name(model->device())},
                          {"precision", dtype_name(model->dtype())}});
        std::printf("wrote %s\n", out->c_str());
      }
      if (*top <= 0) return;
      const int64_t B = ids.dim(0), T = ids.dim(1);
      for (int64_t b = 0; b < B; ++b) {
        if (!mlm) {
          print_top(logits, ids, b, T - 1, *top, tok.get());
          continue;
        }
        for (int64_t t = 0; t < T; ++t)
          if (tok && ids.data<int32_t>()[b * T + t] == tok->mask_id())
            print_top(logits, ids, b, t, *top, tok.get());
      }
    });
  }
}

}  // namespace oft::cli
