// Device helpers shared by the Hopper (sm_90a) kernels, attention_wgmma.cu (attention
// forward), attention_wgmma_bwd.cu (backward) and gemm_wgmma.cu (matrix products): warpgroup
// MMA wrappers (wgmma.mma_async with operands from shared memory through matrix descriptors or
// from registers), their fences and waits, the 128-byte-swizzle descriptor, swizzled tile
// copies, the per-warpgroup barrier, mbarrier and TMA (bulk tensor copy, store and reduce)
// wrappers, the TMA map builder and the sm_90a probe. The layout conventions are described at
// the top of attention_wgmma.cu.
#pragma once

#include <cuda.h>  // CUtensorMap (the driver's functions are reached through the runtime)
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_ptx.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define OFT_HAVE_WGMMA 1
#endif

namespace oft::cuda::attn::hopper {

using bf16 = __nv_bfloat16;
constexpr int kD = 64;  // the head width of every Hopper kernel

#ifdef OFT_HAVE_WGMMA
// Makes this thread's completed shared-memory writes visible to the async proxy (wgmma reads).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Waits until at most N committed groups are still in flight (the older ones are complete).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps registers that an in-flight wgmma reads or writes from being moved or reused across
// this point (the compiler does not know the asynchronous accesses).
template <int N>
__device__ __forceinline__ void keep(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// Matrix descriptor of a 128-byte-swizzled bf16 tile at p (1024-byte aligned rows groups):
// start address >> 4 (bits 0-13), leading and stride byte offsets >> 4 (bits 16-29, 32-45), the
// 128-byte swizzle mode (bits 62-63 = 1). The stride offset is the distance between groups of 8
// rows of 128 bytes (1024). The leading offset matters only for an MN-major operand wider than
// 64 elements, where it is the distance between its 64-wide chunks (lbo); the K extent of one
// instruction, or the 64 columns of V, lie within one 128-byte row and do not use it.
__device__ __forceinline__ uint64_t sw128_desc(const void* p, uint32_t lbo = 1024) {
  const uint64_t a = (smem_u32(p) & 0x3FFFF) >> 4;
  return a | (uint64_t(lbo >> 4) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// d[64] (+)= A (64 x 16, shared, K-major) * B (16 x 128, shared; TB 0: K-major, stored [n][k];
// TB 1: MN-major, stored [k][n], with the descriptor's leading offset between its two 64-wide
// n chunks); scale_d 0 overwrites d.
template <int TB = 0>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db,
                                              int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, 0, %67;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TB));
}

// d[32] += A (64 x 16 from registers: each warp's m16n8k16 A fragment of its 16 rows) *
// B (16 x 64, shared, MN-major: stored [k][n], n contiguous).
__device__ __forceinline__ void wgmma_rs_n64_t(float (&d)[32], const uint32_t (&a)[4],
                                                uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// d[32] (+)= A (64 x 16, shared) * B (16 x 64, shared); TA / TB: 0 = K-major (stored [m][k] /
// [n][k]), 1 = MN-major (stored [k][m] / [k][n]); scale_d 0 overwrites d.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db,
                                             int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));
}

// Rows r0.. (ROWS of them) of a [rows, stride] bf16 matrix, 64 columns from g, into a swizzled
// [ROWS][64] tile; by THREADS threads.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_sw(bf16* s, const bf16* g, int64_t stride, int r0, int T,
                                             int tid) {
#pragma unroll
  for (int i = 0; i < ROWS * 8 / THREADS; ++i) {
    const int idx = tid + i * THREADS, row = idx >> 3, ch = idx & 7, gr = r0 + row;
    const bool ok = gr < T;
    cp_async16(s + row * kD + ((ch ^ (row & 7)) << 3), g + int64_t(ok ? gr : 0) * stride + ch * 8,
               ok);
  }
}
// Barrier of one warpgroup (ids 1 and 2; 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_sync(int wg) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(wg + 1) : "memory");
}

