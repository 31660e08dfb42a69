// Training loop and evaluation (see trainer.h).
#include "train/trainer.h"

#include <omp.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "analysis/collect.h"
#include "data/loader.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "io/atomic_file.h"
#include "io/metrics.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/step_graph.h"

extern "C" void openblas_set_num_threads(int);

namespace fs = std::filesystem;

namespace oft {

namespace {

using Clock = std::chrono::steady_clock;

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof(buf), "%ld:%02ld", t / 60, t % 60);
  return buf;
}

std::shared_ptr<const Shard> open_shard(const std::string& path, const char* key) {
  OFT_CHECK(fs::exists(path), key, "=", path, ": shard not found; create it with "
                                              "`oft data prepare` (see README)");
  return std::make_shared<const Shard>(Shard::open(path));
}

}  // namespace

Device parse_device(const std::string& d) {
  if (d == "cuda") {
    OFT_CHECK(ops::cuda_available(), "train.device=cuda: ", ops::cuda_unavailable_reason(),
              "; use train.device=cpu (or auto)");
    return Device::CUDA;
  }
  if (d == "auto") return ops::cuda_available() ? Device::CUDA : Device::CPU;
  return Device::CPU;
}

DType compute_dtype(const TrainConfig& t, Device device) {
  if (t.precision == "bf16") {
    OFT_CHECK(device == Device::CUDA, "train.precision=bf16 needs the GPU (train.device=cuda); "
                                      "the CPU backend computes in f32: use train.precision=auto");
    return DType::BF16;
  }
  if (t.precision == "f32") return DType::F32;
  return device == Device::CUDA ? DType::BF16 : DType::F32;
}

