// CPU ops: elementwise, matrix products (OpenBLAS), bias, activations, embeddings.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/device_graph.h"
#include "ops/profiler.h"
#include "ops/readback.h"
#include "ops/row_moments.h"

namespace oft::ops {

void expect_shape(const Tensor& t, const Shape& s, const char* what) {
  OFT_ASSERT(t.shape() == s, what, ": expected ", shape_str(s), " got ", shape_str(t.shape()));
}
void expect_same(const Tensor& a, const Tensor& b, const char* what) {
  OFT_ASSERT(a.numel() == b.numel() && a.dtype() == b.dtype(), what, ": ", shape_str(a.shape()),
             " ", dtype_name(a.dtype()), " vs ", shape_str(b.shape()), " ", dtype_name(b.dtype()));
}

Activation parse_activation(const std::string& s) {
  if (s == "relu") return Activation::ReLU;
  if (s == "gelu" || s == "gelu_tanh" || s == "gelu_new") return Activation::GELU_Tanh;
  if (s == "gelu_erf") return Activation::GELU_Erf;
  if (s == "sigmoid") return Activation::Sigmoid;
  fail("unknown activation '", s, "': use relu, gelu (tanh approximation) or gelu_erf");
}

void CpuBackend::fill(Tensor& x, double value) {
  dispatch_float(x, [&]<class T>() {
    T* p = x.data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = static_cast<T>(value);
  });
}

void CpuBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  expect_same(out, a, "add");
  expect_same(out, b, "add");
  dispatch_float(out, [&]<class T>() {
    T* o = out.data<T>();
    const T *pa = a.data<T>(), *pb = b.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = pa[i] + pb[i];
  });
}

void CpuBackend::add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                            double beta) {
  expect_same(out, a, "add_scaled");
  expect_same(out, b, "add_scaled");
  dispatch_float(out, [&]<class T>() {
    T* o = out.data<T>();
    const T *pa = a.data<T>(), *pb = b.data<T>();
    const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
#pragma omp parallel for schedule(static)
    // fma(beta, b, alpha * a), as the CUDA kernel: alpha = 1 rounds like a copy and an axpy.
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = std::fma(be, pb[i], al * pa[i]);
  });
}

void CpuBackend::axpy(Tensor& y, const Tensor& x, double alpha) {
  expect_same(y, x, "axpy");
  dispatch_float(y, [&]<class T>() {
    T* py = y.data<T>();
    const T* px = x.data<T>();
    const T al = static_cast<T>(alpha);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < y.numel(); ++i) py[i] += al * px[i];
  });
}

void CpuBackend::scale(Tensor& x, double s) {
  dispatch_float(x, [&]<class T>() {
    T* p = x.data<T>();
    const T ts = static_cast<T>(s);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < x.numel(); ++i) p[i] *= ts;
  });
}

// Fixed-size chunks summed in order: the result does not depend on the thread count.
double CpuBackend::dot(const Tensor& a, const Tensor& b) {
  expect_same(a, b, "dot");
  return dispatch_float(a, [&]<class T>() {
    const T *pa = a.data<T>(), *pb = b.data<T>();
    const int64_t n = a.numel(), chunk = 4096, nchunks = (n + chunk - 1) / chunk;
    std::vector<double> part(static_cast<size_t>(nchunks), 0.0);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {
      double s = 0;
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) s += double(pa[i]) * pb[i];
      part[c] = s;
    }
    double total = 0;
    for (double s : part) total += s;
    return total;
  });
}

