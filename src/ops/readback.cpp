// Readback (readback.h): queued device-to-host copies into reusable pinned slots.
#include "ops/readback.h"

#include <cstring>

#include "ops/ops.h"

namespace oft::ops {

Readback::~Readback() {
  for (Slot& s : slots_) {
    if (s.host) host_pinned_free(s.host);
    copy_event_destroy(s.done);
  }
}

int Readback::queue(const Tensor& src) {
  OFT_ASSERT(src.defined(), "Readback::queue: undefined tensor");
  if (used_ == slots_.size()) slots_.emplace_back();
  Slot& s = slots_[used_];
  const size_t bytes = src.nbytes();
  if (s.capacity < bytes) {
    if (s.host) host_pinned_free(s.host);
    void* done = s.done;
    s = Slot{};  // empty, should the allocation throw
    s.done = done;
    s.host = host_pinned_alloc(bytes);
    s.capacity = bytes;
  }
  s.shape = src.shape();
  s.dtype = src.dtype();
  if (bytes > 0) copy_to_host_queued(s.host, src);
  s.queued = src.device() == Device::CUDA && bytes > 0;
  if (s.queued) s.done = copy_event_record(s.done);
  return static_cast<int>(used_++);
}

std::vector<double> Readback::values(int i) {
  OFT_ASSERT(i >= 0 && size_t(i) < used_, "Readback::values: no queued copy ", i, " (",
             used_, " queued)");
  const Slot& s = slots_[size_t(i)];
  if (s.queued) copy_event_wait(s.done);
  Tensor t = Tensor::empty(s.shape, s.dtype);
  if (t.nbytes() > 0) std::memcpy(t.raw(), s.host, t.nbytes());
  return t.to_vector();
}

}  // namespace oft::ops
