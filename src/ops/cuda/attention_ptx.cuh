// PTX wrappers and fragment helpers shared by the bf16 tensor-core attention kernels
// (attention_mma*.cu, attention_wgmma*.cu): shared-memory addresses, 16- and 4-byte cp.async with
// zero fill, bf16x2 packing, and the m16n8k16 A fragment built from two C fragments (which is
// also the register A operand of wgmma for each warp's 16 rows).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace oft::cuda::attn {

constexpr float kInf = __builtin_huge_valf();

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// The first 1024-byte aligned byte of a dynamic shared-memory array (128-byte swizzled tiles
// need it). Offsetting the array itself keeps the compiler's knowledge that the result is
// shared, so accesses through it stay LDS / STS; rounding the address as an integer would make
// every one of them a generic load or store (slower, and waited on like a global access).
__device__ __forceinline__ unsigned char* align_smem_1024(unsigned char* raw) {
  return raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u);
}
// 16-byte async copy; copies zeros when !pred (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool pred) {
  const int n = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}
// Two floats as bf16x2 (lo in the low half = the lower column index).
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// The A fragment (16 x 16, bf16) made of the C fragments (f32) of two neighbouring 8-column
// blocks: c0, c1 = C[g][2t, 2t+1], C[g+8][2t, 2t+1] of each block (lane = 4 g + t).
__device__ __forceinline__ void a_frag(uint32_t (&a)[4], const float* c0, const float* c1) {
  a[0] = pack(c0[0], c0[1]);
  a[1] = pack(c0[2], c0[3]);
  a[2] = pack(c1[0], c1[1]);
  a[3] = pack(c1[2], c1[3]);
}

}  // namespace oft::cuda::attn
