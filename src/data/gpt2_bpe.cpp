// GPT-2 byte-level BPE (see gpt2_bpe.h): asset loading, the pre-tokenisation scanner, the BPE
// merge loops and the thread-local word cache.
#include "data/gpt2_bpe.h"
#include "data/utf8.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/unicode_tables.h"

namespace oft {

namespace {

using utf8::decode_utf8;
using utf8::kInvalidCp;

// Class and byte length of the character at p.
inline unicode::CharClass class_at(const unsigned char* p, const unsigned char* end, int* len) {
  if (p[0] < 0x80) {
    *len = 1;
    return unicode::detail::kAscii.c[p[0]];
  }
  uint32_t cp;
  *len = decode_utf8(p, end, &cp);
  return cp == kInvalidCp ? unicode::kOther : unicode::char_class(cp);
}

std::string read_whole_file(const std::string& path, const char* what, const char* fix) {
  std::ifstream f(path, std::ios::binary);
  OFT_CHECK(f.good(), what, " ", path, " cannot be opened; ", fix);
  std::ostringstream ss;
  ss << f.rdbuf();
  OFT_CHECK(!f.bad(), what, " ", path, " could not be read; ", fix);
  return ss.str();
}

constexpr const char* kAssetFix =
    "restore it from data/tokenizers/gpt2 (git checkout data/tokenizers/gpt2) or point the "
    "tokenizer spec at a directory with valid encoder.json and vocab.bpe";

// Code point -> byte for the bytes_to_unicode stand-ins (-1 when cp stands for no byte).
int unicode_to_byte(uint32_t cp) {
  static const std::vector<int> table = [] {
    std::vector<int> t(512, -1);
    for (int b = 0; b < 256; ++b) t[gpt2_byte_to_unicode(uint8_t(b))] = b;
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

// Maps a token string from encoder.json / vocab.bpe (UTF-8 of stand-in code points) to the raw
// bytes it stands for. Returns false when some code point stands for no byte.
bool unmap_token(std::string_view s, std::string* bytes) {
  bytes->clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    uint32_t cp;
    p += decode_utf8(p, end, &cp);
    const int b = cp == kInvalidCp ? -1 : unicode_to_byte(cp);
    if (b < 0) return false;
    bytes->push_back(char(b));
  }
  return true;
}

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per-thread word -> token ids cache; `owner` is the serial of the tokenizer that filled it.
struct WordCache {
  static constexpr size_t kMaxEntries = size_t{1} << 16;
  static constexpr size_t kMaxWordBytes = 64;
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, SvHash, std::equal_to<>> map;
};

WordCache& thread_cache(uint64_t owner) {
  thread_local WordCache cache;
  if (cache.owner != owner) {
    cache.map.clear();
    cache.owner = owner;
  }
  return cache;
}

std::atomic<uint64_t> g_next_serial{1};

}  // namespace

uint32_t gpt2_byte_to_unicode(uint8_t byte) {
  // bytes_to_unicode(): printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves;
  // the others get 256, 257, ... in byte order.
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  if (printable(byte)) return byte;
  uint32_t n = 0;
  for (int b = 0; b < byte; ++b)
    if (!printable(b)) ++n;
  return 256 + n;
}

size_t gpt2_pretoken_end(std::string_view text, size_t begin) {
  using namespace unicode;
  const auto* base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = base + text.size();
  const unsigned char* p = base + begin;
  // 's|'t|'re|'ve|'m|'ll|'d
  if (p[0] == '\'' && end - p >= 2) {
    const unsigned char d = p[1];
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return begin + 2;
    if (end - p >= 3) {
      const unsigned char e = p[2];
      if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l'))
        return begin + 3;
    }
  }
  // ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': a space joins a following non-space run.
  const unsigned char* q = p;
  int len;
  if (p[0] == ' ' && end - p >= 2) {
    int l2;
    if (class_at(p + 1, end, &l2) != kSpace) q = p + 1;
  }
  const CharClass cls = class_at(q, end, &len);
  if (cls != kSpace) {
    q += len;
    while (q < end && class_at(q, end, &len) == cls) q += len;
    return size_t(q - base);
  }
  // '\s+(?!\S)|\s+': a whitespace run; when a non-space follows a run of two or more, the last
  // whitespace character is left for the next token.
  const unsigned char* last = p;
  q = p;
  while (q < end && class_at(q, end, &len) == kSpace) {
    last = q;
    q += len;
  }
  if (q == end || last == p) return size_t(q - base);
  return size_t(last - base);
}

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < text.size();) {
    const size_t j = gpt2_pretoken_end(text, i);
    out.push_back(text.substr(i, j - i));
    i = j;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Gpt2BpeTokenizer::Gpt2BpeTokenizer(const std::string& encoder_json_path,
                                   const std::string& vocab_bpe_path, std::string name,
                                   std::vector<std::string> eot_tokens)
    : name_(std::move(name)), encoder_path_(encoder_json_path), vocab_path_(vocab_bpe_path) {
  const std::string text = read_whole_file(encoder_json_path, "GPT-2 encoder.json", kAssetFix);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("GPT-2 encoder.json ", encoder_json_path, " is not valid JSON (", e.what(), "); ",
         kAssetFix);
  }
  load_encoder(j, encoder_json_path, kAssetFix, eot_tokens);
  load_merges(read_whole_file(vocab_bpe_path, "GPT-2 vocab.bpe", kAssetFix), vocab_bpe_path,
              kAssetFix);
  serial_ = g_next_serial.fetch_add(1);
}

Gpt2BpeTokenizer::Gpt2BpeTokenizer(const nlohmann::json& vocab, const std::string& merges_text,
                                   std::string name, std::vector<std::string> eot_tokens,
                                   const std::string& source, const std::string& fix)
    : name_(std::move(name)), encoder_path_(source), vocab_path_(source) {
  load_encoder(vocab, source, fix, eot_tokens);
  load_merges(merges_text, source, fix);
  serial_ = g_next_serial.fetch_add(1);
}

Gpt2BpeTokenizer::~Gpt2BpeTokenizer() = default;

void Gpt2BpeTokenizer::load_encoder(const nlohmann::json& j, const std::string& path,
                                    const std::string& fix,
                                    const std::vector<std::string>& eot_tokens) {
  const std::string& kAssetFix = fix;
  OFT_CHECK(j.is_object() && !j.empty(), "GPT-2 encoder.json ", path,
            " must be a non-empty JSON object mapping token strings to ids; ", kAssetFix);
  vocab_size_ = int(j.size());
  symbol_bytes_.assign(size_t(vocab_size_), std::string());
  std::vector<char> seen(size_t(vocab_size_), 0);
  std::vector<std::pair<std::string, int32_t>> ordinary;
  ordinary.reserve(size_t(vocab_size_));
  std::string bytes;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& v = it.value();
    OFT_CHECK(v.is_number_integer(), "GPT-2 encoder.json ", path, ": the id of token \"",
              it.key(), "\" is not an integer; ", kAssetFix);
    const int64_t id = v.get<int64_t>();
    OFT_CHECK(id >= 0 && id < vocab_size_ && !seen[size_t(id)], "GPT-2 encoder.json ", path,
              ": token \"", it.key(), "\" has id ", id, ", but ids must be 0..", vocab_size_ - 1,
              " each used once; ", kAssetFix);
    seen[size_t(id)] = 1;
    if (unmap_token(it.key(), &bytes)) {
      symbol_bytes_[size_t(id)] = bytes;
      ordinary.emplace_back(bytes, int32_t(id));
    } else {
      // Special token such as <|endoftext|> written outside the byte alphabet: BPE never
      // produces it; it decodes to its own text.
      symbol_bytes_[size_t(id)] = it.key();
    }
  }
  for (const std::string& e : eot_tokens) {
    const auto it = j.find(e);
    if (it != j.end()) {
      eot_id_ = int32_t(it->get<int64_t>());
      break;
    }
  }
  std::string names;
  for (const std::string& e : eot_tokens) names += (names.empty() ? "\"" : " or \"") + e + "\"";
  OFT_CHECK(eot_id_ >= 0, "GPT-2 encoder.json ", path, " has no ", names,
            " token (needed to separate documents); ", kAssetFix);
  symbol_index_.clear();
  symbol_index_.reserve(ordinary.size() * 2);
  for (auto& [b, id] : ordinary) symbol_index_.emplace(std::move(b), id);
  byte_symbol_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, char(b));
    const auto it = symbol_index_.find(one);
    OFT_CHECK(it != symbol_index_.end(), "GPT-2 encoder.json ", path,
              " lacks the single-byte token for byte ", b, "; ", kAssetFix);
    byte_symbol_[size_t(b)] = it->second;
  }
}

