// `oft bench`: training throughput of a preset on synthetic tokens: tokens/s, model FLOP/s and
// MFU against the measured bf16 matrix-product peak of the device, peak memory, and optionally
// a per-op time breakdown (ops::ProfilingBackend).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "train/run_config.h"

namespace oft {

struct BenchOptions {
  int64_t steps = 20;      // timed optimizer steps
  int64_t warmup = 3;      // untimed steps first (allocation, library heuristics)
  bool measure_peak = true;  // time an 8192^3 bf16 matrix product for the MFU denominator
  bool profile = false;    // per-op breakdown over extra profiled steps
};

struct BenchResult {
  std::string device, dtype;
  int gpus = 1;                // data-parallel ranks (--gpus N / mpirun); batch is per GPU
  int zero_stage = 0;
  int64_t params = 0, batch = 0, seq_len = 0, tokens_per_step = 0;
  double step_ms = 0;         // median over the timed steps
  double tokens_per_s = 0;     // per GPU, at the median step
  double wall_tokens_per_s = 0;  // per GPU, the timed steps back to back (host clock)
  int64_t steps = 0;             // timed steps
  double flops_per_token = 0;  // 6 * (matmul params incl. the head) + causal attention
  double tflops = 0;           // achieved model TFLOP/s
  double peak_tflops = 0;      // measured bf16 matmul peak (0 when not measured / CPU)
  double mfu = 0;              // tflops / peak_tflops
  double peak_mem_gib = 0, reserved_gib = 0, device_mem_gib = 0;
  double loss_first = 0, loss_last = 0;  // synthetic-data losses (sanity: finite, falling)
  std::string cuda_graph;  // "on", or "off (why)": whether the timed steps replayed a CUDA graph
  bool overlap_update = false;  // the timed steps' AdamW ran beside the next forward
  std::vector<std::pair<std::string, double>> op_ms;  // per step, descending
  std::vector<int64_t> op_calls;
};

// In a data-parallel launch (OFT_WORLD_SIZE / mpirun) every rank runs train.batch_size rows
// (weak scaling: the per-GPU work of the one-GPU figure) and the gradients are reduced as in
// `oft train`; rank 0's result is the one to report.
BenchResult bench(RunConfig& cfg, const BenchOptions& opt);
std::string bench_report(const std::string& name, const BenchResult& r);

// Measured TFLOP/s of an n x n x n bf16 product through the backend's matmul (median of reps).
double measure_matmul_peak(int64_t n = 8192, int reps = 20);

}  // namespace oft