// True on every thread of warpgroup wg when `p` holds on any of its threads: a barrier with an
// OR reduction, on warpgroup_sync's barrier ids. (The id is a register, so ptxas reports all 16
// barriers as used; choosing between two immediate ids instead made the clipped forward spill.)
__device__ __forceinline__ bool warpgroup_any(int wg, bool p) {
  uint32_t r;
  asm volatile(
      "{\n.reg .pred pi, po;\nsetp.ne.b32 pi, %1, 0;\n"
      "bar.red.or.pred po, %2, 128, pi;\nselp.u32 %0, 1, 0, po;\n}\n"
      : "=r"(r)
      : "r"(int(p)), "r"(wg + 1)
      : "memory");
  return r != 0;
}

// ---- mbarriers and the tensor memory accelerator (TMA) ----
// An mbarrier in shared memory expecting `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
}
// Makes the initialised mbarriers visible to the TMA unit (before a CTA barrier).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// This thread's arrival (one of the `count` the phase expects).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// This thread's arrival, announcing `bytes` of TMA transfers that complete the phase.
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
// Waits until the phase with this parity (0, 1, 0, ... per use) has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// Box {c0, c1, c2} of a 3-D tensor map into shared memory (swizzled as the map says); the bytes
// count towards bar's transaction.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// `bytes` contiguous bytes (16-byte aligned, a multiple of 16) into shared memory.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
// Adds a shared-memory box into box {c0, c1, c2} of a 3-D f32 tensor map (elements outside the
// tensor are skipped); completes in this thread's bulk group.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, const void* src, int c0,
                                                  int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// Stores a shared-memory box into box {c0, c1, c2} of a 3-D tensor map (elements outside the
// tensor are skipped); completes in this thread's bulk group.
__device__ __forceinline__ void tma_store_3d(const CUtensorMap* map, const void* src, int c0,
                                             int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Waits until this thread's bulk groups have read their shared-memory sources.
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Waits until this thread's bulk groups are complete.
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
// Release / acquire at GPU scope (cross-CTA hand-offs through global counters).
__device__ __forceinline__ void fence_acq_rel_gpu() {
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
}
__device__ __forceinline__ int atom_add_release_gpu(int* p, int v) {
  int old;
  asm volatile("atom.add.release.gpu.global.s32 %0, [%1], %2;\n"
               : "=r"(old)
               : "l"(p), "r"(v)
               : "memory");
  return old;
}
// After bulk_wait: orders this thread's completed bulk (async-proxy) global writes before its
// later generic-proxy operations, such as a release that lets another CTA read them.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
#endif  // OFT_HAVE_WGMMA

// True on an sm_90 GPU running this library's sm_90a build (a plain sm_90 build, or PTX of
// another architecture compiled at load time, has only trapping stubs of the Hopper kernels).
// Probed once. Defined in attention_wgmma.cu.
bool sm90a_ready();

// A 3-D TMA map over a [B][T][cols] tensor of row stride `ld` elements, 128-byte swizzled boxes
// of [1][box_rows][box_cols] (zeros past the tensor's edges); fails with a message when the
// driver refuses it. Defined in attention_wgmma_bwd.cu.
CUtensorMap tensor_map(const void* base, CUtensorMapDataType dt, int elem_bytes, int cols,
                       int64_t ld, int T, int B, int box_cols, int box_rows);

// Launches a Hopper attention kernel on `grid`; the first call of a kernel raises its dynamic
// shared-memory limit to smem.
inline void launch_kernel(void (*kernel)(Args), bool& configured, int smem, dim3 grid, int threads,
                          const Args& a) {
  if (!configured) {
    OFT_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured = true;
  }
  kernel<<<grid, threads, smem, stream()>>>(a);
  OFT_CUDA_LAUNCH_CHECK();
}

}  // namespace oft::cuda::attn::hopper
