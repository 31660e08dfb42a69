// Masked-LM data: mlm_mask() statistics and determinism, special ids and padding never selected,
// the masked-LM TokenLoader (packed windows tiling the shard, reproducible masks across loader
// instances / resume / eval resets, one document per sequence with truncation, padding and key
// mask), its errors, and `oft data prepare` writing [bos] doc [eot] for tokenizers with bos_id
// (a fake one, then the shipped bert-base-uncased WordPiece end to end).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/mlm.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::TempDir;
using oft::testing::write_file;

namespace {

// BERT-like special ids for the synthetic data: PAD 0, UNK 1, CLS 2, SEP 3, MASK 4.
constexpr int32_t kPad = 0, kCls = 2, kSep = 3, kMask = 4, kFirstWord = 10;

std::shared_ptr<const Shard> make_shard(const TempDir& td, const std::vector<int32_t>& t,
                                        uint32_t vocab, const std::string& name = "s.bin") {
  const std::string p = td.file(name);
  ShardWriter w(p, vocab, kSep);
  w.append(t);
  w.finish();
  return std::make_shared<const Shard>(Shard::open(p));
}

MlmOptions bert_like(int32_t vocab) {
  MlmOptions o;
  o.mask_id = kMask;
  o.vocab_size = vocab;
  o.special_ids = {kPad, kCls, kSep, kMask};
  o.pad_id = kPad;
  return o;
}

LoaderOptions mlm_opts(size_t B, size_t T, const MlmOptions& m, bool pack = true,
                       uint64_t seed = 1) {
  LoaderOptions o;
  o.batch_size = B;
  o.seq_len = T;
  o.seed = seed;
  o.objective = Objective::MaskedLM;
  o.mlm = m;
  o.pack = pack;
  return o;
}

struct Batch {
  std::vector<int32_t> x, y, k;
  bool operator==(const Batch&) const = default;
};
Batch next(TokenLoader& L) {
  const size_t n = L.options().batch_size * L.options().seq_len;
  Batch b{std::vector<int32_t>(n), std::vector<int32_t>(n), std::vector<int32_t>(n)};
  L.next_batch(b.x.data(), b.y.data(), b.k.data());
  return b;
}


}  // namespace

// ---------------------------------------------------------------- mlm_mask

TEST(Mlm, MaskingStatistics) {
  const int32_t V = 1000;
  const int64_t n = 200000;
  std::vector<int32_t> tok(n), x(n), y(n);
  Rng r(3);
  for (auto& t : tok) t = kFirstWord + static_cast<int32_t>(r.below(V - kFirstWord));
  mlm_mask(tok.data(), n, bert_like(V), 12345, x.data(), y.data());
  int64_t sel = 0, masked = 0, random = 0, same = 0;
  std::set<int32_t> random_ids;
  for (int64_t i = 0; i < n; ++i) {
    if (y[i] < 0) {
      EXPECT_EQ(x[i], tok[i]);
      continue;
    }
    ++sel;
    EXPECT_EQ(y[i], tok[i]);
    if (x[i] == kMask) {
      ++masked;
    } else if (x[i] == tok[i]) {
      ++same;
    } else {
      ++random;
      EXPECT_GE(x[i], 0);
      EXPECT_LT(x[i], V);
      random_ids.insert(x[i]);
    }
  }
  EXPECT_NEAR(double(sel) / n, 0.15, 0.005);
  EXPECT_NEAR(double(masked) / sel, 0.8, 0.01);
  EXPECT_NEAR(double(random) / sel, 0.1, 0.01);
  EXPECT_NEAR(double(same) / sel, 0.1, 0.01);
  EXPECT_GT(random_ids.size(), 900u);  // uniform over the whole vocabulary, specials included
  EXPECT_TRUE(random_ids.count(kCls) || random_ids.count(kPad) || random_ids.count(1));
}

