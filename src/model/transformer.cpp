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

TransformerLM::TransformerLM(const ModelConfig& cfg, DType dtype, Device device)
    : cfg_(cfg), dtype_(dtype), device_(device) {
  OFT_CHECK(cfg.vocab_size > 0, "model.vocab_size must be set (> 0) before building the model");
  act_ = ops::parse_activation(cfg.activation);
  attn_ = parse_attention(cfg);
  const NormKind nk = parse_norm(cfg.norm);
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size;
  {
    Param& p = params_.create("wte.weight", {V, C}, dtype, device, true);
    wte_ = p.value;
    dwte_ = p.grad;
  }
  {
    Param& p = params_.create("wpe.weight", {cfg.max_seq_len, C}, dtype, device, true);
    wpe_ = p.value;
    dwpe_ = p.grad;
  }
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    const std::string pre = "h." + std::to_string(l) + ".";
    Block b;
    b.ln1 = Norm(params_, pre + "ln_1", C, nk, cfg.norm_eps, cfg.bias, dtype, device);
    b.qkv = Linear(params_, pre + "attn.c_attn", C, 3 * C, cfg.bias, dtype, device);
    b.proj = Linear(params_, pre + "attn.c_proj", C, C, cfg.bias, dtype, device);
    b.ln2 = Norm(params_, pre + "ln_2", C, nk, cfg.norm_eps, cfg.bias, dtype, device);
    b.fc = Linear(params_, pre + "mlp.c_fc", C, F, cfg.bias, dtype, device);
    b.fc_out = Linear(params_, pre + "mlp.c_proj", F, C, cfg.bias, dtype, device);
    blocks_.push_back(std::move(b));
  }
  if (cfg.final_norm)
    ln_f_ = Norm(params_, "ln_f", C, nk, cfg.norm_eps, cfg.bias, dtype, device);
}

void TransformerLM::init_weights(uint64_t seed) {
  for (Param& p : params_.all()) {
    const bool is_gain = p.name.ends_with(".weight") && !p.matrix;
    if (!p.matrix) {
      ops::fill(p.value, is_gain ? 1.0 : 0.0);
      continue;
    }
    Rng rng(seed ^ std::hash<std::string>{}(p.name));
    std::vector<double> v(static_cast<size_t>(p.value.numel()));
    for (auto& x : v) x = rng.normal() * cfg_.init_std;
    p.value.copy_from(Tensor::from_vector(p.value.shape(), v, dtype_).to(device_));
  }
}

void TransformerLM::allocate(int64_t B, int64_t T) {
  if (B == B_ && T == T_) return;
  B_ = B;
  T_ = T;
  const int64_t N = B * T, C = cfg_.d_model, F = cfg_.d_ff, V = cfg_.vocab_size, L = cfg_.n_layer;
  auto mk = [&](const Shape& s) { return Tensor::empty(s, dtype_, device_); };
  resid_.assign(L + 1, Tensor());
  mid_.assign(L, Tensor());
  acts_.assign(L, BlockActs());
  for (int64_t l = 0; l <= L; ++l) resid_[l] = mk({N, C});
  for (int64_t l = 0; l < L; ++l) {
    mid_[l] = mk({N, C});
    acts_[l].qkv = mk({N, 3 * C});
    acts_[l].att = mk({N, C});
    acts_[l].fc = mk({N, F});
    acts_[l].act = mk({N, F});
  }
  logits_ = mk({N, V});
  losses_ = mk({N});
  dresid_ = mk({N, C});
  dnorm_ = mk({N, C});
  datt_ = mk({N, C});
  dqkv_ = mk({N, 3 * C});
  dfc_ = mk({N, F});
  dlogits_ = mk({N, V});
}

