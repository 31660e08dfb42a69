// Data-parallel training without GPUs: the arena layout and ZeRO-1 shards, and whole
// data-parallel training steps with W ranks as threads of this process (ThreadCommunicator),
// which must match one process training on the whole batch — DDP and ZeRO-1, with gradient
// accumulation, and with ZeRO-1 checkpoints that resume under another rank count. Also the
// rank environment, the NCCL-id rendezvous file and the errors of bad launches.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "dist/nccl_api.h"
#include "io/atomic_file.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "test_util.h"

using namespace oft;
namespace fs = std::filesystem;
using oft::testing::error_of;

namespace {

// W threads as ranks: every collective is a barrier-separated read phase (each rank computes
// its result from everyone's buffer) and write phase (each rank writes its own buffer).
struct ThreadGroup {
  explicit ThreadGroup(int n) : n(n), bar(n), slots(size_t(n), nullptr), host(size_t(n), nullptr) {}
  int n;
  std::barrier<> bar;
  std::vector<Tensor*> slots;
  std::vector<std::vector<double>*> host;
};

class ThreadCommunicator : public dist::Communicator {
 public:
  ThreadCommunicator(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.n; }
  void all_reduce_sum(Tensor& x) override {
    exchange(x, [&](std::vector<double>& out) {
      out.assign(size_t(x.numel()), 0.0);
      for (Tensor* t : g_.slots) {
        const auto v = t->to_vector();
        for (size_t i = 0; i < v.size(); ++i) out[i] += v[i];
      }
    });
  }
  void reduce_scatter_sum(Tensor& x) override {
    const int64_t n = x.numel() / g_.n;
    exchange(x, [&](std::vector<double>& out) {
      out = x.to_vector();
      for (int64_t i = rank_ * n; i < (rank_ + 1) * n; ++i) {
        double s = 0;
        for (Tensor* t : g_.slots) s += t->view({t->numel()}).slice(i, i + 1).item();
        out[size_t(i)] = s;
      }
    });
  }
  void all_gather(Tensor& x) override {
    const int64_t n = x.numel() / g_.n;
    exchange(x, [&](std::vector<double>& out) {
      out.assign(size_t(x.numel()), 0.0);
      for (int r = 0; r < g_.n; ++r) {
        const auto v = g_.slots[size_t(r)]->to_vector();
        for (int64_t i = r * n; i < (r + 1) * n; ++i) out[size_t(i)] = v[size_t(i)];
      }
    });
  }
  void broadcast(Tensor& x, int root) override {
    exchange(x, [&](std::vector<double>& out) { out = g_.slots[size_t(root)]->to_vector(); });
  }
  void all_reduce_host(std::vector<double>& v) override {
    g_.host[size_t(rank_)] = &v;
    g_.bar.arrive_and_wait();
    std::vector<double> s(v.size(), 0.0);
    for (auto* h : g_.host)
      for (size_t i = 0; i < s.size(); ++i) s[i] += (*h)[i];
    g_.bar.arrive_and_wait();
    v = s;
    g_.bar.arrive_and_wait();
  }

