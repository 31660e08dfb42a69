// BERT WordPiece tokenizer (see wordpiece.h): vocab.txt loading into a byte trie, the
// BasicTokenizer (cleaning, CJK split, str.lower(), NFD accent stripping, punctuation split)
// over decoded Unicode tables (unicode_nfd.h), greedy longest-match WordPiece, and decoding.
#include "data/wordpiece.h"
#include "data/utf8.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/unicode_nfd.h"

namespace oft {

namespace {

namespace un = unicode_nfd;

using utf8::decode_utf8;
using utf8::kInvalidCp;
// Bits added to the generated flags when decoding: str.lower() or NFD changes the code point;
// the code point has a nonzero canonical combining class.
constexpr uint8_t kFlagChanges = 64;
constexpr uint8_t kFlagHasCcc = 128;
constexpr uint32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;


void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    uint32_t cp;
    p += decode_utf8(p, end, &cp);
    if (cp == kInvalidCp) return false;
  }
  return true;
}

// tokenization.py's _is_chinese_char.
inline bool is_cjk(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// What the cleaning / splitting loop does with an ASCII byte.
enum AsciiKind : uint8_t { kDrop, kSpace, kPunctChar, kWordChar };
struct AsciiKinds {
  AsciiKind k[128];
  constexpr AsciiKinds() : k() {
    for (int i = 0; i < 128; ++i) {
      k[i] = kWordChar;
      if (i < 32 || i == 127) k[i] = kDrop;  // NUL and Cc (\v and \f included)
      if (i == ' ' || i == '\t' || i == '\n' || i == '\r') k[i] = kSpace;
      if ((i >= 33 && i <= 47) || (i >= 58 && i <= 64) || (i >= 91 && i <= 96) ||
          (i >= 123 && i <= 126))
        k[i] = kPunctChar;
    }
  }
};
constexpr AsciiKinds kAscii{};

// The generated tables, decoded once.
struct UnicodeData {
  std::vector<uint8_t> flags;  // per code point: un::kFlag* | kFlagChanges | kFlagHasCcc
  std::vector<uint32_t> ccc_lo, ccc_hi;
  std::vector<uint8_t> ccc_val;
  std::vector<uint32_t> decomp_cp, decomp_off;  // sorted by code point
  std::vector<uint8_t> decomp_len;
  std::unordered_map<uint32_t, uint32_t> lower1;  // single-code-point str.lower() mappings
  std::unordered_map<uint32_t, std::vector<uint32_t>> lower_multi;

  UnicodeData() : flags(0x110000, 0) {
    uint32_t start = 0;
    for (int i = 0; i < un::kNumFlagRuns; ++i) {
      start += un::kFlagRunStartDelta[i];
      const uint32_t end =
          i + 1 < un::kNumFlagRuns ? start + un::kFlagRunStartDelta[i + 1] : 0x110000u;
      std::fill(flags.begin() + start, flags.begin() + end, un::kFlagRunValue[i]);
    }
    for (int i = 0; i < un::kNumCccRuns; ++i) {
      const uint32_t lo = un::kCccRuns[3 * i], n = un::kCccRuns[3 * i + 1];
      ccc_lo.push_back(lo);
      ccc_hi.push_back(lo + n - 1);
      ccc_val.push_back(uint8_t(un::kCccRuns[3 * i + 2]));
      for (uint32_t c = lo; c < lo + n; ++c) flags[c] |= kFlagHasCcc;
    }
    uint32_t cp = 0, off = 0;
    for (int i = 0; i < un::kNumDecomp; ++i) {
      cp += un::kDecompCpDelta[i];
      decomp_cp.push_back(cp);
      decomp_off.push_back(off);
      decomp_len.push_back(uint8_t(un::kDecompLen[i] - '0'));
      off += decomp_len.back();
      flags[cp] |= kFlagChanges;
    }
    for (uint32_t c = kHangulFirst; c <= kHangulLast; ++c) flags[c] |= kFlagChanges;
    for (int i = 0; i < un::kNumLowerRuns; ++i) {
      const int32_t* r = un::kLowerRuns + 4 * i;
      for (int32_t k = 0; k < r[1]; ++k) {
        const uint32_t c = uint32_t(r[0] + k * r[2]);
        lower1[c] = uint32_t(int32_t(c) + r[3]);
        flags[c] |= kFlagChanges;
      }
    }
    for (int i = 0; i < un::kNumLowerMulti; ++i) {
      const uint32_t* m = un::kLowerMulti + 5 * i;
      lower_multi[m[0]] = std::vector<uint32_t>(m + 2, m + 2 + m[1]);
      flags[m[0]] |= kFlagChanges;
    }
  }

  uint8_t ccc(uint32_t c) const {
    if (!(flags[c] & kFlagHasCcc)) return 0;
    const size_t i = size_t(std::upper_bound(ccc_lo.begin(), ccc_lo.end(), c) - ccc_lo.begin());
    return (i > 0 && c <= ccc_hi[i - 1]) ? ccc_val[i - 1] : 0;
  }
  // str.lower() of one code point (not U+03A3, which needs its context).
  void lower(uint32_t c, std::vector<uint32_t>* out) const {
    if (c < 0x80) {
      out->push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
      return;
    }
    if (flags[c] & kFlagChanges) {
      if (auto it = lower1.find(c); it != lower1.end()) {
        out->push_back(it->second);
        return;
      }
      if (auto it = lower_multi.find(c); it != lower_multi.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    out->push_back(c);
  }
  // Full canonical decomposition of one code point.
  void nfd(uint32_t c, std::vector<uint32_t>* out) const {
    if (c >= 0x80 && (flags[c] & kFlagChanges)) {
      if (c >= kHangulFirst && c <= kHangulLast) {  // Unicode 3.12, Hangul syllables
        const uint32_t s = c - kHangulFirst;
        out->push_back(0x1100 + s / 588);
        out->push_back(0x1161 + (s % 588) / 28);
        if (s % 28) out->push_back(0x11A7 + s % 28);
        return;
      }
      auto it = std::lower_bound(decomp_cp.begin(), decomp_cp.end(), c);
      if (it != decomp_cp.end() && *it == c) {
        const size_t i = size_t(it - decomp_cp.begin());
        out->insert(out->end(), un::kDecompPool + decomp_off[i],
                    un::kDecompPool + decomp_off[i] + decomp_len[i]);
        return;
      }
    }
    out->push_back(c);
  }
};

const UnicodeData& udata() {
  static const UnicodeData d;
  return d;
}

// CPython's handle_capital_sigma: U+03A3 at word[i] lower-cases to the final form U+03C2 when a
// cased letter precedes it and none follows (case-ignorable characters skipped both ways).
bool final_sigma(const UnicodeData& u, const std::vector<uint32_t>& w, size_t i) {
  auto ignorable = [&](uint32_t c) { return (u.flags[c] & un::kFlagCaseIgnorable) != 0; };
  auto cased = [&](uint32_t c) { return (u.flags[c] & un::kFlagCased) != 0; };
  size_t j = i;
  while (j > 0 && ignorable(w[j - 1])) --j;
  if (j == 0 || !cased(w[j - 1])) return false;
  for (j = i + 1; j < w.size() && ignorable(w[j]); ++j) {
  }
  return j == w.size() || !cased(w[j]);
}

// Python's str.isspace().
bool is_py_space(uint32_t c) {
  if (c < 0x80) return (c >= 9 && c <= 13) || (c >= 28 && c <= 32);
  return c == 0x85 || c == 0x2028 || c == 0x2029 ||
         (c < 0x110000 && (udata().flags[c] & un::kFlagSpaceSep));
}

// Scratch buffers of one BasicTokenizer run.
struct Scratch {
  std::vector<uint32_t> raw, low, dec;
  std::vector<uint8_t> ccc;
  std::string word;
};

// Lower-cases, strips accents from and punctuation-splits one whitespace-delimited token in
// s.raw (`ascii`: all its code points are < 0x80), calling emit(word, num_code_points) for each
// word: token.lower(), _run_strip_accents() and _run_split_on_punc() of BasicTokenizer.
// `lower` / `strip`: the do_lower_case and strip_accents switches (cased models skip them).
template <class Emit>
void finish_token(Scratch& s, bool ascii, bool lower, bool strip, Emit& emit) {
  const UnicodeData& u = udata();
  std::vector<uint32_t>* cps = &s.raw;
  bool plain = true;  // no code point that str.lower() or NFD changes, and no mark
  if (!ascii) {
    for (uint32_t c : s.raw)
      if (c >= 0x80 && (u.flags[c] & (kFlagChanges | kFlagHasCcc | un::kFlagNonspacingMark))) {
        plain = false;
        break;
      }
  }
  if (plain) {
    if (lower)
      for (uint32_t& c : s.raw)
        if (c >= 'A' && c <= 'Z') c += 32;
  } else if (!strip) {
    if (lower) {
      s.low.clear();
      for (size_t i = 0; i < s.raw.size(); ++i) {
        const uint32_t c = s.raw[i];
        if (c == 0x3A3)
          s.low.push_back(final_sigma(u, s.raw, i) ? 0x3C2 : 0x3C3);
        else
          u.lower(c, &s.low);
      }
      cps = &s.low;
    }
  } else {
    s.low.clear();
    for (size_t i = 0; i < s.raw.size(); ++i) {
      const uint32_t c = s.raw[i];
      if (!lower)
        s.low.push_back(c);
      else if (c == 0x3A3)
        s.low.push_back(final_sigma(u, s.raw, i) ? 0x3C2 : 0x3C3);
      else
        u.lower(c, &s.low);
    }
    s.dec.clear();
    for (uint32_t c : s.low) u.nfd(c, &s.dec);
    // Canonical reordering: a stable sort by combining class within each run of nonzero classes.
    s.ccc.resize(s.dec.size());
    for (size_t i = 0; i < s.dec.size(); ++i) {
      const uint32_t c = s.dec[i];
      const uint8_t k = u.ccc(c);
      size_t j = i;
      if (k != 0) {
        for (; j > 0 && s.ccc[j - 1] > k; --j) {
          s.dec[j] = s.dec[j - 1];
          s.ccc[j] = s.ccc[j - 1];
        }
      }
      s.dec[j] = c;
      s.ccc[j] = k;
    }
    // Drop the nonspacing marks (general category Mn).
    size_t n = 0;
    for (uint32_t c : s.dec)
      if (c < 0x80 || !(u.flags[c] & un::kFlagNonspacingMark)) s.dec[n++] = c;
    s.dec.resize(n);
    cps = &s.dec;
  }
  // Punctuation split: every punctuation character is a word of its own.
  s.word.clear();
  int nchars = 0;
  for (uint32_t c : *cps) {
    const bool punct = c < 0x80 ? kAscii.k[c] == kPunctChar : (u.flags[c] & un::kFlagPunct) != 0;
    if (punct) {
      if (nchars) emit(std::string_view(s.word), nchars);
      s.word.clear();
      append_utf8(c, &s.word);
      emit(std::string_view(s.word), 1);
      s.word.clear();
      nchars = 0;
    } else {
      if (c < 0x80)
        s.word.push_back(char(c));
      else
        append_utf8(c, &s.word);
      ++nchars;
    }
  }
  if (nchars) emit(std::string_view(s.word), nchars);
}

std::string read_whole_file(const std::string& path) {
  std::error_code ec;
  OFT_CHECK(std::filesystem::is_regular_file(path, ec), "WordPiece vocabulary ", path,
            " does not exist or is not a file; fix the path (or use the shipped "
            "\"bert-base-uncased\")");
  std::ifstream f(path, std::ios::binary);
  OFT_CHECK(f.good(), "WordPiece vocabulary ", path, " cannot be opened; check its permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  OFT_CHECK(!f.bad(), "WordPiece vocabulary ", path, " could not be read; check the file");
  return ss.str();
}

}  // namespace

template <class Emit>
void WordPieceTokenizer::basic(std::string_view text, Emit&& emit) const {
  const UnicodeData& u = udata();
  Scratch s;
  s.raw.reserve(64);
  bool ascii = true;
  auto flush = [&] {
    if (!s.raw.empty()) finish_token(s, ascii, options_.lowercase, options_.strips(), emit);
    s.raw.clear();
    ascii = true;
  };
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    if (*p < 0x80) {
      const uint32_t c = *p++;
      switch (kAscii.k[c]) {
        case kDrop:
          break;
        case kSpace:
          flush();
          break;
        default:
          s.raw.push_back(c);
      }
      continue;
    }
    uint32_t c;
    p += decode_utf8(p, end, &c);
    if (c == kInvalidCp || c == 0xFFFD) continue;  // invalid UTF-8 is dropped like U+FFFD
    const uint8_t f = u.flags[c];
    if (f & un::kFlagControl) continue;
    if ((f & un::kFlagSpaceSep) || c == 0x2028 || c == 0x2029) {
      flush();
    } else if (options_.tokenize_chinese_chars && is_cjk(c)) {
      flush();
      s.raw.push_back(c);
      ascii = false;
      flush();
    } else {
      s.raw.push_back(c);
      ascii = false;
    }
  }
  flush();
}

WordPieceTokenizer::WordPieceTokenizer(const std::string& vocab_path, std::string name,
                                       WordPieceOptions options)
    : name_(std::move(name)), path_(vocab_path), options_(options) {
  load_vocab(vocab_path);
  build_trie();
  find_specials();
}

WordPieceTokenizer::WordPieceTokenizer(std::vector<std::string> tokens, std::string name,
                                       std::string source, WordPieceOptions options)
    : name_(std::move(name)), path_(std::move(source)), options_(options),
      tokens_(std::move(tokens)) {
  OFT_CHECK(!tokens_.empty(), "WordPiece vocabulary of ", path_, " is empty");
  for (size_t i = 0; i < tokens_.size(); ++i)
    OFT_CHECK(valid_utf8(tokens_[i]), "WordPiece vocabulary of ", path_, ": token ", i,
              " is not valid UTF-8");
  build_trie();
  find_specials();
}

void WordPieceTokenizer::find_specials() {
  struct Special {
    const char* text;
    int32_t* id;
  };
  const Special specials[] = {{"[PAD]", &pad_id_},
                              {"[UNK]", &unk_id_},
                              {"[CLS]", &cls_id_},
                              {"[SEP]", &sep_id_},
                              {"[MASK]", &mask_id_}};
  for (const Special& sp : specials) {
    *sp.id = token_to_id(sp.text);
    OFT_CHECK(*sp.id >= 0, "WordPiece vocabulary ", path_, " has no ", sp.text,
              " line; a BERT vocab.txt needs [PAD], [UNK], [CLS], [SEP] and [MASK] (add the "
              "missing one or use the shipped \"bert-base-uncased\")");
  }
}

WordPieceTokenizer::~WordPieceTokenizer() = default;

void WordPieceTokenizer::load_vocab(const std::string& path) {
  const std::string data = read_whole_file(path);
  OFT_CHECK(!data.empty(), "WordPiece vocabulary ", path,
            " is empty; a BERT vocab.txt has one token per line (line number = id)");
  // Lines end in \n, \r\n or \r (Python's universal newlines); a final line may lack one.
  size_t i = 0;
  while (i < data.size()) {
    size_t j = i;
    while (j < data.size() && data[j] != '\n' && data[j] != '\r') ++j;
    std::string_view tok(data.data() + i, j - i);
    OFT_CHECK(valid_utf8(tok), "WordPiece vocabulary ", path, " line ", tokens_.size() + 1,
              " is not valid UTF-8; vocab.txt must be UTF-8 text");
    tokens_.emplace_back(tok);
    if (j < data.size() && data[j] == '\r' && j + 1 < data.size() && data[j + 1] == '\n') ++j;
    i = j + 1;
  }
  OFT_CHECK(tokens_.size() < size_t(INT32_MAX), "WordPiece vocabulary ", path,
            " has too many lines");
}

void WordPieceTokenizer::build_trie() {
  std::unordered_map<uint64_t, int32_t> edges;
  edges.reserve(tokens_.size() * 4);
  terminal_.assign(1, -1);
  for (size_t id = 0; id < tokens_.size(); ++id) {
    int32_t node = 0;
    for (unsigned char b : tokens_[id]) {
      const uint64_t key = (uint64_t(uint32_t(node)) << 8) | b;
      auto [it, inserted] = edges.emplace(key, int32_t(terminal_.size()));
      if (inserted) terminal_.push_back(-1);
      node = it->second;
    }
    terminal_[size_t(node)] = int32_t(id);  // a later duplicate wins, like HF's load_vocab
  }
  size_t cap = 16;
  while (cap < edges.size() * 2) cap <<= 1;
  int bits = 0;
  while ((size_t(1) << bits) < cap) ++bits;
  shift_ = 64 - bits;
  mask_ = cap - 1;
  slots_.assign(cap, Slot{kEmpty, -1});
  for (const auto& [key, child_node] : edges) {
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (slots_[h].key != kEmpty) h = (h + 1) & mask_;
    slots_[h] = Slot{key, child_node};
  }
  cont_root_ = child(0, '#');
  if (cont_root_ >= 0) cont_root_ = child(cont_root_, '#');
}

int32_t WordPieceTokenizer::token_to_id(std::string_view token) const {
  int32_t node = 0;
  for (unsigned char b : token) {
    node = child(node, b);
    if (node < 0) return -1;
  }
  return terminal_[size_t(node)];
}

const std::string& WordPieceTokenizer::id_to_token(int32_t id) const {
  OFT_CHECK(id >= 0 && size_t(id) < tokens_.size(), "token id ", id,
            " is outside the vocabulary of ", name_, " [0, ", tokens_.size(),
            "); were these ids produced by another tokenizer?");
  return tokens_[size_t(id)];
}

void WordPieceTokenizer::wordpiece(std::string_view word, int num_chars,
                                   std::vector<int32_t>* out) const {
  if (num_chars > kMaxInputCharsPerWord) {
    out->push_back(unk_id_);
    return;
  }
  const size_t first = out->size();
  size_t start = 0;
  while (start < word.size()) {
    int32_t node = start == 0 ? 0 : cont_root_;
    int32_t best = -1;
    size_t best_end = 0;
    for (size_t i = start; node >= 0 && i < word.size(); ++i) {
      node = child(node, uint8_t(word[i]));
      if (node >= 0 && terminal_[size_t(node)] >= 0) {
        best = terminal_[size_t(node)];
        best_end = i + 1;
      }
    }
    if (best < 0) {  // no piece matches here: the whole word is unknown
      out->resize(first);
      out->push_back(unk_id_);
      return;
    }
    out->push_back(best);
    start = best_end;
  }
}

void WordPieceTokenizer::encode_append(std::string_view text, std::vector<int32_t>* out) const {
  basic(text, [&](std::string_view word, int n) { wordpiece(word, n, out); });
}

std::vector<int32_t> WordPieceTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 8);
  encode_append(text, &out);
  return out;
}

