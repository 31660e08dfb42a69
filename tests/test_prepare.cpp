// Corpus preparation: determinism, the train/val split rules, input discovery (directories,
// extension filter, globs), skipped binary files and the user-facing errors. Uses a fake
// byte-level tokenizer (id = byte value, eot = 256) so shards decode back to the input text.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "test_util.h"

using namespace oft;
using oft::testing::ByteTokenizer;
namespace fs = std::filesystem;
using oft::testing::TempDir;
using oft::testing::write_file;

namespace {


std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// The documents of a shard written with ByteTokenizer (split at eot).
std::vector<std::string> shard_docs(const std::string& p) {
  Shard s = Shard::open(p);
  std::vector<std::string> docs;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    const int32_t t = s.token(i);
    if (t == 256) {
      docs.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(t));
    }
  }
  EXPECT_TRUE(cur.empty()) << p << " does not end with eot";
  return docs;
}

PrepareOptions options(std::vector<std::string> inputs, std::string out, double vf = 0.05) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = std::move(out);
  o.val_fraction = vf;
  o.quiet = true;
  return o;
}


std::string doc_text(int i) { return "document " + std::to_string(i) + " says hello\n"; }

}  // namespace

TEST(Prepare, DeterministicByteIdenticalRuns) {
  TempDir td("prepare");
  for (int i = 0; i < 60; ++i) write_file(td.file("corpus/f" + std::to_string(i) + ".txt"), doc_text(i));
  ByteTokenizer tok;
  const PrepareResult a = prepare_corpus(options({td.file("corpus")}, td.file("out1"), 0.2), tok);
  const PrepareResult b = prepare_corpus(options({td.file("corpus")}, td.file("out2"), 0.2), tok);
  for (const char* f : {"train.bin", "val.bin", "meta.json"})
    EXPECT_EQ(read_bytes(td.file(std::string("out1/") + f)), read_bytes(td.file(std::string("out2/") + f)))
        << f;
  EXPECT_EQ(a.files, 60u);
  EXPECT_EQ(a.train_documents + a.val_documents, 60u);
  uint64_t bytes = 0;
  for (int i = 0; i < 60; ++i) bytes += doc_text(i).size() + 1;  // + eot
  EXPECT_EQ(a.train_tokens + a.val_tokens, bytes);
  EXPECT_EQ(b.val_tokens, a.val_tokens);
  EXPECT_FALSE(fs::exists(td.file("out1/train.bin.tmp")));

  const auto meta = nlohmann::json::parse(read_bytes(a.meta_path));
  EXPECT_EQ(meta["tokenizer"], "test-bytes");
  EXPECT_EQ(meta["vocab_size"], 257);
  EXPECT_EQ(meta["eot_id"], 256);
  EXPECT_EQ(meta["bos_id"], -1);  // no bos: documents are tokens + eot only
  EXPECT_EQ(meta["mask_id"], -1);
  EXPECT_EQ(meta["pad_id"], -1);
  EXPECT_EQ(meta["special_ids"], nlohmann::json::array());
  EXPECT_EQ(meta["train"]["tokens"], a.train_tokens);
  EXPECT_EQ(meta["val"]["documents"], a.val_documents);
  EXPECT_EQ(meta["val_fraction"], 0.2);
  EXPECT_EQ(meta["options"]["doc_split"], "file");
}

TEST(Prepare, ManyDocumentsSplitByHash) {
  TempDir td("prepare");
  const int n = 300;
  for (int i = 0; i < n; ++i) write_file(td.file("c/d" + std::to_string(i) + ".txt"), doc_text(i));
  ByteTokenizer tok;
  const PrepareResult r = prepare_corpus(options({td.file("c")}, td.file("out"), 0.1), tok);
  std::set<std::string> want_val, want_train;
  for (int i = 0; i < n; ++i) {
    const bool v = hash_fraction(document_hash("d" + std::to_string(i) + ".txt", 0)) < 0.1;
    (v ? want_val : want_train).insert(doc_text(i));
  }
  ASSERT_FALSE(want_val.empty());
  const auto val = shard_docs(r.val_path), train = shard_docs(r.train_path);
  EXPECT_EQ(std::set<std::string>(val.begin(), val.end()), want_val);
  EXPECT_EQ(std::set<std::string>(train.begin(), train.end()), want_train);
  EXPECT_GT(val.size(), 10u);  // ~30 expected
  EXPECT_LT(val.size(), 60u);
  // Train documents appear in sorted path order.
  std::vector<std::string> paths;
  for (int i = 0; i < n; ++i) paths.push_back(td.file("c/d" + std::to_string(i) + ".txt"));
  std::sort(paths.begin(), paths.end());
  std::vector<std::string> order;
  for (const auto& p : paths)
    if (want_train.count(read_bytes(p))) order.push_back(read_bytes(p));
  EXPECT_EQ(train, order);
}

