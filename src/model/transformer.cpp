// TransformerLM forward and backward (see transformer.h). Shapes: N = B*T rows, C = d_model,
// F = d_ff, V = vocab_size.
#include "model/transformer.h"

#include <cmath>
#include <functional>
#include <regex>

#include "core/rng.h"

namespace oft {

ops::AttentionSpec parse_attention(const ModelConfig& cfg) {
  ops::AttentionSpec s;
  s.n_head = static_cast<int>(cfg.n_head);
  s.causal = true;
  const std::string& p = cfg.attn_softmax;
  if (p == "softmax" || p == "vanilla") {
    s.prob = ops::ProbFn::Softmax;
  } else if (p == "softmax1") {
    s.prob = ops::ProbFn::Softmax1;
  } else {
    static const std::regex re(R"(clipped\(\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*\))");
    std::smatch m;
    OFT_CHECK(std::regex_match(p, m, re), "model.attn_softmax: unknown value '", p,
              "': use softmax, softmax1 or clipped(GAMMA:ZETA), e.g. clipped(-.025:1)");
    s.prob = ops::ProbFn::Clipped;
    s.gamma = std::stod(m[1]);
    s.zeta = std::stod(m[2]);
    OFT_CHECK(s.gamma <= 0 && s.zeta >= 1, "model.attn_softmax: clipped(", s.gamma, ":", s.zeta,
              ") needs gamma <= 0 and zeta >= 1");
  }
  return s;
}

BlockType parse_block(const std::string& s) {
  if (s == "pre_norm") return BlockType::PreNorm;
  if (s == "post_norm") return BlockType::PostNorm;
  if (s == "parallel") return BlockType::Parallel;
  if (s == "op") return BlockType::OP;
  if (s == "skipless") return BlockType::Skipless;
  if (s == "skipless_parallel") return BlockType::SkiplessParallel;
  fail("model.block: unknown block '", s,
       "': use pre_norm, post_norm, parallel, op, skipless or skipless_parallel");
}

TransformerLM::TransformerLM(const ModelConfig& cfg, DType dtype, Device device, int64_t seq_len)
    : cfg_(cfg), dtype_(dtype), device_(device) {
  OFT_CHECK(cfg.vocab_size > 0, "model.vocab_size must be set (> 0) before building the model");
  act_ = ops::parse_activation(cfg.activation);
  block_ = parse_block(cfg.block);
  const NormKind nk = parse_norm(cfg.norm);
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, P = cfg.embed_dim();
  if (seq_len <= 0) seq_len = cfg.max_seq_len;
  proj_ = cfg.embed_proj();
  OFT_CHECK(!proj_ || cfg.objective == "clm", "model.word_embed_proj_dim (project_in / "
            "project_out) is for causal LMs (model.objective=clm)");
  {
    Param& p = params_.create("wte.weight", {V, P}, dtype, device, true);
    vocab_padded_ = device == Device::CUDA ? (V + 63) / 64 * 64 : V;
    if (vocab_padded_ != V) {
      ParamStore::pad_rows(p, vocab_padded_, head_full_, dhead_full_);
    } else {
      head_full_ = p.compute;
      dhead_full_ = p.grad;
    }
    wte_ = p.compute;
    dwte_ = p.grad;
    p.first_write_overwrites = true;  // backward(): the output layer's dW product, then the
    wte_param_ = &p;                  // embedding's scatter-add
  }
  {
    Param& p = params_.create("wpe.weight", {cfg.max_seq_len, C}, dtype, device, true);
    wpe_ = p.compute;
    dwpe_ = p.grad;
  }
  if (proj_) {
    project_in_ = Linear(params_, "project_in", P, C, false, dtype, device);
    project_out_ = Linear(params_, "project_out", C, P, false, dtype, device);
  }
  if (cfg.type_vocab_size > 0) {
    Param& p = params_.create("wtt.weight", {cfg.type_vocab_size, C}, dtype, device, true);
    wtt0_ = p.compute.slice(0, 1).view({C});
    dwtt0_ = p.grad.slice(0, 1).view({C});
  }
  if (cfg.embed_norm)
    emb_norm_ = Norm(params_, "emb_ln", C, NormKind::LayerNorm, cfg.norm_eps, cfg.bias, dtype, device);
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    const std::string pre = "h." + std::to_string(l) + ".";
    Block b;
    if (block_ == BlockType::OP) {
      // No norms in front of the branches, except a LayerNorm on layer 0's attention input.
      if (l == 0) b.n1 = Norm(params_, pre + "ln_1", C, NormKind::LayerNorm, cfg.norm_eps, cfg.bias, dtype, device);
    } else {
      b.n1 = Norm(params_, pre + "ln_1", C, nk, cfg.norm_eps, cfg.bias, dtype, device);
      if (block_ != BlockType::Parallel && block_ != BlockType::SkiplessParallel)
        b.n2 = Norm(params_, pre + "ln_2", C, nk, cfg.norm_eps, cfg.bias, dtype, device);
    }
    b.attn = Attention(params_, pre + "attn", cfg, seq_len, cfg.causal(), dtype, device,
                       skipless(), l);
    b.fc = Linear(params_, pre + "mlp.c_fc", C, F, cfg.bias, dtype, device);
    b.fc.bias_grad_elsewhere = cfg.bias;  // from linear_act_bwd_dx's dsum (mlp_backward)
    b.fc_out = Linear(params_, pre + "mlp.c_proj", F, C, cfg.bias, dtype, device);
    if (cfg.gains_trainable) {
      Param& ga = params_.create(pre + "attn_gain", {1}, dtype, device, false);
      Param& gm = params_.create(pre + "mlp_gain", {1}, dtype, device, false);
      ops::fill(ga.value, attn_gain0());
      ops::fill(gm.value, mlp_gain0());
      ga.fixed_init = gm.fixed_init = true;
      b.g_attn = ga.value, b.dg_attn = ga.grad, b.g_mlp = gm.value, b.dg_mlp = gm.grad;
      if (block_ == BlockType::Skipless) {
        Param& gs = params_.create(pre + "skip_gain", {1}, dtype, device, false);
        ops::fill(gs.value, 1.0);
        gs.fixed_init = true;
        b.g_skip = gs.value, b.dg_skip = gs.grad;
      }
    }
    blocks_.push_back(std::move(b));
  }
  if (cfg.final_norm)
    ln_f_ = Norm(params_, "ln_f", C, nk == NormKind::None ? NormKind::LayerNorm : nk,
                 cfg.norm_eps, cfg.bias, dtype, device);
  // pre_norm: mlp.c_proj's output gradient is the residual gradient that ln_f (last block) or
  // the next block's ln_1 writes, c_proj's the one ln_2 writes; post_norm: ln_2's and ln_1's
  // outputs. With gains of 1 (no trainable gain) the branches' gradients are those tensors.
  fold_bias_ = (block_ == BlockType::PreNorm || block_ == BlockType::PostNorm) && cfg.bias &&
               !cfg.gains_trainable && attn_gain0() == 1.0 && mlp_gain0() == 1.0;
  for (Block& b : blocks_) {
    if (!fold_bias_) break;
    b.fc_out.bias_grad_elsewhere = true;
    if (Linear* proj = b.attn.out_proj()) proj->bias_grad_elsewhere = true;
  }
  OFT_CHECK(cfg.objective == "clm" || cfg.objective == "mlm", "model.objective: unknown value '",
            cfg.objective, "': use clm or mlm");
  mlm_ = cfg.objective == "mlm";
  if (mlm_) {
    mlm_dense_ = Linear(params_, "mlm.dense", C, C, true, dtype, device);
    mlm_norm_ = Norm(params_, "mlm.ln", C, NormKind::LayerNorm, cfg.norm_eps, true, dtype, device);
    Param& p = params_.create("mlm.decoder.bias", {V}, dtype, device, false);
    if (vocab_padded_ != V) {
      ParamStore::pad_rows(p, vocab_padded_, mlm_bias_full_, dmlm_bias_full_);
    } else {
      mlm_bias_full_ = p.compute;
      dmlm_bias_full_ = p.grad;
    }
    mlm_bias_ = p.compute;
    dmlm_bias_ = p.grad;
  }
  params_.sync_compute();  // constant initialisations above were written to the masters
}

