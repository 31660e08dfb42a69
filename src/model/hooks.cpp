// Names of activation points (see hooks.h).
#include "model/hooks.h"

namespace oft {

const char* point_name(Point p) {
  switch (p) {
    case Point::Embedding: return "embedding";
    case Point::EmbedNorm: return "emb_ln";
    case Point::Norm1: return "ln_1";
    case Point::Norm2: return "ln_2";
    case Point::QKV: return "attn.qkv";
    case Point::Context: return "attn.context";
    case Point::GatedContext: return "attn.gated_context";
    case Point::AttnOut: return "attn.c_proj";
    case Point::Residual: return "residual";
    case Point::AttnNorm: return "attn_ln";
    case Point::FfnAct: return "mlp.act";
    case Point::FfnOut: return "mlp.c_proj";
    case Point::FfnSum: return "mlp.residual";
    case Point::LayerOut: return "out";
    case Point::FinalNorm: return "ln_f";
    case Point::MlmHidden: return "mlm.transform";
  }
  return "?";
}

bool point_is_per_layer(Point p) {
  return !(p == Point::Embedding || p == Point::EmbedNorm || p == Point::FinalNorm ||
           p == Point::MlmHidden);
}

std::string point_label(Point p, int64_t layer) {
  if (!point_is_per_layer(p) || layer < 0) return point_name(p);
  return "h." + std::to_string(layer) + "." + point_name(p);
}

}  // namespace oft
