// ParamStore implementation (see params.h).
#include "model/params.h"

#include "ops/ops.h"

namespace oft {

Param& ParamStore::create(const std::string& name, const Shape& shape, DType dtype,
                          Device device, bool matrix) {
  OFT_ASSERT(find(name) == nullptr, "duplicate parameter ", name);
  const DType master = dtype == DType::BF16 ? DType::F32 : dtype;
  Param p{name, Tensor::zeros(shape, master, device), Tensor::zeros(shape, master, device), Tensor(),
          matrix};
  p.compute = master == dtype ? p.value : Tensor::zeros(shape, dtype, device);
  params_.push_back(std::move(p));
  return params_.back();
}

Param* ParamStore::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

int64_t ParamStore::numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.value.numel();
  return n;
}

void ParamStore::zero_grad() {
  std::vector<Tensor*> grads;
  for (auto& p : params_) {
    if (p.first_write_overwrites)
      p.pending_zero = true;
    else
      grads.push_back(&p.grad);
  }
  if (grads.empty()) return;
  // This store's optimizer step on the update stream (train.overlap_update) may still read them:
  // zero them after it, on that stream (the forward waits for the whole update before the
  // backward). A store whose model does not wait for the update zeroes on the compute stream.
  const bool after_update = zero_after_update_ && ops::update_pending();
  if (after_update) ops::update_stream_begin();
  ops::on(*grads.front()).zero_multi(grads);
  if (after_update) ops::update_stream_end();
}

std::vector<bool> ParamStore::pending_flags() const {
  std::vector<bool> f;
  f.reserve(params_.size());
  for (const Param& p : params_) f.push_back(p.pending_zero);
  return f;
}

void ParamStore::set_pending_flags(const std::vector<bool>& flags) {
  OFT_ASSERT(flags.size() == params_.size(), "set_pending_flags: ", flags.size(), " flags for ",
             params_.size(), " parameters");
  size_t i = 0;
  for (Param& p : params_) p.pending_zero = flags[i++];
}

void ParamStore::settle_grads() {
  std::vector<Tensor*> grads;
  for (auto& p : params_)
    if (p.pending_zero) {
      grads.push_back(&p.grad);
      p.pending_zero = false;
    }
  if (!grads.empty()) ops::on(*grads.front()).zero_multi(grads);
}

void ParamStore::pad_rows(Param& p, int64_t rows, Tensor& compute_full, Tensor& grad_full) {
  const int64_t n = p.value.dim(0);
  OFT_ASSERT(rows >= n, "pad_rows: ", rows, " < ", n);
  Shape s = p.value.shape();
  s[0] = rows;
  const Device dev = p.value.device();
  grad_full = Tensor::zeros(s, p.grad.dtype(), dev);
  p.grad = grad_full.slice(0, n);
  if (p.compute.same_storage(p.value)) {
    compute_full = Tensor::zeros(s, p.value.dtype(), dev);
    p.value = compute_full.slice(0, n);
    p.compute = p.value;
  } else {
    compute_full = Tensor::zeros(s, p.compute.dtype(), dev);
    p.compute = compute_full.slice(0, n);
  }
}

void ParamStore::sync_compute() {
  for (auto& p : params_)
    if (!p.compute.same_storage(p.value)) ops::convert(p.compute, p.value);
}

}  // namespace oft