void TransformerLM::init_weights(uint64_t seed) {
  for (Param& p : params_.all()) {
    if (p.fixed_init) continue;
    if (!p.matrix) {
      // Norm gains 1, biases 0.
      const bool is_gain = p.name.ends_with(".weight");
      ops::fill(p.value, is_gain ? 1.0 : 0.0);
      continue;
    }
    Rng rng(seed ^ std::hash<std::string>{}(p.name));
    std::vector<double> v(static_cast<size_t>(p.value.numel()));
    for (auto& x : v) x = rng.normal() * cfg_.init_std;
    p.value.copy_from(Tensor::from_vector(p.value.shape(), v, p.value.dtype()).to(device_));
  }
  params_.sync_compute();
}

void TransformerLM::allocate(int64_t B, int64_t T) {
  if (B == B_ && T == T_) return;
  ++buffer_generation_;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = cfg_.d_model, F = cfg_.d_ff, L = cfg_.n_layer;
  auto mk = [&](const Shape& s) { return Tensor::empty(s, dtype_, device_); };
  resid_.assign(L + 1, Tensor());
  acts_.assign(L, BlockActs());
  for (int64_t l = 0; l <= L; ++l) resid_[l] = mk({N, C});
  for (int64_t l = 0; l < L; ++l) {
    BlockActs& a = acts_[l];
    // attn_out / mlp_out: allocated by block_forward when a branch output is kept apart from
    // the residual sum (see fused_residual).
    if (act_ != ops::Activation::ReLU) a.fc = mk({N, F});  // see mlp_forward
    a.act = mk({N, F});
    a.s1 = mk({N, C});
    if (block_ == BlockType::PostNorm) a.s2 = mk({N, C});
    const Block& b = blocks_[static_cast<size_t>(l)];
    if (block_ == BlockType::PreNorm && b.fc.b.defined() && b.n2.kind == NormKind::LayerNorm)
      a.n2x = mk({N, C + ops::kBiasColumnPad});
    if (block_ == BlockType::PreNorm && b.attn.takes_bias_column() &&
        b.n1.kind == NormKind::LayerNorm)
      a.n1x = mk({N, C + ops::kBiasColumnPad});
  }
  emb_ = mk({N, C});
  if (proj_) {
    const int64_t P = cfg_.embed_dim();
    std::vector<double> pos(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) pos[static_cast<size_t>(n)] = double(n % T);
    pos_ids_ = Tensor::from_vector({N}, pos, DType::I32).to(device_);
    emb_tok_ = mk({N, P});
    pos_emb_ = mk({N, C});
    head_src_ = mk({N, P});
    dproj_ = mk({N, P});
  }
  if (mlm_) {
    mlm_pre_ = mk({N, C});
    mlm_act_ = mk({N, C});
  }
  logits_ = mk({N, vocab_padded_});
  losses_ = Tensor::empty({N}, stat_dtype(dtype_), device_);
  for (Tensor* t : {&dresid_, &dnorm_, &dbranch_, &dtmp_}) *t = mk({N, C});
  dfc_ = mk({N, F});
  dlogits_ = Tensor();  // allocated by the first backward() that needs it
  grad_in_logits_ = false;
}