int32_t Gpt2BpeTokenizer::symbol_for(const std::string& bytes) {
  const auto it = symbol_index_.find(bytes);
  if (it != symbol_index_.end()) return it->second;
  const auto id = int32_t(symbol_bytes_.size());
  symbol_bytes_.push_back(bytes);
  symbol_index_.emplace(bytes, id);
  return id;
}

void Gpt2BpeTokenizer::load_merges(const std::string& text, const std::string& path,
                                   const std::string& kAssetFix) {
  struct Merge {
    int32_t left, right, merged;
  };
  std::vector<Merge> merges;
  merges.reserve(50000);
  size_t pos = 0;
  int line_no = 0;
  std::string a, b;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1 && line.substr(0, 8) == "#version") continue;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    const bool two = sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                     line.find(' ', sp + 1) == std::string_view::npos;
    OFT_CHECK(two, "GPT-2 vocab.bpe ", path, " line ", line_no,
              ": expected two space-separated tokens; ", kAssetFix);
    const bool ok = unmap_token(line.substr(0, sp), &a) && unmap_token(line.substr(sp + 1), &b);
    OFT_CHECK(ok, "GPT-2 vocab.bpe ", path, " line ", line_no,
              ": a token uses a character outside GPT-2's byte alphabet; ", kAssetFix);
    const int32_t l = symbol_for(a), r = symbol_for(b);
    merges.push_back({l, r, symbol_for(a + b)});
  }
  num_merges_ = int(merges.size());
  symbol_index_.clear();
  symbol_index_.rehash(0);

  size_t cap = 16;
  merge_shift_ = 60;
  while (cap < merges.size() * 2 + 16) {
    cap <<= 1;
    --merge_shift_;
  }
  merge_table_.assign(cap, MergeSlot{kEmptyKey, 0, 0});
  merge_mask_ = cap - 1;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& m = merges[rank];
    // A repeated pair keeps its last rank, like dict(zip(bpe_merges, range(...))) in encoder.py.
    auto* slot = const_cast<MergeSlot*>(find_merge(m.left, m.right));
    if (!slot) {
      const uint64_t key = (uint64_t(uint32_t(m.left)) << 32) | uint32_t(m.right);
      uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;
      while (merge_table_[h].key != kEmptyKey) h = (h + 1) & merge_mask_;
      slot = &merge_table_[h];
      slot->key = key;
    }
    slot->rank = int32_t(rank);
    slot->merged = m.merged;
  }
  // monotonic_ranks_: every merge using a symbol ranks after every merge producing it.
  std::vector<int32_t> produced_max(symbol_bytes_.size(), -1);
  std::vector<int32_t> used_min(symbol_bytes_.size(), INT32_MAX);
  for (const MergeSlot& s : merge_table_) {
    if (s.key == kEmptyKey) continue;
    const auto l = int32_t(s.key >> 32), r = int32_t(s.key & 0xFFFFFFFFu);
    produced_max[size_t(s.merged)] = std::max(produced_max[size_t(s.merged)], s.rank);
    used_min[size_t(l)] = std::min(used_min[size_t(l)], s.rank);
    used_min[size_t(r)] = std::min(used_min[size_t(r)], s.rank);
  }
  monotonic_ranks_ = true;
  for (size_t i = 0; i < produced_max.size(); ++i)
    if (produced_max[i] >= 0 && used_min[i] != INT32_MAX && used_min[i] <= produced_max[i])
      monotonic_ranks_ = false;
}

