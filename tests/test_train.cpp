// End-to-end training on the embedded corpus: the validation loss falls, checkpoints round-trip,
// a split run resumes bit-exactly, and damaged checkpoints / runs are refused clearly.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/resources.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "core/rng.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/step_graph.h"
#include "train/trainer.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::error_of;
using oft::testing::prepare_moby;

namespace {

class TrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = (fs::temp_directory_path() / ("oft_train_" + std::to_string(::getpid()))).string();
    fs::create_directories(root_);
    prepare_moby(root_ + "/data", resource_path("data/tokenizers/moby_sp2k/moby_sp2k.model"), 400000);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A small model that trains in seconds.
  static std::vector<std::string> small(const std::string& run) {
    return {"model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.d_ff=256",
            "model.max_seq_len=64", "data.seq_len=64", "data.train=" + root_ + "/data/train.bin",
            "data.val=" + root_ + "/data/val.bin", "train.batch_size=8", "train.warmup_steps=4",
            "train.eval_every=0", "train.eval_batches=4", "train.log_every=1",
            "run.dir=" + root_ + "/" + run};
  }
  static std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  static std::vector<double> train_losses(const std::string& run) {
    std::vector<double> r;
    std::ifstream in(root_ + "/" + run + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) r.push_back(j["loss"].get<double>());
    }
    return r;
  }
  static inline std::string root_;
};

TEST_F(TrainTest, ValidationLossFallsWellBelowItsStart) {
  RunConfig cfg;
  cfg.load("tiny", with(small("falls"), {"train.steps=120", "train.lr=3e-3",
                                          "train.eval_every=50"}));
  TrainResult r = train(cfg, true);
  // Uniform guessing over 2048 pieces is ln(2048) = 7.62 nats.
  EXPECT_NEAR(r.initial_val.loss, std::log(2048.0), 0.3);
  EXPECT_LT(r.final_val.loss, r.initial_val.loss - 1.0)
      << r.initial_val.loss << " -> " << r.final_val.loss;
  EXPECT_TRUE(fs::exists(root_ + "/falls/config.yaml"));
  EXPECT_EQ(train_losses("falls").size(), 120u);
  // Steps are booked a step late (while the next one runs), yet the log stays in step order
  // and each evaluation follows its step's record.
  std::ifstream in(root_ + "/falls/metrics.jsonl");
  std::string line;
  int64_t last_step = -1;
  int evals = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const int64_t s = j.at("step").get<int64_t>();
    if (j.contains("val_loss")) {
      EXPECT_EQ(s, last_step == -1 ? 0 : last_step) << line;  // after its step's own line
      ++evals;
    } else {
      EXPECT_EQ(s, last_step + 1) << line;
    }
    last_step = std::max<int64_t>(last_step, s);
  }
  EXPECT_EQ(evals, 4);  // steps 0, 50, 100 and the last
}

TEST_F(TrainTest, SplitRunResumesBitExactly) {
  const auto base = std::vector<std::string>{"train.steps=8", "train.grad_accum=2", "train.seed=7"};
  {
    RunConfig a;
    a.load("tiny", with(small("straight"), base));
    train(a, true);
  }
  {
    RunConfig b;
    b.load("tiny", with(small("split"), with(base, {"train.stop_at=4"})));
    train(b, true);
  }
  EXPECT_EQ(train_losses("split").size(), 4u);
  {
    RunConfig b;
    b.load("tiny", with(small("split"), with(base, {"train.resume=true"})));
    train(b, true);
  }
  const auto la = train_losses("straight"), lb = train_losses("split");
  ASSERT_EQ(la.size(), 8u);
  EXPECT_EQ(la, lb);  // exact equality, not a tolerance
  const std::string ca = find_checkpoint(root_ + "/straight"), cb = find_checkpoint(root_ + "/split");
  EXPECT_EQ(crc32_file(ca + "/model.safetensors"), crc32_file(cb + "/model.safetensors"));
  EXPECT_EQ(crc32_file(ca + "/optimizer.safetensors"), crc32_file(cb + "/optimizer.safetensors"));
}