void TransformerLM::set_head_weight(const Tensor& w) {
  if (!w.defined() || w.dim(0) == vocab_padded_) {
    head_w_ = w;
    return;
  }
  head_w_ = Tensor::zeros({vocab_padded_, w.dim(1)}, w.dtype(), w.device());
  Tensor rows = head_w_.slice(0, w.dim(0));
  rows.copy_from(w);
}

Tensor TransformerLM::attention_probs(size_t l) const {
  const AttentionActs& a = acts_.at(l).attn;
  if (a.att_saved.defined() && a.att_saved.device() == Device::CPU) return a.att_saved;
  if (!a.qkv.defined()) return Tensor();
  Tensor qkv = a.qkv.to(Device::CPU);
  if (qkv.dtype() != DType::F32) qkv = qkv.cast(DType::F32);
  const Tensor mask = key_mask_.defined() ? key_mask_.to(Device::CPU) : Tensor();
  Tensor out = Tensor::empty({B_ * T_, cfg_.d_model}, DType::F32), probs;
  ops::cpu_backend().attention_fwd(out, probs, qkv, mask, B_, T_, blocks_.at(l).attn.spec());
  return probs;
}

double TransformerLM::gain(const Tensor& g, double constant) const {
  return g.defined() ? g.item() : constant;
}
double TransformerLM::attn_gain0() const { return skipless() ? 1.0 : cfg_.branch_gain; }
double TransformerLM::mlp_gain0() const { return skipless() ? 0.1 : cfg_.branch_gain; }

void TransformerLM::set_hook(ActivationHook* hook) {
  hook_ = hook;
  for (size_t l = 0; l < blocks_.size(); ++l) blocks_[l].attn.set_hook(hook, static_cast<int64_t>(l));
}

// MLP: act = a(fc(in)) in one op (on the GPU the activation runs in the matrix product's
// epilogue), then out = fc_out(act). a.fc keeps the pre-activation for the backward, except with
// ReLU: there it is not allocated and the backward reads relu' from a.act (ops.h,
// linear_act_bwd_dx). Hooks see, and may change, a.act at FfnAct; they observe evaluation
// forwards only (no backward follows), so a changed a.act never reaches the ReLU derivative.
void TransformerLM::mlp_forward(Block& b, BlockActs& a, Tensor& out, const Tensor& in,
                                const Tensor* residual) {
  const int64_t l = &a - acts_.data();
  ops::on(in).linear_act_fwd(a.act, a.fc, in, b.fc.w, b.fc.b, act_);
  tap(Point::FfnAct, l, a.act);
  if (residual) return b.fc_out.forward_residual(out, a.act, *residual);
  b.fc_out.forward(out, a.act);
  tap(Point::FfnOut, l, out);
}

bool TransformerLM::fused_residual(const Tensor& g, double constant) const {
  return !g.defined() && constant == 1.0 && hook_ == nullptr;
}

void TransformerLM::mlp_backward(Block& b, BlockActs& a, Tensor& din, const Tensor& dout,
                                 const Tensor& in) {
  Tensor no_dx;  // fc_out's input gradient comes with the activation's derivative below
  b.fc_out.backward(no_dx, dout, a.act, false);
  const Tensor& saved = act_ == ops::Activation::ReLU ? a.act : a.fc;  // see mlp_forward
  // fc's bias gradient is colsum(dfc_): from fc's weight-gradient product when its input is in
  // the bias-column layout, else summed by this op (the Hopper product from its tiles).
  const bool dsum = b.fc.bias_grad_elsewhere && !b.fc.takes_bias_column(in);
  ops::on(in).linear_act_bwd_dx(dfc_, dout, b.fc_out.w, saved, act_, dsum ? &b.fc.db : nullptr);
  b.fc.backward(din, dfc_, in, false);
}

