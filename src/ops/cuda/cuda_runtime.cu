// CUDA runtime plumbing for the backend: device detection, the stream all ops run on, a caching
// device allocator (so per-step tensors never reach cudaMalloc / cudaFree, which synchronise),
// host <-> device copies registered with core/tensor (small uploads through pinned staging,
// without waiting), the scratch workspace, and memory statistics for `oft bench`.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/profiler.h"
#include "ops/readback.h"

namespace oft::cuda {
namespace {

struct DeviceState {
  bool probed = false;
  bool ok = false;
  std::string reason;
  int sms = 0;
  size_t total = 0;
};

// The GPU this process uses (select_cuda_device); `touched` once memory or a stream exists.
int g_device = 0;
bool g_touched = false;

DeviceState& state() {
  static DeviceState s;
  if (!s.probed) {
    s.probed = true;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      s.reason = e != cudaSuccess ? std::string("no usable CUDA driver or device (") +
                                        cudaGetErrorString(e) + ")"
                                  : "no CUDA device is visible";
      cudaGetLastError();
      return s;
    }
    cudaDeviceProp p{};
    OFT_CUDA_CHECK(cudaGetDeviceProperties(&p, g_device));
    if (p.major != 9 || p.minor != 0) {
      s.reason = std::string("this build targets Hopper (sm_90a) but the GPU is ") + p.name +
                 " (sm_" + std::to_string(p.major) + std::to_string(p.minor) +
                 "): rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(p.major) +
                 std::to_string(p.minor);
      return s;
    }
    s.ok = true;
    s.sms = p.multiProcessorCount;
    s.total = p.totalGlobalMem;
  }
  return s;
}

// Caching allocator: blocks are rounded to a size class and kept on a free list when released.
// All work runs on one stream, so a block freed by the host and handed out again is only
// touched by later work on that stream: no extra synchronisation is needed.
// Graph pools: while a CUDA graph records (DeviceGraph), every block allocated or freed goes to
// that graph's pool, and a pool's free blocks are handed out only while recording into it. The
// recorded kernels keep using those addresses at every replay, so no other tensor may be given
// them while the graph lives; releasing the pool returns its blocks to the shared free lists.
class Allocator {
 public:
  static size_t round(size_t bytes) {
    if (bytes <= (1u << 20)) return (bytes + 511) / 512 * 512;
    return (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  }
  void* alloc(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    const size_t sz = round(bytes);
    void* p = nullptr;
    if (recording_ != 0) p = take(pools_[recording_], sz);
    if (p == nullptr) p = take(free_, sz);
    if (p == nullptr) {
      g_touched = true;
      cudaError_t e = cudaMalloc(&p, sz);
      if (e != cudaSuccess) {
        cudaGetLastError();
        release_cached();
        e = cudaMalloc(&p, sz);
        if (e != cudaSuccess) {
          cudaGetLastError();
          fail("out of GPU memory: a tensor of ", sz, " bytes does not fit (", in_use_,
               " bytes in use by tensors, ", reserved_, " reserved, of ", state().total,
               "): lower train.batch_size or data.seq_len, or raise train.grad_accum");
        }
      }
      reserved_ += sz;
    }
    if (recording_ != 0) owner_[p] = recording_;
    sizes_[p] = sz;
    in_use_ += sz;
    peak_ = std::max(peak_, in_use_);
    return p;
  }
  void free(void* p) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    in_use_ -= it->second;
    // A block freed while recording may be used by kernels recorded before the free.
    if (recording_ != 0) owner_[p] = recording_;
    auto own = owner_.find(p);
    (own == owner_.end() ? free_ : pools_[own->second])[it->second].push_back(p);
    sizes_.erase(it);
  }
  // Starts routing allocations and frees to a new pool; returns its id.
  int begin_pool() {
    std::lock_guard<std::mutex> g(mu_);
    OFT_ASSERT(recording_ == 0, "a CUDA graph is already recording");
    recording_ = ++last_pool_;
    pools_[recording_];
    return recording_;
  }
  void end_pool() {
    std::lock_guard<std::mutex> g(mu_);
    recording_ = 0;
  }
  // True while a DeviceGraph records (a cheap test for every op, unlike cudaStreamIsCapturing).
  bool recording() {
    std::lock_guard<std::mutex> g(mu_);
    return recording_ != 0;
  }
  // The pool's blocks become ordinary ones: free blocks go to the shared free lists, live ones
  // return there when freed.
  void release_pool(int id) {
    std::lock_guard<std::mutex> g(mu_);
    if (recording_ == id) recording_ = 0;
    auto it = pools_.find(id);
    if (it == pools_.end()) return;
    for (auto& [sz, v] : it->second)
      for (void* p : v) free_[sz].push_back(p);
    pools_.erase(it);
    for (auto o = owner_.begin(); o != owner_.end();) o = o->second == id ? owner_.erase(o) : ++o;
  }
  void release_cached() {
    cudaStreamSynchronize(stream());
    for (auto& [sz, v] : free_) {
      for (void* p : v) cudaFree(p);  // (graph pools' blocks are never on these lists)
      reserved_ -= sz * v.size();
      v.clear();
    }
  }
  ops::DeviceMemory stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {in_use_, peak_, reserved_, state().total};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> g(mu_);
    peak_ = in_use_;
  }

