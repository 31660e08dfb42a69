// Helpers for the GPU-vs-CPU op tests: every CUDA op is run on fresh random inputs and compared
// with the CPU backend (the oracle) by the relative error ||gpu - cpu|| / ||cpu||.
//
// Tolerances (relative L2 error of the whole output):
//   f32 ops: 1e-5 (fp32 arithmetic, different summation order; matmul is full fp32, no TF32);
//   bf16 ops: 1e-2 (bf16 storage of inputs and outputs: 2^-8 relative rounding per element; the
//   CPU reference runs in f32 on the same bf16-rounded inputs, so only the GPU's output rounding
//   and fp32 accumulation order differ).
// Outputs are poisoned with NaN before each GPU call, so an element the kernel forgot to write
// fails the comparison. The tests skip themselves on machines without a usable GPU (CI).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.h"
#include "core/tensor.h"
#include "ops/ops.h"

namespace oft::cuda {
cudaStream_t stream();  // the backend's stream (ops/cuda/cuda_common.cuh)
}

namespace oft::testing {

constexpr double kTolF32 = 1e-5;
constexpr double kTolBF16 = 1e-2;
inline double tol_for(DType d) { return d == DType::BF16 ? kTolBF16 : kTolF32; }

// A test name for a "PRESET [key=value ...]" parameter: every character that is not a letter or
// digit becomes '_'.
inline std::string preset_param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (auto& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

#define OFT_REQUIRE_CUDA()                                                             \
  do {                                                                                 \
    if (!::oft::ops::cuda_available())                                                 \
      GTEST_SKIP() << "no usable GPU: " << ::oft::ops::cuda_unavailable_reason();      \
  } while (0)

// A CPU f32 tensor of N(0, scale^2) values from a fresh seed (each call differs).
inline Tensor randn(const Shape& shape, double scale = 1.0) {
  static uint64_t counter = 0x5eed;
  Rng rng(++counter * 0x9E3779B97F4A7C15ull);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = rng.normal() * scale;
  return Tensor::from_vector(shape, v, DType::F32);
}

// Uniform integers in [lo, hi) as a CPU i32 tensor.
inline Tensor randint(const Shape& shape, int lo, int hi) {
  static uint64_t counter = 0x1dea;
  Rng rng(++counter * 0xBF58476D1CE4E5B9ull);
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = lo + static_cast<int>(rng.uniform() * (hi - lo)) % (hi - lo);
  return Tensor::from_vector(shape, v, DType::I32);
}

// The values a tensor takes after storage in dtype d (f32 CPU tensor): the CPU reference for a
// bf16 GPU op runs on these.
inline Tensor rounded(const Tensor& cpu_f32, DType d) {
  if (d == DType::F32) return cpu_f32.clone();
  return cpu_f32.cast(d).cast(DType::F32);
}

// Copy of a CPU f32 tensor on the GPU in dtype d.
inline Tensor to_gpu(const Tensor& cpu_f32, DType d) {
  return (d == DType::F32 ? cpu_f32 : cpu_f32.cast(d)).to(Device::CUDA);
}

// A GPU tensor of this shape and dtype filled with NaN (unwritten elements then fail checks).
inline Tensor poisoned(const Shape& shape, DType d) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)),
                        std::numeric_limits<double>::quiet_NaN());
  return Tensor::from_vector(shape, v, d).to(Device::CUDA);
}

// ||got - ref|| / max(||ref||, floor) (infinity if got has a NaN/Inf); got on any device/dtype.
// A floor at the inputs' scale serves results that can cancel to almost nothing (a derivative
// at its zero crossing), where ||ref|| alone would magnify rounding without bound.
inline double rel_err(const Tensor& got, const Tensor& ref, double floor = 0) {
  const std::vector<double> g = got.to_vector(), r = ref.to_vector();
  EXPECT_EQ(g.size(), r.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size() && i < r.size(); ++i) {
    if (!std::isfinite(g[i])) return std::numeric_limits<double>::infinity();
    num += (g[i] - r[i]) * (g[i] - r[i]);
    den += r[i] * r[i];
  }
  den = std::max(den, floor * floor);
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// ||t|| (L2 norm over all elements).
inline double l2_norm(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector()) s += v * v;
  return std::sqrt(s);
}

#define EXPECT_GPU_CLOSE(got, ref, tol) \
  EXPECT_LE(::oft::testing::rel_err((got), (ref)), (tol)) << "relative L2 error of " #got

inline const char* dtype_label(DType d) { return d == DType::BF16 ? "bf16" : "f32"; }

// ---- timing helpers of the *Bench tests (they print, they do not assert speed) ----

// Mean milliseconds of fn over `iters` runs after 3 warm-up runs, timed with CUDA events on the
// backend's stream.
inline double time_ms(const std::function<void()>& fn, int iters = 20) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, cuda::stream());
  for (int i = 0; i < iters; ++i) fn();
  cudaEventRecord(stop, cuda::stream());
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return double(ms) / iters;
}

// A GPU tensor [rows, cols] of N(0, scale^2)-ish values: a random [min(rows, 64), cols] block
// tiled over the rows (fast to make at benchmark sizes, and never all zeros).
inline Tensor gpu_random(int64_t rows, int64_t cols, DType d, double scale) {
  Tensor t = Tensor::empty({rows, cols}, d, Device::CUDA);
  const int64_t block = std::min<int64_t>(rows, 64);
  const Tensor src = to_gpu(randn({block, cols}, scale), d);
  for (int64_t r = 0; r < rows; r += block) {
    const int64_t e = std::min(rows, r + block);
    Tensor dst = t.slice(r, e);
    dst.copy_from(src.slice(0, e - r));
  }
  return t;
}

}  // namespace oft::testing