const Tensor& TransformerLM::branch_grad(const Tensor& g, Tensor& dg, double constant,
                                         const Tensor& d, const Tensor& branch_out, BranchDx dx) {
  if (g.defined()) {
    const Tensor delta = Tensor::from_vector({1}, {ops::dot(d, branch_out)}, dg.dtype()).to(device_);
    ops::axpy(dg, delta, 1.0);
  }
  const double s = gain(g, constant);
  // Gain 1 (the default blocks): the branch gradient is d itself, when nothing writes into d
  // while the branch's backward reads it.
  if (s == 1.0 && dx == BranchDx::Elsewhere) return d;
  dbranch_.copy_from(d);
  if (s != 1.0) ops::scale(dbranch_, s);
  return dbranch_;
}

const NormGate* TransformerLM::n1_gate(Block& b, BlockActs& a) {
  if (hook_ || b.n1.kind != NormKind::LayerNorm || !b.attn.gate_takes_norm()) return nullptr;
  a.n1_gate = b.attn.norm_gate(a.attn);
  return &a.n1_gate;
}

void TransformerLM::block_forward(size_t l) {
  Block& b = blocks_[l];
  BlockActs& a = acts_[l];
  a.attn.gate_from_norm = false;  // until n1_gate() hands the gate to n1
  const Tensor& x = resid_[l];
  Tensor& out = resid_[l + 1];
  const int64_t L = static_cast<int64_t>(l);
  const double ga = gain(b.g_attn, attn_gain0()), gm = gain(b.g_mlp, mlp_gain0());
  // dst = base + g * branch, in one pass
  auto residual = [&](Tensor& dst, const Tensor& base, const Tensor& branch, double g) {
    ops::add_scaled(dst, base, 1.0, branch, g);
  };
  // pre_norm / op with constant unit gains and no activation hook: each residual sum is taken
  // in the product of the branch's output layer (the branch output itself is never stored).
  const bool fusable = block_ == BlockType::PreNorm || block_ == BlockType::OP;
  const bool fuse_a = fusable && fused_residual(b.g_attn, attn_gain0());
  const bool fuse_m = fusable && fused_residual(b.g_mlp, mlp_gain0());
  // Branch output buffers, only where a branch output is kept apart from its residual sum.
  const Shape nc{B_ * T_, cfg_.d_model};
  if (!fuse_a && !a.attn_out.defined()) a.attn_out = Tensor::empty(nc, dtype_, device_);
  if (!fuse_m && !a.mlp_out.defined()) a.mlp_out = Tensor::empty(nc, dtype_, device_);
  // h = x + g_a A(in) and out = h + g_m M(in) of pre_norm / op, fused or separate.
  auto attn_residual = [&](const Tensor& in) {
    if (fuse_a) return b.attn.forward(a.attn, a.s1, in, key_mask_, B_, T_, &x);
    b.attn.forward(a.attn, a.attn_out, in, key_mask_, B_, T_);
    tap(Point::AttnOut, L, a.attn_out);
    residual(a.s1, x, a.attn_out, ga);
  };
  auto mlp_residual = [&](const Tensor& in) {
    if (fuse_m) return mlp_forward(b, a, out, in, &a.s1);
    mlp_forward(b, a, a.mlp_out, in);
    residual(out, a.s1, a.mlp_out, gm);
  };
  switch (block_) {
    case BlockType::PreNorm: {
      // Without a hook nothing reads n1's and n2's outputs but c_attn (and the gate n1
      // computes) and fc: they go to the bias-column layout, from which the weight-gradient
      // products also give the biases' gradients.
      const NormGate* gate = n1_gate(b, a);
      a.n1x_used = a.n1x.defined() && hook_ == nullptr;
      b.n1.forward(a.n1, x, gate, a.n1x_used ? &a.n1x : nullptr);
      tap_norm(b.n1, Point::Norm1, L, a.n1);
      attn_residual(a.n1x_used ? a.n1x : a.n1.out);  // h
      tap(Point::Residual, L, a.s1);
      a.n2x_used = a.n2x.defined() && hook_ == nullptr;
      b.n2.forward(a.n2, a.s1, nullptr, a.n2x_used ? &a.n2x : nullptr);
      tap_norm(b.n2, Point::Norm2, L, a.n2);
      mlp_residual(a.n2x_used ? a.n2x : a.n2.out);
      break;
    }
    case BlockType::PostNorm:
      b.attn.forward(a.attn, a.attn_out, x, key_mask_, B_, T_);
      tap(Point::AttnOut, L, a.attn_out);
      residual(a.s1, x, a.attn_out, ga);  // x + A(x)
      tap(Point::Residual, L, a.s1);
      b.n1.forward(a.n1, a.s1);           // h = a.n1.out
      tap_norm(b.n1, Point::AttnNorm, L, a.n1);
      mlp_forward(b, a, a.mlp_out, a.n1.out);
      residual(a.s2, a.n1.out, a.mlp_out, gm);
      tap(Point::FfnSum, L, a.s2);
      b.n2.forward(a.n2, a.s2);
      out.copy_from(a.n2.out);
      break;
    case BlockType::Parallel:
      b.n1.forward(a.n1, x, n1_gate(b, a));
      tap_norm(b.n1, Point::Norm1, L, a.n1);
      b.attn.forward(a.attn, a.attn_out, a.n1.out, key_mask_, B_, T_);
      tap(Point::AttnOut, L, a.attn_out);
      mlp_forward(b, a, a.mlp_out, a.n1.out);
      residual(out, x, a.attn_out, ga);
      ops::axpy(out, a.mlp_out, gm);
      break;
    case BlockType::OP:
      b.n1.forward(a.n1, x, n1_gate(b, a));  // identity except in layer 0
      tap_norm(b.n1, Point::Norm1, L, a.n1);
      attn_residual(a.n1.out);  // h
      tap(Point::Residual, L, a.s1);
      mlp_residual(a.s1);
      break;
    case BlockType::Skipless:
      b.n1.forward(a.n1, x, n1_gate(b, a));
      tap_norm(b.n1, Point::Norm1, L, a.n1);
      b.attn.forward(a.attn, a.attn_out, a.n1.out, key_mask_, B_, T_);
      tap(Point::AttnOut, L, a.attn_out);
      a.s1.copy_from(a.attn_out);  // h = b_SA SA(N1(x))
      ops::scale(a.s1, ga);
      tap(Point::Residual, L, a.s1);
      b.n2.forward(a.n2, a.s1);
      tap_norm(b.n2, Point::Norm2, L, a.n2);
      mlp_forward(b, a, a.mlp_out, a.n2.out);
      ops::add_scaled(out, a.s1, gain(b.g_skip, 1.0), a.mlp_out, gm);  // a_FF h + b_FF M(N2(h))
      break;
    case BlockType::SkiplessParallel:
      b.n1.forward(a.n1, x, n1_gate(b, a));
      tap_norm(b.n1, Point::Norm1, L, a.n1);
      b.attn.forward(a.attn, a.attn_out, a.n1.out, key_mask_, B_, T_);
      tap(Point::AttnOut, L, a.attn_out);
      mlp_forward(b, a, a.mlp_out, a.n1.out);
      ops::add_scaled(out, a.attn_out, ga, a.mlp_out, gm);
      break;
  }
  tap(Point::LayerOut, L, out);
}

