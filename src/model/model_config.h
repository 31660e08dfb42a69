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
  // OPT-350m's token embedding width P != d_model: wte is [V, P], project_in [C, P] maps the
  // token embedding to the model width before the positions are added, project_out [P, C] maps
  // the final hidden state back before the tied output layer (both without bias). 0 = d_model,
  // no projections.
  int64_t word_embed_proj_dim = 0;
  std::string activation = "gelu";  // relu | gelu (tanh approx.) | gelu_erf
  std::string norm = "layernorm";   // layernorm | rmsnorm | none
  double norm_eps = 1e-5;
  bool final_norm = true;           // norm before the output layer
  bool bias = true;                 // biases in linear layers and LayerNorm
  double init_std = 0.02;           // N(0, init_std) for every weight matrix and embedding
  std::string attn_softmax = "softmax";  // softmax | clipped(GAMMA:ZETA) | softmax1
  double alpha = 0.0;  // > 0: clipped softmax with gamma = -alpha / T_train, zeta = 1 (seed A OPT)

  // Gated attention (REFERENCE.md §2): ctx_h *= sigmoid(G_h(x)) before the output projection.
  std::string attn_gate_type = "none";  // none | unconditional_per_head | conditional_per_head
                                        // | conditional_per_token
  double attn_gate_init = 0.5;          // initial gate probability pi_init (bias = logit(pi))
  bool attn_gate_mlp = false;           // per-head MLP gate D -> hidden -> 1 instead of linear
  int64_t attn_gate_hidden = 4;         // hidden width of the MLP gate
  bool attn_gate_linear_all_features = false;  // one Linear(d_model -> H) per token

  // Blocks (REFERENCE.md §3).
  std::string block = "pre_norm";  // pre_norm | post_norm | parallel | op | skipless
                                   // | skipless_parallel
  bool qk_norm = false;            // RMSNorm over the head dim on q and k (OP block)
  double branch_gain = 1.0;        // beta: residual branches are scaled by it (OP: 0.2)
  bool gains_trainable = false;    // learn beta per block and branch (init branch_gain)

  // Objective and BERT pieces.
  std::string objective = "clm";  // clm: causal LM (GPT-2/OPT) | mlm: masked LM (BERT)
  int64_t type_vocab_size = 0;    // token-type embeddings (BERT: 2; all inputs use type 0)
  bool embed_norm = false;        // LayerNorm after the embedding sum (BERT)

  bool causal() const { return objective != "mlm"; }
  int64_t head_dim() const { return d_model / n_head; }
  bool embed_proj() const { return word_embed_proj_dim > 0 && word_embed_proj_dim != d_model; }
  int64_t embed_dim() const { return embed_proj() ? word_embed_proj_dim : d_model; }
};

}  // namespace oft
