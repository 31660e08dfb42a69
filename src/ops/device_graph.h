// CUDA graphs: the work one piece of host code queues on the compute stream, recorded once and
// then replayed with a single launch, so the GPU does not wait for the host between kernels
// (train.cuda_graph uses it for the training step; src/train/step_graph.h decides when).
#pragma once

namespace oft::ops {

class DeviceGraph {
 public:
  DeviceGraph() = default;
  ~DeviceGraph() { reset(); }
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;

  // Starts recording the compute stream: ops called from now on are queued into the graph and
  // do not run. Tensors allocated or freed while recording use a memory pool that belongs to
  // this graph, so no other tensor is given the memory its kernels use while the graph lives.
  // Copies between the host and the GPU, and anything that waits for the GPU, fail while
  // recording (the caller then abandons the recording: abort_capture()).
  void begin_capture();
  // Ends the recording and makes the graph ready to launch; throws when the recorded work could
  // not be captured (the graph is then empty).
  void end_capture();
  // Ends a recording that failed part way, discarding it; never throws.
  void abort_capture() noexcept;
  // Queues one replay of the recorded work on the compute stream.
  void launch();
  bool ready() const { return exec_ != nullptr; }
  // Drops the graph and returns its memory pool to the allocator.
  void reset() noexcept;

 private:
  void* exec_ = nullptr;  // cudaGraphExec_t
  int pool_ = 0;          // the allocator's pool id (0: none)
};

// True when this build has the CUDA backend and a GPU it can run on (graphs are GPU-only).
bool device_graphs_available();

}  // namespace oft::ops