 private:
  using FreeLists = std::map<size_t, std::vector<void*>>;
  static void* take(FreeLists& lists, size_t sz) {
    auto it = lists.find(sz);
    if (it == lists.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }
  std::mutex mu_;
  FreeLists free_;
  std::map<int, FreeLists> pools_;
  std::map<void*, int> owner_;  // blocks that belong to a graph pool
  int recording_ = 0, last_pool_ = 0;
  std::map<void*, size_t> sizes_;
  size_t in_use_ = 0, peak_ = 0, reserved_ = 0;
};

Allocator& allocator() {
  static Allocator* a = new Allocator();  // never destroyed: tensors may outlive statics
  return *a;
}

void* device_alloc(size_t bytes) { return allocator().alloc(bytes); }
}  // namespace
int begin_graph_pool() { return allocator().begin_pool(); }
void end_graph_pool() { allocator().end_pool(); }
void release_graph_pool(int id) { allocator().release_pool(id); }
namespace {
void device_free(void* p) { allocator().free(p); }

// Small host-to-device copies (a batch's token ids, targets and mask; scalars) go through
// pinned staging slots: the host data is copied into a slot and the transfer is queued on the
// stream without waiting for it, so uploading a batch does not drain the GPU's queue. A slot is
// reused once the event recorded after its last transfer has passed.
class StagingRing {
 public:
  static constexpr size_t kSlotBytes = size_t(1) << 20;
  static constexpr int kSlots = 8;
  // Queues the copy of bytes (<= kSlotBytes) from host src to device dst on the stream; false,
  // having done nothing, when no pinned memory could be had (the caller then copies and waits).
  bool upload(void* dst, const void* src, size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    if (unavailable_) return false;
    if (!base_) {
      if (cudaHostAlloc(&base_, kSlotBytes * kSlots, cudaHostAllocPortable) != cudaSuccess) {
        cudaGetLastError();
        base_ = nullptr;
        unavailable_ = true;
        return false;
      }
      for (cudaEvent_t& e : done_)
        OFT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    const int i = next_;
    next_ = (next_ + 1) % kSlots;
    char* slot = static_cast<char*>(base_) + size_t(i) * kSlotBytes;
    if (used_[i]) OFT_CUDA_CHECK(cudaEventSynchronize(done_[i]));  // its last transfer is done
    std::memcpy(slot, src, bytes);
    OFT_CUDA_CHECK(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream()));
    OFT_CUDA_CHECK(cudaEventRecord(done_[i], stream()));
    used_[i] = true;
    return true;
  }

 private:
  std::mutex mu_;
  void* base_ = nullptr;
  bool unavailable_ = false;
  cudaEvent_t done_[kSlots]{};
  bool used_[kSlots]{};
  int next_ = 0;
};

StagingRing& staging() {
  static StagingRing* r = new StagingRing();  // never destroyed: pinned memory lives with the process
  return *r;
}

void device_copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (bytes == 0) return;
  cudaMemcpyKind kind = dd == Device::CUDA ? (sd == Device::CUDA ? cudaMemcpyDeviceToDevice
                                                                 : cudaMemcpyHostToDevice)
                                           : cudaMemcpyDeviceToHost;
  // A recorded graph would copy from (or to) this host memory at every replay, long after the
  // caller has reused it.
  if (kind != cudaMemcpyDeviceToDevice && capturing())
    fail("a copy between the host and the GPU was queued while a CUDA graph was recording");
  // The host reads nothing an optimizer step on the update stream may still write.
  if (kind == cudaMemcpyDeviceToHost && ops::update_pending()) ops::compute_wait_update();
  if (kind == cudaMemcpyHostToDevice && bytes <= StagingRing::kSlotBytes &&
      staging().upload(dst, src, bytes))
    return;
  OFT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream()));
  // The host side of a copy may be reused at once: wait for it.
  if (kind != cudaMemcpyDeviceToDevice) OFT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

