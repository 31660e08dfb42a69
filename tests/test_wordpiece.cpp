// Tests of the BERT WordPiece tokenizer (src/data/wordpiece.*, unicode_nfd.*, the
// "bert-base-uncased" / vocab.txt specs of load_tokenizer) and of the shipped vocab.txt.
//
// Expected ids: each case was traced by hand through the algorithm with vocab.txt, and all of
// them (and the whole of Moby-Dick) were cross-checked against two references, which agreed:
// a line-by-line Python transcription of Hugging Face's slow BertTokenizer (BasicTokenizer +
// WordpieceTokenizer, Python 3.11 / Unicode 14.0) and Hugging Face's Rust tokenizers (npm
// package `tokenizers` 0.23.2, BertNormalizer + BertPreTokenizer + WordPiece, the
// BertTokenizerFast pipeline). The one known difference is marked: the Rust normalizer lower-cases
// character by character, so it never produces the final sigma that Python's str.lower() does.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>

#include "core/error.h"
#include "core/resources.h"
#include "data/tokenizer.h"
#include "test_util.h"
#include "data/wordpiece.h"

namespace fs = std::filesystem;
using namespace std::literals;
using Ids = std::vector<int32_t>;

namespace oft {
namespace {

using oft::testing::TempDir;
using oft::testing::write_file;

const WordPieceTokenizer& bert() {
  static const WordPieceTokenizer tok(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"),
                                      "bert-base-uncased");
  return tok;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// FIPS 180-4 SHA-256, hex digest.
std::string sha256_hex(std::string_view data) {
  static constexpr uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
      0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
      0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
      0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
      0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
      0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
      0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
      0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string msg(data);
  const uint64_t bits = uint64_t(data.size()) * 8;
  msg.push_back(char(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(char(bits >> (8 * i)));
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * i);
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 =
          hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  char out[65];
  for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h[i]);
  return std::string(out, 64);
}

template <class F>
void expect_error(F&& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
    ADD_FAILURE() << "expected an oft::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (std::string_view p : parts) EXPECT_NE(msg.find(p), std::string::npos) << p << " | " << msg;
  }
}

TEST(WordPiece, ShippedVocabSha256) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string vocab = read_all(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"));
  EXPECT_EQ(vocab.size(), 231508u);
  EXPECT_EQ(sha256_hex(vocab), "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3");
}

TEST(WordPiece, VocabularyAndSpecialIds) {
  const WordPieceTokenizer& t = bert();
  EXPECT_EQ(t.vocab_size(), 30522);
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.unk_id(), 100);
  EXPECT_EQ(t.cls_id(), 101);
  EXPECT_EQ(t.sep_id(), 102);
  EXPECT_EQ(t.mask_id(), 103);
  EXPECT_EQ(t.eot_id(), 102);
  EXPECT_EQ(t.bos_id(), 101);
  EXPECT_EQ(t.special_ids(), (Ids{0, 101, 102, 103}));
  EXPECT_EQ(t.id_to_token(1), "[unused0]");
  EXPECT_EQ(t.id_to_token(1996), "the");
  EXPECT_EQ(t.id_to_token(30521), "##～");
  EXPECT_EQ(t.token_to_id("hello"), 7592);
  EXPECT_EQ(t.token_to_id("##ing"), 2075);
  EXPECT_EQ(t.token_to_id("[MASK]"), 103);
  EXPECT_EQ(t.token_to_id("not-a-token"), -1);
  EXPECT_EQ(t.token_to_id(""), -1);
  expect_error([&] { t.id_to_token(30522); }, {"30522", "bert-base-uncased"});
  expect_error([&] { t.id_to_token(-1); }, {"-1"});
}

struct Case {
  const char* label;
  std::string_view text;
  Ids ids;
};

TEST(WordPiece, KnownEncodings) {
  const std::string long_text = "hello " + std::string(150, 'x') + " world";
  const std::vector<Case> cases = {
      {"basic", "Hello, world!"sv, {7592, 1010, 2088, 999}},
      {"pieces: una ##ffa ##ble", "unaffable"sv, {14477, 20961, 3468}},
      {"accents: cafe naive resume", "Café Naïve résumé"sv, {7668, 15743, 13746}},
      {"CJK split, katakana not: 日 本 語 テ ##キ ##ス ##ト",
       "日本語テキスト"sv,
       {1864, 1876, 1950, 1713, 30227, 30233, 30240}},
      {"punctuation run", "...!?"sv, {1012, 1012, 1012, 999, 1029}},
      {"digits: 3 . 141 ##59", "3.14159"sv, {1017, 1012, 15471, 28154}},
      {"NUL and Cc dropped", "hel\0lo wor\x01ld\x7f"sv, {7592, 2088}},
      {"\\v \\f U+0085 are Cc (dropped), not spaces: ab cd e ##f",
       "a\vb c\fd e\u0085f"sv,
       {11113, 3729, 1041, 2546}},
      {"Cf and U+FFFD dropped",
       "hel\u200Blo soft\u00ADhyphen bad\uFFFDchar"sv,
       {7592, 3730, 10536, 8458, 2368, 2919, 7507, 2099}},
      {"mixed whitespace",
       "hello\tworld\nfoo\r\nbar\u00A0baz\u3000qux\u2028end\u2029 "sv,
       {7592, 2088, 29379, 3347, 8670, 2480, 24209, 2595, 2203}},
      {"final sigma (Python str.lower; the Rust tokenizers give σ)",
       "ΟΔΟΣ ΑΣ. Σ ΣΑ"sv,
       {1169, 29722, 15297, 1155, 19579, 1012, 1173, 1173, 14608}},
      {"İ lowers to i + U+0307; ß kept",
       "İstanbul STRASSE straße"sv,
       {9960, 2358, 8180, 3366, 2358, 27807}},
      {"Hangul decomposes to jamo",
       "한국어"sv,
       {1469, 30006, 30021, 29991, 30014, 30020, 29999, 30008}},
      {"CJK compatibility ideograph U+F902 -> 車", "\uF902\u8ECA"sv, {1954, 1954}},
      {"special-token text is ordinary text",
       "[CLS] hi [SEP]"sv,
       {1031, 18856, 2015, 1033, 7632, 1031, 19802, 1033}},
      {"Unicode punctuation",
       "“quoted” ¿Qué? ¡Sí! — done…"sv,
       {1523, 9339, 1524, 1094, 10861, 1029, 1067, 9033, 999, 1517, 2589, 1529}},
      {"ASCII symbols count as punctuation",
       "$5 100% a/b x^2 `q` ~"sv,
       {1002, 1019, 2531, 1003, 1037, 1013, 1038, 1060, 1034, 1016, 1036, 1053, 1036, 1066}},
      {"Unicode symbols (S*) are not split off",
       "foo™ ©2024 ½"sv,
       {29379, 30108, 1075, 11387, 18827, 1092}},
      {"no NFKC: ﬁ stays, fullwidth is unknown", "ﬁne ＡＢＣ"sv, {1984, 2638, 100}},
      {"Greek and Latin accents",
       "Ἀθῆναι Zürich Ångström Nguyễn"sv,
       {1155, 29725, 24824, 16177, 14608, 18199, 10204, 17076, 15687, 16577}},
      {"apostrophes, dots, hyphens",
       "don't U.S.A. e-mail #hash @user"sv,
       {2123, 1005, 1056, 1057, 1012, 1055, 1012, 1037, 1012, 1041, 1011, 5653, 1001, 23325, 1030,
        5310}},
      {"invalid UTF-8 bytes dropped", "ab\xFF\xC3(cd\xED\xA0\x80"sv, {11113, 1006, 3729}},
      {"empty", ""sv, {}},
      {"whitespace only", "   \t\n "sv, {}},
      {"word over 100 chars", long_text, {7592, 100, 2088}},
  };
  for (const Case& c : cases) EXPECT_EQ(bert().encode(c.text), c.ids) << c.label;
  std::vector<std::string> pieces = {"una", "##ffa", "##ble"};
  EXPECT_EQ(bert().tokenize("unaffable"), pieces);
  pieces = {"hello", ",", "world", "!"};
  EXPECT_EQ(bert().basic_tokenize("Hello,\tWORLD!"), pieces);
  EXPECT_EQ(bert().encode_with_specials("Hello, world!"), (Ids{101, 7592, 1010, 2088, 999, 102}));
  EXPECT_EQ(bert().encode_with_specials(""), (Ids{101, 102}));
}

TEST(WordPiece, MaxInputCharsPerWordCountsCodePoints) {
  // 100 characters still go through WordPiece (aaa + 48 x ##aa + ##a); 101 are one [UNK].
  const Ids a100 = bert().encode(std::string(100, 'a'));
  ASSERT_EQ(a100.size(), 50u);
  EXPECT_EQ(a100.front(), 13360);
  EXPECT_EQ(a100.back(), 2050);
  EXPECT_EQ(bert().encode(std::string(101, 'a')), (Ids{100}));
  std::string e100;  // 100 two-byte characters (200 bytes) are not too long
  for (int i = 0; i < 100; ++i) e100 += "é";
  EXPECT_NE(bert().encode(e100), (Ids{100}));
  EXPECT_EQ(bert().encode(e100 + "é"), (Ids{100}));
}

TEST(WordPiece, WholeMobyDickMatchesReference) {
  // Both references give 285661 tokens and no [UNK]; FNV-1a (64-bit, one id per step) and the
  // id sum were computed in Python over the reference ids.
  const std::string text = read_all(resource_path("data/moby-dick/moby_dick.txt"));
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = bert().encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ info ] WordPiece encode: %.2f MB in %.3f s = %.1f MB/s\n", text.size() / 1e6, s,
              text.size() / 1e6 / s);
  ASSERT_EQ(ids.size(), 285661u);
  uint64_t h = 0xcbf29ce484222325ull;
  int64_t sum = 0;
  for (int32_t id : ids) {
    h = (h ^ uint64_t(id)) * 0x100000001b3ull;
    sum += id;
  }
  EXPECT_EQ(h, 0xaab09f34d176eb3dull);
  EXPECT_EQ(sum, 1316823812);
  // Without [UNK], decoding gives back the BasicTokenizer words joined by spaces.
  std::string joined;
  for (const std::string& w : bert().basic_tokenize(text)) {
    if (!joined.empty()) joined += ' ';
    joined += w;
  }
  EXPECT_EQ(bert().decode(ids), joined);
}

