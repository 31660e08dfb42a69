// Decoder-only transformer language model of the GPT-2 / OPT family, written once over ops:
// token + learned position embeddings, n_layer pre-norm blocks
//     h = x + Attn(Norm1(x));  out = h + MLP(Norm2(h))
// (causal multi-head attention with a fused q|k|v projection; MLP = Linear -> act -> Linear),
// an optional final norm and an output layer tied to the token embedding.
// forward() keeps every activation the explicit backward() needs.
#pragma once

#include <memory>
#include <vector>

#include "model/layers.h"
#include "model/model_config.h"

namespace oft {

// Parses model.attn_softmax ("softmax" | "vanilla" | "softmax1" | "clipped(GAMMA:ZETA)").
ops::AttentionSpec parse_attention(const ModelConfig& cfg);

class TransformerLM {
 public:
  TransformerLM(const ModelConfig& cfg, DType dtype, Device device);

  // N(0, init_std) for matrices and embeddings, zeros for biases, ones for norm gains. Each
  // tensor draws from its own stream seeded by (seed, name), so the result does not depend on
  // parameter order.
  void init_weights(uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return params_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // tokens, targets: [B, T] i32 on the model's device (targets < 0 are ignored).
  // Returns the mean cross-entropy over the counted targets.
  double forward(const Tensor& tokens, const Tensor& targets);
  // Accumulates d(loss_scale * mean loss)/d(params) into the gradients. Follows forward().
  void backward(double loss_scale);
  // Logits [B*T, V] of the last forward.
  const Tensor& logits() const { return logits_; }
  int64_t counted_targets() const { return n_targets_; }

 private:
  struct Block {
    Norm ln1, ln2;
    Linear qkv, proj, fc, fc_out;
  };
  struct BlockActs {
    NormSaved ln1, ln2;
    Tensor qkv, att_saved, att, fc, act;  // [N,3C], backend state, [N,C], [N,F], [N,F]
  };

  void allocate(int64_t B, int64_t T);

  ModelConfig cfg_;
  DType dtype_;
  Device device_;
  ops::Activation act_;
  ops::AttentionSpec attn_;
  ParamStore params_;
  Tensor wte_, wpe_, dwte_, dwpe_;
  std::vector<Block> blocks_;
  Norm ln_f_;

  // Activations of the last forward.
  int64_t B_ = 0, T_ = 0, n_targets_ = 0;
  Tensor tokens_, targets_;
  std::vector<Tensor> resid_;  // resid_[l]: input of block l; resid_[L]: output of the last
  std::vector<Tensor> mid_;    // mid_[l] = resid_[l] + attention branch
  std::vector<BlockActs> acts_;
  NormSaved lnf_;
  Tensor logits_, losses_;
  // Backward scratch.
  Tensor dresid_, dnorm_, datt_, dqkv_, dfc_, dlogits_;
};

}  // namespace oft