bool register_once() {
  if (!state().ok) return false;
  static bool done = [] {
    register_device_allocator(Device::CUDA, device_alloc, device_free);
    register_device_copy(device_copy);
    return true;
  }();
  return done;
}

// A device buffer that grows on demand (scratch, zeroed_workspace). One handed out while a CUDA
// graph recorded may be used by every replay of that graph, so growing past it retires it
// (kept, never freed) instead of freeing it.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  bool recorded = false;

  void release_for_growth() {
    if (!p) return;
    if (!recorded) {
      OFT_CUDA_CHECK(cudaStreamSynchronize(stream()));
      device_free(p);
    }
    p = nullptr;
    bytes = 0;
    recorded = false;
  }
};

}  // namespace

namespace {
// Where ops go while update_stream_begin() routes them (else null: the compute stream).
thread_local cudaStream_t t_route = nullptr;

// A non-blocking stream whose priority pick(least, greatest) chooses from the device's range
// (numerically lower priorities are scheduled first: greatest <= least).
template <class Pick>
cudaStream_t make_stream(Pick pick) {
  g_touched = true;
  int least = 0, greatest = 0;
  OFT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaStream_t st;
  OFT_CUDA_CHECK(cudaStreamCreateWithPriority(&st, cudaStreamNonBlocking, pick(least, greatest)));
  return st;
}
}  // namespace

// The compute stream: one step above the lowest priority, so that the update stream's blocks
// (train.overlap_update) only fill what its kernels leave free.
cudaStream_t compute_stream() {
  static cudaStream_t s = make_stream([](int least, int greatest) {
    return std::max(greatest, least - 1);
  });
  return s;
}

cudaStream_t stream() { return t_route ? t_route : compute_stream(); }

// The optimizer step of train.overlap_update runs here, at the lowest priority.
cudaStream_t update_stream() {
  static cudaStream_t s = make_stream([](int least, int) { return least; });
  return s;
}

// Collectives of data-parallel training run here, ordered against stream() by events. High
// priority: NCCL's blocks are scheduled ahead of the compute kernels' pending blocks, so the
// reductions progress while the backward pass fills the GPU.
cudaStream_t comm_stream() {
  static cudaStream_t s = make_stream([](int, int greatest) { return greatest; });
  return s;
}

void* scratch(size_t bytes) {
  thread_local Scratch s;
  if (bytes > s.bytes) {
    const size_t grown = std::max(bytes, s.bytes * 2);
    s.release_for_growth();
    s.bytes = grown;
    s.p = device_alloc(s.bytes);
  }
  s.recorded |= allocator().recording();
  return s.p;
}

void* zeroed_workspace(size_t bytes) {
  thread_local Scratch s;
  if (bytes > s.bytes) {
    if (capturing()) return nullptr;  // no allocation and zero fill inside a recording
    s.release_for_growth();
    s.bytes = bytes;
    s.p = device_alloc(s.bytes);
    OFT_CUDA_CHECK(cudaMemsetAsync(s.p, 0, s.bytes, stream()));
  }
  s.recorded |= allocator().recording();
  return s.p;
}

int sm_count() { return state().sms; }

void synchronize() {
  if (capturing()) fail("the host waited for the GPU while a CUDA graph was recording");
  OFT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

bool capturing() {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  OFT_CUDA_CHECK(cudaStreamIsCapturing(stream(), &st));
  return st != cudaStreamCaptureStatusNone;
}

void expect_cuda(const Tensor& t, const char* what) {
  OFT_ASSERT(t.defined(), what, ": tensor is undefined");
  OFT_ASSERT(t.device() == Device::CUDA, what, ": expected a CUDA tensor, got a ",
             device_name(t.device()), " one");
}
void expect_float(const Tensor& t, const char* what) {
  expect_cuda(t, what);
  OFT_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, what,
            ": the CUDA backend computes in f32 or bf16, not ", dtype_name(t.dtype()));
}
void expect_dtype(const Tensor& t, DType d, const char* what) {
  expect_cuda(t, what);
  OFT_ASSERT(t.dtype() == d, what, ": expected ", dtype_name(d), ", got ", dtype_name(t.dtype()));
}
void expect_act(const Tensor& t, DType dt, const char* what) {
  expect_float(t, what);
  OFT_CHECK(t.dtype() == dt, what, ": expected ", dtype_name(dt), " like the activations, got ",
            dtype_name(t.dtype()));
}
void expect_shape2(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  OFT_CHECK(t.ndim() == 2 && t.dim(0) == rows && t.dim(1) == cols, what, ": expected [", rows, ", ",
            cols, "], got ", shape_str(t.shape()));
}

}  // namespace oft::cuda