TEST(WordPiece, DecodeRoundTrip) {
  const std::string_view text =
      "the quick brown fox jumps over the lazy dog . unaffable 3 . 14159 , isn ' t it ? "
      "cafe naive resume [ cls ] 日 本";
  EXPECT_EQ(bert().decode(bert().encode(text)), text);
  EXPECT_EQ(bert().decode(bert().encode("Hello, World!")), "hello , world !");
  EXPECT_EQ(bert().decode(bert().encode_with_specials("hi")), "[CLS] hi [SEP]");
  EXPECT_EQ(bert().decode({2075}), "##ing");  // a leading continuation keeps its ##
  EXPECT_EQ(bert().decode({}), "");
  expect_error([&] { bert().decode({7592, 30522}); }, {"30522", "outside the vocabulary"});
}

TEST(WordPiece, GreedyLongestMatchOnSmallVocab) {
  TempDir tmp("wp_test");
  // CRLF line ends; "##aff" is listed twice: the later line (id 9) wins, as in HF's load_vocab.
  write_file(tmp.file("vocab.txt"),
             "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nun\r\n##aff\r\n##able\r\nuna\r\n##aff"
             "\r\n##a\r\n##ble\r\n,\r\nx");  // no final newline
  const WordPieceTokenizer t(tmp.file("vocab.txt"), "tiny");
  EXPECT_EQ(t.vocab_size(), 14);
  EXPECT_EQ(t.id_to_token(13), "x");
  EXPECT_EQ(t.token_to_id("##aff"), 9);
  // Longest first: "una" + "##ffable"? no "##ff*" piece, so the word is [UNK], not un ##aff ##able.
  EXPECT_EQ(t.encode("unaffable"), (Ids{1}));
  EXPECT_EQ(t.encode("unable"), (Ids{8, 11}));    // una ##ble
  EXPECT_EQ(t.encode("un,x"), (Ids{5, 12, 13}));  // un , x
  EXPECT_EQ(t.encode("xa"), (Ids{13, 10}));
  EXPECT_EQ(t.encode("ux"), (Ids{1}));
}