 private:
  template <class F>
  void exchange(Tensor& x, F compute) {
    g_.slots[size_t(rank_)] = &x;
    g_.bar.arrive_and_wait();
    std::vector<double> out;
    compute(out);
    g_.bar.arrive_and_wait();
    x.copy_from(Tensor::from_vector(x.shape(), out, x.dtype()));
    g_.bar.arrive_and_wait();
  }
  ThreadGroup& g_;
  int rank_;
};

ModelConfig tiny_model(const std::string& objective = "clm") {
  ModelConfig c;
  c.n_layer = 2;
  c.d_model = 8;
  c.n_head = 2;
  c.d_ff = 16;
  c.vocab_size = 13;
  c.max_seq_len = 6;
  c.init_std = 0.3;
  c.objective = objective;
  if (objective == "mlm") {
    c.block = "post_norm";
    c.embed_norm = true;
    c.type_vocab_size = 2;
  }
  return c;
}

TrainConfig adam_config() {
  TrainConfig t;
  t.lr = 1e-2;
  t.weight_decay = 0.1;
  return t;
}

// A deterministic global batch per step: tokens [B, T], targets [B, T] (MLM: some -1).
void make_batch(int64_t step, int64_t B, int64_t T, bool mlm, Tensor& tokens, Tensor& targets) {
  Rng rng(1234 + uint64_t(step));
  std::vector<double> tok, tg;
  for (int64_t i = 0; i < B * T; ++i) {
    tok.push_back(double(rng.next_u64() % 13));
    // Rank 1's rows of step 0 have no target at all in MLM: a rank with nothing to learn.
    const bool none = mlm && step == 0 && i >= B * T / 2;
    tg.push_back(mlm ? ((rng.next_u64() % 3 == 0 && !none) ? double(rng.next_u64() % 13) : -1.0)
                     : double(rng.next_u64() % 13));
  }
  tokens = Tensor::from_vector({B, T}, tok, DType::I32);
  targets = Tensor::from_vector({B, T}, tg, DType::I32);
}

int64_t count_targets(const Tensor& t) {
  int64_t n = 0;
  for (double v : t.to_vector()) n += v >= 0;
  return n;
}

// Trains `steps` steps of a global batch B (grad_accum micro-batches) on W thread ranks; returns
// rank 0's parameters and the gathered optimizer state. W = 0: one process, no DataParallel.
struct Outcome {
  std::vector<std::vector<double>> params;
  std::vector<std::pair<std::string, std::vector<double>>> moments;
  std::vector<double> losses, norms;
};

// `tokens`: tell DataParallel the global batch's token ids (else it reduces every row of the
// input-embedding gradient).
Outcome train_ranks(int W, bool zero1, int steps, int accum, const std::string& objective,
                    bool tokens = true, bool bf16_reduce = false) {
  const int64_t B = 4, T = 5;
  const bool mlm = objective == "mlm";
  Outcome out;
  auto run_rank = [&](dist::Communicator* comm, int rank, int world) {
    TransformerLM model(tiny_model(objective), DType::F64, Device::CPU, T);
    model.init_weights(7 + uint64_t(rank) * (comm ? 1 : 0));  // ranks differ until broadcast
    std::unique_ptr<dist::DataParallel> dp;
    if (comm) dp = std::make_unique<dist::DataParallel>(model, *comm, zero1, bf16_reduce);
    TrainConfig tc = adam_config();
    AdamW opt = dp ? dp->make_optimizer(tc) : AdamW(model.params(), tc);
    if (dp) dp->broadcast_parameters();
    const int64_t rows = B / world, r0 = rank * rows;
    for (int s = 0; s < steps; ++s) {
      model.params().zero_grad();
      double loss = 0;
      for (int m = 0; m < accum; ++m) {
        Tensor tok, tg;
        make_batch(s * accum + m, B, T, mlm, tok, tg);
        const int64_t global = count_targets(tg);
        const double l = model.forward(tok.slice(r0, r0 + rows), tg.slice(r0, r0 + rows),
                                       Tensor(), /*will_backward=*/true);
        loss += global ? l * double(model.counted_targets()) / double(global) / accum : 0.0;
        if (dp && tokens) dp->add_batch_tokens(tok.data<int32_t>(), B * T);
        if (dp) dp->before_backward(m + 1 == accum);
        model.backward(1.0 / accum, global);
        if (dp) dp->after_backward();
      }
      const double norm = dp ? dp->global_loss_and_grad_norm(loss, opt) : opt.grad_norm();
      opt.step(1e-2, 1.0);
      if (dp) dp->after_step();
      if (rank == 0) {
        out.losses.push_back(loss);
        out.norms.push_back(norm);
      }
    }
    if (dp) dp->gather_masters();
    auto moments = opt.sharded() ? dist::gather_optimizer_state(opt, *comm) : opt.state_tensors();
    if (rank == 0) {
      for (const Param& p : model.params().all()) out.params.push_back(p.value.to_vector());
      for (auto& [n, t] : moments) out.moments.emplace_back(n, t.to_vector());
    }
  };
  if (W == 0) {
    run_rank(nullptr, 0, 1);
    return out;
  }
  ThreadGroup g(W);
  std::vector<std::thread> th;
  for (int r = 0; r < W; ++r)
    th.emplace_back([&, r] {
      ThreadCommunicator c(g, r);
      run_rank(&c, r, W);
    });
  for (auto& t : th) t.join();
  return out;
}

// f64 throughout; the only differences are the summation order of the gradients. Adam divides
// by sqrt(v): a parameter whose gradient is ~1e-17 (round-off) moves by an arbitrary ~lr * 1e-9,
// so weights and moments are compared to 1e-9 (a wrong reduction shows up at ~lr = 1e-2).
constexpr double kTol = 1e-9;

void expect_same(const Outcome& a, const Outcome& b, double tol) {
  ASSERT_EQ(a.params.size(), b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i)
    for (size_t j = 0; j < a.params[i].size(); ++j)
      ASSERT_NEAR(a.params[i][j], b.params[i][j], tol) << "param " << i << " element " << j;
  ASSERT_EQ(a.moments.size(), b.moments.size());
  for (size_t i = 0; i < a.moments.size(); ++i) {
    ASSERT_EQ(a.moments[i].first, b.moments[i].first);
    for (size_t j = 0; j < a.moments[i].second.size(); ++j)
      ASSERT_NEAR(a.moments[i].second[j], b.moments[i].second[j], tol) << a.moments[i].first;
  }
  for (size_t i = 0; i < a.losses.size(); ++i) EXPECT_NEAR(a.losses[i], b.losses[i], 1e-12);
}

}  // namespace

