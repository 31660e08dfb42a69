// Token shard format: round trips at both token widths, and every way a shard can be bad.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/shard.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::TempDir;
using oft::testing::write_file;

namespace {

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_shard(const std::string& p, uint32_t vocab, const std::vector<int32_t>& toks,
                 int32_t eot = 0) {
  ShardWriter w(p, vocab, eot);
  w.append(toks);
  w.add_documents(3);
  w.finish();
}

// Runs `stmt`, expecting an oft::Error whose message contains `sub`.

void check_round_trip(uint32_t vocab, uint32_t width) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  std::vector<int32_t> toks;
  // > 1 MiB of body so the writer's buffer flushes several times; appended in uneven pieces.
  for (int32_t i = 0; i < 700001; ++i) toks.push_back(static_cast<int32_t>((i * 7919ll) % vocab));
  toks.back() = static_cast<int32_t>(vocab - 1);
  {
    ShardWriter w(p, vocab, static_cast<int32_t>(vocab - 1));
    size_t at = 0, step = 1;
    while (at < toks.size()) {
      const size_t n = std::min(step, toks.size() - at);
      w.append(toks.data() + at, n);
      at += n;
      step = step * 3 + 1;
    }
    w.add_documents(5);
    EXPECT_FALSE(fs::exists(p));  // only the .tmp exists until finish()
    EXPECT_TRUE(fs::exists(p + ".tmp"));
    w.finish();
  }
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_EQ(fs::file_size(p), kShardHeaderBytes + toks.size() * width);

  Shard s = Shard::open(p);
  EXPECT_EQ(s.size(), toks.size());
  EXPECT_EQ(s.vocab_size(), vocab);
  EXPECT_EQ(s.header().token_bytes, width);
  EXPECT_EQ(s.eot_id(), static_cast<int32_t>(vocab - 1));
  EXPECT_EQ(s.documents(), 5u);
  for (size_t i = 0; i < toks.size(); i += 997) EXPECT_EQ(s.token(i), toks[i]);
  EXPECT_EQ(s.token(toks.size() - 1), static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> back(toks.size());
  s.copy(0, toks.size(), back.data());
  EXPECT_EQ(back, toks);
  std::vector<int32_t> mid(10);
  s.copy(12345, 10, mid.data());
  EXPECT_EQ(mid, std::vector<int32_t>(toks.begin() + 12345, toks.begin() + 12355));

  // The stored checksum is zlib's CRC-32 of the body bytes.
  const std::string bytes = read_bytes(p);
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()) + kShardHeaderBytes,
                          static_cast<uInt>(bytes.size() - kShardHeaderBytes));
  EXPECT_EQ(s.header().checksum, static_cast<uint64_t>(crc));
  EXPECT_EQ(bytes.substr(0, 8), "OFTSHRD1");
  EXPECT_EQ(Shard::read_header(p).token_count, toks.size());

  Shard moved = std::move(s);  // the mapping moves with the object
  EXPECT_EQ(moved.token(1), toks[1]);
}

}  // namespace

TEST(Shard, RoundTripTwoByteTokens) { check_round_trip(50257, 2); }

TEST(Shard, RoundTripFourByteTokens) { check_round_trip(100277, 4); }

TEST(Shard, TokenWidthBoundary) {
  TempDir td("shard");
  write_shard(td.file("a.bin"), 65536, {0, 65535, 7});
  write_shard(td.file("b.bin"), 65537, {0, 65536, 7});
  Shard a = Shard::open(td.file("a.bin")), b = Shard::open(td.file("b.bin"));
  EXPECT_EQ(a.header().token_bytes, 2u);
  EXPECT_EQ(a.token(1), 65535);
  EXPECT_EQ(b.header().token_bytes, 4u);
  EXPECT_EQ(b.token(1), 65536);
}

TEST(Shard, EmptyShardIsValid) {
  TempDir td("shard");
  write_shard(td.file("e.bin"), 100, {});
  Shard s = Shard::open(td.file("e.bin"));
  EXPECT_EQ(s.size(), 0u);
  EXPECT_EQ(fs::file_size(td.file("e.bin")), kShardHeaderBytes);
}