namespace oft::ops {

CudaBackend& cuda_backend() {
  static CudaBackend b;
  return b;
}

bool cuda_available() { return cuda::register_once(); }
std::string cuda_unavailable_reason() {
  return cuda::state().ok ? std::string() : cuda::state().reason;
}

Backend& backend(Device d) {
  if (Backend* p = Profiler::active(d)) return *p;
  if (d == Device::CPU) return cpu_backend();
  OFT_CHECK(cuda_available(), "device=cuda: ", cuda_unavailable_reason(), "; use device=cpu");
  return cuda_backend();
}

// Profiler timestamps: a growing pool of CUDA events recorded on the op stream (CPU ops are
// timed by the same events, which then measure the host-side gap between GPU work).
namespace {
std::vector<cudaEvent_t> g_events;
size_t g_used = 0;
std::set<void*> g_plain_host;  // host_pinned_alloc's fallbacks to malloc
}  // namespace
int device_mark() {
  if (!cuda::state().ok) return 0;
  if (g_used == g_events.size()) {
    cudaEvent_t e;
    OFT_CUDA_CHECK(cudaEventCreate(&e));
    g_events.push_back(e);
  }
  OFT_CUDA_CHECK(cudaEventRecord(g_events[g_used], cuda::stream()));
  return static_cast<int>(g_used++);
}
double device_elapsed_ms(int a, int b) {
  if (!cuda::state().ok) return 0;
  float ms = 0;
  OFT_CUDA_CHECK(cudaEventElapsedTime(&ms, g_events.at(a), g_events.at(b)));
  return ms;
}
void device_marks_reset() { g_used = 0; }

void* host_pinned_alloc(size_t bytes) {
  void* p = nullptr;
  if (cuda::state().ok) {
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) == cudaSuccess) return p;
    cudaGetLastError();  // no pinned memory to be had: plain memory, the copy then waits
    p = nullptr;
  }
  p = std::malloc(bytes ? bytes : 1);
  if (!p) fail("out of host memory: ", bytes, " bytes for a readback buffer");
  g_plain_host.insert(p);
  return p;
}
void host_pinned_free(void* p) {
  if (!p) return;
  if (g_plain_host.erase(p)) {
    std::free(p);
    return;
  }
  cudaFreeHost(p);
}
void copy_to_host_queued(void* dst, const Tensor& src) {
  if (src.device() != Device::CUDA) {
    std::memcpy(dst, src.raw(), src.nbytes());
    return;
  }
  if (cuda::capturing())
    fail("a copy from the GPU to the host was queued while a CUDA graph was recording");
  if (ops::update_pending()) ops::compute_wait_update();
  OFT_CUDA_CHECK(cudaMemcpyAsync(dst, src.raw(), src.nbytes(), cudaMemcpyDeviceToHost,
                                 cuda::stream()));
  // Plain (pageable) memory: the copy is synchronous for the host anyway; wait to be sure.
  if (g_plain_host.count(dst)) OFT_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}

void* copy_event_record(void* e) {
  if (!cuda::state().ok) return e;
  auto ev = static_cast<cudaEvent_t>(e);
  if (!ev) OFT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  OFT_CUDA_CHECK(cudaEventRecord(ev, cuda::stream()));
  return ev;
}
void copy_event_wait(void* e) {
  if (e) OFT_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e)));
}
void copy_event_destroy(void* e) {
  if (e && cuda::state().ok) cudaEventDestroy(static_cast<cudaEvent_t>(e));
}

DeviceMemory device_memory() {
  return cuda::state().ok ? cuda::allocator().stats() : DeviceMemory{};
}
void reset_peak_device_memory() {
  if (cuda::state().ok) cuda::allocator().reset_peak();
}
void device_synchronize() {
  if (cuda::state().ok) cuda::synchronize();
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  cudaGetLastError();
  return n;
}

void select_cuda_device(int index) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  cudaGetLastError();
  OFT_CHECK(index >= 0 && index < n, "GPU ", index, " requested but ", n,
            " GPU(s) are visible (CUDA_VISIBLE_DEVICES=",
            std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "unset",
            "): start at most one process per visible GPU");
  if (index == cuda::g_device) return;
  OFT_CHECK(!cuda::g_touched, "select_cuda_device(", index, ") after GPU ", cuda::g_device,
            " was already in use: choose the device before any GPU work");
  cuda::g_device = index;
  cuda::state() = cuda::DeviceState{};  // probe the chosen device again
  OFT_CUDA_CHECK(cudaSetDevice(index));
  OFT_CHECK(cuda_available(), "GPU ", index, ": ", cuda_unavailable_reason());
}

