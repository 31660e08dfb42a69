// `oft train` on the GPU with the optimizer step beside the next forward (train.overlap_update):
// the same run with the update after the backward gives the same step losses and validation
// losses, through evaluations and checkpoints in the middle of the run (they read the model
// while an update may be in flight), gradient accumulation, and the next batch read ahead for
// its embedding rows. f32 activations; the eager GPU steps differ in their sums' order only, so
// losses agree to 1e-4 relative after 12 steps, while a forward that read a weight before its
// update was complete would be off by the update's size (lr 3e-3 on weights of 0.02: percents).
// Also the step's statistics on the device (clip_from_stats and AdamW reading them) against the
// CPU backend.
#include <unistd.h>

#include <cmath>
#include <tuple>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/resources.h"
#include "cuda/cuda_test_util.h"
#include "test_util.h"
#include "ops/ops.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace oft::testing {
namespace {

namespace fs = std::filesystem;

ops::Backend& gpu() { return ops::backend(Device::CUDA); }
ops::Backend& cpu() { return ops::cpu_backend(); }

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

// AdamWStep::stats on the GPU: the clipping factor from the device sums (clip_from_stats) as
// the CPU computes it, the update kernels (whole tensors and a row list) reading it, and a step
// with a NaN gradient or an infinite loss leaving every tensor unchanged. The GPU's sums of
// squares (f32 per thread, f64 across) agree with the CPU's f64 ones to about 1e-8 relative;
// the factor is checked exactly against the host formula on the GPU's own sum, the tensors
// against the CPU's update to 1e-6.
TEST(CudaTrain, AdamWWithDeviceStatsMatchesCpu) {
  OFT_REQUIRE_CUDA();
  const int64_t rows = 37, cols = 100, n = rows * cols;
  std::vector<double> vv = randn({n}, 0.1).to_vector();
  for (double& x : vv) x = x * x;
  Tensor p = randn({n}), m = randn({n}, 0.1), v = Tensor::from_vector({n}, vv);
  Tensor c = Tensor::zeros({n}, DType::BF16);
  Tensor gp = to_gpu(p, DType::F32), gm = to_gpu(m, DType::F32), gv = to_gpu(v, DType::F32),
         gc = to_gpu(c, DType::BF16);
  const Tensor sel = Tensor::from_vector({3}, {0.0, 17.0, 36.0}, DType::I32);
  const Tensor gsel = sel.to(Device::CUDA);
  int64_t step = 0;
  // kind 0: whole tensors; 1: some rows; 2: NaN gradient; 3: infinite loss.
  for (int kind = 0; kind < 4; ++kind)
    for (double max_norm : {0.0, 10.0, 1e9}) {  // |g| is about 61: clipped at 10 only
      SCOPED_TRACE(::testing::Message() << "kind " << kind << " max_norm " << max_norm);
      Tensor g = randn({n}), losses = randn({5});
      if (kind == 2) g.data<float>()[123] = std::nanf("");
      if (kind == 3) losses.data<float>()[4] = INFINITY;
      Tensor gg = to_gpu(g, DType::F32), gl = to_gpu(losses, DType::F32);
      Tensor st = Tensor::zeros({4}, DType::F64), gst = Tensor::zeros({4}, DType::F64, Device::CUDA);
      for (auto [b, stats, grad, loss] : {std::tuple{&cpu(), &st, &g, &losses},
                                          std::tuple{&gpu(), &gst, &gg, &gl}}) {
        Tensor s0 = stats->slice(0, 1), s1 = stats->slice(1, 2);
        b->sum_squares_multi(s0, {grad});
        b->sum_squares_into(s1, *loss);
        b->clip_from_stats(*stats, max_norm);
      }
      const std::vector<double> want = st.to_vector(), got = gst.to(Device::CPU).to_vector();
      EXPECT_EQ(got[3], want[3]);
      EXPECT_EQ(want[3], kind >= 2 ? 1.0 : 0.0);
      if (kind < 2) {
        EXPECT_NEAR(got[0], want[0], 1e-6 * want[0]);
        const double norm = std::sqrt(got[0]);
        EXPECT_EQ(got[2], max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0);
        const double cpu_norm = std::sqrt(want[0]);
        EXPECT_EQ(want[2], max_norm > 0 && cpu_norm > max_norm ? max_norm / cpu_norm : 1.0);
      }
      const auto before = gp.to(Device::CPU).to_vector();
      ops::AdamWStep h;
      h.lr = 1e-2;
      h.beta2 = 0.95;
      h.step = ++step;
      h.grad_scale = 123.0;  // ignored: the stats decide
      ops::AdamWTensors ct{&p, &g, &m, &v, &c, 0.1}, gt{&gp, &gg, &gm, &gv, &gc, 0.1};
      Tensor cp = p.view({rows, cols}), cg = g.view({rows, cols}), cm = m.view({rows, cols}),
             cv = v.view({rows, cols}), cc = c.view({rows, cols});
      Tensor gp2 = gp.view({rows, cols}), gg2 = gg.view({rows, cols}), gm2 = gm.view({rows, cols}),
             gv2 = gv.view({rows, cols}), gc2 = gc.view({rows, cols});
      if (kind == 1) {
        ct = {&cp, &cg, &cm, &cv, &cc, 0.1, &sel};
        gt = {&gp2, &gg2, &gm2, &gv2, &gc2, 0.1, &gsel};
      }
      h.stats = &st;
      cpu().adamw_multi({ct}, h);
      h.stats = &gst;
      gpu().adamw_multi({gt}, h);
      EXPECT_GPU_CLOSE(gp, p, 1e-6);
      EXPECT_GPU_CLOSE(gm, m, 1e-6);
      EXPECT_GPU_CLOSE(gv, v, 1e-6);
      EXPECT_GPU_CLOSE(gc, c, 4e-3);
      if (kind >= 2) {
        EXPECT_EQ(gp.to(Device::CPU).to_vector(), before) << "a skipped step changed p";
      }
    }
}

}  // namespace
}  // namespace oft::testing
