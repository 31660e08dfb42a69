// Transformer language model of the GPT-2 / OPT family, written once over ops:
// token + learned position embeddings, n_layer blocks, an optional final norm and an output
// layer tied to the token embedding. Block types (REFERENCE.md §3; beta = branch gain):
//   pre_norm   h = x + beta A(N1(x));            out = h + beta M(N2(h))
//   post_norm  h = N1(x + beta A(x));            out = N2(h + beta M(h))
//   parallel   out = x + beta A(N1(x)) + beta M(N1(x))
//   op         h = x + beta A(x');  out = h + beta M(h)  with x' = LN(x) in layer 0, else x
//   skipless           h = b_SA SA(N1(x));  out = a_FF h + b_FF M(N2(h))
//   skipless_parallel  out = b_SA SA(N1(x)) + b_FF M(N1(x))
// (SA: shaped attention; gains b_SA, a_FF, b_FF start at 1, 1, 0.1.)
// A is multi-head attention with its variants (attention.h), M = Linear -> act -> Linear.
// With model.word_embed_proj_dim = P != C (OPT-350m) the token embedding is [V, P]:
//   x0 = project_in(wte[tok]) + wpe[t],   logits = project_out(final hidden) @ wte^T.
// forward() keeps every activation the explicit backward() needs.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "model/attention.h"
#include "model/layers.h"
#include "model/model_config.h"
#include "ops/readback.h"

namespace oft {

// Parses model.attn_softmax ("softmax" | "vanilla" | "softmax1" | "clipped(GAMMA:ZETA)").
ops::AttentionSpec parse_attention(const ModelConfig& cfg);

enum class BlockType { PreNorm, PostNorm, Parallel, OP, Skipless, SkiplessParallel };
BlockType parse_block(const std::string& s);

class TransformerLM {
 public:
  // seq_len: the training sequence length T (clipped softmax via `alpha` depends on it).
  TransformerLM(const ModelConfig& cfg, DType dtype, Device device, int64_t seq_len = 0);

