// Multi-head self-attention with the outlier-suppressing variants, over ops:
//   qkv = x @ Wqkv^T + b                      [N, 3C]  (q | k | v, heads contiguous)
//   qkv = QKNorm(qkv)          (optional)     RMSNorm over D on q and k, learnable wq[D], wk[D]
//   ctx = P(q k^T / sqrt(D) + mask) v         [N, C]   P = softmax | clipped softmax | softmax1
//   ctx_h *= sigmoid(G_h(x))   (optional)     gated attention, gate types of REFERENCE.md §2
//   out = ctx @ Wo^T + b                      [N, C]
// x is what q/k/v see (the normed block input in pre-norm blocks).
//
// Shaped attention (skipless blocks, REFERENCE.md §3) replaces softmax attention by
//   out_h = (alpha_h I + beta_h P - gamma_h C) V_h,   C[i,j] = 1/(i+1) for j <= i,
// with trainable per-head alpha, beta, gamma (init 1), W_Q initialised to zero (so P = C and
// the layer is the identity at initialisation), no output projection, and V = x except in
// layer 0, where V = x (rg W + sg I)^T with W zero-initialised and trainable scalars rg, sg.
#pragma once

#include <vector>

#include <string>

#include "model/hooks.h"
#include "model/layers.h"
#include "model/model_config.h"

namespace oft {

enum class GateType { None, UnconditionalPerHead, ConditionalPerHead, ConditionalPerToken };
GateType parse_gate_type(const std::string& s);

// Activations one attention application keeps for its backward.
struct AttentionActs {
  Tensor qkv_raw, qkv, qk_inv;  // projection output, after QK-norm (aliases raw without), stats
  Tensor att_saved;             // backend state of the attention op
  Tensor ctx, gated;            // [N, C] before / after the gate (gated aliases ctx without;
                                // ctx is not kept when the gate is in the op's epilogue)
  bool gate_fused = false;      // the gate was applied in the attention op's epilogue
  bool gate_from_norm = false;  // the gate network ran in the input's LayerNorm (norm_gate())
  // The attention op's output (gated, or ctx) stays as the op wrote it until the backward (no
  // hook may rewrite it), so the op keeps no copy of it (AttentionSpec::kept_out).
  bool out_kept = false;
  Tensor hidden, hidden_act;    // MLP gate: [N, H * hidden]
  Tensor logits_tok, logits, gate;  // [N, H], [R, H] (R = N, B or 1), sigmoid(logits)
  Tensor q, k, u, v, cv, tmp;       // shaped attention: q/k projections, x W^T, V, C V, scratch
  // Per query row (b, h, i) the attention entropy of the last forward, [B * H * T] on the host,
  // when the hook asked for it (ActivationHook::wants_attention_entropy) on a GPU; else empty.
  std::vector<double> entropy_rows;
};

class Attention {
 public:
  Attention() = default;
  // seq_len is the training T (for `alpha`: gamma = -alpha / T).
  // shaped: the skipless blocks' shaped attention; layer: block index (layer 0 keeps a
  // reparametrised value projection in shaped attention).
  Attention(ParamStore& ps, const std::string& name, const ModelConfig& cfg, int64_t seq_len,
            bool causal, DType dt, Device dev, bool shaped = false, int64_t layer = 0);

  // out[N, C] = attention(x[N, C]); key_mask: optional [B*T] i32 (0 = padding key). With a
  // residual, out = *residual + attention(x), the sum taken in the output projection's product
  // (out must not alias *residual).
  void forward(AttentionActs& a, Tensor& out, const Tensor& x, const Tensor& key_mask, int64_t B,
               int64_t T, const Tensor* residual = nullptr);
  // dx (+)= d out / d x applied to dout.
  void backward(AttentionActs& a, Tensor& dx, const Tensor& dout, const Tensor& x,
                const Tensor& key_mask, int64_t B, int64_t T, bool accumulate_dx);

