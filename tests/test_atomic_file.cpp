// Atomic file and directory publication, whole-file reads and CRC-32 (src/io/atomic_file.h).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/atomic_file.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::error_of;

namespace {

// A fresh, empty directory per test, removed afterwards.
class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("oft_atomic_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  // Names of everything in the test directory (to spot leftover tmp files).
  std::vector<std::string> listing(const std::string& sub = "") const {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir_ / sub)) r.push_back(e.path().filename());
    std::sort(r.begin(), r.end());
    return r;
  }
  fs::path dir_;
};

}  // namespace

TEST_F(AtomicFileTest, WriteAndOverwrite) {
  write_file_atomic(p("a.txt"), "hello");
  EXPECT_EQ(read_file(p("a.txt")), "hello");
  write_file_atomic(p("a.txt"), std::string("wor\0ld!", 7));
  EXPECT_EQ(read_file(p("a.txt")), std::string("wor\0ld!", 7));
  write_file_atomic(p("empty"), "");
  EXPECT_EQ(read_file(p("empty")), "");
  EXPECT_EQ(listing(), (std::vector<std::string>{"a.txt", "empty"}));
}

TEST_F(AtomicFileTest, StreamingWriter) {
  {
    AtomicFileWriter w(p("s.bin"));
    EXPECT_EQ(w.tmp_path(), p("s.bin") + ".tmp." + std::to_string(::getpid()));
    w.write("abc", 3);
    w.write(std::string_view("defg"));
    EXPECT_FALSE(fs::exists(p("s.bin")));  // nothing visible before commit
    EXPECT_TRUE(fs::exists(w.tmp_path()));
    EXPECT_EQ(w.bytes_written(), 7u);
    w.commit();
  }
  EXPECT_EQ(read_file(p("s.bin")), "abcdefg");
  EXPECT_EQ(listing(), (std::vector<std::string>{"s.bin"}));
}

TEST_F(AtomicFileTest, AbandonedWriterLeavesNoTmpAndKeepsOldContent) {
  write_file_atomic(p("m.bin"), "old content");
  std::string tmp;
  {
    AtomicFileWriter w(p("m.bin"));
    tmp = w.tmp_path();
    w.write("new but never committed", 23);
    EXPECT_TRUE(fs::exists(tmp));
  }
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(read_file(p("m.bin")), "old content");
  EXPECT_EQ(listing(), (std::vector<std::string>{"m.bin"}));

  // Same when an exception unwinds through the writer.
  EXPECT_THROW(
      {
        AtomicFileWriter w(p("m.bin"));
        w.write("partial", 7);
        fail("simulated failure while serializing");
      },
      Error);
  EXPECT_EQ(read_file(p("m.bin")), "old content");
  EXPECT_EQ(listing(), (std::vector<std::string>{"m.bin"}));
}

TEST_F(AtomicFileTest, MovedWriterCommits) {
  AtomicFileWriter a(p("mv.txt"));
  a.write("xy", 2);
  AtomicFileWriter b(std::move(a));
  b.write("z", 1);
  b.commit();
  EXPECT_EQ(read_file(p("mv.txt")), "xyz");
  EXPECT_EQ(listing(), (std::vector<std::string>{"mv.txt"}));
}

TEST_F(AtomicFileTest, UnwritableDirectoryIsAnError) {
  // Missing parent directory.
  std::string missing = p("no/such/dir/model.safetensors");
  std::string msg = error_of([&] { write_file_atomic(missing, "x"); });
  EXPECT_NE(msg.find("cannot write " + missing + ": No such file or directory"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("does the directory"), std::string::npos) << msg;

  // Parent is a regular file (fails even for root).
  write_file_atomic(p("plain"), "x");
  std::string under_file = p("plain/model.safetensors");
  msg = error_of([&] { AtomicFileWriter w(under_file); });
  EXPECT_NE(msg.find("cannot write " + under_file + ": Not a directory"), std::string::npos) << msg;

  // Read-only directory (root bypasses permission bits, so only checked for other users).
  if (::geteuid() != 0) {
    fs::create_directories(p("ro"));
    fs::permissions(p("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    std::string ro = p("ro/x.bin");
    msg = error_of([&] { write_file_atomic(ro, "x"); });
    EXPECT_NE(msg.find("cannot write " + ro + ": Permission denied"), std::string::npos) << msg;
    fs::permissions(p("ro"), fs::perms::owner_all);
  }
  EXPECT_EQ(listing(), (std::vector<std::string>{"plain"}));
}

TEST_F(AtomicFileTest, CommitDirectoryCreatesAndReplaces) {
  // New final directory.
  fs::create_directories(p("stage1/sub"));
  write_file_atomic(p("stage1/a.txt"), "one");
  write_file_atomic(p("stage1/sub/b.txt"), "two");
  commit_directory_atomic(p("stage1"), p("ckpt"));
  EXPECT_FALSE(fs::exists(p("stage1")));
  EXPECT_EQ(read_file(p("ckpt/a.txt")), "one");
  EXPECT_EQ(read_file(p("ckpt/sub/b.txt")), "two");

  // Replacing an existing final directory: old contents disappear entirely.
  fs::create_directories(p("stage2"));
  write_file_atomic(p("stage2/c.txt"), "three");
  commit_directory_atomic(p("stage2") + "/", p("ckpt"));
  EXPECT_EQ(listing("ckpt"), (std::vector<std::string>{"c.txt"}));
  EXPECT_EQ(read_file(p("ckpt/c.txt")), "three");
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt"}));  // no stage dir, no .old dir
}

TEST_F(AtomicFileTest, CommitDirectoryMissingStageIsAnError) {
  fs::create_directories(p("ckpt"));
  write_file_atomic(p("ckpt/keep.txt"), "keep");
  std::string msg = error_of([&] { commit_directory_atomic(p("nostage"), p("ckpt")); });
  EXPECT_NE(msg.find(p("nostage")), std::string::npos) << msg;
  EXPECT_EQ(read_file(p("ckpt/keep.txt")), "keep");
}

TEST_F(AtomicFileTest, ReadFileErrors) {
  std::string missing = p("missing.txt");
  std::string msg = error_of([&] { read_file(missing); });
  EXPECT_NE(msg.find("cannot read " + missing + ": No such file or directory"), std::string::npos)
      << msg;
  msg = error_of([&] { read_file(dir_.string()); });
  EXPECT_NE(msg.find("is a directory"), std::string::npos) << msg;
  msg = error_of([&] { crc32_file(missing); });
  EXPECT_NE(msg.find("cannot read " + missing), std::string::npos) << msg;
}

TEST_F(AtomicFileTest, Crc32) {
  EXPECT_EQ(crc32_bytes("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32_hex(0xCBF43926u), "cbf43926");
  EXPECT_EQ(crc32_hex(0x1u), "00000001");
  EXPECT_EQ(crc32_bytes("", 0), 0u);

  write_file_atomic(p("check.txt"), "123456789");
  EXPECT_EQ(crc32_file(p("check.txt")), 0xCBF43926u);

  // Larger than the 1 MiB streaming chunk: file CRC equals in-memory CRC.
  std::string big(3 * (1 << 20) + 12345, '\0');
  std::mt19937 rng(7);
  for (char& c : big) c = static_cast<char>(rng());
  write_file_atomic(p("big.bin"), big);
  EXPECT_EQ(crc32_file(p("big.bin")), crc32_bytes(big.data(), big.size()));
  EXPECT_EQ(read_file(p("big.bin")), big);
}
