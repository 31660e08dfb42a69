// `oft data prepare` and `oft tokenizer train|encode|decode`.
#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "io/atomic_file.h"

namespace oft::cli {

void register_data(CLI::App& app) {
  {
    auto* data = app.add_subcommand("data", "Corpus preparation");
    data->require_subcommand(1);
    auto* cmd = data->add_subcommand("prepare", "Tokenize text/code files into train/val token shards");
    auto opt = std::make_shared<PrepareOptions>();
    auto tok = std::make_shared<std::string>("gpt2");
    auto max_mb = std::make_shared<double>(0);
    cmd->add_option("inputs", opt->inputs, "files, directories or glob patterns")->required();
    cmd->add_option("-o,--out", opt->out_dir, "output directory for train.bin, val.bin, meta.json")
        ->required();
    cmd->add_option("-t,--tokenizer", *tok, "gpt2 | bert-base-uncased | DIR with encoder.json+vocab.bpe | FILE.model (SentencePiece) | vocab.txt (WordPiece)")
        ->capture_default_str();
    cmd->add_option("--val-fraction", opt->val_fraction, "share of documents for validation")
        ->capture_default_str();
    cmd->add_option("--doc-split", opt->doc_split, "document boundaries: file | blank_lines")
        ->capture_default_str();
    cmd->add_option("--ext", opt->extensions, "keep only these extensions in directories (e.g. .py)");
    cmd->add_option("--max-mb", *max_mb, "stop after this many MB of input (0 = all)");
    cmd->add_flag("-q,--quiet", opt->quiet, "no progress line");
    cmd->callback([=] {
      OFT_CHECK(*max_mb >= 0, "--max-mb must be >= 0 (got ", *max_mb, ")");
      opt->max_bytes = static_cast<size_t>(*max_mb * 1e6);
      auto t = load_tokenizer(*tok);
      PrepareResult r = prepare_corpus(*opt, *t);
      std::printf("prepared %s: %llu files (%llu skipped), %.1f MB -> train %llu tokens (%llu docs), "
                  "val %llu tokens (%llu docs), vocabulary %d, %.1f s\n",
                  opt->out_dir.c_str(), (unsigned long long)r.files,
                  (unsigned long long)r.skipped_files, r.input_bytes / 1e6,
                  (unsigned long long)r.train_tokens, (unsigned long long)r.train_documents,
                  (unsigned long long)r.val_tokens, (unsigned long long)r.val_documents,
                  t->vocab_size(), r.seconds);
    });
  }
  {
    auto* tk = app.add_subcommand("tokenizer", "Tokenizer training and inspection");
    tk->require_subcommand(1);
    auto* tr = tk->add_subcommand("train", "Train a SentencePiece vocabulary on text files");
    auto opt = std::make_shared<SentencePieceTrainOptions>();
    tr->add_option("inputs", opt->inputs, "text files")->required();
    tr->add_option("-o,--out", opt->out_prefix, "output prefix (writes PREFIX.model, PREFIX.vocab)")
        ->required();
    tr->add_option("--vocab-size", opt->vocab_size, "vocabulary size")->capture_default_str();
    tr->add_option("--model-type", opt->model_type, "bpe | unigram")->capture_default_str();
    tr->callback([=] {
      OFT_CHECK(opt->vocab_size >= 16, "--vocab-size must be >= 16 (got ", opt->vocab_size, ")");
      train_sentencepiece(*opt);
      std::printf("wrote %s.model (%d pieces)\n", opt->out_prefix.c_str(), opt->vocab_size);
    });
    auto* enc = tk->add_subcommand("encode", "Print the token ids of a text");
    auto spec = std::make_shared<std::string>("gpt2");
    auto text = std::make_shared<std::string>();
    auto file = std::make_shared<std::string>();
    enc->add_option("text", *text, "text to encode");
    enc->add_option("-f,--file", *file, "encode this file's bytes exactly (instead of TEXT)");
    enc->add_option("-t,--tokenizer", *spec, "tokenizer spec (also a Hugging Face tokenizer "
                                             "directory or an imported run)")->capture_default_str();
    enc->callback([=] {
      OFT_CHECK(text->empty() != file->empty(), "oft tokenizer encode: give TEXT or --file PATH");
      if (!file->empty()) *text = read_file(*file);
      auto t = load_tokenizer(*spec);
      std::ostringstream os;
      for (int32_t id : t->encode(*text)) os << id << ' ';
      std::printf("%s\n", os.str().c_str());
    });
  }
}

}  // namespace oft::cli
