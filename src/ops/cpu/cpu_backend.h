// CPU backend: the reference implementation of every op (see ops.h). Readable loops in the
// tensor's dtype (f32 for training, f64 for gradient checks), OpenBLAS for matrix products,
// OpenMP across rows with static partitions so results do not depend on scheduling.
#pragma once

#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace oft::ops {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }

  void fill(Tensor& x, double value) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                  double beta) override;
  void axpy(Tensor& y, const Tensor& x, double alpha) override;
  void scale(Tensor& x, double s) override;
  double dot(const Tensor& a, const Tensor& b) override;
  void sum_squares_into(Tensor& acc, const Tensor& x) override;

  void matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB, double alpha,
              double beta) override;
  void add_bias(Tensor& y, const Tensor& bias) override;
  void bias_grad(Tensor& dbias, const Tensor& dy) override;

  void layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                     const Tensor& b, double eps) override;
  void layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                     const Tensor& w, const Tensor& mean, const Tensor& rstd, bool accumulate,
                     Tensor* dsum) override;
  void rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w, double eps) override;
  void rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& w,
                   const Tensor& inv, bool accumulate, Tensor* dsum) override;

  void activation_fwd(Tensor& y, const Tensor& x, Activation a) override;
  void activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) override;

  void embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                     int64_t T, int64_t pos_offset) override;
  void embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                     int64_t T, int64_t pos_offset) override;

  void attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv, const Tensor& key_mask,
                     int64_t B, int64_t T, const AttentionSpec& spec) override;
  void attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& saved,
                     const Tensor& key_mask, int64_t B, int64_t T,
                     const AttentionSpec& spec, Tensor* dsum = nullptr) override;

  void grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) override;
  void grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                          const Tensor& w, bool accumulate_dx) override;
  void head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate,
                     int64_t rows_per_gate) override;
  void head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x,
                     const Tensor& gate, int64_t rows_per_gate) override;
  void group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) override;
  void group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) override;
  void qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                   int64_t H, double eps) override;
  void qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout, const Tensor& qkv,
                   const Tensor& wq, const Tensor& wk, const Tensor& inv, int64_t H) override;

  void causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) override;
  void causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) override;
  void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col,
                    int64_t ncols, bool accumulate) override;

  void cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets,
                         int64_t vocab) override;
  void cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                         double scale, int64_t vocab) override;
  void cross_entropy_fwd_grad(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                              const Tensor& targets, int64_t vocab) override;

  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
             const AdamWStep& h) override;
  void clip_from_stats(Tensor& stats, double max_norm) override;
  void fake_quant(Tensor& x, const FakeQuant& q) override;
  ValueRange value_range(const Tensor& x) override;
  void row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                   double eps) override;
  HiddenStateSums hidden_state_sums(const Tensor& h, int64_t B, int64_t T, unsigned parts,
                                    bool centre) override;
  void convert(Tensor& dst, const Tensor& src) override;
  void gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override;
  void scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override;
};

// Calls f.template operator()<T>() with T = float or double according to `t`'s dtype.
template <class F>
auto dispatch_float(const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::F32: return f.template operator()<float>();
    case DType::F64: return f.template operator()<double>();
    default: fail("cpu backend: op needs an f32 or f64 tensor, got ", dtype_name(t.dtype()));
  }
}

// FakeQuant's grid applied to one value in f64 (the fake_quant op and the attention's quantized
// scores and probabilities; the CUDA kernels' formula). NaN stays NaN.
inline double fake_quant_value(double x, const FakeQuant& q) {
  double v = std::nearbyint(x / q.delta) + q.zero_point;  // round half to even (default mode)
  v = std::min(std::max(v, q.qmin), q.qmax);
  return q.delta * (v - q.zero_point);
}

// Shape checks shared by the CPU ops.
void expect_shape(const Tensor& t, const Shape& s, const char* what);
void expect_same(const Tensor& a, const Tensor& b, const char* what);

}  // namespace oft::ops