void set_cpu_threads(int64_t threads) {
  // 0 = OMP_NUM_THREADS when set, else every core.
  const int n = threads > 0 ? static_cast<int>(threads)
                            : (std::getenv("OMP_NUM_THREADS") ? omp_get_max_threads()
                                                              : omp_get_num_procs());
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

bool NonFiniteGuard::skip_step(int64_t step, double loss, double grad_norm, bool flagged) {
  if (std::isfinite(loss) && std::isfinite(grad_norm) && !flagged) return false;
  const std::string what = !std::isfinite(loss)        ? "loss is not finite"
                           : !std::isfinite(grad_norm) ? "gradient norm is not finite"
                                                       : "a per-row loss is above 1e19";
  OFT_CHECK(skip_, "step ", step, ": ", what,
            "; stopping (train.nonfinite=stop). Lower train.lr, raise "
            "train.warmup_steps, or set train.nonfinite=skip");
  ++skipped_;
  OFT_CHECK(skipped_ <= max_, "step ", step, ": ", skipped_,
            " steps skipped for non-finite values (train.max_skipped=", max_,
            "): the run is diverging; lower train.lr");
  return true;
}

LoaderOptions loader_options(const RunConfig& cfg, const std::string& shard_path) {
  LoaderOptions lo;
  lo.batch_size = static_cast<size_t>(cfg.train.batch_size);
  lo.seq_len = static_cast<size_t>(cfg.data.seq_len);
  lo.seed = static_cast<uint64_t>(cfg.train.seed);
  if (cfg.model.objective == "mlm") {
    lo.objective = Objective::MaskedLM;
    const fs::path meta = fs::path(shard_path).parent_path() / "meta.json";
    OFT_CHECK(fs::exists(meta), shard_path, ": masked-LM training needs the meta.json that `oft "
              "data prepare` writes beside the shard (it names the [MASK] and special tokens)");
    lo.mlm = mlm_options_from_meta(meta.string());
    lo.mlm.mask_prob = cfg.data.mlm_probability;
    lo.pack = cfg.data.pack;
  }
  return lo;
}

EvalResult evaluate(TransformerLM& model, std::shared_ptr<const Shard> val, LoaderOptions lo,
                    int64_t max_batches) {
  int64_t B = static_cast<int64_t>(lo.batch_size);
  const int64_t T = static_cast<int64_t>(lo.seq_len);
  lo.mode = LoaderMode::Eval;
  TokenLoader loader(val, lo);
  int64_t n = static_cast<int64_t>(loader.batches_per_epoch());
  if (n == 0) {
    // A validation shard smaller than one batch: evaluate it as one shorter batch.
    lo.batch_size = std::max<size_t>(1, loader.windows_per_epoch());
    loader = TokenLoader(val, lo);
    n = 1;
    B = static_cast<int64_t>(lo.batch_size);
  }
  if (max_batches > 0) n = std::min(n, max_batches);
  Tensor in = Tensor::empty({B, T}, DType::I32), tg = Tensor::empty({B, T}, DType::I32);
  Tensor mask = Tensor::empty({B, T}, DType::I32);
  const bool use_mask = lo.objective == Objective::MaskedLM && !lo.pack;
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    loader.next_batch(in.data<int32_t>(), tg.data<int32_t>(), mask.data<int32_t>());
    const double l = model.forward(in.to(model.device()), tg.to(model.device()),
                                   use_mask ? mask.to(model.device()) : Tensor());
    sum += l * double(model.counted_targets());
    count += model.counted_targets();
  }
  EvalResult r;
  r.tokens = count;
  r.loss = count ? sum / double(count) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

std::unique_ptr<TransformerLM> load_model_from_checkpoint(
    const std::string& ckpt_dir, RunConfig& cfg, const std::vector<std::string>& overrides) {
  const nlohmann::json state = read_checkpoint_state(ckpt_dir);
  OFT_CHECK(state.contains("config") && state["config"].is_object(), ckpt_dir,
            "/state.json: no config recorded");
  for (const auto& [k, v] : state["config"].items())
    cfg.registry().set(k, v.is_string() ? v.get<std::string>() : v.dump(), ckpt_dir + "/state.json");
  cfg.registry().apply_overrides(overrides);
  cfg.validate();
  set_cpu_threads(cfg.train.threads);
  const Device device = parse_device(cfg.train.device);
  auto model = std::make_unique<TransformerLM>(cfg.model, compute_dtype(cfg.train, device), device,
                                               cfg.data.seq_len);
  load_model_weights(ckpt_dir, *model);
  return model;
}

bool overlap_update(TransformerLM& model, AdamW& opt, bool on) {
  on = on && model.device() == Device::CUDA && !opt.sharded();
  ops::compute_wait_update();  // whatever runs next is ordered after an update in flight
  std::vector<int> stage_of;
  if (on)
    for (const Param& p : model.params().all()) stage_of.push_back(model.update_stage(p.name));
  opt.set_update_stages(std::move(stage_of), model.update_stages());
  model.wait_for_update(on);
  return on;
}

EmbeddingRows embedding_rows(const TransformerLM& model, const AdamW& opt, const Tensor& tokens) {
  EmbeddingRows r;
  if (!opt.overlapped()) return r;
  const auto& ps = model.params().all();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (&ps[i] != &model.token_embedding()) continue;
    const int64_t V = ps[i].value.dim(0);
    std::vector<char> seen(static_cast<size_t>(V), 0);
    const int32_t* t = tokens.data<int32_t>();
    for (int64_t k = 0; k < tokens.numel(); ++k)
      if (t[k] >= 0 && t[k] < V) seen[static_cast<size_t>(t[k])] = 1;
    std::vector<double> first, rest;
    for (int64_t row = 0; row < V; ++row)
      (seen[static_cast<size_t>(row)] ? first : rest).push_back(double(row));
    const Device d = ps[i].value.device();
    auto upload = [&](const std::vector<double>& v) {
      return Tensor::from_vector({int64_t(v.size())}, v, DType::I32).to(d);
    };
    r.param = i;
    r.first = upload(first);
    r.rest = upload(rest);
    break;
  }
  return r;
}

void EmbeddingRows::apply(AdamW& opt) const {
  if (param != static_cast<size_t>(-1)) opt.split_next_update(param, first, rest);
}

