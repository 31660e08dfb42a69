// `oft train` on the GPU with the optimizer step beside the next forward (train.overlap_update):
// the same run with the update after the backward gives the same step losses and validation
// losses, through evaluations and checkpoints in the middle of the run (they read the model
// while an update may be in flight), gradient accumulation, and the next batch read ahead for
// its embedding rows. f32 activations; the eager GPU steps differ in their sums' order only, so
// losses agree to 1e-4 relative after 12 steps, while a forward that read a weight before its
// update was complete would be off by the update's size (lr 3e-3 on weights of 0.02: percents).
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/resources.h"
#include "cuda/cuda_test_util.h"
#include "test_util.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace oft::testing {
namespace {

namespace fs = std::filesystem;

std::vector<double> logged(const std::string& run_dir, const char* key) {
  std::vector<double> r;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains(key)) r.push_back(j[key].get<double>());
  }
  return r;
}

TEST(CudaTrain, OverlappedUpdateMatchesTheUpdateAfterTheBackward) {
  OFT_REQUIRE_CUDA();
  const std::string root =
      (fs::temp_directory_path() / ("oft_cuda_train_" + std::to_string(::getpid()))).string();
  fs::create_directories(root);
  prepare_moby(root + "/data", resource_path("data/tokenizers/moby_sp2k/moby_sp2k.model"), 200000);
  auto run = [&](const std::string& name, bool overlap) {
    RunConfig cfg;
    cfg.load("tiny", {"model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.d_ff=256",
                      "model.max_seq_len=64", "data.seq_len=64",
                      "data.train=" + root + "/data/train.bin", "data.val=" + root + "/data/val.bin",
                      "train.batch_size=8", "train.grad_accum=2", "train.steps=12",
                      "train.warmup_steps=2", "train.lr=3e-3", "train.eval_every=4",
                      "train.eval_batches=2", "train.ckpt_every=6", "train.log_every=1",
                      "train.device=cuda", "train.precision=f32",
                      std::string("train.overlap_update=") + (overlap ? "true" : "false"),
                      "run.dir=" + root + "/" + name});
    return train(cfg, true);
  };
  const TrainResult after = run("after", false), beside = run("beside", true);
  const auto la = logged(after.run_dir, "loss"), lb = logged(beside.run_dir, "loss");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), la.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(lb[i], la[i], 1e-4 * la[i]) << "step " << i + 1;
  EXPECT_NEAR(beside.final_val.loss, after.final_val.loss, 1e-4 * after.final_val.loss);
  EXPECT_EQ(logged(beside.run_dir, "val_loss").size(), logged(after.run_dir, "val_loss").size());
  std::printf("[overlap train] last loss %.6f / %.6f, val %.6f / %.6f\n", lb.back(), la.back(),
              beside.final_val.loss, after.final_val.loss);
  fs::remove_all(root);
}

}  // namespace
}  // namespace oft::testing