void CpuBackend::matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB,
                        double alpha, double beta) {
  OFT_ASSERT(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "matmul needs 2-D views");
  const int64_t M = transA ? A.dim(1) : A.dim(0), K = transA ? A.dim(0) : A.dim(1);
  const int64_t K2 = transB ? B.dim(1) : B.dim(0), N = transB ? B.dim(0) : B.dim(1);
  OFT_ASSERT(K == K2 && C.dim(0) == M && C.dim(1) == N, "matmul shapes A", shape_str(A.shape()),
             transA ? "^T" : "", " B", shape_str(B.shape()), transB ? "^T" : "", " C",
             shape_str(C.shape()));
  OFT_ASSERT(A.dtype() == C.dtype() && B.dtype() == C.dtype(), "matmul dtypes");
  if (M == 0 || N == 0) return;
  const auto ta = transA ? CblasTrans : CblasNoTrans, tb = transB ? CblasTrans : CblasNoTrans;
  if (C.dtype() == DType::F32) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, float(alpha), A.data<float>(), A.dim(1),
                B.data<float>(), B.dim(1), float(beta), C.data<float>(), N);
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A.data<double>(), A.dim(1),
                B.data<double>(), B.dim(1), beta, C.data<double>(), N);
  }
}

void CpuBackend::add_bias(Tensor& y, const Tensor& bias) {
  const int64_t C = bias.numel(), N = y.numel() / C;
  dispatch_float(y, [&]<class T>() {
    T* py = y.data<T>();
    const T* pb = bias.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) py[n * C + c] += pb[c];
  });
}

void CpuBackend::bias_grad(Tensor& dbias, const Tensor& dy) {
  const int64_t C = dbias.numel(), N = dy.numel() / C;
  dispatch_float(dy, [&]<class T>() {
    T* pdb = dbias.data<T>();
    const T* pdy = dy.data<T>();
    // Parallel over column blocks; each column summed in row order.
    const int64_t blk = 64;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += blk) {
      const int64_t c1 = std::min(C, c0 + blk);
      std::vector<double> acc(static_cast<size_t>(c1 - c0), 0.0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += pdy[n * C + c];
      for (int64_t c = c0; c < c1; ++c) pdb[c] += static_cast<T>(acc[c - c0]);
    }
  });
}

namespace {
// tanh through one exp (cheaper than libm's tanhf); exact formula, clamped against overflow.
template <class T>
T fast_tanh(T u) {
  if constexpr (std::is_same_v<T, float>) {
    const float e = std::exp(2.0f * std::min(std::max(u, -15.0f), 15.0f));
    return 1.0f - 2.0f / (e + 1.0f);
  } else {
    return std::tanh(u);
  }
}

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <class T>
T act_fwd(T x, Activation a) {
  switch (a) {
    case Activation::ReLU: return x > T(0) ? x : T(0);
    case Activation::GELU_Tanh: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + fast_tanh(u));
    }
    case Activation::GELU_Erf: return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
    case Activation::Sigmoid: return T(1) / (T(1) + std::exp(-x));
  }
  return x;
}

template <class T>
T act_grad(T x, Activation a) {
  switch (a) {
    case Activation::ReLU: return x > T(0) ? T(1) : T(0);
    case Activation::GELU_Tanh: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T th = fast_tanh(u);
      T du = T(kSqrt2OverPi) * (T(1) + T(3 * 0.044715) * x * x);
      return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
    }
    case Activation::GELU_Erf:
      return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) +
             x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    case Activation::Sigmoid: {
      const T sg = T(1) / (T(1) + std::exp(-x));
      return sg * (T(1) - sg);
    }
  }
  return T(1);
}
}  // namespace

void CpuBackend::activation_fwd(Tensor& y, const Tensor& x, Activation a) {
  expect_same(y, x, "activation_fwd");
  dispatch_float(x, [&]<class T>() {
    T* py = y.data<T>();
    const T* px = x.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < x.numel(); ++i) py[i] = act_fwd(px[i], a);
  });
}

void CpuBackend::activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) {
  expect_same(dx, x, "activation_bwd");
  expect_same(dy, x, "activation_bwd");
  dispatch_float(x, [&]<class T>() {
    T* pdx = dx.data<T>();
    const T *pdy = dy.data<T>(), *px = x.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < x.numel(); ++i) pdx[i] = pdy[i] * act_grad(px[i], a);
  });
}