std::vector<int32_t> WordPieceTokenizer::encode_with_specials(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 8);
  out.push_back(cls_id_);
  encode_append(text, &out);
  out.push_back(sep_id_);
  return out;
}

std::vector<std::string> WordPieceTokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : encode(text)) out.push_back(tokens_[size_t(id)]);
  return out;
}

std::vector<std::string> WordPieceTokenizer::basic_tokenize(std::string_view text) const {
  std::vector<std::string> out;
  basic(text, [&](std::string_view word, int) { out.emplace_back(word); });
  return out;
}

std::string WordPieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  // " ".join(tokens).replace(" ##", "").strip()
  std::string joined;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) joined.push_back(' ');
    joined += id_to_token(ids[i]);
  }
  std::string out;
  out.reserve(joined.size());
  for (size_t i = 0; i < joined.size();) {
    if (joined.compare(i, 3, " ##") == 0) {
      i += 3;
    } else {
      out.push_back(joined[i++]);
    }
  }
  // strip(): Python whitespace at both ends.
  const auto* b = reinterpret_cast<const unsigned char*>(out.data());
  const auto* e = b + out.size();
  size_t lo = 0, hi = out.size();
  while (lo < hi) {
    uint32_t c;
    const int len = decode_utf8(b + lo, e, &c);
    if (c == kInvalidCp || !is_py_space(c)) break;
    lo += size_t(len);
  }
  while (hi > lo) {
    size_t k = hi - 1;
    while (k > lo && (b[k] & 0xC0) == 0x80) --k;
    uint32_t c;
    decode_utf8(b + k, e, &c);
    if (c == kInvalidCp || !is_py_space(c)) break;
    hi = k;
  }
  return out.substr(lo, hi - lo);
}

}  // namespace oft