TEST_F(TrainTest, CheckpointRoundTripGivesIdenticalModel) {
  RunConfig cfg;
  cfg.load("tiny", with(small("roundtrip"), {"train.steps=5"}));
  train(cfg, true);
  const std::string ckpt = find_checkpoint(root_ + "/roundtrip");
  RunConfig c2;
  auto model = load_model_from_checkpoint(ckpt, c2, {});
  EXPECT_EQ(c2.model.n_layer, 2);
  EXPECT_EQ(c2.model.vocab_size, 2048);
  auto val = std::make_shared<const Shard>(Shard::open(c2.data.val));
  auto m2 = load_model_from_checkpoint(ckpt, c2, {});
  LoaderOptions lo = loader_options(c2, c2.data.val);
  lo.batch_size = 4;
  EXPECT_EQ(evaluate(*model, val, lo, 2).loss, evaluate(*m2, val, lo, 2).loss);
  // The weights equal what the file holds, bit for bit.
  std::vector<std::pair<std::string, Tensor>> w;
  for (auto& p : model->params().all()) w.emplace_back(p.name, p.value);
  EXPECT_EQ(crc32_hex(crc32_bytes(serialize_safetensors(w, {{"format", "oft"}, {"step", "5"}}).data(),
                                  serialize_safetensors(w, {{"format", "oft"}, {"step", "5"}}).size())),
            crc32_hex(crc32_file(ckpt + "/model.safetensors")));
}

TEST_F(TrainTest, DamagedCheckpointsAreRefused) {
  RunConfig cfg;
  cfg.load("tiny", with(small("damaged"), {"train.steps=2"}));
  train(cfg, true);
  const std::string ckpt = find_checkpoint(root_ + "/damaged");
  const std::string model_file = ckpt + "/model.safetensors";
  const std::string original = read_file(model_file);
  // Truncated file.
  write_file_atomic(model_file, original.substr(0, original.size() / 2));
  EXPECT_NE(error_of([&] { read_checkpoint_state(ckpt); }).find("truncated or replaced"),
            std::string::npos);
  // Same size, one byte flipped.
  std::string flipped = original;
  flipped[flipped.size() - 3] ^= 0x5a;
  write_file_atomic(model_file, flipped);
  EXPECT_NE(error_of([&] { read_checkpoint_state(ckpt); }).find("checksum mismatch"),
            std::string::npos);
  write_file_atomic(model_file, original);
  EXPECT_NO_THROW(read_checkpoint_state(ckpt));
  // A model of another shape.
  RunConfig other;
  const std::string e = error_of([&] { load_model_from_checkpoint(ckpt, other, {"model.d_ff=128"}); });
  EXPECT_NE(e.find("has shape [256, 64] but the model expects [128, 64]"), std::string::npos) << e;
  // Broken state.json and a dangling `latest`.
  write_file_atomic(ckpt + "/state.json", "{not json");
  EXPECT_NE(error_of([&] { read_checkpoint_state(ckpt); }).find("not valid JSON"), std::string::npos);
  write_file_atomic(root_ + "/damaged/checkpoints/latest", "step_99999999\n");
  EXPECT_NE(error_of([&] { find_checkpoint(root_ + "/damaged"); }).find("missing or incomplete"),
            std::string::npos);
  EXPECT_NE(error_of([&] { find_checkpoint(root_ + "/nope"); }).find("no such run"), std::string::npos);
}