TEST(Mlm, SpecialIdsAndPaddingAreNeverSelected) {
  MlmOptions o = bert_like(100);
  o.mask_prob = 1.0;
  o.special_ids = {kCls, kSep, kMask};  // the pad id is excluded through pad_id alone
  std::vector<int32_t> tok;
  for (int i = 0; i < 5000; ++i) tok.push_back(std::vector<int32_t>{kPad, kCls, kSep, kMask, 1, 50}[i % 6]);
  std::vector<int32_t> x(tok.size()), y(tok.size());
  mlm_mask(tok.data(), int64_t(tok.size()), o, 7, x.data(), y.data());
  for (size_t i = 0; i < tok.size(); ++i) {
    const bool special = tok[i] == kPad || tok[i] == kCls || tok[i] == kSep || tok[i] == kMask;
    if (special) {
      EXPECT_EQ(y[i], -1) << i;
      EXPECT_EQ(x[i], tok[i]) << i;
    } else {
      EXPECT_EQ(y[i], tok[i]) << i;  // mask_prob 1: every other position ([UNK] = 1 too)
    }
  }
  // A long special list (binary-search path) behaves the same.
  o.special_ids.clear();
  for (int32_t s = 60; s < 100; ++s) o.special_ids.push_back(s);
  o.special_ids.push_back(kCls);
  mlm_mask(tok.data(), int64_t(tok.size()), o, 7, x.data(), y.data());
  for (size_t i = 0; i < tok.size(); ++i)
    EXPECT_EQ(y[i] >= 0, tok[i] == 1 || tok[i] == 50 || tok[i] == kSep || tok[i] == kMask) << i;
}

TEST(Mlm, DeterministicBySeed) {
  const int32_t V = 500;
  std::vector<int32_t> tok(4096);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = kFirstWord + int32_t(i * 7919 % (V - kFirstWord));
  auto run = [&](uint64_t seed) {
    std::vector<int32_t> x(tok.size()), y(tok.size());
    mlm_mask(tok.data(), int64_t(tok.size()), bert_like(V), seed, x.data(), y.data());
    x.insert(x.end(), y.begin(), y.end());
    return x;
  };
  EXPECT_EQ(run(1), run(1));
  EXPECT_NE(run(1), run(2));
  // In place (tokens aliasing inputs) gives the same result.
  std::vector<int32_t> inplace = tok, y(tok.size());
  mlm_mask(inplace.data(), int64_t(tok.size()), bert_like(V), 1, inplace.data(), y.data());
  inplace.insert(inplace.end(), y.begin(), y.end());
  EXPECT_EQ(inplace, run(1));
}

TEST(Mlm, OptionErrors) {
  std::vector<int32_t> t(4, 20), x(4), y(4);
  MlmOptions o = bert_like(100);
  o.mask_id = -1;
  EXPECT_ERROR(mlm_mask(t.data(), 4, o, 0, x.data(), y.data()),
               "the tokenizer has no [MASK] token: use a WordPiece vocabulary for masked-LM data");
  o = bert_like(100);
  o.mask_prob = 1.5;
  EXPECT_ERROR(validate_mlm_options(o), "mask_prob must be in [0, 1]");
  o = bert_like(100);
  o.replace_random = 0.3;
  EXPECT_ERROR(validate_mlm_options(o), "sum <= 1");
  o = bert_like(4);
  EXPECT_ERROR(validate_mlm_options(o), "does not hold the [MASK] id");
}

// ---------------------------------------------------------------- loader, packed windows

// Token i of the shard is kFirstWord + i: a window's unmasked tokens identify it.
std::shared_ptr<const Shard> word_shard(const TempDir& td, size_t n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), kFirstWord);
  return make_shard(td, t, uint32_t(n + kFirstWord));
}

