// Helpers shared by the GoogleTest files: a per-process, per-instance temporary directory,
// writing a file's bytes, catching an oft::Error's message, and preparing the embedded
// Moby-Dick corpus into token shards for the end-to-end suites. Header-only, test code only.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/resources.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace oft::testing {

// Exit status and stdout + stderr of a shell command line.
struct CmdResult {
  int status = -1;
  std::string out;
};
inline CmdResult run_command(const std::string& cmd) {
  CmdResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// A byte-level fake tokenizer (id = byte, end-of-text 256) for data-layer tests that must not
// depend on a real vocabulary. With mlm_ids it also has [CLS]-like bos 257, mask 258 and pad 259.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(bool mlm_ids = false) : mlm_(mlm_ids) {}
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t i : ids) s.push_back(static_cast<char>(i));
    return s;
  }
  int vocab_size() const override { return mlm_ ? 260 : 257; }
  int32_t eot_id() const override { return 256; }
  int32_t bos_id() const override { return mlm_ ? 257 : -1; }
  int32_t mask_id() const override { return mlm_ ? 258 : -1; }
  int32_t pad_id() const override { return mlm_ ? 259 : -1; }
  std::vector<int32_t> special_ids() const override {
    return mlm_ ? std::vector<int32_t>{256, 257, 258, 259} : std::vector<int32_t>{};
  }
  std::string name() const override { return mlm_ ? "test-bos-bytes" : "test-bytes"; }

 private:
  bool mlm_;
};

// A fresh directory temp_directory_path()/oft_<prefix>_<pid>_<n> (n counts instances within the
// process), removed with everything under it when the TempDir goes out of scope.
struct TempDir {
  explicit TempDir(const std::string& prefix) {
    static std::atomic<unsigned long> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("oft_" + prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // path / name as a string (name may contain subdirectories).
  std::string file(const std::string& name) const { return (path / name).string(); }

  std::filesystem::path path;
};

// Writes exactly `bytes` to `path` (binary, truncating), creating missing parent directories.
inline void write_file(const std::string& path, std::string_view bytes) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs f and returns the message of the oft::Error it throws, or "" when it throws nothing.
// Exceptions of other types propagate.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const oft::Error& e) {
    return e.what();
  }
  return "";
}

// Prepares the embedded Moby-Dick corpus (its first max_bytes bytes) into
// out_dir/{train,val}.bin + meta.json with the tokenizer `tokenizer_spec` (any load_tokenizer
// spec), quietly.
inline void prepare_moby(const std::string& out_dir, const std::string& tokenizer_spec,
                         size_t max_bytes, const std::string& doc_split = "file",
                         double val_fraction = 0.1) {
  const auto tok = oft::load_tokenizer(tokenizer_spec);
  oft::PrepareOptions po;
  po.inputs = {oft::resource_path("data/moby-dick/moby_dick.txt")};
  po.out_dir = out_dir;
  po.max_bytes = max_bytes;
  po.val_fraction = val_fraction;
  po.doc_split = doc_split;
  po.quiet = true;
  oft::prepare_corpus(po, *tok);
}

}  // namespace oft::testing

// EXPECT_ERROR(statement, "text"): the statement must throw an oft::Error whose message
// contains text.
#define EXPECT_ERROR(stmt, sub)                                                  \
  do {                                                                           \
    try {                                                                        \
      stmt;                                                                      \
      ADD_FAILURE() << "expected oft::Error containing '" << (sub) << "'";       \
    } catch (const oft::Error& e) {                                              \
      EXPECT_NE(std::string(e.what()).find(sub), std::string::npos) << e.what(); \
    }                                                                            \
  } while (0)
