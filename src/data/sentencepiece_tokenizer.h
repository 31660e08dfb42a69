// SentencePiece tokenizer: wraps sentencepiece::SentencePieceProcessor behind oft::Tokenizer.
// Models trained by train_sentencepiece() (declared in tokenizer.h, defined in the .cpp) use
// identity normalisation, keep whitespace runs, split digits, fall back to bytes for unseen
// characters (SentencePieceTrainOptions::byte_fallback) and carry "<|endoftext|>" as a
// user-defined symbol, so decode(encode(x)) == x for valid UTF-8 text x.
//
// Unlike the GPT-2 tokenizer, the literal text "<|endoftext|>" in the input is encoded as the
// eot_id() piece (SentencePiece always matches user-defined symbols).
// Thread safety: all const methods may be called concurrently.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace oft {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a .model file; a missing or unreadable/corrupt file is an oft::Error naming it.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override { return vocab_size_; }
  // The id of "<|endoftext|>"; for foreign models without it, the </s> (eos) id.
  int32_t eot_id() const override { return eot_id_; }
  // "sentencepiece:<absolute model path>" (load_tokenizer accepts it back).
  std::string name() const override { return name_; }

  const std::string& model_path() const { return path_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_, name_;
  int vocab_size_ = 0;
  int32_t eot_id_ = -1;
};

}  // namespace oft