TEST(Shard, MissingFile) {
  TempDir td("shard");
  EXPECT_ERROR(Shard::open(td.file("nope.bin")), "nope.bin");
  EXPECT_ERROR(Shard::open(td.file("nope.bin")), "oft data prepare");
}

TEST(Shard, TooSmallForHeader) {
  TempDir td("shard");
  write_file(td.file("tiny.bin"), "OFTSHRD1abc");
  EXPECT_ERROR(Shard::open(td.file("tiny.bin")), "smaller than the 64-byte header");
}

TEST(Shard, WrongMagic) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, {1, 2, 3});
  std::string b = read_bytes(p);
  b[0] = 'X';
  write_file(p, b);
  EXPECT_ERROR(Shard::open(p), "not an oft token shard (wrong magic)");
  EXPECT_ERROR(Shard::open(p), "re-create it with `oft data prepare`");
}

TEST(Shard, WrongVersion) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, {1, 2, 3});
  std::string b = read_bytes(p);
  b[8] = 2;
  write_file(p, b);
  EXPECT_ERROR(Shard::open(p), "format version 2");
}

TEST(Shard, InconsistentTokenWidth) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, {1, 2});
  std::string b = read_bytes(p);
  b[16] = 4;  // claims 4-byte tokens for a small vocabulary
  write_file(p, b);
  EXPECT_ERROR(Shard::open(p), "token width 4");
}

TEST(Shard, TruncatedBody) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, std::vector<int32_t>(100, 5));
  fs::resize_file(p, kShardHeaderBytes + 150);
  EXPECT_ERROR(Shard::open(p), "truncated");
  EXPECT_ERROR(Shard::open(p), "200 body bytes but the file holds 150");
}

TEST(Shard, TrailingBytes) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, {1, 2, 3});
  write_file(p, read_bytes(p) + "xx");
  EXPECT_ERROR(Shard::open(p), "trailing data");
}

TEST(Shard, CorruptedByteFailsChecksum) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  write_shard(p, 1000, {10, 20, 30, 40});
  std::string b = read_bytes(p);
  b[kShardHeaderBytes + 3] ^= 0x01;
  write_file(p, b);
  EXPECT_ERROR(Shard::open(p), "failed its checksum");
  Shard s = Shard::open(p, /*verify_checksum=*/false);  // skipping the check opens it
  EXPECT_EQ(s.token(0), 10);
  EXPECT_ERROR(s.verify_checksum(), "corrupted");
}

TEST(Shard, TokenOutsideVocabularyIsAnError) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  {
    ShardWriter w(p, 1000, 999);
    w.append(std::vector<int32_t>{1, 2});
    EXPECT_ERROR(w.append(std::vector<int32_t>{3, 1000}), "outside the vocabulary");
    EXPECT_ERROR(w.append(std::vector<int32_t>{-1}), "outside the vocabulary");
    EXPECT_EQ(w.token_count(), 2u);  // a rejected call appends nothing
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_ERROR(ShardWriter(p, 1000, 1000), "eot_id 1000");
}

TEST(Shard, AbandonedWriterLeavesNothing) {
  TempDir td("shard");
  const std::string p = td.file("s.bin");
  {
    ShardWriter w(p, 1000, 0);
    w.append(std::vector<int32_t>(5000, 3));
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  // An abandoned rewrite leaves the previous shard intact.
  write_shard(p, 1000, {1, 2, 3});
  const std::string before = read_bytes(p);
  {
    ShardWriter w(p, 1000, 0);
    w.append(std::vector<int32_t>{9, 9});
  }
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

TEST(Shard, WriterIntoMissingDirectory) {
  TempDir td("shard");
  EXPECT_ERROR(ShardWriter(td.file("no/such/dir/s.bin"), 1000, 0), "cannot create shard");
}

TEST(Shard, CopyOutOfRange) {
  TempDir td("shard");
  write_shard(td.file("s.bin"), 1000, {1, 2, 3});
  Shard s = Shard::open(td.file("s.bin"));
  std::vector<int32_t> out(4);
  EXPECT_ERROR(s.copy(1, 3, out.data()), "outside its 3 tokens");
  s.copy(1, 2, out.data());
  EXPECT_EQ(out[1], 3);
}