TEST(Prepare, AtLeastOneValAndOneTrainDocument) {
  TempDir td("prepare");
  ByteTokenizer tok;
  // Tiny val_fraction: no document hashes below it, one is moved to validation anyway.
  write_file(td.file("a/x.txt"), "first");
  write_file(td.file("a/y.txt"), "second");
  PrepareResult r = prepare_corpus(options({td.file("a")}, td.file("out"), 1e-9), tok);
  EXPECT_EQ(r.val_documents, 1u);
  EXPECT_EQ(r.train_documents, 1u);
  // Two documents that both hash below 0.5: one is kept for training.
  std::vector<std::string> low;
  for (int i = 0; low.size() < 2; ++i) {
    const std::string name = "n" + std::to_string(i) + ".txt";
    if (hash_fraction(document_hash(name, 0)) < 0.5) low.push_back(name);
  }
  for (const auto& name : low) write_file(td.file("b/" + name), name);
  r = prepare_corpus(options({td.file("b")}, td.file("out2"), 0.5), tok);
  EXPECT_EQ(r.val_documents, 1u);
  EXPECT_EQ(r.train_documents, 1u);
  // val_fraction 0: everything trains, val.bin exists and is empty.
  r = prepare_corpus(options({td.file("a")}, td.file("out3"), 0.0), tok);
  EXPECT_EQ(r.train_documents, 2u);
  EXPECT_EQ(Shard::open(r.val_path).size(), 0u);
}

TEST(Prepare, SingleDocumentSplitsItsTail) {
  TempDir td("prepare");
  std::string text;
  for (int i = 0; i < 1000; ++i) text.push_back(static_cast<char>('a' + i % 26));
  write_file(td.file("one.txt"), text);
  ByteTokenizer tok;
  const PrepareResult r = prepare_corpus(options({td.file("one.txt")}, td.file("out"), 0.1), tok);
  EXPECT_EQ(shard_docs(r.train_path), std::vector<std::string>{text.substr(0, 900)});
  EXPECT_EQ(shard_docs(r.val_path), std::vector<std::string>{text.substr(900)});
  EXPECT_EQ(r.train_tokens, 901u);
  EXPECT_EQ(r.val_tokens, 101u);
}

TEST(Prepare, BlankLineDocuments) {
  TempDir td("prepare");
  write_file(td.file("p.txt"), "para one\nline two\n\n\npara two\r\n \t\npara three\n\n");
  ByteTokenizer tok;
  PrepareOptions o = options({td.file("p.txt")}, td.file("out"), 0.3);
  o.doc_split = "blank_lines";
  const PrepareResult r = prepare_corpus(o, tok);
  EXPECT_EQ(r.train_documents + r.val_documents, 3u);
  auto docs = shard_docs(r.train_path);
  for (const auto& d : shard_docs(r.val_path)) docs.push_back(d);
  std::sort(docs.begin(), docs.end());
  EXPECT_EQ(docs, (std::vector<std::string>{"para one\nline two", "para three", "para two"}));
  o.doc_split = "sentences";
  EXPECT_ERROR(prepare_corpus(o, tok), "unknown doc_split 'sentences'");
}

TEST(Prepare, DirectoryExtensionsHiddenAndGlobs) {
  TempDir td("prepare");
  write_file(td.file("src/a.py"), "import a\n");
  write_file(td.file("src/pkg/b.py"), "import b\n");
  write_file(td.file("src/c.txt"), "text c\n");
  write_file(td.file("src/.hidden/d.py"), "hidden dir\n");
  write_file(td.file("src/.e.py"), "hidden file\n");
  ByteTokenizer tok;
  PrepareOptions o = options({td.file("src")}, td.file("out"), 0.0);
  o.extensions = {".py"};
  PrepareResult r = prepare_corpus(o, tok);
  EXPECT_EQ(r.files, 2u);
  EXPECT_EQ(shard_docs(r.train_path), (std::vector<std::string>{"import a\n", "import b\n"}));

  o = options({td.file("src/*.txt"), td.file("src/p*")}, td.file("out2"), 0.0);  // a file glob + a dir glob
  r = prepare_corpus(o, tok);
  EXPECT_EQ(r.files, 2u);
  EXPECT_EQ(shard_docs(r.train_path), (std::vector<std::string>{"text c\n", "import b\n"}));

  // Overlapping inputs count a file once; the output directory inside an input is not read.
  o = options({td.file("src"), td.file("src/a.py")}, td.file("src/out"), 0.0);
  r = prepare_corpus(o, tok);
  EXPECT_EQ(r.files, 3u);
  r = prepare_corpus(o, tok);
  EXPECT_EQ(r.files, 3u);
}