TEST(WordPiece, ConcurrentEncodeIsConsistent) {
  const std::string text =
      read_all(resource_path("data/moby-dick/moby_dick.txt")).substr(0, 200000) +
      " Café 日本語 ΟΔΟΣ 한국어";
  const Ids expected = bert().encode(text);
  std::vector<Ids> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] { got[size_t(t)] = bert().encode(text); });
  for (auto& th : threads) th.join();
  for (const Ids& g : got) EXPECT_EQ(g, expected);
}

TEST(WordPiece, LoadTokenizerSpecs) {
  const auto shipped = load_tokenizer("bert-base-uncased");
  EXPECT_EQ(shipped->name(), "bert-base-uncased");
  EXPECT_EQ(shipped->vocab_size(), 30522);
  EXPECT_EQ(shipped->eot_id(), 102);
  EXPECT_NE(dynamic_cast<const WordPieceTokenizer*>(shipped.get()), nullptr);
  EXPECT_EQ(shipped->encode("Hello, world!"), (Ids{7592, 1010, 2088, 999}));

  TempDir tmp("wp_test");
  const std::string copy = tmp.file("my-vocab.txt");
  fs::copy_file(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"), copy);
  const auto by_path = load_tokenizer(copy);
  EXPECT_EQ(by_path->name().rfind("wordpiece:", 0), 0u) << by_path->name();
  EXPECT_EQ(by_path->encode("unaffable"), (Ids{14477, 20961, 3468}));
  const auto by_name = load_tokenizer(by_path->name());  // name() round-trips
  EXPECT_EQ(by_name->name(), by_path->name());
  EXPECT_EQ(by_name->encode("Café"), (Ids{7668}));
  expect_error([&] { load_tokenizer("wordpiece:" + tmp.file("absent.txt")); },
               {"absent.txt", "accepted forms"});
}

TEST(WordPiece, BadVocabularies) {
  TempDir tmp("wp_test");
  expect_error([&] { WordPieceTokenizer(tmp.file("missing.txt"), "x"); },
               {"missing.txt", "does not exist"});
  expect_error([&] { WordPieceTokenizer(tmp.path.string(), "x"); }, {"not a file"});
  write_file(tmp.file("empty.txt"), "");
  expect_error([&] { WordPieceTokenizer(tmp.file("empty.txt"), "x"); }, {"empty.txt", "is empty"});
  expect_error([&] { load_tokenizer(tmp.file("empty.txt")); }, {"empty.txt", "accepted forms"});
  const std::array<std::string, 5> specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (size_t skip = 0; skip < specials.size(); ++skip) {
    std::string vocab;
    for (size_t i = 0; i < specials.size(); ++i)
      if (i != skip) vocab += specials[i] + "\n";
    vocab += "hello\n";
    const std::string path = tmp.file("no" + std::to_string(skip) + ".txt");
    write_file(path, vocab);
    expect_error([&] { WordPieceTokenizer(path, "x"); }, {path, specials[skip], "needs [PAD]"});
  }
  write_file(tmp.file("badutf8.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nab\xFF\n");
  expect_error([&] { WordPieceTokenizer(tmp.file("badutf8.txt"), "x"); },
               {"badutf8.txt", "line 6", "UTF-8"});
}

}  // namespace
}  // namespace oft
