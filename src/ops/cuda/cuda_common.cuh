// Shared helpers for the CUDA backend's kernels: error checks with file:line, the backend's
// stream, a growable scratch workspace, dtype dispatch over the float storage types, and
// bf16/f32 load/store in fp32 registers.
//
// Precision contract of every CUDA op (see cuda_backend.h): activations and the compute copies
// of parameters are bf16 or f32 (the same dtype within one call); parameter gradients, AdamW
// state, norm statistics and losses are f32; all arithmetic accumulates in f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"

#define OFT_CUDA_CHECK(expr)                                                                  \
  do {                                                                                        \
    cudaError_t oft_err_ = (expr);                                                            \
    if (oft_err_ != cudaSuccess)                                                              \
      ::oft::fail("CUDA error: ", cudaGetErrorString(oft_err_), " (", #expr, ") at ",         \
                  __FILE__, ":", __LINE__);                                                   \
  } while (0)

// After every kernel launch: reports launch-configuration errors at the launch site.
#define OFT_CUDA_LAUNCH_CHECK() OFT_CUDA_CHECK(cudaGetLastError())

namespace oft::cuda {

// The stream every op of the backend runs on (created on first use, non-blocking): the compute
// stream, or the update stream between ops::update_stream_begin() and update_stream_end().
cudaStream_t stream();
cudaStream_t compute_stream();
// Scratch device memory of at least `bytes`, valid until the next call on this thread; ops use
// it for reductions and library workspaces. Never hold it across ops.
void* scratch(size_t bytes);
// A device buffer of at least `bytes` that is all zero whenever no op is running: the op that
// uses it must leave every byte it touched at zero again (the Hopper attention backward's dQ
// accumulator and tile counters). Grown, and zero-filled, on demand; returns null where it would
// have to grow while a CUDA graph records (the caller then takes a path without it).
void* zeroed_workspace(size_t bytes);
// Multiprocessor count of the current device.
int sm_count();

// Waits for all work queued on the backend's stream (host reads of device results).
void synchronize();
// True while a CUDA graph records the stream (cuda_graph.cu): host copies and waits fail then.
bool capturing();
// The allocator's graph pools (cuda_runtime.cu, used by DeviceGraph): begin routes allocations
// and frees to a new pool and returns its id, end stops routing, release returns the pool's
// blocks to the shared free lists.
int begin_graph_pool();
void end_graph_pool();
void release_graph_pool(int id);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- fp32 <-> storage type conversions, usable in device code ----
template <class T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---- vectorised access shared by the kernels ----
#ifdef __CUDACC__
// kN elements of T moved as one aligned load / store (16 bytes: 4 f32 or 8 bf16).
template <class T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

template <class T, int kN>
__device__ __forceinline__ void load_pack(const T* p, float (&f)[kN]) {
  const Pack<T, kN> r = *reinterpret_cast<const Pack<T, kN>*>(p);
#pragma unroll
  for (int i = 0; i < kN; ++i) f[i] = to_f32(r.v[i]);
}

template <class T, int kN>
__device__ __forceinline__ void store_pack(T* p, const float (&f)[kN]) {
  Pack<T, kN> r;
#pragma unroll
  for (int i = 0; i < kN; ++i) r.v[i] = from_f32<T>(f[i]);
  *reinterpret_cast<Pack<T, kN>*>(p) = r;
}
#endif  // __CUDACC__

// The tensor's data as T* (the dtype was checked by the caller).
template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Checks a tensor is on the GPU with an allowed dtype; `what` names it in the error.
void expect_cuda(const Tensor& t, const char* what);
void expect_float(const Tensor& t, const char* what);  // f32 or bf16 on the GPU
void expect_dtype(const Tensor& t, DType d, const char* what);
// A float CUDA tensor of dtype dt (the activations'), and a 2-D tensor of shape [rows, cols].
void expect_act(const Tensor& t, DType dt, const char* what);
void expect_shape2(const Tensor& t, int64_t rows, int64_t cols, const char* what);

}  // namespace oft::cuda

// Calls BODY with `T` bound to float or __nv_bfloat16 according to DTYPE (an oft::DType);
// fails loudly for other dtypes. Usage: OFT_DISPATCH_FLOAT(x.dtype(), "layernorm", { k<T><<<>>>(); });
#define OFT_DISPATCH_FLOAT(DTYPE, OPNAME, ...)                                                \
  do {                                                                                        \
    switch (DTYPE) {                                                                          \
      case ::oft::DType::F32: {                                                               \
        using T = float;                                                                      \
        __VA_ARGS__;                                                                          \
        break;                                                                                \
      }                                                                                       \
      case ::oft::DType::BF16: {                                                              \
        using T = __nv_bfloat16;                                                              \
        __VA_ARGS__;                                                                          \
        break;                                                                                \
      }                                                                                       \
      default:                                                                                \
        ::oft::fail(OPNAME, ": the CUDA backend computes in f32 or bf16, not ",               \
                    ::oft::dtype_name(DTYPE));                                                \
    }                                                                                         \
  } while (0)
