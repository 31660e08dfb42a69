// Building blocks over ops: Linear and Norm layers. Each holds handles to its parameters and
// gradients (owned by a ParamStore) and implements forward and backward explicitly; callers
// own the activation buffers, so the same layer serves any batch shape.
#pragma once

#include <string>

#include "model/params.h"
#include "ops/ops.h"

namespace oft {

// y[N, out] = x[N, in] @ W[out, in]^T + b[out]   (PyTorch weight layout)
struct Linear {
  Tensor w, b, dw, db;  // b / db undefined when the layer has no bias
  // Set by a model that takes db from elsewhere (a norm backward's dsum over the same rows):
  // backward() then leaves db alone.
  bool bias_grad_elsewhere = false;
  Param* wparam = nullptr;  // the weight's parameter: its first backward overwrites dW
  Linear() = default;
  Linear(ParamStore& ps, const std::string& name, int64_t in, int64_t out, bool bias, DType dt,
         Device dev);
  void forward(Tensor& y, const Tensor& x) const;
  // y = res + x W^T + b in one pass (y must not alias res).
  void forward_residual(Tensor& y, const Tensor& x, const Tensor& res) const;
  // dx = dy @ W (overwritten, or added when accumulate_dx); dW += dy^T x (dW = dy^T x when it
  // is pending zero); db += colsum(dy) (unless bias_grad_elsewhere). With x in the bias-column
  // layout ([N, in + 8], ops.h) db comes from the weight-gradient product, bias_grad_elsewhere
  // or not: the caller then takes it nowhere else.
  void backward(Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate_dx);
  // Whether x is this layer's input in the bias-column layout.
  bool takes_bias_column(const Tensor& x) const;
};

enum class NormKind { LayerNorm, RMSNorm, None };
NormKind parse_norm(const std::string& s);

// Activation buffers one norm application keeps for its backward.
struct NormSaved {
  Tensor out;        // [N, C] (aliases the input when the norm is None)
  Tensor mean, inv;  // [N]: LayerNorm mean and 1/std, RMSNorm 1/(rms + eps)
};

// The per-token grouped gate that a LayerNorm computes from its own output for the layer
// reading it (gated attention's linear per-head gate, ops layernorm_gate_fwd / _bwd):
// gate = sigmoid(logits), logits [N, G] = grouped_linear(y, w [G, 1, C / G], b [G]).
struct NormGate {
  Tensor* gate = nullptr;            // [N, G], written by the forward
  Tensor* logits = nullptr;          // [N, G], written by the forward, read by the backward
  const Tensor* w = nullptr;         // [G, 1, C / G]
  const Tensor* b = nullptr;         // [G]
  Tensor* dw = nullptr;              // += by the backward
  Tensor* db = nullptr;              // += by the backward
  const Tensor* dgate = nullptr;     // [N, G] d gate, read by the backward
};

struct Norm {
  NormKind kind = NormKind::None;
  double eps = 1e-5;
  Tensor w, b, dw, db;
  Norm() = default;
  Norm(ParamStore& ps, const std::string& name, int64_t C, NormKind kind, double eps, bool bias,
       DType dt, Device dev);
  // Allocates s.out / stats for N rows if needed, then normalises x. With a gate (LayerNorm
  // only), also computes the gate from the output. With `into` (a LayerNorm), the output goes
  // there instead, [N, C + 8] in the bias-column layout (ops.h), and s.out is that tensor.
  void forward(NormSaved& s, const Tensor& x, const NormGate* gate = nullptr,
               Tensor* into = nullptr) const;
  // dx (+)= d norm / dx applied to dy; dsum (may be null) += colsum(dx) of the dx written.
  // With the forward's gate: its parameter gradients, and its input gradient added to dy.
  void backward(Tensor& dx, const Tensor& dy, const Tensor& x, const NormSaved& s,
                bool accumulate_dx, Tensor* dsum = nullptr, const NormGate* gate = nullptr);
};

// The dtype of statistics (norm mean / inverse std, per-row losses) for activations of dtype
// `act`: f32 for bf16 activations, else the activation dtype (f64 in gradient checks).
inline DType stat_dtype(DType act) { return act == DType::BF16 ? DType::F32 : act; }

// Returns `t` if it already has this shape/dtype/device, else a new uninitialised tensor.
Tensor& ensure(Tensor& t, const Shape& shape, DType dt, Device dev);

}  // namespace oft
