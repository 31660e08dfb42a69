// Attention layer forward/backward (see attention.h).
#include "model/attention.h"

#include <cmath>
#include <cstdio>

#include "model/transformer.h"

namespace oft {

GateType parse_gate_type(const std::string& s) {
  if (s == "none") return GateType::None;
  if (s == "unconditional_per_head") return GateType::UnconditionalPerHead;
  if (s == "conditional_per_head") return GateType::ConditionalPerHead;
  if (s == "conditional_per_token") return GateType::ConditionalPerToken;
  fail("model.attn_gate_type: unknown value '", s,
       "': use none, unconditional_per_head, conditional_per_head or conditional_per_token");
}

Attention::Attention(ParamStore& ps, const std::string& name, const ModelConfig& cfg,
                     int64_t seq_len, bool causal, DType dt, Device dev, bool shaped,
                     int64_t layer) {
  spec_ = parse_attention(cfg);
  spec_.causal = causal;
  if (cfg.alpha > 0) {
    spec_.prob = ops::ProbFn::Clipped;
    spec_.gamma = -cfg.alpha / double(seq_len);
    spec_.zeta = 1.0;
  }
  C_ = cfg.d_model;
  H_ = cfg.n_head;
  D_ = C_ / H_;
  qk_eps_ = cfg.norm_eps;
  shaped_ = shaped;
  if (shaped_) {
    OFT_CHECK(causal, "model.block=", cfg.block, ": shaped attention is causal only (its uniform "
                      "matrix C averages over past tokens); use model.objective=clm");
    OFT_CHECK(parse_gate_type(cfg.attn_gate_type) == GateType::None, "model.block=", cfg.block,
              " has no output projection to gate: set model.attn_gate_type=none");
    // Seed B: only the fused Q/K projection has a bias.
    q_ = Linear(ps, name + ".q_proj", C_, C_, true, dt, dev);
    k_ = Linear(ps, name + ".k_proj", C_, C_, true, dt, dev);
    ps.find(name + ".q_proj.weight")->fixed_init = true;  // zero: P = C at initialisation
    auto head_params = [&](const char* n, Tensor& v, Tensor& g) {
      Param& p = ps.create(name + "." + n, {1, H_}, dt, dev, false);
      ops::fill(p.value, 1.0);
      p.fixed_init = true;
      v = p.compute, g = p.grad;
    };
    head_params("shaped_alpha", sa_alpha_, dsa_alpha_);
    head_params("shaped_beta", sa_beta_, dsa_beta_);
    head_params("shaped_gamma", sa_gamma_, dsa_gamma_);
    value_reparam_ = layer == 0;
    if (value_reparam_) {
      v_ = Linear(ps, name + ".v_proj", C_, C_, false, dt, dev);
      ps.find(name + ".v_proj.weight")->fixed_init = true;  // zero: V = x at initialisation
      Param& rg = ps.create(name + ".v_resid_gain", {1}, dt, dev, false);
      Param& sg = ps.create(name + ".v_skip_gain", {1}, dt, dev, false);
      ops::fill(rg.value, 1.0);
      ops::fill(sg.value, 1.0);
      rg.fixed_init = sg.fixed_init = true;
      v_rg_ = rg.value, dv_rg_ = rg.grad, v_sg_ = sg.value, dv_sg_ = sg.grad;
    }
  } else {
    qkv_ = Linear(ps, name + ".c_attn", C_, 3 * C_, cfg.bias, dt, dev);
    proj_ = Linear(ps, name + ".c_proj", C_, C_, cfg.bias, dt, dev);
  }
  qk_norm_ = cfg.qk_norm;
  // The attention backward sums the dqkv it writes (the GPU from its tiles): c_attn's bias
  // gradient, unless QK-norm's backward changes dqkv afterwards.
  if (!shaped_ && !qk_norm_ && qkv_.b.defined()) qkv_.bias_grad_elsewhere = true;
  if (qk_norm_) {
    Param& q = ps.create(name + ".q_norm.weight", {D_}, dt, dev, false);
    Param& k = ps.create(name + ".k_norm.weight", {D_}, dt, dev, false);
    ops::fill(q.value, 1.0);
    ops::fill(k.value, 1.0);
    wq_ = q.compute, dwq_ = q.grad, wk_ = k.compute, dwk_ = k.grad;
  }
  gate_ = parse_gate_type(cfg.attn_gate_type);
  if (gate_ == GateType::None) return;
  OFT_CHECK(cfg.attn_gate_init > 0 && cfg.attn_gate_init < 1,
            "model.attn_gate_init must be in (0, 1) (got ", cfg.attn_gate_init, ")");
  const double bias0 = std::log(cfg.attn_gate_init / (1 - cfg.attn_gate_init));
  if (gate_ == GateType::UnconditionalPerHead) {
    Param& g = ps.create(name + ".gate.logit", {1, H_}, dt, dev, false);
    ops::fill(g.value, bias0);
    g.fixed_init = true;
    gate_logit_ = g.compute, dgate_logit_ = g.grad;
    return;
  }
  gate_mlp_ = cfg.attn_gate_mlp;
  gate_all_ = cfg.attn_gate_linear_all_features;
  OFT_CHECK(!(gate_mlp_ && gate_all_), "model.attn_gate_mlp and "
            "model.attn_gate_linear_all_features exclude each other: choose one gate network");
  if (gate_ == GateType::ConditionalPerHead && causal)
    std::fprintf(stderr, "oft: warning: %s: attn_gate_type=conditional_per_head averages gate "
                         "logits over the sequence, so a causal model's gates see future tokens\n",
                 name.c_str());
  if (gate_all_) {
    gate_all_features_ = Linear(ps, name + ".gate.all_features", C_, H_, true, dt, dev);
    Param* gb = ps.find(name + ".gate.all_features.bias");
    ops::fill(gb->value, bias0);  // the master: the bf16 compute copy follows at sync_compute
    gb->fixed_init = true;
  } else if (gate_mlp_) {
    hid_ = cfg.attn_gate_hidden;
    OFT_CHECK(hid_ >= 1, "model.attn_gate_hidden must be >= 1");
    Param& w1 = ps.create(name + ".gate.fc1.weight", {H_, hid_, D_}, dt, dev, true);
    Param& b1 = ps.create(name + ".gate.fc1.bias", {H_ * hid_}, dt, dev, false);
    Param& w2 = ps.create(name + ".gate.fc2.weight", {H_, 1, hid_}, dt, dev, true);
    Param& b2 = ps.create(name + ".gate.fc2.bias", {H_}, dt, dev, false);
    ops::fill(b2.value, bias0);
    b2.fixed_init = true;
    gw1_ = w1.compute, dgw1_ = w1.grad, gb1_ = b1.compute, dgb1_ = b1.grad;
    gw2_ = w2.compute, dgw2_ = w2.grad, gb2_ = b2.compute, dgb2_ = b2.grad;
  } else {
    Param& w1 = ps.create(name + ".gate.weight", {H_, 1, D_}, dt, dev, true);
    Param& b1 = ps.create(name + ".gate.bias", {H_}, dt, dev, false);
    ops::fill(b1.value, bias0);
    b1.fixed_init = true;
    gw1_ = w1.compute, dgw1_ = w1.grad, gb1_ = b1.compute, dgb1_ = b1.grad;
  }
}

int64_t Attention::rows_per_gate(int64_t B, int64_t T) const {
  switch (gate_) {
    case GateType::UnconditionalPerHead: return B * T;
    case GateType::ConditionalPerHead: return T;
    default: return 1;
  }
}

Tensor Attention::scalar_grad(double v, const Tensor& like) {
  return Tensor::from_vector({1}, {v}, like.dtype()).to(like.device());
}

void Attention::run_attention(AttentionActs& a, const Tensor& key_mask, int64_t B, int64_t T) {
  AttentionQuantRequest* q = hook_ ? hook_->attention_quant(layer_) : nullptr;
  a.out_kept = hook_ == nullptr;  // a hook may rewrite the context after the op
  // On the CPU the op keeps the probabilities (attention_probs reads them); on a GPU the op
  // computes the rows' entropy itself when the hook wants it.
  const bool entropy =
      hook_ && hook_->wants_attention_entropy() && a.qkv.device() != Device::CPU;
  a.entropy_rows.clear();
  if (entropy) a.entropy_rows.assign(static_cast<size_t>(B * H_ * T), 0.0);
  if (!q) {
    ops::AttentionSpec spec = ctx_spec(a);
    if (entropy) spec.entropy_rows = a.entropy_rows.data();
    ops::on(a.qkv).attention_fwd(a.ctx, a.att_saved, a.qkv, key_mask, B, T, spec);
    return;
  }
  ops::AttentionSpec spec = spec_;
  if (entropy) spec.entropy_rows = a.entropy_rows.data();
  spec.score_quant = q->scores;
  spec.prob_quant = q->probs;
  double sr[2], pr[2];
  if (q->observe) {
    spec.score_range = sr;
    spec.prob_range = pr;
  }
  ops::on(a.qkv).attention_fwd(a.ctx, a.att_saved, a.qkv, key_mask, B, T, spec);
  if (q->observe) hook_->on_attention_ranges(layer_, sr, pr);
}

void Attention::shaped_forward(AttentionActs& a, Tensor& out, const Tensor& x,
                               const Tensor& key_mask, int64_t B, int64_t T) {
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  for (Tensor* t : {&a.q, &a.k, &a.v, &a.cv, &a.tmp, &a.ctx}) ensure(*t, {N, C_}, dt, dev);
  q_.forward(a.q, x);
  k_.forward(a.k, x);
  if (value_reparam_) {
    // V = rg * (x W^T) + sg * x
    ensure(a.u, {N, C_}, dt, dev);
    v_.forward(a.u, x);
    a.v.copy_from(x);
    ops::scale(a.v, v_sg_.item());
    ops::axpy(a.v, a.u, v_rg_.item());
  } else {
    a.v.copy_from(x);
  }
  ensure(a.qkv_raw, {N, 3 * C_}, dt, dev);
  be.copy_columns(a.qkv_raw, 0, a.q, 0, C_, false);
  be.copy_columns(a.qkv_raw, C_, a.k, 0, C_, false);
  be.copy_columns(a.qkv_raw, 2 * C_, a.v, 0, C_, false);
  if (hook_) hook_->on_activation(Point::QKV, layer_, a.qkv_raw, B, T);
  if (qk_norm_) {
    ensure(a.qkv, {N, 3 * C_}, dt, dev);
    ensure(a.qk_inv, {N, 2 * H_}, stat_dtype(dt), dev);
    be.qk_norm_fwd(a.qkv, a.qk_inv, a.qkv_raw, wq_, wk_, H_, qk_eps_);
  } else {
    a.qkv = a.qkv_raw;
  }
  run_attention(a, key_mask, B, T);  // P V
  if (hook_) hook_->on_activation(Point::Context, layer_, a.ctx, B, T);
  be.causal_mean_fwd(a.cv, a.v, T);                                    // C V
  be.head_gate_fwd(out, a.v, sa_alpha_, N);
  be.head_gate_fwd(a.tmp, a.ctx, sa_beta_, N);
  ops::axpy(out, a.tmp, 1.0);
  be.head_gate_fwd(a.tmp, a.cv, sa_gamma_, N);
  ops::axpy(out, a.tmp, -1.0);
}

void Attention::shaped_backward(AttentionActs& a, Tensor& dx, const Tensor& dout,
                                const Tensor& x, const Tensor& key_mask, int64_t B, int64_t T,
                                bool accumulate_dx) {
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  for (Tensor* t : {&dv_, &dcv_, &dpv_, &dq_, &dtmp_}) ensure(*t, {N, C_}, dt, dev);
  ensure(dhead_, {1, H_}, dt, dev);
  // out = alpha V + beta (P V) - gamma (C V)
  be.head_gate_bwd(dv_, dhead_, dout, a.v, sa_alpha_, N);
  ops::axpy(dsa_alpha_, dhead_, 1.0);
  be.head_gate_bwd(dpv_, dhead_, dout, a.ctx, sa_beta_, N);
  ops::axpy(dsa_beta_, dhead_, 1.0);
  be.head_gate_bwd(dcv_, dhead_, dout, a.cv, sa_gamma_, N);
  ops::axpy(dsa_gamma_, dhead_, -1.0);
  be.causal_mean_bwd(dtmp_, dcv_, T);
  ops::axpy(dv_, dtmp_, -1.0);
  ensure(dqkv_, {N, 3 * C_}, dt, dev);
  be.attention_bwd(dqkv_, dpv_, a.qkv, a.att_saved, key_mask, B, T, ctx_spec(a));
  Tensor* dqkv = &dqkv_;
  if (qk_norm_) {
    ensure(dqkv_raw_, {N, 3 * C_}, dt, dev);
    be.qk_norm_bwd(dqkv_raw_, dwq_, dwk_, dqkv_, a.qkv_raw, wq_, wk_, a.qk_inv, H_);
    dqkv = &dqkv_raw_;
  }
  be.copy_columns(dv_, 0, *dqkv, 2 * C_, C_, true);
  be.copy_columns(dq_, 0, *dqkv, 0, C_, false);
  q_.backward(dx, dq_, x, accumulate_dx);
  be.copy_columns(dq_, 0, *dqkv, C_, C_, false);
  k_.backward(dx, dq_, x, true);
  if (value_reparam_) {
    // V = rg * u + sg * x, u = x W^T
    ops::axpy(dv_rg_, scalar_grad(ops::dot(dv_, a.u), dv_rg_), 1.0);
    ops::axpy(dv_sg_, scalar_grad(ops::dot(dv_, x), dv_sg_), 1.0);
    dtmp_.copy_from(dv_);
    ops::scale(dtmp_, v_rg_.item());
    v_.backward(dx, dtmp_, x, true);
    ops::axpy(dx, dv_, v_sg_.item());
  } else {
    ops::axpy(dx, dv_, 1.0);
  }
}

// spec_ with a.gate in the op's epilogue (and dgate_ for its gradient).
ops::AttentionSpec Attention::ctx_spec(AttentionActs& a) const {
  ops::AttentionSpec spec = spec_;
  if (a.out_kept) spec.kept_out = &a.ctx;
  return spec;
}

ops::AttentionSpec Attention::gated_spec(AttentionActs& a, int64_t B, int64_t T) {
  ops::AttentionSpec spec = spec_;
  spec.gate = &a.gate;
  spec.dgate = &dgate_;
  spec.gate_rows = rows_per_gate(B, T);
  if (a.out_kept) spec.kept_out = &a.gated;
  return spec;
}

bool Attention::gate_takes_norm() const {
  return !shaped_ && gate_ == GateType::ConditionalPerToken && !gate_all_ && !gate_mlp_;
}

bool Attention::takes_bias_column() const {
  return !shaped_ && qkv_.b.defined() && (gate_ == GateType::None || gate_takes_norm());
}

NormGate Attention::norm_gate(AttentionActs& a) {
  OFT_ASSERT(gate_takes_norm(), "norm_gate: the gate reads more than the layer input");
  a.gate_from_norm = true;
  NormGate g;
  g.gate = &a.gate;
  g.logits = &a.logits_tok;
  g.w = &gw1_;
  g.b = &gb1_;
  g.dw = &dgw1_;
  g.db = &dgb1_;
  g.dgate = &dgate_;
  return g;
}

// The gate network: a.gate = sigmoid(logits) [R, H] (R = N per token, B per sequence, 1
// unconditional).
void Attention::gate_forward(AttentionActs& a, const Tensor& x, int64_t B, int64_t T) {
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  if (gate_ == GateType::UnconditionalPerHead) {
    a.logits = gate_logit_;
  } else {
    ensure(a.logits_tok, {N, H_}, dt, dev);
    // One gate per token from a grouped layer: its sigmoid is applied by the layer's op.
    const bool fused = gate_ == GateType::ConditionalPerToken && !gate_all_;
    if (fused) ensure(a.gate, {N, H_}, dt, dev);
    auto last = [&](const Tensor& in, const Tensor& w, const Tensor& b) {
      if (fused)
        be.grouped_linear_act_fwd(a.gate, a.logits_tok, in, w, b, ops::Activation::Sigmoid);
      else
        be.grouped_linear_fwd(a.logits_tok, in, w, b);
    };
    if (gate_all_) {
      gate_all_features_.forward(a.logits_tok, x);
    } else if (gate_mlp_) {
      ensure(a.hidden, {N, H_ * hid_}, dt, dev);
      ensure(a.hidden_act, {N, H_ * hid_}, dt, dev);
      be.grouped_linear_fwd(a.hidden, x, gw1_, gb1_);
      be.activation_fwd(a.hidden_act, a.hidden, ops::Activation::ReLU);
      last(a.hidden_act, gw2_, gb2_);
    } else {
      last(x, gw1_, gb1_);
    }
    if (fused) {
      a.logits = a.logits_tok;
      return;
    }
    if (gate_ == GateType::ConditionalPerHead) {
      ensure(a.logits, {B, H_}, dt, dev);
      be.group_mean_fwd(a.logits, a.logits_tok, T);
    } else {
      a.logits = a.logits_tok;
    }
  }
  ensure(a.gate, a.logits.shape(), dt, dev);
  be.activation_fwd(a.gate, a.logits, ops::Activation::Sigmoid);
}

// The gate network's backward from dgate_: its parameter gradients, and its input gradient
// into dx (added when accumulate_dx). Returns whether it wrote dx (not for the unconditional
// gate, which has no input).
bool Attention::gate_backward(AttentionActs& a, Tensor& dx, const Tensor& x, int64_t B,
                              int64_t T, bool accumulate_dx) {
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  if (gate_ == GateType::ConditionalPerToken && !gate_all_) {
    // The sigmoid's derivative inside the grouped layer's backward (see gate_forward).
    constexpr auto sig = ops::Activation::Sigmoid;
    if (gate_mlp_) {
      ensure(dhidden_, {N, H_ * hid_}, dt, dev);
      be.grouped_linear_act_bwd(dhidden_, dgw2_, dgb2_, dgate_, a.logits, a.hidden_act, gw2_,
                                false, sig);
      be.activation_bwd(dhidden_, dhidden_, a.hidden, ops::Activation::ReLU);
      be.grouped_linear_bwd(dx, dgw1_, dgb1_, dhidden_, x, gw1_, accumulate_dx);
    } else {
      be.grouped_linear_act_bwd(dx, dgw1_, dgb1_, dgate_, a.logits, x, gw1_, accumulate_dx, sig);
    }
    return true;
  }
  ensure(dlogits_, a.logits.shape(), dt, dev);
  be.activation_bwd(dlogits_, dgate_, a.logits, ops::Activation::Sigmoid);
  if (gate_ == GateType::UnconditionalPerHead) {
    ops::axpy(dgate_logit_, dlogits_, 1.0);
    return false;
  }
  Tensor* dtok = &dlogits_;
  if (gate_ == GateType::ConditionalPerHead) {
    ensure(dlogits_tok_, {N, H_}, dt, dev);
    be.group_mean_bwd(dlogits_tok_, dlogits_, T);
    dtok = &dlogits_tok_;
  }
  if (gate_all_) {
    gate_all_features_.backward(dx, *dtok, x, accumulate_dx);
  } else if (gate_mlp_) {
    ensure(dhidden_, {N, H_ * hid_}, dt, dev);
    be.grouped_linear_bwd(dhidden_, dgw2_, dgb2_, *dtok, a.hidden_act, gw2_, false);
    be.activation_bwd(dhidden_, dhidden_, a.hidden, ops::Activation::ReLU);
    be.grouped_linear_bwd(dx, dgw1_, dgb1_, dhidden_, x, gw1_, accumulate_dx);
  } else {
    be.grouped_linear_bwd(dx, dgw1_, dgb1_, *dtok, x, gw1_, accumulate_dx);
  }
  return true;
}

void Attention::forward(AttentionActs& a, Tensor& out, const Tensor& x, const Tensor& key_mask,
                        int64_t B, int64_t T, const Tensor* residual) {
  if (shaped_) {
    shaped_forward(a, out, x, key_mask, B, T);
    if (residual) ops::add_scaled(out, out, 1.0, *residual, 1.0);
    return;
  }
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  OFT_ASSERT(!qkv_.takes_bias_column(x) || gate_ == GateType::None || a.gate_from_norm,
             "attention: an input in the bias-column layout needs the gate from the norm");
  ensure(a.qkv_raw, {N, 3 * C_}, dt, dev);
  qkv_.forward(a.qkv_raw, x);
  if (hook_) hook_->on_activation(Point::QKV, layer_, a.qkv_raw, B, T);
  if (qk_norm_) {
    ensure(a.qkv, {N, 3 * C_}, dt, dev);
    ensure(a.qk_inv, {N, 2 * H_}, stat_dtype(dt), dev);
    be.qk_norm_fwd(a.qkv, a.qk_inv, a.qkv_raw, wq_, wk_, H_, qk_eps_);
  } else {
    a.qkv = a.qkv_raw;
  }
  // The gate goes into the attention op's epilogue where the backend takes it and no hook
  // needs the ungated context; otherwise a separate head_gate_fwd pass.
  a.gate_fused = gate_ != GateType::None && hook_ == nullptr && be.gate_in_epilogue(spec_, dt);
  if (a.gate_from_norm)
    a.logits = a.logits_tok;  // a.gate and the logits came with x (norm_gate())
  else if (gate_ != GateType::None)
    gate_forward(a, x, B, T);
  if (a.gate_fused) {
    ensure(a.gated, {N, C_}, dt, dev);
    a.out_kept = true;  // gate_fused: no hook
    be.attention_fwd(a.gated, a.att_saved, a.qkv, key_mask, B, T, gated_spec(a, B, T));
  } else {
    ensure(a.ctx, {N, C_}, dt, dev);
    run_attention(a, key_mask, B, T);
    if (hook_) hook_->on_activation(Point::Context, layer_, a.ctx, B, T);
    if (gate_ == GateType::None) {
      a.gated = a.ctx;
    } else {
      ensure(a.gated, {N, C_}, dt, dev);
      be.head_gate_fwd(a.gated, a.ctx, a.gate, rows_per_gate(B, T));
      if (hook_) hook_->on_activation(Point::GatedContext, layer_, a.gated, B, T);
    }
  }
  if (residual)
    proj_.forward_residual(out, a.gated, *residual);
  else
    proj_.forward(out, a.gated);
}

void Attention::backward(AttentionActs& a, Tensor& dx, const Tensor& dout, const Tensor& x,
                         const Tensor& key_mask, int64_t B, int64_t T, bool accumulate_dx) {
  if (shaped_) return shaped_backward(a, dx, dout, x, key_mask, B, T, accumulate_dx);
  const int64_t N = B * T;
  const DType dt = x.dtype();
  const Device dev = x.device();
  auto& be = ops::on(x);
  ensure(dctx_, {N, C_}, dt, dev);
  proj_.backward(dctx_, dout, a.gated, false);  // d gated
  ensure(dqkv_, {N, 3 * C_}, dt, dev);
  // c_attn's bias gradient: the column sums of dqkv, from the attention backward, or with x in
  // the bias-column layout from c_attn's weight-gradient product (Linear::backward).
  Tensor* dqkv_bias =
      qkv_.bias_grad_elsewhere && !qkv_.takes_bias_column(x) ? &qkv_.db : nullptr;
  bool gate_input_grad = false;
  if (a.gate_fused) {
    // dctx_ is the gated output's gradient; the op scales it by the gate and writes dgate_.
    ensure(dgate_, a.gate.shape(), dt, dev);
    be.attention_bwd(dqkv_, dctx_, a.qkv, a.att_saved, key_mask, B, T, gated_spec(a, B, T),
                     dqkv_bias);
    if (!a.gate_from_norm) gate_input_grad = gate_backward(a, dx, x, B, T, accumulate_dx);
  } else {
    if (gate_ != GateType::None) {
      ensure(dgate_, a.gate.shape(), dt, dev);
      be.head_gate_bwd(dctx_, dgate_, dctx_, a.ctx, a.gate, rows_per_gate(B, T));
      if (!a.gate_from_norm) gate_input_grad = gate_backward(a, dx, x, B, T, accumulate_dx);
    }
    be.attention_bwd(dqkv_, dctx_, a.qkv, a.att_saved, key_mask, B, T, ctx_spec(a), dqkv_bias);
  }
  Tensor* dproj_in = &dqkv_;
  if (qk_norm_) {
    ensure(dqkv_raw_, {N, 3 * C_}, dt, dev);
    be.qk_norm_bwd(dqkv_raw_, dwq_, dwk_, dqkv_, a.qkv_raw, wq_, wk_, a.qk_inv, H_);
    dproj_in = &dqkv_raw_;
  }
  qkv_.backward(dx, *dproj_in, x, accumulate_dx || gate_input_grad);
}

}  // namespace oft
