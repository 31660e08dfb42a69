// The op seam: every numerical operation the model, trainer and metrics use, with one
// implementation per backend (cpu/ always, cuda/ when built). Model code calls the free
// functions in namespace oft::ops, which dispatch on the device of the first tensor argument.
//
// Conventions
// - Tensors are contiguous row-major. "N" is the number of token rows (B*T), "C" the model
//   width, "F" the MLP width, "V" the vocabulary, "H" heads, "D" = C/H the head width.
// - Backward ops OVERWRITE input gradients unless they take `accumulate`, and always ACCUMULATE
//   (+=) into parameter gradients, so gradient accumulation over micro-batches is free.
// - CPU ops run in the tensor's dtype (f32, or f64 for gradient checks), deterministically
//   (static OpenMP partitions, no atomics), so runs and resumes are bit-reproducible.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace oft::ops {

// Extra columns of the bias-column layout of a layer input (Backend::linear_wgrad_bias_column):
// x_ext [N, K + kBiasColumnPad] = [x | 1 | 0 ...]; 8 keeps bf16 and f32 rows 16-byte aligned.
inline constexpr int64_t kBiasColumnPad = 8;
// Whether x is [N, in + kBiasColumnPad]: rows of `in` columns in that layout.
inline bool is_bias_column_layout(const Tensor& x, int64_t in) {
  return x.ndim() == 2 && x.dim(1) == in + kBiasColumnPad;
}
// The same for the input of a layer with weight w [out, in].
inline bool is_bias_column_layout(const Tensor& x, const Tensor& w) {
  return w.ndim() == 2 && is_bias_column_layout(x, w.dim(1));
}

enum class Activation { ReLU, GELU_Tanh, GELU_Erf, Sigmoid };
// relu | gelu (= gelu_tanh, gelu_new) | gelu_erf | sigmoid
Activation parse_activation(const std::string& s);

// How attention scores become probabilities (REFERENCE.md §1).
enum class ProbFn { Softmax, Clipped, Softmax1 };

// A uniform fake-quantization grid applied inside an op: delta * (clamp(round(x / delta) + zp,
// qmin, qmax) - zp), rounding half to even.
struct FakeQuant {
  bool enabled = false;
  double delta = 1.0, zero_point = 0.0, qmin = 0.0, qmax = 255.0;
};

// Backend::value_range's result.
struct ValueRange {
  double lo = 0.0, hi = 0.0;
  bool nan = false;
};

// Backend::hidden_state_sums' result: the sufficient statistics of seed B's hidden-state
// metrics (analysis/metrics.h) for h viewed as N = B*T tokens of d features. x~_n is token n
// centred over its d features (or x_n itself without centring). Fields of parts not asked for
// stay 0 / empty.
struct HiddenStateSums {
  enum Part : unsigned {
    kColumns = 1,      // col_sum, col_sq
    kFeatureGram = 2,  // f_off, f_diag, cos_off (needs kColumns' col_sum; implies it)
    kTokenCos = 4,     // cos_sum, cos_sq (T >= 2)
    kMaxMedian = 8,    // ratio_sum
  };
  int64_t N = 0, d = 0;
  double row_sq = 0;   // sum_n |x~_n|^2 (always)
  double row_sq2 = 0;  // sum_n |x~_n|^4 (always)
  std::vector<double> col_sum, col_sq;  // [d]: sum_n x~_nj and sum_n x~_nj^2
  // With mu = col_sum / N, G = sum_n (x~_n - mu)(x~_n - mu)^T, F = G + N mu mu^T (= X~^T X~) and
  // floor = trace(G) / d * 1e-24:
  double f_off = 0;    // sum_{i<j} F_ij^2
  double f_diag = 0;   // sum_i F_ii^2
  double cos_off = 0;  // sum_{i<j} G_ij^2 / (G_ii G_jj) over G_ii, G_jj > floor
  // Over the token pairs n < m of the same sequence (T consecutive tokens) whose |x~|^2 are
  // nonzero and above row_sq / N * 1e-24, c = <x~_n, x~_m> / (|x~_n| |x~_m|):
  double cos_sum = 0, cos_sq = 0;  // sum c, sum c^2
  // sum over tokens of max_j |x~_nj| / median_j |x~_nj| (the lower median of the d values, as
  // torch.median); NaN when a token holds a NaN.
  double ratio_sum = 0;
};

// hidden_state_sums' input checks, shared by the backends: h a non-empty f32 / f64 / bf16 tensor
// of N = B*T tokens.
void check_hidden_state_sums_args(const Tensor& h, int64_t B, int64_t T, unsigned parts);

