// Hugging Face tokenizer directories -> oft tokenizers (see hf_tokenizer.h).
#include "data/hf_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/gpt2_bpe.h"
#include "data/wordpiece.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace oft {

namespace {

constexpr const char* kFix =
    "re-save the tokenizer with transformers (tokenizer.save_pretrained(DIR)) or give the "
    "model's vocab.json + merges.txt (GPT-2 / OPT) or vocab.txt (BERT)";

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  OFT_CHECK(f.good(), p.string(), " cannot be opened; check the path and its permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json read_json(const fs::path& p) {
  try {
    return json::parse(read_text(p));
  } catch (const json::exception& e) {
    fail(p.string(), " is not valid JSON (", e.what(), "); ", kFix);
  }
}

// A special token of tokenizer_config.json: a string or an AddedToken {"content": ...}.
std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

json read_config(const fs::path& dir) {
  const fs::path p = dir / "tokenizer_config.json";
  return is_file(p) ? read_json(p) : json::object();
}

// Candidates for the document separator of a byte-level BPE vocabulary.
std::vector<std::string> eot_candidates(const json& cfg) {
  std::vector<std::string> r{"<|endoftext|>"};
  if (cfg.contains("eos_token")) {
    const std::string e = token_text(cfg["eos_token"]);
    if (!e.empty()) r.push_back(e);
  }
  r.push_back("</s>");
  return r;
}

std::string abs_name(const fs::path& dir) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(fs::absolute(dir), ec);
  return "hf:" + (ec ? dir.string() : a.string());
}

// True when the pre-tokenizer is ByteLevel (alone or inside a Sequence); checks its options.
bool byte_level(const json& pt, const std::string& file) {
  if (!pt.is_object()) return false;
  const std::string type = pt.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : pt.value("pretokenizers", json::array()))
      if (byte_level(p, file)) return true;
    return false;
  }
  if (type != "ByteLevel") return false;
  OFT_CHECK(!pt.value("add_prefix_space", false), file, ": pre_tokenizer.add_prefix_space=true "
            "is not supported (GPT-2 and OPT do not add a space before the text); save the "
            "tokenizer with add_prefix_space=False");
  OFT_CHECK(pt.value("use_regex", true), file, ": pre_tokenizer.use_regex=false is not "
            "supported: oft's byte-level BPE always splits with GPT-2's pattern");
  return true;
}

