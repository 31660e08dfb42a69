// Linear and Norm layers (see layers.h).
#include "model/layers.h"

namespace oft {

Tensor& ensure(Tensor& t, const Shape& shape, DType dt, Device dev) {
  if (!t.defined() || t.shape() != shape || t.dtype() != dt || t.device() != dev)
    t = Tensor::empty(shape, dt, dev);
  return t;
}

Linear::Linear(ParamStore& ps, const std::string& name, int64_t in, int64_t out, bool bias,
               DType dt, Device dev) {
  Param& pw = ps.create(name + ".weight", {out, in}, dt, dev, true);
  w = pw.compute;
  dw = pw.grad;
  pw.first_write_overwrites = true;  // backward() writes dW with one product
  wparam = &pw;
  if (bias) {
    Param& pb = ps.create(name + ".bias", {out}, dt, dev, false);
    b = pb.compute;
    db = pb.grad;
  }
}

void Linear::forward(Tensor& y, const Tensor& x) const { ops::on(y).linear_fwd(y, x, w, b); }
void Linear::forward_residual(Tensor& y, const Tensor& x, const Tensor& res) const {
  ops::on(y).linear_residual_fwd(y, x, w, b, res);
}

void Linear::backward(Tensor& dx, const Tensor& dy, const Tensor& x, bool accumulate_dx) {
  if (dx.defined()) ops::matmul(dx, dy, false, w, false, 1.0, accumulate_dx ? 1.0 : 0.0);
  if (b.defined() && takes_bias_column(x)) {
    ops::linear_wgrad_bias_column(dw, db, dy, x, take_pending_zero(wparam));
    return;
  }
  ops::matmul(dw, dy, true, x, false, 1.0, take_pending_zero(wparam));
  if (b.defined() && !bias_grad_elsewhere) ops::bias_grad(db, dy);
}

bool Linear::takes_bias_column(const Tensor& x) const {
  return ops::is_bias_column_layout(x, w);
}

NormKind parse_norm(const std::string& s) {
  if (s == "layernorm") return NormKind::LayerNorm;
  if (s == "rmsnorm") return NormKind::RMSNorm;
  if (s == "none") return NormKind::None;
  fail("unknown norm '", s, "': use layernorm, rmsnorm or none");
}

Norm::Norm(ParamStore& ps, const std::string& name, int64_t C, NormKind k, double e, bool bias,
           DType dt, Device dev)
    : kind(k), eps(e) {
  if (kind == NormKind::None) return;
  Param& pw = ps.create(name + ".weight", {C}, dt, dev, false);
  ops::fill(pw.value, 1.0);
  w = pw.compute;
  dw = pw.grad;
  if (kind == NormKind::LayerNorm && bias) {
    Param& pb = ps.create(name + ".bias", {C}, dt, dev, false);
    b = pb.compute;
    db = pb.grad;
  }
}

void Norm::forward(NormSaved& s, const Tensor& x, const NormGate* gate, Tensor* into) const {
  OFT_ASSERT(!gate || kind == NormKind::LayerNorm, "a norm gate needs a LayerNorm");
  OFT_ASSERT(!into || kind == NormKind::LayerNorm,
             "only a LayerNorm writes the bias-column layout");
  if (kind == NormKind::None) {
    s.out = x;
    return;
  }
  const int64_t N = x.numel() / x.dim(-1);
  if (into)
    s.out = *into;  // [N, C + 8] this time (the gate's backward may read it)
  else
    ensure(s.out, x.shape(), x.dtype(), x.device());
  ensure(s.inv, {N}, stat_dtype(x.dtype()), x.device());
  auto& be = ops::on(x);
  if (kind == NormKind::LayerNorm) {
    ensure(s.mean, {N}, stat_dtype(x.dtype()), x.device());
    if (gate) {
      const int64_t G = gate->b->numel();
      ensure(*gate->gate, {N, G}, x.dtype(), x.device());
      ensure(*gate->logits, {N, G}, x.dtype(), x.device());
      be.layernorm_gate_fwd(s.out, s.mean, s.inv, *gate->gate, *gate->logits, x, w, b, eps,
                            *gate->w, *gate->b);
    } else {
      be.layernorm_fwd(s.out, s.mean, s.inv, x, w, b, eps);
    }
  } else {
    be.rmsnorm_fwd(s.out, s.inv, x, w, eps);
  }
}

void Norm::backward(Tensor& dx, const Tensor& dy, const Tensor& x, const NormSaved& s,
                    bool accumulate_dx, Tensor* dsum, const NormGate* gate) {
  auto& be = ops::on(x);
  if (gate) {
    OFT_ASSERT(kind == NormKind::LayerNorm, "a norm gate needs a LayerNorm");
    be.layernorm_gate_bwd(dx, dw, db, *gate->dw, *gate->db, dy, *gate->dgate, *gate->logits,
                          s.out, x, w, b, *gate->w, s.mean, s.inv, accumulate_dx, dsum);
    return;
  }
  switch (kind) {
    case NormKind::None:
      if (accumulate_dx) {
        ops::axpy(dx, dy, 1.0);
      } else if (!dx.same_storage(dy)) {
        dx.copy_from(dy);
      }
      if (dsum) ops::bias_grad(*dsum, dx);
      break;
    case NormKind::LayerNorm:
      be.layernorm_bwd(dx, dw, db, dy, x, w, s.mean, s.inv, accumulate_dx, dsum);
      break;
    case NormKind::RMSNorm:
      be.rmsnorm_bwd(dx, dw, dy, x, w, s.inv, accumulate_dx, dsum);
      break;
  }
}

}  // namespace oft