// The reference loop of encoder.py's bpe(): find the lowest-ranked adjacent pair, merge all its
// occurrences left to right, repeat until no pair has a rank.
void Gpt2BpeTokenizer::bpe_simple(std::vector<int32_t>& sym) const {
  while (sym.size() > 1) {
    int32_t best_rank = INT32_MAX, first = -1, second = -1, merged = -1;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const MergeSlot* m = find_merge(sym[i], sym[i + 1]);
      if (m && m->rank < best_rank) {
        best_rank = m->rank;
        first = sym[i];
        second = sym[i + 1];
        merged = m->merged;
      }
    }
    if (first < 0) break;
    size_t k = 0;
    for (size_t i = 0; i < sym.size();) {
      if (i + 1 < sym.size() && sym[i] == first && sym[i + 1] == second) {
        sym[k++] = merged;
        i += 2;
      } else {
        sym[k++] = sym[i++];
      }
    }
    sym.resize(k);
  }
}

// O(n log n) BPE for long words: a min-heap of candidate pairs ordered by (rank, position) over
// a linked list of symbols. With monotonic ranks no merge can create a pair that outranks the
// one being applied, so all occurrences of the current best pair are popped left to right
// before anything else, exactly like bpe_simple().
void Gpt2BpeTokenizer::bpe_heap(std::vector<int32_t>& sym) const {
  const auto n = int32_t(sym.size());
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nx = next[size_t(pos)];
    if (nx < 0) return;
    if (const MergeSlot* m = find_merge(sym[size_t(pos)], sym[size_t(nx)]))
      heap.push({m->rank, pos, sym[size_t(pos)], sym[size_t(nx)]});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int32_t r = next[size_t(c.pos)];
    if (sym[size_t(c.pos)] != c.left || r < 0 || sym[size_t(r)] != c.right) continue;
    sym[size_t(c.pos)] = find_merge(c.left, c.right)->merged;
    sym[size_t(r)] = -1;
    next[size_t(c.pos)] = next[size_t(r)];
    if (next[size_t(r)] >= 0) prev[size_t(next[size_t(r)])] = c.pos;
    push(prev[size_t(c.pos)]);
    push(c.pos);
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0 && i < n; i = next[size_t(i)]) sym[k++] = sym[size_t(i)];
  sym.resize(k);
}