// On entry dresid_ holds d(block output); on exit d(block input).
// The branch gradient dmlp(d) / dattn(d) (branch_grad) is d itself when the gain is 1, so it
// must not be written while the branch's backward reads it. Per block type, d is:
//   pre_norm, parallel, op, skipless_parallel: dresid_; skipless: dresid_ (MLP), dtmp_ (attention);
//   post_norm: dtmp_ (MLP), dresid_ (attention).
// Every MLP backward writes dfc_ and its input gradient dnorm_, every attention backward its own
// scratch and dnorm_, and d is next written (n2 / n1 backward, axpy) only after that backward
// is enqueued whole: safe, except post_norm's attention, whose input gradient accumulates into
// dresid_ = d (the residual path x + A(x)); that one keeps the copy (BranchDx::IntoD).
Tensor* TransformerLM::proj_bias_sum(size_t l) {
  Linear* proj = fold_bias_ ? blocks_[l].attn.out_proj() : nullptr;
  return proj ? &proj->db : nullptr;
}

Tensor* TransformerLM::fc_out_bias_sum(size_t l) {
  return fold_bias_ ? &blocks_[l].fc_out.db : nullptr;
}

void TransformerLM::block_backward(size_t l) {
  Block& b = blocks_[l];
  BlockActs& a = acts_[l];
  const Tensor& x = resid_[l];
  auto dmlp = [&](const Tensor& d) -> const Tensor& {
    return branch_grad(b.g_mlp, b.dg_mlp, mlp_gain0(), d, a.mlp_out, BranchDx::Elsewhere);
  };
  auto dattn = [&](const Tensor& d, BranchDx dx) -> const Tensor& {
    return branch_grad(b.g_attn, b.dg_attn, attn_gain0(), d, a.attn_out, dx);
  };
  constexpr BranchDx kElsewhere = BranchDx::Elsewhere;
  switch (block_) {
    case BlockType::PreNorm:
      mlp_backward(b, a, dnorm_, dmlp(dresid_), a.n2x_used ? a.n2x : a.n2.out);
      b.n2.backward(dresid_, dnorm_, a.s1, a.n2, true, proj_bias_sum(l));
      b.attn.backward(a.attn, dnorm_, dattn(dresid_, kElsewhere), a.n1x_used ? a.n1x : a.n1.out,
                      key_mask_, B_, T_, false);
      b.n1.backward(dresid_, dnorm_, x, a.n1, true, l > 0 ? fc_out_bias_sum(l - 1) : nullptr,
                    n1_gate_used(a));
      break;
    case BlockType::PostNorm:
      b.n2.backward(dtmp_, dresid_, a.s2, a.n2, false, fc_out_bias_sum(l));  // d s2
      mlp_backward(b, a, dnorm_, dmlp(dtmp_), a.n1.out);
      ops::axpy(dnorm_, dtmp_, 1.0);                                        // d h
      b.n1.backward(dresid_, dnorm_, a.s1, a.n1, false, proj_bias_sum(l));  // d s1
      b.attn.backward(a.attn, dresid_, dattn(dresid_, BranchDx::IntoD), x, key_mask_, B_, T_,
                      true);
      break;
    case BlockType::Parallel:
      mlp_backward(b, a, dnorm_, dmlp(dresid_), a.n1.out);
      b.attn.backward(a.attn, dnorm_, dattn(dresid_, kElsewhere), a.n1.out, key_mask_, B_, T_,
                      true);
      b.n1.backward(dresid_, dnorm_, x, a.n1, true, nullptr, n1_gate_used(a));
      break;
    case BlockType::OP:
      mlp_backward(b, a, dnorm_, dmlp(dresid_), a.s1);
      ops::axpy(dresid_, dnorm_, 1.0);  // d h
      b.attn.backward(a.attn, dnorm_, dattn(dresid_, kElsewhere), a.n1.out, key_mask_, B_, T_,
                      false);
      b.n1.backward(dresid_, dnorm_, x, a.n1, true, nullptr, n1_gate_used(a));
      break;
    case BlockType::Skipless: {
      mlp_backward(b, a, dnorm_, dmlp(dresid_), a.n2.out);
      // d h = a_FF d out + N2'(d M-input)
      if (b.g_skip.defined())
        ops::axpy(b.dg_skip, Tensor::from_vector({1}, {ops::dot(dresid_, a.s1)}, b.dg_skip.dtype()).to(device_), 1.0);
      dtmp_.copy_from(dresid_);
      ops::scale(dtmp_, gain(b.g_skip, 1.0));
      b.n2.backward(dtmp_, dnorm_, a.s1, a.n2, true);
      // h = b_SA attn_out, attn_out = SA(N1(x)); no skip connection.
      b.attn.backward(a.attn, dnorm_, dattn(dtmp_, kElsewhere), a.n1.out, key_mask_, B_, T_,
                      false);
      b.n1.backward(dresid_, dnorm_, x, a.n1, false, nullptr, n1_gate_used(a));
      break;
    }
    case BlockType::SkiplessParallel:
      mlp_backward(b, a, dnorm_, dmlp(dresid_), a.n1.out);
      b.attn.backward(a.attn, dnorm_, dattn(dresid_, kElsewhere), a.n1.out, key_mask_, B_, T_,
                      true);
      b.n1.backward(dresid_, dnorm_, x, a.n1, false, nullptr, n1_gate_used(a));
      break;
  }
}