  // N(0, init_std) for matrices and embeddings, zeros for biases, ones for norm gains; gate
  // biases and block gains keep their configured initial values. Each tensor draws from its own
  // stream seeded by (seed, name), so the result does not depend on parameter order.
  void init_weights(uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // tokens, targets: [B, T] i32 on the model's device (targets < 0 are ignored); key_mask:
  // optional [B, T] i32, 0 = padding (masked-LM line-by-line batches).
  // Returns the mean cross-entropy over the counted targets.
  // will_backward: a training step's forward, followed by backward(). A causal LM then computes
  // the losses and their unscaled gradient softmax - onehot in one pass over the logits, in
  // place (ops cross_entropy_fwd_grad), and backward() applies its scale in the output layer's
  // matrix products instead of running the cross-entropy backward: one read of the [N, Vp]
  // logits less per step, and no separate logits-gradient buffer. logits() then holds that
  // gradient, not the logits. A masked LM ignores will_backward (its head runs on the masked
  // rows and keeps cross_entropy_fwd / cross_entropy_bwd).
  // targets may be on the host (counted there and uploaded without waiting for the GPU) or on
  // the model's device. read_loss = false: the loss is left on the device and forward()
  // returns 0; last_loss() reads it later (after backward(), say), so that the step's work is
  // queued without the host waiting for the forward to finish.
  // known_targets >= 0: the caller has counted the targets (those >= 0), so targets on the
  // device are not read back to count them (a causal LM only; a CUDA graph records the forward
  // that way, see train/step_graph.h).
  double forward(const Tensor& tokens, const Tensor& targets, const Tensor& key_mask = Tensor(),
                 bool will_backward = false, bool read_loss = true, int64_t known_targets = -1);
  // The mean cross-entropy of the last forward() with targets (0 without); waits for it.
  double last_loss();
  // The same loss, without waiting: queue_loss() queues a copy of the last forward's per-row
  // losses into rb (after whatever work is queued, so a later step's forward may overwrite the
  // losses on the device), and queued_loss() reads it, waiting then. {-1, 0} without a loss.
  struct QueuedLoss {
    int index = -1;
    int64_t targets = 0;
  };
  QueuedLoss queue_loss(ops::Readback& rb) const;
  // The last forward's per-row losses on the device, what queue_loss() copies (undefined
  // without a loss).
  Tensor row_losses() const;
  static double queued_loss(ops::Readback& rb, const QueuedLoss& q);
  // Accumulates d(loss_scale * mean loss)/d(params) into the gradients. Follows forward().
  // The mean is over counted_targets(), or over `total_targets` when positive (data-parallel
  // ranks divide their share of the loss by the targets of the whole global batch).
  void backward(double loss_scale, int64_t total_targets = 0);
  // Called from backward() as soon as block l's parameter gradients are final (l = L-1 .. 0),
  // on the host, after the block's backward ops are enqueued: data-parallel training starts
  // reducing that block's gradients while the earlier blocks are still computing. The
  // gradients of the embeddings, final norm and head are final when backward() returns.
  void set_block_grads_ready(std::function<void(size_t layer)> fn) { grads_ready_ = std::move(fn); }
  // Called from backward() as soon as the output layer's, the final norm's and (masked LM) the
  // head's gradients are final, before the blocks' backward.
  void set_head_grads_ready(std::function<void()> fn) { head_ready_ = std::move(fn); }
  // When defined ([V, P] like the token embedding's gradient, zeroed by the caller), backward()
  // adds the input embedding's part of the tied token-embedding gradient here instead of into
  // wte's gradient, which then holds the output layer's part only: data-parallel training
  // reduces that part early and, at the end, only the rows of the tokens the batch holds.
  void set_token_grad_sink(Tensor sink) { token_sink_ = std::move(sink); }
  // True when the parameter's gradient is only final at the very end of backward() (position /
  // token-type embeddings, embedding norm, project_in).
  static bool grad_final_at_end(const std::string& param_name);
  // True when the parameter belongs to block l (its name starts with "h.<l>.").
  static bool in_block(const std::string& param_name, size_t layer);
  // The optimizer step beside the forward (train.overlap_update): the forward needs parameter
  // `param_name` from stage update_stage(name) on (0: the embeddings and anything not listed
  // below, l + 1: block l, update_stages() - 1: the final norm, project_out and the MLM head).
  // With wait_for_update(true) the forward makes the compute stream wait for each stage's mark
  // on the update stream (ops::compute_wait_update_stage) before the ops that read it, and for
  // the whole update before the final norm, so the backward starts after it too. Stage 0 may hold
  // only the token-embedding rows of the next training batch (embedding_rows in
  // train/trainer.h): a forward without will_backward (evaluation, metrics) waits for the whole
  // update before it starts.
  int update_stage(const std::string& param_name) const;
  int update_stages() const { return static_cast<int>(blocks_.size()) + 2; }
  void wait_for_update(bool on) {
    wait_update_ = on;
    params_.zero_after_update(on);
  }
  // The token embedding [V, P] (tied with the output layer): its rows are what a batch reads.
  const Param& token_embedding() const { return *wte_param_; }
  // Logits [B*T, Vp] of the last forward (Vp = V on the CPU; on the GPU columns >= V are the
  // aligned padding of the output layer and hold 0).
  // (A masked LM in training keeps only the masked positions' rows, in position order; after a
  // causal LM's forward with will_backward the rows hold the unscaled loss gradient instead.)
  Tensor logits() const { return logits_.slice(0, head_rows_); }
  int64_t counted_targets() const { return n_targets_; }
  // Installs an observer of the forward pass (hooks.h); nullptr removes it.
  void set_hook(ActivationHook* hook);
  bool hooked() const { return hook_ != nullptr; }
  // Counts the times the activation buffers were (re)allocated for a new batch shape: a
  // recorded step (CUDA graph) holds their addresses and is stale once this changes.
  uint64_t buffer_generation() const { return buffer_generation_; }
  // Sizes the activation buffers for [B, T] batches now (forward() does it too).
  void reserve_batch(int64_t B, int64_t T) { allocate(B, T); }
  // What last_loss() reads besides the device losses: a replayed step (CUDA graph) runs no
  // host code, so it restores the state its recorded forward left.
  struct LossState {
    bool pending = false;
    int64_t rows = 0, targets = 0;
  };
  LossState loss_state() const { return {loss_pending_, head_rows_, n_targets_}; }
  void set_loss_state(const LossState& s) {
    loss_pending_ = s.pending;
    head_rows_ = s.rows;
    n_targets_ = s.targets;
  }
  // Attention probabilities saved by the last forward for layer l (CPU backend: [B, H, T, T]).
  // On the GPU the fused kernel keeps no probabilities: they are recomputed on the host from the
  // saved q/k/v with the CPU backend (f32), for evaluation-time metrics only (the outlier
  // collector reads attention_entropy_rows instead where the op computed them).
  Tensor attention_probs(size_t l) const;
  // Per query row (b, h, i) the attention entropy layer l's op computed in the last forward
  // ([B * H * T], ActivationHook::wants_attention_entropy on a GPU), or an empty vector.
  const std::vector<double>& attention_entropy_rows(size_t l) const {
    return acts_.at(l).attn.entropy_rows;
  }
  // The last forward's sequence length T (its batch was [B, T]).
  int64_t last_seq_len() const { return T_; }
  // Uses `w` ([V, C], e.g. an unquantized copy of the embedding) as the output layer's weight
  // instead of the tied embedding; an undefined tensor restores the tie.
  void set_head_weight(const Tensor& w);
  // Residual stream of the last forward: hidden(0) = embeddings, hidden(l+1) = block l output.
  const Tensor& hidden(size_t l) const { return resid_.at(l); }

 private:
  struct Block {
    Norm n1, n2;
    Attention attn;
    Linear fc, fc_out;
    Tensor g_attn, g_mlp, g_skip, dg_attn, dg_mlp, dg_skip;  // trainable gains [1]
  };
  struct BlockActs {
    NormSaved n1, n2;
    AttentionActs attn;
    // Branch outputs; the MLP's pre-activation (fc, not kept with ReLU) and activation (act);
    // inner sums.
    Tensor attn_out, mlp_out, fc, act, s1, s2;
    NormGate n1_gate;  // the attention gate n1 computes (valid while attn.gate_from_norm)
    // pre_norm with a biased fc and a LayerNorm n2: n2's output in the bias-column layout
    // [N, C + 8] (ops.h), which fc's weight-gradient product turns into fc's bias gradient;
    // used by forwards without a hook (n2x_used), which read no a.n2.out. n1x likewise for n1
    // and the attention's c_attn (Attention::takes_bias_column).
    Tensor n1x, n2x;
    bool n1x_used = false, n2x_used = false;
  };

  void allocate(int64_t B, int64_t T);
  // Value of a gain: the trainable parameter when defined, else its constant.
  double gain(const Tensor& g, double constant) const;
  double attn_gain0() const, mlp_gain0() const;
  bool skipless() const { return block_ == BlockType::Skipless || block_ == BlockType::SkiplessParallel; }
  // out = MLP(in), or *residual + MLP(in) summed in fc_out's product.
  void mlp_forward(Block& b, BlockActs& a, Tensor& out, const Tensor& in,
                   const Tensor* residual = nullptr);
  // Whether a branch's residual sum is taken in its output layer's product: a constant gain of
  // 1 (no trainable gain) and no activation hook (that would read the branch output).
  bool fused_residual(const Tensor& g, double constant) const;
  void mlp_backward(Block& b, BlockActs& a, Tensor& din, const Tensor& dout, const Tensor& in);
  // Where the branch's backward writes its input gradient, relative to d: Elsewhere (d is only
  // read until the branch's backward is done), or IntoD (it accumulates into d itself while it
  // still reads the branch gradient: post_norm's attention).
  enum class BranchDx { Elsewhere, IntoD };
  // The gradient of the branch output, gain * d, and the gain's gradient dot(d, branch_out)
  // when trainable. A gain of 1 returns d itself unless dx is IntoD; otherwise the scaled copy
  // in dbranch_.
  const Tensor& branch_grad(const Tensor& g, Tensor& dg, double constant, const Tensor& d,
                            const Tensor& branch_out, BranchDx dx);
  void block_forward(size_t l);
  // The attention gate that n1 computes from its output, where the attention reads that output
  // and no hook may change it in between (ops layernorm_gate_fwd); nullptr otherwise. The
  // backward's is n1_gate_used.
  const NormGate* n1_gate(Block& b, BlockActs& a);
  static const NormGate* n1_gate_used(BlockActs& a) {
    return a.attn.gate_from_norm ? &a.n1_gate : nullptr;
  }
  void tap(Point p, int64_t layer, Tensor& t) {
    if (hook_) hook_->on_activation(p, layer, t, B_, T_);
  }
  void tap_norm(const Norm& n, Point p, int64_t layer, NormSaved& s) {
    if (n.kind != NormKind::None) tap(p, layer, s.out);
  }
  void block_backward(size_t l);
  // With fold_bias_ (pre_norm / post_norm, unit constant gains, biases): the bias gradients of
  // c_proj and mlp.c_proj are the column sums of a residual-stream gradient that a norm
  // backward writes anyway, so they come from that norm's dsum (the Linear layers skip their
  // own bias_grad). These are the targets: nullptr when not folded.
  Tensor* proj_bias_sum(size_t l);
  Tensor* fc_out_bias_sum(size_t l);

  ModelConfig cfg_;
  ActivationHook* hook_ = nullptr;
  bool wait_update_ = false;  // wait_for_update()
  std::function<void(size_t)> grads_ready_;
  std::function<void()> head_ready_;
  Tensor token_sink_;
  Tensor head_w_;  // output-layer weight override (else the tied wte_)
  DType dtype_;
  Device device_;
  BlockType block_;
  ops::Activation act_;
  ParamStore params_;
  Tensor wte_, wpe_, dwte_, dwpe_;
  Param* wte_param_ = nullptr;  // its gradient's first write is the output layer's product
  // project_in [C, P] / project_out [P, C] (no bias) when the embedding width P differs.
  bool proj_ = false;
  Linear project_in_, project_out_;
  // The tied output layer over the padded vocabulary Vp (= V on the CPU; on the GPU V rounded up
  // to 64 so every logits row is 128-byte aligned for the matrix units): wte / its gradient with
  // zero rows appended, the MLM decoder bias likewise. Logits are [N, Vp]; the loss ignores
  // the padding columns.
  int64_t vocab_padded_ = 0;
  Tensor head_full_, dhead_full_, mlm_bias_full_, dmlm_bias_full_;
  Tensor wtt0_, dwtt0_;  // token-type embedding row 0 [C] (BERT)
  Norm emb_norm_;
  std::vector<Block> blocks_;
  bool fold_bias_ = false;
  Norm ln_f_;
  // Masked-LM head (BERT): dense -> GELU -> LayerNorm -> tied decoder + bias.
  bool mlm_ = false;
  Linear mlm_dense_;
  Norm mlm_norm_;
  Tensor mlm_bias_, dmlm_bias_;

  // Activations of the last forward.
  int64_t B_ = 0, T_ = 0, n_targets_ = 0;
  uint64_t buffer_generation_ = 0;
  Tensor tokens_, targets_, key_mask_;
  bool loss_pending_ = false;  // losses_ holds the last forward's per-row losses
  std::vector<Tensor> resid_;  // resid_[l]: input of block l; resid_[L]: output of the last
  std::vector<BlockActs> acts_;
  Tensor emb_;  // embedding sum before emb_norm_ [N, C]
  Tensor pos_ids_, emb_tok_, pos_emb_, head_src_;  // with projections: [N] t, [N, P], [N, C], [N, P]
  NormSaved emb_saved_, lnf_, mlm_saved_;
  Tensor mlm_pre_, mlm_act_;  // [N, C] (the first head_rows_ rows in use)
  // Rows the output head runs on: all N, or (masked LM in training) the masked positions,
  // gathered from lnf_.out by head_index_ [M] into head_in_ [M, C]; head_targets_ [M].
  int64_t head_rows_ = 0;
  Tensor head_index_, head_targets_, head_in_, dhead_in_;
  Tensor logits_, losses_;
  // True after a forward(..., will_backward = true) that left the unscaled loss gradient in
  // logits_ (rows [0, head_rows_)); any later forward resets it.
  bool grad_in_logits_ = false;
  // Backward scratch. dlogits_ [N, Vp] is allocated on the first backward that needs it (one
  // after a forward without will_backward, or a masked LM's).
  Tensor dresid_, dnorm_, dbranch_, dtmp_, dfc_, dlogits_, dproj_;  // dproj_ [N, P]
};

}  // namespace oft
