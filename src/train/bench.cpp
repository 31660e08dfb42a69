// `oft bench` (see bench.h). Synthetic uniform tokens stand in for data, so the benchmark needs
// no shards; the model, optimizer and step are exactly those of `oft train`.
#include "train/bench.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "model/transformer.h"
#include "ops/ops.h"
#include "ops/profiler.h"
#include "train/optimizer.h"
#include "train/step_graph.h"
#include "train/trainer.h"

namespace oft {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Uniform random tokens [B, T] (and masked-LM targets: 15% of positions, others -1).
void synthetic_batch(Rng& rng, int64_t B, int64_t T, int64_t V, bool mlm, Tensor& in, Tensor& tg) {
  in = Tensor::empty({B, T}, DType::I32);
  tg = Tensor::empty({B, T}, DType::I32);
  int32_t* pi = in.data<int32_t>();
  int32_t* pt = tg.data<int32_t>();
  for (int64_t i = 0; i < B * T; ++i) pi[i] = static_cast<int32_t>(rng.next_u64() % uint64_t(V));
  for (int64_t i = 0; i < B * T; ++i) {
    if (mlm)
      pt[i] = rng.uniform() < 0.15 ? pi[i] : -1;
    else
      pt[i] = (i + 1) % T == 0 ? -1 : pi[i + 1];
  }
}

}  // namespace

double measure_matmul_peak(int64_t n, int reps) {
  if (!ops::cuda_available()) return 0;
  // Random (not zero) operands: zeros run measurably faster than real data.
  Tensor host = Tensor::empty({n, n}, DType::F32);
  float* p = host.data<float>();
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (int64_t i = 0; i < n * n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = static_cast<float>(static_cast<int64_t>(s >> 40) - (1 << 23)) / float(1 << 23);
  }
  Tensor a32 = host.to(Device::CUDA);
  Tensor a = Tensor::empty({n, n}, DType::BF16, Device::CUDA);
  Tensor b = Tensor::empty({n, n}, DType::BF16, Device::CUDA);
  Tensor c = Tensor::empty({n, n}, DType::BF16, Device::CUDA);
  ops::convert(a, a32);
  ops::convert(b, a32);
  for (int i = 0; i < 3; ++i) ops::matmul(c, a, false, b, true);
  ops::device_synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    ops::matmul(c, a, false, b, true);
    ops::device_synchronize();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * double(n) * double(n) * double(n) / median(t) / 1e12;
}

