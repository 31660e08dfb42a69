// BERT WordPiece tokenizer, token-for-token identical to Hugging Face's BertTokenizer with
// do_lower_case=True (the bert-base-uncased setting; WordPieceOptions select the cased, accent
// and CJK variants) and to Google's tokenization.py:
//
//  BasicTokenizer: drop NUL, U+FFFD and control characters (general category C* except \t \n
//  \r, as Hugging Face does; Google drops only Cc/Cf), turn whitespace (space, \t, \n, \r, Zs)
//  into spaces, put spaces around CJK ideographs (the ranges of tokenization.py), split on
//  whitespace (Python's str.split(), so U+2028/U+2029 too), then per word: str.lower() (final
//  sigma included), NFD with the Mn marks dropped, split off every punctuation character (ASCII
//  33-47, 58-64, 91-96, 123-126 and Unicode P*).
//  WordPiece: greedy longest-match-first with "##" continuation pieces; a word longer than 100
//  code points, or one that cannot be covered, becomes a single [UNK].
//
// Unicode data (categories, NFD, str.lower()) comes from unicode_nfd.cpp, generated from Python's
// unicodedata by scripts/gen_unicode_nfd.py. Input is UTF-8; invalid bytes are dropped (what
// tokenization.py does with bytes: decode("utf-8", "ignore")).
// Special-token text such as "[CLS]" inside the input is ordinary text (tokenization.py's
// behaviour; Hugging Face would match it as the special token): encode() never emits the special
// ids; encode_with_specials() adds [CLS] ... [SEP].
//
// Thread safety: all const methods may be called concurrently (no caches, no mutable state).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace oft {

// BasicTokenizer switches of Hugging Face's BertTokenizer / BertNormalizer (the defaults are
// bert-base-uncased's). strip_accents < 0 follows lowercase, as Hugging Face's None does.
struct WordPieceOptions {
  bool lowercase = true;            // do_lower_case
  int strip_accents = -1;           // 1 / 0 / -1 = follow lowercase
  bool tokenize_chinese_chars = true;
  bool strips() const { return strip_accents < 0 ? lowercase : strip_accents != 0; }
};

class WordPieceTokenizer final : public Tokenizer {
 public:
  static constexpr int kMaxInputCharsPerWord = 100;

  // Loads a BERT vocab.txt: one token per line, id = 0-based line number; lines end in "\n",
  // "\r\n" or "\r" (as Python's text mode reads them); for a token listed twice the later line
  // wins, like Hugging Face's load_vocab. [PAD], [UNK], [CLS], [SEP] and [MASK] must be present.
  // Errors name the file and the fix. `name` is what name() returns.
  WordPieceTokenizer(const std::string& vocab_path, std::string name,
                     WordPieceOptions options = {});
  // From an in-memory vocabulary (id = index), e.g. the "vocab" of a Hugging Face
  // tokenizer.json; `source` names it in errors.
  WordPieceTokenizer(std::vector<std::string> tokens, std::string name, std::string source,
                     WordPieceOptions options);
  const WordPieceOptions& options() const { return options_; }
  ~WordPieceTokenizer() override;

  // Token ids without [CLS]/[SEP].
  std::vector<int32_t> encode(std::string_view text) const override;
  // Same as encode() but appends to *out.
  void encode_append(std::string_view text, std::vector<int32_t>* out) const;
  // [CLS] encode(text) [SEP], the single-sequence input of BERT.
  std::vector<int32_t> encode_with_specials(std::string_view text) const;
  // The word-piece strings of encode(text) (Hugging Face's tokenize()).
  std::vector<std::string> tokenize(std::string_view text) const;
  // The words the BasicTokenizer stage produces (cleaned, lower-cased, accent-stripped,
  // punctuation split), before WordPiece.
  std::vector<std::string> basic_tokenize(std::string_view text) const;

  // Hugging Face's convert_tokens_to_string: tokens joined by spaces, " ##" removed, then
  // stripped. Special tokens are kept as their text. Throws oft::Error for an id outside the
  // vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override { return int(tokens_.size()); }
  // Documents are separated by [SEP] in shards.
  int32_t eot_id() const override { return sep_id_; }
  std::string name() const override { return name_; }

  int32_t pad_id() const override { return pad_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t mask_id() const override { return mask_id_; }
  // Written before every document ([CLS]), so that a shard reads [CLS] doc [SEP] [CLS] doc ...
  int32_t bos_id() const override { return cls_id_; }
  // The ids masked-LM masking must never select: [PAD] [CLS] [SEP] [MASK].
  std::vector<int32_t> special_ids() const override {
    return {pad_id_, cls_id_, sep_id_, mask_id_};
  }
  // Id of a vocabulary entry (e.g. "hello" or "##ing"), -1 when it is not in the vocabulary.
  int32_t token_to_id(std::string_view token) const;
  // The vocabulary entry of `id`; throws oft::Error when id is out of range.
  const std::string& id_to_token(int32_t id) const;

 private:
  struct Slot {
    uint64_t key;  // (node << 8) | byte; kEmpty when unused
    int32_t child;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  int32_t child(int32_t node, uint8_t byte) const {
    const uint64_t key = (uint64_t(uint32_t(node)) << 8) | byte;
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    for (;;) {
      const Slot& s = slots_[h];
      if (s.key == key) return s.child;
      if (s.key == kEmpty) return -1;
      h = (h + 1) & mask_;
    }
  }
  void load_vocab(const std::string& path);
  void find_specials();
  void build_trie();
  // Appends the pieces of one word (UTF-8, after BasicTokenizer) to *out.
  void wordpiece(std::string_view word, int num_chars, std::vector<int32_t>* out) const;
  // Runs BasicTokenizer over text, calling emit(word, num_code_points) for each word.
  template <class Emit>
  void basic(std::string_view text, Emit&& emit) const;

  std::string name_;
  std::string path_;
  WordPieceOptions options_;
  std::vector<std::string> tokens_;  // id -> token
  // Byte trie over all tokens; node 0 is the root, cont_root_ the node of "##" (-1 if none).
  std::vector<int32_t> terminal_;  // node -> token id ending there, or -1
  std::vector<Slot> slots_;        // open-addressing hash of the trie's edges
  uint64_t mask_ = 0;
  int shift_ = 64;
  int32_t cont_root_ = -1;
  int32_t pad_id_ = -1, unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, mask_id_ = -1;
};

}  // namespace oft
