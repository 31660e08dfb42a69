// Small device results read on the host without waiting for them when they are produced: the
// training loop queues each micro-batch's per-row losses and reads them once the step's work is
// queued, so the host never drains the GPU's queue between micro-batches.
//
//   Readback rb;
//   const int i = rb.queue(losses);        // GPU: a copy queued on the op stream; CPU: copied now
//   ...                                    // queue more work
//   std::vector<double> v = rb.values(i);  // waits for copy i (not for the work queued after it)
//   rb.clear();                            // slots (and their pinned host memory) are reused
#pragma once

#include <cstddef>
#include <vector>

#include "core/tensor.h"

namespace oft::ops {

class Readback {
 public:
  Readback() = default;
  Readback(const Readback&) = delete;
  Readback& operator=(const Readback&) = delete;
  ~Readback();

  // Queues a copy of src (a contiguous tensor on any device, f32 / f64 / bf16 / i32) and returns
  // its index for values(). Not while a CUDA graph records (the copy's host memory would be
  // written at every replay).
  int queue(const Tensor& src);
  // The elements of copy i, after waiting for that copy only: work queued after it keeps
  // running (the trainer reads a step's values while the next step runs).
  std::vector<double> values(int i);
  // Forgets the queued copies; their host memory is kept for the next ones.
  void clear() { used_ = 0; }
  int size() const { return static_cast<int>(used_); }

 private:
  struct Slot {
    void* host = nullptr;  // pinned on the GPU, plain on the CPU
    size_t capacity = 0;
    Shape shape;
    DType dtype = DType::F32;
    void* done = nullptr;  // the event after the slot's queued copy (GPU tensors), or null
    bool queued = false;   // `done` marks this copy (not an earlier one of a CPU tensor)
  };
  std::vector<Slot> slots_;
  size_t used_ = 0;
};

// The runtime's side (cuda_runtime.cu; plain host memory and memcpy without CUDA).
void* host_pinned_alloc(size_t bytes);
void host_pinned_free(void* p);
// Copies src's bytes to dst (host memory from host_pinned_alloc): queued on the op stream for a
// GPU tensor, at once for a CPU one.
void copy_to_host_queued(void* dst, const Tensor& src);
// Events on the op stream for the host to wait for (null and no-ops without a GPU):
// copy_event_record() marks the work queued so far (creating the event when e is null) and
// returns it; copy_event_wait() blocks until that work is done.
void* copy_event_record(void* e);
void copy_event_wait(void* e);
void copy_event_destroy(void* e);

}  // namespace oft::ops
