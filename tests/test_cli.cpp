// The `oft` command line on bad input: each mistake gives exit status 1 and a single
// "oft: error: ..." line naming the file or key, never a crash, and leaves no files behind.
#include <gtest/gtest.h>

#include "ops/ops.h"
#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace {

using oft::testing::CmdResult;
// `env`: VAR=value assignments for the command.
CmdResult oft(const std::string& args, const std::string& env = "") {
  return oft::testing::run_command(env + " " + std::string(OFT_BINARY) + " " + args);
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("oft_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Expects exit 1 with one error line containing every fragment.
  void expect_error(const std::string& args, const std::vector<std::string>& fragments,
                    const std::string& env = "") {
    const CmdResult r = oft(args, env);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.out;
    EXPECT_EQ(r.out.rfind("oft: error: ", 0), 0u) << args << "\n" << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << args << "\n" << r.out;
    for (const auto& f : fragments) EXPECT_NE(r.out.find(f), std::string::npos) << f << "\n" << r.out;
  }
  fs::path dir_;
};

TEST_F(Cli, TokenizerEncodeHappyPath) {
  const CmdResult r = oft("tokenizer encode 'Hello world'");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, "15496 995 \n");
}

// `oft bench --json` on the CPU (a tiny model, two steps): the report's fields, including where
// the optimizer step ran (after the backward: train.overlap_update is for the GPU) and the
// graphs' state.
TEST_F(Cli, BenchJsonReport) {
  const std::string out = (dir_ / "bench.json").string();
  const CmdResult r = oft("bench tiny model.n_layer=1 model.vocab_size=64 data.seq_len=16 "
                          "train.batch_size=2 train.device=cpu train.overlap_update=true "
                          "--steps 2 --warmup 1 --json " + out);
  ASSERT_EQ(r.status, 0) << r.out;
  std::ifstream f(out);
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["tokens_per_step"], 32);
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["wall_tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_FALSE(j["overlap_update"].get<bool>());
  EXPECT_NE(j["cuda_graph"].get<std::string>().find("off"), std::string::npos) << j.dump();
}

TEST_F(Cli, BadConfigValues) {
  expect_error("train tinny", {"unknown preset 'tinny'", "opt_125m"});
  expect_error("train tiny model.n_layer=0", {"model.n_layer", "[1, 1024]"});
  expect_error("train tiny train.lr=-1", {"train.lr"});
  expect_error("train tiny model.n_head=3", {"model.n_head=3", "d_model=128"});
  expect_error("train tiny data.seq_len=512", {"model.max_seq_len=128"});
  expect_error("train tiny model.depth=3", {"unknown config key 'model.depth'", "model.n_layer"});
  expect_error("train tiny train.device=gpu", {"train.device", "cuda"});
  expect_error("train tiny train.device=cpu train.precision=bf16",
               {"train.precision=bf16 needs the GPU", "train.precision=auto"});
  expect_error("train tiny train.precision=fp8", {"train.precision", "bf16"});
  if (!oft::ops::cuda_available())
    expect_error("train tiny train.device=cuda", {"train.device=cuda", "train.device=cpu"});
  expect_error("bench tiny", {"model.vocab_size", "model.vocab_size=50257"});
  // Multi-GPU launches.
  if (!oft::ops::cuda_available()) {
    expect_error("train tiny --gpus 2", {"--gpus 2", "0 GPU(s) are visible"});
    expect_error("bench tiny model.vocab_size=64 --gpus 4", {"--gpus 4", "0 GPU(s)"});
  }
  {
    const CmdResult r = oft("train tiny --gpus -1");  // CLI11's own range message
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.out.find("--gpus: Value -1 not in range"), std::string::npos) << r.out;
  }
  expect_error("train tiny train.zero_stage=1", {"train.zero_stage=1", "--gpus N"});
  expect_error("train tiny train.zero_stage=2", {"train.zero_stage", "[0, 1]"});
  // A rank of a 3-process launch: the global batch must split evenly; the error names the rank.
  expect_error("train tiny train.batch_size=16", {"rank 1: ", "train.batch_size=16", "multiple of 3"},
               "OFT_WORLD_SIZE=3 OFT_RANK=1 OFT_RENDEZVOUS=/nonexistent/rdv");
  expect_error("train tiny", {"OFT_RANK=x"}, "OFT_WORLD_SIZE=2 OFT_RANK=x");
  const fs::path y = dir_ / "broken.yaml";
  std::ofstream(y) << "model: {n_layer: [\n";
  expect_error("train " + y.string(), {y.string(), "malformed YAML"});
}

TEST_F(Cli, MissingAndDamagedData) {
  const std::string run = (dir_ / "run").string();
  expect_error("train tiny data.train=/nonexistent/train.bin --run-dir " + run,
               {"data.train=/nonexistent/train.bin", "oft data prepare"});
  EXPECT_FALSE(fs::exists(run));
  const fs::path bad = dir_ / "bad.bin";
  std::ofstream(bad) << std::string(100, 'x');
  expect_error("train tiny data.train=" + bad.string() + " --run-dir " + run,
               {bad.string(), "wrong magic"});
  EXPECT_FALSE(fs::exists(run));
}

TEST_F(Cli, BadPrepareInputs) {
  const std::string out = (dir_ / "out").string();
  expect_error("data prepare '/nonexistent/*.txt' -q -o " + out, {"/nonexistent/*.txt"});
  const fs::path empty = dir_ / "empty.txt";
  std::ofstream(empty) << "   \n";
  expect_error("data prepare " + empty.string() + " -q -o " + out, {"empty"});
  EXPECT_FALSE(fs::exists(dir_ / "out" / "train.bin"));
  expect_error("data prepare " + empty.string() + " -q --val-fraction 0.9 -o " + out,
               {"val_fraction"});
}

TEST_F(Cli, BadTokenizerAndCheckpointPaths) {
  expect_error("tokenizer encode -t /nonexistent/x.model hi", {"/nonexistent/x.model"});
  const fs::path junk = dir_ / "junk.model";
  std::ofstream(junk) << "not a model";
  expect_error("tokenizer encode -t " + junk.string() + " hi", {junk.string()});
  expect_error("eval /nonexistent/run", {"/nonexistent/run"});
  expect_error("eval " + dir_.string(), {"no checkpoint found"});
}

}  // namespace
