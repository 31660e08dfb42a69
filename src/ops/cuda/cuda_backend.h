// CUDA backend: every op of ops.h on the GPU. Kernels live in the .cu files of this folder, one
// file per concern (elementwise, matmul, norms, activations, embedding, attention, loss,
// optimizer, attention parts); this header only declares the class.
//
// Precision contract (DESIGN.md, Precision):
// - Activations, their gradients and the compute copies of parameters passed to ops are bf16 or
//   f32, the same dtype within one call ("act" below).
// - Parameter gradients (dw, db of every op, dwte/dwpe, dwq/dwk, matmul C with beta = 1 for
//   weight gradients), AdamW master weights and moments, norm statistics (mean, rstd, inv) and
//   per-row losses are f32.
// - matmul: A and B share a dtype; C is that dtype or f32 (weight gradients). fp32 accumulation
//   throughout; with f32 operands the product is full fp32 (no TF32), so f32 runs match the CPU
//   backend to rounding.
// - axpy and convert accept any mix of f32 / bf16.
// - f64 is CPU-only (gradient checks); a CUDA op given f64 fails with a clear message.
#pragma once

#include "ops/ops.h"

namespace oft::ops {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  void fill(Tensor& x, double value) override;
  void add(Tensor& out, const Tensor& a, const Tensor& b) override;
  void add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                  double beta) override;
  void axpy(Tensor& y, const Tensor& x, double alpha) override;
  void scale(Tensor& x, double s) override;
  double dot(const Tensor& a, const Tensor& b) override;
  void sum_squares_into(Tensor& acc, const Tensor& x) override;  // multi_tensor.cu

  void matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB, double alpha,
              double beta) override;
  void add_bias(Tensor& y, const Tensor& bias) override;
  void bias_grad(Tensor& dbias, const Tensor& dy) override;

  void layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                     const Tensor& b, double eps) override;
  void layernorm_gate_fwd(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& gate, Tensor& logits,
                          const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                          const Tensor& gw, const Tensor& gb) override;
  void layernorm_gate_bwd(Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgw, Tensor& dgb,
                          const Tensor& dy, const Tensor& dgate, const Tensor& logits,
                          const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b,
                          const Tensor& gw, const Tensor& mean, const Tensor& rstd,
                          bool accumulate, Tensor* dsum) override;
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
  // Every kernel family takes the gate, except for clipped softmax (its saved copy is O2, not
  // the output) and the evaluation-only quantized forward.
  bool gate_in_epilogue(const AttentionSpec& spec, DType dt) const override;

  void grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) override;
  void grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x,
                          const Tensor& w, bool accumulate_dx) override;
  void grouped_linear_act_fwd(Tensor& act, Tensor& y, const Tensor& x, const Tensor& w,
                              const Tensor& b, Activation a) override;
  void grouped_linear_act_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dact,
                              const Tensor& y, const Tensor& x, const Tensor& w,
                              bool accumulate_dx, Activation a) override;
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

  void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,  // multi_tensor.cu
             const AdamWStep& h) override;
  void clip_from_stats(Tensor& stats, double max_norm) override;  // multi_tensor.cu
  void fake_quant(Tensor& x, const FakeQuant& q) override;
  ValueRange value_range(const Tensor& x) override;
  void row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                   double eps) override;
  HiddenStateSums hidden_state_sums(const Tensor& h, int64_t B, int64_t T, unsigned parts,
                                    bool centre) override;
  void convert(Tensor& dst, const Tensor& src) override;
  void gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override;
  void scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) override;
  // matmul.cu: the bias, and the MLP activation (GELU-tanh bf16, ReLU) or its derivative
  // (GELU-tanh bf16), in cuBLASLt's epilogue; other cases compose as Backend does.
  void linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) override;
  void linear_residual_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b,
                           const Tensor& res) override;
  void linear_act_fwd(Tensor& act, Tensor& pre, const Tensor& x, const Tensor& w,
                      const Tensor& b, Activation a) override;
  void linear_act_bwd_dx(Tensor& dpre, const Tensor& dout, const Tensor& w, const Tensor& saved,
                         Activation a, Tensor* dsum = nullptr) override;
  // multi_tensor.cu: one launch over every parameter.
  void adamw_multi(const std::vector<AdamWTensors>& items, const AdamWStep& h) override;
  void sum_squares_multi(Tensor& acc, const std::vector<const Tensor*>& xs) override;
  void zero_multi(const std::vector<Tensor*>& xs) override;
};


CudaBackend& cuda_backend();

// matmul.cu: how many linear_act_fwd / linear_act_bwd_dx calls of this process ran the
// activation (or its derivative) in cuBLASLt's epilogue, and how many composed separate ops
// (other activations, f32 GELU, misalignment, no algorithm). For tests and benchmarks.
struct ActEpilogueCounts {
  int64_t fused = 0, composed = 0;
};
ActEpilogueCounts act_epilogue_counts();

}  // namespace oft::ops