TEST(MlmLoader, PackedWindowsTileTheShard) {
  TempDir td("mlm");
  const size_t T = 16, n = 16 * 50 + 7;  // 50 windows; the 7-token tail is dropped
  auto shard = word_shard(td, n);
  MlmOptions m = bert_like(0);  // vocab_size 0: the shard's
  m.mask_prob = 0.0;
  TokenLoader L(shard, mlm_opts(5, T, m));
  EXPECT_EQ(L.num_windows(), 50u);
  EXPECT_EQ(L.windows_per_epoch(), 50u);
  EXPECT_EQ(L.options().mlm.vocab_size, int32_t(n + kFirstWord));
  std::vector<size_t> seen;
  for (int k = 0; k < 30; ++k) {  // 3 epochs
    const Batch b = next(L);
    for (size_t r = 0; r < 5; ++r) {
      const int32_t first = b.x[r * T];
      EXPECT_EQ((first - kFirstWord) % int32_t(T), 0);
      for (size_t t = 0; t < T; ++t) {
        EXPECT_EQ(b.x[r * T + t], first + int32_t(t));  // exactly T consecutive tokens
        EXPECT_EQ(b.y[r * T + t], -1);
        EXPECT_EQ(b.k[r * T + t], 1);
      }
      seen.push_back(size_t(first - kFirstWord) / T);
    }
  }
  std::vector<size_t> all(50);
  std::iota(all.begin(), all.end(), 0);
  for (size_t e = 0; e < 3; ++e) {
    std::vector<size_t> ep(seen.begin() + e * 50, seen.begin() + (e + 1) * 50);
    EXPECT_NE(ep, all) << "train mode shuffles";
    std::sort(ep.begin(), ep.end());
    EXPECT_EQ(ep, all) << "epoch " << e;
  }
  EXPECT_EQ(L.state(), (LoaderState{3, 0}));
}

TEST(MlmLoader, MasksMatchMlmMaskAndDifferAcrossEpochs) {
  TempDir td("mlm");
  const size_t T = 32, B = 4;
  auto shard = word_shard(td, T * 20);
  const MlmOptions m = bert_like(0);
  TokenLoader L(shard, mlm_opts(B, T, m, true, 9));
  std::vector<std::vector<int32_t>> targets_by_epoch(2, std::vector<int32_t>(20 * T));
  std::vector<int32_t> raw(T), ex(T), ey(T);
  for (int k = 0; k < 10; ++k) {  // 40 rows = 2 epochs
    const LoaderState st = L.state();
    const Batch b = next(L);
    for (size_t r = 0; r < B; ++r) {
      const uint64_t epoch = st.epoch + (st.position + r) / 20, pos = (st.position + r) % 20;
      const size_t w = L.window_at(epoch, pos);
      shard->copy(w * T, T, raw.data());
      MlmOptions full = m;
      full.vocab_size = int32_t(shard->vocab_size());
      mlm_mask(raw.data(), int64_t(T), full, L.mask_seed(epoch, w), ex.data(), ey.data());
      EXPECT_EQ(std::vector<int32_t>(b.x.begin() + r * T, b.x.begin() + (r + 1) * T), ex);
      EXPECT_EQ(std::vector<int32_t>(b.y.begin() + r * T, b.y.begin() + (r + 1) * T), ey);
      std::copy(ey.begin(), ey.end(), targets_by_epoch[epoch].begin() + w * T);
    }
  }
  EXPECT_NE(targets_by_epoch[0], targets_by_epoch[1]);  // the same windows, masked anew
  int64_t sel = 0;
  for (int32_t y : targets_by_epoch[0]) sel += y >= 0;
  EXPECT_GT(sel, 40);  // ~0.15 * 640 = 96
  EXPECT_LT(sel, 160);
}

