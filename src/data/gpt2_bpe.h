// GPT-2 byte-level BPE tokenizer, byte-exact with OpenAI's reference encoder.py (gpt-2/src/
// encoder.py): the same pre-tokenisation regex (hand-written scanner over UTF-8 code points,
// Unicode classes from unicode_tables.h), the same bytes_to_unicode mapping and the same
// merge-by-rank loop. Works on raw bytes internally: every vocabulary entry is stored as the
// bytes it stands for, so decode() is the exact inverse of encode() for any input.
//
// Differences from encoder.py, all on inputs it cannot see or chooses to mangle:
//  * invalid UTF-8 bytes (encoder.py only takes valid text) are single "other" characters, so
//    they still encode and decode back to the same bytes;
//  * decode() returns the raw bytes; encoder.py replaces invalid UTF-8 with U+FFFD.
// encode() treats the literal text "<|endoftext|>" as ordinary text, like encoder.py; append
// eot_id() yourself to separate documents.
//
// Thread safety: all const methods may be called concurrently. The per-word BPE cache is
// thread-local (one per thread, bounded, reset when the thread switches to another tokenizer
// instance), so concurrent encode() calls take no locks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "data/tokenizer.h"

namespace oft {

// End (byte offset) of the GPT-2 pre-token that starts at byte offset `begin` (< text.size())
// under 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ .
size_t gpt2_pretoken_end(std::string_view text, size_t begin);

// All pre-tokens of `text` in order (views into `text`); they concatenate to `text`.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

// OpenAI's bytes_to_unicode(): the printable stand-in code point of each byte in the
// encoder.json / vocab.bpe files.
uint32_t gpt2_byte_to_unicode(uint8_t byte);

class Gpt2BpeTokenizer final : public Tokenizer {
 public:
  // Loads an encoder.json (token -> id, ids 0..N-1) and a vocab.bpe (merge list in rank order,
  // first line "#version: ..."). Errors name the file at fault. `name` is what name() returns.
  // eot_tokens: candidates for the document separator, first present wins (GPT-2:
  // <|endoftext|>; OPT's vocabulary has </s> instead).
  Gpt2BpeTokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path,
                   std::string name, std::vector<std::string> eot_tokens = {"<|endoftext|>"});
  // From in-memory data: `vocab` (token -> id, the encoder.json / Hugging Face vocab.json
  // format) and `merges_text` (vocab.bpe / merges.txt format: one "a b" per line, an optional
  // "#version" first line). `source` names the origin in errors; `fix` says how to repair it.
  Gpt2BpeTokenizer(const nlohmann::json& vocab, const std::string& merges_text, std::string name,
                   std::vector<std::string> eot_tokens, const std::string& source,
                   const std::string& fix);
  ~Gpt2BpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text) const override;
  // Same as encode() but appends to *out (saves copies when tokenizing a corpus).
  void encode_append(std::string_view text, std::vector<int32_t>* out) const;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override { return vocab_size_; }
  int32_t eot_id() const override { return eot_id_; }
  std::string name() const override { return name_; }

  // The raw bytes token `id` stands for; throws oft::Error when id is out of range.
  const std::string& token_bytes(int32_t id) const;
  int num_merges() const { return num_merges_; }

 private:
  struct MergeSlot {
    uint64_t key;  // (left << 32) | right, kEmptyKey when unused
    int32_t rank;
    int32_t merged;
  };
  static constexpr uint64_t kEmptyKey = ~uint64_t{0};

  const MergeSlot* find_merge(int32_t left, int32_t right) const {
    const uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;
    for (;;) {
      const MergeSlot& s = merge_table_[h];
      if (s.key == key) return &s;
      if (s.key == kEmptyKey) return nullptr;
      h = (h + 1) & merge_mask_;
    }
  }
  void load_encoder(const nlohmann::json& j, const std::string& path, const std::string& fix,
                    const std::vector<std::string>& eot_tokens);
  void load_merges(const std::string& text, const std::string& path, const std::string& fix);
  int32_t symbol_for(const std::string& bytes);  // vocab id, or a new internal symbol
  void bpe_word(std::string_view word, std::vector<int32_t>* out) const;
  void bpe_simple(std::vector<int32_t>& sym) const;
  void bpe_heap(std::vector<int32_t>& sym) const;
  void emit(const std::vector<int32_t>& sym, std::vector<int32_t>* out) const;

  std::string name_;
  std::string encoder_path_, vocab_path_;
  int vocab_size_ = 0;
  int32_t eot_id_ = -1;
  int num_merges_ = 0;
  // Symbols: ids < vocab_size_ are vocabulary tokens; higher ids are byte strings that only
  // occur inside the merge list (none for GPT-2).
  std::vector<std::string> symbol_bytes_;
  std::unordered_map<std::string, int32_t> symbol_index_;  // bytes -> symbol, while loading
  std::vector<int32_t> byte_symbol_;  // 256 entries
  std::vector<MergeSlot> merge_table_;
  uint64_t merge_mask_ = 0;
  int merge_shift_ = 64;
  // True when no merge outranks a merge that builds one of its parts (true for GPT-2); then
  // long words use an O(n log n) priority-queue BPE that provably equals the reference loop.
  bool monotonic_ranks_ = false;
  uint64_t serial_ = 0;  // identifies this instance to the thread-local word caches
};

}  // namespace oft