void* compute_stream_handle() { return cuda::state().ok ? cuda::compute_stream() : nullptr; }
void* comm_stream_handle() { return cuda::state().ok ? cuda::comm_stream() : nullptr; }

namespace {
// Records an event on `from` and makes `to` wait for it. A wait captures the event's state when
// it is enqueued, so the events can be re-recorded right away (a few are kept for clarity in
// profiles).
void order(cudaStream_t to, cudaStream_t from) {
  static cudaEvent_t ev[8];
  static int next = 0;
  static bool made = false;
  if (!made) {
    for (auto& e : ev) OFT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    made = true;
  }
  cudaEvent_t e = ev[next];
  next = (next + 1) % 8;
  OFT_CUDA_CHECK(cudaEventRecord(e, from));
  OFT_CUDA_CHECK(cudaStreamWaitEvent(to, e, 0));
}
}  // namespace

void comm_wait_compute() {
  if (cuda::state().ok) order(cuda::comm_stream(), cuda::stream());
}
void compute_wait_comm() {
  if (cuda::state().ok) order(cuda::stream(), cuda::comm_stream());
}
void comm_synchronize() {
  if (cuda::state().ok) OFT_CUDA_CHECK(cudaStreamSynchronize(cuda::comm_stream()));
}

namespace {
// The update stream's marks: one event per stage and one for everything (ops.h).
struct UpdateMarks {
  std::vector<cudaEvent_t> stage;
  cudaEvent_t all = nullptr;
  bool pending = false;  // `all` recorded since the compute stream last waited for it eagerly
  void grow(size_t n) {
    if (!all) OFT_CUDA_CHECK(cudaEventCreateWithFlags(&all, cudaEventDisableTiming));
    while (stage.size() < n) {
      cudaEvent_t e;
      OFT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      stage.push_back(e);
    }
  }
};
UpdateMarks& update_marks() {
  static UpdateMarks* m = new UpdateMarks();  // events live with the process
  return *m;
}
// The compute stream waits for `e`'s last record; a recording graph gets a node that waits for
// the event's record at each replay (the host records it before launching the replay).
void compute_wait(cudaEvent_t e) {
  OFT_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), e,
                                     cuda::capturing() ? cudaEventWaitExternal : 0));
}
}  // namespace

void update_stream_begin() {
  if (!cuda::state().ok) return;
  OFT_ASSERT(cuda::t_route == nullptr, "update_stream_begin: already routing to the update stream");
  OFT_ASSERT(!cuda::capturing(), "update_stream_begin: a CUDA graph is recording");
  order(cuda::update_stream(), cuda::compute_stream());
  cuda::t_route = cuda::update_stream();
}
void update_stream_end() {
  if (!cuda::state().ok) return;
  OFT_ASSERT(cuda::t_route == cuda::update_stream(), "update_stream_end without begin");
  UpdateMarks& m = update_marks();
  m.grow(0);
  OFT_CUDA_CHECK(cudaEventRecord(m.all, cuda::update_stream()));
  m.pending = true;
  cuda::t_route = nullptr;
}
void update_stage_done(int stage) {
  if (!cuda::state().ok) return;
  OFT_ASSERT(stage >= 0 && cuda::t_route == cuda::update_stream(),
             "update_stage_done outside update_stream_begin / end");
  UpdateMarks& m = update_marks();
  m.grow(size_t(stage) + 1);
  OFT_CUDA_CHECK(cudaEventRecord(m.stage[size_t(stage)], cuda::update_stream()));
}
void compute_wait_update_stage(int stage) {
  if (!cuda::state().ok) return;
  UpdateMarks& m = update_marks();
  // Created even before any update, so that a graph recorded now still waits for later ones.
  m.grow(size_t(std::max(stage, 0)) + 1);
  compute_wait(m.stage[size_t(std::max(stage, 0))]);
}
void compute_wait_update() {
  if (!cuda::state().ok) return;
  UpdateMarks& m = update_marks();
  m.grow(0);
  compute_wait(m.all);
  if (!cuda::capturing()) m.pending = false;
}
bool update_pending() { return cuda::state().ok && update_marks().pending; }

// Registers the allocator and copies as soon as the program starts, so Tensor::empty on the GPU
// works before the first op.
namespace {
[[maybe_unused]] const bool g_registered = [] {
  try {
    return cuda::register_once();
  } catch (...) {
    return false;
  }
}();
}  // namespace

}  // namespace oft::ops
