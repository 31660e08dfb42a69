// Activation hooks: named points of the forward pass where an observer sees the tensor just
// produced, and may change it in place (simulated quantization). With no hook installed the
// forward pass does no extra work. Points follow the source systems' module names:
//   point              tensor [N = B*T rows]                 OPT / GPT-2 name    BERT name
//   Embedding          embedding sum                         embed_tokens+pos    embeddings (sum)
//   EmbedNorm          LayerNorm(embedding sum)              -                   embeddings.LayerNorm
//   Norm1, Norm2       branch-input norms (pre-norm blocks)  self_attn_layer_norm, final_layer_norm
//   QKV                q | k | v projections [N, 3C]         q_proj, k_proj, v_proj
//   Context            P V before the gate [N, C]            (context)
//   GatedContext       after the gate, heads merged [N, C]   -                   (context)
//   AttnOut            output projection [N, C]              out_proj            attention.output.dense
//   Residual           x + attention branch (h) [N, C]       residual sum        attention residual sum
//   AttnNorm           post-norm: LN(x + A(x))               -                   attention.output.LayerNorm
//   FfnAct             first MLP linear after activation     fc1 + act           intermediate
//   FfnOut             second MLP linear [N, C]              fc2                 output.dense
//   FfnSum             post-norm: h + FFN(h) before LN       -                   FFN input + output
//   LayerOut           block output (residual stream)        layer output        output.LayerNorm
//   FinalNorm          final norm output                     final_layer_norm    -
//   MlmHidden          MLM head after dense + act + LN       -                   cls.predictions.transform
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "ops/ops.h"

namespace oft {

enum class Point {
  Embedding, EmbedNorm, Norm1, Norm2, QKV, Context, GatedContext, AttnOut, Residual, AttnNorm,
  FfnAct, FfnOut, FfnSum, LayerOut, FinalNorm, MlmHidden
};

const char* point_name(Point p);
// "h.<layer>.<point>" for per-layer points, else the point name.
std::string point_label(Point p, int64_t layer);
bool point_is_per_layer(Point p);

// Quantization inside the attention op (scores before the mask, probabilities): the grids to
// apply and, when observing, the ranges the op measured on this batch.
struct AttentionQuantRequest {
  ops::FakeQuant scores, probs;
  bool observe = false;
};

class ActivationHook {
 public:
  virtual ~ActivationHook() = default;
  // Attention layers ask before running the op; nullptr = no quantization inside attention.
  virtual AttentionQuantRequest* attention_quant(int64_t layer) { return nullptr; }
  // True: attention layers on a GPU also compute each query row's attention entropy
  // (AttentionSpec::entropy_rows; TransformerLM::attention_entropy reads it), instead of the
  // probabilities being recomputed on the host afterwards.
  virtual bool wants_attention_entropy() const { return false; }
  // With observe set, called after the op with the measured [min, max] ranges.
  virtual void on_attention_ranges(int64_t layer, const double score_range[2],
                                   const double prob_range[2]) {}
  // t: the tensor produced at point p of `layer` (-1 for points outside the blocks), viewed as
  // [B*T, width]. The hook may modify it in place; the forward pass continues with it.
  virtual void on_activation(Point p, int64_t layer, Tensor& t, int64_t B, int64_t T) = 0;
};

}  // namespace oft