TEST(Prepare, BinaryAndNonUtf8FilesAreSkipped) {
  TempDir td("prepare");
  write_file(td.file("c/good1.txt"), "hello\n");
  write_file(td.file("c/good2.txt"), "caf\xc3\xa9\n");
  write_file(td.file("c/nul.bin"), std::string("ab\0cd", 5));
  write_file(td.file("c/latin1.txt"), "caf\xe9\n");
  ByteTokenizer tok;
  const PrepareResult r = prepare_corpus(options({td.file("c")}, td.file("out"), 0.0), tok);
  EXPECT_EQ(r.files, 2u);
  EXPECT_EQ(r.skipped_files, 2u);
  ASSERT_EQ(r.warnings.size(), 2u);
  EXPECT_NE(r.warnings[0].find("not valid UTF-8"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[1].find("NUL byte"), std::string::npos) << r.warnings[1];
}

TEST(Prepare, MaxBytesCutsAtUtf8Boundary) {
  TempDir td("prepare");
  write_file(td.file("c/a.txt"), std::string(40, 'a'));
  write_file(td.file("c/b.txt"), "bbbbbbbb\xc3\xa9zzzz");  // the limit falls inside the 2-byte char
  write_file(td.file("c/c.txt"), "never read");
  ByteTokenizer tok;
  PrepareOptions o = options({td.file("c")}, td.file("out"), 0.0);
  o.max_bytes = 49;
  const PrepareResult r = prepare_corpus(o, tok);
  EXPECT_EQ(r.input_bytes, 48u);
  EXPECT_EQ(shard_docs(r.train_path), (std::vector<std::string>{std::string(40, 'a'), "bbbbbbbb"}));
}

TEST(Prepare, EmptyCorpusIsAnError) {
  TempDir td("prepare");
  write_file(td.file("c/empty.txt"), "");
  write_file(td.file("c/space.txt"), " \n\n\t\n");
  write_file(td.file("c/bin.dat"), std::string("\0\0", 2));
  ByteTokenizer tok;
  EXPECT_ERROR(prepare_corpus(options({td.file("c")}, td.file("out")), tok),
               "corpus is empty after tokenization");
  EXPECT_FALSE(fs::exists(td.file("out/train.bin")));
  EXPECT_FALSE(fs::exists(td.file("out/train.bin.tmp")));
}

TEST(Prepare, NoMatchesIsAnError) {
  TempDir td("prepare");
  ByteTokenizer tok;
  write_file(td.file("c/a.txt"), "x");
  EXPECT_ERROR(prepare_corpus(options({td.file("missing.txt")}, td.file("out")), tok),
               "no input files matched '" + (td.file("missing.txt")) + "': check the path");
  EXPECT_ERROR(prepare_corpus(options({td.file("c/*.md")}, td.file("out")), tok), "no input files matched");
  PrepareOptions o = options({td.file("c")}, td.file("out"));
  o.extensions = {"py"};
  EXPECT_ERROR(prepare_corpus(o, tok), "with extensions .py");
  EXPECT_FALSE(fs::exists(td.file("out")));  // nothing created before the inputs are known
}

TEST(Prepare, OptionErrors) {
  TempDir td("prepare");
  ByteTokenizer tok;
  write_file(td.file("c/a.txt"), "x");
  EXPECT_ERROR(prepare_corpus(options({td.file("c")}, td.file("out"), 0.6), tok), "val_fraction");
  EXPECT_ERROR(prepare_corpus(options({td.file("c")}, td.file("out"), -0.1), tok), "[0, 0.5]");
  write_file(td.file("afile"), "x");
  EXPECT_ERROR(prepare_corpus(options({td.file("c")}, td.file("afile/sub")), tok),
               "cannot create output directory");
}