struct AttentionSpec {
  int n_head = 1;
  bool causal = true;
  ProbFn prob = ProbFn::Softmax;
  double gamma = 0.0;  // clipped softmax: clip((zeta - gamma) * softmax + gamma, 0, 1)
  double zeta = 1.0;
  // Simulated quantization (evaluation only; the backward ignores it): scores S = QK^T/sqrt(D)
  // before the mask, and the probabilities after the probability function (REFERENCE.md §5).
  FakeQuant score_quant, prob_quant;
  // When set, the op writes the min and max of the scores (all T x T, before the mask) and of
  // the probabilities of this call into these two-element arrays.
  double* score_range = nullptr;
  double* prob_range = nullptr;
  // When set (host memory, B * H * T doubles), the op also writes the entropy
  // -sum_j p_ij log p_ij of every query row i of every sequence b and head h into
  // entropy_rows[(b * H + h) * T + i] (an outlier metric: evaluation only). p is the
  // probability function's softmax before clipping and quantization (what the CPU backend saves
  // for the backward), 0 log 0 = 0, and a NaN probability makes the row NaN.
  double* entropy_rows = nullptr;
  // Per-head gate in the epilogue (only where Backend::gate_in_epilogue says so), as
  // head_gate_fwd: the forward writes out[n, h*D + d] = gate[n / gate_rows, h] * attention (the
  // saved state keeps the ungated output); the backward takes dout as the gradient of that gated
  // output and also writes dgate[r, h] (overwritten) = the sum over the gate's rows n and d of
  // dout * ungated attention. Both [B*T / gate_rows, H], the activations' dtype; gate_rows = 1
  // (per token), T (per sequence) or B*T (one gate per head); dgate is used by the backward only.
  // Gates must be >= 0 (the models' gates are sigmoid outputs): the CUDA backward folds
  // log2(gate) into its row statistics, so a negative gate makes its rows' gradients NaN.
  const Tensor* gate = nullptr;
  Tensor* dgate = nullptr;
  int64_t gate_rows = 1;
  // The forward's `out`, when the caller keeps it unchanged until the backward and passes it
  // here in both calls: a backend may then keep no copy of the output in `saved` and read this
  // one in the backward (the CUDA backend does for softmax and softmax1, gated or not). A
  // backward whose forward had it must have it too.
  const Tensor* kept_out = nullptr;
};

#ifdef __CUDACC__
#define OFT_HOST_DEVICE __host__ __device__
#else
#define OFT_HOST_DEVICE
#endif
// The gradient scale of global-norm clipping (train.grad_clip): max_norm / norm when max_norm > 0
// and the gradients' norm exceeds it, else 1. One definition for the host (data-parallel steps)
// and both backends' clip_from_stats.
OFT_HOST_DEVICE inline double clip_factor(double max_norm, double norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0;
}

// Hyper-parameters of one AdamW update (decoupled weight decay, PyTorch semantics).
struct AdamWStep {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;       // 1-based, for bias correction
  double grad_scale = 1;  // gradients are multiplied by this first (clipping)
  // Optional: the step's statistics on the parameters' device (f64 [4], clip_from_stats). The
  // update then takes its gradient scale from stats[2] instead of grad_scale, and leaves every
  // tensor unchanged when stats[3] != 0 (a step with a non-finite loss or gradient): the host
  // need not read the gradient norm before queueing the update.
  const Tensor* stats = nullptr;
};