std::unique_ptr<Tokenizer> from_tokenizer_json(const fs::path& dir) {
  const fs::path path = dir / "tokenizer.json";
  const std::string file = path.string();
  const json j = read_json(path);
  const json cfg = read_config(dir);
  OFT_CHECK(j.contains("model") && j["model"].is_object(), file, ": no \"model\" object; ", kFix);
  const json& m = j["model"];
  const std::string type = m.value("type", "");
  OFT_CHECK(m.contains("vocab") && m["vocab"].is_object(), file, ": model.vocab must be an "
            "object mapping tokens to ids; ", kFix);
  json vocab = m["vocab"];
  if (type == "BPE") {
    OFT_CHECK(byte_level(j.value("pre_tokenizer", json()), file), file,
              ": only byte-level BPE (GPT-2, OPT: pre_tokenizer ByteLevel) is supported, this "
              "tokenizer's pre_tokenizer is ", j.value("pre_tokenizer", json()).dump());
    OFT_CHECK(j.value("normalizer", json()).is_null(), file, ": a normalizer (",
              j["normalizer"].dump(), ") is not supported with byte-level BPE (GPT-2 and OPT "
              "have none)");
    OFT_CHECK(m.value("dropout", json()).is_null(), file,
              ": model.dropout (BPE dropout) is not supported: it makes encoding random");
    OFT_CHECK(!m.value("ignore_merges", false), file, ": model.ignore_merges=true is not "
              "supported (GPT-2 applies every merge)");
    OFT_CHECK(m.contains("merges") && m["merges"].is_array(), file, ": model.merges must be a list");
    std::string merges;
    for (const auto& e : m["merges"]) {
      if (e.is_string()) {
        merges += e.get<std::string>();
      } else {
        OFT_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), file,
                  ": model.merges entries must be \"a b\" strings or [a, b] pairs, found ",
                  e.dump());
        merges += e[0].get<std::string>() + " " + e[1].get<std::string>();
      }
      merges += '\n';
    }
    // Added tokens outside the BPE vocabulary (special tokens) get their ids too.
    for (const auto& t : j.value("added_tokens", json::array()))
      if (t.contains("content") && t.contains("id") && !vocab.contains(t["content"].get<std::string>()))
        vocab[t["content"].get<std::string>()] = t["id"];
    return std::make_unique<Gpt2BpeTokenizer>(vocab, merges, abs_name(dir), eot_candidates(cfg),
                                              file, kFix);
  }
  if (type == "WordPiece") {
    OFT_CHECK(m.value("continuing_subword_prefix", "##") == "##", file,
              ": model.continuing_subword_prefix must be \"##\" (BERT's)");
    OFT_CHECK(m.value("max_input_chars_per_word", 100) == 100, file,
              ": model.max_input_chars_per_word must be 100 (BERT's)");
    OFT_CHECK(m.value("unk_token", "[UNK]") == "[UNK]", file, ": model.unk_token must be [UNK]");
    const json norm = j.value("normalizer", json());
    OFT_CHECK(norm.is_object() && norm.value("type", "") == "BertNormalizer", file,
              ": only the BertNormalizer is supported with WordPiece, found ", norm.dump());
    const json pt = j.value("pre_tokenizer", json());
    OFT_CHECK(pt.is_object() && pt.value("type", "") == "BertPreTokenizer", file,
              ": only the BertPreTokenizer is supported with WordPiece, found ", pt.dump());
    WordPieceOptions o;
    o.lowercase = norm.value("lowercase", true);
    o.tokenize_chinese_chars = norm.value("handle_chinese_chars", true);
    const json sa = norm.value("strip_accents", json());
    o.strip_accents = sa.is_boolean() ? int(sa.get<bool>()) : -1;
    std::vector<std::string> tokens(vocab.size());
    std::vector<char> seen(vocab.size(), 0);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      OFT_CHECK(it.value().is_number_integer(), file, ": the id of \"", it.key(),
                "\" is not an integer");
      const int64_t id = it.value().get<int64_t>();
      OFT_CHECK(id >= 0 && id < int64_t(tokens.size()) && !seen[size_t(id)], file, ": token \"",
                it.key(), "\" has id ", id, ", but ids must be 0..", tokens.size() - 1,
                " each used once");
      seen[size_t(id)] = 1;
      tokens[size_t(id)] = it.key();
    }
    return std::make_unique<WordPieceTokenizer>(std::move(tokens), abs_name(dir), file, o);
  }
  fail(file, ": model.type \"", type, "\" is not supported; oft reads byte-level BPE (GPT-2, "
       "OPT) and WordPiece (BERT) tokenizers");
}

}  // namespace

std::string hf_tokenizer_kind(const std::string& dir) {
  const fs::path d(dir);
  if (is_file(d / "tokenizer.json")) return "tokenizer.json";
  if (is_file(d / "vocab.json") && is_file(d / "merges.txt")) return "vocab.json+merges.txt";
  if (is_file(d / "vocab.txt")) return "vocab.txt";
  return "";
}

std::vector<std::string> hf_tokenizer_files(const std::string& dir) {
  const fs::path d(dir);
  std::vector<std::string> r;
  for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt",
                        "tokenizer_config.json", "special_tokens_map.json"})
    if (is_file(d / f)) r.push_back((d / f).string());
  return r;
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir) {
  const fs::path d(dir);
  const std::string kind = hf_tokenizer_kind(dir);
  if (kind == "tokenizer.json") return from_tokenizer_json(d);
  const json cfg = read_config(d);
  if (kind == "vocab.json+merges.txt") {
    const fs::path vj = d / "vocab.json";
    return std::make_unique<Gpt2BpeTokenizer>(read_json(vj), read_text(d / "merges.txt"),
                                              abs_name(d), eot_candidates(cfg), vj.string(), kFix);
  }
  if (kind == "vocab.txt") {
    WordPieceOptions o;
    o.lowercase = cfg.value("do_lower_case", true);
    o.tokenize_chinese_chars = cfg.value("tokenize_chinese_chars", true);
    const json sa = cfg.value("strip_accents", json());
    o.strip_accents = sa.is_boolean() ? int(sa.get<bool>()) : -1;
    return std::make_unique<WordPieceTokenizer>((d / "vocab.txt").string(), abs_name(d), o);
  }
  fail("tokenizer directory ", dir, " holds no Hugging Face tokenizer files (tokenizer.json, "
       "vocab.json + merges.txt, or vocab.txt)");
}

}  // namespace oft
