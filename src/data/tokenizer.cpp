// load_tokenizer(): turns a tokenizer spec string into a Tokenizer (see tokenizer.h).
// Accepted specs:
//   gpt2                      the shipped GPT-2 BPE assets (data/tokenizers/gpt2)
//   <dir>                     a directory holding encoder.json + vocab.bpe (GPT-2 format)
//   gpt2-bpe:<dir>            the same, explicitly (what such a tokenizer's name() returns)
//   <path>.model              a SentencePiece model
//   sentencepiece:<path>      the same, explicitly (what SentencePieceTokenizer::name() returns)
//   bert-base-uncased         the shipped BERT WordPiece vocab (data/tokenizers/bert-base-uncased)
//   <path>.txt                a BERT WordPiece vocab.txt (lower-casing, as bert-base-uncased)
//   wordpiece:<path>          the same, explicitly (what such a tokenizer's name() returns)
//   <dir>                     a Hugging Face tokenizer directory (tokenizer.json, vocab.json +
//                             merges.txt, or vocab.txt; see hf_tokenizer.h), or a run
//                             directory whose tokenizer/ holds one (`oft import-hf` writes it)
//   hf:<dir>                  the same, explicitly (what such a tokenizer's name() returns)
#include <filesystem>

#include "core/error.h"
#include "core/resources.h"
#include "data/gpt2_bpe.h"
#include "data/hf_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "data/wordpiece.h"

namespace fs = std::filesystem;

namespace oft {

namespace {

constexpr const char* kAcceptedForms =
    "accepted forms: \"gpt2\" (shipped GPT-2 BPE), a directory holding encoder.json and "
    "vocab.bpe, \"gpt2-bpe:<dir>\", a path ending in .model (SentencePiece), "
    "\"sentencepiece:<path>\", \"bert-base-uncased\" (shipped BERT WordPiece), a path to a "
    "WordPiece vocab.txt (ending in .txt), \"wordpiece:<path>\", a Hugging Face tokenizer "
    "directory (tokenizer.json, vocab.json + merges.txt, or vocab.txt) or a run directory "
    "holding one in tokenizer/ (\"hf:<dir>\")";

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.size() >= prefix.size() && std::string_view(s).substr(0, prefix.size()) == prefix;
}

std::unique_ptr<Tokenizer> load_bpe_dir(const std::string& dir) {
  std::error_code ec;
  OFT_CHECK(fs::is_directory(dir, ec), "tokenizer directory ", dir,
            " does not exist; fix the path (", kAcceptedForms, ")");
  // Hugging Face files, directly or in a run's tokenizer/ folder.
  if (!fs::is_regular_file(fs::path(dir) / "encoder.json", ec)) {
    if (!hf_tokenizer_kind(dir).empty()) return load_hf_tokenizer(dir);
    const fs::path sub = fs::path(dir) / "tokenizer";
    if (fs::is_directory(sub, ec) && !hf_tokenizer_kind(sub.string()).empty())
      return load_hf_tokenizer(sub.string());
  }
  const std::string enc = (fs::path(dir) / "encoder.json").string();
  const std::string bpe = (fs::path(dir) / "vocab.bpe").string();
  OFT_CHECK(fs::is_regular_file(enc, ec), "tokenizer directory ", dir, " has no encoder.json (",
            enc, " is missing); a GPT-2 BPE directory needs encoder.json and vocab.bpe");
  OFT_CHECK(fs::is_regular_file(bpe, ec), "tokenizer directory ", dir, " has no vocab.bpe (", bpe,
            " is missing); a GPT-2 BPE directory needs encoder.json and vocab.bpe");
  fs::path abs = fs::weakly_canonical(fs::absolute(dir), ec);
  const std::string name = "gpt2-bpe:" + (ec ? dir : abs.string());
  return std::make_unique<Gpt2BpeTokenizer>(enc, bpe, name);
}

// A WordPiece vocab.txt; a file that is not one also gets the list of accepted spec forms.
std::unique_ptr<Tokenizer> load_wordpiece(const std::string& path) {
  std::error_code ec;
  OFT_CHECK(fs::is_regular_file(path, ec), "WordPiece vocabulary ", path,
            " does not exist or is not a file; fix the path (", kAcceptedForms, ")");
  fs::path abs = fs::weakly_canonical(fs::absolute(path), ec);
  try {
    return std::make_unique<WordPieceTokenizer>(path, "wordpiece:" + (ec ? path : abs.string()));
  } catch (const Error& e) {
    fail(e.what(), " (the tokenizer spec was read as a WordPiece vocab.txt; ", kAcceptedForms,
         ")");
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  OFT_CHECK(!spec.empty(), "tokenizer spec is empty; ", kAcceptedForms);
  if (spec == "gpt2") {
    return std::make_unique<Gpt2BpeTokenizer>(
        resource_path("data/tokenizers/gpt2/encoder.json"),
        resource_path("data/tokenizers/gpt2/vocab.bpe"), "gpt2");
  }
  if (spec == "bert-base-uncased") {
    return std::make_unique<WordPieceTokenizer>(
        resource_path("data/tokenizers/bert-base-uncased/vocab.txt"), "bert-base-uncased");
  }
  if (starts_with(spec, "gpt2-bpe:")) return load_bpe_dir(spec.substr(9));
  if (starts_with(spec, "hf:")) return load_hf_tokenizer(spec.substr(3));
  if (starts_with(spec, "wordpiece:")) return load_wordpiece(spec.substr(10));
  if (starts_with(spec, "sentencepiece:"))
    return std::make_unique<SentencePieceTokenizer>(spec.substr(14));
  if (fs::path(spec).extension() == ".model") return std::make_unique<SentencePieceTokenizer>(spec);
  std::error_code ec;
  if (fs::is_directory(spec, ec)) return load_bpe_dir(spec);
  if (fs::path(spec).extension() == ".txt" && fs::exists(spec, ec)) return load_wordpiece(spec);
  if (fs::exists(spec, ec))
    fail("tokenizer spec ", spec, " is a file but neither a SentencePiece .model nor a WordPiece "
         "vocab .txt; ", kAcceptedForms);
  fail("unknown tokenizer spec \"", spec, "\" (no such file or directory); ", kAcceptedForms);
}

}  // namespace oft