BenchResult bench(RunConfig& cfg, const BenchOptions& opt) {
  set_cpu_threads(cfg.train.threads);
  const TrainConfig& tc = cfg.train;
  OFT_CHECK(cfg.model.vocab_size > 0, "oft bench: model.vocab_size is 0 (taken from the shard in "
                                      "training); set it, e.g. model.vocab_size=50257");
  OFT_CHECK(opt.steps >= 1 && opt.warmup >= 0, "oft bench: --steps must be >= 1 and --warmup >= 0");
  const dist::DistEnv denv = dist::dist_env_from_environment();
  if (denv.distributed) ops::select_cuda_device(denv.local_rank);
  const Device device = parse_device(tc.device);
  OFT_CHECK(!denv.distributed || device == Device::CUDA, "oft bench with ", denv.world,
            " ranks needs the GPU");
  OFT_CHECK(tc.zero_stage == 0 || denv.distributed, "train.zero_stage=1 needs --gpus N");
  const int64_t B = tc.batch_size, T = cfg.data.seq_len, V = cfg.model.vocab_size;
  const bool mlm = cfg.model.objective == "mlm";
  TransformerLM model(cfg.model, compute_dtype(tc, device), device, T);
  model.init_weights(static_cast<uint64_t>(tc.seed));
  std::unique_ptr<dist::Communicator> comm;
  std::unique_ptr<dist::DataParallel> dp;
  if (denv.distributed) {
    comm = std::make_unique<dist::NcclCommunicator>(denv);
    dp = std::make_unique<dist::DataParallel>(
        model, *comm, tc.zero_stage == 1, tc.grad_reduce_dtype == "bf16");
    dp->broadcast_parameters();
  }
  AdamW adam = dp ? dp->make_optimizer(tc) : AdamW(model.params(), tc);
  const bool overlapped = overlap_update(model, adam, tc.overlap_update && !dp);

  // Two global batches of W * B rows (the same on every rank); rank r takes rows [r*B, r*B + B).
  Rng rng(static_cast<uint64_t>(tc.seed));
  std::vector<Tensor> inputs, targets, global_inputs;
  for (int i = 0; i < 2; ++i) {
    Tensor in, tg;
    synthetic_batch(rng, B * denv.world, T, V, mlm, in, tg);
    global_inputs.push_back(in);
    inputs.push_back(in.slice(denv.rank * B, denv.rank * B + B));  // on the host, as in training
    targets.push_back(tg.slice(denv.rank * B, denv.rank * B + B));
  }
  StepGraph graph(model, tc.cuda_graph, dp != nullptr);
  bool eager = false;  // profiled steps time each op, so they run without the graph
  BenchResult r;
  int64_t step_no = 0;
  // As in training: one process clips (or skips) the update on the device and reads a step's
  // losses after queueing the next step, so the host runs a step ahead of the GPU;
  // data-parallel ranks read theirs before the update.
  struct Queued {
    std::vector<TransformerLM::QueuedLoss> losses;
    ops::Readback* rb = nullptr;
    double loss = 0;     // data-parallel: known when step() returns
  };
  std::array<ops::Readback, 2> readbacks;
  auto read_loss = [&](Queued& q) {
    if (!q.rb) return q.loss;
    double loss = 0;
    for (const TransformerLM::QueuedLoss& l : q.losses)
      loss += TransformerLM::queued_loss(*q.rb, l) / double(tc.grad_accum);
    q.rb->clear();
    q.rb = nullptr;
    q.loss = loss;
    return loss;
  };
  auto step = [&]() {
    model.params().zero_grad();
    if (!dp) adam.begin_stats();
    Queued q;
    q.rb = &readbacks[size_t(step_no % 2)];
    for (int64_t m = 0; m < tc.grad_accum; ++m) {
      const size_t k = static_cast<size_t>(step_no * tc.grad_accum + m) % inputs.size();
      // Data-parallel: every rank's share is 1/W of the mean (equal target counts assumed).
      const double scale = 1.0 / double(tc.grad_accum) / double(denv.world);
      if (eager || !graph.run(inputs[k], targets[k], Tensor(), scale, 0)) {
        model.forward(inputs[k].to(device), targets[k], Tensor(), /*will_backward=*/true,
                      /*read_loss=*/false);
        if (dp) dp->add_batch_tokens(global_inputs[k].data<int32_t>(), global_inputs[k].numel());
        if (dp) dp->before_backward(m + 1 == tc.grad_accum);
        model.backward(scale);
        if (dp) dp->after_backward();
      }
      q.losses.push_back(model.queue_loss(*q.rb));  // read after the step is queued
      if (!dp) adam.add_loss_stats(model.row_losses());
    }
    // As in training: the next step's first micro-batch's embedding rows are updated first.
    const size_t next = static_cast<size_t>((step_no + 1) * tc.grad_accum) % inputs.size();
    const EmbeddingRows next_rows = embedding_rows(model, adam, inputs[next]);
    if (!dp) {
      adam.finish_stats(tc.grad_clip);
      next_rows.apply(adam);
      adam.step_with_stats(tc.lr);
    } else {
      double loss = read_loss(q) / double(denv.world);  // this rank's share of the mean
      const double gnorm = dp->global_loss_and_grad_norm(loss, adam);
      q.loss = loss;
      next_rows.apply(adam);
      adam.step(tc.lr, ops::clip_factor(tc.grad_clip, gnorm));
      dp->after_step();
    }
    ++step_no;
    return q;
  };
  for (int64_t i = 0; i < opt.warmup; ++i) {
    Queued q = step();
    read_loss(q);
  }
  if (ops::update_pending()) ops::compute_wait_update();  // the last warm-up step's update
  ops::device_synchronize();
  ops::reset_peak_device_memory();
  // Each step's time: on the GPU, between device marks at the steps' starts on the op stream
  // (the host queues step i + 1 before reading step i's loss, as training does, so a step's
  // interval includes any wait for the host); on the CPU, whose ops return when done, the host
  // clock.
  const bool gpu = device == Device::CUDA;
  ops::device_marks_reset();
  std::vector<int> marks;
  std::vector<Clock::time_point> host_marks;
  Queued prev;
  for (int64_t i = 0; i < opt.steps; ++i) {
    if (gpu) marks.push_back(ops::device_mark());
    host_marks.push_back(Clock::now());
    Queued q = step();
    if (i > 0) r.loss_last = read_loss(prev);
    if (i == 1) r.loss_first = r.loss_last;
    prev = std::move(q);
  }
  if (gpu) marks.push_back(ops::device_mark());
  r.loss_last = read_loss(prev);
  if (opt.steps == 1) r.loss_first = r.loss_last;
  if (ops::update_pending()) ops::compute_wait_update();  // the last step's overlapped update
  ops::device_synchronize();
  host_marks.push_back(Clock::now());
  const double wall = std::chrono::duration<double>(host_marks.back() - host_marks.front()).count();
  std::vector<double> times;
  for (int64_t i = 0; i < opt.steps; ++i)
    times.push_back(gpu ? ops::device_elapsed_ms(marks[size_t(i)], marks[size_t(i) + 1]) * 1e-3
                        : std::chrono::duration<double>(host_marks[size_t(i) + 1] -
                                                        host_marks[size_t(i)]).count());
  ops::device_marks_reset();
  const ops::DeviceMemory mem = ops::device_memory();

  r.overlap_update = overlapped;
  r.cuda_graph = graph.replays() > 0 ? "on"
                 : "off (" + (graph.active() ? "no step was replayed" : graph.why_off()) + ")";
  r.device = device_name(device);
  r.gpus = denv.world;
  r.zero_stage = int(tc.zero_stage);
  r.dtype = dtype_name(model.dtype());
  r.params = model.params().numel();
  r.batch = B;
  r.seq_len = T;
  r.tokens_per_step = B * T * tc.grad_accum;
  r.step_ms = median(times) * 1e3;
  r.tokens_per_s = double(r.tokens_per_step) / median(times);
  r.steps = opt.steps;
  r.wall_tokens_per_s = wall > 0 ? double(r.tokens_per_step) * double(opt.steps) / wall : 0;
  // Matmul parameters: everything but the position / token-type tables and the vectors; the
  // tied output layer counts once more (it is a V x C product per token). Attention: QK^T and
  // PV are 2 * 2 * T * C per token per layer for full attention, half of it when causal.
  const double C = double(cfg.model.d_model), L = double(cfg.model.n_layer);
  double matmul_params = 0;
  for (const Param& p : model.params().all())
    if (p.matrix && p.name != "wpe.weight" && p.name != "wtt.weight") matmul_params += double(p.value.numel());
  const double attn = 4.0 * double(T) * C * L * (cfg.model.causal() ? 0.5 : 1.0);
  r.flops_per_token = 6.0 * matmul_params + 3.0 * attn;
  r.tflops = r.flops_per_token * r.tokens_per_s / 1e12;
  if (opt.measure_peak && device == Device::CUDA) {
    r.peak_tflops = measure_matmul_peak();
    r.mfu = r.peak_tflops > 0 ? r.tflops / r.peak_tflops : 0;
  }
  r.peak_mem_gib = double(mem.peak) / double(1ull << 30);
  r.reserved_gib = double(mem.reserved) / double(1ull << 30);
  r.device_mem_gib = double(mem.total) / double(1ull << 30);

  if (opt.profile) {
    const int64_t prof_steps = std::max<int64_t>(3, opt.steps / 4);
    eager = true;
    overlap_update(model, adam, false);  // every op timed on the compute stream
    ops::Profiler::start();
    for (int64_t i = 0; i < prof_steps; ++i) {
      Queued q = step();
      read_loss(q);
    }
    auto rows = ops::Profiler::stop();
    for (const auto& row : rows) {
      r.op_ms.emplace_back(row.name, row.total_ms / double(prof_steps));
      r.op_calls.push_back(row.calls / prof_steps);
    }
  }
  return r;
}

