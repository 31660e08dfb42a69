// TokenLoader: window coverage per epoch, reshuffling, bit-exact resume, rank sharding, eval mode.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"
#include "data/shard.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::TempDir;

namespace {

// A shard whose token i is i, so a window's first input token identifies it (w = tok / T).
std::shared_ptr<const Shard> iota_shard(const TempDir& td, size_t n) {
  const std::string p = (td.path / "iota.bin").string();
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), 0);
  ShardWriter w(p, 1 << 20, 0);
  w.append(t);
  w.finish();
  return std::make_shared<const Shard>(Shard::open(p));
}

// Window indices of the next `batches` batches (checks targets = inputs shifted by one).
std::vector<size_t> take(TokenLoader& L, size_t batches) {
  const size_t B = L.options().batch_size, T = L.options().seq_len;
  std::vector<int32_t> x(B * T), y(B * T);
  std::vector<size_t> ws;
  for (size_t k = 0; k < batches; ++k) {
    L.next_batch(x.data(), y.data());
    for (size_t b = 0; b < B; ++b) {
      EXPECT_EQ(x[b * T] % static_cast<int32_t>(T), 0);
      for (size_t t = 0; t < T; ++t) {
        EXPECT_EQ(x[b * T + t], x[b * T] + static_cast<int32_t>(t));
        EXPECT_EQ(y[b * T + t], x[b * T + t] + 1);
      }
      ws.push_back(static_cast<size_t>(x[b * T]) / T);
    }
  }
  return ws;
}

LoaderOptions opts(size_t B, size_t T, uint64_t seed = 1, int rank = 0, int world = 1) {
  LoaderOptions o;
  o.batch_size = B;
  o.seq_len = T;
  o.seed = seed;
  o.rank = rank;
  o.world_size = world;
  return o;
}


}  // namespace

TEST(Loader, EveryWindowOncePerEpoch) {
  TempDir td("loader");
  auto shard = iota_shard(td, 1005);  // (1005 - 1) / 10 = 100 windows, 4 tokens unused
  TokenLoader L(shard, opts(7, 10));
  EXPECT_EQ(L.num_windows(), 100u);
  EXPECT_EQ(L.windows_per_epoch(), 100u);
  EXPECT_EQ(L.batches_per_epoch(), 14u);
  const auto ws = take(L, 100);  // 700 windows = 7 epochs; batches straddle epoch ends
  for (size_t e = 0; e < 7; ++e) {
    std::vector<size_t> ep(ws.begin() + e * 100, ws.begin() + (e + 1) * 100);
    std::sort(ep.begin(), ep.end());
    std::vector<size_t> all(100);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(ep, all) << "epoch " << e;
  }
  EXPECT_EQ(L.state(), (LoaderState{7, 0}));
}

TEST(Loader, PermutationDiffersAcrossEpochsAndSeeds) {
  TempDir td("loader");
  auto shard = iota_shard(td, 2001);
  TokenLoader a(shard, opts(10, 10, 42)), b(shard, opts(10, 10, 42)), c(shard, opts(10, 10, 43));
  const auto wa = take(a, 40), wb = take(b, 40), wc = take(c, 20);
  EXPECT_EQ(wa, wb);  // same seed, same stream
  const std::vector<size_t> e0(wa.begin(), wa.begin() + 200), e1(wa.begin() + 200, wa.end());
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, wc);
  std::vector<size_t> id(200);
  std::iota(id.begin(), id.end(), 0);
  EXPECT_NE(e0, id);  // actually shuffled
}

TEST(Loader, ResumeFromSavedStateIsBitExact) {
  TempDir td("loader");
  auto shard = iota_shard(td, 5000);
  const size_t B = 6, T = 16;
  TokenLoader a(shard, opts(B, T, 7));
  take(a, 80);  // 480 windows: past the first epoch boundary (312 windows / epoch)
  const std::string saved = a.state().to_json().dump();
  std::vector<int32_t> xa(B * T), ya(B * T), xb(B * T), yb(B * T);
  std::vector<int32_t> stream_a, stream_b;
  for (int k = 0; k < 120; ++k) {
    a.next_batch(xa.data(), ya.data());
    stream_a.insert(stream_a.end(), xa.begin(), xa.end());
    stream_a.insert(stream_a.end(), ya.begin(), ya.end());
  }
  TokenLoader b(shard, opts(B, T, 7));
  b.set_state(LoaderState::from_json(nlohmann::json::parse(saved)));
  for (int k = 0; k < 120; ++k) {
    b.next_batch(xb.data(), yb.data());
    stream_b.insert(stream_b.end(), xb.begin(), xb.end());
    stream_b.insert(stream_b.end(), yb.begin(), yb.end());
  }
  EXPECT_EQ(stream_a, stream_b);
  EXPECT_EQ(a.state(), b.state());
}