void CpuBackend::embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte,
                               const Tensor& wpe, int64_t T, int64_t pos_offset) {
  const int64_t N = tokens.numel(), C = wte.dim(1), V = wte.dim(0);
  expect_shape(out, {N, C}, "embedding_fwd out");
  const int32_t* tok = tokens.data<int32_t>();
  dispatch_float(wte, [&]<class F>() {
    F* po = out.data<F>();
    const F* pe = wte.data<F>();
    const F* pp = wpe.defined() ? wpe.data<F>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const int32_t id = tok[n];
      OFT_ASSERT(id >= 0 && id < V, "token id ", id, " outside the vocabulary of ", V);
      const F* e = pe + int64_t(id) * C;
      F* o = po + n * C;
      if (pp) {
        const F* p = pp + (pos_offset + n % T) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = e[c] + p[c];
      } else {
        for (int64_t c = 0; c < C; ++c) o[c] = e[c];
      }
    }
  });
}

void CpuBackend::embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout,
                               const Tensor& tokens, int64_t T, int64_t pos_offset) {
  const int64_t N = tokens.numel(), C = dwte.dim(1);
  const int32_t* tok = tokens.data<int32_t>();
  dispatch_float(dwte, [&]<class F>() {
    F* pe = dwte.data<F>();
    F* pp = dwpe.defined() ? dwpe.data<F>() : nullptr;
    const F* pd = dout.data<F>();
    // Parallel over channel blocks so no two threads touch the same gradient entry; rows are
    // visited in order, which keeps the sums deterministic.
    const int64_t blk = 32;
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += blk) {
      const int64_t c1 = std::min(C, c0 + blk);
      for (int64_t n = 0; n < N; ++n) {
        F* e = pe + int64_t(tok[n]) * C;
        F* p = pp ? pp + (pos_offset + n % T) * C : nullptr;
        const F* d = pd + n * C;
        for (int64_t c = c0; c < c1; ++c) {
          e[c] += d[c];
          if (p) p[c] += d[c];
        }
      }
    }
  });
}

void CpuBackend::adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                       const AdamWStep& h) {
  expect_same(param, grad, "adamw");
  double grad_scale = h.grad_scale;
  if (h.stats) {  // the step's own clipping, or nothing for a non-finite step
    OFT_ASSERT(h.stats->dtype() == DType::F64 && h.stats->numel() == 4 &&
                   h.stats->device() == Device::CPU,
               "adamw: stats must be f64 [4] on the CPU");
    const double* st = h.stats->data<double>();
    if (st[3] != 0) return;
    grad_scale = st[2];
  }
  dispatch_float(param, [&]<class T>() {
    T *p = param.data<T>(), *pm = m.data<T>(), *pv = v.data<T>();
    const T* g = grad.data<T>();
    const double bc1 = 1.0 - std::pow(h.beta1, double(h.step));
    const double bc2 = 1.0 - std::pow(h.beta2, double(h.step));
    const T b1 = T(h.beta1), b2 = T(h.beta2), gs = T(grad_scale);
    const T step_size = T(h.lr / bc1), decay = T(1.0 - h.lr * h.weight_decay);
    const T inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2)), eps = T(h.eps);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < param.numel(); ++i) {
      const T gi = g[i] * gs;
      pm[i] = b1 * pm[i] + (T(1) - b1) * gi;
      pv[i] = b2 * pv[i] + (T(1) - b2) * gi * gi;
      const T denom = std::sqrt(pv[i]) * inv_sqrt_bc2 + eps;
      p[i] = p[i] * decay - step_size * pm[i] / denom;
    }
  });
}

void CpuBackend::clip_from_stats(Tensor& stats, double max_norm) {
  OFT_ASSERT(stats.dtype() == DType::F64 && stats.numel() == 4,
             "clip_from_stats: stats must be f64 [4]");
  double* st = stats.data<double>();
  st[2] = clip_factor(max_norm, std::sqrt(st[0]));
  st[3] = std::isfinite(st[0]) && std::isfinite(st[1]) ? 0.0 : 1.0;
}