double TransformerLM::forward(const Tensor& tokens, const Tensor& targets, const Tensor& key_mask,
                              bool will_backward, bool read_loss, int64_t known_targets) {
  OFT_ASSERT(tokens.ndim() == 2 && tokens.dtype() == DType::I32, "tokens must be [B,T] i32");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  OFT_CHECK(T <= cfg_.max_seq_len, "sequence length ", T, " exceeds model.max_seq_len=",
            cfg_.max_seq_len, ": lower data.seq_len or raise model.max_seq_len");
  allocate(B, T);
  grad_in_logits_ = false;
  tokens_ = tokens;
  targets_ = targets;
  key_mask_ = key_mask;
  OFT_ASSERT(!key_mask.defined() || key_mask.numel() == B * T, "key mask shape");
  auto& be = ops::on(resid_[0]);
  // The optimizer may have updated only the next training batch's embedding rows by stage 0
  // (embedding_rows in train/trainer.h): any other forward waits for the whole update.
  if (wait_update_) will_backward ? ops::compute_wait_update_stage(0) : ops::compute_wait_update();
  if (proj_) {
    // x0 = project_in(wte[tok]) + wpe[t]
    be.embedding_fwd(emb_tok_, tokens, wte_, Tensor(), T, 0);
    project_in_.forward(emb_, emb_tok_);
    be.embedding_fwd(pos_emb_, pos_ids_, wpe_, Tensor(), T, 0);
    ops::add(emb_, emb_, pos_emb_);
  } else {
    be.embedding_fwd(emb_, tokens, wte_, wpe_, T, 0);
  }
  if (wtt0_.defined()) ops::add_bias(emb_, wtt0_);  // every token has type 0
  tap(Point::Embedding, -1, emb_);
  if (emb_norm_.kind != NormKind::None) {
    emb_norm_.forward(emb_saved_, emb_);
    tap(Point::EmbedNorm, -1, emb_saved_.out);
    resid_[0].copy_from(emb_saved_.out);
  } else {
    resid_[0].copy_from(emb_);
  }
  for (size_t l = 0; l < blocks_.size(); ++l) {
    if (wait_update_) ops::compute_wait_update_stage(static_cast<int>(l) + 1);
    block_forward(l);
  }
  if (wait_update_) ops::compute_wait_update();  // the head's stage, and all before backward
  ln_f_.forward(lnf_, resid_.back());
  tap_norm(ln_f_, Point::FinalNorm, -1, lnf_);
  if (proj_) project_out_.forward(head_src_, lnf_.out);  // [N, C] -> [N, P]
  const Tensor& head_src = proj_ ? head_src_ : lnf_.out;
  const Tensor& head_w = head_w_.defined() ? head_w_ : head_full_;
  // Targets given on the host are counted there and uploaded without waiting for the GPU;
  // targets on the GPU are read back (which waits for the forward so far), unless the caller
  // gave their count.
  Tensor t_host;
  n_targets_ = 0;
  loss_pending_ = false;
  if (targets.defined() && known_targets >= 0) {
    OFT_CHECK(!mlm_, "forward: known_targets is for causal LMs (a masked LM gathers its targets)");
    OFT_CHECK(known_targets <= targets.numel(), "forward: known_targets ", known_targets,
              " exceeds the ", targets.numel(), " targets");
    n_targets_ = known_targets;
  } else if (targets.defined()) {
    t_host = targets.device() == Device::CPU ? targets : targets.to(Device::CPU);
    for (int64_t i = 0; i < t_host.numel(); ++i) n_targets_ += t_host.data<int32_t>()[i] >= 0;
  }
  // Masked LM in training: the head (dense, activation, norm, the V-wide output layer and the
  // loss) runs on the masked positions only, gathered into n_targets_ dense rows. Observed
  // forward passes (hooks: metrics, quantization) keep every position.
  head_rows_ = B * T;
  if (mlm_ && targets.defined() && !hook_) {
    std::vector<double> ix, tg;
    const int32_t* pt = t_host.data<int32_t>();
    for (int64_t i = 0; i < t_host.numel(); ++i)
      if (pt[i] >= 0) ix.push_back(double(i)), tg.push_back(double(pt[i]));
    head_rows_ = n_targets_;
    if (head_rows_ == 0) return 0.0;
    head_index_ = Tensor::from_vector({head_rows_}, ix, DType::I32).to(device_);
    head_targets_ = Tensor::from_vector({head_rows_}, tg, DType::I32).to(device_);
    ensure(head_in_, {head_rows_, cfg_.d_model}, dtype_, device_);
    be.gather_rows(head_in_, lnf_.out, head_index_);
  } else {
    head_index_ = Tensor();
    head_targets_ =
        targets.defined() && targets.device() != device_ ? targets.to(device_) : targets;
  }
  const int64_t M = head_rows_;
  Tensor logits = logits_.slice(0, M);
  if (mlm_) {
    const Tensor& in = head_index_.defined() ? head_in_ : lnf_.out;
    Tensor pre = mlm_pre_.slice(0, M), act = mlm_act_.slice(0, M);
    be.linear_act_fwd(act, pre, in, mlm_dense_.w, mlm_dense_.b, act_);
    mlm_norm_.forward(mlm_saved_, act);
    tap(Point::MlmHidden, -1, mlm_saved_.out);
    ops::matmul(logits, mlm_saved_.out, false, head_w, true);
    ops::add_bias(logits, mlm_bias_full_);
  } else {
    ops::matmul(logits, head_src, false, head_w, true);
  }
  if (!targets.defined()) return 0.0;
  Tensor losses = losses_.slice(0, M);
  if (will_backward && !mlm_ && !head_w_.defined()) {
    // Training step of a causal LM: the losses and the unscaled gradient softmax - onehot in
    // one pass, written over the logits (backward() applies the scale).
    ops::on(logits).cross_entropy_fwd_grad(losses, logits, logits, head_targets_, cfg_.vocab_size);
    grad_in_logits_ = true;
  } else {
    ops::on(logits).cross_entropy_fwd(losses, logits, head_targets_, cfg_.vocab_size);
  }
  loss_pending_ = true;
  return read_loss ? last_loss() : 0.0;
}