std::string bench_report(const std::string& name, const BenchResult& r) {
  char buf[1024];
  std::string s;
  std::snprintf(buf, sizeof buf,
                "oft bench %s | %s %s | %.1fM params | B=%lld T=%lld (%lld tokens/step)\n"
                "step %.2f ms (median) | %.0f tokens/s | %.1f TFLOP/s model (%.0f FLOP/token)\n",
                name.c_str(), r.device.c_str(), r.dtype.c_str(), double(r.params) / 1e6,
                (long long)r.batch, (long long)r.seq_len, (long long)r.tokens_per_step, r.step_ms,
                r.tokens_per_s, r.tflops, r.flops_per_token);
  s += buf;
  std::snprintf(buf, sizeof buf, "%lld steps back to back: %.0f tokens/s\n", (long long)r.steps,
                r.wall_tokens_per_s);
  s += buf;
  if (r.gpus > 1) {
    std::snprintf(buf, sizeof buf, "%d GPUs%s: %.0f tokens/s in all (figures above are per GPU)\n",
                  r.gpus, r.zero_stage == 1 ? " (ZeRO-1)" : "", r.tokens_per_s * r.gpus);
    s += buf;
  }
  if (r.peak_tflops > 0) {
    std::snprintf(buf, sizeof buf, "MFU %.1f%% of the measured bf16 peak %.0f TFLOP/s\n",
                  100.0 * r.mfu, r.peak_tflops);
    s += buf;
  }
  if (r.device == "cuda") {
    std::snprintf(buf, sizeof buf, "peak memory %.2f GiB held by tensors (%.2f GiB reserved, device %.1f GiB)\n",
                  r.peak_mem_gib, r.reserved_gib, r.device_mem_gib);
    s += buf;
    s += "cuda graph: " + r.cuda_graph + "\n";
    s += std::string("optimizer step: ") +
         (r.overlap_update ? "beside the next forward (train.overlap_update)"
                           : "after the backward") + "\n";
  }
  std::snprintf(buf, sizeof buf, "synthetic-data loss %.4f -> %.4f\n", r.loss_first, r.loss_last);
  s += buf;
  if (!r.op_ms.empty()) {
    double total = 0;
    for (const auto& [n, ms] : r.op_ms) total += ms;
    s += "per-op device time per step (profiled steps):\n";
    for (size_t i = 0; i < r.op_ms.size(); ++i) {
      std::snprintf(buf, sizeof buf, "  %-22s %8.3f ms %5.1f%%  %6lld calls\n",
                    r.op_ms[i].first.c_str(), r.op_ms[i].second,
                    total > 0 ? 100.0 * r.op_ms[i].second / total : 0.0,
                    (long long)r.op_calls[i]);
      s += buf;
    }
    std::snprintf(buf, sizeof buf, "  %-22s %8.3f ms (sum of op times; the step is %.3f ms)\n",
                  "total", total, r.step_ms);
    s += buf;
  }
  return s;
}

}  // namespace oft