void Gpt2BpeTokenizer::emit(const std::vector<int32_t>& sym, std::vector<int32_t>* out) const {
  for (int32_t s : sym) {
    // encoder.py raises KeyError here; only possible with a merge list that builds pieces
    // missing from encoder.json.
    OFT_CHECK(s < vocab_size_, "GPT-2 vocab.bpe ", vocab_path_, " merges into the piece \"",
              symbol_bytes_[size_t(s)], "\" that ", encoder_path_,
              " does not contain; use a matching encoder.json / vocab.bpe pair");
    out->push_back(s);
  }
}

void Gpt2BpeTokenizer::bpe_word(std::string_view word, std::vector<int32_t>* out) const {
  thread_local std::vector<int32_t> sym;
  sym.resize(word.size());
  for (size_t i = 0; i < word.size(); ++i) sym[i] = byte_symbol_[uint8_t(word[i])];
  if (sym.size() > 48 && monotonic_ranks_) {
    bpe_heap(sym);
  } else {
    bpe_simple(sym);
  }
  emit(sym, out);
}

void Gpt2BpeTokenizer::encode_append(std::string_view text, std::vector<int32_t>* out) const {
  WordCache& cache = thread_cache(serial_);
  std::vector<int32_t> tmp;
  for (size_t i = 0; i < text.size();) {
    const size_t j = gpt2_pretoken_end(text, i);
    const std::string_view word = text.substr(i, j - i);
    i = j;
    if (word.size() == 1) {
      out->push_back(byte_symbol_[uint8_t(word[0])]);
    } else if (word.size() <= WordCache::kMaxWordBytes) {
      auto it = cache.map.find(word);
      if (it == cache.map.end()) {
        tmp.clear();
        bpe_word(word, &tmp);
        if (cache.map.size() >= WordCache::kMaxEntries) cache.map.clear();
        it = cache.map.emplace(std::string(word), tmp).first;
      }
      out->insert(out->end(), it->second.begin(), it->second.end());
    } else {
      bpe_word(word, out);
    }
  }
}

std::vector<int32_t> Gpt2BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 8);
  encode_append(text, &out);
  return out;
}

const std::string& Gpt2BpeTokenizer::token_bytes(int32_t id) const {
  OFT_CHECK(id >= 0 && id < vocab_size_, "token id ", id, " is outside the vocabulary of ",
            name_, " [0, ", vocab_size_, "); were these ids produced by another tokenizer?");
  return symbol_bytes_[size_t(id)];
}

std::string Gpt2BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

}  // namespace oft