  const ops::AttentionSpec& spec() const { return spec_; }
  // Observer of QKV / Context / GatedContext (see hooks.h); nullptr = none.
  void set_hook(ActivationHook* hook, int64_t layer) {
    hook_ = hook;
    layer_ = layer;
  }
  GateType gate_type() const { return gate_; }
  // Whether the gate network is the linear per-token one, which reads nothing but this layer's
  // input: a LayerNorm that produces the input can then run it (ops layernorm_gate_fwd / _bwd).
  bool gate_takes_norm() const;
  // Whether this layer may take its input x in the bias-column layout ([N, C + 8], ops.h): the
  // biased c_attn is the only reader of x (not shaped; no gate network, or one a norm computes:
  // the caller then hands it to the norm, norm_gate, whenever x is in the layout). c_attn's bias
  // gradient then comes from its weight-gradient product and the attention backward sums no
  // dqkv.
  bool takes_bias_column() const;
  // Hands the gate network of this application to that norm: its tensors for Norm::forward /
  // backward. This layer's forward then takes a.gate as computed, and its backward leaves dgate
  // for the norm's backward (a.gate_from_norm, cleared by the next forward without it).
  NormGate norm_gate(AttentionActs& a);
  // The output projection (c_proj), or nullptr for shaped attention (which has none).
  Linear* out_proj() { return shaped_ ? nullptr : &proj_; }

 private:
  int64_t rows_per_gate(int64_t B, int64_t T) const;
  ops::AttentionSpec gated_spec(AttentionActs& a, int64_t B, int64_t T);
  // spec_ for the op writing / reading a.ctx, with kept_out where the forward kept it.
  ops::AttentionSpec ctx_spec(AttentionActs& a) const;
  void gate_forward(AttentionActs& a, const Tensor& x, int64_t B, int64_t T);
  bool gate_backward(AttentionActs& a, Tensor& dx, const Tensor& x, int64_t B, int64_t T,
                     bool accumulate_dx);
  // The attention op, with the hook's quantization request applied when there is one.
  void run_attention(AttentionActs& a, const Tensor& key_mask, int64_t B, int64_t T);
  void shaped_forward(AttentionActs& a, Tensor& out, const Tensor& x, const Tensor& key_mask,
                      int64_t B, int64_t T);
  void shaped_backward(AttentionActs& a, Tensor& dx, const Tensor& dout, const Tensor& x,
                       const Tensor& key_mask, int64_t B, int64_t T, bool accumulate_dx);
  static Tensor scalar_grad(double v, const Tensor& like);

  ops::AttentionSpec spec_;
  ActivationHook* hook_ = nullptr;
  int64_t layer_ = 0;
  int64_t C_ = 0, H_ = 0, D_ = 0, hid_ = 0;
  double qk_eps_ = 1e-5;
  Linear qkv_, proj_;
  bool qk_norm_ = false;
  Tensor wq_, wk_, dwq_, dwk_;
  GateType gate_ = GateType::None;
  bool gate_mlp_ = false, gate_all_ = false;
  Tensor gate_logit_, dgate_logit_;  // unconditional: [1, H]
  Tensor gw1_, gb1_, dgw1_, dgb1_;   // per-head linear [H, 1, D] or MLP first layer [H, hid, D]
  Tensor gw2_, gb2_, dgw2_, dgb2_;   // MLP second layer [H, 1, hid]
  Linear gate_all_features_;         // Linear(C -> H)
  bool shaped_ = false, value_reparam_ = false;
  Linear q_, k_, v_;  // shaped: separate q / k projections, layer-0 value map W
  Tensor sa_alpha_, sa_beta_, sa_gamma_, dsa_alpha_, dsa_beta_, dsa_gamma_;  // [1, H]
  Tensor v_rg_, v_sg_, dv_rg_, dv_sg_;                                        // [1]
  // Backward scratch.
  Tensor dv_, dcv_, dpv_, dq_, dtmp_, dhead_;
  Tensor dctx_, dqkv_, dqkv_raw_, dlogits_, dlogits_tok_, dhidden_, dgate_;
};

}  // namespace oft