// One parameter of a fused multi-tensor AdamW step: f32 master, gradient and moments, and the
// compute copy to refresh (nullptr, or the master itself, when there is none).
struct AdamWTensors {
  Tensor* param = nullptr;
  const Tensor* grad = nullptr;
  Tensor* m = nullptr;
  Tensor* v = nullptr;
  Tensor* compute = nullptr;
  double weight_decay = 0.0;
  // Some rows only: the tensors seen as [rows, numel / rows] (rows = param->dim(0)), and the
  // update of rows[i] (i32 [R] on the parameter's device, distinct, in [0, rows)) alone. Null:
  // every element. The overlapped optimizer step updates the token-embedding rows of the next
  // batch first and the others after the blocks (train.overlap_update).
  const Tensor* rows = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- elementwise ----
  virtual void fill(Tensor& x, double value) = 0;
  virtual void add(Tensor& out, const Tensor& a, const Tensor& b) = 0;       // out = a + b
  // out = alpha * a + beta * b in one pass (out may alias a or b): residual sums with gains,
  // instead of a copy followed by axpy.
  virtual void add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b,
                          double beta) = 0;
  virtual void axpy(Tensor& y, const Tensor& x, double alpha) = 0;          // y += alpha * x
  virtual void scale(Tensor& x, double s) = 0;                              // x *= s
  virtual double dot(const Tensor& a, const Tensor& b) = 0;                 // sum a*b (f64)
  // acc[0] += sum x^2, with acc a one-element f64 tensor on x's device: no host round trip, so
  // a global gradient norm over many tensors costs one synchronisation.
  virtual void sum_squares_into(Tensor& acc, const Tensor& x) = 0;

  // ---- matrix products ----
  // C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C; op(X) = X^T when trans.
  virtual void matmul(Tensor& C, const Tensor& A, bool transA, const Tensor& B, bool transB,
                      double alpha, double beta) = 0;
  virtual void add_bias(Tensor& y, const Tensor& bias) = 0;     // y[N,C] += bias[C]
  virtual void bias_grad(Tensor& dbias, const Tensor& dy) = 0;  // dbias[C] += sum_n dy[N,C]
  // The bias-column layout (kBiasColumnPad): a layer input stored as x_ext [N, K + 8] whose
  // first K columns are x, column K all ones and the rest zeros (layernorm_fwd writes it). The
  // weight-gradient product over x_ext then yields the bias gradient as its column K:
  //   dwe[O, K + 8] = dy[N, O]^T x_ext,  dW = dwe[:, :K],  db = dwe[:, K] = colsum(dy),
  // so dy is read once for both instead of again by a bias_grad pass.
  // dw [O, K] = beta * dw + dy^T x (beta 0 or 1); db [O] += colsum(dy); x in the bias-column
  // layout. The product goes to dwe [O, K + kBiasColumnPad], whose columns copy_columns then
  // moves into dw and adds into db.
  virtual void linear_wgrad_bias_column(Tensor& dw, Tensor& db, const Tensor& dy,
                                        const Tensor& x_ext, double beta) {
    OFT_CHECK(is_bias_column_layout(x_ext, dw),
              "linear_wgrad_bias_column: x ", shape_str(x_ext.shape()),
              " is not in the bias-column layout of dW ", shape_str(dw.shape()));
    OFT_CHECK(db.numel() == dw.dim(0), "linear_wgrad_bias_column: db ", shape_str(db.shape()),
              " for dW ", shape_str(dw.shape()));
    OFT_CHECK(beta == 0.0 || beta == 1.0, "linear_wgrad_bias_column: beta must be 0 or 1, got ",
              beta);
    const int64_t O = dw.dim(0), K = dw.dim(1);
    Tensor dwe = Tensor::empty({O, K + kBiasColumnPad}, dw.dtype(), dw.device());
    matmul(dwe, dy, true, x_ext, false, 1.0, 0.0);
    copy_columns(dw, 0, dwe, 0, K, beta == 1.0);
    Tensor db_col = db.view({O, 1});
    copy_columns(db_col, 0, dwe, K, 1, true);
  }
  // y itself, or a contiguous copy of its first C columns when it is [N, C + kBiasColumnPad]
  // (the bias-column layout).
  Tensor without_bias_column(const Tensor& y, int64_t C) {
    if (!is_bias_column_layout(y, C)) return y;
    Tensor yc = Tensor::empty({y.dim(0), C}, y.dtype(), y.device());
    copy_columns(yc, 0, y, 0, C, false);
    return yc;
  }

  // ---- norms (rows of length C) ----
  // LayerNorm: y = (x - mean) * rstd * w + b ; saves mean[N], rstd[N]. y is [N, C], or
  // [N, C + kBiasColumnPad] for the bias-column layout (above): its column C is then written 1
  // and the rest of the pad 0.
  virtual void layernorm_fwd(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                             const Tensor& w, const Tensor& b, double eps) = 0;
  // dx = (accumulate ? dx : 0) + d x; dw, db += the parameter gradients; dsum (may be null)
  // += sum_n dx[N,C] of the dx written: the bias gradient of a layer whose output gradient dx is
  // (the residual stream's), taken while the rows pass by instead of in a bias_grad of its own.
  virtual void layernorm_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                             const Tensor& x, const Tensor& w, const Tensor& mean,
                             const Tensor& rstd, bool accumulate, Tensor* dsum) = 0;
  // LayerNorm whose output y [N, C] is also the input of a per-token grouped gate (gated
  // attention's linear per-head gate): layernorm_fwd, then logits [N, G] = grouped_linear(y, gw
  // [G, 1, C / G], gb [G]) and gate = sigmoid(logits), as grouped_linear_act_fwd computes them
  // from the stored y. The CUDA backend computes the gate in the norm's kernel (bf16 rows that
  // fit one warp); everything else composes as below. y may be in the bias-column layout, as
  // for layernorm_fwd.
  virtual void layernorm_gate_fwd(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& gate,
                                  Tensor& logits, const Tensor& x, const Tensor& w,
                                  const Tensor& b, double eps, const Tensor& gw,
                                  const Tensor& gb) {
    layernorm_fwd(y, mean, rstd, x, w, b, eps);
    grouped_linear_act_fwd(gate, logits, without_bias_column(y, w.numel()), gw, gb,
                           Activation::Sigmoid);
  }
  // Its backward: the gate's parameter gradients dgw, dgb += from dgate [N, G] (the gradient of
  // gate) and logits, then layernorm_bwd of dy plus the gate's input gradient (dx, dw, db, dsum
  // as there). y is the forward output, b the norm's bias (may be undefined): the composition
  // reads y, a fused kernel recomputes it from x, w and b.
  virtual void layernorm_gate_bwd(Tensor& dx, Tensor& dw, Tensor& db, Tensor& dgw, Tensor& dgb,
                                  const Tensor& dy, const Tensor& dgate, const Tensor& logits,
                                  const Tensor& y, const Tensor& x, const Tensor& w,
                                  const Tensor& b, const Tensor& gw, const Tensor& mean,
                                  const Tensor& rstd,
                                  bool accumulate, Tensor* dsum) {
    Tensor dyg = dy.clone();
    grouped_linear_act_bwd(dyg, dgw, dgb, dgate, logits, without_bias_column(y, w.numel()), gw,
                           true, Activation::Sigmoid);
    layernorm_bwd(dx, dw, db, dyg, x, w, mean, rstd, accumulate, dsum);
  }
  // RMSNorm, seed B form: y = x / (sqrt(mean(x^2)) + eps) * w ; saves inv[N] = 1/(rms+eps).
  virtual void rmsnorm_fwd(Tensor& y, Tensor& inv, const Tensor& x, const Tensor& w,
                           double eps) = 0;
  virtual void rmsnorm_bwd(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                           const Tensor& w, const Tensor& inv, bool accumulate,
                           Tensor* dsum) = 0;  // dx, dw, dsum as layernorm_bwd

  // ---- activations ----
  // Elementwise: y may be x (in place), dx may be dy.
  virtual void activation_fwd(Tensor& y, const Tensor& x, Activation a) = 0;
  virtual void activation_bwd(Tensor& dx, const Tensor& dy, const Tensor& x, Activation a) = 0;

  // ---- embeddings ----
  // out[B*T, C] = wte[tokens] + wpe[pos_offset + t] (wpe may be undefined: no positions).
  virtual void embedding_fwd(Tensor& out, const Tensor& tokens, const Tensor& wte,
                             const Tensor& wpe, int64_t T, int64_t pos_offset) = 0;
  virtual void embedding_bwd(Tensor& dwte, Tensor& dwpe, const Tensor& dout,
                             const Tensor& tokens, int64_t T, int64_t pos_offset) = 0;

  // ---- attention ----
  // qkv[B*T, 3C] (q | k | v, heads contiguous inside each) -> out[B*T, C].
  // `saved` is backend-owned state for the backward (CPU: probabilities [B,H,T,T]); pass the
  // same tensor to attention_bwd. key_mask (optional) is [B*T] i32, 0 = padding key.
  virtual void attention_fwd(Tensor& out, Tensor& saved, const Tensor& qkv,
                             const Tensor& key_mask, int64_t B, int64_t T,
                             const AttentionSpec& spec) = 0;
  // dsum (may be null, f32 [3C]) += column sums of the dqkv written: the qkv bias gradient,
  // which the GPU takes from the kernels' tiles instead of reading dqkv again.
  virtual void attention_bwd(Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                             const Tensor& saved, const Tensor& key_mask, int64_t B, int64_t T,
                             const AttentionSpec& spec, Tensor* dsum = nullptr) = 0;
  // Whether attention_fwd / attention_bwd take AttentionSpec::gate for this spec and dtype
  // (the per-head gate applied in the epilogue instead of a head_gate_fwd pass).
  virtual bool gate_in_epilogue(const AttentionSpec& spec, DType dt) const {
    (void)spec;
    (void)dt;
    return false;
  }

  // ---- per-head pieces of attention variants (gates, QK-norm) ----
  // G independent linear maps ("grouped"): for each group g,
  //   y[n, g*O:(g+1)*O] = x[n, g*I:(g+1)*I] @ w[g]^T + b[g*O:(g+1)*O];  w: [G, O, I], b: [G*O].
  virtual void grouped_linear_fwd(Tensor& y, const Tensor& x, const Tensor& w,
                                  const Tensor& b) = 0;
  virtual void grouped_linear_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                  const Tensor& x, const Tensor& w, bool accumulate_dx) = 0;
  // The gate networks' last layer with its activation: y = grouped_linear(x, w, b) (kept for
  // the backward), act = a(y). The CUDA backend applies a sigmoid in the grouped product's
  // kernel; everything else composes as below.
  virtual void grouped_linear_act_fwd(Tensor& act, Tensor& y, const Tensor& x, const Tensor& w,
                                      const Tensor& b, Activation a) {
    grouped_linear_fwd(y, x, w, b);
    activation_fwd(act, y, a);
  }
  // Its backward from dact: dy = dact * a'(y), then grouped_linear_bwd with dy. The CUDA
  // backend forms dy in the grouped backward's kernel (a sigmoid; f32, never stored).
  virtual void grouped_linear_act_bwd(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dact,
                                      const Tensor& y, const Tensor& x, const Tensor& w,
                                      bool accumulate_dx, Activation a) {
    Tensor dy = Tensor::empty(y.shape(), y.dtype(), y.device());
    activation_bwd(dy, dact, y, a);
    grouped_linear_bwd(dx, dw, db, dy, x, w, accumulate_dx);
  }
  // Per-head gating: out[n, h*D + d] = x[n, h*D + d] * gate[n / rows_per_gate, h].
  // gate is [N / rows_per_gate, H]: rows_per_gate = 1 per token, T per sequence, N global.
  virtual void head_gate_fwd(Tensor& out, const Tensor& x, const Tensor& gate,
                             int64_t rows_per_gate) = 0;
  // dx = dout * gate (may alias dout); dgate (overwritten) = sum over the gate's rows and d.
  virtual void head_gate_bwd(Tensor& dx, Tensor& dgate, const Tensor& dout, const Tensor& x,
                             const Tensor& gate, int64_t rows_per_gate) = 0;
  // y[r, :] = mean of x[r*k:(r+1)*k, :]  (x: [R*k, H], y: [R, H]); backward spreads dy / k.
  virtual void group_mean_fwd(Tensor& y, const Tensor& x, int64_t k) = 0;
  virtual void group_mean_bwd(Tensor& dx, const Tensor& dy, int64_t k) = 0;
  // QK-norm on a fused qkv[N, 3C] buffer with H heads of width D: q and k of every head are
  // RMS-normalised over D (seed B form, x / (rms + eps)) and scaled by wq[D] / wk[D] (shared by
  // all heads); v is copied. inv[N, 2H] keeps 1/(rms + eps).
  virtual void qk_norm_fwd(Tensor& out, Tensor& inv, const Tensor& qkv, const Tensor& wq,
                           const Tensor& wk, int64_t H, double eps) = 0;
  virtual void qk_norm_bwd(Tensor& dqkv, Tensor& dwq, Tensor& dwk, const Tensor& dout,
                           const Tensor& qkv, const Tensor& wq, const Tensor& wk,
                           const Tensor& inv, int64_t H) = 0;

  // Causal running mean over each sequence of T rows (the uniform causal matrix C of shaped
  // attention, C[i,j] = 1/(i+1) for j <= i): y[b*T + i] = mean_{j<=i} x[b*T + j]; x, y [B*T, C].
  virtual void causal_mean_fwd(Tensor& y, const Tensor& x, int64_t T) = 0;
  virtual void causal_mean_bwd(Tensor& dx, const Tensor& dy, int64_t T) = 0;
  // dst[:, dst_col:dst_col+ncols] (+)= src[:, src_col:src_col+ncols] (row-major 2-D tensors).
  virtual void copy_columns(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col,
                            int64_t ncols, bool accumulate) = 0;

  // ---- loss ----
  // losses[N] = -log softmax(logits[N, :vocab])[target]; rows with target < 0 get 0. Columns
  // >= vocab are padding (the output layer is padded to an aligned width) and are ignored.
  virtual void cross_entropy_fwd(Tensor& losses, const Tensor& logits, const Tensor& targets,
                                 int64_t vocab) = 0;
  // dlogits[N, :vocab] = scale * (softmax - onehot(target)); zero rows for target < 0 and zero
  // padding columns.
  virtual void cross_entropy_bwd(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                 double scale, int64_t vocab) = 0;
  // Both at once for a training step, in one pass over the logits: losses[N] exactly as
  // cross_entropy_fwd, and the UNSCALED gradient dlogits[N, :vocab] = softmax - onehot(target)
  // (cross_entropy_bwd at scale 1: zero rows for target < 0, zero padding columns); the caller
  // applies its scale where dlogits is consumed (the alpha of the matrix products). dlogits may
  // alias logits (in place). A target >= vocab fails on the CPU; the CUDA backend, which cannot
  // check it without a copy, writes a NaN loss and a NaN gradient row, as its forward does.
  virtual void cross_entropy_fwd_grad(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                                      const Tensor& targets, int64_t vocab) = 0;

  // ---- optimizer ----
  virtual void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                     const AdamWStep& h) = 0;
  // The clipping of a step from its statistics, on their device. stats f64 [4]: [0] the sum of
  // squared gradients and [1] the sum of squared per-row losses (sum_squares_into) are read;
  // written are [2] = clip_factor(max_norm, sqrt([0])) (f64) and [3] = 1 when [0] or [1] is not
  // finite, else 0.
  virtual void clip_from_stats(Tensor& stats, double max_norm) = 0;

  // ---- row selection (the masked-LM head runs on the masked positions only) ----
  // dst[i, :] = src[idx[i], :]   (dst [M, C], src [N, C], idx [M] i32 on the device)
  virtual void gather_rows(Tensor& dst, const Tensor& src, const Tensor& idx) = 0;
  // dst[idx[i], :] = src[i, :]; other rows of dst are left as they are (indices are distinct).
  virtual void scatter_rows(Tensor& dst, const Tensor& src, const Tensor& idx) = 0;

  // ---- fused layers ----
  // y[N, out] = x[N, in] @ w[out, in]^T + b[out] (b may be undefined). The CUDA backend adds
  // the bias in the matrix product's epilogue.
  // x may be in the bias-column layout ([N, in + kBiasColumnPad]; the pad is not read).
  virtual void linear_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b) {
    if (is_bias_column_layout(x, w))
      return linear_fwd(y, without_bias_column(x, w.dim(1)), w, b);
    matmul(y, x, false, w, true, 1.0, 0.0);
    if (b.defined()) add_bias(y, b);
  }
  // A linear layer added onto a residual stream: y[N, out] = res[N, out] + x @ w^T + b (b may
  // be undefined). y must not alias res, x or w. The CUDA backend reads res as the product's C
  // operand (beta = 1) and adds the bias in the epilogue: one pass instead of a product and a
  // sum.
  virtual void linear_residual_fwd(Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b,
                                   const Tensor& res) {
    OFT_CHECK(y.raw() != res.raw(), "linear_residual_fwd: y must not alias res");
    linear_fwd(y, x, w, b);
    add_scaled(y, y, 1.0, res, 1.0);
  }
  // A linear layer and the activation after it (the first half of an MLP):
  //   pre[N, out] = x[N, in] @ w[out, in]^T + b[out] (b may be undefined),  act = a(pre).
  // pre is kept for linear_act_bwd_dx. With ReLU it may be undefined: the derivative is read
  // from act there (see linear_act_bwd_dx), and only act is written. The CUDA backend applies
  // GELU-tanh (bf16) and ReLU in the matrix product's epilogue; everything else composes
  // linear_fwd and activation_fwd as below.
  // x may be in the bias-column layout ([N, in + kBiasColumnPad]; the pad is not read).
  virtual void linear_act_fwd(Tensor& act, Tensor& pre, const Tensor& x, const Tensor& w,
                              const Tensor& b, Activation a) {
    if (is_bias_column_layout(x, w))
      return linear_act_fwd(act, pre, without_bias_column(x, w.dim(1)), w, b, a);
    if (pre.defined()) {
      linear_fwd(pre, x, w, b);
      activation_fwd(act, pre, a);
      return;
    }
    OFT_CHECK(a == Activation::ReLU, "linear_act_fwd: only ReLU may go without `pre`");
    linear_fwd(act, x, w, b);
    activation_fwd(act, act, a);  // elementwise, in place
  }
  // The input gradient of a linear layer taken on through the activation that fed it: with
  // act = a(pre) and out = act @ w^T + b (w: [O, F]), given dout [N, O],
  //   dpre[N, F] = (dout @ w) * a'(pre)   (overwritten).
  // `saved` is pre, or, for ReLU only, act = relu(pre) itself: relu'(x) = [x > 0] =
  // [relu(x) > 0] for every x (activation_bwd's ReLU only tests its input's sign). The layer's
  // own parameter gradients are not computed here (Linear::backward with no dx does them).
  // dpre must not alias dout or saved. The CUDA backend applies GELU-tanh' (bf16) in the
  // product's epilogue. dsum (may be null, f32 [F]) += colsum(dpre): the bias gradient of the
  // layer that wrote pre, which the Hopper product takes from its tiles.
  virtual void linear_act_bwd_dx(Tensor& dpre, const Tensor& dout, const Tensor& w,
                                 const Tensor& saved, Activation a, Tensor* dsum = nullptr) {
    matmul(dpre, dout, false, w, false, 1.0, 0.0);
    activation_bwd(dpre, dpre, saved, a);
    if (dsum) bias_grad(*dsum, dpre);
  }

  // ---- multi-tensor forms (one launch for every parameter on the GPU; loops by default) ----
  // AdamW on every item with h's hyper-parameters (h.weight_decay is ignored: each item has
  // its own), then compute = bf16/f32 copy of the updated master where an item has one.
  virtual void adamw_multi(const std::vector<AdamWTensors>& items, const AdamWStep& h) {
    for (const AdamWTensors& t : items) {
      AdamWStep s = h;
      s.weight_decay = t.weight_decay;
      const bool copy = t.compute && !t.compute->same_storage(*t.param);
      if (!t.rows) {
        adamw(*t.param, *t.grad, *t.m, *t.v, s);
        if (copy) convert(*t.compute, *t.param);
        continue;
      }
      const int64_t n = t.param->dim(0);
      for (double r : t.rows->to_vector()) {  // one row at a time: [1, numel / n] views
        const int64_t i = static_cast<int64_t>(r);
        OFT_ASSERT(0 <= i && i < n, "adamw_multi: row ", i, " of ", n);
        auto row = [&](const Tensor& x) { return x.view({n, x.numel() / n}).slice(i, i + 1); };
        Tensor p = row(*t.param), m = row(*t.m), v = row(*t.v);
        adamw(p, row(*t.grad), m, v, s);
        if (copy) {
          Tensor c = row(*t.compute);
          convert(c, p);
        }
      }
    }
  }
  // acc[0] += sum over the tensors of sum x^2 (acc: one f64 on the tensors' device).
  virtual void sum_squares_multi(Tensor& acc, const std::vector<const Tensor*>& xs) {
    for (const Tensor* x : xs) sum_squares_into(acc, *x);
  }
  // Every tensor = 0.
  virtual void zero_multi(const std::vector<Tensor*>& xs) {
    for (Tensor* x : xs) fill(*x, 0.0);
  }

  // ---- simulated quantization (evaluation only; no backward) ----
  // x = delta * (clamp(round(x / delta) + zero_point, qmin, qmax) - zero_point) in place, with
  // q's grid (q.enabled is not looked at), rounding half to even. Computed in f64 from x's
  // value; f32 and bf16 results are rounded to f32 first and then to x's dtype, as a host copy
  // in f32 would be, so both backends give the same bits.
  virtual void fake_quant(Tensor& x, const FakeQuant& q) = 0;
  // The smallest and largest value of x (NaNs skipped) and whether x holds a NaN: a range
  // estimator's calibration input without copying x to the host. Waits for x. An empty x gives
  // lo = +inf, hi = -inf.
  virtual ValueRange value_range(const Tensor& x) = 0;

  // ---- outlier metrics (evaluation only; no backward) ----
  // Per row r of row_len consecutive values of x (numel % row_len == 0, row_len >= 2 when
  // kurtosis): out[r, 0] = the Pearson kurtosis mean((x - mean)^4) / (var_unbiased^2 + eps)
  // (NaN when !kurtosis), out[r, 1] = max |x| (NaN when the row holds a NaN). out f64 [rows, 2]
  // on x's device; f64 arithmetic, two passes per row (row_moments.h).
  virtual void row_moments(Tensor& out, const Tensor& x, int64_t row_len, bool kurtosis,
                           double eps) = 0;

  // Seed B's hidden-state sums of h (f32, bf16 or f64; the last dimension is d, numel = B*T*d)
  // for the parts asked for (HiddenStateSums::Part bits), computed in f64 where h lives: a GPU
  // hidden state is not copied to the host. Waits for the result. centre: x~ is each token
  // centred over d (the source's metrics); false leaves the tokens as they are.
  virtual HiddenStateSums hidden_state_sums(const Tensor& h, int64_t B, int64_t T, unsigned parts,
                                            bool centre) = 0;

  // ---- dtype conversion ----
  // dst = src converted to dst's dtype (same numel and device; round to nearest even). The
  // trainer uses it to refresh the bf16 compute copies of f32 master weights.
  virtual void convert(Tensor& dst, const Tensor& src) = 0;
};