TrainResult train(RunConfig& cfg, bool quiet) {
  set_cpu_threads(cfg.train.threads);
  const TrainConfig& tc = cfg.train;
  const int64_t B = tc.batch_size, T = cfg.data.seq_len;
  // Data parallelism: set by `oft train --gpus N` or mpirun. Rank r computes rows
  // [r*B/W, (r+1)*B/W) of every global batch; rank 0 alone evaluates, logs and saves.
  const dist::DistEnv denv = dist::dist_env_from_environment();
  const int W = denv.world, rank = denv.rank;
  OFT_CHECK(B % W == 0, "train.batch_size=", B, " is the global batch and must split evenly "
            "over the ", W, " GPUs: use a multiple of ", W);
  if (denv.distributed) {
    OFT_CHECK(tc.device != "cpu", "train.device=cpu with ", W, " ranks: data-parallel training "
              "runs one process per GPU; drop --gpus / mpirun or use train.device=cuda");
    ops::select_cuda_device(denv.local_rank);
  }
  OFT_CHECK(tc.zero_stage == 0 || denv.distributed, "train.zero_stage=", tc.zero_stage,
            " shards the optimizer over GPUs: launch with --gpus N (or mpirun), or set "
            "train.zero_stage=0");
  if (rank != 0) quiet = true;
  // Device and precision first: a wrong one fails before any data is read.
  const Device device = parse_device(tc.device);
  OFT_CHECK(!denv.distributed || device == Device::CUDA, "multi-GPU training needs the GPU: ",
            ops::cuda_unavailable_reason());
  const DType dtype = compute_dtype(tc, device);
  auto train_shard = open_shard(cfg.data.train, "data.train");
  auto val_shard = open_shard(cfg.data.val, "data.val");
  OFT_CHECK(train_shard->vocab_size() == val_shard->vocab_size(), "data.train (vocabulary ",
            train_shard->vocab_size(), ") and data.val (vocabulary ", val_shard->vocab_size(),
            ") were made with different tokenizers: prepare both with the same one");
  if (cfg.model.vocab_size == 0) cfg.model.vocab_size = train_shard->vocab_size();
  OFT_CHECK(cfg.model.vocab_size >= train_shard->vocab_size(), "model.vocab_size=",
            cfg.model.vocab_size, " is smaller than the shard vocabulary ",
            train_shard->vocab_size(), " of ", cfg.data.train, ": raise it or set it to 0");

  const std::string run_dir = cfg.run_dir();
  if (rank == 0) fs::create_directories(run_dir);
  TransformerLM model(cfg.model, dtype, device, T);
  if (!tc.resume)
    OFT_CHECK(!fs::exists(fs::path(run_dir) / "checkpoints" / "latest"), run_dir,
              " already holds checkpoints: pass train.resume=true to continue it, or choose "
              "another run.name / --run-dir");
  std::unique_ptr<dist::Communicator> comm;
  std::unique_ptr<dist::DataParallel> dp;
  if (denv.distributed) {
    comm = std::make_unique<dist::NcclCommunicator>(denv);
    dp = std::make_unique<dist::DataParallel>(
        model, *comm, tc.zero_stage == 1, tc.grad_reduce_dtype == "bf16");
  }
  AdamW opt = dp ? dp->make_optimizer(tc) : AdamW(model.params(), tc);
  const bool overlapped = overlap_update(model, opt, tc.overlap_update && !dp);

  const LoaderOptions lo = loader_options(cfg, cfg.data.train);
  const LoaderOptions val_lo = loader_options(cfg, cfg.data.val);
  TokenLoader loader(train_shard, lo);
  const bool use_mask = lo.objective == Objective::MaskedLM && !lo.pack;

  int64_t start_step = 0, skipped = 0;
  double tokens_seen = 0;
  if (tc.resume) {
    const std::string ckpt = find_checkpoint(run_dir);
    const nlohmann::json st = read_checkpoint_state(ckpt);
    load_model_weights(ckpt, model);
    load_optimizer_state(ckpt, opt);
    start_step = st.at("step").get<int64_t>();
    opt.set_steps_taken(start_step);
    loader.set_state(LoaderState::from_json(st.at("loader")));
    skipped = st.value("skipped_steps", int64_t(0));
    tokens_seen = st.value("tokens_seen", 0.0);
    OFT_CHECK(start_step <= tc.steps, "train.resume: the checkpoint is at step ", start_step,
              " but train.steps=", tc.steps, ": raise train.steps to continue");
    if (!quiet) std::fprintf(stderr, "resumed from %s (step %lld)\n", ckpt.c_str(), (long long)start_step);
  } else {
    if (tc.init_from.empty()) {
      model.init_weights(static_cast<uint64_t>(tc.seed));
    } else {
      const std::string ckpt = find_checkpoint(tc.init_from);
      load_model_weights(ckpt, model);
      if (!quiet) std::fprintf(stderr, "initialised from %s\n", ckpt.c_str());
    }
  }
  if (dp) dp->broadcast_parameters();  // every rank starts from rank 0's weights
  NonFiniteGuard guard(tc, skipped);
  std::unique_ptr<MetricsWriter> metrics_file;
  if (rank == 0) {
    write_file_atomic((fs::path(run_dir) / "config.yaml").string(), cfg.registry().to_yaml());
    metrics_file = std::make_unique<MetricsWriter>((fs::path(run_dir) / "metrics.jsonl").string(),
                                                   tc.resume ? start_step : -1);
  }
  auto write_metrics = [&](const nlohmann::json& j) {
    if (metrics_file) metrics_file->write(j);
  };

  const int64_t warmup = cfg.warmup();
  const int64_t tokens_per_step = B * T * tc.grad_accum;
  if (!quiet)
    std::fprintf(stderr,
                 "oft train: %s | %lld params | %lld layers x %lld wide | %lld tokens/step | "
                 "device %s (%s)%s | run dir %s\n",
                 cfg.name.c_str(), (long long)model.params().numel(), (long long)cfg.model.n_layer,
                 (long long)cfg.model.d_model, (long long)tokens_per_step, device_name(device),
                 dtype_name(model.dtype()),
                 W > 1 ? (" x " + std::to_string(W) + " GPUs, " + std::to_string(B / W) +
                          " rows each" + (tc.zero_stage == 1 ? ", ZeRO-1" : "")).c_str()
                       : "",
                 run_dir.c_str());

  TrainResult result;
  result.run_dir = run_dir;
  auto do_eval = [&](int64_t step) {
    EvalResult e = evaluate(model, val_shard, val_lo, tc.eval_batches);
    write_metrics({{"step", step}, {"val_loss", e.loss}, {"val_ppl", e.ppl}, {"val_tokens", e.tokens}});
    if (!quiet)
      std::fprintf(stderr, "step %lld | val loss %.4f | val ppl %.2f\n", (long long)step, e.loss, e.ppl);
    return e;
  };
  auto checkpoint_state = [&]() {
    nlohmann::json st;
    st["config"] = cfg.registry().to_json();
    st["loader"] = loader.state().to_json();
    st["skipped_steps"] = guard.skipped();
    st["tokens_seen"] = tokens_seen;
    return st;
  };
  // Outlier metrics during training (metrics.every): one validation batch through the collector.
  auto log_outliers = [&](int64_t step) {
    LoaderOptions one = val_lo;
    one.mode = LoaderMode::Eval;
    TokenLoader vl(val_shard, one);
    Tensor vi = Tensor::empty({B, T}, DType::I32), vt = Tensor::empty({B, T}, DType::I32);
    Tensor vm = Tensor::empty({B, T}, DType::I32);
    vl.next_batch(vi.data<int32_t>(), vt.data<int32_t>(), vm.data<int32_t>());
    analysis::OutlierCollector c(cfg.model, cfg.metrics.rows == "token");
    model.set_hook(&c);
    model.forward(vi.to(device), vt.to(device), use_mask ? vm.to(device) : Tensor());
    model.set_hook(nullptr);
    c.after_forward(model);
    nlohmann::json rec = c.to_json();
    rec.erase("seed_a");
    rec["step"] = step;
    write_metrics(rec);
  };
  if (start_step == 0 && rank == 0) result.initial_val = do_eval(0);

  Tensor in = Tensor::empty({B, T}, DType::I32), tg = Tensor::empty({B, T}, DType::I32);
  Tensor mask = Tensor::empty({B, T}, DType::I32);
  StepGraph graph(model, tc.cuda_graph, dp != nullptr);
  if (!quiet && rank == 0 && device == Device::CUDA)
    std::fprintf(stderr, "cuda graph: %s\n",
                 graph.active() ? "on (micro-steps replayed once recorded)"
                                : ("off (" + graph.why_off() + ")").c_str());
  if (!quiet && rank == 0 && device == Device::CUDA)
    std::fprintf(stderr, "optimizer step: %s\n",
                 overlapped ? "beside the next forward (train.overlap_update=true)"
                            : "after the backward");
  const int64_t row0 = rank * (B / W), row1 = row0 + B / W;  // this rank's rows
  // A step's losses and statistics, queued on the device for the host to read. One process
  // leaves the gradient norm, the clipping and the non-finite check on the device
  // (AdamW::finish_stats) and reads step N's values after queueing step N + 1, so the host never
  // waits for the GPU between steps; data-parallel ranks agree on the norm on the host
  // (dp->global_loss_and_grad_norm) before their update.
  struct PendingStep {
    int64_t step = -1;  // 0-based; -1: none
    double lr = 0;
    std::vector<std::pair<TransformerLM::QueuedLoss, int64_t>> losses;  // with the batch's targets
    int stats = -1;                  // AdamW::finish_stats' copy in *rb (one process)
    ops::Readback* rb = nullptr;     // readbacks[step % 2]
  };
  const bool device_stats = dp == nullptr;
  std::array<ops::Readback, 2> readbacks;
  PendingStep pending;
  const auto t0 = Clock::now();
  auto t_log = t0;
  int64_t tokens_since_log = 0;
  // The mean loss of a step's micro-batches, summed in the order they were queued.
  auto step_loss = [&](const PendingStep& p) {
    double loss = 0;
    for (const auto& [q, global_targets] : p.losses) {
      const double l = TransformerLM::queued_loss(*p.rb, q);
      if (W == 1)  // one process: the same sum as always, bit for bit
        loss += l / double(tc.grad_accum);
      else if (global_targets > 0)
        loss += l * double(q.targets) / double(global_targets) / double(tc.grad_accum);
    }
    return loss;
  };
  // The host's side of a step once its loss and gradient norm are known: the non-finite guard
  // (which throws when the policy says stop), the metrics and the log line. Returns whether
  // the step is skipped (its update is, or was, not applied).
  auto book_step = [&](int64_t step, double loss, double gnorm, double lr, bool flagged) {
    tokens_seen += double(tokens_per_step);
    tokens_since_log += tokens_per_step;
    if (guard.skip_step(step + 1, loss, gnorm, flagged)) {
      write_metrics({{"step", step + 1}, {"skipped", true}});
      return true;
    }
    result.train_loss = loss;
    const int64_t done = step + 1;
    if (done % tc.log_every == 0 || done == tc.steps || done == 1) {
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double tps = dt > 0 ? tokens_since_log / dt : 0;
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      const double eta = elapsed / double(done - start_step) * double(tc.steps - done);
      write_metrics({{"step", done}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm},
                     {"tokens", tokens_seen}, {"tokens_per_s", tps}, {"elapsed_s", elapsed}});
      if (!quiet)
        std::fprintf(stderr, "step %6lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %.1fk tok/s | ETA %s\n",
                     (long long)done, (long long)tc.steps, loss, lr, gnorm, tps / 1e3,
                     fmt_duration(eta).c_str());
      t_log = now;
      tokens_since_log = 0;
    }
    return false;
  };
  // Reads and books the pending step, waiting for its values only (the next step's work, if
  // queued, keeps running). The device's skip flag is the authority: the guard counts exactly
  // the steps whose update was not applied. Should the guard stop the run, the GPU's queue
  // (the next step, perhaps its update) is drained first, so that nothing still writes the
  // model's memory once it is released.
  auto settle_pending = [&]() {
    if (pending.step < 0) return;
    PendingStep p = std::move(pending);
    pending = PendingStep{};
    const double loss = step_loss(p);
    const std::vector<double> st = p.rb->values(p.stats);
    p.rb->clear();
    try {
      book_step(p.step, loss, std::sqrt(st[0]), p.lr, st[3] != 0);
    } catch (...) {
      if (ops::update_pending()) ops::compute_wait_update();
      ops::device_synchronize();
      throw;
    }
  };
  for (int64_t step = start_step; step < tc.steps; ++step) {
    model.params().zero_grad();
    if (device_stats) opt.begin_stats();
    PendingStep now;
    now.step = step;
    now.lr = learning_rate(tc, warmup, step);
    now.rb = &readbacks[size_t(step % 2)];
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      // Every rank reads the whole global batch (cheap, on the host) and keeps its rows; the
      // loss is normalised by the targets of the whole batch, so summed gradients are the mean.
      loader.next_batch(in.data<int32_t>(), tg.data<int32_t>(), mask.data<int32_t>());
      int64_t global_targets = 0;
      const int32_t* pt = tg.data<int32_t>();
      for (int64_t i = 0; i < B * T; ++i) global_targets += pt[i] >= 0;
      // The targets stay on the host (the model counts them there and uploads them itself) and
      // the loss is read after the backward is queued: the host never waits for the forward.
      const Tensor mine_in = in.slice(row0, row1), mine_tg = tg.slice(row0, row1);
      const Tensor mine_mask = use_mask ? mask.slice(row0, row1) : Tensor();
      if (!graph.run(mine_in, mine_tg, mine_mask, 1.0 / double(tc.grad_accum), global_targets)) {
        model.forward(mine_in.to(device), mine_tg,
                      mine_mask.defined() ? mine_mask.to(device) : Tensor(),
                      /*will_backward=*/true, /*read_loss=*/false);
        if (dp) dp->add_batch_tokens(in.data<int32_t>(), B * T);  // the global batch's ids
        if (dp) dp->before_backward(micro + 1 == tc.grad_accum);
        model.backward(1.0 / double(tc.grad_accum), global_targets);
        if (dp) dp->after_backward();
      }
      // Read once the step's work is queued: the host does not wait between micro-batches.
      now.losses.push_back({model.queue_loss(*now.rb), global_targets});
      if (device_stats) opt.add_loss_stats(model.row_losses());
    }
    // The next micro-batch, read ahead and put back while the GPU works: with the update
    // overlapped, the token-embedding rows it reads are updated first, so the next forward waits
    // for them only.
    EmbeddingRows next_rows;
    if (opt.overlapped() && step + 1 < tc.steps) {
      const LoaderState at = loader.state();
      loader.next_batch(in.data<int32_t>(), tg.data<int32_t>(), mask.data<int32_t>());
      loader.set_state(at);
      next_rows = embedding_rows(model, opt, in.slice(row0, row1));
    }
    if (device_stats) {
      // Clipped (or skipped) on the device; the previous step is booked while this one runs.
      now.stats = now.rb->queue(opt.finish_stats(tc.grad_clip));
      next_rows.apply(opt);
      opt.step_with_stats(now.lr);
      settle_pending();
      pending = std::move(now);
    } else {
      double loss = step_loss(now);  // this rank's share, then the global loss
      now.rb->clear();
      const double gnorm = dp->global_loss_and_grad_norm(loss, opt);
      if (book_step(step, loss, gnorm, now.lr, false)) {
        opt.set_steps_taken(opt.steps_taken() + 1);
      } else {
        next_rows.apply(opt);
        opt.step(now.lr, ops::clip_factor(tc.grad_clip, gnorm));
        dp->after_step();
      }
    }
    const int64_t done = step + 1;
    const bool last = done == tc.steps;
    const bool stop = tc.stop_at > 0 && done == tc.stop_at;
    const bool eval_now = (tc.eval_every > 0 && done % tc.eval_every == 0) || last;
    const bool outliers_now = cfg.metrics.every > 0 && (done % cfg.metrics.every == 0 || last);
    const bool ckpt_now = (tc.ckpt_every > 0 && done % tc.ckpt_every == 0) || last || stop;
    // This step is booked first: its log line before the evaluation's, and its skipped count
    // and tokens in the checkpoint.
    if (eval_now || outliers_now || ckpt_now) settle_pending();
    if (rank == 0) {
      if (eval_now) result.final_val = do_eval(done);
      if (outliers_now) log_outliers(done);
    }
    if (ckpt_now) {
      if (opt.sharded()) {
        // Collective: every rank contributes its shard of the masters and the moments.
        dp->gather_masters();
        const auto state = dist::gather_optimizer_state(opt, *comm);
        if (rank == 0) {
          const std::string p = save_checkpoint(run_dir, done, model, state, checkpoint_state(),
                                                tc.keep_checkpoints);
          if (!quiet) std::fprintf(stderr, "checkpoint %s\n", p.c_str());
        }
      } else if (rank == 0) {
        const std::string p = save_checkpoint(run_dir, done, model, &opt, checkpoint_state(), tc.keep_checkpoints);
        if (!quiet) std::fprintf(stderr, "checkpoint %s\n", p.c_str());
      }
    }
    if (stop) {
      result.steps = done;
      if (!quiet) std::fprintf(stderr, "stopping at step %lld (train.stop_at); continue with train.resume=true\n", (long long)done);
      return result;
    }
  }
  settle_pending();  // (the last step was booked before its checkpoint)
  if (start_step == tc.steps && rank == 0) result.final_val = do_eval(start_step);
  const double total = std::chrono::duration<double>(Clock::now() - t0).count();
  result.steps = tc.steps;
  result.tokens_per_s = total > 0 ? double(tokens_per_step) * double(tc.steps - start_step) / total : 0;
  return result;
}

}  // namespace oft
