// The Hugging Face commands end to end through the `oft` binary: import a GPT-2 fixture with its
// tokenizer, tokenize with the imported tokenizer, prepare data with it, validate the imported
// run, continue training it from its config.yaml, read its logits (ids file and text), export
// it; and the command-line errors (one "oft: error:" line, exit status 1).
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "core/resources.h"
#include "hf_fixtures.h"
#include "test_util.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

using namespace oft;
using namespace oft::testing;
namespace fs = std::filesystem;

namespace {

using CmdOut = oft::testing::CmdResult;
CmdOut oft_cmd(const std::string& args) {
  return oft::testing::run_command("OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2 " +
                                   std::string(OFT_BINARY) + " " + args);
}

// A tokenizer.json of the shipped GPT-2 BPE.
void write_gpt2_tokenizer(const std::string& dir) {
  nlohmann::json t;
  t["normalizer"] = nullptr;
  t["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  nlohmann::json merges = nlohmann::json::array();
  std::istringstream in(read_file(resource_path("data/tokenizers/gpt2/vocab.bpe")));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && !line.starts_with("#version")) merges.push_back(line);
  t["model"] = {{"type", "BPE"},
                {"vocab", nlohmann::json::parse(read_file(resource_path("data/tokenizers/gpt2/encoder.json")))},
                {"merges", merges}};
  write_file(dir + "/tokenizer.json", t.dump());
}

}  // namespace

TEST(HfCli, ImportTokenizeValidateTrainLogitsExport) {
  TempDir d("hf_cli");
  const std::string hf = d.file("hf"), run = d.file("gpt2-tiny");
  gpt2_fixture("transformer.", 50257).write(hf);
  write_gpt2_tokenizer(hf);

  CmdOut r = oft_cmd("import-hf " + hf + " --out " + run);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("imported"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gpt2"), std::string::npos) << r.out;

  r = oft_cmd("tokenizer encode -t " + run + " 'Hello world'");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, "15496 995 \n");
  write_file(d.file("text.txt"), "Hello  world\n\tcafé");
  r = oft_cmd("tokenizer encode -t " + run + " --file " + d.file("text.txt"));
  EXPECT_EQ(r.out, oft_cmd("tokenizer encode --file " + d.file("text.txt")).out)
      << "an imported GPT-2 tokenizer encodes like the shipped one";

  // Data with the imported tokenizer, then validation and continued training of the import.
  const std::string corpus = resource_path("data/moby-dick/moby_dick.txt");
  r = oft_cmd("data prepare " + corpus + " -t " + run + " --max-mb 0.05 -q -o " + d.file("data"));
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string data = "data.train=" + d.file("data/train.bin") + " data.val=" +
                           d.file("data/val.bin") + " data.seq_len=12 train.batch_size=2";
  r = oft_cmd("validate " + run + " " + data + " train.eval_batches=2 metrics.batches=1 -q");
  EXPECT_EQ(r.status, 0) << r.out;
  r = oft_cmd("train " + run + "/config.yaml " + data + " train.steps=2 train.eval_batches=1 "
              "--run-dir " + d.file("ft"));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("initialised from"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(d.file("ft/checkpoints/latest")));

  // Logits: ids file -> safetensors; text -> top predictions.
  write_file(d.file("ids.txt"), "15496 995 11\n464 3290 318\n");
  r = oft_cmd("logits " + run + " --ids " + d.file("ids.txt") + " --out " + d.file("l.safetensors") +
              " --top 3");
  ASSERT_EQ(r.status, 0) << r.out;
  const SafetensorsFile lf = SafetensorsFile::open(d.file("l.safetensors"));
  EXPECT_EQ(lf.info("logits").shape, (Shape{2, 3, 50257}));
  EXPECT_EQ(lf.info("input_ids").shape, (Shape{2, 3}));
  EXPECT_NE(r.out.find("sequence 1 position 2"), std::string::npos) << r.out;
  r = oft_cmd("logits " + run + " --text 'Call me Ishmael'");
  EXPECT_EQ(r.status, 0) << r.out;

  r = oft_cmd("export-hf " + run + " " + d.file("out"));
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("GPT2LMHeadModel.from_pretrained"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(d.file("out/tokenizer.json")));
}

TEST(HfCli, MaskedLmFillsTheMask) {
  TempDir d("hf_cli_bert");
  bert_fixture(30522).write(d.file("hf"));
  fs::copy_file(resource_path("data/tokenizers/bert-base-uncased/vocab.txt"), d.file("hf/vocab.txt"));
  ASSERT_EQ(oft_cmd("import-hf " + d.file("hf") + " --out " + d.file("run")).status, 0);
  // [CLS] the [MASK] sat [SEP]: the prediction is printed at position 2, the mask.
  const CmdOut r = oft_cmd("logits " + d.file("run") + " --text 'The [MASK] sat' --top 2");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("sequence 0 position 2 (token 103)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("position 1 "), std::string::npos) << "only masked positions: " << r.out;
}

TEST(HfCli, Errors) {
  TempDir d("hf_cli_err");
  auto expect_error = [](const std::string& args, const std::vector<std::string>& parts) {
    const CmdOut r = oft_cmd(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    EXPECT_EQ(r.out.rfind("oft: error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    for (const auto& p : parts) EXPECT_NE(r.out.find(p), std::string::npos) << p << "\n" << r.out;
  };
  expect_error("import-hf /nonexistent/model", {"/nonexistent/model", "not a directory"});
  fs::create_directories(d.file("empty"));
  expect_error("import-hf " + d.file("empty") + " --out " + d.file("r"), {"config.json"});
  EXPECT_FALSE(fs::exists(d.file("r"))) << "a failed import leaves no run behind";
  expect_error("import-hf " + d.file("empty") + " stray", {"stray", "key=value"});
  expect_error("export-hf /nonexistent/run " + d.file("o"), {"/nonexistent/run"});
  gpt2_fixture().write(d.file("hf"));
  ASSERT_EQ(oft_cmd("import-hf " + d.file("hf") + " --out " + d.file("run")).status, 0);
  expect_error("logits " + d.file("run"), {"--ids", "--text"});
  expect_error("logits " + d.file("run") + " --text hello", {"records no tokenizer", "--ids"});
  write_file(d.file("ids.txt"), "1 2 99\n");
  expect_error("logits " + d.file("run") + " --ids " + d.file("ids.txt"),
               {"token id 99", "position 2", "[0, 40)"});
  std::string many;
  for (int i = 0; i < 20; ++i) many += "1 ";
  write_file(d.file("long.txt"), many + "\n");
  expect_error("logits " + d.file("run") + " --ids " + d.file("long.txt"),
               {"20 tokens", "model.max_seq_len=12"});
}