double TransformerLM::forward(const Tensor& tokens, const Tensor& targets) {
  OFT_ASSERT(tokens.ndim() == 2 && tokens.dtype() == DType::I32, "tokens must be [B,T] i32");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  OFT_CHECK(T <= cfg_.max_seq_len, "sequence length ", T, " exceeds model.max_seq_len=",
            cfg_.max_seq_len, ": lower data.seq_len or raise model.max_seq_len");
  allocate(B, T);
  tokens_ = tokens;
  targets_ = targets;
  auto& be = ops::on(resid_[0]);
  be.embedding_fwd(resid_[0], tokens, wte_, wpe_, T, 0);
  const Tensor no_mask;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = blocks_[l];
    BlockActs& a = acts_[l];
    // h = x + proj(attn(qkv(ln1(x))))
    b.ln1.forward(a.ln1, resid_[l]);
    b.qkv.forward(a.qkv, a.ln1.out);
    be.attention_fwd(a.att, a.att_saved, a.qkv, no_mask, B, T, attn_);
    b.proj.forward(mid_[l], a.att);
    ops::axpy(mid_[l], resid_[l], 1.0);
    // out = h + fc_out(act(fc(ln2(h))))
    b.ln2.forward(a.ln2, mid_[l]);
    b.fc.forward(a.fc, a.ln2.out);
    be.activation_fwd(a.act, a.fc, act_);
    b.fc_out.forward(resid_[l + 1], a.act);
    ops::axpy(resid_[l + 1], mid_[l], 1.0);
  }
  ln_f_.forward(lnf_, resid_.back());
  ops::matmul(logits_, lnf_.out, false, wte_, true);
  if (!targets.defined()) return 0.0;
  be.cross_entropy_fwd(losses_, logits_, targets);
  n_targets_ = 0;
  const Tensor t_host = targets.to(Device::CPU);
  for (int64_t i = 0; i < t_host.numel(); ++i) n_targets_ += t_host.data<int32_t>()[i] >= 0;
  const std::vector<double> lv = losses_.to_vector();
  double s = 0;
  for (double x : lv) s += x;
  return n_targets_ ? s / double(n_targets_) : 0.0;
}

void TransformerLM::backward(double loss_scale) {
  OFT_ASSERT(targets_.defined(), "backward() needs a forward() with targets");
  auto& be = ops::on(dresid_);
  const int64_t T = T_;
  const double scale = n_targets_ ? loss_scale / double(n_targets_) : 0.0;
  // Output layer (tied): logits = lnf @ wte^T.
  be.cross_entropy_bwd(dlogits_, logits_, targets_, scale);
  ops::matmul(dwte_, dlogits_, true, lnf_.out, false, 1.0, 1.0);
  ops::matmul(dnorm_, dlogits_, false, wte_, false);
  ln_f_.backward(dresid_, dnorm_, resid_.back(), lnf_, false);
  // dresid_ holds d(block output); each step turns it into d(block input).
  for (size_t li = blocks_.size(); li-- > 0;) {
    Block& b = blocks_[li];
    BlockActs& a = acts_[li];
    // MLP branch: out = h + fc_out(act(fc(ln2(h))))
    b.fc_out.backward(dfc_, dresid_, a.act, false);
    be.activation_bwd(dfc_, dfc_, a.fc, act_);
    b.fc.backward(dnorm_, dfc_, a.ln2.out, false);
    b.ln2.backward(dresid_, dnorm_, mid_[li], a.ln2, true);
    // Attention branch: h = x + proj(attn(qkv(ln1(x))))
    b.proj.backward(datt_, dresid_, a.att, false);
    be.attention_bwd(dqkv_, datt_, a.qkv, a.att_saved, Tensor(), B_, T, attn_);
    b.qkv.backward(dnorm_, dqkv_, a.ln1.out, false);
    b.ln1.backward(dresid_, dnorm_, resid_[li], a.ln1, true);
  }
  be.embedding_bwd(dwte_, dwpe_, dresid_, tokens_, T, 0);
}

}  // namespace oft