void CpuBackend::sum_squares_into(Tensor& acc, const Tensor& x) {
  OFT_ASSERT(acc.numel() == 1 && acc.dtype() == DType::F64, "sum_squares_into: acc must be one f64");
  acc.data<double>()[0] += dot(x, x);
}

namespace {
// Checks of gather_rows / scatter_rows: dense [M, C] rows, sparse [N, C] rows, idx [M] in [0, N).
void check_rows(const Tensor& dense, const Tensor& sparse, const Tensor& idx, const char* what) {
  OFT_ASSERT(dense.ndim() == 2 && sparse.ndim() == 2 && dense.dim(1) == sparse.dim(1) &&
                 dense.dtype() == sparse.dtype() && idx.dtype() == DType::I32 &&
                 idx.numel() == dense.dim(0),
             what, ": rows ", shape_str(dense.shape()), " / ", shape_str(sparse.shape()),
             " with ", idx.numel(), " indices");
}
}  // namespace

void CpuBackend::gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  check_rows(dst, src, idx, "gather_rows");
  const int64_t M = dst.dim(0), N = src.dim(0), row = src.dim(1) * int64_t(dtype_size(src.dtype()));
  const int32_t* ix = idx.data<int32_t>();
  for (int64_t i = 0; i < M; ++i) {
    OFT_ASSERT(ix[i] >= 0 && ix[i] < N, "gather_rows: index ", ix[i], " outside [0, ", N, ")");
    std::memcpy(static_cast<char*>(dst.raw()) + i * row,
                static_cast<const char*>(src.raw()) + ix[i] * row, size_t(row));
  }
}

void CpuBackend::scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) {
  check_rows(src, dst, idx, "scatter_rows");
  const int64_t M = src.dim(0), N = dst.dim(0), row = dst.dim(1) * int64_t(dtype_size(dst.dtype()));
  const int32_t* ix = idx.data<int32_t>();
  for (int64_t i = 0; i < M; ++i) {
    OFT_ASSERT(ix[i] >= 0 && ix[i] < N, "scatter_rows: index ", ix[i], " outside [0, ", N, ")");
    std::memcpy(static_cast<char*>(dst.raw()) + ix[i] * row,
                static_cast<const char*>(src.raw()) + i * row, size_t(row));
  }
}

void CpuBackend::convert(Tensor& dst, const Tensor& src) {
  OFT_ASSERT(dst.numel() == src.numel(), "convert: ", shape_str(dst.shape()), " <- ",
             shape_str(src.shape()));
  if (dst.dtype() == src.dtype()) {
    dst.copy_from(src);
    return;
  }
  // Through double: exact for f32 / f64 sources; bf16 rounds to nearest even via Tensor::cast.
  dst.copy_from(src.cast(dst.dtype()));
}

// ---- simulated quantization ----

void CpuBackend::fake_quant(Tensor& x, const FakeQuant& q) {
  const int64_t n = x.numel();
  switch (x.dtype()) {
    case DType::F64: {
      double* p = x.data<double>();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) p[i] = fake_quant_value(p[i], q);
      return;
    }
    case DType::F32: {
      float* p = x.data<float>();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(fake_quant_value(p[i], q));
      return;
    }
    case DType::BF16: {
      uint16_t* p = static_cast<uint16_t*>(x.raw());
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i)
        p[i] = float_to_bf16(static_cast<float>(fake_quant_value(bf16_to_float(p[i]), q)));
      return;
    }
    default:
      fail("fake_quant needs an f32, f64 or bf16 tensor, got ", dtype_name(x.dtype()));
  }
}

