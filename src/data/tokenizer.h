// Tokenizer interface shared by data preparation, evaluation and generation.
// Implementations: GPT-2 byte-level BPE (gpt2_bpe.h), SentencePiece models
// (sentencepiece_tokenizer.h) and BERT WordPiece (wordpiece.h). load_tokenizer() picks one from a
// spec string.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace oft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  // Token that separates documents in shards (GPT-2: <|endoftext|> = 50256).
  virtual int32_t eot_id() const = 0;
  // Token written before every document by `oft data prepare` (BERT: [CLS]); -1 = none, the
  // document is just its tokens followed by eot_id().
  virtual int32_t bos_id() const { return -1; }
  // Masked-LM pieces (BERT: [MASK], [PAD]); -1 when the vocabulary has no such token.
  virtual int32_t mask_id() const { return -1; }
  virtual int32_t pad_id() const { return -1; }
  // Ids that masked-LM masking never selects (BERT: [PAD] [CLS] [SEP] [MASK]); empty if none.
  virtual std::vector<int32_t> special_ids() const { return {}; }
  // Short identity stored in shard headers / run metadata, e.g. "gpt2" or "sentencepiece:<path>".
  virtual std::string name() const = 0;
};

// spec: "gpt2" (the shipped GPT-2 BPE assets under data/tokenizers/gpt2), a directory holding
// encoder.json + vocab.bpe, a path to a SentencePiece ".model" file, "bert-base-uncased" (the
// shipped BERT WordPiece vocabulary under data/tokenizers/bert-base-uncased), or a path to a
// WordPiece vocab ".txt" file (BERT uncased rules); also the name() of any of these.
// Errors name the file and the fix.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// Trains a SentencePiece BPE model on the given text files; writes <out_prefix>.model and
// <out_prefix>.vocab. The end-of-text piece "<|endoftext|>" is a user-defined symbol so that
// eot_id() exists. Deterministic for the same inputs and arguments.
struct SentencePieceTrainOptions {
  std::vector<std::string> inputs;
  std::string out_prefix;
  int vocab_size = 2048;
  std::string model_type = "bpe";  // bpe | unigram
  double character_coverage = 1.0;
  int64_t max_sentences = 2000000;
  // Unseen characters become UTF-8 byte pieces instead of <unk> (lossless encoding); costs 256
  // pieces, so vocab_size must exceed 256 + the number of distinct characters + 4.
  bool byte_fallback = true;
};
void train_sentencepiece(const SentencePieceTrainOptions& opt);

}  // namespace oft
