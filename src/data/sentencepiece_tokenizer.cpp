// SentencePiece tokenizer (see sentencepiece_tokenizer.h) and train_sentencepiece() (see
// tokenizer.h): training reads the input files through our own line iterator (so any path
// works), with a fixed random seed and a fixed thread split so that the output is a pure
// function of the inputs and options.
#include "data/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_map>

#include "core/error.h"

namespace fs = std::filesystem;

namespace oft {

namespace {

constexpr const char* kEot = "<|endoftext|>";

std::string absolute_path(const std::string& p) {
  std::error_code ec;
  fs::path a = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? p : a.string();
}

// Lines of the input files in order, at most max_lines of them (0 = all). Trailing '\r' removed.
class FileLineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit FileLineIterator(const std::vector<std::string>& files) : files_(files) { Next(); }
  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }
  void Next() override {
    for (;;) {
      if (in_.is_open() && std::getline(in_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        return;
      }
      if (in_.is_open() && in_.bad()) return stop("reading " + files_[index_ - 1] + " failed");
      in_.close();
      if (index_ >= files_.size()) return stop("");
      const std::string& f = files_[index_++];
      in_.open(f, std::ios::binary);
      if (!in_.is_open()) return stop("cannot open " + f);
    }
  }

 private:
  const std::vector<std::string>& files_;
  size_t index_ = 0;
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;

  // Ends the iteration; a non-empty message becomes the error status SentencePiece reports.
  void stop(const std::string& error) {
    done_ = true;
    line_.clear();
    if (!error.empty()) status_ = {sentencepiece::util::StatusCode::kNotFound, error};
  }
};

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()),
      path_(absolute_path(model_path)),
      name_("sentencepiece:" + path_) {
  std::error_code ec;
  OFT_CHECK(fs::is_regular_file(model_path, ec), "SentencePiece model ", model_path,
            " does not exist or is not a file; fix the path or train one (train_sentencepiece)");
  const auto st = sp_->Load(model_path);
  OFT_CHECK(st.ok(), "SentencePiece model ", model_path, " could not be loaded (", st.ToString(),
            "); it is not a valid .model file: retrain it or fix the path");
  vocab_size_ = sp_->GetPieceSize();
  OFT_CHECK(vocab_size_ > 0, "SentencePiece model ", model_path, " has no pieces; retrain it");
  const int id = sp_->PieceToId(kEot);
  if (id >= 0 && id < vocab_size_ && sp_->IdToPiece(id) == kEot) {
    eot_id_ = id;
  } else {
    eot_id_ = sp_->eos_id();
    OFT_CHECK(eot_id_ >= 0 && eot_id_ < vocab_size_, "SentencePiece model ", model_path,
              " has neither a \"<|endoftext|>\" piece nor an eos piece to separate documents; "
              "retrain it with train_sentencepiece (which adds <|endoftext|>)");
  }
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto st = sp_->Encode(text, &ids);
  OFT_CHECK(st.ok(), "SentencePiece model ", path_, " failed to encode text (", st.ToString(),
            ")");
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<int> v(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    OFT_CHECK(ids[i] >= 0 && ids[i] < vocab_size_, "token id ", ids[i],
              " is outside the vocabulary of ", name_, " [0, ", vocab_size_,
              "); were these ids produced by another tokenizer?");
    v[i] = ids[i];
  }
  std::string out;
  const auto st = sp_->Decode(v, &out);
  OFT_CHECK(st.ok(), "SentencePiece model ", path_, " failed to decode ids (", st.ToString(), ")");
  return out;
}

void train_sentencepiece(const SentencePieceTrainOptions& opt) {
  OFT_CHECK(!opt.inputs.empty(), "SentencePiece training: no input files given; pass at least one "
                                 "text file");
  std::error_code ec;
  for (const auto& f : opt.inputs)
    OFT_CHECK(fs::is_regular_file(f, ec), "SentencePiece training input ", f,
              " does not exist or is not a file; fix the path");
  OFT_CHECK(!opt.out_prefix.empty(), "SentencePiece training: out_prefix is empty; give the "
                                     "output path without .model");
  OFT_CHECK(opt.model_type == "bpe" || opt.model_type == "unigram",
            "SentencePiece training: model_type must be bpe or unigram (got ", opt.model_type, ")");
  OFT_CHECK(opt.vocab_size >= 8, "SentencePiece training: vocab_size must be >= 8 (got ",
            opt.vocab_size, ")");
  OFT_CHECK(opt.character_coverage > 0.0 && opt.character_coverage <= 1.0,
            "SentencePiece training: character_coverage must be in (0, 1] (got ",
            opt.character_coverage, ")");
  OFT_CHECK(opt.max_sentences >= 0, "SentencePiece training: max_sentences must be >= 0 (got ",
            opt.max_sentences, ")");
  const fs::path parent = fs::path(opt.out_prefix).parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    OFT_CHECK(!ec && fs::is_directory(parent), "SentencePiece training: cannot create directory ",
              parent.string(), " for out_prefix (", ec.message(), ")");
  }

  std::unordered_map<std::string, std::string> args = {
      {"model_prefix", opt.out_prefix},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"model_type", opt.model_type},
      {"character_coverage", cat(opt.character_coverage)},
      {"input_sentence_size", std::to_string(opt.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"user_defined_symbols", kEot},
      {"byte_fallback", opt.byte_fallback ? "true" : "false"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      // Work is split into this many fixed parts whatever the core count: deterministic output.
      {"num_threads", "16"},
      {"minloglevel", "1"},
  };
  static std::mutex train_mutex;  // the random seed is process-global in SentencePiece
  std::lock_guard<std::mutex> lock(train_mutex);
  sentencepiece::SetRandomGeneratorSeed(20240611u);
  FileLineIterator it(opt.inputs);
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &it);
  OFT_CHECK(st.ok(), "SentencePiece training into ", opt.out_prefix, ".model failed: ",
            st.ToString(),
            " (too large a vocab_size for the text? with byte_fallback, vocab_size must exceed "
            "256 + distinct characters + 4)");
  OFT_CHECK(fs::is_regular_file(opt.out_prefix + ".model", ec), "SentencePiece training did not "
            "write ", opt.out_prefix, ".model; check that the directory is writable");
}

}  // namespace oft