Backend& backend(Device d);
Backend& cpu_backend();
// True when this build has the CUDA backend and a GPU it can run on; otherwise
// cuda_unavailable_reason() says why (no driver, no device, wrong architecture, CPU-only build).
bool cuda_available();
std::string cuda_unavailable_reason();

// GPU memory held by tensors: now, the high-water mark since the last reset, and what the
// caching allocator holds from the driver. All zero without CUDA.
struct DeviceMemory {
  size_t in_use = 0, peak = 0, reserved = 0, total = 0;  // bytes; total = the device's memory
};
DeviceMemory device_memory();
void reset_peak_device_memory();
// Blocks until the GPU has finished the work queued on the compute stream (timing); an optimizer
// step on the update stream (below) may still run. No-op without CUDA.
void device_synchronize();

// ---- multi-GPU plumbing (data-parallel training, src/dist) ----
// Chooses the GPU this process uses (data-parallel rank -> its local GPU). Must come before any
// other CUDA work; throws without CUDA or when `index` is not a visible device.
void select_cuda_device(int index);
// GPUs visible to this process (0 without CUDA or a driver).
int cuda_device_count();
// The stream every op runs on, and a second stream for collectives that overlap with it, as
// opaque cudaStream_t handles (nullptr without CUDA).
void* compute_stream_handle();
void* comm_stream_handle();
// Ordering between the two: work enqueued on the comm stream from now on waits for everything
// enqueued so far on the compute stream, and vice versa. No-ops without CUDA.
void comm_wait_compute();
void compute_wait_comm();
// Blocks until the comm stream is idle.
void comm_synchronize();