TEST(ArenaLayout, BucketsAlignedChunksPartitionEveryParameter) {
  // 6 parameters: two of the head, two of block 1, one of block 0, one of the embedding end;
  // odd sizes.
  using A = dist::ArenaLayout;
  const std::vector<int64_t> elems{100, 3, 70, 1000, 1, 17};
  const std::vector<int> group{A::kHead, 1, 1, 0, A::kHead, A::kEnd};
  for (int W : {1, 2, 3, 8}) {
    const auto a = A::plan(elems, group, 2, W);
    ASSERT_EQ(a.buckets.size(), 4u);
    // Order: head, block 1, block 0, end.
    EXPECT_EQ(a.buckets[0].params, (std::vector<size_t>{0, 4}));
    EXPECT_EQ(a.buckets[1].params, (std::vector<size_t>{1, 2}));
    EXPECT_EQ(a.buckets[2].params, (std::vector<size_t>{3}));
    EXPECT_EQ(a.buckets[3].params, (std::vector<size_t>{5}));
    EXPECT_EQ(a.bucket_of_layer, (std::vector<size_t>{2, 1}));
    EXPECT_EQ(a.head_bucket, 0u);
    EXPECT_EQ(a.end_bucket, 3u);
    int64_t end = 0;
    for (const auto& b : a.buckets) {
      EXPECT_EQ(b.offset, end);
      EXPECT_EQ(b.size % (64 * W), 0);
      end = b.offset + b.size;
    }
    EXPECT_EQ(a.total, end);
    for (size_t i = 0; i < elems.size(); ++i) EXPECT_EQ(a.slot[i] % 64, 0);
    // Over all ranks, the owned ranges cover every element of every parameter exactly once.
    std::vector<std::vector<int>> hits(elems.size());
    for (size_t i = 0; i < elems.size(); ++i) hits[i].assign(size_t(elems[i]), 0);
    for (int r = 0; r < W; ++r)
      for (const auto& pr : a.owned_ranges(r, elems))
        for (int64_t e = pr.begin; e < pr.end; ++e) ++hits[pr.param][size_t(e)];
    for (const auto& h : hits)
      for (int c : h) ASSERT_EQ(c, 1) << "W=" << W;
  }
}

TEST(DataParallel, DdpMatchesOneProcessOnTheWholeBatch) {
  const Outcome one = train_ranks(0, false, 3, 1, "clm");
  expect_same(train_ranks(2, false, 3, 1, "clm"), one, kTol);
  expect_same(train_ranks(4, false, 3, 1, "clm"), one, kTol);
}