TEST(MlmLoader, ReproducibleAcrossInstancesAndResume) {
  TempDir td("mlm");
  const size_t B = 3, T = 16;
  auto shard = word_shard(td, 16 * 41);
  const MlmOptions m = bert_like(0);
  for (bool pack : {true, false}) {
    SCOPED_TRACE(pack ? "packed" : "line by line");
    // For line by line, give the shard documents: every 7th token is [SEP].
    std::shared_ptr<const Shard> s = shard;
    if (!pack) {
      std::vector<int32_t> t(16 * 41);
      for (size_t i = 0; i < t.size(); ++i) t[i] = i % 7 == 0 ? kCls : i % 7 == 6 ? kSep : int32_t(20 + i);
      s = make_shard(td, t, 1000, "docs.bin");
    }
    TokenLoader a(s, mlm_opts(B, T, m, pack, 5)), b(s, mlm_opts(B, T, m, pack, 5));
    std::vector<Batch> sa, sb;
    for (int k = 0; k < 50; ++k) sa.push_back(next(a));  // past an epoch end
    for (int k = 0; k < 50; ++k) sb.push_back(next(b));
    EXPECT_EQ(sa, sb);
    const std::string saved = a.state().to_json().dump();
    std::vector<Batch> cont_a, cont_c;
    for (int k = 0; k < 40; ++k) cont_a.push_back(next(a));
    TokenLoader c(s, mlm_opts(B, T, m, pack, 5));
    c.set_state(LoaderState::from_json(nlohmann::json::parse(saved)));
    for (int k = 0; k < 40; ++k) cont_c.push_back(next(c));
    EXPECT_EQ(cont_a, cont_c);
    EXPECT_EQ(a.state(), c.state());
    // Reading a batch ahead and putting the state back (the trainer does so to update the next
    // batch's embedding rows first) changes nothing: the same masks come again.
    TokenLoader e(s, mlm_opts(B, T, m, pack, 5));
    e.set_state(LoaderState::from_json(nlohmann::json::parse(saved)));
    for (int k = 0; k < 40; ++k) {
      const LoaderState at = e.state();
      const Batch ahead = next(e);
      e.set_state(at);
      const Batch got = next(e);
      EXPECT_EQ(ahead, got) << k;
      EXPECT_EQ(got, cont_a[size_t(k)]) << k;
    }
    // Another loader seed masks differently.
    TokenLoader d(s, mlm_opts(B, T, m, pack, 6));
    EXPECT_NE(next(d), sa[0]);
  }
}

TEST(MlmLoader, EvalMasksAreIdenticalAcrossEpochsAndResets) {
  TempDir td("mlm");
  const size_t T = 16;
  auto shard = word_shard(td, 16 * 12);
  LoaderOptions o = mlm_opts(4, T, bert_like(0));
  o.mode = LoaderMode::Eval;
  TokenLoader L(shard, o);
  std::vector<Batch> e0, e1, again;
  for (int k = 0; k < 3; ++k) e0.push_back(next(L));
  for (int k = 0; k < 3; ++k) e1.push_back(next(L));
  EXPECT_EQ(e0, e1);
  L.reset();
  for (int k = 0; k < 3; ++k) again.push_back(next(L));
  EXPECT_EQ(e0, again);
  TokenLoader fresh(shard, o);
  EXPECT_EQ(next(fresh), e0[0]);
  // Masks depend on the window, not on the rank that reads it: rank 1 of 2 reads windows
  // 1, 3, 5, ... with the masks rank 0 of 1 gave them.
  o.batch_size = 1;
  o.rank = 1;
  o.world_size = 2;
  TokenLoader r1(shard, o);
  const Batch w1 = next(r1);
  EXPECT_EQ(w1.x, std::vector<int32_t>(e0[0].x.begin() + T, e0[0].x.begin() + 2 * T));
  EXPECT_EQ(w1.y, std::vector<int32_t>(e0[0].y.begin() + T, e0[0].y.begin() + 2 * T));
}

// ---------------------------------------------------------------- loader, line by line