double TransformerLM::last_loss() {
  if (!loss_pending_) return 0.0;
  const std::vector<double> lv = losses_.slice(0, head_rows_).to_vector();
  double s = 0;
  for (double x : lv) s += x;
  return n_targets_ ? s / double(n_targets_) : 0.0;
}

TransformerLM::QueuedLoss TransformerLM::queue_loss(ops::Readback& rb) const {
  if (!loss_pending_) return {};
  return {rb.queue(row_losses()), n_targets_};
}

Tensor TransformerLM::row_losses() const {
  return loss_pending_ ? losses_.slice(0, head_rows_) : Tensor();
}

double TransformerLM::queued_loss(ops::Readback& rb, const QueuedLoss& q) {
  if (q.index < 0) return 0.0;
  double s = 0;  // in row order, as last_loss()
  for (double x : rb.values(q.index)) s += x;
  return q.targets ? s / double(q.targets) : 0.0;
}

bool TransformerLM::grad_final_at_end(const std::string& name) {
  for (const char* p : {"wpe.", "wtt.", "emb_ln.", "project_in."})
    if (name.starts_with(p)) return true;
  return false;
}

bool TransformerLM::in_block(const std::string& name, size_t layer) {
  return name.starts_with("h." + std::to_string(layer) + ".");
}

