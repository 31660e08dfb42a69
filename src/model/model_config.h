// Architecture hyper-parameters of a transformer language model (the `model.*` config keys).
#pragma once

#include <cstdint>
#include <string>

namespace oft {

struct ModelConfig {
  std::string arch = "gpt2";        // gpt2 | opt: naming and position-offset conventions
  int64_t n_layer = 4;
  int64_t d_model = 128;
  int64_t n_head = 4;
  int64_t d_ff = 512;               // MLP hidden width (4 * d_model in every source config)
  int64_t vocab_size = 0;           // 0: take it from the training shard's header
  int64_t max_seq_len = 128;        // rows of the learned position table
  std::string activation = "gelu";  // relu | gelu (tanh approx.) | gelu_erf
  std::string norm = "layernorm";   // layernorm | rmsnorm | none
  double norm_eps = 1e-5;
  bool final_norm = true;           // norm before the output layer
  bool bias = true;                 // biases in linear layers and LayerNorm
  double init_std = 0.02;           // N(0, init_std) for every weight matrix and embedding
  std::string attn_softmax = "softmax";  // softmax | clipped(GAMMA:ZETA) | softmax1

  int64_t head_dim() const { return d_model / n_head; }
};

}  // namespace oft