TEST_F(TrainTest, ExistingRunNeedsResumeAndMissingShardsAreExplained) {
  RunConfig cfg;
  cfg.load("tiny", with(small("exists"), {"train.steps=1"}));
  train(cfg, true);
  RunConfig again;
  again.load("tiny", with(small("exists"), {"train.steps=1"}));
  EXPECT_NE(error_of([&] { train(again, true); }).find("train.resume=true"), std::string::npos);
  RunConfig missing;
  missing.load("tiny", with(small("missing"), {"data.train=/nonexistent/train.bin"}));
  const std::string e = error_of([&] { train(missing, true); });
  EXPECT_NE(e.find("data.train=/nonexistent/train.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("oft data prepare"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(root_ + "/missing/checkpoints"));
}

// Non-finite steps end to end. A learning rate of 1e38 (set past the config's range check)
// makes the first update overflow the next forward, so every later step's loss is NaN. With
// train.nonfinite=skip those steps are logged as skipped and their updates not applied: the
// final weights are the first step's, bit for bit, and the run still evaluates and saves at its
// end. With stop the run fails naming the step.
TEST_F(TrainTest, NonFiniteStepsAreSkippedOrStopTheRun) {
  auto run = [&](const std::string& name, std::vector<std::string> extra) {
    RunConfig cfg;
    cfg.load("tiny", with(small(name), with({"train.warmup_steps=0", "train.schedule=constant"},
                                            extra)));
    cfg.train.lr = 1e38;
    return train(cfg, true);
  };
  run("nf_one", {"train.steps=1"});
  const TrainResult r = run("nf_skip", {"train.steps=4", "train.nonfinite=skip",
                                        "train.max_skipped=5"});
  EXPECT_EQ(r.steps, 4);
  EXPECT_EQ(train_losses("nf_skip").size(), 1u);
  int skipped = 0;
  {
    std::ifstream in(root_ + "/nf_skip/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) skipped += nlohmann::json::parse(line).value("skipped", false);
  }
  EXPECT_EQ(skipped, 3);
  const std::string one = find_checkpoint(root_ + "/nf_one"), skip = find_checkpoint(root_ + "/nf_skip");
  const SafetensorsFile fa = SafetensorsFile::open(one + "/model.safetensors"),
                        fb = SafetensorsFile::open(skip + "/model.safetensors");
  ASSERT_EQ(fa.names(), fb.names());
  for (const std::string& n : fa.names()) {  // bytes: the overflowed weights hold inf and NaN
    const Tensor ta = fa.load(n), tb = fb.load(n);
    ASSERT_EQ(ta.nbytes(), tb.nbytes()) << n;
    EXPECT_EQ(std::memcmp(ta.raw(), tb.raw(), ta.nbytes()), 0) << n;
  }
  EXPECT_EQ(read_checkpoint_state(skip).value("skipped_steps", 0), 3);
  const std::string e = error_of([&] { run("nf_stop", {"train.steps=4"}); });
  EXPECT_NE(e.find("step 2: loss is not finite"), std::string::npos) << e;
  const std::string many = error_of([&] {
    run("nf_many", {"train.steps=6", "train.nonfinite=skip", "train.max_skipped=2"});
  });
  EXPECT_NE(many.find("train.max_skipped=2"), std::string::npos) << many;
}

// CUDA graphs of the step are GPU-only: on the CPU the graph says why it is off and leaves every
// step to the caller (the GPU behaviour is tested in tests/cuda/test_cuda_graph.cpp).
TEST(StepGraph, OffOnTheCpuAndWhenDisabled) {
  RunConfig cfg;
  cfg.load("tiny", {"model.n_layer=1", "model.vocab_size=32"});
  EXPECT_TRUE(cfg.train.cuda_graph);  // on by default where it applies
  TransformerLM model(cfg.model, DType::F32, Device::CPU, cfg.data.seq_len);
  StepGraph graph(model, true, false);
  EXPECT_FALSE(graph.active());
  EXPECT_NE(graph.why_off().find("not on the GPU"), std::string::npos) << graph.why_off();
  Tensor tok = Tensor::zeros({1, 4}, DType::I32), tgt = Tensor::zeros({1, 4}, DType::I32);
  EXPECT_FALSE(graph.run(tok, tgt, Tensor(), 1.0, 4));
  EXPECT_EQ(graph.replays(), 0);
  EXPECT_NE(StepGraph(model, false, false).why_off().find("train.cuda_graph=false"),
            std::string::npos);
  RunConfig off;
  off.load("tiny", {"train.cuda_graph=false"});
  EXPECT_FALSE(off.train.cuda_graph);
  RunConfig bad;
  try {
    bad.load("tiny", {"train.cuda_graph=sometimes"});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.cuda_graph"), std::string::npos) << e.what();
  }
}

// train.overlap_update: the forward's stages put every parameter before its first reader, and an
// update queued in stages, with the token embedding split into a batch's rows and the others,
// changes the parameters and moments exactly as the one-launch update (on the CPU the stages run
// in order; the GPU's overlap is tested in test_cuda_graph.cpp).
TEST(OverlapUpdate, StagesCoverEveryParameterAndMatchTheOneLaunchUpdate) {
  RunConfig cfg;
  cfg.load("tiny", {"model.n_layer=3", "model.vocab_size=40", "data.seq_len=8"});
  EXPECT_FALSE(cfg.train.overlap_update);  // opt-in for now
  TransformerLM a(cfg.model, DType::F32, Device::CPU, 8), b(cfg.model, DType::F32, Device::CPU, 8);
  ASSERT_EQ(a.update_stages(), 5);
  for (const Param& p : a.params().all()) {
    const int s = a.update_stage(p.name);
    if (p.name.starts_with("h.")) {
      EXPECT_EQ(s, std::stoi(p.name.substr(2)) + 1) << p.name;
    } else if (p.name.starts_with("ln_f.")) {
      EXPECT_EQ(s, 4) << p.name;
    } else {
      EXPECT_EQ(s, 0) << p.name;  // embeddings: before the first block
    }
  }
  a.init_weights(3);
  b.init_weights(3);
  cfg.train.lr = 1e-2;
  cfg.train.weight_decay = 0.1;
  AdamW oa(a.params(), cfg.train), ob(b.params(), cfg.train);
  // On the CPU the trainer's switch leaves the one-launch update; the stages are set by hand.
  EXPECT_FALSE(overlap_update(b, ob, true));
  std::vector<int> stage_of;
  for (const Param& p : b.params().all()) stage_of.push_back(b.update_stage(p.name));
  ob.set_update_stages(stage_of, b.update_stages());
  EXPECT_TRUE(ob.overlapped());
  Rng rng(5);
  for (int step = 0; step < 3; ++step) {
    std::vector<double> tok(16), tgt(16);
    for (auto& v : tok) v = double(rng.next_u64() % 40);
    for (auto& v : tgt) v = double(rng.next_u64() % 40);
    const Tensor t = Tensor::from_vector({2, 8}, tok, DType::I32);
    const Tensor g = Tensor::from_vector({2, 8}, tgt, DType::I32);
    for (auto [m, o] : {std::pair{&a, &oa}, std::pair{&b, &ob}}) {
      m->params().zero_grad();
      m->forward(t, g, Tensor(), true);
      m->backward(1.0);
      if (step < 2) {  // b: this batch's embedding rows, then the rest
        const EmbeddingRows rows = embedding_rows(*m, *o, t);
        if (m == &b) {
          ASSERT_EQ(rows.param, 0u);  // wte.weight, the first parameter
          std::set<double> distinct(tok.begin(), tok.end());
          EXPECT_EQ(rows.first.to_vector(), std::vector<double>(distinct.begin(), distinct.end()));
          EXPECT_EQ(rows.first.numel() + rows.rest.numel(), 40);
        } else {
          EXPECT_EQ(rows.param, static_cast<size_t>(-1));  // not overlapped: nothing to split
        }
        rows.apply(*o);
      }
      o->step(1e-2, 0.7);
    }
  }
  for (size_t i = 0; i < a.params().all().size(); ++i) {
    const Param &pa = a.params().all()[i], &pb = b.params().all()[i];
    EXPECT_EQ(pa.value.to_vector(), pb.value.to_vector()) << pa.name;
    EXPECT_EQ(oa.m(i).to_vector(), ob.m(i).to_vector()) << pa.name;
    EXPECT_EQ(oa.v(i).to_vector(), ob.v(i).to_vector()) << pa.name;
  }
  std::vector<int> short_list(stage_of.begin(), stage_of.end() - 1);
  EXPECT_THROW(ob.set_update_stages(short_list, b.update_stages()), Error);
  RunConfig on;
  on.load("tiny", {"train.overlap_update=true"});
  EXPECT_TRUE(on.train.overlap_update);
}

// The step's statistics on the device (AdamW::finish_stats / step_with_stats, what one process
// trains with): the same sum of squares and clipping factor as the host's grad_norm() and
// formula, the same update bit for bit, and a step with a non-finite gradient or loss leaves
// every parameter and moment as it was.
TEST(DeviceStats, MatchTheHostClippingAndSkipNonFiniteSteps) {
  RunConfig cfg;
  cfg.load("tiny", {"model.n_layer=2", "model.vocab_size=40", "data.seq_len=8"});
  cfg.train.grad_clip = 0.05;  // small enough to clip every step
  cfg.train.weight_decay = 0.1;
  TransformerLM a(cfg.model, DType::F32, Device::CPU, 8), b(cfg.model, DType::F32, Device::CPU, 8);
  a.init_weights(4);
  b.init_weights(4);
  AdamW oa(a.params(), cfg.train), ob(b.params(), cfg.train);
  Rng rng(6);
  auto batch = [&] {
    std::vector<double> v(16);
    for (auto& x : v) x = double(rng.next_u64() % 40);
    return Tensor::from_vector({2, 8}, v, DType::I32);
  };
  auto snapshot = [](const TransformerLM& m, const AdamW& o) {
    std::vector<std::vector<double>> r;
    for (size_t i = 0; i < m.params().all().size(); ++i) {
      r.push_back(m.params().all()[i].value.to_vector());
      r.push_back(o.m(i).to_vector());
      r.push_back(o.v(i).to_vector());
    }
    return r;
  };
  for (int step = 0; step < 3; ++step) {
    const Tensor t = batch(), g = batch();
    a.params().zero_grad();
    a.forward(t, g, Tensor(), true);
    a.backward(1.0);
    const double ss = oa.grad_sum_squares(), gnorm = std::sqrt(ss);
    EXPECT_EQ(gnorm, oa.grad_norm());
    const double clip = gnorm > cfg.train.grad_clip ? cfg.train.grad_clip / gnorm : 1.0;
    EXPECT_LT(clip, 1.0);
    oa.step(1e-2, clip);

    b.params().zero_grad();
    ob.begin_stats();
    b.forward(t, g, Tensor(), true);
    ob.add_loss_stats(b.row_losses());
    b.backward(1.0);
    const std::vector<double> st = ob.finish_stats(cfg.train.grad_clip).to_vector();
    EXPECT_EQ(st[0], ss) << "step " << step;
    EXPECT_GT(st[1], 0.0);
    EXPECT_EQ(st[2], clip);
    EXPECT_EQ(st[3], 0.0);
    ob.step_with_stats(1e-2);
  }
  EXPECT_EQ(snapshot(a, oa), snapshot(b, ob));
  EXPECT_EQ(ob.steps_taken(), 3);

  // A NaN gradient, then an infinite loss with finite gradients: nothing changes but the
  // step count (the bias correction moves on, as the host's skipped step does).
  for (int kind = 0; kind < 2; ++kind) {
    SCOPED_TRACE(kind ? "infinite loss" : "NaN gradient");
    const auto before = snapshot(b, ob);
    const Tensor t = batch(), g = batch();
    b.params().zero_grad();
    ob.begin_stats();
    b.forward(t, g, Tensor(), true);
    if (kind == 1) {
      ob.add_loss_stats(Tensor::from_vector({2}, {1.0, INFINITY}));
    } else {
      ob.add_loss_stats(b.row_losses());
    }
    b.backward(1.0);
    if (kind == 0) b.params().all()[1].grad.data<float>()[0] = std::nanf("");
    const std::vector<double> st = ob.finish_stats(cfg.train.grad_clip).to_vector();
    EXPECT_EQ(st[3], 1.0);
    ob.step_with_stats(1e-2);
    EXPECT_EQ(snapshot(b, ob), before);
  }
  EXPECT_EQ(ob.steps_taken(), 5);

  // The clipping factor alone: no clipping at max_norm 0 or below the limit.
  Tensor st = Tensor::from_vector({4}, {16.0, 1.0, 0.0, 0.0}, DType::F64);
  ops::on(st).clip_from_stats(st, 0.0);
  EXPECT_EQ(st.to_vector(), (std::vector<double>{16.0, 1.0, 1.0, 0.0}));
  ops::on(st).clip_from_stats(st, 5.0);
  EXPECT_EQ(st.to_vector()[2], 1.0);
  ops::on(st).clip_from_stats(st, 2.0);
  EXPECT_EQ(st.to_vector()[2], 0.5);
}

TEST(NonFiniteGuard, StopsOrSkipsByPolicy) {
  TrainConfig t;
  t.nonfinite = "stop";
  NonFiniteGuard stop(t, 0);
  EXPECT_FALSE(stop.skip_step(1, 2.5, 1.0));
  try {
    stop.skip_step(7, std::nan(""), 1.0);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 7: loss is not finite"), std::string::npos) << e.what();
  }
  t.nonfinite = "skip";
  t.max_skipped = 2;
  NonFiniteGuard skip(t, 1);  // one already skipped before a resume
  EXPECT_TRUE(skip.skip_step(3, 1.0, INFINITY));
  EXPECT_EQ(skip.skipped(), 2);
  t.max_skipped = 5;
  NonFiniteGuard flagged(t, 0);  // finite figures, but the device's check flagged the step
  EXPECT_FALSE(flagged.skip_step(2, 1.0, 1.0, false));
  EXPECT_TRUE(flagged.skip_step(3, 1.0, 1.0, true));
  EXPECT_EQ(flagged.skipped(), 1);
  try {
    skip.skip_step(4, std::nan(""), 1.0);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.max_skipped=2"), std::string::npos) << e.what();
  }
}

}  // namespace
