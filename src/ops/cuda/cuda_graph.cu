// DeviceGraph (ops/device_graph.h) on the CUDA runtime: stream capture of the compute stream in
// relaxed mode, with the caching allocator routed to a pool of the graph's own while recording.
#include <cuda_runtime.h>

#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.cuh"
#include "ops/device_graph.h"

namespace oft::ops {

bool device_graphs_available() { return cuda_available(); }

void DeviceGraph::begin_capture() {
  OFT_CHECK(cuda_available(), "CUDA graphs need the GPU: ", cuda_unavailable_reason());
  reset();
  pool_ = cuda::begin_graph_pool();
  // Relaxed: the allocator may still call cudaMalloc while recording.
  const cudaError_t e = cudaStreamBeginCapture(cuda::stream(), cudaStreamCaptureModeRelaxed);
  if (e != cudaSuccess) {
    cudaGetLastError();
    cuda::release_graph_pool(pool_);
    pool_ = 0;
    fail("CUDA graph capture could not start: ", cudaGetErrorString(e));
  }
}

void DeviceGraph::end_capture() {
  cuda::end_graph_pool();
  cudaGraph_t g = nullptr;
  cudaError_t e = cudaStreamEndCapture(cuda::stream(), &g);
  cudaGraphExec_t exec = nullptr;
  if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
  if (g) cudaGraphDestroy(g);
  if (e != cudaSuccess) {
    cudaGetLastError();
    cuda::release_graph_pool(pool_);
    pool_ = 0;
    fail("CUDA graph capture failed: ", cudaGetErrorString(e));
  }
  exec_ = exec;
}

void DeviceGraph::abort_capture() noexcept {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(cuda::stream(), &st) == cudaSuccess &&
      st != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(cuda::stream(), &g);
    if (g) cudaGraphDestroy(g);
  }
  cudaGetLastError();
  cuda::end_graph_pool();
  reset();
}

void DeviceGraph::launch() {
  OFT_CHECK(exec_ != nullptr, "DeviceGraph::launch: nothing recorded");
  OFT_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), cuda::stream()));
}

void DeviceGraph::reset() noexcept {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));  // deferred while running
  exec_ = nullptr;
  if (pool_) cuda::release_graph_pool(pool_);  // later work on the stream runs after the graph
  pool_ = 0;
}

}  // namespace oft::ops