TEST(DataParallel, Zero1MatchesOneProcessOnTheWholeBatch) {
  const Outcome one = train_ranks(0, false, 3, 1, "clm");
  for (int W : {1, 2, 4}) {
    const Outcome z = train_ranks(W, true, 3, 1, "clm");
    expect_same(z, one, kTol);
    for (size_t i = 0; i < one.norms.size(); ++i) EXPECT_NEAR(z.norms[i], one.norms[i], 1e-12);
  }
}

TEST(DataParallel, AccumulationAndMaskedLmWithAnEmptyRank) {
  // MLM: targets per rank differ (rank 1 has none at step 0): the loss is weighted by the
  // global target count, so the result is still the whole-batch mean.
  const Outcome one = train_ranks(0, false, 2, 2, "mlm");
  expect_same(train_ranks(2, false, 2, 2, "mlm"), one, kTol);
  expect_same(train_ranks(2, true, 2, 2, "mlm"), one, kTol);
  expect_same(train_ranks(2, true, 2, 2, "mlm", false), one, kTol);
  expect_same(train_ranks(4, false, 2, 2, "clm", false), train_ranks(0, false, 2, 2, "clm"), kTol);
}

TEST(DataParallel, Bf16GradientReductionStaysCloseToF64) {
  // The buckets travel in bf16 (8 significant bits): after 3 AdamW steps at lr 1e-2 (a weight
  // moves by up to 3e-2) the weights stay within 2e-3 of the exact run; the largest differences
  // are where the ranks' gradients cancel, so their bf16 roundings dominate the sum.
  const Outcome one = train_ranks(0, false, 3, 1, "clm");
  for (bool zero1 : {false, true}) {
    const Outcome b = train_ranks(2, zero1, 3, 1, "clm", true, true);
    double max_diff = 0;
    for (size_t i = 0; i < one.params.size(); ++i)
      for (size_t j = 0; j < one.params[i].size(); ++j)
        max_diff = std::max(max_diff, std::abs(one.params[i][j] - b.params[i][j]));
    EXPECT_LT(max_diff, 2e-3) << (zero1 ? "ZeRO-1" : "DDP");
    EXPECT_GT(max_diff, 0.0) << "the bf16 path was not taken";
    for (size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(b.losses[i], one.losses[i], 1e-3);
  }
}

TEST(DataParallel, ArenaIsReleasedWithTheModelIntact) {
  ThreadGroup g(1);
  ThreadCommunicator c(g, 0);
  TransformerLM model(tiny_model(), DType::F64, Device::CPU, 5);
  model.init_weights(3);
  std::vector<std::vector<double>> before;
  for (const Param& p : model.params().all()) before.push_back(p.value.to_vector());
  {
    dist::DataParallel dp(model, c, true);
    for (size_t i = 0; i < before.size(); ++i)
      EXPECT_EQ(model.params().all()[i].value.to_vector(), before[i]);
  }
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_EQ(model.params().all()[i].value.to_vector(), before[i]);
  Tensor tok, tg;
  make_batch(0, 2, 5, false, tok, tg);
  EXPECT_TRUE(std::isfinite(model.forward(tok, tg)));
  model.backward(1.0);
}

TEST(DataParallel, ShardedOptimizerResumesFromAnyRankCount) {
  // A checkpoint of one process' optimizer, loaded into every shard of 3 ranks and gathered
  // back, gives the same moments: checkpoints do not depend on the GPU count.
  oft::testing::TempDir dir("dist_ckpt");
  TransformerLM model(tiny_model(), DType::F64, Device::CPU, 5);
  model.init_weights(5);
  TrainConfig tc = adam_config();
  AdamW full(model.params(), tc);
  Tensor tok, tg;
  make_batch(0, 4, 5, false, tok, tg);
  model.forward(tok, tg);
  model.backward(1.0);
  full.step(1e-2, 1.0);
  const std::string ck = save_checkpoint(dir.path.string(), 1, model, &full, nlohmann::json::object(), 1);
  const auto want = full.state_tensors();
  ThreadGroup g(3);
  std::vector<std::vector<std::pair<std::string, Tensor>>> got(3);
  std::vector<std::thread> th;
  for (int r = 0; r < 3; ++r)
    th.emplace_back([&, r] {
      ThreadCommunicator c(g, r);
      TransformerLM m(tiny_model(), DType::F64, Device::CPU, 5);
      dist::DataParallel dp(m, c, true);
      AdamW opt(m.params(), tc, dp.owned_ranges());
      load_optimizer_state(ck, opt);
      got[size_t(r)] = dist::gather_optimizer_state(opt, c);
    });
  for (auto& t : th) t.join();
  ASSERT_EQ(got[0].size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[0][i].first, want[i].first);
    EXPECT_EQ(got[0][i].second.to_vector(), want[i].second.to_vector()) << want[i].first;
  }
}