ValueRange CpuBackend::value_range(const Tensor& x) {
  ValueRange r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
               false};
  auto scan = [&](auto&& value) {
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double v = value(i);
      if (std::isnan(v)) {
        r.nan = true;
        continue;
      }
      r.lo = std::min(r.lo, v);
      r.hi = std::max(r.hi, v);
    }
  };
  switch (x.dtype()) {
    case DType::F64: scan([p = x.data<double>()](int64_t i) { return p[i]; }); break;
    case DType::F32: scan([p = x.data<float>()](int64_t i) { return double(p[i]); }); break;
    case DType::BF16:
      scan([p = static_cast<const uint16_t*>(x.raw())](int64_t i) {
        return double(bf16_to_float(p[i]));
      });
      break;
    default:
      fail("value_range needs an f32, f64 or bf16 tensor, got ", dtype_name(x.dtype()));
  }
  return r;
}

void CpuBackend::row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                             double eps) {
  OFT_ASSERT(row_len >= (kurtosis ? 2 : 1) && x.numel() % row_len == 0,
             "row_moments: rows of ", row_len, " in ", shape_str(x.shape()));
  const int64_t rows = x.numel() / row_len;
  OFT_ASSERT(out.dtype() == DType::F64 && out.numel() == 2 * rows,
             "row_moments: out must be f64 [", rows, ", 2]");
  double* o = out.data<double>();
  dispatch_float(x, [&]<class T>() {
    const T* p = x.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = p + r * row_len;
      o[2 * r] = kurtosis ? row_kurtosis_f64(row, row_len, eps)
                          : std::numeric_limits<double>::quiet_NaN();
      o[2 * r + 1] = row_inf_norm_f64(row, row_len);
    }
  });
}

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

#ifndef OFT_WITH_CUDA
// No device without CUDA: the profiler times CPU ops with the host clock and never asks.
int device_mark() { return 0; }
double device_elapsed_ms(int, int) { return 0; }
void device_marks_reset() {}

void* host_pinned_alloc(size_t bytes) {
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) fail("out of host memory: ", bytes, " bytes for a readback buffer");
  return p;
}
void host_pinned_free(void* p) { std::free(p); }
void copy_to_host_queued(void* dst, const Tensor& src) { std::memcpy(dst, src.raw(), src.nbytes()); }
void* copy_event_record(void* e) { return e; }
void copy_event_wait(void*) {}
void copy_event_destroy(void*) {}

bool cuda_available() { return false; }
std::string cuda_unavailable_reason() {
  return "this oft build has no CUDA backend (built without nvcc)";
}
DeviceMemory device_memory() { return {}; }
void reset_peak_device_memory() {}
void device_synchronize() {}
bool device_graphs_available() { return false; }
void DeviceGraph::begin_capture() {
  fail("CUDA graphs need the CUDA backend, which this oft build lacks (built without nvcc)");
}
void DeviceGraph::end_capture() {}
void DeviceGraph::abort_capture() noexcept {}
void DeviceGraph::launch() { fail("DeviceGraph::launch: nothing recorded"); }
void DeviceGraph::reset() noexcept {}
void select_cuda_device(int index) {
  OFT_CHECK(false, "GPU ", index, " requested but this oft build has no CUDA backend: rebuild on "
                   "a machine with the CUDA toolkit, or train on one process with train.device=cpu");
}
int cuda_device_count() { return 0; }
void* compute_stream_handle() { return nullptr; }
void* comm_stream_handle() { return nullptr; }
void comm_wait_compute() {}
void compute_wait_comm() {}
void comm_synchronize() {}
void update_stream_begin() {}
void update_stream_end() {}
void update_stage_done(int) {}
void compute_wait_update_stage(int) {}
void compute_wait_update() {}
bool update_pending() { return false; }
Backend& backend(Device d) {
  if (Backend* p = Profiler::active(d)) return *p;
  OFT_CHECK(d == Device::CPU, "this oft build has no CUDA backend: set device=cpu, or rebuild "
                              "on a machine with the CUDA toolkit");
  return cpu_backend();
}
#endif

}  // namespace oft::ops