TEST(MlmLoader, LineByLineTruncatesPadsAndMasksKeys) {
  TempDir td("mlm");
  const size_t T = 8;
  // Documents [CLS] words [SEP] with 0..13 words: lengths 2..15, some longer than T.
  std::vector<std::vector<int32_t>> docs;
  std::vector<int32_t> all;
  for (int d = 0; d < 14; ++d) {
    std::vector<int32_t> doc{kCls};
    for (int w = 0; w < d; ++w) doc.push_back(100 + d * 20 + w);
    doc.push_back(kSep);
    all.insert(all.end(), doc.begin(), doc.end());
    docs.push_back(doc);
  }
  auto shard = make_shard(td, all, 1000);
  for (double p : {0.0, 0.15}) {
    MlmOptions m = bert_like(1000);
    m.mask_prob = p;
    LoaderOptions o = mlm_opts(7, T, m, /*pack=*/false);
    o.mode = LoaderMode::Eval;  // documents in order
    TokenLoader L(shard, o);
    ASSERT_EQ(L.num_windows(), 14u);
    EXPECT_EQ(L.document_span(3), (std::pair<size_t, size_t>{2 + 3 + 4, 2 + 3 + 4 + 5}));
    std::vector<Batch> bs{next(L), next(L)};
    for (size_t d = 0; d < 14; ++d) {
      const Batch& b = bs[d / 7];
      const size_t r = d % 7, len = std::min(docs[d].size(), T);
      std::vector<int32_t> want(docs[d].begin(), docs[d].begin() + len - 1);
      want.push_back(kSep);  // truncation keeps the final [SEP]
      for (size_t t = 0; t < T; ++t) {
        const size_t i = r * T + t;
        if (t < len) {
          EXPECT_EQ(b.k[i], 1);
          EXPECT_EQ(b.y[i] >= 0 ? b.y[i] : b.x[i], want[t]) << "doc " << d << " t " << t;
          if (p == 0.0) {
            EXPECT_EQ(b.x[i], want[t]);
            EXPECT_EQ(b.y[i], -1);
          }
        } else {
          EXPECT_EQ(b.k[i], 0) << "doc " << d << " t " << t;
          EXPECT_EQ(b.x[i], kPad);
          EXPECT_EQ(b.y[i], -1);
        }
      }
      EXPECT_EQ(b.x[r * T], kCls);  // special: never masked
      EXPECT_EQ(b.x[r * T + len - 1], kSep);
      EXPECT_EQ(b.y[r * T], -1);
      EXPECT_EQ(b.y[r * T + len - 1], -1);
    }
    std::vector<int32_t> x(7 * T), y(7 * T);
    EXPECT_ERROR(L.next_batch(x.data(), y.data()), "next_batch(inputs, targets, key_mask)");
  }
}

TEST(MlmLoader, LineByLineShuffleCoversDocumentsAndKeepsATail) {
  TempDir td("mlm");
  // 5 documents, the last without a final [SEP] (a hand-made shard).
  std::vector<int32_t> t{kCls, 11, kSep, kCls, 12, 12, kSep, kCls, kSep, kCls, 14, kSep, kCls, 15};
  auto shard = make_shard(td, t, 100);
  TokenLoader L(shard, mlm_opts(5, 4, bert_like(100), false, 3));
  ASSERT_EQ(L.num_windows(), 5u);
  EXPECT_EQ(L.document_span(4), (std::pair<size_t, size_t>{12, 14}));
  std::vector<size_t> order;
  for (size_t p = 0; p < 5; ++p) order.push_back(L.window_at(0, p));
  std::sort(order.begin(), order.end());
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4}));
  const Batch b = next(L);
  int real = 0;
  for (int32_t k : b.k) real += k;
  EXPECT_EQ(real, 3 + 4 + 2 + 3 + 2);
}

TEST(MlmLoader, Errors) {
  TempDir td("mlm");
  auto shard = word_shard(td, 40);
  MlmOptions m = bert_like(0);
  m.mask_id = -1;
  EXPECT_ERROR(TokenLoader(shard, mlm_opts(1, 8, m)),
               "the tokenizer has no [MASK] token: use a WordPiece vocabulary for masked-LM data");
  EXPECT_ERROR(TokenLoader(shard, mlm_opts(1, 8, m)), "s.bin");
  EXPECT_ERROR(TokenLoader(shard, mlm_opts(1, 41, bert_like(0))), "fewer than seq_len = 41");
  TokenLoader exact(shard, mlm_opts(1, 40, bert_like(0)));  // exactly T tokens: one window
  EXPECT_EQ(exact.num_windows(), 1u);
  LoaderOptions ranks = mlm_opts(1, 8, bert_like(0));
  ranks.world_size = 6;
  EXPECT_ERROR(TokenLoader(shard, ranks), "only 5 windows of seq_len = 8 tokens for 6 ranks");
  m = bert_like(0);
  m.pad_id = -1;
  EXPECT_ERROR(TokenLoader(shard, mlm_opts(1, 8, m, false)), "no [PAD] token");
  EXPECT_ERROR(TokenLoader(shard, mlm_opts(1, 8, bert_like(1 << 20))), "exceeds the vocabulary");
  LoaderOptions clm;
  clm.batch_size = 1;
  clm.seq_len = 8;
  clm.pack = false;
  EXPECT_ERROR(TokenLoader(shard, clm), "only for masked-LM data");
}