TEST(DistEnv, ReadsLauncherAndMpiVariablesAndRejectsBadOnes) {
  auto clear = [] {
    for (const char* v : {"OFT_RANK", "OFT_WORLD_SIZE", "OFT_LOCAL_RANK", "OFT_RENDEZVOUS",
                          "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                          "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_NAMESPACE"})
      unsetenv(v);
  };
  clear();
  EXPECT_FALSE(dist::dist_env_from_environment().distributed);
  setenv("OFT_WORLD_SIZE", "4", 1);
  setenv("OFT_RANK", "2", 1);
  setenv("OFT_RENDEZVOUS", "/tmp/x", 1);
  auto e = dist::dist_env_from_environment();
  EXPECT_TRUE(e.distributed);
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.rendezvous, "/tmp/x");
  setenv("OFT_RANK", "4", 1);
  EXPECT_NE(error_of([] { dist::dist_env_from_environment(); }).find("not below"),
            std::string::npos);
  setenv("OFT_RANK", "two", 1);
  EXPECT_NE(error_of([] { dist::dist_env_from_environment(); }).find("OFT_RANK=two"),
            std::string::npos);
  clear();
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  EXPECT_NE(error_of([] { dist::dist_env_from_environment(); }).find("OFT_RENDEZVOUS"),
            std::string::npos);
  setenv("PMIX_NAMESPACE", "prterun-host-123@1", 1);
  e = dist::dist_env_from_environment();
  EXPECT_EQ(e.rank, 1);
  EXPECT_NE(e.rendezvous.find("oft-rendezvous-prterun_host_123_1"), std::string::npos);
  clear();
}

TEST(Rendezvous, IdRoundTripsAndBadFilesAreNamed) {
  oft::testing::TempDir dir("dist_rdv");
  dist::NcclUniqueId id{};
  for (size_t i = 0; i < sizeof(id.internal); ++i) id.internal[i] = static_cast<char>(i * 7);
  const std::string path = dir.file("id");
  dist::publish_unique_id(path, id);
  const dist::NcclUniqueId back = dist::wait_for_unique_id(path, 1.0);
  EXPECT_EQ(std::string(back.internal, 128), std::string(id.internal, 128));
  write_file_atomic(path, "abc\n");
  EXPECT_NE(error_of([&] { dist::wait_for_unique_id(path, 1.0); }).find(path), std::string::npos);
  write_file_atomic(path, std::string(256, 'g'));
  EXPECT_NE(error_of([&] { dist::wait_for_unique_id(path, 1.0); }).find("hex digit"),
            std::string::npos);
  const std::string msg = error_of([&] { dist::wait_for_unique_id(dir.file("none"), 0.05); });
  EXPECT_NE(msg.find("rank 0"), std::string::npos);
}

TEST(Nccl, MissingLibraryErrorSaysHowToInstallIt) {
  setenv("OFT_NCCL_LIBRARY", "/nonexistent/libnccl.so.2", 1);
  const std::string msg = error_of([] { dist::nccl(); });
  unsetenv("OFT_NCCL_LIBRARY");
  EXPECT_NE(msg.find("/nonexistent/libnccl.so.2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("OFT_NCCL_LIBRARY"), std::string::npos) << msg;
}