int TransformerLM::update_stage(const std::string& name) const {
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (in_block(name, l)) return static_cast<int>(l) + 1;
  for (const char* p : {"ln_f.", "project_out.", "mlm."})
    if (name.starts_with(p)) return update_stages() - 1;
  return 0;  // first: never read before its update, whatever reads it
}

void TransformerLM::backward(double loss_scale, int64_t total_targets) {
  OFT_ASSERT(targets_.defined(), "backward() needs a forward() with targets");
  OFT_ASSERT(!head_w_.defined(), "backward() with an output-layer weight override");
  const int64_t denom = total_targets > 0 ? total_targets : n_targets_;
  const double scale = denom ? loss_scale / double(denom) : 0.0;
  // Output layer (tied): logits = lnf @ wte^T.
  auto& be = ops::on(logits_);
  const int64_t M = head_rows_;
  if (M == 0) {  // masked LM with no masked position: no loss, no gradient
    params_.settle_grads();
    ops::fill(dresid_, 0.0);
    if (head_ready_) head_ready_();
    if (grads_ready_)
      for (size_t l = blocks_.size(); l-- > 0;) grads_ready_(l);
    return;
  }
  // dlogits = d(scaled loss)/d logits = alpha * dl: the gradient forward() left in the logits
  // with alpha = scale, or cross_entropy_bwd's scaled one with alpha = 1.
  Tensor dl;
  double alpha = 1.0;
  if (grad_in_logits_) {
    dl = logits_.slice(0, M);
    alpha = scale;
  } else {
    ensure(dlogits_, logits_.shape(), logits_.dtype(), device_);
    dl = dlogits_.slice(0, M);
    be.cross_entropy_bwd(dl, logits_.slice(0, M), head_targets_, scale, cfg_.vocab_size);
  }
  if (mlm_) {
    OFT_ASSERT(!grad_in_logits_, "masked-LM head: forward() computes no fused gradient");
    // logits = LN(act(dense(h))) @ wte^T + bias, on the M head rows
    const bool gathered = head_index_.defined();
    Tensor dt = dtmp_.slice(0, M), db = dbranch_.slice(0, M);
    ops::bias_grad(dmlm_bias_full_, dl);
    ops::matmul(dhead_full_, dl, true, mlm_saved_.out, false, 1.0, take_pending_zero(wte_param_));
    ops::matmul(dt, dl, false, head_full_, false);
    mlm_norm_.backward(db, dt, mlm_act_.slice(0, M), mlm_saved_, false);
    be.activation_bwd(db, db, mlm_pre_.slice(0, M), act_);
    if (gathered) {
      ensure(dhead_in_, {M, cfg_.d_model}, dtype_, device_);
      mlm_dense_.backward(dhead_in_, db, head_in_, false);
      ops::fill(dnorm_, 0.0);  // unmasked positions get no gradient from the loss
      be.scatter_rows(dnorm_, dhead_in_, head_index_);
    } else {
      mlm_dense_.backward(dnorm_, db, lnf_.out, false);
    }
  } else {
    // logits = h @ wte^T (h = lnf, or project_out(lnf)): dwte += alpha dl^T h, dh = alpha dl wte
    if (proj_) {
      ops::matmul(dhead_full_, dl, true, head_src_, false, alpha, take_pending_zero(wte_param_));
      ops::matmul(dproj_, dl, false, head_full_, false, alpha, 0.0);
      project_out_.backward(dnorm_, dproj_, lnf_.out, false);
    } else {
      ops::matmul(dhead_full_, dl, true, lnf_.out, false, alpha, take_pending_zero(wte_param_));
      ops::matmul(dnorm_, dl, false, head_full_, false, alpha, 0.0);
    }
  }
  ln_f_.backward(dresid_, dnorm_, resid_.back(), lnf_, false,
                 block_ == BlockType::PreNorm && !blocks_.empty()
                     ? fc_out_bias_sum(blocks_.size() - 1)
                     : nullptr);
  if (head_ready_) head_ready_();
  for (size_t l = blocks_.size(); l-- > 0;) {
    block_backward(l);
    if (grads_ready_) grads_ready_(l);
  }
  // dresid_ = d resid_[0]; through the embedding norm to d(embedding sum).
  Tensor* demb = &dresid_;
  if (emb_norm_.kind != NormKind::None) {
    emb_norm_.backward(dtmp_, dresid_, emb_, emb_saved_, false);
    demb = &dtmp_;
  }
  if (dwtt0_.defined()) ops::bias_grad(dwtt0_, *demb);
  if (proj_) {
    Tensor none;
    be.embedding_bwd(dwpe_, none, *demb, pos_ids_, T_, 0);  // dwpe[t] += d x0
    project_in_.backward(dproj_, *demb, emb_tok_, false);    // d wte[tok] [N, P]
    be.embedding_bwd(token_sink_.defined() ? token_sink_ : dwte_, none, dproj_, tokens_, T_, 0);
  } else {
    be.embedding_bwd(token_sink_.defined() ? token_sink_ : dwte_, dwpe_, *demb, tokens_, T_, 0);
  }
  params_.settle_grads();  // anything pending that no layer wrote is zero
}

}  // namespace oft