// ---- the optimizer step beside the next forward (train.overlap_update) ----
// Ops queued between update_stream_begin() and update_stream_end() run on a third stream, the
// update stream (lowest priority), after everything queued so far on the compute stream; the
// compute stream's own kernels are scheduled ahead of its blocks. update_stage_done(s) marks the
// work queued there so far as stage s (the optimizer: the parameters the forward needs from
// stage s on) and compute_wait_update_stage(s) makes the compute stream wait for stage s's last
// mark; while a CUDA graph records, the wait is recorded as a node that waits at every replay.
// update_stream_end() marks everything queued on the update stream; compute_wait_update() waits
// for that, as does every copy from the GPU to the host first, so the host never reads a model
// half updated. update_pending() says whether an update may still run that the compute stream
// has not waited for. Without CUDA the ops run in order and these are no-ops.
void update_stream_begin();
void update_stream_end();
void update_stage_done(int stage);
void compute_wait_update_stage(int stage);
void compute_wait_update();
bool update_pending();

// ---- dispatching free functions (device of the first tensor) ----
inline Backend& on(const Tensor& t) { return backend(t.device()); }

inline void fill(Tensor& x, double v) { on(x).fill(x, v); }
inline void add(Tensor& out, const Tensor& a, const Tensor& b) { on(out).add(out, a, b); }
inline void add_scaled(Tensor& out, const Tensor& a, double alpha, const Tensor& b, double beta) {
  on(out).add_scaled(out, a, alpha, b, beta);
}
inline void axpy(Tensor& y, const Tensor& x, double alpha) { on(y).axpy(y, x, alpha); }
inline void scale(Tensor& x, double s) { on(x).scale(x, s); }
inline void convert(Tensor& dst, const Tensor& src) { on(dst).convert(dst, src); }
inline double dot(const Tensor& a, const Tensor& b) { return on(a).dot(a, b); }
inline double sum_squares(const Tensor& x) { return dot(x, x); }  // sum x^2 (f64)
inline void matmul(Tensor& C, const Tensor& A, bool tA, const Tensor& B, bool tB,
                   double alpha = 1.0, double beta = 0.0) {
  on(C).matmul(C, A, tA, B, tB, alpha, beta);
}
inline void add_bias(Tensor& y, const Tensor& b) { on(y).add_bias(y, b); }
inline void bias_grad(Tensor& db, const Tensor& dy) { on(db).bias_grad(db, dy); }
inline void linear_wgrad_bias_column(Tensor& dw, Tensor& db, const Tensor& dy, const Tensor& x_ext,
                                     double beta) {
  on(dw).linear_wgrad_bias_column(dw, db, dy, x_ext, beta);
}

}  // namespace oft::ops
