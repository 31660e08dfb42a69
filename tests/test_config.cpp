// Config registry and RunConfig: YAML loading, overrides, presets and every kind of bad value.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/env_choice.h"
#include "core/error.h"
#include "train/run_config.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::error_of;

namespace {
std::string write_temp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("oft_cfg_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p) << text;
  return p.string();
}
}  // namespace

TEST(Config, EveryPresetLoadsAndValidates) {
  for (const auto& p : list_presets()) {
    RunConfig c;
    EXPECT_NO_THROW(c.load(p, {})) << p;
  }
  RunConfig c;
  c.load("opt_125m", {});
  EXPECT_EQ(c.model.n_layer, 12);
  EXPECT_EQ(c.model.d_model, 768);
  EXPECT_EQ(c.data.seq_len, 512);
  EXPECT_EQ(c.train.batch_size * c.train.grad_accum, 192);
  EXPECT_DOUBLE_EQ(c.train.beta2, 0.95);
}

TEST(Config, OverridesByFullKeySuffixAndAlias) {
  RunConfig c;
  c.load("tiny", {"model.n_layer=3", "lr=0.01", "attn_softmax=clipped(-.025:1)",
                  "block_size=64", "train.resume=yes"});
  EXPECT_EQ(c.model.n_layer, 3);
  EXPECT_DOUBLE_EQ(c.train.lr, 0.01);
  EXPECT_EQ(c.model.attn_softmax, "clipped(-.025:1)");
  EXPECT_EQ(c.data.seq_len, 64);
  EXPECT_TRUE(c.train.resume);
}

TEST(Config, UnknownKeyListsValidKeys) {
  RunConfig c;
  const std::string e = error_of([&] { c.load("tiny", {"model.n_layers=3"}); });
  EXPECT_NE(e.find("unknown config key 'model.n_layers'"), std::string::npos) << e;
  EXPECT_NE(e.find("model.n_layer"), std::string::npos) << e;
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
}

TEST(Config, UnknownKeyInYamlNamesTheFile) {
  const std::string p = write_temp("unknown.yaml", "model:\n  widht: 3\n");
  RunConfig c;
  const std::string e = error_of([&] { c.load(p, {}); });
  EXPECT_NE(e.find(p), std::string::npos) << e;
  EXPECT_NE(e.find("model.widht"), std::string::npos) << e;
  fs::remove(p);
}

TEST(Config, MalformedYamlNamesFileAndLine) {
  const std::string p = write_temp("bad.yaml", "model:\n  n_layer: 2\n   d_model: [\n");
  RunConfig c;
  const std::string e = error_of([&] { c.load(p, {}); });
  EXPECT_NE(e.find(p), std::string::npos) << e;
  EXPECT_NE(e.find("malformed YAML at line"), std::string::npos) << e;
  fs::remove(p);
}

TEST(Config, OutOfRangeAndUnparsableValues) {
  struct Case {
    std::string kv, expect;
  };
  const Case cases[] = {
      {"train.lr=-0.1", "train.lr: must be in [0"},
      {"train.lr=0", "train.lr must be > 0"},
      {"model.n_layer=0", "model.n_layer: must be in [1"},
      {"model.n_layer=two", "expected an integer"},
      {"train.lr=fast", "expected a finite number"},
      {"model.final_norm=maybe", "expected true or false"},
      {"model.norm=batchnorm", "must be one of layernorm, rmsnorm, none"},
      {"model.n_head=5", "does not divide model.d_model=128"},
      {"data.seq_len=4096", "longer than the position table model.max_seq_len=128"},
      {"noequals", "is not a key=value override"},
  };
  for (const auto& c : cases) {
    RunConfig cfg;
    const std::string e = error_of([&] { cfg.load("tiny", {c.kv}); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.kv << " -> " << e;
  }
}

TEST(Config, WarmupStepsAndRatioAreExclusive) {
  RunConfig c;
  const std::string e =
      error_of([&] { c.load("tiny", {"train.warmup_steps=10", "train.warmup_ratio=0.1"}); });
  EXPECT_NE(e.find("not both"), std::string::npos) << e;
  RunConfig d;
  d.load("tiny", {"train.warmup_steps=0", "train.warmup_ratio=0.1", "train.steps=200"});
  EXPECT_EQ(d.warmup(), 20);
}

TEST(Config, UnknownPresetListsPresets) {
  RunConfig c;
  const std::string e = error_of([&] { c.load("tinny", {}); });
  EXPECT_NE(e.find("unknown preset 'tinny'"), std::string::npos) << e;
  EXPECT_NE(e.find("tiny"), std::string::npos) << e;
  const std::string e2 = error_of([&] { c.load("/nonexistent/x.yaml", {}); });
  EXPECT_NE(e2.find("config file not found"), std::string::npos) << e2;
}

TEST(Config, BaseInheritsAndYamlRoundTrips) {
  const std::string p = write_temp("child.yaml", "base: tiny\nmodel:\n  n_layer: 7\n");
  RunConfig c;
  c.load(p, {});
  EXPECT_EQ(c.model.n_layer, 7);
  EXPECT_EQ(c.model.d_model, 128);  // from tiny
  // The resolved YAML loads back to the same values.
  const std::string dumped = write_temp("dump.yaml", c.registry().to_yaml());
  RunConfig d;
  d.load(dumped, {});
  EXPECT_EQ(c.registry().to_json(), d.registry().to_json());
  fs::remove(p);
  fs::remove(dumped);
}

// The GPU backend's switches (OFT_ATTN_WGMMA, OFT_GEMM_WGMMA, OFT_ATTN_DQ_STORE, OFT_MATMUL_TUNE)
// go through env_choice: unset or empty gives the default, an accepted word its value, and
// anything else an error naming the variable, the value and the accepted words.
TEST(Config, EnvironmentSwitchesRefuseUnknownValues) {
  const char* name = "OFT_TEST_SWITCH";
  auto read = [&] {
    return env_choice(name, {{"auto", 7}, {"0", 0}, {"all", 3}}, 7,
                      "auto (the default), 0 or all");
  };
  ::unsetenv(name);
  EXPECT_EQ(read(), 7);
  ::setenv(name, "", 1);
  EXPECT_EQ(read(), 7);
  ::setenv(name, "all", 1);
  EXPECT_EQ(read(), 3);
  ::setenv(name, "0", 1);
  EXPECT_EQ(read(), 0);
  for (const char* bad : {"ALL", "1", "all "}) {
    ::setenv(name, bad, 1);
    const std::string e = oft::testing::error_of(read);
    EXPECT_NE(e.find(std::string("OFT_TEST_SWITCH='") + bad + "': expected auto (the default), 0 or all"),
              std::string::npos)
        << e;
  }
  ::unsetenv(name);
}