TEST(MlmLoader, CausalKeyMaskOverloadIsAllOnes) {
  TempDir td("mlm");
  auto shard = word_shard(td, 101);
  LoaderOptions o;
  o.batch_size = 2;
  o.seq_len = 10;
  TokenLoader a(shard, o), b(shard, o);
  std::vector<int32_t> xa(20), ya(20), xb(20), yb(20), k(20, 7);
  a.next_batch(xa.data(), ya.data());
  b.next_batch(xb.data(), yb.data(), k.data());
  EXPECT_EQ(xa, xb);
  EXPECT_EQ(ya, yb);
  EXPECT_EQ(k, std::vector<int32_t>(20, 1));
}

// ---------------------------------------------------------------- prepare with bos

namespace {

std::vector<int32_t> shard_tokens(const std::string& p) {
  Shard s = Shard::open(p);
  std::vector<int32_t> t(s.size());
  s.copy(0, t.size(), t.data());
  return t;
}

std::vector<int32_t> framed(const std::string& doc) {
  std::vector<int32_t> t{257};
  for (unsigned char c : doc) t.push_back(c);
  t.push_back(256);
  return t;
}
}  // namespace

TEST(MlmPrepare, BosTokenizerWritesBosDocEot) {
  TempDir td("mlm");
  write_file(td.file("c/a.txt"), "alpha");
  write_file(td.file("c/b.txt"), "beta");
  write_file(td.file("c/c.txt"), "gamma");
  oft::testing::ByteTokenizer tok(true);
  PrepareOptions o;
  o.inputs = {td.file("c")};
  o.out_dir = td.file("out");
  o.val_fraction = 0.0;
  o.quiet = true;
  const PrepareResult r = prepare_corpus(o, tok);
  std::vector<int32_t> want;
  for (const char* d : {"alpha", "beta", "gamma"}) {
    const auto f = framed(d);
    want.insert(want.end(), f.begin(), f.end());
  }
  EXPECT_EQ(shard_tokens(r.train_path), want);
  EXPECT_EQ(r.train_tokens, want.size());
  EXPECT_EQ(r.train_documents, 3u);

  std::ifstream mf(r.meta_path);
  const auto meta = nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(mf), {}));
  EXPECT_EQ(meta["bos_id"], 257);
  EXPECT_EQ(meta["eot_id"], 256);
  EXPECT_EQ(meta["mask_id"], 258);
  EXPECT_EQ(meta["pad_id"], 259);
  EXPECT_EQ(meta["special_ids"], nlohmann::json({256, 257, 258, 259}));
  const MlmOptions m = mlm_options_from_meta(r.meta_path);
  const MlmOptions t = mlm_options_from_tokenizer(tok);
  for (const MlmOptions& x : {m, t}) {
    EXPECT_EQ(x.mask_id, 258);
    EXPECT_EQ(x.pad_id, 259);
    EXPECT_EQ(x.vocab_size, 260);
    EXPECT_EQ(x.special_ids, (std::vector<int32_t>{256, 257, 258, 259}));
  }
  EXPECT_ERROR(mlm_options_from_meta(td.file("nope/meta.json")), "cannot read");

  // The prepared shard feeds the line-by-line loader: one [bos] ... [eot] document per row.
  LoaderOptions lo = mlm_opts(3, 8, m, false);
  lo.mode = LoaderMode::Eval;
  TokenLoader L(std::make_shared<const Shard>(Shard::open(r.train_path)), lo);
  EXPECT_EQ(L.num_windows(), 3u);
  const Batch b = next(L);
  for (size_t d = 0; d < 3; ++d) {
    EXPECT_EQ(b.x[d * 8], 257);
    EXPECT_EQ(b.k[d * 8], 1);
  }
  // "alpha" is 7 tokens ([bos] a l p h a [eot]) and one pad.
  EXPECT_EQ(b.x[6], 256);
  EXPECT_EQ(b.x[7], 259);
  EXPECT_EQ(b.k[7], 0);
  EXPECT_EQ(b.y[7], -1);
}