// The trainer reads the next batch ahead (its token-embedding rows are updated first,
// train.overlap_update) and puts the state back: the stream is unchanged, across epoch ends.
TEST(Loader, ReadAheadAndPutBackLeavesTheStreamUnchanged) {
  TempDir td("loader");
  auto shard = iota_shard(td, 2001);
  const size_t B = 7, T = 10;
  TokenLoader a(shard, opts(B, T, 3)), b(shard, opts(B, T, 3));
  std::vector<int32_t> x(B * T), y(B * T), xa(B * T), ya(B * T), xp(B * T), yp(B * T);
  for (int k = 0; k < 90; ++k) {  // 630 windows: three epoch ends (200 windows / epoch)
    a.next_batch(xa.data(), ya.data());
    const LoaderState at = b.state();
    b.next_batch(xp.data(), yp.data());
    b.set_state(at);
    b.next_batch(x.data(), y.data());
    ASSERT_EQ(x, xa) << k;
    ASSERT_EQ(y, ya) << k;
    ASSERT_EQ(xp, xa) << k;
  }
  EXPECT_EQ(a.state(), b.state());
}

TEST(Loader, RankShardingIsDisjoint) {
  TempDir td("loader");
  auto shard = iota_shard(td, 1001);  // 100 windows; 3 ranks take 33 each, 1 dropped
  std::set<size_t> seen;
  for (int r = 0; r < 3; ++r) {
    TokenLoader L(shard, opts(3, 10, 5, r, 3));
    EXPECT_EQ(L.windows_per_epoch(), 33u);
    const auto ws = take(L, 11);  // exactly one epoch of this rank
    for (size_t w : ws) EXPECT_TRUE(seen.insert(w).second) << "window " << w << " rank " << r;
    EXPECT_EQ(L.state(), (LoaderState{1, 0}));
  }
  EXPECT_EQ(seen.size(), 99u);
  EXPECT_ERROR(TokenLoader(shard, opts(1, 10, 5, 3, 3)), "rank 3");
  EXPECT_ERROR(TokenLoader(shard, opts(1, 10, 5, 0, 101)), "101 ranks");
}

TEST(Loader, TooSmallShard) {
  TempDir td("loader");
  auto shard = iota_shard(td, 8);
  EXPECT_ERROR(TokenLoader(shard, opts(1, 8)), "iota.bin");
  EXPECT_ERROR(TokenLoader(shard, opts(1, 8)), "smaller seq_len");
  TokenLoader ok(shard, opts(2, 7));  // exactly T+1 tokens: one window
  EXPECT_EQ(ok.num_windows(), 1u);
  EXPECT_EQ(take(ok, 1), (std::vector<size_t>{0, 0}));
}

TEST(Loader, EvalModeIsSequentialAndResets) {
  TempDir td("loader");
  auto shard = iota_shard(td, 401);  // 40 windows of T=10
  LoaderOptions o = opts(8, 10);
  o.mode = LoaderMode::Eval;
  TokenLoader L(shard, o);
  std::vector<size_t> expect(40);
  std::iota(expect.begin(), expect.end(), 0);
  EXPECT_EQ(take(L, 5), expect);
  EXPECT_EQ(take(L, 5), expect);  // the next epoch is the same order
  take(L, 2);
  L.reset();
  EXPECT_EQ(L.state(), LoaderState{});
  EXPECT_EQ(take(L, 1), std::vector<size_t>(expect.begin(), expect.begin() + 8));
  o.rank = 1;
  o.world_size = 2;
  TokenLoader r1(shard, o);
  EXPECT_EQ(take(r1, 1), (std::vector<size_t>{1, 3, 5, 7, 9, 11, 13, 15}));
}

TEST(Loader, StateJsonErrors) {
  TempDir td("loader");
  auto shard = iota_shard(td, 101);
  TokenLoader L(shard, opts(1, 10));
  EXPECT_EQ(LoaderState::from_json(LoaderState{3, 4}.to_json()), (LoaderState{3, 4}));
  EXPECT_ERROR(LoaderState::from_json(nlohmann::json{{"epoch", 1}}), "missing key 'position'");
  EXPECT_ERROR(LoaderState::from_json(nlohmann::json{{"epoch", -1}, {"position", 0}}),
               "non-negative");
  EXPECT_ERROR(L.set_state(LoaderState{0, 10}), "different shard");
  L.set_state(LoaderState{2, 9});
  EXPECT_EQ(L.state(), (LoaderState{2, 9}));
}