TEST(MlmPrepare, SingleDocumentPartsAreBothFramed) {
  TempDir td("mlm");
  std::string text;
  for (int i = 0; i < 100; ++i) text.push_back(char('a' + i % 26));
  write_file(td.file("one.txt"), text);
  oft::testing::ByteTokenizer tok(true);
  PrepareOptions o;
  o.inputs = {td.file("one.txt")};
  o.out_dir = td.file("out");
  o.val_fraction = 0.1;
  o.quiet = true;
  const PrepareResult r = prepare_corpus(o, tok);
  EXPECT_EQ(shard_tokens(r.train_path), framed(text.substr(0, 90)));
  EXPECT_EQ(shard_tokens(r.val_path), framed(text.substr(90)));
  EXPECT_EQ(r.train_tokens, 92u);
  EXPECT_EQ(r.val_tokens, 12u);
}

TEST(MlmPrepare, BertWordPieceEndToEnd) {
  TempDir td("mlm");
  const auto tok = load_tokenizer("bert-base-uncased");
  EXPECT_EQ(tok->bos_id(), 101);  // [CLS]
  EXPECT_EQ(tok->eot_id(), 102);  // [SEP]
  const MlmOptions m = mlm_options_from_tokenizer(*tok);
  EXPECT_EQ(m.mask_id, 103);
  EXPECT_EQ(m.pad_id, 0);
  EXPECT_EQ(m.vocab_size, 30522);
  for (int32_t id : {0, 101, 102, 103})
    EXPECT_NE(std::find(m.special_ids.begin(), m.special_ids.end(), id), m.special_ids.end()) << id;

  const std::string first = "The quick brown fox jumps over the lazy dog. The dog sleeps on.";
  write_file(td.file("c/a.txt"), first + "\n\nCall me Ishmael.\n");
  PrepareOptions o;
  o.inputs = {td.file("c")};
  o.out_dir = td.file("out");
  o.val_fraction = 0.0;
  o.doc_split = "blank_lines";
  o.quiet = true;
  const PrepareResult r = prepare_corpus(o, *tok);
  const std::vector<int32_t> t = shard_tokens(r.train_path);
  std::vector<int32_t> want = tok->encode(first);
  ASSERT_GT(want.size(), 14u);  // longer than T = 16 with [CLS] and [SEP]
  want.insert(want.begin(), 101);
  want.push_back(102);
  const std::vector<int32_t> second = tok->encode("Call me Ishmael.");
  want.push_back(101);
  want.insert(want.end(), second.begin(), second.end());
  want.push_back(102);
  EXPECT_EQ(t, want);

  const MlmOptions from_meta = mlm_options_from_meta(r.meta_path);
  EXPECT_EQ(from_meta.mask_id, 103);
  EXPECT_EQ(from_meta.special_ids, m.special_ids);
  LoaderOptions lo = mlm_opts(2, 16, from_meta, false);
  lo.mode = LoaderMode::Eval;
  TokenLoader L(std::make_shared<const Shard>(Shard::open(r.train_path)), lo);
  ASSERT_EQ(L.num_windows(), 2u);
  const Batch b = next(L);
  EXPECT_EQ(b.x[0], 101);
  EXPECT_EQ(b.x[15], 102);  // truncated to 16 tokens, the last one still [SEP]
  EXPECT_EQ(std::count(b.k.begin(), b.k.begin() + 16, 1), 16);
  EXPECT_EQ(b.x[16], 101);
  EXPECT_EQ(b.x[16 + second.size() + 1], 102);
  EXPECT_EQ(b.x[16 + second.size() + 2], 0);  // [PAD]
  EXPECT_EQ(b.k[16 + second.size() + 2], 0);
}
